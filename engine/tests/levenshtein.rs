//! Levenshtein decoding (LLaDA2.2), pinned rule by rule with a scripted model: DELETE shifts, SPLIT keeps the
//! step-start token, pad and truncate, flags travel, introduced masks raise the minimum, the post counter, the
//! final round's exclusions, the anti-loop redraw under rewind, and every `sglang-indel` difference
//! (shared/reference/llada2.2.md sections 3.1-3.6).

use std::cell::Cell;

use dllm_engine::decode::{CapAction, DecodeSettings, Decoder, Denoiser, Editing, Event, FinalForbid, PostCounter, StepReport, WriteKind};
use dllm_engine::{BlockMask, KvCache, Result};
use tch::Tensor;

const V: i64 = 128;
const MASK: i64 = 1;
const EOS: i64 = 0;
const DEL: i64 = 120;
const SPLIT: i64 = 121;

/// Per forward: (forward index, canvas position, token there now) -> listed (token, p); the rest of the mass
/// is spread evenly over the other tokens.
type Script = Box<dyn Fn(usize, i64, i64) -> Vec<(i64, f32)>>;

struct Scripted {
    script: Script,
    calls: Cell<usize>,
    routing_block: Option<i64>,
}

impl Scripted {
    fn new(f: impl Fn(usize, i64, i64) -> Vec<(i64, f32)> + 'static) -> Scripted {
        Scripted { script: Box::new(f), calls: Cell::new(0), routing_block: None }
    }
}

impl Denoiser for Scripted {
    fn vocab_size(&self) -> i64 {
        V
    }
    fn max_positions(&self) -> i64 {
        1024
    }
    fn edit_tokens(&self) -> Option<(i64, i64)> {
        Some((DEL, SPLIT))
    }
    fn routing_block(&self) -> Option<i64> {
        self.routing_block
    }
    fn forward(&self, ids: &Tensor, start: i64, _cache: &mut KvCache, commit: i64, _mask: BlockMask) -> Result<Tensor> {
        let (batch, len) = (ids.size()[0], ids.size()[1]);
        let n = self.calls.get();
        self.calls.set(n + 1);
        let mut rows = Vec::new();
        for b in 0..batch {
            let ids: Vec<i64> = Vec::try_from(&ids.get(b)).unwrap();
            for i in commit..len {
                let listed = (self.script)(n, start + i, ids[i as usize]);
                let rest = (1.0 - listed.iter().map(|x| x.1 as f64).sum::<f64>()).max(1e-9) / (V - listed.len() as i64) as f64;
                let mut row = vec![rest.ln() as f32; V as usize];
                for (t, p) in listed {
                    row[t as usize] = (p as f64).ln() as f32;
                }
                rows.extend(row);
            }
        }
        Ok(Tensor::from_slice(&rows).view([batch, len - commit, V]))
    }
}

/// The `llada2.2` preset on a canvas of `block`-sized blocks.
fn lev(gen: i64, block: i64) -> DecodeSettings {
    let mut s = DecodeSettings::official(gen);
    s.apply_preset("llada2.2").unwrap();
    s.block_length = block;
    s
}

fn sglang(gen: i64, block: i64) -> DecodeSettings {
    let mut s = DecodeSettings::official(gen);
    s.apply_preset("sglang-indel").unwrap();
    s.block_length = block;
    s
}

fn decoder(prompt: &[i64], s: DecodeSettings, m: &dyn Denoiser) -> Decoder {
    Decoder::new(prompt, s, MASK, EOS, m).unwrap()
}

fn gamma(r: &StepReport) -> Vec<(i64, i64)> {
    r.gamma.iter().map(|u| (u.pos, u.token)).collect()
}

fn step(d: &mut Decoder, m: &dyn Denoiser) -> StepReport {
    d.step(m).unwrap().expect("a step")
}

