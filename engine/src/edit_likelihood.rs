//! The `edit` likelihood estimator: L-EBPO's "log-probability of the block's action vector" (LLaDA2.2 report
//! section 3.2, eq. 5; shared/reference/llada2.2.md 4.2) for LLaDA2.2 models, whose one softmax also holds the
//! DELETE and SPLIT (insert) actions.
//!
//! # What is scored
//!
//! The canvas is the one of [`crate::likelihood`] (prompt, response, EOS up to whole blocks); only response
//! slots are drafted, masked and scored, so a prompt tail inside the first response block and the padding EOS
//! stay clean context. For each of the N samples:
//! 1. a level `t_n = (n - 1 + u) / N` (one `u ~ U(0,1)` from the seed, as the default stratified ELBO);
//! 2. per response block, a Levenshtein draft of the clean block ([`crate::edit_noise::draft_block`]: each
//!    token corrupted with probability `rate` by [`OpMix::DEFAULT`], substitutes and insertions drawn from the
//!    response's own distinct tokens, a drop pulling in what follows the block);
//! 3. each draft slot masked with probability `t_n`;
//! 4. the LCS labels of the masked draft against the clean block, MASK a wildcard ([`lcs_labels`]), each slot's
//!    action target = the token (Keep, Substitute), DELETE (Delete) or SPLIT (Insert);
//! 5. the term of a slot = `log softmax(logits)[target]`, the logits of noisy block b seeing itself and the
//!    CLEAN blocks before it (the composite `[x_t ; x_0]` layout, [`crate::composite`]): every sample is a row
//!    of one batched forward.
//!
//! # Weighting (ours: the report does not say how M2T and edit positions are weighted)
//!
//! `value = sum_n [ (1 / (N t_n)) sum_{masked slots} log p + (1 / N) sum_{visible slots} log p ]`.
//! Masked slots are weighted `1/t` as in the ELBO, so with `rate = 0` and only masked slots this is the
//! stratified ELBO; visible slots (Keep, Substitute, Delete, Insert decisions on what the draft shows) count
//! once per sample, averaged over the samples: the expected log-probability of the edit actions at a random
//! noise level. The parts are reported separately ([`EditParts`]: sums of the weighted terms and slot counts)
//! so another weighting can be read off without a new forward. A masked slot counts as M2T whatever its label
//! (a mask past the last anchor is labelled Delete: that is still the M2T position's decision).
//!
//! # Departures and choices
//!
//! 1. The report takes its drafts from recorded rollout trajectories (its "token step-maps"); we draw them from
//!    our Levenshtein noise instead, so the estimator needs only the final response.
//! 2. One noise level per sample for every block (as the ELBO estimators), one draft per block and sample.
//! 3. `rate` is fixed (default [`DEFAULT_RATE`]), not tied to `t`: the length errors of parallel drafting come
//!    from the drafting, not from how much is still masked.
//!
//! [`EditPlan::logp_loop`] is the slow reference (one plain block-causal forward per sample and block).

use std::ops::Range;

use tch::{Kind, Tensor};

use crate::composite;
use crate::decode::Rng;
use crate::edit_labels::{lcs_labels, Label};
use crate::edit_noise::{draft_block, OpMix};
use crate::error::{Error, Result};
use crate::likelihood::{layout, stratified_levels, Layout, LikelihoodReport, MAX_ROWS};
use crate::model::{BlockMask, KvCache, Model};

/// The default per-token corruption rate of the drafts: about one length or substitution error per ten tokens.
pub const DEFAULT_RATE: f64 = 0.1;

/// What a scored slot decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Part {
    /// A masked slot (mask-to-token, whatever its label).
    M2t,
    /// A visible slot labelled Keep (its own token).
    Keep,
    /// A visible slot labelled Substitute (another token).
    Substitute,
    /// A visible slot labelled Delete (the DELETE id).
    Delete,
    /// A visible slot labelled Insert (the SPLIT id).
    Insert,
}

impl Part {
    fn of(masked: bool, label: Label) -> Part {
        match (masked, label) {
            (true, _) => Part::M2t,
            (false, Label::Keep(_)) => Part::Keep,
            (false, Label::Substitute(_)) => Part::Substitute,
            (false, Label::Delete) => Part::Delete,
            (false, Label::Insert) => Part::Insert,
        }
    }
}

/// One part's share of an estimate: the sum of its weighted terms and the number of slots (over all samples).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Contribution {
    pub sum: f64,
    pub count: usize,
}

/// The contributions of an `edit` estimate; they add up to its value.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct EditParts {
    pub m2t: Contribution,
    pub keep: Contribution,
    pub substitute: Contribution,
    pub delete: Contribution,
    pub insert: Contribution,
}

