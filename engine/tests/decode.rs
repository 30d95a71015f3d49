//! The decoding loop's rules, pinned with a scripted model (hand-written probabilities per forward), and the
//! cached stepper against a slow no-cache reference decoder on random checkpoints.

mod common;

use std::cell::RefCell;

use common::*;
use dllm_engine::decode::{BatchDecoder, DecodeSettings, Decoder, Denoiser, Editing, EditTiming, Event, StepReport};
use dllm_engine::{BlockMask, KvCache, MaskKind, Model, Result};
use tch::{Kind, Tensor};

const V: i64 = 128; // the micro preset's vocabulary, so scripted tokens have texts
const MASK: i64 = 1;
const EOS: i64 = 0;

/// Per forward: a function of (forward index, canvas position, token there now) -> (token, p).
type Script = Box<dyn Fn(usize, i64, i64) -> (i64, f32)>;

/// A model whose distribution at every position puts probability `p` on `token` and spreads the rest evenly.
struct Scripted {
    script: Script,
    calls: RefCell<Vec<(i64, i64, i64)>>, // (start, len, commit)
}

impl Scripted {
    fn new(f: impl Fn(usize, i64, i64) -> (i64, f32) + 'static) -> Scripted {
        Scripted { script: Box::new(f), calls: RefCell::new(Vec::new()) }
    }
}

impl Denoiser for Scripted {
    fn vocab_size(&self) -> i64 {
        V
    }
    fn max_positions(&self) -> i64 {
        1024
    }
    fn forward(&self, ids: &Tensor, start: i64, _cache: &mut KvCache, commit: i64, _mask: BlockMask) -> Result<Tensor> {
        let len = ids.size()[1];
        let n = self.calls.borrow().len();
        self.calls.borrow_mut().push((start, len, commit));
        let ids: Vec<i64> = Vec::try_from(&ids.get(0)).unwrap();
        let mut rows = Vec::new();
        for i in commit..len {
            let (tok, p) = (self.script)(n, start + i, ids[i as usize]);
            let p = p.clamp(1e-6, 1.0 - 1e-6) as f64;
            let boost = (p * (V - 1) as f64 / (1.0 - p)).ln() as f32;
            let mut row = vec![0f32; V as usize];
            row[tok as usize] = boost;
            rows.extend(row);
        }
        Ok(Tensor::from_slice(&rows).view([1, len - commit, V]))
    }
}

fn settings(gen: i64, block: i64, threshold: f64, edit: Editing, post: i64) -> DecodeSettings {
    let mut s = DecodeSettings::official(gen);
    s.block_length = block;
    s.threshold = threshold;
    s.editing = edit;
    s.max_post_steps = post;
    s
}

fn decoder(prompt: &[i64], s: DecodeSettings, m: &dyn Denoiser) -> Decoder {
    Decoder::new(prompt, s, MASK, EOS, m).unwrap()
}

fn positions(r: &StepReport) -> (Vec<i64>, Vec<i64>) {
    (r.gamma.iter().map(|u| u.pos).collect(), r.delta.iter().map(|e| e.pos).collect())
}

#[test]
fn fallback_unmasks_the_most_confident_mask_when_none_passes() {
    // Prompt of 2 in block 0 (block 4): positions 2, 3 are generated. p rises with the position.
    let m = Scripted::new(|_, pos, _| (5, 0.1 + 0.01 * pos as f32));
    let mut d = decoder(&[7, 8], settings(2, 4, 0.9, Editing::Off, 16), &m);
    let r = d.step(&m).unwrap().unwrap();
    assert!(r.fallback);
    assert_eq!(positions(&r).0, vec![3]);
    assert_eq!(r.masks_left, 1);
    // num_to_transfer 2: both at once.
    let mut s = settings(2, 4, 0.9, Editing::Off, 16);
    s.num_to_transfer = 2;
    let mut d = decoder(&[7, 8], s, &m);
    assert_eq!(positions(&d.step(&m).unwrap().unwrap()).0, vec![2, 3]);
}