/// Fills every mask on forward 0 with 10 + position at p 0.9; afterwards `then` decides, and by default a
/// mask is filled the same way and a token is confirmed.
fn fill_then(then: impl Fn(usize, i64, i64) -> Option<Vec<(i64, f32)>> + 'static) -> Scripted {
    Scripted::new(move |n, pos, now| {
        if n == 0 {
            return vec![(10 + pos, 0.9)];
        }
        then(n, pos, now).unwrap_or_else(|| vec![(if now == MASK { 10 + pos } else { now }, 0.9)])
    })
}

#[test]
fn delete_shifts_left_and_pads_with_a_non_original_mask() {
    let m = fill_then(|n, pos, _| (n == 1 && pos == 2).then(|| vec![(DEL, 0.9)]).or_else(|| (n == 2 && pos == 3).then(|| vec![(40, 0.9)])));
    let mut d = decoder(&[7], lev(3, 4), &m);
    assert_eq!(gamma(&step(&mut d, &m)), vec![(1, 11), (2, 12), (3, 13)]);
    let r = step(&mut d, &m);
    assert_eq!((r.delta.len(), r.delta[0].pos, r.delta[0].kind), (1, 2, WriteKind::Delete));
    let l = r.lev.as_ref().unwrap();
    assert_eq!(l.deleted, vec![2]);
    assert_eq!(l.slots, vec![Some(0), Some(1), None, Some(2)]);
    assert_eq!((l.pad, l.inserted.clone(), l.truncated.clone()), (1, vec![], vec![]));
    assert_eq!(r.tokens, vec![7, 11, 13, MASK]);
    assert_eq!(l.orig, vec![false, true, true, false], "the pad mask is not original");
    // The pad is an introduced mask: it is filled next, and the post counter already runs (no original left).
    let r = step(&mut d, &m);
    let l = r.lev.as_ref().unwrap();
    assert_eq!((l.originals, l.introduced, l.post), (0, 1, 2));
    assert_eq!(gamma(&r), vec![(3, 40)]);
    d.run(&m).unwrap();
    assert_eq!(d.output(), vec![11, 13, 40]);
    assert!(d.is_finished());
    assert_eq!((d.stats().deletions, d.stats().insertions), (1, 0));
}

#[test]
fn split_opens_a_mask_before_the_step_start_token_and_cuts_the_tail() {
    let m = fill_then(|n, pos, _| match (n, pos) {
        (1, 1) => Some(vec![(SPLIT, 0.9)]),
        (1, 2) => Some(vec![(30, 0.9)]), // written in the same step; the SPLIT keeps slot 1's step-start 11
        (2, 1) => Some(vec![(20, 0.9)]),
        _ => None,
    });
    let mut d = decoder(&[7], lev(3, 4), &m);
    step(&mut d, &m);
    let r = step(&mut d, &m);
    let l = r.lev.as_ref().unwrap();
    assert_eq!(r.tokens, vec![7, MASK, 11, 30]);
    assert_eq!(l.split, vec![1]);
    assert_eq!(l.inserted, vec![1]);
    assert_eq!(l.truncated, vec![(3, 13)], "a committed token falls off the tail");
    assert_eq!(l.slots, vec![Some(0), Some(2), Some(3), None]);
    assert_eq!(l.orig, vec![false, false, true, true], "flags travel with their slots; the new mask is not original");
    let kinds: Vec<WriteKind> = r.delta.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, vec![WriteKind::Split, WriteKind::Token]);
    d.run(&m).unwrap();
    assert_eq!(d.output(), vec![20, 11, 30]);
    assert_eq!((d.stats().insertions, d.stats().truncated), (1, 1));
    assert!(!d.output().iter().any(|&t| t == MASK || t == DEL || t == SPLIT));
}

