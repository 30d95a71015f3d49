//! The `edit` likelihood estimator (LLaDA2.2's action-vector likelihood): the one-forward terms equal a
//! per-block loop, hand-made drafts get the labels and terms they should, the parts add up, estimates are
//! deterministic per seed, models without edit ids are refused, and EBPO with the edit-aware ratio shares its
//! noise between theta and theta_old and decodes its rollouts with the Levenshtein decoder.

use dllm_engine::decode::EditOps;
use dllm_engine::edit_likelihood::{EditPlan, Part, DEFAULT_RATE};
use dllm_engine::likelihood::{self, block_terms, Estimator};
use dllm_engine::shapes::{shape, random_model, write_random_checkpoint};
use dllm_engine::rl::{log_ratios, Reward, Rl, RlConfig, RlPrompt};
use dllm_engine::{BlockMask, DType, KvCache, Model, RandomInit};
use tch::{Device, Kind, Tensor};

// The compact tokenizer's specials, and micro-2.2's edit ids (the last two of its 128).
const EOS: i64 = 0;
const MASK: i64 = 1;
const DELETE: i64 = 126;
const SPLIT: i64 = 127;
const BLOCK: i64 = 4;

fn micro22() -> Model {
    tch::set_num_threads(1);
    random_model(&shape("micro-2.2").unwrap(), 7, Device::Cpu, DType::F32).unwrap()
}

fn rows(t: &Tensor) -> Vec<Vec<f64>> {
    Vec::<Vec<f64>>::try_from(&t.to_kind(Kind::Double)).unwrap()
}

/// Prompt of 6 tokens (ends mid-block), response of 9 (blocks 1..=3, the last padded with EOS).
fn example() -> (Vec<i64>, Vec<i64>) {
    (vec![5, 40, 41, 42, 43, 6], vec![50, 51, 52, 53, 54, 55, 56, 57, EOS])
}

/// `log softmax(logits)[target]` at canvas position `pos` of a plain block-causal forward of
/// `clean[..s] ++ noisy[s..s+BLOCK]` (s the start of `pos`'s block).
fn plain_logp(model: &Model, clean: &[i64], noisy: &[i64], pos: usize, target: i64) -> f64 {
    let s = pos / BLOCK as usize * BLOCK as usize;
    let mut seq = clean[..s].to_vec();
    seq.extend_from_slice(&noisy[s..s + BLOCK as usize]);
    let ids = Tensor::from_slice(&seq).view([1, -1]);
    let logits = tch::no_grad(|| model.forward(&ids, &mut KvCache::new(), s as i64, BlockMask::block_causal(BLOCK)).unwrap()).get(0).get((pos - s) as i64);
    (logits.get(target) - logits.logsumexp(-1, false)).double_value(&[])
}

#[test]
fn batched_terms_equal_the_per_block_loop() {
    let model = micro22();
    let (prompt, response) = example();
    let mut parts_seen = std::collections::HashSet::new();
    for seed in 0..4 {
        let plan = EditPlan::draw(&model, &prompt, &response, MASK, EOS, BLOCK, 4, 0.4, seed).unwrap();
        assert_eq!(plan.rows.len(), 4);
        // The prompt tail (positions 4, 5) and the padding (15) are never slots.
        let slots: Vec<usize> = plan.rows[0].slots.iter().map(|s| s.pos).collect();
        assert_eq!(slots, (6..15).collect::<Vec<_>>());
        parts_seen.extend(plan.rows.iter().flat_map(|r| r.slots.iter().map(|s| s.part)));
        let fast = rows(&tch::no_grad(|| plan.logp(&model).unwrap()));
        let slow = rows(&plan.logp_loop(&model).unwrap());
        for (r, (f, s)) in fast.iter().zip(&slow).enumerate() {
            for (i, (x, y)) in f.iter().zip(s).enumerate() {
                assert!((x - y).abs() < 1e-4, "seed {seed} row {r} position {i}: {x} vs {y}");
            }
        }
        // likelihood() combines the same terms with the slot weights.
        let est = Estimator::Edit { levels: 4, rate: 0.4 };
        let rep = likelihood::likelihood(&model, &prompt, &response, MASK, EOS, BLOCK, &est, seed).unwrap();
        let start = BLOCK as usize; // the first noisy position: block 1
        let want: f64 = plan.rows.iter().zip(&slow).flat_map(|(row, lp)| row.slots.iter().map(move |s| s.weight * lp[s.pos - start])).sum();
        assert!((rep.value - want).abs() < 1e-4, "seed {seed}: {} vs {want}", rep.value);
        assert_eq!((rep.samples, rep.rows, rep.forwards, rep.per_block.len()), (4, 4, 1, 3));
    }
    for p in [Part::M2t, Part::Keep, Part::Substitute, Part::Delete] {
        assert!(parts_seen.contains(&p), "rate 0.4 over 4 seeds drafts some {p:?} slots: {parts_seen:?}");
    }
}

