//! Training: a short run learns on both streams, and an interrupted run resumes to exactly the weights of
//! an uninterrupted one.

use dllm_engine::train::{self, TrainConfig};
use tch::Kind;

fn smoke(steps: i64) -> TrainConfig {
    let mut cfg = TrainConfig::recipe("smoke").unwrap();
    cfg.steps = steps;
    cfg
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// ((M2T first, M2T last), (T2T first, T2T last)): loss means over the first and the last 20 steps.
fn losses(h: &[train::StepMetrics]) -> ((f64, f64), (f64, f64)) {
    let first = |f: fn(&train::StepMetrics) -> f64| mean(&h[..20].iter().map(f).collect::<Vec<_>>());
    let last = |f: fn(&train::StepMetrics) -> f64| mean(&h[h.len() - 20..].iter().map(f).collect::<Vec<_>>());
    ((first(|m| m.m2t_loss), last(|m| m.m2t_loss)), (first(|m| m.t2t_loss), last(|m| m.t2t_loss)))
}

#[test]
fn smoke_run_lowers_the_loss_on_both_streams() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let cfg = smoke(TrainConfig::recipe("smoke").unwrap().steps);
    let h = train::run(cfg.clone(), dir.path(), false, |_, _| true).unwrap();
    assert_eq!(h.len() as i64, cfg.steps);
    let ((m0, m1), (t0, t1)) = losses(&h);
    assert!(m1 < 0.5 * m0, "M2T loss {m0:.3} -> {m1:.3}");
    assert!(t1 < 0.2 * t0, "T2T loss {t0:.3} -> {t1:.3}");
    assert!(h.iter().all(|m| !m.skipped && m.grad_norm.is_finite()));
    assert!(h.iter().any(|m| m.mtf) && !h[0].mtf, "multi-turn forward starts part-way");
    // The output folder is a loadable checkpoint in the official layout.
    let loaded = dllm_engine::load(dir.path(), tch::Device::Cpu, None).unwrap();
    assert_eq!(loaded.model.config().vocab_size, 128);
    assert!(dir.path().join("train").join(format!("step-{:06}", cfg.steps)).join("optimizer.safetensors").is_file());
}

#[test]
fn a_levenshtein_smoke_run_learns_and_writes_a_llada22_checkpoint() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let cfg = TrainConfig::recipe("smoke-2.2").unwrap();
    let h = train::run(cfg.clone(), dir.path(), false, |_, _| true).unwrap();
    let ((m0, m1), (t0, t1)) = losses(&h);
    assert!(m1 < 0.6 * m0, "M2T loss {m0:.3} -> {m1:.3}");
    assert!(t1 < 0.3 * t0, "Levenshtein T2T loss {t0:.3} -> {t1:.3}");
    assert!(h.iter().any(|m| m.mtf) && h.iter().all(|m| !m.skipped), "the Levenshtein MTF round runs");
    let loaded = dllm_engine::load(dir.path(), tch::Device::Cpu, None).unwrap();
    let c = loaded.model.config();
    assert_eq!((c.delete_token_id, c.split_token_id), (Some(126), Some(127)));
    assert!(c.block_routing().is_some());
    assert_eq!(loaded.tokenizer.token_text(126), "<|delete|>");
    // The run is resumable like any other.
    assert!(train::latest_checkpoint(dir.path()).unwrap().is_some());
}

#[test]
fn an_interrupted_run_resumes_exactly() {
    tch::set_num_threads(1);
    let mut cfg = smoke(24);
    cfg.checkpoint_every = 10;
    cfg.mtf_from = 0.25;
    let whole = tempfile::tempdir().unwrap();
    train::run(cfg.clone(), whole.path(), false, |_, _| true).unwrap();

    let cut = tempfile::tempdir().unwrap();
    // Interrupted after step 15: steps 11..15 are lost, the checkpoint of step 10 survives.
    let h = train::run(cfg.clone(), cut.path(), false, |t, _| t.step < 15).unwrap();
    assert_eq!(h.len(), 15);
    assert_eq!(train::latest_checkpoint(cut.path()).unwrap().unwrap().file_name().unwrap(), "step-000010");
    let h = train::run(cfg.clone(), cut.path(), false, |_, _| true).unwrap();
    assert_eq!(h.first().unwrap().step, 11, "resumed after the last checkpoint");

    let a = dllm_engine::load(whole.path(), tch::Device::Cpu, None).unwrap();
    let b = dllm_engine::load(cut.path(), tch::Device::Cpu, None).unwrap();
    let (va, vb) = (a.model.var_store().variables(), b.model.var_store().variables());
    assert_eq!(va.len(), vb.len());
    for (name, t) in &va {
        let diff = (t - &vb[name]).abs().max().to_kind(Kind::Double).double_value(&[]);
        assert!(diff == 0.0, "{name} differs by {diff}");
    }
    // Another preset in the same folder is refused rather than mixed.
    let mut other = cfg.clone();
    other.lr *= 2.0;
    let e = train::run(other, cut.path(), false, |_, _| true).unwrap_err().to_string();
    assert!(e.contains("--fresh"), "{e}");
}

#[test]
fn load_balancing_moves_the_expert_bias_against_the_load() {
    let config = dllm_engine::shapes::shape("micro").unwrap();
    let model = dllm_engine::shapes::random_model(&config, 0, tch::Device::Cpu, dllm_engine::DType::F32).unwrap();
    let moe_layers = (config.num_hidden_layers - config.first_k_dense_replace) as usize;
    // 8 experts, mean load 4: expert 0 overloaded, experts 1 and 2 at the mean, the rest under.
    let loads = vec![vec![18, 4, 4, 2, 2, 1, 1, 0]; moe_layers];
    model.balance_experts(&loads, 0.5);
    let bias = &model.var_store().variables()["model.layers.1.mlp.gate.expert_bias"];
    let b = Vec::<f32>::try_from(bias).unwrap();
    assert_eq!(b, vec![-0.5, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5, 0.5]);
    assert!(!bias.requires_grad(), "the bias is a buffer, not trained by gradient");
}

#[test]
fn unknown_recipe_lists_the_known_ones() {
    let e = TrainConfig::recipe("huge").unwrap_err().to_string();
    assert!(e.contains("training recipe") && e.contains("known recipes: tiny, m2t, tiny-2.2, smoke, smoke-2.2"), "{e}");
}

#[test]
fn a_run_never_writes_into_a_folder_that_is_not_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("thesis");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("chapter1.tex"), "x").unwrap();
    let e = train::run(smoke(2), &out, true, |_, _| true).unwrap_err().to_string();
    assert!(e.contains("not a training folder") && e.contains("chapter1.tex"), "{e}");
    let left: Vec<_> = std::fs::read_dir(&out).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(left, ["chapter1.tex"], "nothing written, nothing removed");

    // A fresh folder appears whole at the first checkpoint; a killed run's temporary beside it is cleared.
    let stale = dir.path().join(".run.tmp999999999");
    std::fs::create_dir(&stale).unwrap();
    let run = dir.path().join("run");
    let mut cfg = smoke(4);
    cfg.checkpoint_every = 2;
    let mut seen = Vec::new();
    train::run(cfg, &run, false, |t, _| {
        seen.push((t.step, run.exists()));
        true
    })
    .unwrap();
    assert_eq!(seen, [(1, false), (2, false), (3, true), (4, true)], "OUT is created by the first checkpoint, after step 2");
    assert!(!stale.exists(), "the stale temporary is removed");
    dllm_engine::load(&run, tch::Device::Cpu, None).unwrap();
}