#[test]
fn introduced_masks_raise_the_minimum_and_the_schedule_ends_in_all_masks() {
    // Block 8 after a 1-token prompt: 7 generated slots. Forward 0 SPLITs the first original mask; nothing else
    // passes the threshold. Forward 1: need = schedule(1) + 1 introduced = 2 most confident masks.
    let m = Scripted::new(|n, pos, _| match (n, pos) {
        (0, 1) => vec![(SPLIT, 0.9)],
        _ => vec![(30 + pos, 0.2)],
    });
    let mut d = decoder(&[7], lev(7, 8), &m);
    let r = step(&mut d, &m);
    assert_eq!((r.gamma.len(), r.gamma[0].kind), (1, WriteKind::Split));
    let l = r.lev.as_ref().unwrap();
    assert_eq!((l.need, l.inserted.clone(), l.truncated.clone()), (1, vec![1], vec![(7, MASK)]));
    let r = step(&mut d, &m);
    let l = r.lev.as_ref().unwrap();
    assert_eq!((l.originals, l.introduced, l.need), (6, 1, 2));
    assert!(r.fallback);
    assert_eq!(gamma(&r), vec![(1, 31), (2, 32)], "ties go to the lower position");
    // A 2-step schedule: from step 2 on every mask is unmasked at once.
    let mut s = lev(7, 8);
    s.schedule_steps = Some(2);
    let m = Scripted::new(|_, pos, _| vec![(30 + pos, 0.2)]);
    let mut d = decoder(&[7], s, &m);
    assert_eq!(step(&mut d, &m).gamma.len(), 4, "7 slots over 2 steps: 4 then 3");
    assert_eq!(step(&mut d, &m).gamma.len(), 3);
}

/// Forward 1 turns the token at position 2 back into MASK (an edit), forward 2 fills it again.
fn remasking() -> Scripted {
    fill_then(|n, pos, _| match (n, pos) {
        (1, 2) => Some(vec![(MASK, 0.9)]),
        (2, 2) => Some(vec![(12, 0.9)]),
        _ => None,
    })
}

#[test]
fn the_post_counter_resets_while_an_original_mask_is_open_or_accumulates() {
    let posts = |counter: PostCounter| {
        let m = remasking();
        let mut s = lev(3, 4);
        s.max_post_steps = 2;
        s.post_counter = counter;
        let mut d = decoder(&[7], s, &m);
        let reports = d.run(&m).unwrap();
        let r1 = &reports[1];
        assert_eq!(r1.tokens[2], MASK);
        assert!(r1.lev.as_ref().unwrap().orig[2], "a committed token turned MASK is an original mask again");
        reports.iter().map(|r| (r.lev.as_ref().unwrap().post, r.lev.as_ref().unwrap().final_round)).collect::<Vec<_>>()
    };
    // reset: 0, 1, 0 (the original mask reappeared), 1; the unchanged block then ends at its fixed point.
    assert_eq!(posts(PostCounter::Reset), vec![(0, false), (1, false), (0, false), (1, false)]);
    // cumulative: never reset, so the same step reaches max_post_steps and is a final round.
    assert_eq!(posts(PostCounter::Cumulative), vec![(0, false), (1, false), (1, false), (2, true)]);
}

#[test]
fn the_final_round_fills_every_mask_and_redraws_edit_tokens() {
    // max_post_steps 0: the step that resolves the last original masks is the final round. Position 3 wants to
    // SPLIT, position 2 to stay MASK.
    let script = |_: usize, pos: i64, _: i64| match pos {
        1 => vec![(21, 0.6), (22, 0.2)],
        2 => vec![(MASK, 0.8), (12, 0.1)],
        _ => vec![(SPLIT, 0.7), (13, 0.2)],
    };
    let m = Scripted::new(script);
    let mut s = lev(3, 4);
    s.max_post_steps = 0;
    s.threshold = 0.5;
    let mut d = decoder(&[7], s.clone(), &m);
    let r = step(&mut d, &m);
    let l = r.lev.as_ref().unwrap();
    assert!(l.final_round);
    assert_eq!(gamma(&r), vec![(1, 21), (2, MASK), (3, 13)]);
    // Renormalised without DELETE (p 0.1 / 126, the spread rest) and SPLIT (0.7).
    let expected = 0.2 / (0.3 - 0.1 / 126.0);
    assert!((r.gamma[2].p - expected).abs() < 1e-4, "renormalised without DELETE / SPLIT: {}", r.gamma[2].p);
    assert!(l.split.is_empty() && l.deleted.is_empty());
    assert_eq!(r.tokens, vec![7, 21, MASK, 13], "the reference leaves a MASK written at a mask masked");
    // SGLang's final round also forbids MASK.
    s.final_forbid = FinalForbid::EditsAndMask;
    let mut d = decoder(&[7], s, &m);
    let r = step(&mut d, &m);
    assert_eq!(r.tokens, vec![7, 21, 12, 13]);
}