#[test]
fn a_stutter_is_one_delete_term_and_a_drop_one_insert() {
    let model = micro22();
    // Prompt of 4 (one whole block), response of 8: blocks 1 and 2, slots 4..12.
    let prompt = vec![5, 40, 41, 42];
    let response = vec![50, 51, 52, 53, 54, 55, 56, EOS];
    let mut clean = prompt.clone();
    clean.extend_from_slice(&response);
    let mut plan = EditPlan::new(&model, &prompt, &response, MASK, EOS, BLOCK).unwrap();
    // Block 1 stutters on 51 (pushing 53 off): K D K K. Block 2 is clean with one mask: M2T at 56.
    let stutter = vec![vec![50, 51, 51, 52], vec![54, 55, 56, EOS]];
    plan.push(0.25, 4.0, 1.0, &stutter, &[vec![false; 4], vec![false, false, true, false]]).unwrap();
    // Block 1 drops 51 (pulling 54 in): K I K D. Block 2 as it is.
    let dropped = vec![vec![50, 52, 53, 54], vec![54, 55, 56, EOS]];
    plan.push(0.5, 2.0, 1.0, &dropped, &[vec![false; 4], vec![false; 4]]).unwrap();

    let letters = |r: usize| plan.rows[r].slots.iter().map(|s| format!("{:?}", s.part)).collect::<Vec<_>>().join(" ");
    assert_eq!(letters(0), "Keep Delete Keep Keep Keep Keep M2t Keep");
    assert_eq!(letters(1), "Keep Insert Keep Delete Keep Keep Keep Keep");
    let del = plan.rows[0].slots[1];
    assert_eq!((del.pos, del.target, del.weight), (5, DELETE, 1.0));
    assert_eq!(plan.rows[0].slots[6].target, 56, "a masked slot stands for its clean token");
    assert_eq!(plan.rows[0].slots[6].weight, 4.0);
    assert_eq!((plan.rows[1].slots[1].target, plan.rows[1].slots[3].target), (SPLIT, DELETE));

    let logp = rows(&tch::no_grad(|| plan.logp(&model).unwrap()));
    let r = plan.report(&logp, 1);
    let parts = r.edit.clone().unwrap();
    assert_eq!((parts.delete.count, parts.insert.count, parts.m2t.count, parts.substitute.count, parts.keep.count), (2, 1, 1, 0, 12));
    // Each term is the plain forward's log-probability of the slot's action.
    let want_del = plain_logp(&model, &clean, &plan.rows[0].canvas, 5, DELETE) + plain_logp(&model, &clean, &plan.rows[1].canvas, 7, DELETE);
    assert!((parts.delete.sum - want_del).abs() < 1e-4, "{} vs {want_del}", parts.delete.sum);
    let want_ins = plain_logp(&model, &clean, &plan.rows[1].canvas, 5, SPLIT);
    assert!((parts.insert.sum - want_ins).abs() < 1e-4, "{} vs {want_ins}", parts.insert.sum);
    let want_m2t = 4.0 * plain_logp(&model, &clean, &plan.rows[0].canvas, 10, 56);
    assert!((parts.m2t.sum - want_m2t).abs() < 1e-4, "{} vs {want_m2t}", parts.m2t.sum);
}

