//! Levenshtein decoding (LLaDA2.2): a step may write DELETE or SPLIT, which remove a slot or open a new mask
//! before it, so positions shift. The rules of one step are those of the reference `generate` as
//! shared/reference/llada2.2.md sections 3.1-3.3 and 3.6 give them; every point where SGLang's revised
//! `JointThresholdInDel` differs (section 3.4) is a setting (`post_counter`, `final_trigger`, `final_forbid`,
//! `mask_fallback`, `antiloop`, `max_steps_per_block`, `cap_action`, `schedule_steps` / `num_to_transfer`).
//!
//! One block, per step (M = masks outside the prompt at the step start, Mo = those with the original flag):
//! 1. before the forward: post = post + 1 when Mo is empty, else 0 (`reset`) or unchanged (`cumulative`);
//!    no mask and post > max_post_steps ends the block; past the step cap: an error, or a final round;
//! 2. forward; sampled (u, q) for masks and greedy (v, p) for edits (the same at temperature 0);
//! 3. Gamma: masks with q > tau_mask when at least `need` pass, else the `need` most confident, where
//!    need = schedule(step) + introduced masks (every mask once the schedule is over);
//! 4. Delta: non-mask, non-prompt slots whose greedy token differs with p > tau_edit;
//! 5. final round (post >= max_post_steps, or with 0 the step that resolves the last original masks): Gamma
//!    = every mask, and DELETE / SPLIT (and MASK with `edits+mask`) are redrawn without those tokens;
//! 6. write; a repeated block triggers the anti-loop redraw (decoder's own generator: rewind reproduces it);
//! 7. `apply_edits`: DELETE shifts left, SPLIT puts a non-original mask before the step-start token, the
//!    block is padded with non-original masks or cut at the tail; prompt slots never move;
//! 8. no change and no mask left: the block's fixed point.
//!
//! Departures, each deliberate: positions in reports are step-start positions; the KV cache of a finished
//! block is committed by the next block's first forward (it recomputes the block with its final tokens), so no
//! separate refresh forward exists; the sampled path's repetition penalty is not applied to the greedy edits at
//! temperature > 0; SGLang's per-slot "tokens already written" memory is kept by canvas position.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::sampler::select;
use super::settings::{AntiLoop, CapAction, FinalForbid, FinalTrigger, PostCounter};
use super::stepper::{Cursor, Decoder, Edit, Entry, EntryKind, LastForward, Next, Plan, StepReport, Unmask, WriteKind};
use crate::error::{Error, Result};

/// At most this many anti-loop redraws in one step (reference decoder).
const MAX_REDRAWS: usize = 5;

/// The block after a step's edits (block-relative indices).
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub tokens: Vec<i64>,
    pub orig: Vec<bool>,
    /// For each step-start slot: its index after the step, `None` when deleted or cut off the tail.
    pub slots: Vec<Option<usize>>,
    /// Indices (after the step) of the masks SPLIT opened, those that stayed inside the block.
    pub inserted: Vec<usize>,
    /// Masks appended at the tail.
    pub pad: usize,
    /// Step-start slots cut off the tail, with their tokens (they can be committed tokens).
    pub truncated: Vec<(usize, i64)>,
}

/// The token ids `apply_edits` acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EditTokens {
    pub mask: i64,
    pub delete: i64,
    pub split: i64,
}

/// Applies a step's writes `new` to the step-start block `old` (section 3.1): prompt slots (`..plen`) are
/// copied; DELETE drops a slot; SPLIT becomes (a non-original MASK, the token the slot held at the step start);
/// the result is cut to the block's length or padded with non-original masks. Flags travel with their slots.
pub fn apply_edits(new: &[i64], old: &[i64], orig: &[bool], plen: usize, ids: EditTokens) -> Applied {
    let EditTokens { mask, delete, split } = ids;
    let b = old.len();
    let mut tokens = Vec::with_capacity(b + 4);
    let mut flags = Vec::with_capacity(b + 4);
    let mut source: Vec<Option<usize>> = Vec::with_capacity(b + 4); // step-start slot of each output, None = inserted
    let mut slots = vec![None; b];
    for i in 0..b {
        if i < plen {
            slots[i] = Some(tokens.len());
            tokens.push(old[i]);
            flags.push(orig[i]);
            source.push(Some(i));
        } else if new[i] == delete {
        } else if new[i] == split {
            tokens.push(mask);
            flags.push(false);
            source.push(None);
            slots[i] = Some(tokens.len());
            tokens.push(old[i]);
            flags.push(orig[i]);
            source.push(Some(i));
        } else {
            slots[i] = Some(tokens.len());
            tokens.push(new[i]);
            flags.push(orig[i]);
            source.push(Some(i));
        }
    }
    let mut truncated = Vec::new();
    for (j, src) in source.iter().enumerate().skip(b) {
        if let Some(i) = *src {
            truncated.push((i, tokens[j]));
            slots[i] = None;
        }
    }
    tokens.truncate(b);
    flags.truncate(b);
    source.truncate(b);
    let inserted = source.iter().enumerate().filter(|(_, s)| s.is_none()).map(|(j, _)| j).collect();
    let pad = b - tokens.len();
    tokens.resize(b, mask);
    flags.resize(b, false);
    Applied { tokens, orig: flags, slots, inserted, pad, truncated }
}