#[test]
fn a_final_round_edit_redrawn_to_the_current_token_is_no_write() {
    let m = fill_then(|_, pos, now| (pos == 2).then(|| vec![(DEL, 0.6), (now, 0.3)]));
    let mut s = lev(3, 4);
    s.max_post_steps = 1;
    let mut d = decoder(&[7], s, &m);
    step(&mut d, &m);
    let r = step(&mut d, &m);
    assert!(r.lev.as_ref().unwrap().final_round);
    assert!(r.delta.is_empty(), "{:?}", r.delta);
    assert_eq!(r.tokens, vec![7, 11, 12, 13]);
}

/// After the fill (masks take 10 + position), positions 2 and 3 flip between 10 + pos and 20 + pos forever;
/// their second choice, 40 + pos, is stable once written. A pure function of the canvas, so a rewound decoder
/// sees the same model.
fn flipping(p2: f32, p3: f32) -> Scripted {
    Scripted::new(move |_, pos, now| {
        let p = if pos == 2 { p2 } else { p3 };
        if now == MASK {
            vec![(10 + pos, 0.9)]
        } else if pos >= 2 && now != 40 + pos {
            let other = if now == 10 + pos { 20 + pos } else { 10 + pos };
            vec![(other, p), (40 + pos, (1.0 - p) / 2.0)]
        } else {
            vec![(now, 0.9)]
        }
    })
}

#[test]
fn the_random_anti_loop_redraw_breaks_a_cycle_and_rewind_reproduces_it() {
    let m = flipping(0.9, 0.9);
    let mut d = decoder(&[7], lev(3, 4), &m);
    let reports = d.run(&m).unwrap();
    let redraws: Vec<_> = reports.iter().flat_map(|r| r.lev.as_ref().unwrap().antiloop.clone()).collect();
    assert!(!redraws.is_empty(), "the cycle 12,13 -> 22,23 -> 12,13 was broken");
    let first = reports.iter().position(|r| !r.lev.as_ref().unwrap().antiloop.is_empty()).unwrap();
    assert_eq!(first, 2, "forward 2 writes the block of forward 0 again");
    let r = &redraws[0];
    assert!(r.pos == 2 || r.pos == 3);
    assert_eq!((r.from, r.to), (10 + r.pos, 40 + r.pos), "redrawn without its current token: the second choice");
    assert!(d.is_finished());
    assert!(Event::Antiloop.fires(&reports[first], &d, None));
    // Rewinding and stepping again reproduces every redraw (the decoder's own generator is journalled).
    let trace = d.trace_json();
    for t in [first as i64, 1, 0] {
        d.rewind(t).unwrap();
        d.run(&m).unwrap();
        assert_eq!(d.trace_json(), trace, "rewind to {t}");
    }
    // A different seed may choose the other slot, but still breaks the loop.
    let mut s = lev(3, 4);
    s.seed = 12345;
    let mut e = decoder(&[7], s, &m);
    e.run(&m).unwrap();
    assert!(e.is_finished());
}

#[test]
fn sglang_lowest_anti_loop_takes_the_least_confident_slot_deterministically() {
    let m = flipping(0.8, 0.9);
    let mut d = decoder(&[7], sglang(3, 4), &m);
    let reports = d.run(&m).unwrap();
    // Inputs: [M..] (0), [11,12,13] (1), [11,22,23] (2), [11,12,13] again (3): the input block repeats.
    let (i, r) = reports.iter().enumerate().find(|(_, r)| !r.lev.as_ref().unwrap().antiloop.is_empty()).unwrap();
    assert_eq!(i, 3);
    let a = &r.lev.as_ref().unwrap().antiloop;
    assert_eq!((a.len(), a[0].pos, a[0].from, a[0].to), (1, 2, 22, 42), "position 2 (p 0.8), not 12 or 22 again");
}