impl EditParts {
    pub fn get_mut(&mut self, p: Part) -> &mut Contribution {
        match p {
            Part::M2t => &mut self.m2t,
            Part::Keep => &mut self.keep,
            Part::Substitute => &mut self.substitute,
            Part::Delete => &mut self.delete,
            Part::Insert => &mut self.insert,
        }
    }

    /// (name, contribution) in display order.
    pub fn named(&self) -> [(&'static str, Contribution); 5] {
        [("m2t", self.m2t), ("keep", self.keep), ("substitute", self.substitute), ("delete", self.delete), ("insert", self.insert)]
    }
}

/// One scored slot of a row.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Slot {
    /// Canvas position.
    pub pos: usize,
    /// The action: a token, the DELETE id or the SPLIT id.
    pub target: i64,
    pub part: Part,
    pub weight: f64,
}

/// One sample: its level, its noisy canvas (drafted and masked response slots) and its scored slots.
#[derive(Debug, Clone, PartialEq)]
pub struct EditRow {
    pub level: f64,
    pub canvas: Vec<i64>,
    pub slots: Vec<Slot>,
}

/// The noise of one `edit` estimate, drawn once and reusable with several models (theta and theta_old).
#[derive(Debug, Clone, PartialEq)]
pub struct EditPlan {
    pub rows: Vec<EditRow>,
    lay: Layout,
    /// Canvas position just past the response (the padding EOS start here).
    end: usize,
    mask_id: i64,
    delete: i64,
    split: i64,
}

/// The DELETE and SPLIT ids of `model`, or an error saying the model has none.
pub fn edit_ids(model: &Model) -> Result<(i64, i64)> {
    let c = model.config();
    c.delete_token_id.zip(c.split_token_id).ok_or_else(|| {
        Error::invalid(
            "estimator",
            "edit",
            "the model's config has no delete_token_id / split_token_id, and the edit estimator scores DELETE and SPLIT \
             actions: use it on an LLaDA2.2 model (presets micro-2.2, tiny-2.2), or a masking estimator (stratified:N) here",
        )
    })
}

/// Checks `levels` and `rate` of an `edit:N:R` spec.
pub fn check(levels: usize, rate: f64) -> Result<()> {
    if levels == 0 {
        return Err(Error::invalid("levels", 0, "the edit estimator needs at least one level"));
    }
    if !(0.0..=1.0).contains(&rate) {
        return Err(Error::invalid("edit rate", rate, "the per-token corruption rate of the drafts is a probability in [0, 1]"));
    }
    Ok(())
}

impl EditPlan {
    /// A plan without rows for `response` given `prompt` (the canvas, the model's edit ids); see [`EditPlan::push`].
    pub fn new(model: &Model, prompt: &[i64], response: &[i64], mask_id: i64, eos_id: i64, block: i64) -> Result<EditPlan> {
        let (delete, split) = edit_ids(model)?;
        if let Some(t) = response.iter().find(|&&t| t == delete || t == split) {
            return Err(Error::invalid("response", t, "holds a DELETE or SPLIT id: score a final response, whose edits are applied"));
        }
        let lay = layout(model, prompt, response, mask_id, eos_id, block)?;
        let end = prompt.len() + response.len();
        Ok(EditPlan { rows: Vec::new(), lay, end, mask_id, delete, split })
    }

    /// The plan of `levels` stratified samples with drafts at `rate` (see the module documentation).
    #[allow(clippy::too_many_arguments)]
    pub fn draw(model: &Model, prompt: &[i64], response: &[i64], mask_id: i64, eos_id: i64, block: i64, levels: usize, rate: f64, seed: u64) -> Result<EditPlan> {
        check(levels, rate)?;
        let mut p = EditPlan::new(model, prompt, response, mask_id, eos_id, block)?;
        let mut alphabet = response.to_vec();
        alphabet.sort_unstable();
        alphabet.dedup();
        let mut rng = Rng::new(seed);
        // t_n must be > 0: u in (0, 1].
        let (ts, _) = stratified_levels(levels, 1.0 - rng.uniform());
        let n = levels as f64;
        for t in ts {
            let (mut drafts, mut masks) = (Vec::new(), Vec::new());
            for b in p.blocks() {
                let clean = &p.lay.clean;
                let draft = draft_block(&clean[b.clone()], &clean[b.end..], eos_id, rate, OpMix::DEFAULT, &alphabet, &mut rng);
                masks.push(draft.iter().map(|_| rng.uniform() < t).collect());
                drafts.push(draft);
            }
            p.push(t, 1.0 / (n * t), 1.0 / n, &drafts, &masks)?;
        }
        Ok(p)
    }