/// One anti-loop redraw: the slot (step-start position), the token the step wanted and the one it wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Redraw {
    pub pos: i64,
    pub from: i64,
    pub to: i64,
    pub p: f32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub from_text: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub to_text: String,
}

/// What a Levenshtein step did besides Gamma and Delta. Positions are canvas positions: `slots`, `deleted`,
/// `split` and `truncated` in step-start coordinates, `inserted` after the step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevStep {
    /// First canvas position of the block.
    pub start: i64,
    /// For each slot of the block at the step start: its position after the step, `None` if deleted or cut off.
    pub slots: Vec<Option<i64>>,
    /// Slots the step deleted.
    pub deleted: Vec<i64>,
    /// Slots that received SPLIT (a mask opened before each).
    pub split: Vec<i64>,
    /// Positions, after the step, of the masks SPLIT opened.
    pub inserted: Vec<i64>,
    /// Masks appended at the tail.
    pub pad: i64,
    /// (step-start position, token) cut off the tail.
    pub truncated: Vec<(i64, i64)>,
    /// Original-mask flags of the block after the step.
    pub orig: Vec<bool>,
    /// Masks at the step start: original ones (from the block's initial layout) and those edits introduced.
    pub originals: i64,
    pub introduced: i64,
    /// The minimum number of masks this step had to unmask.
    pub need: i64,
    /// The post-step counter of this step.
    pub post: i64,
    /// This was the final round (every mask filled, no DELETE / SPLIT written).
    pub final_round: bool,
    pub antiloop: Vec<Redraw>,
}

impl LevStep {
    /// Adds the Levenshtein fields of the trace format (docs/decoding.md) to one step's JSON.
    pub fn extend_trace(&self, step: &mut serde_json::Value) {
        let obj = step.as_object_mut().expect("a step is a JSON object");
        obj.insert("deleted".into(), serde_json::json!(self.deleted));
        obj.insert("split".into(), serde_json::json!(self.split));
        obj.insert("truncated".into(), serde_json::json!(self.truncated.iter().map(|&(p, t)| [p, t]).collect::<Vec<_>>()));
        obj.insert("final".into(), self.final_round.into());
        obj.insert("antiloop".into(), serde_json::json!(self.antiloop.iter().map(|r| [r.pos, r.from, r.to]).collect::<Vec<_>>()));
    }
}

/// What the anti-loop rule remembers: blocks seen (written blocks for `random`, input blocks for `lowest`),
/// and the tokens written per canvas position (`lowest`). Append-only; rewind truncates it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoopMemory {
    pub seen: Vec<(i64, Vec<i64>)>,
    pub written: Vec<(i64, i64)>,
}

impl LoopMemory {
    fn has_seen(&self, block: i64, tokens: &[i64]) -> bool {
        self.seen.iter().any(|(b, t)| *b == block && t == tokens)
    }
}

/// What rewinding a Levenshtein step restores besides the canvas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevUndo {
    pub start: i64,
    pub orig_before: Vec<bool>,
    pub seen_len: usize,
    pub written_len: usize,
}

/// A mask slot chosen for Gamma or a token slot for Delta, with what it writes.
struct Write {
    slot: usize,
    token: i64,
    p: f32,
}

impl Decoder {
    /// Masks outside the prompt in `block`, and how many of them are original.
    fn open_masks(&self, block: i64) -> (i64, i64) {
        let r = self.block_range(block);
        let from = r.start.max(self.prompt_len as usize);
        let mut m = 0;
        let mut mo = 0;
        for pos in from..r.end {
            if self.canvas[pos] == self.mask_id {
                m += 1;
                mo += i64::from(self.orig[pos]);
            }
        }
        (m, mo)
    }

