//! LLaDA2.2 block routing at model level (f32, random `micro-2.2` checkpoints): the KV cache stays exact, a
//! batch equals its rows run alone, the composite `[x_t ; x_0]` layout routes each half by its own groups, and a
//! forward that would start inside a routing group is refused. Router-level hand-checked cases live in moe.rs.

mod common;

use common::*;
use dllm_engine::{composite, shapes, BlockMask, Config, KvCache, RawConfig};
use tch::Tensor;

fn micro22() -> Config {
    shapes::shape("micro-2.2").unwrap()
}

fn edited(base: &Config, edit: impl FnOnce(&mut RawConfig)) -> Config {
    let mut raw: RawConfig = serde_json::from_value(base.to_hf_json()).unwrap();
    edit(&mut raw);
    Config::resolve(&raw).unwrap()
}

fn full(model: &dllm_engine::Model, ids: &Tensor, block: i64) -> Tensor {
    model.forward(ids, &mut KvCache::new(), 0, BlockMask::block_causal(block)).unwrap()
}

#[test]
fn block_routing_changes_the_logits_and_full_capacity_is_plain_top_k() {
    // Same weights (same seed and shapes) under three routings. A pool of 4 of 8 experts must change the
    // logits; a pool of all 8 experts restricts nothing, so it equals 2.1 routing without groups.
    let cfg = micro22();
    let x = ids(&cfg, 2, 12, 1);
    let pooled = full(&spiky_model(&cfg, 1), &x, 4);
    let all = full(&spiky_model(&edited(&cfg, |r| r.expert_capacity = Some(8)), 1), &x, 4);
    let ungrouped = edited(&micro(), |r| r.n_group = Some(1));
    let plain = full(&spiky_model(&ungrouped, 1), &x, 4);
    assert!(max_abs_diff(&all, &plain) < 1e-5, "{}", max_abs_diff(&all, &plain));
    assert!(max_abs_diff(&pooled, &plain) > 1e-2, "the pool did not restrict anything");
}

#[test]
fn cached_forward_equals_full_recompute() {
    let cfg = micro22();
    let (_, bs) = cfg.block_routing().unwrap();
    let model = spiky_model(&cfg, 2);
    // Diffusion blocks of one and of two routing groups.
    for block in [bs, 2 * bs] {
        let mask = BlockMask::block_causal(block);
        let x = ids(&cfg, 2, 4 * block, 3);
        let reference = full(&model, &x, block);
        let mut cache = KvCache::new();
        let got = model.forward(&x.narrow(1, 0, 2 * block), &mut cache, block, mask).unwrap();
        assert!(max_abs_diff(&got, &reference.narrow(1, block, block)) < 1e-5, "block {block}");
        let got = model.forward(&x.narrow(1, block, 3 * block), &mut cache, block, mask).unwrap();
        assert!(max_abs_diff(&got, &reference.narrow(1, 2 * block, 2 * block)) < 1e-5, "block {block}");
        assert_eq!(cache.len(), 2 * block);
    }
}

#[test]
fn forward_off_a_routing_group_boundary_is_refused() {
    // Routing groups of 4; attention blocks of 2 would let the cache end at position 2, inside a group.
    let cfg = micro22();
    let model = spiky_model(&cfg, 3);
    let mut cache = KvCache::new();
    let err = model.forward(&ids(&cfg, 1, 4, 4), &mut cache, 2, BlockMask::block_causal(2)).unwrap_err().to_string();
    assert!(err.contains("routing-group boundary") && err.contains("block_size 4"), "{err}");
    assert_eq!(cache.len(), 0, "a refused forward leaves the cache alone");
    // The 2.1 model has no routing groups: the same call is fine.
    assert!(spiky_model(&micro(), 3).forward(&ids(&cfg, 1, 4, 4), &mut cache, 2, BlockMask::block_causal(2)).is_ok());
}

#[test]
fn batch_rows_route_alone() {
    let cfg = micro22();
    let model = spiky_model(&cfg, 5);
    let x = ids(&cfg, 3, 10, 6); // 10 = two groups of 4 and a short one of 2
    let batched = full(&model, &x, 4);
    for r in 0..3 {
        let alone = full(&model, &x.narrow(0, r, 1), 4);
        assert!(max_abs_diff(&batched.narrow(0, r, 1), &alone) < 1e-5, "row {r}");
    }
    // Changing row 1 leaves row 0 untouched (its pools never see row 1).
    let y = x.copy();
    let _ = y.narrow(0, 1, 1).fill_(9);
    assert!(max_abs_diff(&full(&model, &y, 4).narrow(0, 0, 1), &batched.narrow(0, 0, 1)) < 1e-6);
}

#[test]
fn later_routing_groups_do_not_reach_back() {
    // Attention blocks = routing groups = 4: changing a token of group 1 must leave group 0's logits exactly
    // as they were (its pools are taken over its own rows only), which is what keeps its cached K/V exact.
    let cfg = micro22();
    let model = spiky_model(&cfg, 7);
    let x = ids(&cfg, 1, 8, 8);
    let y = x.copy();
    let _ = y.narrow(1, 6, 1).fill_(11);
    let (a, b) = (full(&model, &x, 4), full(&model, &y, 4));
    assert!(max_abs_diff(&a.narrow(1, 0, 4), &b.narrow(1, 0, 4)) < 1e-6);
    assert!(max_abs_diff(&a.narrow(1, 4, 4), &b.narrow(1, 4, 4)) > 1e-3);
}

#[test]
fn composite_layout_must_start_its_halves_on_group_boundaries() {
    // Diffusion blocks of 2 with routing groups of 4: the noisy half would start at position 2.
    let cfg = micro22();
    let model = spiky_model(&cfg, 9);
    let rows = vec![(0..8).map(|i| i + 10).collect::<Vec<i64>>()];
    let comp = composite::build(&rows, &rows, 2, 1).unwrap();
    let err = model.forward_masked(&comp.ids, &comp.positions, &comp.allowed, None).unwrap_err().to_string();
    assert!(err.contains("routing-group boundary"), "{err}");
}

#[test]
fn the_same_weights_routed_per_token_and_the_experts_a_block_uses() {
    // route_per_token is the 2.1 router on the same weights: it equals a checkpoint built without block routing.
    let cfg = micro22();
    let x = ids(&cfg, 4, 32, 3);
    let mut model = spiky_model(&cfg, 1);
    let pooled = full(&model, &x, 4);
    let pooled_use = model.experts_per_group(&x, 4).unwrap();
    model.route_per_token().unwrap();
    let per_token = full(&model, &x, 4);
    let plain = full(&spiky_model(&edited(&cfg, |r| (r.expert_capacity, r.block_size) = (None, None)), 1), &x, 4);
    assert!(max_abs_diff(&per_token, &plain) < 1e-5, "{}", max_abs_diff(&per_token, &plain));
    assert!(max_abs_diff(&pooled, &per_token) > 1e-2);
    let token_use = model.experts_per_group(&x, 4).unwrap();
    assert_eq!((pooled_use.len(), token_use.len()), (2, 2), "one number per MoE layer");
    // A pool of 4 bounds what a routing group of 4 tokens uses; per token the same group reaches past it.
    assert!(pooled_use.iter().all(|&(mean, most)| mean >= 2.0 && most <= 4), "{pooled_use:?}");
    assert!(token_use.iter().any(|&(_, most)| most > 4), "{token_use:?}");
    let e = model.route_per_token().unwrap_err().to_string();
    assert!(e.contains("already routes every token on its own"), "{e}");
}