    /// The response slots of each block (canvas ranges), from the first block holding a response token.
    pub fn blocks(&self) -> Vec<Range<usize>> {
        let (bl, p) = (self.lay.block as usize, self.lay.prompt_len);
        let end = self.end;
        (self.lay.first as usize..(self.lay.first + self.lay.blocks) as usize).map(|b| (b * bl).max(p)..((b + 1) * bl).min(end)).collect()
    }

    /// Adds a sample at level `t`: `drafts[k]` replaces the response slots of block k ([`EditPlan::blocks`]),
    /// `masks[k]` masks some of them; masked slots are weighted `masked`, visible ones `visible`.
    pub fn push(&mut self, t: f64, masked: f64, visible: f64, drafts: &[Vec<i64>], masks: &[Vec<bool>]) -> Result<()> {
        let blocks = self.blocks();
        if drafts.len() != blocks.len() || masks.len() != blocks.len() {
            return Err(Error::invalid("drafts", drafts.len(), format!("needs one draft and one mask per response block ({})", blocks.len())));
        }
        let mut canvas = self.lay.clean.clone();
        let mut slots = Vec::new();
        for ((range, draft), mask) in blocks.into_iter().zip(drafts).zip(masks) {
            if draft.len() != range.len() || mask.len() != range.len() {
                return Err(Error::invalid("draft", format!("{} slots", draft.len()), format!("a draft and its mask have the block's {} response slots", range.len())));
            }
            let noisy: Vec<i64> = draft.iter().zip(mask).map(|(&d, &m)| if m { self.mask_id } else { d }).collect();
            let labels = lcs_labels(&noisy, &self.lay.clean[range.clone()], self.mask_id);
            for (i, (&tok, (&m, label))) in noisy.iter().zip(mask.iter().zip(labels)).enumerate() {
                canvas[range.start + i] = tok;
                let weight = if m { masked } else { visible };
                slots.push(Slot { pos: range.start + i, target: label.target(self.delete, self.split), part: Part::of(m, label), weight });
            }
        }
        self.rows.push(EditRow { level: t, canvas, slots });
        Ok(())
    }

    fn noisy_start(&self) -> usize {
        (self.lay.first * self.lay.block) as usize
    }

    /// Per row, per noisy canvas position (from the first response block to the end), `log p(target)` at the
    /// scored slots and 0 elsewhere: `[rows, len]` f32 WITH gradients, one composite forward for all rows.
    pub fn logp(&self, model: &Model) -> Result<Tensor> {
        self.logp_rows(model, 0..self.rows.len())
    }

    fn logp_rows(&self, model: &Model, rows: Range<usize>) -> Result<Tensor> {
        let rows = &self.rows[rows];
        if rows.is_empty() {
            return Err(Error::invalid("edit plan", "no rows", "needs at least one sample"));
        }
        let noisy: Vec<Vec<i64>> = rows.iter().map(|r| r.canvas.clone()).collect();
        let clean = vec![self.lay.clean.clone(); rows.len()];
        let comp = composite::build(&noisy, &clean, self.lay.block, self.lay.first)?;
        let (start, len) = (comp.noisy_start as usize, comp.noisy_len);
        let logits = model.forward_masked(&comp.ids, &comp.positions, &comp.allowed, None)?.narrow(1, 0, len);
        let (targets, scored) = self.targets(rows, start, len as usize);
        let dev = model.device();
        let n = rows.len() as i64;
        let targets = Tensor::from_slice(&targets).to_device(dev).view([n, len, 1]);
        let scored = Tensor::from_slice(&scored).to_device(dev).view([n, len]);
        let logp = logits.gather(-1, &targets, false).squeeze_dim(-1) - logits.logsumexp(-1, false);
        Ok(logp.masked_fill(&scored.logical_not(), 0.0))
    }

    /// Flat `[rows * len]` targets (the clean token where nothing is scored) and scored flags.
    fn targets(&self, rows: &[EditRow], start: usize, len: usize) -> (Vec<i64>, Vec<bool>) {
        let mut targets = Vec::with_capacity(rows.len() * len);
        let mut scored = vec![false; rows.len() * len];
        for (r, row) in rows.iter().enumerate() {
            let base = targets.len();
            targets.extend_from_slice(&self.lay.clean[start..start + len]);
            for s in &row.slots {
                targets[base + s.pos - start] = s.target;
                scored[r * len + s.pos - start] = true;
            }
        }
        (targets, scored)
    }