#[test]
fn all_masks_above_the_threshold_unmask_together_and_the_rest_wait() {
    let m = Scripted::new(|_, pos, _| (5, if pos == 3 { 0.75 } else { 0.95 }));
    let mut d = decoder(&[7], settings(7, 4, 0.8, Editing::Off, 16), &m);
    let r = d.step(&m).unwrap().unwrap();
    assert!(!r.fallback);
    assert_eq!(positions(&r).0, vec![1, 2]); // p = 0.75 at position 3 stays below 0.8
}

#[test]
fn a_token_unmasked_in_a_step_is_editable_only_from_the_next() {
    // Forward 0 proposes 5 everywhere (unmasks), forward 1 proposes 6 with p 0.99: edits.
    let m = Scripted::new(|n, _, _| if n == 0 { (5, 0.99) } else { (6, 0.99) });
    let mut d = decoder(&[7], settings(3, 4, 0.5, Editing::Threshold(0.5), 16), &m);
    let r0 = d.step(&m).unwrap().unwrap();
    assert_eq!(positions(&r0), (vec![1, 2, 3], vec![]));
    let r1 = d.step(&m).unwrap().unwrap();
    assert_eq!(positions(&r1), (vec![], vec![1, 2, 3]));
    assert_eq!(r1.delta[0].old, 5);
    assert_eq!(r1.delta[0].new, 6);
}

#[test]
fn prompt_positions_are_never_edited() {
    let m = Scripted::new(|_, _, _| (5, 0.99));
    let mut d = decoder(&[7, 8, 9], settings(1, 4, 0.5, Editing::Threshold(0.0), 16), &m);
    d.run(&m).unwrap();
    assert_eq!(&d.canvas()[..3], &[7, 8, 9]);
    assert!(d.reports().all(|r| r.delta.iter().all(|e| e.pos >= 3)));
}

#[test]
fn fixed_point_ends_the_block_after_one_confirming_forward() {
    let m = Scripted::new(|_, _, _| (5, 0.99));
    let mut d = decoder(&[7, 8, 9, 10], settings(8, 4, 0.5, Editing::Threshold(0.5), 16), &m);
    let reports = d.run(&m).unwrap();
    // Two blocks, two forwards each: one unmasks all, one confirms the fixed point.
    assert_eq!(reports.len(), 4);
    assert!(!reports[0].block_ended && reports[1].block_ended);
    assert_eq!(reports[1].advanced_to, Some(2));
    assert!(reports[3].finished);
    assert!((d.tpf() - 2.0).abs() < 1e-9);
    let st = d.stats();
    assert_eq!((st.forwards, st.unmasked, st.edits, st.fallbacks, st.tokens), (4, 8, 0, 0, 8));
}

#[test]
fn post_steps_cap_edit_only_passes_checked_before_the_forward() {
    // After unmasking, the model flips every token on every forward: the block never reaches a fixed point.
    let m = Scripted::new(|n, _, now| if n == 0 { (5, 0.99) } else { (if now == 5 { 6 } else { 5 }, 0.99) });
    let mut d = decoder(&[7], settings(3, 4, 0.5, Editing::Threshold(0.5), 3), &m);
    let reports = d.run(&m).unwrap();
    // 1 unmasking forward + exactly 3 edit-only passes, then the block ends before a 5th forward.
    assert_eq!(reports.len(), 4);
    assert!(reports.iter().skip(1).all(|r| r.delta.len() == 3));
    assert!(d.is_finished());
    assert_eq!(m.calls.borrow().len(), 4);
}

#[test]
fn editing_off_ends_a_block_without_a_confirmation_forward() {
    let m = Scripted::new(|_, _, _| (5, 0.99));
    let mut d = decoder(&[7, 8, 9, 10], settings(8, 4, 0.5, Editing::Off, 16), &m);
    let reports = d.run(&m).unwrap();
    assert_eq!(reports.len(), 2);
    assert_eq!(reports[1].ended_before, vec![1]);
}

