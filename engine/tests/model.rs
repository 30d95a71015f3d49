//! Model-level behaviour: the KV cache is exact, block-causality holds, layouts and dtypes load alike.

mod common;

use common::*;
use dllm_engine::checkpoint::SaveOptions;
use dllm_engine::{load, BlockMask, DType, KvCache, MaskKind};
use tch::{Device, Tensor};

const BLOCK: i64 = 4;

fn full(model: &dllm_engine::Model, ids: &Tensor, kind: MaskKind) -> Tensor {
    model.forward(ids, &mut KvCache::new(), 0, BlockMask { block_length: BLOCK, kind, bidirectional_from: None }).unwrap()
}

#[test]
fn logits_are_spread_so_comparisons_mean_something() {
    let cfg = micro();
    let model = spiky_model(&cfg, 1);
    let logits = full(&model, &ids(&cfg, 1, 8, 0), MaskKind::BlockCausal);
    assert_eq!(logits.size(), vec![1, 8, cfg.vocab_size]);
    let std = logits.std(true).double_value(&[]);
    assert!(std > 0.5, "logit std {std} too small for a 1e-5 comparison to be informative");
}

#[test]
fn cached_forward_equals_full_recompute_across_blocks() {
    let cfg = micro();
    let model = spiky_model(&cfg, 2);
    let mask = BlockMask::block_causal(BLOCK);
    let x = ids(&cfg, 2, 5 * BLOCK, 3); // batch 2, five blocks
    let reference = full(&model, &x, MaskKind::BlockCausal);
    let blk = |b: i64, n: i64| x.narrow(1, b * BLOCK, n * BLOCK);
    let want = |b: i64, n: i64| reference.narrow(1, b * BLOCK, n * BLOCK);

    let mut cache = KvCache::new();
    // Block 0 alone, not committed: it sees only itself.
    let got = model.forward(&blk(0, 1), &mut cache, 0, mask).unwrap();
    assert!(max_abs_diff(&got, &want(0, 1)) < 1e-5);
    assert_eq!(cache.len(), 0);
    // Commit block 0 while computing block 1 (the decoder's "finished block rides along" pattern).
    let got = model.forward(&blk(0, 2), &mut cache, BLOCK, mask).unwrap();
    assert_eq!(cache.len(), BLOCK);
    assert!(max_abs_diff(&got, &want(1, 1)) < 1e-5);
    // Commit blocks 1 and 2 at once, get block 3 out.
    let got = model.forward(&blk(1, 3), &mut cache, 2 * BLOCK, mask).unwrap();
    assert_eq!(cache.len(), 3 * BLOCK);
    assert!(max_abs_diff(&got, &want(3, 1)) < 1e-5);
    // Several blocks after the cache, uncommitted: each sees the cache and the blocks before it.
    let got = model.forward(&blk(3, 2), &mut cache, 0, mask).unwrap();
    assert!(max_abs_diff(&got, &want(3, 2)) < 1e-5);
    // Rewind to block 1 and recompute from there.
    cache.truncate(BLOCK);
    let got = model.forward(&blk(1, 4), &mut cache, 0, mask).unwrap();
    assert!(max_abs_diff(&got, &want(1, 4)) < 1e-5);
}

#[test]
fn earlier_blocks_do_not_see_later_ones_unless_hf_additive() {
    let cfg = micro();
    let model = spiky_model(&cfg, 4);
    let a = ids(&cfg, 1, 3 * BLOCK, 5);
    let b = a.copy();
    let _ = b.narrow(1, 2 * BLOCK, BLOCK).fill_(7); // change only the last block
    for (kind, should_move) in [(MaskKind::BlockCausal, false), (MaskKind::HfAdditive, true)] {
        let (la, lb) = (full(&model, &a, kind), full(&model, &b, kind));
        let early = max_abs_diff(&la.narrow(1, 0, 2 * BLOCK), &lb.narrow(1, 0, 2 * BLOCK));
        assert_eq!(early > 1e-3, should_move, "{kind:?}: early blocks moved by {early}");
        assert!(max_abs_diff(&la.narrow(1, 2 * BLOCK, BLOCK), &lb.narrow(1, 2 * BLOCK, BLOCK)) > 1e-3);
    }
}

#[test]
fn batch_rows_are_independent() {
    let cfg = micro();
    let model = spiky_model(&cfg, 6);
    let x = ids(&cfg, 3, 2 * BLOCK, 7);
    let batched = full(&model, &x, MaskKind::BlockCausal);
    for r in 0..3 {
        let alone = full(&model, &x.narrow(0, r, 1), MaskKind::BlockCausal);
        assert!(max_abs_diff(&alone, &batched.narrow(0, r, 1)) < 1e-5);
    }
}