    /// Step 1 of the module doc: blocks that end before the forward, the post counter, the step cap.
    pub(super) fn plan_levenshtein(&self) -> Result<Option<Next>> {
        if self.cursor.finished {
            return Ok(None);
        }
        let t0 = std::time::Instant::now();
        let before = self.cursor;
        let mut c: Cursor = self.cursor;
        let mut ended_before = Vec::new();
        let s = &self.settings;
        let masks_at_start = loop {
            let (m, mo) = self.open_masks(c.block);
            let post = match (mo == 0, s.post_counter) {
                (true, _) => c.post_steps + 1,
                (false, PostCounter::Reset) => 0,
                (false, PostCounter::Cumulative) => c.post_steps,
            };
            if m == 0 && post > s.max_post_steps {
                ended_before.push(c.block);
                self.end_block(&mut c);
                if c.finished {
                    return Ok(Some(Next::Finish { before, cursor: c, ended: ended_before }));
                }
                continue;
            }
            c.post_steps = post;
            break m;
        };
        if s.cap_action == CapAction::Error && c.block_step >= s.step_cap() {
            return Err(Error::invalid(
                "max_steps_per_block",
                s.step_cap(),
                format!(
                    "block {} did not converge in {} steps (its edits keep changing it): raise max_steps_per_block, or set cap_action final to force a final round",
                    c.block,
                    s.step_cap()
                ),
            ));
        }
        let b = s.block_length;
        let (ws, be) = (c.block * b, (c.block + 1) * b);
        Ok(Some(Next::Forward(Plan { t0, before, cursor: c, ended_before, masks_at_start, ws, be })))
    }