#[test]
fn edit_threshold_zero_edits_every_changed_token() {
    let m = Scripted::new(|n, _, _| if n == 0 { (5, 0.99) } else { (6, 0.01) });
    let mut d = decoder(&[7], settings(3, 4, 0.5, Editing::Threshold(0.0), 16), &m);
    d.step(&m).unwrap();
    assert_eq!(d.step(&m).unwrap().unwrap().delta.len(), 3);
}

#[test]
fn diffusers_timing_edits_only_once_the_block_has_no_mask() {
    // Forward 0 unmasks position 1 only; forward 1 would edit it while masks remain.
    let m = Scripted::new(|n, pos, _| match n {
        0 => (5, if pos == 1 { 0.99 } else { 0.1 }),
        _ => (6, 0.99),
    });
    let mut s = settings(3, 4, 0.5, Editing::Threshold(0.5), 16);
    s.edit_timing = EditTiming::AfterMasks;
    let mut d = decoder(&[7], s.clone(), &m);
    d.step(&m).unwrap();
    let r = d.step(&m).unwrap().unwrap();
    assert_eq!(positions(&r), (vec![2, 3], vec![]));
    let r = d.step(&m).unwrap().unwrap();
    assert_eq!(positions(&r).1, vec![1], "edits once no mask is left (2 and 3 already hold 6)");
    // The official timing edits position 1 in that second forward.
    s.edit_timing = EditTiming::Always;
    let m = Scripted::new(|n, pos, _| match n {
        0 => (5, if pos == 1 { 0.99 } else { 0.1 }),
        _ => (6, 0.99),
    });
    let mut d = decoder(&[7], s, &m);
    d.step(&m).unwrap();
    assert_eq!(positions(&d.step(&m).unwrap().unwrap()).1, vec![1]);
}

#[test]
fn eos_early_stop_after_a_block_and_output_cut_after_the_first_eos() {
    let m = Scripted::new(|_, pos, _| (if pos == 5 { EOS } else { 5 }, 0.99));
    let mut s = settings(12, 4, 0.5, Editing::Threshold(0.5), 16);
    s.eos_early_stop = true;
    let mut d = decoder(&[7, 8], s.clone(), &m);
    d.run(&m).unwrap();
    assert_eq!(d.output(), vec![5, 5, 5, EOS]);
    assert_eq!(d.cursor().block, 1, "stopped after block 1, before blocks 2 and 3");
    s.eos_early_stop = false;
    let mut d = decoder(&[7, 8], s, &m);
    d.run(&m).unwrap();
    assert_eq!(d.output(), vec![5, 5, 5, EOS], "cut after the first EOS either way");
    assert_eq!(d.cursor().block, 3);
}

#[test]
fn temperature_sampling_is_reproducible_from_the_decoders_seed() {
    let m = Scripted::new(|_, pos, _| ((pos % V).max(2), 0.3));
    let mut s = settings(12, 4, 0.2, Editing::Threshold(0.5), 4);
    s.temperature = 1.0;
    let run = |seed: u64| {
        let mut s = s.clone();
        s.seed = seed;
        let mut d = decoder(&[7], s, &m);
        // Another user of libtorch's global generator in between must not matter.
        tch::manual_seed(seed as i64 + 99);
        d.run(&m).unwrap();
        d.trace_json()
    };
    assert_eq!(run(3), run(3));
    assert_ne!(run(3), run(4));
}

#[test]
fn presets_all_decode_to_the_end() {
    let m = Scripted::new(|n, pos, _| ((n as i64 + pos) % 3 + 4, 0.6));
    for preset in ["Q", "S", "llada2.0", "sglang", "diffusers"] {
        let mut s = DecodeSettings::official(10);
        s.block_length = 4;
        s.apply_preset(preset).unwrap();
        let mut d = decoder(&[7, 8, 9], s, &m);
        d.run(&m).unwrap();
        assert!(d.is_finished(), "{preset}");
        assert!(!d.output().contains(&MASK), "{preset}");
    }
}