#[test]
fn layouts_shards_and_disk_dtypes_load_to_the_same_model() {
    let cfg = micro();
    let model = spiky_model(&cfg, 8);
    let x = ids(&cfg, 1, 2 * BLOCK, 9);
    let reference = full(&model, &x, MaskKind::BlockCausal);
    let layouts = [
        ("per-expert", SaveOptions { dtype: DType::F32, fused_experts: false, shard_bytes: None }, 1e-6),
        ("fused", SaveOptions { dtype: DType::F32, fused_experts: true, shard_bytes: None }, 1e-6),
        ("sharded", SaveOptions { dtype: DType::F32, fused_experts: false, shard_bytes: Some(40_000) }, 1e-6),
        ("sharded fused", SaveOptions { dtype: DType::F32, fused_experts: true, shard_bytes: Some(40_000) }, 1e-6),
    ];
    for (what, opts, tol) in layouts {
        let dir = tempfile::tempdir().unwrap();
        save(&model, dir.path(), opts);
        if opts.shard_bytes.is_some() {
            assert!(dir.path().join("model.safetensors.index.json").exists(), "{what}");
            let shards = std::fs::read_dir(dir.path()).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("model-0")).count();
            assert!(shards >= 3, "{what}: {shards} shards");
        }
        let loaded = load(dir.path(), Device::Cpu, Some(DType::F32)).unwrap();
        let got = full(&loaded.model, &x, MaskKind::BlockCausal);
        let e = max_abs_diff(&got, &reference);
        assert!(e < tol, "{what}: {e}");
    }
    // bf16 and f16 on disk, run in f32: exactly the original weights rounded to that dtype (the expert bias
    // is stored in f32 and stays exact). Logits are not compared: rounding can flip a near-tie in routing.
    let original = model.var_store().variables();
    for dtype in [DType::Bf16, DType::F16] {
        let dir = tempfile::tempdir().unwrap();
        save(&model, dir.path(), SaveOptions { dtype, fused_experts: false, shard_bytes: None });
        let loaded = load(dir.path(), Device::Cpu, Some(DType::F32)).unwrap();
        assert_eq!(loaded.model.dtype(), DType::F32);
        let vars = loaded.model.var_store().variables();
        assert_eq!(vars.len(), original.len());
        for (name, t) in &vars {
            let want = if name.ends_with("expert_bias") { original[name].shallow_clone() } else { original[name].to_kind(dtype.kind()).to_kind(tch::Kind::Float) };
            assert_eq!(t.kind(), tch::Kind::Float, "{name}");
            assert!(t.equal(&want), "{dtype}: {name} is not the original rounded to {dtype}");
        }
    }
}

#[test]
fn runs_in_bf16_with_f32_logits_and_fp32_expert_bias() {
    let cfg = micro();
    let model = spiky_model(&cfg, 10);
    let dir = tempfile::tempdir().unwrap();
    save(&model, dir.path(), f32_opts());
    let loaded = load(dir.path(), Device::Cpu, Some(DType::Bf16)).unwrap();
    let vars = loaded.model.var_store().variables();
    assert_eq!(vars["model.layers.1.mlp.gate.expert_bias"].kind(), tch::Kind::Float);
    assert_eq!(vars["model.layers.1.mlp.gate.weight"].kind(), tch::Kind::BFloat16);
    let x = ids(&cfg, 1, BLOCK, 11);
    let got = full(&loaded.model, &x, MaskKind::BlockCausal);
    assert_eq!(got.kind(), tch::Kind::Float);
    let reference = full(&model, &x, MaskKind::BlockCausal);
    assert!(max_abs_diff(&got, &reference) < 1.0);
}

#[test]
fn forward_rejects_bad_input_with_clear_errors() {
    let cfg = micro();
    let model = spiky_model(&cfg, 12);
    let mask = BlockMask::block_causal(BLOCK);
    let err = |ids: Tensor, cache: &mut KvCache, commit: i64, mask: BlockMask| model.forward(&ids, cache, commit, mask).unwrap_err().to_string();
    let mut c = KvCache::new();
    assert!(err(Tensor::from_slice(&[1i64, 2]), &mut c, 0, mask).contains("[batch, length]"));
    assert!(err(Tensor::from_slice(&[1i64, 999]).view([1, 2]), &mut c, 0, mask).contains("ids must be in 0..128"));
    assert!(err(ids(&cfg, 1, 6, 0), &mut c, 3, mask).contains("block boundary"));
    assert!(err(ids(&cfg, 1, 4, 0), &mut c, 5, mask).contains("commit"));
    assert!(err(ids(&cfg, 1, 5000, 0), &mut c, 0, mask).contains("max_position_embeddings"));
    assert!(err(ids(&cfg, 1, 4, 0), &mut c, 0, BlockMask::block_causal(0)).contains("block length"));
    let hf = BlockMask { block_length: BLOCK, kind: MaskKind::HfAdditive, bidirectional_from: None };
    assert!(err(ids(&cfg, 1, 8, 0), &mut c, 4, hf).contains("nothing can be cached"));
    // A failed call leaves the cache as it was.
    assert_eq!(c.len(), 0);
    let _ = model.forward(&ids(&cfg, 2, 4, 0), &mut c, 4, mask).unwrap();
    assert!(err(ids(&cfg, 1, 4, 0), &mut c, 0, mask).contains("cache holds batch 2"));
    assert_eq!(c.len(), 4);
}