    /// Steps 2-8 of the module doc on the forward's logits (`[L, V]`, the last `be - ws` rows are the block).
    pub(super) fn apply_levenshtein(&mut self, plan: Plan, logits: &Tensor, forward_ms: f64) -> StepReport {
        let Plan { t0, before, cursor, ended_before, ws, be, .. } = plan;
        self.cursor = cursor;
        let s = self.settings.clone();
        let (del, split) = self.edit_ids.expect("checked by check_settings: Levenshtein decoding has edit ids");
        let mask = self.mask_id;
        let b = s.block_length as usize;
        let block = self.cursor.block;
        let block_step = self.cursor.block_step;
        let post = self.cursor.post_steps;
        let got = logits.size()[0];
        let logits = logits.narrow(0, got - (be - ws), be - ws).to_kind(Kind::Float);
        let bs = ws as usize;
        let old: Vec<i64> = self.canvas[bs..bs + b].to_vec();
        let flags: Vec<bool> = self.orig[bs..bs + b].to_vec();
        let plen = (self.prompt_len - ws).clamp(0, b as i64) as usize;
        let masks: Vec<usize> = (plen..b).filter(|&i| old[i] == mask).collect();
        let originals: Vec<usize> = masks.iter().copied().filter(|&i| flags[i]).collect();
        let introduced = (masks.len() - originals.len()) as i64;

        // Candidates: sampled (u, q) for masks, greedy (v, p) for edits (the same at temperature 0).
        let prev: Vec<Option<i64>> = (0..b).map(|i| if i == 0 { None } else { Some(old[i - 1]) }).collect();
        let cand = select(&logits, &prev, &s, &mut self.cursor.rng);
        let (mut u, mut q) = (cand.tokens.clone(), cand.probs.clone());
        let greedy_dist = if s.temperature == 0.0 { cand.dist.shallow_clone() } else { logits.softmax(-1, Kind::Float) };
        let (v, p) = if s.temperature == 0.0 { (u.clone(), q.clone()) } else { row_max(&greedy_dist) };
        if s.mask_fallback {
            for &i in &originals {
                if u[i] == mask {
                    let (t, pr) = best_excluding(&cand.dist.get(i as i64), &[mask], false);
                    (u[i], q[i]) = (t, pr);
                }
            }
        }

        // Gamma: the schedule's minimum plus the masks edits introduced.
        let n0 = (b - plen) as i64;
        let need = match s.schedule_count(block_step, n0) {
            Some(k) => k + introduced,
            None if s.schedule_steps.is_some() => masks.len() as i64,
            None => s.num_to_transfer + introduced,
        }
        .min(masks.len() as i64) as usize;
        let passing: Vec<usize> = masks.iter().copied().filter(|&i| q[i] as f64 > s.threshold).collect();
        let fallback = passing.len() < need;
        let mut gamma: Vec<usize> = if fallback {
            let mut m = masks.clone();
            m.sort_by(|&a, &c| q[c].total_cmp(&q[a]).then(a.cmp(&c)));
            m.truncate(need);
            m.sort();
            m
        } else {
            passing
        };

        // Delta: greedy edits of non-mask, non-prompt slots.
        let mut delta: Vec<usize> = Vec::new();
        if let Some(tau) = s.edit_threshold() {
            let allowed = s.edit_timing == super::settings::EditTiming::Always || masks.is_empty();
            if allowed {
                delta = (plen..b).filter(|&i| old[i] != mask && v[i] != old[i] && p[i] as f64 > tau).collect();
            }
        }

        // The final round: every mask, no DELETE / SPLIT (nor MASK with edits+mask).
        let resolves_originals = !originals.is_empty() && originals.iter().all(|i| gamma.contains(i));
        let mut final_round = if s.max_post_steps > 0 {
            post >= s.max_post_steps
        } else {
            resolves_originals || (s.final_trigger == FinalTrigger::Sglang && originals.is_empty())
        };
        final_round |= s.cap_action == CapAction::Final && block_step >= s.step_cap();
        let (mut gw, mut dw): (Vec<Write>, Vec<Write>);
        if final_round {
            let mut forbidden = vec![del, split];
            if s.final_forbid == FinalForbid::EditsAndMask {
                forbidden.push(mask);
            }
            gamma = masks.clone();
            gw = gamma
                .iter()
                .map(|&i| {
                    if forbidden.contains(&u[i]) {
                        let (t, pr) = best_excluding(&logits.get(i as i64), &forbidden, true);
                        Write { slot: i, token: t, p: pr }
                    } else {
                        Write { slot: i, token: u[i], p: q[i] }
                    }
                })
                .collect();
            dw = delta
                .iter()
                .filter_map(|&i| {
                    if forbidden.contains(&v[i]) {
                        let (t, pr) = best_excluding(&logits.get(i as i64), &forbidden, true);
                        (t != old[i]).then_some(Write { slot: i, token: t, p: pr })
                    } else {
                        Some(Write { slot: i, token: v[i], p: p[i] })
                    }
                })
                .collect();
        } else {
            gw = gamma.iter().map(|&i| Write { slot: i, token: u[i], p: q[i] }).collect();
            dw = delta.iter().map(|&i| Write { slot: i, token: v[i], p: p[i] }).collect();
        }
        let mut new = old.clone();
        for w in gw.iter().chain(&dw) {
            new[w.slot] = w.token;
        }

        // Anti-loop: a block that comes back is pushed elsewhere.
        let seen_len = self.memory.seen.len();
        let written_len = self.memory.written.len();
        let mut redraws = Vec::new();
        let changed = !gw.is_empty() || !dw.is_empty();
        match s.antiloop {
            AntiLoop::Off => {}
            AntiLoop::Random => {
                if !final_round && changed && self.memory.has_seen(block, &new) {
                    for _ in 0..MAX_REDRAWS {
                        let n = gw.len() + dw.len();
                        let k = (self.cursor.rng.next_u64() % n as u64) as usize;
                        let (w, is_mask) = if k < gw.len() { (&mut gw[k], true) } else { (&mut dw[k - gw.len()], false) };
                        let from = w.token;
                        let row = w.slot as i64;
                        let (t, pr) = if is_mask && s.temperature > 0.0 {
                            sample_excluding(&cand.dist.get(row), from, self.cursor.rng.uniform())
                        } else if is_mask {
                            best_excluding(&cand.dist.get(row), &[from], false)
                        } else {
                            best_excluding(&greedy_dist.get(row), &[from], false)
                        };
                        (w.token, w.p) = (t, pr);
                        new[w.slot] = t;
                        redraws.push(Redraw { pos: ws + w.slot as i64, from, to: t, p: pr, from_text: String::new(), to_text: String::new() });
                        if !self.memory.has_seen(block, &new) {
                            break;
                        }
                    }
                }
                self.memory.seen.push((block, new.clone()));
            }
            AntiLoop::Lowest => {
                if !final_round && changed && self.memory.has_seen(block, &old) {
                    let w = gw.iter_mut().chain(dw.iter_mut()).min_by(|a, c| a.p.total_cmp(&c.p).then(a.slot.cmp(&c.slot))).expect("changed");
                    let pos = ws + w.slot as i64;
                    let mut excluded: Vec<i64> = self.memory.written.iter().filter(|(p, _)| *p == pos).map(|x| x.1).collect();
                    excluded.push(w.token);
                    if old[w.slot] == mask && flags[w.slot] {
                        excluded.push(mask);
                    }
                    let from = w.token;
                    let (t, pr) = best_excluding(&greedy_dist.get(w.slot as i64), &excluded, false);
                    (w.token, w.p) = (t, pr);
                    new[w.slot] = t;
                    redraws.push(Redraw { pos, from, to: t, p: pr, from_text: String::new(), to_text: String::new() });
                }
                self.memory.seen.push((block, old.clone()));
                self.memory.written.extend(gw.iter().chain(&dw).map(|w| (ws + w.slot as i64, w.token)));
            }
        }

        // Apply the edits: shifts, insertions, pad or cut.
        let a = apply_edits(&new, &old, &flags, plen, EditTokens { mask, delete: del, split });
        let mut writes = Vec::new();
        for i in 0..b {
            if a.tokens[i] != old[i] {
                writes.push(((bs + i) as i64, old[i], a.tokens[i]));
            }
        }
        self.canvas[bs..bs + b].copy_from_slice(&a.tokens);
        self.orig[bs..bs + b].copy_from_slice(&a.orig);
        let kind = |t: i64| match t {
            t if t == del => WriteKind::Delete,
            t if t == split => WriteKind::Split,
            _ => WriteKind::Token,
        };
        let pos = |i: usize| ws + i as i64;
        let gamma: Vec<Unmask> =
            gw.iter().map(|w| Unmask { pos: pos(w.slot), token: w.token, p: w.p, kind: kind(w.token), text: String::new() }).collect();
        let delta: Vec<Edit> = dw
            .iter()
            .filter(|w| w.token != old[w.slot])
            .map(|w| Edit { pos: pos(w.slot), old: old[w.slot], new: w.token, p: w.p, kind: kind(w.token), old_text: String::new(), new_text: String::new() })
            .collect();
        let lev = LevStep {
            start: ws,
            slots: a.slots.iter().map(|s| s.map(pos)).collect(),
            deleted: (plen..b).filter(|&i| new[i] == del).map(pos).collect(),
            split: (plen..b).filter(|&i| new[i] == split).map(pos).collect(),
            inserted: a.inserted.iter().map(|&j| pos(j)).collect(),
            pad: a.pad as i64,
            truncated: a.truncated.iter().map(|&(i, t)| (pos(i), t)).collect(),
            orig: a.orig.clone(),
            originals: originals.len() as i64,
            introduced,
            need: need as i64,
            post,
            final_round,
            antiloop: redraws,
        };

        let block_ended = a.tokens == old && !a.tokens[plen..].contains(&mask);
        let advanced_to = self.close_step(LastForward { from: ws, dist: cand.dist }, block_ended);
        let report = StepReport {
            step: before.forwards,
            block,
            block_step,
            gamma,
            delta,
            masks_left: self.masks_in(block),
            fallback,
            ended_before,
            block_ended,
            advanced_to,
            finished: self.cursor.finished,
            revised_blocks: Vec::new(),
            span: (ws, be),
            forward_ms,
            total_ms: t0.elapsed().as_secs_f64() * 1e3,
            tpf: self.tpf(),
            tokens: a.tokens,
            lev: Some(lev),
        };
        let undo = LevUndo { start: ws, orig_before: flags, seen_len, written_len };
        self.journal.push(Entry { before, writes, kind: EntryKind::Step(report.clone()), lev: Some(undo) });
        report
    }