#[test]
fn contributions_add_up_to_the_total() {
    let model = micro22();
    let (prompt, response) = example();
    let r = likelihood::likelihood(&model, &prompt, &response, MASK, EOS, BLOCK, &Estimator::Edit { levels: 8, rate: 0.3 }, 5).unwrap();
    let parts = r.edit.clone().expect("the edit estimator reports its parts");
    let named = parts.named();
    let sum: f64 = named.iter().map(|(_, c)| c.sum).sum();
    assert!((sum - r.value).abs() < 1e-9, "{sum} vs {}", r.value);
    assert!((r.per_block.iter().sum::<f64>() - r.value).abs() < 1e-9);
    assert_eq!(named.iter().map(|(_, c)| c.count).sum::<usize>(), 8 * response.len(), "every response slot of every sample is scored once");
    assert!(r.value < 0.0 && r.stderr > 0.0);
    // Masking estimators have no parts.
    assert!(likelihood::likelihood(&model, &prompt, &response, MASK, EOS, BLOCK, &Estimator::default(), 5).unwrap().edit.is_none());
}

#[test]
fn without_edits_the_m2t_part_is_the_masking_elbo() {
    // Drafts equal to the clean blocks: every masked slot is labelled with its own token, so the M2T terms are
    // the ELBO's terms of the same masks, from the same layout.
    let model = micro22();
    let (prompt, response) = example();
    let masks: Vec<Vec<bool>> = vec![(0..9).map(|i| i % 2 == 0).collect(), (0..9).map(|i| i % 3 != 1).collect()];
    let mut plan = EditPlan::new(&model, &prompt, &response, MASK, EOS, BLOCK).unwrap();
    let mut canvas = prompt.clone();
    canvas.extend_from_slice(&response);
    for m in &masks {
        let (drafts, bmasks): (Vec<Vec<i64>>, Vec<Vec<bool>>) = plan.blocks().into_iter().map(|b| (canvas[b.clone()].to_vec(), m[b.start - 6..b.end - 6].to_vec())).unzip();
        plan.push(0.5, 1.0, 0.0, &drafts, &bmasks).unwrap();
    }
    let r = plan.report(&rows(&tch::no_grad(|| plan.logp(&model).unwrap())), 1);
    let elbo: f64 = rows(&tch::no_grad(|| block_terms(&model, &prompt, &response, MASK, EOS, BLOCK, &masks).unwrap())).iter().flatten().sum();
    let parts = r.edit.unwrap();
    assert!((parts.m2t.sum - elbo).abs() < 1e-4, "{} vs {elbo}", parts.m2t.sum);
    assert_eq!(parts.substitute.count + parts.delete.count + parts.insert.count, 0);
    assert_eq!(parts.keep.sum, 0.0, "visible slots weighted 0 here");
}

#[test]
fn estimates_are_deterministic_per_seed() {
    let model = micro22();
    let (prompt, response) = example();
    let est = Estimator::parse("edit:4:0.3").unwrap();
    let at = |seed| likelihood::likelihood(&model, &prompt, &response, MASK, EOS, BLOCK, &est, seed).unwrap();
    assert_eq!(at(3), at(3));
    assert_ne!(at(3).value, at(4).value);
    let draw = |seed| EditPlan::draw(&model, &prompt, &response, MASK, EOS, BLOCK, 4, 0.3, seed).unwrap();
    assert_eq!(draw(9), draw(9));
}

#[test]
fn the_spec_parses_and_models_without_edit_ids_are_refused() {
    assert_eq!(Estimator::parse("edit").unwrap(), Estimator::Edit { levels: 4, rate: DEFAULT_RATE });
    let e = Estimator::parse("edit:8:0.25").unwrap();
    assert_eq!(e, Estimator::Edit { levels: 8, rate: 0.25 });
    assert_eq!(Estimator::parse(&e.describe()).unwrap(), e);
    for bad in ["edit:0", "edit:4:1.5", "edit:4:x", "edit:4:0.1:anti"] {
        assert!(Estimator::parse(bad).is_err(), "{bad}");
    }
    // Huge counts are refused before anything is allocated, naming the limit (issue 17), for every estimator.
    for huge in ["edit:100000000", "stratified:100000000", "mc:1000000000", "midpoint:5000"] {
        let e = Estimator::parse(huge).unwrap_err().to_string();
        assert!(e.contains("from 1 to 4096"), "{huge}: {e}");
    }
    assert!(Estimator::parse("mc:4096").is_ok());
    // The masking plan cannot draw it (its noise needs the response and the model).
    assert!(likelihood::plan(&e, 3, 5, 0).unwrap_err().to_string().contains("EditPlan::draw"));

    tch::set_num_threads(1);
    let mut m21 = random_model(&shape("micro").unwrap(), 7, Device::Cpu, DType::F32).unwrap();
    let c = RlConfig { estimator: e.clone(), ..RlConfig::default() };
    let err = Rl::new(&mut m21, c).err().expect("RL with the edit estimator on a 2.1 model").to_string();
    assert!(err.contains("delete_token_id"), "{err}");
    let (prompt, response) = example();
    let err = likelihood::likelihood(&m21, &prompt, &response, MASK, EOS, BLOCK, &e, 0).unwrap_err().to_string();
    assert!(err.contains("delete_token_id") && err.contains("split_token_id") && err.contains("stratified"), "{err}");
    // A response holding an edit id is not a final response.
    let err = likelihood::likelihood(&micro22(), &prompt, &[50, DELETE, EOS], MASK, EOS, BLOCK, &e, 0).unwrap_err().to_string();
    assert!(err.contains("DELETE or SPLIT"), "{err}");
}