#[test]
fn sglang_need_is_one_plus_introduced_without_a_schedule() {
    let m = Scripted::new(|_, pos, _| vec![(30 + pos, 0.2)]);
    let mut s = lev(7, 8);
    s.schedule_steps = Some(2);
    let mut d = decoder(&[7], s, &m);
    assert_eq!(step(&mut d, &m).lev.unwrap().need, 4);
    let mut d = decoder(&[7], sglang(7, 8), &m);
    let r = step(&mut d, &m);
    assert_eq!((r.lev.as_ref().unwrap().need, r.gamma.len()), (1, 1));
}

#[test]
fn sglang_mask_fallback_takes_the_best_other_token_at_original_masks() {
    let m = Scripted::new(|_, pos, _| if pos == 2 { vec![(MASK, 0.9), (50, 0.06)] } else { vec![(30 + pos, 0.9)] });
    let mut s = sglang(3, 4);
    s.threshold = 0.05;
    let mut d = decoder(&[7], s, &m);
    let r = step(&mut d, &m);
    let at2 = r.gamma.iter().find(|u| u.pos == 2).unwrap();
    assert_eq!(at2.token, 50);
    assert!((at2.p - 0.06).abs() < 1e-4, "its own probability is the confidence");
    let mut s = lev(3, 4);
    s.threshold = 0.05;
    let mut d = decoder(&[7], s, &m);
    let r = step(&mut d, &m);
    assert_eq!(r.gamma.iter().find(|u| u.pos == 2).unwrap().token, MASK, "the reference has no MASK fallback");
}

#[test]
fn the_step_cap_is_an_error_in_the_reference_and_a_final_round_in_sglang() {
    let m = flipping(0.9, 0.9);
    let mut s = lev(3, 4);
    s.antiloop = dllm_engine::decode::AntiLoop::Off;
    s.max_steps_per_block = Some(3);
    let mut d = decoder(&[7], s.clone(), &m);
    for _ in 0..3 {
        step(&mut d, &m);
    }
    let canvas = d.canvas().to_vec();
    let e = d.step(&m).unwrap_err().to_string();
    assert!(e.contains("block 0 did not converge in 3 steps") && e.contains("max_steps_per_block"), "{e}");
    assert_eq!(d.canvas(), &canvas[..], "a failed step changes nothing");
    s.cap_action = CapAction::Final;
    let mut d = decoder(&[7], s, &m);
    let reports: Vec<_> = (0..4).map(|_| step(&mut d, &m)).collect();
    assert!(!reports[2].lev.as_ref().unwrap().final_round && reports[3].lev.as_ref().unwrap().final_round);
    // `auto` is SGLang's block + post steps + 1.
    assert_eq!(sglang(3, 4).step_cap(), 4 + 16 + 1);
}