#[test]
fn bad_settings_and_prompts_are_clear_errors() {
    let m = Scripted::new(|_, _, _| (5, 0.9));
    let e = |prompt: &[i64], s: DecodeSettings| Decoder::new(prompt, s, MASK, EOS, &m).unwrap_err().to_string();
    assert!(e(&[], DecodeSettings::official(8)).contains("prompt"));
    assert!(e(&[3], DecodeSettings::official(0)).contains("gen_length"));
    let mut s = DecodeSettings::official(8);
    s.threshold = 2.0;
    assert!(e(&[3], s).contains("threshold"));
    assert!(e(&[3, 999], DecodeSettings::official(8)).contains("ids must be in 0..128"));
    assert!(e(&[3, MASK], DecodeSettings::official(8)).contains("mask token"));
    assert!(e(&[3], DecodeSettings::official(2000)).contains("exceeds the model's 1024 positions"));
    assert!(DecodeSettings::official(8).apply_preset("turbo").unwrap_err().to_string().contains("known presets"));
}

#[test]
fn rewind_then_step_reproduces_the_trace_and_forks_are_independent() {
    // A pure function of the canvas (not of the call count), so a rewound decoder sees the same model.
    let m = Scripted::new(|_, pos, now| ((now * 3 + pos) % 5 + 2, if pos % 2 == 0 { 0.9 } else { 0.4 }));
    let mut s = settings(12, 4, 0.5, Editing::Threshold(0.5), 2);
    s.temperature = 0.7; // the generator state must be restored too
    let mut d = decoder(&[7, 8], s, &m);
    d.run(&m).unwrap();
    let full = d.trace_json();
    let canvas = d.canvas().to_vec();
    let steps = d.reports().count() as i64;
    for t in [steps - 1, steps / 2, 0] {
        let mut r = decoder(&[7, 8], d.settings.clone(), &m);
        r.run(&m).unwrap();
        r.rewind(t).unwrap();
        assert_eq!(r.reports().count() as i64, t);
        r.run(&m).unwrap();
        assert_eq!(r.trace_json(), full, "rewind to {t}");
        assert_eq!(r.canvas(), &canvas[..]);
    }
    d.rewind(1).unwrap();
    let mut f = d.fork();
    f.settings.threshold = 0.95;
    f.run(&m).unwrap();
    assert_eq!(d.reports().count(), 1, "the fork ran, the original did not move");
    assert!(d.rewind(50).unwrap_err().to_string().contains("no such step"));
}

#[test]
fn hand_edits_are_journalled_and_validated() {
    let m = Scripted::new(|_, _, _| (5, 0.99));
    let mut d = decoder(&[7], settings(7, 4, 0.5, Editing::Threshold(0.5), 16), &m);
    d.step(&m).unwrap();
    d.set_tokens(&[(2, 9)], V).unwrap();
    let r = d.step(&m).unwrap().unwrap();
    assert_eq!(r.delta.len(), 1, "Delta repairs the poked token");
    assert_eq!((r.delta[0].pos, r.delta[0].old, r.delta[0].new), (2, 9, 5));
    assert!(d.set_tokens(&[(0, 9)], V).unwrap_err().to_string().contains("generated positions are 1 to 7"));
    assert!(d.set_tokens(&[(2, 999)], V).unwrap_err().to_string().contains("0..128"));
    assert_eq!(d.cursor().block, 0);
    assert!(d.remask(&[6]).unwrap_err().to_string().contains("current block"));
    d.remask(&[3]).unwrap();
    assert_eq!(d.canvas()[3], MASK);
    let n = d.reports().count() as i64;
    d.rewind(n - 1).unwrap();
    assert_eq!(d.canvas()[2], 9, "rewind undoes the step but not the earlier poke");
}

