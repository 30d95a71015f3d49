//! The sparse MoE block of LLaDA2 layers `>= first_k_dense_replace`.
//!
//! Routing (llada2.md section 1, step 7): router logits in fp32; s = sigmoid(logits); selection scores
//! s' = s + expert_bias (the bias only selects, it never weights); group-limited top-k: a group's score is
//! the sum of its top-2 s', the best `topk_group` groups stay, every other expert gets -inf (not 0: the bias
//! can be negative); the top `num_experts_per_tok` experts by s'. Weights are the UNBIASED s of the chosen
//! experts, renormalised (when more than one is chosen), times `routed_scaling_factor`. The weighted sum is
//! accumulated in fp32; the shared experts are added unweighted.
//!
//! LLaDA2.2 block routing (llada2.2.md section 2.1), on when the config has `expert_capacity`: the same sigmoid
//! scores and biased selection scores, but per routing group of `block_size` consecutive positions the pool is
//! the C = `expert_capacity` experts with the largest maximum selection score over the group's rows, and each
//! token takes its top-k inside the pool by its own selection score; weights as above. `n_group` / `topk_group`
//! are not used on this path. Groups follow canvas positions ([`RoutingGroups`]): they never span two rows of a
//! batch, and a short final group routes over the rows it has. Both the pool and the per-token choice use a
//! stable descending sort, so ties go to the lower expert id (as minnow does; `topk`'s tie order is unspecified).
//!
//! Dispatch groups tokens by expert: one gather, one SwiGLU and one scatter-add per active expert, never a
//! per-token loop. Quantized experts ([`crate::quant`]) are dequantized one at a time, just before their SwiGLU,
//! or multiplied in fp8 on the GPU ([`crate::fp8_matmul`]).

use tch::{Kind, Tensor};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::lora::{FfnLora, LayerLora};
use crate::fp8_matmul::ExpertMatmul;
use crate::model::{swiglu_with, Mlp, Weights};
use crate::quant::ExpertWeights;
use crate::weights::Role;

#[derive(Debug)]
pub(crate) struct Moe {
    gate: Tensor,
    /// fp32 buffer `[E]`, not trained by gradient (updated by load balancing).
    expert_bias: Tensor,
    /// Fused routed experts: gate/up `[E, I, H]`, down `[E, H, I]`, full or quantized.
    gate_proj: ExpertWeights,
    up_proj: ExpertWeights,
    down_proj: ExpertWeights,
    shared: Option<Mlp>,
    router: Router,
    /// How fp8 experts multiply ([`crate::fp8_matmul`]); set for the whole model by `Model::set_fp8_matmul`.
    pub(crate) fp8_matmul: ExpertMatmul,
    /// When Some, every forward appends its chosen experts `[B, L, top_k]` (diagnostics: [`crate::Model::experts_per_group`]).
    trace: std::sync::Mutex<Option<Vec<Tensor>>>,
}

/// The routing hyper-parameters, separate so routing can be tested on hand-made scores.
#[derive(Debug, Clone, Copy)]
pub struct Router {
    pub num_experts: i64,
    pub top_k: i64,
    pub n_group: i64,
    pub topk_group: i64,
    pub routed_scaling_factor: f64,
    /// LLaDA2.2 block routing: the pool size C (`expert_capacity`). `None`: group-limited routing.
    pub capacity: Option<i64>,
}

/// Which rows of a forward share a routing pool: `of[t]` is the group of column `t` (int64 `[T]`, the same for
/// every batch row, so groups never span two rows), numbered `0..count`. `padded` (`[count * width]`) lists each
/// group's columns in `width` slots, a short group's free slots pointing at column T (a -inf row the router
/// appends), so the group maxima are one gather, a view and a max.
#[derive(Debug)]
pub struct RoutingGroups {
    of: Tensor,
    padded: Tensor,
    count: i64,
    width: i64,
}

