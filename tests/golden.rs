//! Golden logits: the engine against an independent NumPy implementation (tests/golden/llada2_ref.py) on
//! random checkpoints whose every tensor carries information. Tolerance 1e-4 on the logits (f32 run).
//!
//! Needs a Python with NumPy: `DLLM_PYTHON`, else the project's `.venv` (both set up by `make test`).

use std::path::{Path, PathBuf};
use std::process::Command;

use dllm_engine::checkpoint::SaveOptions;
use dllm_engine::{shapes, BlockMask, Config, DType, KvCache, MaskKind, RandomInit};
use tch::{Device, Tensor};

fn python() -> PathBuf {
    if let Ok(p) = std::env::var("DLLM_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(venv.exists(), "no Python with NumPy: run `make test` (it creates .venv) or set DLLM_PYTHON");
    venv
}

fn reference_logits(dir: &Path, ids: &[i64], block: i64, attention: &str) -> Tensor {
    let out = dir.join(format!("ref-{block}-{attention}.json"));
    let ids_arg: Vec<String> = ids.iter().map(i64::to_string).collect();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/llada2_ref.py");
    let status = Command::new(python())
        .arg(script)
        .args(["--model", dir.to_str().unwrap(), "--ids", &ids_arg.join(","), "--block-length", &block.to_string()])
        .args(["--attention", attention, "--out", out.to_str().unwrap()])
        .status()
        .expect("run the NumPy reference");
    assert!(status.success(), "the NumPy reference failed");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let rows: Vec<Vec<f64>> = serde_json::from_value(v["logits"].clone()).unwrap();
    let flat: Vec<f32> = rows.iter().flatten().map(|&x| x as f32).collect();
    Tensor::from_slice(&flat).view([rows.len() as i64, -1])
}

fn variant(name: &str) -> Config {
    let base = shapes::shape(if name == "micro-2.2" { "micro-2.2" } else { "micro" }).unwrap();
    let mut raw: dllm_engine::RawConfig = serde_json::from_value(base.to_hf_json()).unwrap();
    match name {
        // LLaDA2.2 block routing: pools of 4 of 8 experts per routing group of 4 (14 ids: a short final group).
        "micro" | "micro-2.2" => {}
        // Every optional tensor and branch the other way: biases, tied embeddings, no shared expert,
        // a single expert group, top-3, plain multi-head attention, full RoPE.
        "variant" => {
            raw.use_bias = Some(true);
            raw.use_qkv_bias = Some(true);
            raw.tie_word_embeddings = Some(true);
            raw.num_shared_experts = Some(0);
            raw.n_group = Some(1);
            raw.num_experts_per_tok = Some(3);
            raw.num_key_value_heads = Some(4);
            raw.partial_rotary_factor = Some(1.0);
            raw.first_k_dense_replace = Some(0);
        }
        _ => unreachable!(),
    }
    Config::resolve(&raw).unwrap()
}

fn check(config: &Config, opts: SaveOptions, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let init = RandomInit::new(seed, 0.3, Device::Cpu, DType::F32).spread(true);
    shapes::write_random_checkpoint(config, init, dir.path(), opts).unwrap();
    let loaded = dllm_engine::load(dir.path(), Device::Cpu, Some(DType::F32)).unwrap();
    let ids: Vec<i64> = (0..14).map(|i| (i * 37 + seed as i64 * 11) % config.vocab_size).collect();
    for block in [4, 5] {
        for (attention, kind) in [("block-causal", MaskKind::BlockCausal), ("hf-additive", MaskKind::HfAdditive)] {
            let want = reference_logits(dir.path(), &ids, block, attention);
            let got = loaded
                .model
                .forward(&Tensor::from_slice(&ids).view([1, -1]), &mut KvCache::new(), 0, BlockMask { block_length: block, kind, bidirectional_from: None })
                .unwrap()
                .get(0);
            let spread = want.std(true).double_value(&[]);
            let err = (&got - &want).abs().max().double_value(&[]);
            assert!(spread > 0.5, "reference logits too flat ({spread}) for the comparison to mean much");
            assert!(err < 1e-4, "block {block}, {attention}: max |engine - numpy| = {err}");
        }
    }
}

#[test]
fn micro_per_expert_f32_matches_numpy() {
    check(&variant("micro"), SaveOptions { dtype: DType::F32, fused_experts: false, shard_bytes: None }, 1);
}

#[test]
fn micro_fused_bf16_sharded_matches_numpy() {
    check(&variant("micro"), SaveOptions { dtype: DType::Bf16, fused_experts: true, shard_bytes: Some(50_000) }, 2);
}

#[test]
fn block_routed_micro_2_2_matches_numpy() {
    let config = variant("micro-2.2");
    assert_eq!(config.block_routing(), Some((4, 4)));
    check(&config, SaveOptions { dtype: DType::F32, fused_experts: false, shard_bytes: None }, 4);
}

#[test]
fn variant_with_biases_tied_embeddings_and_no_groups_matches_numpy() {
    check(&variant("variant"), SaveOptions { dtype: DType::F32, fused_experts: false, shard_bytes: None }, 3);
}