#[test]
fn events_fire_on_what_they_name() {
    let m = Scripted::new(|n, pos, _| if n == 0 { (if pos == 3 { EOS } else { 5 }, 0.99) } else { (6, 0.2) });
    let mut d = decoder(&[7], settings(3, 4, 0.5, Editing::Threshold(0.1), 16), &m);
    let r0 = d.step(&m).unwrap().unwrap();
    assert!(Event::Eos.fires(&r0, &d, None));
    assert!(Event::Token { id: 5 }.fires(&r0, &d, None));
    assert!(!Event::Edit.fires(&r0, &d, None));
    assert!(Event::Step { n: 0 }.fires(&r0, &d, None));
    let r1 = d.step(&m).unwrap().unwrap();
    assert!(Event::Edit.fires(&r1, &d, None));
    assert!(Event::LowConfidence { below: 0.3 }.fires(&r1, &d, None));
    assert!(Event::Oscillation { k: 1 }.fires(&r1, &d, None), "unmasked then edited: written twice");
    assert!(!Event::Oscillation { k: 2 }.fires(&r1, &d, None));
    let r2 = d.step(&m).unwrap().unwrap();
    assert!(!r2.delta.is_empty() || r2.block_ended);
}

#[test]
fn multi_block_editing_revises_an_earlier_block_in_its_window() {
    // Block 1 decodes to 5s; while block 2 decodes, the model wants position 5 (block 1) to be 9.
    let m = Scripted::new(|n, pos, _| if pos == 5 && n >= 2 { (9, 0.99) } else { (5, 0.99) });
    let mut s = settings(8, 4, 0.5, Editing::Threshold(0.5), 16);
    s.mbe_window = 1;
    let mut d = decoder(&[7, 8, 9, 10], s.clone(), &m);
    let reports = d.run(&m).unwrap();
    assert!(reports.iter().any(|r| r.revised_blocks == vec![1]), "{reports:?}");
    assert_eq!(d.canvas()[5], 9);
    // Without MBE block 1's tokens are final once it ends (here the model edits it within the block instead).
    s.mbe_window = 0;
    let m = Scripted::new(|n, pos, _| if pos == 5 && n >= 2 { (9, 0.99) } else { (5, 0.99) });
    let mut d = decoder(&[7, 8, 9, 10], s, &m);
    assert!(d.run(&m).unwrap().iter().all(|r| r.revised_blocks.is_empty()));
    assert_eq!(d.canvas()[5], 5, "without MBE a finished block is final");
}

// --------------------------------------------------------------------------- against the no-cache reference