#[test]
fn rewind_fork_and_saved_states_restore_flags_and_memory() {
    // Block 1 (positions 4..8) fills 14 15 16 17 and DELETEs the 15; the next step fills the pad mask with 17
    // and SPLITs the 17 at position 6, which pushes the fresh 17 off the tail; the opened mask takes 16. A pure
    // function of the canvas, so rewinding replays it.
    let m = Scripted::new(|_, pos, now| match (pos, now) {
        (_, MASK) if pos == 6 => vec![(16, 0.9)],
        (_, MASK) => vec![(10 + pos, 0.9)],
        (5, 15) => vec![(DEL, 0.9)],
        (6, 17) => vec![(SPLIT, 0.9)],
        _ => vec![(now, 0.9)],
    });
    let mut d = decoder(&[7, 8], lev(6, 4), &m);
    let reports = d.run(&m).unwrap();
    let trace = d.trace_json();
    let canvas = d.canvas().to_vec();
    assert_eq!(d.canvas()[4..8], [14, 16, 16, 17]);
    let del_step = reports.iter().position(|r| !r.lev.as_ref().unwrap().deleted.is_empty()).unwrap() as i64;
    // A saved state continues exactly (flags and loop memory included).
    let mut e = decoder(&[7, 8], lev(6, 4), &m);
    for _ in 0..=del_step + 1 {
        e.step(&m).unwrap();
    }
    assert_eq!(e.canvas()[4..8], [14, 16, MASK, 17]);
    assert_eq!(e.snapshot().orig[4..8], [true, true, false, true], "the opened mask is not original");
    let saved = serde_json::to_string(&e.snapshot()).unwrap();
    let mut r = Decoder::restore(serde_json::from_str(&saved).unwrap(), &m).unwrap();
    r.run(&m).unwrap();
    assert_eq!(r.trace_json(), trace);
    // Rewinding past the DELETE restores the canvas and the flags; forks are independent.
    e.rewind(del_step).unwrap();
    assert_eq!(e.canvas()[4..8], [14, 15, 16, 17]);
    assert_eq!(e.snapshot().orig[4..8], [true, true, true, true]);
    let mut f = e.fork();
    f.run(&m).unwrap();
    assert_eq!(f.canvas(), &canvas[..]);
    assert_eq!(e.reports().count() as i64, del_step);
    e.run(&m).unwrap();
    assert_eq!(e.trace_json(), trace);
    let steps = trace["steps"].as_array().unwrap();
    assert!(steps.iter().all(|s| s["tokens"].as_array().unwrap().len() == 4));
    let at = del_step as usize;
    assert_eq!(steps[at]["deleted"], serde_json::json!([5]));
    assert_eq!(steps[at]["tokens"], serde_json::json!([14, 16, 17, MASK]));
    assert_eq!(steps[at + 1]["split"], serde_json::json!([6]));
    assert_eq!(steps[at + 1]["truncated"], serde_json::json!([[7, 17]]));
    assert_eq!(d.output(), vec![12, 13, 14, 16, 16, 17]);
}

#[test]
fn edit_tokens_are_not_text_and_levenshtein_needs_a_model_that_has_them() {
    let m = Scripted::new(|_, _, _| vec![(5, 0.9)]);
    let e = Decoder::new(&[7, DEL], lev(3, 4), MASK, EOS, &m).unwrap_err().to_string();
    assert!(e.contains("DELETE edit token (id 120) at position 1"), "{e}");
    let e = Decoder::new(&[SPLIT], lev(3, 4), MASK, EOS, &m).unwrap_err().to_string();
    assert!(e.contains("SPLIT edit token (id 121) at position 0"), "{e}");
    let mut d = decoder(&[7], lev(3, 4), &m);
    step(&mut d, &m);
    let e = d.set_tokens(&[(2, DEL)], V).unwrap_err().to_string();
    assert!(e.contains("DELETE edit operation, not a token"), "{e}");
    // A model without edit tokens (LLaDA2.1) cannot decode with edit_ops levenshtein.
    struct Plain(Scripted);
    impl Denoiser for Plain {
        fn vocab_size(&self) -> i64 {
            V
        }
        fn max_positions(&self) -> i64 {
            1024
        }
        fn forward(&self, ids: &Tensor, start: i64, cache: &mut KvCache, commit: i64, mask: BlockMask) -> Result<Tensor> {
            self.0.forward(ids, start, cache, commit, mask)
        }
    }
    let plain = Plain(Scripted::new(|_, _, _| vec![(5, 0.9)]));
    let e = Decoder::new(&[7], lev(3, 4), MASK, EOS, &plain).unwrap_err().to_string();
    assert!(e.contains("no DELETE / SPLIT tokens"), "{e}");
    // Block routing: the decoding block must be a multiple of the routing block.
    let mut m = Scripted::new(|_, _, _| vec![(5, 0.9)]);
    m.routing_block = Some(4);
    let e = Decoder::new(&[7], lev(3, 6), MASK, EOS, &m).unwrap_err().to_string();
    assert!(e.contains("multiple of the model's routing block_size 4"), "{e}");
    assert!(Decoder::new(&[7], lev(3, 8), MASK, EOS, &m).is_ok());
}