impl RoutingGroups {
    /// Aligned groups of `block_size` over `len` columns whose first column is on a group boundary; the last
    /// group is short when `block_size` does not divide `len`.
    pub fn aligned(len: i64, block_size: i64, device: tch::Device) -> RoutingGroups {
        let count = (len + block_size - 1) / block_size;
        let opts = (Kind::Int64, device);
        let of = Tensor::arange(len, opts).floor_divide_scalar(block_size);
        let padded = Tensor::arange(count * block_size, opts).clamp_max(len);
        RoutingGroups { of, padded, count, width: block_size }
    }

    /// Groups of a forward whose columns sit at canvas `positions` (e.g. the composite `[x_t ; x_0]` layout): a
    /// group starts where a position is a multiple of `block_size` or does not continue the previous column, so
    /// each contiguous run routes by its own aligned groups. A run must start on a group boundary.
    pub fn from_positions(positions: &[i64], block_size: i64, device: tch::Device) -> Result<RoutingGroups> {
        let t = positions.len() as i64;
        let (mut of, mut padded) = (Vec::with_capacity(positions.len()), Vec::with_capacity(positions.len()));
        let mut count = 0i64;
        for (i, &p) in positions.iter().enumerate() {
            let run_start = i == 0 || p != positions[i - 1] + 1;
            if run_start && p % block_size != 0 {
                return Err(Error::invalid(
                    "positions",
                    p,
                    format!("a run of positions must start on a routing-group boundary (block_size {block_size})"),
                ));
            }
            if run_start || p % block_size == 0 {
                count += 1;
                padded.resize((count * block_size) as usize, t);
            }
            of.push(count - 1);
            padded[((count - 1) * block_size + p % block_size) as usize] = i as i64;
        }
        let to = |v: &[i64]| Tensor::from_slice(v).to_device(device);
        Ok(RoutingGroups { of: to(&of), padded: to(&padded), count, width: block_size })
    }
}

impl Router {
    pub fn from_config(c: &Config) -> Router {
        Router {
            num_experts: c.num_experts,
            top_k: c.num_experts_per_tok,
            n_group: if c.group_limited() { c.n_group } else { 1 },
            topk_group: c.topk_group,
            routed_scaling_factor: c.routed_scaling_factor,
            capacity: c.block_routing().map(|(cap, _)| cap),
        }
    }

    /// Block routing. From router probabilities `s` (`[B, T, E]`, fp32, after sigmoid), the expert bias and
    /// the routing groups of the T columns, the chosen experts `[B, T, top_k]` (int64) and their weights
    /// `[B, T, top_k]` (fp32). Panics if the router has no capacity (a programming error, not input).
    pub fn route_blocks(&self, s: &Tensor, expert_bias: &Tensor, groups: &RoutingGroups) -> (Tensor, Tensor) {
        let cap = self.capacity.expect("route_blocks on a router without expert_capacity");
        let (b, e) = (s.size()[0], s.size()[2]);
        // Selection never carries gradients: only the unbiased weights gathered below do.
        let sel = (s + expert_bias).detach();
        let pad = Tensor::full([b, 1, e], f64::NEG_INFINITY, (Kind::Float, s.device()));
        let racing = Tensor::cat(&[&sel, &pad], 1).index_select(1, &groups.padded).view([b, groups.count, groups.width, e]).amax(2, false);
        let pool = racing.sort_stable(true, -1, true).1.narrow(-1, 0, cap);
        let outside = Tensor::ones([b, groups.count, e], (Kind::Float, s.device())).scatter_value(-1, &pool, 0.0);
        let outside = outside.index_select(1, &groups.of).eq(1.0);
        let idx = sel.masked_fill(&outside, f64::NEG_INFINITY).sort_stable(true, -1, true).1.narrow(-1, 0, self.top_k);
        let mut w = s.gather(-1, &idx, false);
        if self.top_k > 1 {
            w = &w / (w.sum_dim_intlist(-1, true, Kind::Float) + 1e-20);
        }
        (idx, w * self.routed_scaling_factor)
    }