/// The official loop written plainly: every step recomputes the whole prefix, no cache, greedy.
/// Returns (block, gamma (pos, tok), delta (pos, old, new)) per forward and the final canvas.
fn reference(model: &Model, prompt: &[i64], s: &DecodeSettings) -> (Vec<(i64, Vec<(i64, i64)>, Vec<(i64, i64, i64)>)>, Vec<i64>) {
    let (b, p) = (s.block_length, prompt.len() as i64);
    let nb = (p + s.gen_length + b - 1) / b;
    let mut x = vec![MASK_ID; (nb * b) as usize];
    x[..prompt.len()].copy_from_slice(prompt);
    let mut steps = Vec::new();
    'blocks: for blk in p / b..nb {
        let (bs, be) = (blk * b, (blk + 1) * b);
        let mut post = 0;
        let mut t = 0;
        loop {
            let old: Vec<i64> = x[bs as usize..be as usize].to_vec();
            let masks = old.iter().filter(|&&v| v == MASK_ID).count();
            if masks == 0 {
                if s.edit_threshold().is_none() {
                    break;
                }
                post += 1;
            }
            if post > s.max_post_steps {
                break;
            }
            let ids = Tensor::from_slice(&x[..be as usize]).view([1, -1]);
            let mask = BlockMask { block_length: b, kind: s.attention, bidirectional_from: None };
            let logits = model.forward(&ids, &mut KvCache::new(), 0, mask).unwrap().get(0).narrow(0, bs, b);
            let probs = logits.softmax(-1, Kind::Float);
            let (pv, vv) = probs.max_dim(-1, false);
            let (pv, vv): (Vec<f32>, Vec<i64>) = (Vec::try_from(&pv).unwrap(), Vec::try_from(&vv).unwrap());
            let mut cand: Vec<usize> = (0..b as usize).filter(|&i| old[i] == MASK_ID).collect();
            let k = s.fallback_count(t).min(cand.len() as i64) as usize;
            let mut gamma: Vec<usize> = cand.iter().copied().filter(|&i| pv[i] as f64 > s.threshold).collect();
            if gamma.len() < k {
                cand.sort_by(|&a, &c| pv[c].partial_cmp(&pv[a]).unwrap().then(a.cmp(&c)));
                gamma = cand[..k].to_vec();
                gamma.sort();
            }
            let mut delta = Vec::new();
            if let Some(tau) = s.edit_threshold() {
                for i in 0..b as usize {
                    let pos = bs + i as i64;
                    if pos >= p && old[i] != MASK_ID && vv[i] != old[i] && pv[i] as f64 > tau {
                        delta.push(i);
                    }
                }
            }
            for &i in gamma.iter().chain(&delta) {
                x[bs as usize + i] = vv[i];
            }
            steps.push((
                blk,
                gamma.iter().map(|&i| (bs + i as i64, vv[i])).collect(),
                delta.iter().map(|&i| (bs + i as i64, old[i], vv[i])).collect(),
            ));
            t += 1;
            if masks == 0 && delta.is_empty() {
                break;
            }
        }
        if s.eos_early_stop {
            let gen = &x[p as usize..be as usize];
            if !gen.contains(&MASK_ID) && gen.contains(&EOS_ID) {
                break 'blocks;
            }
        }
    }
    (steps, x)
}

const MASK_ID: i64 = 1; // the compact tokenizer's <|mask|>
const EOS_ID: i64 = 0;

#[test]
fn cached_stepper_matches_the_no_cache_reference_on_random_models() {
    let cfg = micro();
    let model = spiky_model(&cfg, 21);
    let prompts: [&[i64]; 3] = [&[10, 11, 12], &[20, 21, 22, 23, 24, 25, 26, 27], &[40]];
    let (mut compared, mut edits, mut fallbacks) = (0, 0, 0);
    for preset in ["Q", "S", "llada2.0", "sglang"] {
        for &block in &[4, 8] {
            for prompt in prompts {
                for attention in [MaskKind::BlockCausal, MaskKind::HfAdditive] {
                    let mut s = DecodeSettings::official(13);
                    s.block_length = block;
                    s.apply_preset(preset).unwrap();
                    s.attention = attention;
                    if preset == "llada2.0" {
                        s.fallback_steps = Some(block / 2);
                    }
                    let (want, want_canvas) = reference(&model, prompt, &s);
                    let mut d = Decoder::new(prompt, s, MASK_ID, EOS_ID, &model).unwrap();
                    let got = d.run(&model).unwrap();
                    edits += got.iter().map(|r| r.delta.len()).sum::<usize>();
                    fallbacks += got.iter().filter(|r| r.fallback).count();
                    let got: Vec<_> = got
                        .iter()
                        .map(|r| (r.block, r.gamma.iter().map(|u| (u.pos, u.token)).collect::<Vec<_>>(), r.delta.iter().map(|e| (e.pos, e.old, e.new)).collect::<Vec<_>>()))
                        .collect();
                    assert_eq!(got, want, "{preset}, block {block}, prompt {prompt:?}, {attention:?}");
                    let mut nc = Decoder::new(prompt, d.settings.clone(), MASK_ID, EOS_ID, &model).unwrap();
                    nc.set_cache_enabled(false);
                    nc.run(&model).unwrap();
                    assert_eq!(nc.canvas(), d.canvas(), "cache off: {preset}, block {block}");
                    assert_eq!(d.canvas(), &want_canvas[..]);
                    compared += got.len();
                }
            }
        }
    }
    assert!(compared > 100, "only {compared} steps compared");
    assert!(edits > 20 && fallbacks > 20, "the comparison must exercise Delta ({edits}) and the fallback ({fallbacks})");
}