#[test]
fn gradients_flow_through_the_combined_estimate() {
    let model = micro22();
    let (prompt, response) = example();
    let plan = EditPlan::draw(&model, &prompt, &response, MASK, EOS, BLOCK, 2, 0.3, 1).unwrap();
    let v = plan.combine(&plan.logp(&model).unwrap());
    v.backward();
    let g: f64 = model.var_store().trainable_variables().iter().filter(|t| t.grad().defined()).map(|t| t.grad().abs().sum(Kind::Float).double_value(&[])).sum();
    assert!(g > 0.0);
    let want = plan.report(&rows(&tch::no_grad(|| plan.logp(&model).unwrap())), 1).value;
    assert!((v.double_value(&[]) - want).abs() < 1e-4);
}

#[test]
fn ebpo_with_the_edit_ratio_on_a_2_2_model() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let config = shape("micro-2.2").unwrap();
    write_random_checkpoint(&config, RandomInit::new(3, 0.02, Device::Cpu, DType::F32), dir.path(), dllm_engine::checkpoint::SaveOptions { dtype: DType::F32, fused_experts: false, shard_bytes: None }).unwrap();
    let mut l = dllm_engine::load(dir.path(), Device::Cpu, None).unwrap();
    // A reward that differs between different responses (their checksum), so groups disagree on a random model.
    let c = RlConfig {
        prompts: vec![RlPrompt { text: "abc".into(), task: None, answer: None, answers: vec![] }],
        tasks: vec![],
        batch: 1,
        group: 3,
        gen_length: 8,
        block_length: 4,
        reward: Reward::from_fn("checksum", |_: &RlPrompt, r: &str| Ok(r.bytes().fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)) as f64 % 1000.0)),
        estimator: Estimator::parse("edit:2:0.3").unwrap(),
        ..RlConfig::default()
    };
    // The default rollout preset is llada2.2 here (Levenshtein decoding), Q on a model without edit ids.
    assert_eq!(c.rollout_preset(l.model.config()), "llada2.2");
    assert_eq!(c.rollout_settings(l.model.config()).unwrap().edit_ops, EditOps::Levenshtein);
    assert_eq!(c.rollout_preset(&shape("micro").unwrap()), "Q");
    let mut rl = Rl::new(&mut l.model, c).unwrap();
    let (_, rollouts) = rl.rollouts(&l.model, &l.tokenizer, 0).unwrap();
    let same = rl.snapshot();
    let zero = log_ratios(&rl, &l.model, &l.tokenizer, &rollouts, &same, 7).unwrap();
    assert!(zero.iter().all(|&x| x == 0.0), "the same noise for theta and theta_old: {zero:?}");
    let m = rl.update(&l.model, &l.tokenizer).unwrap();
    assert!(m.trained > 0, "the rewards must differ for this test to mean anything: {m:?}");
    assert_eq!((m.approx_kl, m.clip_fraction), (0.0, 0.0), "rho = 1 in the first epoch");
    assert!(m.grad_norm > 0.0);
    let moved = log_ratios(&rl, &l.model, &l.tokenizer, &rollouts, &same, 7).unwrap();
    assert!(moved.iter().any(|&x| x.abs() > 1e-7), "after a step the edit ratio moves: {moved:?}");
}