#[test]
fn substitution_only_never_writes_edit_tokens_of_a_2_2_model() {
    let m = Scripted::new(|_, pos, _| vec![(if pos % 2 == 0 { DEL } else { SPLIT }, 0.6), (30 + pos, 0.3)]);
    let mut s = DecodeSettings::official(6);
    s.apply_preset("S").unwrap();
    s.block_length = 4;
    let mut d = decoder(&[7], s, &m);
    d.run(&m).unwrap();
    assert_eq!(d.output(), vec![31, 32, 33, 34, 35, 36]);
    assert!(d.reports().all(|r| r.lev.is_none()));
}

#[test]
fn edit_threshold_off_keeps_levenshtein_writes_to_the_mask_channel() {
    let m = fill_then(|_, pos, _| (pos == 2).then(|| vec![(DEL, 0.9)]));
    let mut s = lev(3, 4);
    s.editing = Editing::Off;
    let mut d = decoder(&[7], s, &m);
    d.run(&m).unwrap();
    assert_eq!(d.output(), vec![11, 12, 13], "no Delta: committed tokens are never deleted");
}

mod common;

/// A random block-routed `micro-2.2` model (pools of 4 of 8 experts per 4 positions) with edit ids 120 / 121
/// whose lm_head rows are scaled up, so DELETE and SPLIT win often enough for the comparisons to exercise the
/// shifts.
fn random_lev_model(seed: u64) -> dllm_engine::Model {
    let base = dllm_engine::shapes::shape("micro-2.2").unwrap();
    assert_eq!(base.block_routing(), Some((4, 4)));
    let cfg = dllm_engine::Config { delete_token_id: Some(DEL), split_token_id: Some(SPLIT), ..base };
    let model = common::spiky_model(&cfg, seed);
    let lm = &model.var_store().variables()["lm_head.weight"];
    tch::no_grad(|| {
        for id in [DEL, SPLIT] {
            let mut row = lm.get(id);
            let _ = row.g_mul_scalar_(4.0);
        }
    });
    model
}

#[test]
fn cached_levenshtein_decoding_equals_recomputing_everything_on_random_models() {
    let (mut deletions, mut insertions, mut truncated, mut steps) = (0, 0, 0, 0);
    for seed in 0..2 {
        let model = random_lev_model(40 + seed);
        for preset in ["llada2.2", "sglang-indel"] {
            for prompt in [&[10i64, 11, 12][..], &[20, 21, 22, 23, 24, 25, 26, 27, 28]] {
                let mut s = DecodeSettings::official(20);
                s.apply_preset(preset).unwrap();
                s.block_length = 4;
                s.max_post_steps = 4;
                s.eos_early_stop = false;
                let mut d = Decoder::new(prompt, s.clone(), MASK, EOS, &model).unwrap();
                d.run(&model).unwrap();
                let mut nc = Decoder::new(prompt, s, MASK, EOS, &model).unwrap();
                nc.set_cache_enabled(false);
                nc.run(&model).unwrap();
                let (a, b) = (d.trace_json(), nc.trace_json());
                assert_eq!(a["steps"].as_array().unwrap().len(), b["steps"].as_array().unwrap().len(), "{preset} seed {seed}");
                for (x, y) in a["steps"].as_array().unwrap().iter().zip(b["steps"].as_array().unwrap()) {
                    assert_eq!(x["tokens"], y["tokens"], "{preset} seed {seed}");
                    assert_eq!(x["deleted"], y["deleted"]);
                    assert_eq!(x["split"], y["split"]);
                }
                assert_eq!(d.canvas(), nc.canvas());
                assert!(d.is_finished());
                assert!(!d.output().iter().any(|&t| t == MASK || t == DEL || t == SPLIT), "{:?}", d.output());
                let st = d.stats();
                deletions += st.deletions;
                insertions += st.insertions;
                truncated += st.truncated;
                steps += st.forwards;
            }
        }
    }
    eprintln!("{deletions} deletions, {insertions} insertions, {truncated} cut in {steps} steps");
    assert!(deletions > 5 && insertions > 5 && truncated > 0, "the comparison must exercise the edits: {deletions} deletions, {insertions} insertions, {truncated} cut in {steps} steps");
}