#[test]
fn the_cache_holds_exactly_the_finished_blocks() {
    let cfg = micro();
    let model = spiky_model(&cfg, 22);
    let mut s = DecodeSettings::official(16);
    s.block_length = 4;
    s.apply_preset("S").unwrap();
    let mut d = Decoder::new(&[10, 11, 12, 13, 14, 15], s, MASK_ID, EOS_ID, &model).unwrap();
    let mut last_block = d.cursor().block;
    while let Some(r) = d.step(&model).unwrap() {
        // The forward ran on the current block after a cache of every block before it.
        assert_eq!(d.cached_len(), r.block * 4, "cached {} at {r:?}", d.cached_len());
        assert_eq!(r.span, (r.block * 4, r.block * 4 + 4));
        last_block = last_block.max(r.block);
    }
    assert_eq!(last_block, d.num_blocks() - 1);
    // Rewinding to the second step of block 2 keeps blocks 0 and 1 cached (they are finished there).
    let step = d.reports().find(|r| r.block == 2 && r.block_step == 1).unwrap().step;
    d.rewind(step).unwrap();
    assert_eq!(d.cursor().block, 2);
    assert_eq!(d.cached_len(), 8);
    // Its first step may have started in block 1 (ending it before the forward): there block 1 is current.
    let first = d.reports().find(|r| r.block == 2).unwrap().step;
    d.rewind(first).unwrap();
    let b = d.cursor().block;
    assert_eq!(d.cached_len(), b * 4);
}

fn steps_of(d: &Decoder) -> Vec<(i64, Vec<(i64, i64)>, Vec<(i64, i64, i64)>)> {
    d.reports()
        .map(|r| (r.block, r.gamma.iter().map(|u| (u.pos, u.token)).collect(), r.delta.iter().map(|e| (e.pos, e.old, e.new)).collect()))
        .collect()
}

#[test]
fn a_batch_decodes_each_row_exactly_as_alone_and_rows_finish_independently() {
    let cfg = micro();
    let model = spiky_model(&cfg, 23);
    let prompts: Vec<Vec<i64>> = vec![vec![10, 11, 12], vec![20, 21, 22, 23, 24, 25, 26, 27, 28], vec![40], vec![10, 11, 12]];
    for (preset, attention) in [("S", MaskKind::BlockCausal), ("Q", MaskKind::BlockCausal), ("S", MaskKind::HfAdditive)] {
        let mut s = DecodeSettings::official(14);
        s.block_length = 4;
        s.apply_preset(preset).unwrap();
        s.attention = attention;
        s.eos_early_stop = true;
        // Pick as EOS a token row 0 produces early, so that some rows stop before others.
        let mut probe = Decoder::new(&prompts[0], s.clone(), MASK_ID, EOS_ID, &model).unwrap();
        probe.run(&model).unwrap();
        let eos = probe.canvas()[4];
        let alone: Vec<Decoder> = prompts
            .iter()
            .map(|p| {
                let mut d = Decoder::new(p, s.clone(), MASK_ID, eos, &model).unwrap();
                d.run(&model).unwrap();
                d
            })
            .collect();
        let mut batch = BatchDecoder::new(&prompts, s.clone(), MASK_ID, eos, &model).unwrap();
        let forwards = batch.run(&model).unwrap();
        assert!(batch.is_finished());
        for (i, (row, single)) in batch.rows().iter().zip(&alone).enumerate() {
            assert_eq!(row.canvas(), single.canvas(), "{preset} {attention:?}: row {i}");
            assert_eq!(steps_of(row), steps_of(single), "{preset} {attention:?}: row {i}");
            assert_eq!(row.output(), single.output());
        }
        let blocks: Vec<i64> = alone.iter().map(|d| d.cursor().block).collect();
        assert!(blocks.iter().min() < blocks.iter().max(), "{preset}: rows should stop in different blocks: {blocks:?}");
        let most = alone.iter().map(|d| d.cursor().forwards).max().unwrap();
        assert!(forwards >= most, "a batch needs at least the longest row's forwards");
    }
}