    /// Restores what a Levenshtein step changed besides the canvas (rewind).
    pub(super) fn undo_levenshtein(&mut self, u: &LevUndo) {
        let start = u.start as usize;
        self.orig[start..start + u.orig_before.len()].copy_from_slice(&u.orig_before);
        self.memory.seen.truncate(u.seen_len);
        self.memory.written.truncate(u.written_len);
    }
}

/// Per row of a `[L, V]` distribution: the most likely token and its probability.
fn row_max(dist: &Tensor) -> (Vec<i64>, Vec<f32>) {
    let (p, idx) = dist.max_dim(-1, false);
    let idx = Vec::<i64>::try_from(&idx.to_device(tch::Device::Cpu)).expect("int64 ids");
    let p = Vec::<f32>::try_from(&p.to_device(tch::Device::Cpu)).expect("f32 probabilities");
    (idx, p)
}

/// The most likely token of one row outside `excluded`: over a distribution (`logits = false`, its probability
/// as is) or over logits, renormalised without the excluded tokens (`logits = true`).
fn best_excluding(row: &Tensor, excluded: &[i64], logits: bool) -> (i64, f32) {
    let ex = Tensor::from_slice(excluded).to_device(row.device());
    let (t, p) = if logits {
        let d = row.index_fill(0, &ex, f64::NEG_INFINITY).softmax(-1, Kind::Float);
        let t = d.argmax(0, false).int64_value(&[]);
        (t, d.double_value(&[t]))
    } else {
        let d = row.index_fill(0, &ex, -1.0);
        let t = d.argmax(0, false).int64_value(&[]);
        (t, row.double_value(&[t]))
    };
    (t, p as f32)
}