#[test]
fn a_levenshtein_batch_decodes_each_row_exactly_as_alone() {
    let model = random_lev_model(50);
    let prompts: Vec<Vec<i64>> = vec![vec![10, 11, 12], vec![20, 21, 22, 23, 24, 25, 26, 27, 28], vec![40]];
    for preset in ["llada2.2", "sglang-indel"] {
        let mut s = DecodeSettings::official(14);
        s.apply_preset(preset).unwrap();
        s.block_length = 4;
        s.max_post_steps = 3;
        let mut batch = dllm_engine::decode::BatchDecoder::new(&prompts, s.clone(), MASK, EOS, &model).unwrap();
        batch.run(&model).unwrap();
        for (i, (row, p)) in batch.rows().iter().zip(&prompts).enumerate() {
            let mut alone = Decoder::new(p, s.clone(), MASK, EOS, &model).unwrap();
            alone.run(&model).unwrap();
            // Probabilities of a batched forward differ in the last bits; every decision must not.
            let decisions = |d: &Decoder| {
                d.reports().map(|r| (gamma(r), r.delta.iter().map(|e| (e.pos, e.new)).collect::<Vec<_>>(), r.tokens.clone())).collect::<Vec<_>>()
            };
            assert_eq!(decisions(row), decisions(&alone), "{preset}: row {i}");
            assert_eq!(row.canvas(), alone.canvas());
        }
    }
}

/// Steps once on a sound model, then once while its forward is broken (`broken` gives what the script lists
/// then, or panics as tch does on a libtorch error): the step fails with an error saying all of `says`, nothing
/// changes, and the decode goes on once the model is sound again. For both decoding loops.
fn a_broken_forward_fails_the_step_alone(broken: impl Fn() -> Vec<(i64, f32)> + 'static, says: &[&str]) {
    let is_broken = std::rc::Rc::new(Cell::new(false));
    let flag = is_broken.clone();
    let m = Scripted::new(move |_, pos, _| if flag.get() { broken() } else { vec![(10 + pos, 0.9)] });
    for preset in ["llada2.2", "S"] {
        let mut s = DecodeSettings::official(6);
        s.apply_preset(preset).unwrap();
        s.block_length = 4;
        let mut d = decoder(&[7], s, &m);
        is_broken.set(false);
        step(&mut d, &m);
        let (canvas, cursor, steps) = (d.canvas().to_vec(), d.cursor(), d.reports().count());
        is_broken.set(true);
        let e = d.step(&m).unwrap_err().to_string();
        assert!(says.iter().all(|w| e.contains(w)), "{preset}: {e}");
        assert_eq!((d.canvas(), d.cursor(), d.reports().count()), (&canvas[..], cursor, steps), "{preset}: nothing changed");
        is_broken.set(false);
        d.run(&m).unwrap();
        assert!(d.is_finished(), "{preset}: the decode goes on once the model is sound");
    }
}

#[test]
fn nan_logits_fail_the_step_naming_it_and_change_nothing() {
    a_broken_forward_fails_the_step_alone(|| vec![(5, f32::NAN)], &["step 1 (block 0)", "NaN or infinite logits"]);
}

#[test]
fn a_forward_that_fails_inside_libtorch_fails_the_step_and_changes_nothing() {
    // tch panics on a libtorch error (out of memory, a kernel failure): the step must turn it into an error.
    a_broken_forward_fails_the_step_alone(|| panic!("CUDA out of memory (simulated)"), &["forward", "libtorch failed: CUDA out of memory (simulated)"]);
}