#[test]
fn batch_errors_are_clear() {
    let m = Scripted::new(|_, _, _| (5, 0.9));
    let s = DecodeSettings::official(8);
    assert!(BatchDecoder::new(&[], s.clone(), MASK, EOS, &m).err().unwrap().to_string().contains("at least one prompt"));
    let e = BatchDecoder::new(&[vec![3], vec![]], s.clone(), MASK, EOS, &m).err().unwrap().to_string();
    assert!(e.contains("batch row") && e.contains("\"1\"") && e.contains("empty"), "{e}");
    let mut mbe = s;
    mbe.mbe_window = 1;
    assert!(BatchDecoder::new(&[vec![3]], mbe, MASK, EOS, &m).err().unwrap().to_string().contains("not available in batches"));
}

#[test]
fn reports_carry_token_texts_once_annotated() {
    let cfg = micro();
    let json = serde_json::to_vec(&dllm_engine::shapes::tokenizer_spec(cfg.vocab_size).to_json()).unwrap();
    let tok = dllm_engine::Tokenizer::from_bytes(&json, std::path::Path::new("tokenizer.json"), &cfg).unwrap();
    let x = tok.encode("x").unwrap()[0];
    let y = tok.encode("y").unwrap()[0];
    let m = Scripted::new(move |n, _, _| if n == 0 { (x, 0.99) } else { (y, 0.99) });
    let mut d = decoder(&[7], settings(3, 4, 0.5, Editing::Threshold(0.5), 16), &m);
    let mut r = d.step(&m).unwrap().unwrap();
    r.annotate(&tok);
    assert!(r.gamma.iter().all(|u| u.text == "x"));
    let mut r = d.step(&m).unwrap().unwrap();
    r.annotate(&tok);
    assert!(r.delta.iter().all(|e| e.old_text == "x" && e.new_text == "y"));
    assert_eq!(tok.token_text(MASK_ID), "<|mask|>");
}

#[test]
fn a_saved_decoder_restores_and_continues_exactly() {
    let cfg = micro();
    let model = spiky_model(&cfg, 24);
    let mut s = DecodeSettings::official(12);
    s.block_length = 4;
    s.apply_preset("S").unwrap();
    let mut whole = Decoder::new(&[10, 11, 12], s.clone(), MASK_ID, EOS_ID, &model).unwrap();
    whole.run(&model).unwrap();
    let mut half = Decoder::new(&[10, 11, 12], s, MASK_ID, EOS_ID, &model).unwrap();
    for _ in 0..5 {
        half.step(&model).unwrap();
    }
    let json = serde_json::to_string(&half.snapshot()).unwrap();
    let mut back = Decoder::restore(serde_json::from_str(&json).unwrap(), &model).unwrap();
    back.run(&model).unwrap();
    // Same steps and tokens; p may differ in the last float bits (the restored cache is recomputed in one go).
    assert_eq!(steps_of(&back), steps_of(&whole));
    assert_eq!(back.canvas(), whole.canvas());
    let mut bad: dllm_engine::decode::DecoderState = serde_json::from_str(&json).unwrap();
    bad.canvas[3] = 100_000;
    assert!(Decoder::restore(bad, &model).unwrap_err().to_string().contains("for this model"));
}