    /// From router probabilities `s` (`[T, E]`, fp32, after sigmoid) and the expert bias, the chosen experts
    /// `[T, top_k]` (int64) and their weights `[T, top_k]` (fp32).
    pub fn route(&self, s: &Tensor, expert_bias: &Tensor) -> (Tensor, Tensor) {
        let t = s.size()[0];
        let mut sel = s + expert_bias;
        if self.n_group > 1 {
            let per = self.num_experts / self.n_group;
            let grouped = sel.view([t, self.n_group, per]);
            let group_scores = grouped.topk(2, -1, true, true).0.sum_dim_intlist(-1, false, Kind::Float);
            let (_, group_idx) = group_scores.topk(self.topk_group, -1, true, false);
            let keep = Tensor::zeros([t, self.n_group], (Kind::Float, s.device())).scatter_value(1, &group_idx, 1.0);
            let keep = keep.unsqueeze(-1).expand([t, self.n_group, per], false).reshape([t, self.num_experts]);
            sel = sel.masked_fill(&keep.eq(0.0), f64::NEG_INFINITY);
        }
        let (_, idx) = sel.topk(self.top_k, -1, true, true);
        let mut w = s.gather(1, &idx, false);
        if self.top_k > 1 {
            w = &w / (w.sum_dim_intlist(-1, true, Kind::Float) + 1e-20);
        }
        (idx, w * self.routed_scaling_factor)
    }
}

impl Moe {
    pub(crate) fn new(w: &mut Weights, p: &str, c: &Config) -> Result<Moe> {
        let (e, h, i) = (c.num_experts, c.hidden_size, c.moe_intermediate_size);
        let gate = w.get(&format!("{p}.gate.weight"), &[e, h], Role::Matrix)?;
        let expert_bias = w.get(&format!("{p}.gate.expert_bias"), &[e], Role::Buffer)?;
        let experts = format!("{p}.experts");
        let gate_proj = w.experts(&experts, "gate_proj", [e, i, h])?;
        let up_proj = w.experts(&experts, "up_proj", [e, i, h])?;
        let down_proj = w.experts(&experts, "down_proj", [e, h, i])?;
        let shared = if c.num_shared_experts > 0 {
            Some(Mlp::new(w, &format!("{p}.shared_experts"), h, i * c.num_shared_experts)?)
        } else {
            None
        };
        Ok(Moe { gate, expert_bias, gate_proj, up_proj, down_proj, shared, router: Router::from_config(c), fp8_matmul: ExpertMatmul::Dequantize, trace: Default::default() })
    }

    /// The fused routed experts' gate, up and down weights.
    pub(crate) fn expert_weights(&self) -> [&ExpertWeights; 3] {
        [&self.gate_proj, &self.up_proj, &self.down_proj]
    }

    /// The routed experts' projection `gate_proj`, `up_proj` or `down_proj`, to change in place.
    pub(crate) fn expert_weights_mut(&mut self, proj: &str) -> Option<&mut ExpertWeights> {
        match proj {
            "gate_proj" => Some(&mut self.gate_proj),
            "up_proj" => Some(&mut self.up_proj),
            "down_proj" => Some(&mut self.down_proj),
            _ => None,
        }
    }

    pub(crate) fn shared(&self) -> Option<&Mlp> {
        self.shared.as_ref()
    }

    pub(crate) fn set_router(&mut self, router: Router) {
        self.router = router;
    }

    /// Starts (`on`) or ends recording the chosen experts; returns what was recorded.
    pub(crate) fn trace(&self, on: bool) -> Vec<Tensor> {
        let mut t = self.trace.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::replace(&mut *t, on.then(Vec::new)).unwrap_or_default()
    }