    /// The slow reference of [`EditPlan::logp`]: each block of each row from its own plain block-causal forward
    /// (no cache) of `clean[..s] ++ noisy block`. No gradients. For tests.
    pub fn logp_loop(&self, model: &Model) -> Result<Tensor> {
        let (bl, start) = (self.lay.block as usize, self.noisy_start());
        let len = self.lay.clean.len() - start;
        let dev = model.device();
        let mut out = Vec::with_capacity(self.rows.len());
        for row in &self.rows {
            let (targets, scored) = self.targets(std::slice::from_ref(row), start, len);
            let mut blocks = Vec::new();
            for s in (start..self.lay.clean.len()).step_by(bl) {
                let mut seq = self.lay.clean[..s].to_vec();
                seq.extend_from_slice(&row.canvas[s..s + bl]);
                let ids = Tensor::from_slice(&seq).view([1, -1]);
                let logits = tch::no_grad(|| model.forward(&ids, &mut KvCache::new(), s as i64, BlockMask::block_causal(bl as i64)))?.get(0);
                let t = Tensor::from_slice(&targets[s - start..s - start + bl]).to_device(dev).view([bl as i64, 1]);
                let logp = logits.gather(-1, &t, false).squeeze_dim(-1) - logits.logsumexp(-1, false);
                let keep = Tensor::from_slice(&scored[s - start..s - start + bl]).to_device(dev);
                blocks.push(logp.masked_fill(&keep.logical_not(), 0.0));
            }
            out.push(Tensor::cat(&blocks, 0));
        }
        Ok(Tensor::stack(&out, 0))
    }

    /// Per row, per noisy position: the slot weights (0 where nothing is scored), `[rows, len]` f32.
    fn weights(&self, len: usize) -> Vec<f32> {
        let start = self.noisy_start();
        let mut w = vec![0f32; self.rows.len() * len];
        for (r, row) in self.rows.iter().enumerate() {
            for s in &row.slots {
                w[r * len + s.pos - start] = s.weight as f32;
            }
        }
        w
    }

    /// The estimate `sum_rows sum_slots weight * logp` as a scalar tensor (keeps the gradient of `logp`, the
    /// output of [`EditPlan::logp`]).
    pub fn combine(&self, logp: &Tensor) -> Tensor {
        let len = logp.size()[1];
        let w = Tensor::from_slice(&self.weights(len as usize)).view([self.rows.len() as i64, len]).to_device(logp.device());
        (logp * w).sum(Kind::Float)
    }

    /// The report of this plan given `logp` (`[rows][len]` from [`EditPlan::logp`]): value, per-block sums,
    /// stderr over the samples (as [`crate::likelihood::report`]) and the parts.
    pub fn report(&self, logp: &[Vec<f64>], forwards: usize) -> LikelihoodReport {
        let (start, bl) = (self.noisy_start(), self.lay.block as usize);
        let mut per_block = vec![0.0; self.lay.blocks as usize];
        let mut per_sample = vec![0.0; self.rows.len()];
        let mut parts = EditParts::default();
        for ((row, lp), acc) in self.rows.iter().zip(logp).zip(per_sample.iter_mut()) {
            for s in &row.slots {
                let x = s.weight * lp[s.pos - start];
                per_block[(s.pos - start) / bl] += x;
                *acc += x;
                let c = parts.get_mut(s.part);
                c.sum += x;
                c.count += 1;
            }
        }
        let n = self.rows.len() as f64;
        let stderr = if self.rows.len() < 2 {
            0.0
        } else {
            let vals: Vec<f64> = per_sample.iter().map(|v| n * v).collect();
            let mean = vals.iter().sum::<f64>() / n;
            (vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0) / n).sqrt()
        };
        LikelihoodReport {
            value: per_block.iter().sum(),
            per_block,
            stderr,
            samples: self.rows.len(),
            forwards,
            rows: self.rows.len(),
            edit: Some(parts),
        }
    }
}

/// Estimates the `edit` likelihood of `response` given `prompt` with `levels` samples and drafts at `rate`
/// (noise from `seed`), without gradients; rows go through the model [`MAX_ROWS`] at a time.
#[allow(clippy::too_many_arguments)]
pub fn likelihood(model: &Model, prompt: &[i64], response: &[i64], mask_id: i64, eos_id: i64, block: i64, levels: usize, rate: f64, seed: u64) -> Result<LikelihoodReport> {
    let plan = EditPlan::draw(model, prompt, response, mask_id, eos_id, block, levels, rate, seed)?;
    let mut parts = Vec::new();
    for s in (0..plan.rows.len()).step_by(MAX_ROWS) {
        let rows = s..(s + MAX_ROWS).min(plan.rows.len());
        parts.push(tch::no_grad(|| plan.logp_rows(model, rows))?);
    }
    let forwards = parts.len();
    let t = Tensor::cat(&parts, 0).to_kind(Kind::Double).to_device(tch::Device::Cpu);
    let logp: Vec<Vec<f64>> = Vec::<Vec<f64>>::try_from(&t)?;
    Ok(plan.report(&logp, forwards))
}
