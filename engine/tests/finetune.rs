//! Fine-tuning a checkpoint on a JSONL file (`dllm train --data`): the held-out loss falls, LoRA and layer
//! subsets train only what they name, runs resume to the same weights, and a changed file is refused.

use std::path::{Path, PathBuf};

use dllm_engine::train::data::{digest, DataOptions};
use dllm_engine::train::{self, DataConfig, TrainConfig, Trainer};
use tch::{Device, Kind, Tensor};

/// `lines` rot examples (`rot abc` -> `bca`), written to `dir/rot.jsonl`.
fn rot_file(dir: &Path, lines: usize) -> PathBuf {
    let words = ["abc", "bcd", "cab", "dog", "emu", "fig", "gnu", "hat", "ink", "jam", "kit", "lid", "mop", "nut", "owl"];
    let text: String = (0..lines)
        .map(|i| {
            let w = format!("{}{}", words[i % words.len()], words[(i / words.len()) % words.len()]);
            format!("{{\"prompt\": \"rot {w}\", \"response\": \"{}{}\"}}\n", &w[1..], &w[..1])
        })
        .collect();
    let path = dir.join("rot.jsonl");
    std::fs::write(&path, text).unwrap();
    path
}

fn config(file: &Path, trainable: &str, steps: i64) -> TrainConfig {
    let mut cfg = TrainConfig::recipe("finetune").unwrap();
    cfg.steps = steps;
    cfg.batch = 16;
    cfg.checkpoint_every = 4;
    cfg.mtf_from = 0.5;
    let options = DataOptions { held_out: 0.2, max_response: 32, max_positions: 0, block: cfg.block, seed: cfg.seed };
    let bytes = std::fs::read(file).unwrap();
    cfg.data = Some(DataConfig { file: file.to_path_buf(), digest: digest(&bytes), base: "builtin:tiny".into(), trainable: trainable.into(), options });
    cfg
}

fn weights(dir: &Path) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = dllm_engine::load(dir, Device::Cpu, None).unwrap().model.var_store().variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().to_kind(Kind::Double).double_value(&[])
}

#[test]
fn full_fine_tuning_lowers_the_held_out_loss() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let file = rot_file(dir.path(), 150);
    let out = dir.path().join("out");
    let mut t = train::prepare(config(&file, "all", 24), &out, false).unwrap();
    let d = t.data.as_ref().unwrap();
    assert_eq!((d.train.len(), d.held_out.len()), (120, 30));
    let (m0, t0) = t.held_out_loss().unwrap().unwrap();
    let h = train::run_trainer(&mut t, &out, |_, _| true).unwrap();
    let held: Vec<(f64, f64)> = h.iter().filter_map(|m| m.held_out).collect();
    assert_eq!(held.len(), 6, "one held-out loss per checkpoint");
    let (m1, t1) = *held.last().unwrap();
    assert!(m1 < m0 - 0.3 && t1 < t0, "held-out loss: m2t {m0:.3} -> {m1:.3}, t2t {t0:.3} -> {t1:.3}");
    // OUT is a checkpoint that loads and speaks the base's chat format.
    assert_eq!(weights(&out).len(), weights(Path::new("builtin:tiny")).len());
}

#[test]
fn lora_and_layer_runs_train_only_what_they_name_and_resume_exactly() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let file = rot_file(dir.path(), 60);
    let base = weights(Path::new("builtin:tiny"));

    // layers:3-4: only layer 3 moves.
    let out = dir.path().join("layers");
    train::run(config(&file, "layers:3-4", 4), &out, false, |_, _| true).unwrap();
    for ((name, a), (_, b)) in base.iter().zip(weights(&out)) {
        let moved = max_diff(a, &b) > 0.0;
        assert_eq!(moved, name.starts_with("model.layers.3.") && !name.ends_with("expert_bias"), "{name}");
    }

    // lora:4, whole and interrupted after step 5 then resumed: the same adapters, bit for bit.
    let whole = dir.path().join("whole");
    train::run(config(&file, "lora:4", 8), &whole, false, |_, _| true).unwrap();
    let cut = dir.path().join("cut");
    let h = train::run(config(&file, "lora:4", 8), &cut, false, |t, _| t.step < 5).unwrap();
    assert_eq!(h.len(), 5);
    let h = train::run(config(&file, "lora:4", 8), &cut, false, |_, _| true).unwrap();
    assert_eq!(h.first().unwrap().step, 5, "resumed after the checkpoint of step 4");
    let adapters = |d: &Path| std::fs::read(d.join("lora/adapter.safetensors")).unwrap();
    assert!(adapters(&whole) == adapters(&cut), "resumed adapters differ from uninterrupted ones");
    // The merged weights moved where adapters are, and nowhere else.
    let merged = weights(&whole);
    for ((name, a), (_, b)) in base.iter().zip(&merged) {
        let adapted = ["query_key_value", "attention.dense", "gate_proj", "up_proj", "down_proj"].iter().any(|p| name.contains(p));
        assert_eq!(max_diff(a, b) > 0.0, adapted, "{name}");
    }
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(whole.join("lora/adapter.json")).unwrap()).unwrap();
    assert_eq!((meta["rank"].as_i64(), meta["base"].as_str()), (Some(4), Some("builtin:tiny")));

    // A data file edited under a run is refused when resuming, and --fresh starts over on it.
    std::fs::write(&file, std::fs::read_to_string(&file).unwrap().replace("rot abc", "rot abd")).unwrap();
    let edited = config(&file, "lora:4", 12);
    let e = train::prepare(edited.clone(), &cut, false).err().expect("a changed file is refused").to_string();
    assert!(e.contains("changed since the run started"), "{e}");
    assert_eq!(train::prepare(edited, &cut, true).unwrap().step, 0);
}

#[test]
fn held_out_accuracy_compares_greedy_decodes_with_the_written_answers() {
    // builtin:tiny copies well: answers written as copies score high, the same prompts with reversed answers
    // score low.
    let dir = tempfile::tempdir().unwrap();
    let words = ["abcd", "hello", "zebra", "quiet", "mango", "pixel", "ruby", "sigma", "tango", "ultra"];
    let accuracy = |reverse: bool| {
        let text: String = (0..40)
            .map(|i| {
                let w = format!("{}{}", words[i % 10], &words[(i / 10) % 10][..1]);
                let answer = if reverse { w.chars().rev().collect() } else { w.clone() };
                format!("{{\"prompt\": \"copy {w}\", \"response\": \"{answer}\"}}\n")
            })
            .collect();
        let file = dir.path().join(format!("copy-{reverse}.jsonl"));
        std::fs::write(&file, text).unwrap();
        let t = Trainer::new(config(&file, "lora:2", 1)).unwrap();
        let (acc, n) = t.held_out_accuracy(100).unwrap().unwrap();
        assert_eq!(n, 8, "a fifth of 40 lines");
        acc
    };
    let (right, wrong) = (accuracy(false), accuracy(true));
    assert!(right >= 0.75 && wrong <= 0.25, "copies {right}, reversed {wrong}");
}