/// A draw from one row of the sampling distribution without `excluded`, renormalised, with uniform `u`.
fn sample_excluding(row: &Tensor, excluded: i64, u: f64) -> (i64, f32) {
    let d = row.index_fill(0, &Tensor::from_slice(&[excluded]).to_device(row.device()), 0.0);
    let total = d.sum(Kind::Float).double_value(&[]);
    if total <= 0.0 {
        return best_excluding(row, &[excluded], false);
    }
    let d = d / total;
    let cdf = Vec::<f32>::try_from(&d.cumsum(0, Kind::Float).to_device(tch::Device::Cpu)).expect("f32 cdf");
    let t = cdf.iter().position(|&c| c as f64 > u).unwrap_or(cdf.len() - 1) as i64;
    (t, d.double_value(&[t]) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: i64 = 1;
    const D: i64 = 90;
    const S: i64 = 91;
    const IDS: EditTokens = EditTokens { mask: M, delete: D, split: S };

    #[test]
    fn delete_shifts_left_and_pads_with_non_original_masks() {
        let old = [7, 8, 10, 11, 12, 13];
        let new = [7, 8, 10, D, 12, 13];
        let a = apply_edits(&new, &old, &[false, false, true, true, true, true], 2, IDS);
        assert_eq!(a.tokens, vec![7, 8, 10, 12, 13, M]);
        assert_eq!(a.orig, vec![false, false, true, true, true, false]);
        assert_eq!(a.slots, vec![Some(0), Some(1), Some(2), None, Some(3), Some(4)]);
        assert_eq!((a.pad, a.inserted.clone(), a.truncated.clone()), (1, vec![], vec![]));
    }

    #[test]
    fn split_keeps_the_step_start_token_and_cuts_the_tail() {
        // The section 3.1 example: [p, p, a, b, c, d] with SPLIT at the four suffix slots -> [p, p, M, a, M, b].
        let old = [7, 8, 20, 21, 22, 23];
        let new = [7, 8, S, S, S, S];
        let a = apply_edits(&new, &old, &[false, false, true, false, true, true], 2, IDS);
        assert_eq!(a.tokens, vec![7, 8, M, 20, M, 21]);
        assert_eq!(a.orig, vec![false, false, false, true, false, false]);
        assert_eq!(a.inserted, vec![2, 4]);
        assert_eq!(a.truncated, vec![(4, 22), (5, 23)]);
        assert_eq!(a.slots, vec![Some(0), Some(1), Some(3), Some(5), None, None]);
        assert_eq!(a.pad, 0);
    }

    #[test]
    fn split_on_an_original_mask_adds_one_introduced_mask_before_it() {
        let old = [7, M, M];
        let new = [7, S, 30];
        let a = apply_edits(&new, &old, &[false, true, true], 1, IDS);
        assert_eq!(a.tokens, vec![7, M, M]);
        assert_eq!(a.orig, vec![false, false, true]);
        // Slot 2's freshly written 30 is what falls off the tail.
        assert_eq!(a.truncated, vec![(2, 30)]);
        assert_eq!(a.slots, vec![Some(0), Some(2), None]);
    }

    #[test]
    fn prompt_slots_never_move_even_when_written() {
        let old = [7, 8, 9, 10];
        let new = [D, S, D, 11];
        let a = apply_edits(&new, &old, &[false, false, true, true], 2, IDS);
        assert_eq!(a.tokens, vec![7, 8, 11, M]);
    }
}