    /// `x`: `[B, L, H]` -> `[B, L, H]`, and the number of tokens routed to each expert. `groups`: the routing
    /// groups of the L columns (block routing; ignored by group-limited routing). `lora`: the layer's adapters.
    pub(crate) fn forward_counted(&self, x: &Tensor, groups: Option<&RoutingGroups>, lora: Option<(&LayerLora, f64)>) -> (Tensor, Vec<i64>) {
        let size = x.size();
        let h = size[2];
        let flat = x.reshape([-1, h]);
        let logits = flat.to_kind(Kind::Float).linear(&self.gate.to_kind(Kind::Float), None::<&Tensor>);
        let (idx, w) = match (self.router.capacity, groups) {
            (Some(_), Some(g)) => {
                let (idx, w) = self.router.route_blocks(&logits.sigmoid().view([size[0], size[1], -1]), &self.expert_bias, g);
                (idx.reshape([-1, self.router.top_k]), w.reshape([-1, self.router.top_k]))
            }
            (Some(_), None) => panic!("a block-routed MoE layer needs the forward's routing groups"),
            (None, _) => self.router.route(&logits.sigmoid(), &self.expert_bias),
        };
        if let Some(t) = self.trace.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            t.push(idx.view([size[0], size[1], -1]).shallow_clone());
        }
        let (routed, counts) = self.dispatch(&flat, &idx, &w, lora.map(|(l, s)| (&l.ffn, s)));
        let routed = routed.to_kind(x.kind());
        let out = match &self.shared {
            Some(m) => routed + m.forward(&flat, lora.and_then(|(l, s)| l.shared.as_ref().map(|sh| (sh, s)))),
            None => routed,
        };
        (out.view(size.as_slice()), counts)
    }

    /// `expert_bias += rate * sign(mean(counts) - counts)`, in place (see `Model::balance_experts`).
    pub(crate) fn balance(&self, counts: &[i64], rate: f64) {
        let mean = counts.iter().sum::<i64>() as f64 / counts.len().max(1) as f64;
        let step: Vec<f32> = counts
            .iter()
            .map(|&n| match (n as f64).partial_cmp(&mean) {
                Some(std::cmp::Ordering::Less) => rate as f32,
                Some(std::cmp::Ordering::Greater) => -rate as f32,
                _ => 0.0,
            })
            .collect();
        let step = Tensor::from_slice(&step).to_device(self.expert_bias.device());
        tch::no_grad(|| {
            let mut b = self.expert_bias.shallow_clone();
            let _ = b.g_add_(&step);
        });
    }

    /// Sum over chosen experts of `w * expert(x)`, in fp32. Assignments are sorted by expert so each active
    /// expert runs once on all its tokens.
    fn dispatch(&self, x: &Tensor, idx: &Tensor, w: &Tensor, lora: Option<(&FfnLora, f64)>) -> (Tensor, Vec<i64>) {
        let (t, k) = (idx.size()[0], idx.size()[1]);
        let flat_idx = idx.reshape([-1]);
        let order = flat_idx.argsort_stable(true, 0, false);
        let counts = Vec::<i64>::try_from(&flat_idx.bincount(None::<Tensor>, self.router.num_experts)).expect("int64 counts");
        let tokens = order.floor_divide_scalar(k);
        let weights = w.reshape([-1]).index_select(0, &order);
        let mut out = Tensor::zeros([t, x.size()[1]], (Kind::Float, x.device()));
        let mut start = 0;
        for (e, &n) in counts.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let tok = tokens.narrow(0, start, n);
            let xe = x.index_select(0, &tok);
            let e = e as i64;
            let ad = lora.map(|(l, s)| (l.expert(e), s));
            let ad = ad.as_ref().map(|(l, s)| (l, *s));
            let fp8 = self.fp8_matmul;
            let (gate, up, down) = (&self.gate_proj, &self.up_proj, &self.down_proj);
            let ye = swiglu_with(&xe, &|x| ExpertWeights::linear_pair(e, x, [gate, up], fp8), &|h| down.linear(e, h, fp8), ad);
            out = out.index_add(0, &tok, &(ye.to_kind(Kind::Float) * weights.narrow(0, start, n).unsqueeze(1)));
            start += n;
        }
        (out, counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(n_group: i64, topk_group: i64, top_k: i64) -> Router {
        Router { num_experts: 8, top_k, n_group, topk_group, routed_scaling_factor: 2.5, capacity: None }
    }

    fn ids(t: &Tensor) -> Vec<i64> {
        let mut v = Vec::<i64>::try_from(&t.reshape([-1])).unwrap();
        v.sort();
        v
    }

    #[test]
    fn unbiased_weights_renormalised_and_scaled() {
        let s = Tensor::from_slice(&[0.9f32, 0.1, 0.8, 0.2, 0.3, 0.4, 0.5, 0.6]).view([1, 8]);
        let (idx, w) = router(1, 1, 2).route(&s, &Tensor::zeros([8], (Kind::Float, tch::Device::Cpu)));
        assert_eq!(ids(&idx), vec![0, 2]);
        let w = Vec::<f32>::try_from(&w.reshape([-1])).unwrap();
        // 0.9 / 1.7 * 2.5 and 0.8 / 1.7 * 2.5
        assert!((w[0] - 0.9 / 1.7 * 2.5).abs() < 1e-6 && (w[1] - 0.8 / 1.7 * 2.5).abs() < 1e-6, "{w:?}");
    }

    #[test]
    fn negative_bias_changes_selection_not_weights() {
        let s = Tensor::from_slice(&[0.9f32, 0.1, 0.8, 0.2, 0.3, 0.4, 0.5, 0.6]).view([1, 8]);
        let bias = Tensor::from_slice(&[-1.0f32, 0., 0., 0., 0., 0., 0., 0.]);
        let (idx, w) = router(1, 1, 2).route(&s, &bias);
        assert_eq!(ids(&idx), vec![2, 7]); // expert 0 pushed below expert 7 (0.6)
        let w = Vec::<f32>::try_from(&w.reshape([-1])).unwrap();
        // weights use the unbiased scores 0.8 and 0.6
        assert!((w[0] - 0.8 / 1.4 * 2.5).abs() < 1e-6 && (w[1] - 0.6 / 1.4 * 2.5).abs() < 1e-6, "{w:?}");
    }

    #[test]
    fn dropped_groups_are_minus_infinity_even_with_negative_bias() {
        // Two groups of four: group 0 = experts 0..4, group 1 = 4..8. Group 1 wins on its top-2 sum
        // (0.7 + 0.6 > 0.95 + 0.05). With every bias at -5, a 0-masked (not -inf) dropped group would still
        // beat the kept experts' scores; -inf keeps it out.
        let s = Tensor::from_slice(&[0.95f32, 0.05, 0.01, 0.02, 0.7, 0.6, 0.1, 0.1]).view([1, 8]);
        let bias = Tensor::full([8], -5.0, (Kind::Float, tch::Device::Cpu));
        let (idx, _) = router(2, 1, 2).route(&s, &bias);
        assert_eq!(ids(&idx), vec![4, 5]);
        // Without group limiting the best single expert (0) would have been chosen.
        let (idx, _) = router(1, 1, 2).route(&s, &bias);
        assert_eq!(ids(&idx), vec![0, 4]);
    }

    #[test]
    fn group_score_is_top2_sum_not_max() {
        // Group 0 holds the single best expert (0.99) but group 1 has the better top-2 sum (0.8 + 0.8).
        let s = Tensor::from_slice(&[0.99f32, 0.1, 0.1, 0.1, 0.8, 0.8, 0.1, 0.1]).view([1, 8]);
        let (idx, _) = router(2, 1, 2).route(&s, &Tensor::zeros([8], (Kind::Float, tch::Device::Cpu)));
        assert_eq!(ids(&idx), vec![4, 5]);
    }

    #[test]
    fn ties_resolve_like_torch_topk() {
        // All scores equal: selection must still pick exactly top_k distinct experts with equal weights.
        let s = Tensor::full([3, 8], 0.5, (Kind::Float, tch::Device::Cpu));
        let (idx, w) = router(2, 1, 2).route(&s, &Tensor::zeros([8], (Kind::Float, tch::Device::Cpu)));
        for row in 0..3 {
            let r = Vec::<i64>::try_from(&idx.get(row)).unwrap();
            assert_ne!(r[0], r[1]);
            assert_eq!(r[0] / 4, r[1] / 4, "both from the one kept group");
        }
        let w = Vec::<f32>::try_from(&w.reshape([-1])).unwrap();
        assert!(w.iter().all(|x| (x - 1.25).abs() < 1e-6), "{w:?}");
    }

    #[test]
    fn single_expert_is_not_renormalised() {
        let s = Tensor::from_slice(&[0.2f32, 0.4, 0.1, 0.3, 0.0, 0.0, 0.0, 0.0]).view([1, 8]);
        let (idx, w) = router(1, 1, 1).route(&s, &Tensor::zeros([8], (Kind::Float, tch::Device::Cpu)));
        assert_eq!(ids(&idx), vec![1]);
        assert!((w.double_value(&[0, 0]) - 0.4 * 2.5).abs() < 1e-6);
    }

    // Block routing. Six experts, pool C = 3, routing groups of 2 positions.
    fn block_router(top_k: i64) -> Router {
        Router { num_experts: 6, top_k, n_group: 1, topk_group: 1, routed_scaling_factor: 2.5, capacity: Some(3) }
    }

    fn scores(rows: &[[f32; 6]]) -> Tensor {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        Tensor::from_slice(&flat).view([1, rows.len() as i64, 6])
    }

    fn no_bias() -> Tensor {
        Tensor::zeros([6], (Kind::Float, tch::Device::Cpu))
    }

    fn rows_i(t: &Tensor) -> Vec<Vec<i64>> {
        (0..t.size()[1]).map(|r| Vec::<i64>::try_from(&t.get(0).get(r)).unwrap()).collect()
    }

    fn rows_f(t: &Tensor) -> Vec<Vec<f32>> {
        (0..t.size()[1]).map(|r| Vec::<f32>::try_from(&t.get(0).get(r)).unwrap()).collect()
    }

    fn close(got: &[Vec<f32>], want: &[&[f32]]) {
        for (g, w) in got.iter().zip(want) {
            assert!(g.iter().zip(w.iter()).all(|(a, b)| (a - b).abs() < 1e-6), "{got:?} != {want:?}");
        }
    }

    const ROWS: [[f32; 6]; 3] = [
        [0.9, 0.1, 0.2, 0.3, 0.4, 0.5],
        [0.1, 0.8, 0.2, 0.3, 0.35, 0.1],
        [0.3, 0.2, 0.6, 0.1, 0.7, 0.4],
    ];

    #[test]
    fn block_pool_then_per_token_top_k_hand_checked() {
        // Group 0 = rows 0-1: column max [0.9, 0.8, 0.2, 0.3, 0.4, 0.5], pool = {0, 1, 5}.
        //   row 0 in the pool: 0.9, 0.1, 0.5 -> experts 0, 5; weights 0.9/1.4*2.5, 0.5/1.4*2.5.
        //   row 1 in the pool: 0.1, 0.8, 0.1 -> expert 1, then 0 and 5 tie at 0.1 and the lower id (0) wins.
        //   Unpooled, row 1 would have taken expert 4 (0.35): the pool is what keeps it out.
        // Group 1 = row 2 alone (a short final group): pool = its own top 3 {4, 2, 5}; experts 4, 2. Expert 0
        //   (0.9 in group 0) plays no part: groups do not share pools.
        let groups = RoutingGroups::aligned(3, 2, tch::Device::Cpu);
        let (idx, w) = block_router(2).route_blocks(&scores(&ROWS), &no_bias(), &groups);
        assert_eq!(rows_i(&idx), vec![vec![0, 5], vec![1, 0], vec![4, 2]]);
        close(&rows_f(&w), &[&[0.9 / 1.4 * 2.5, 0.5 / 1.4 * 2.5], &[0.8 / 0.9 * 2.5, 0.1 / 0.9 * 2.5], &[0.7 / 1.3 * 2.5, 0.6 / 1.3 * 2.5]]);
    }

    #[test]
    fn block_ties_go_to_the_lower_expert_id() {
        // All scores equal: the pool is {0, 1, 2} and every token takes experts 0 and 1, weights 2.5/2.
        let s = Tensor::full([1, 4, 6], 0.5, (Kind::Float, tch::Device::Cpu));
        let (idx, w) = block_router(2).route_blocks(&s, &no_bias(), &RoutingGroups::aligned(4, 2, tch::Device::Cpu));
        assert_eq!(rows_i(&idx), vec![vec![0, 1]; 4]);
        close(&rows_f(&w), &[&[1.25f32, 1.25][..]; 4]);
    }

    #[test]
    fn block_bias_selects_but_never_weights() {
        // Row 2 alone, bias -1 on expert 4: selection scores [0.3, 0.2, 0.6, 0.1, -0.3, 0.4], pool {2, 5, 0},
        // experts 2 and 5; weights from the unbiased 0.6 and 0.4: 0.6/1.0*2.5 and 0.4/1.0*2.5.
        let bias = Tensor::from_slice(&[0f32, 0., 0., 0., -1., 0.]);
        let (idx, w) = block_router(2).route_blocks(&scores(&ROWS[2..]), &bias, &RoutingGroups::aligned(1, 2, tch::Device::Cpu));
        assert_eq!(rows_i(&idx), vec![vec![2, 5]]);
        close(&rows_f(&w), &[&[1.5, 1.0]]);
    }

    #[test]
    fn block_single_expert_weight_is_not_divided() {
        // k = 1: row 2 takes expert 4 with weight 0.7 * 2.5 (no division by the sum).
        let (idx, w) = block_router(1).route_blocks(&scores(&ROWS[2..]), &no_bias(), &RoutingGroups::aligned(1, 2, tch::Device::Cpu));
        assert_eq!(rows_i(&idx), vec![vec![4]]);
        close(&rows_f(&w), &[&[1.75]]);
    }

    #[test]
    fn block_batch_rows_never_share_a_pool() {
        // Row 0 of the batch is the hand-checked group 0; row 1 has large scores on experts 3, 4, 5 that would
        // take over a shared pool. Row 0's result must be the one computed alone.
        let groups = RoutingGroups::aligned(2, 2, tch::Device::Cpu);
        let alone = block_router(2).route_blocks(&scores(&ROWS[..2]), &no_bias(), &groups);
        let other = scores(&[[0.1, 0.1, 0.1, 0.99, 0.98, 0.97], [0.1, 0.1, 0.1, 0.99, 0.98, 0.97]]);
        let batch = Tensor::cat(&[scores(&ROWS[..2]), other], 0);
        let (idx, w) = block_router(2).route_blocks(&batch, &no_bias(), &groups);
        assert_eq!(Vec::<i64>::try_from(&idx.get(0).reshape([-1])).unwrap(), vec![0, 5, 1, 0]);
        assert!(idx.get(0).equal(&alone.0.get(0)) && w.get(0).equal(&alone.1.get(0)));
        assert_eq!(Vec::<i64>::try_from(&idx.get(1).reshape([-1])).unwrap(), vec![3, 4, 3, 4]);
    }

    #[test]
    fn groups_follow_canvas_positions() {
        let of = |g: &RoutingGroups| (Vec::<i64>::try_from(&g.of).unwrap(), g.count);
        let padded = |g: &RoutingGroups| Vec::<i64>::try_from(&g.padded).unwrap();
        // The composite layout with routing groups of 4: noisy positions 8..14 (a short group 12..14), then
        // clean positions 0..8. The jump back to 0 starts a new group even though 0 follows 13 in the input.
        let pos: Vec<i64> = (8..14).chain(0..8).collect();
        let g = RoutingGroups::from_positions(&pos, 4, tch::Device::Cpu).unwrap();
        assert_eq!(of(&g), (vec![0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3], 4));
        // Column 14 is the -inf padding row.
        assert_eq!(padded(&g), vec![0, 1, 2, 3, 4, 5, 14, 14, 6, 7, 8, 9, 10, 11, 12, 13]);
        let g = RoutingGroups::aligned(5, 2, tch::Device::Cpu);
        assert_eq!((of(&g), padded(&g)), ((vec![0, 0, 1, 1, 2], 3), vec![0, 1, 2, 3, 4, 5]));
        let e = RoutingGroups::from_positions(&[2, 3, 4], 4, tch::Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("routing-group boundary"), "{e}");
    }
}
