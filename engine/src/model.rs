//! The LLaDA2.x MoE transformer (`model_type: "llada2_moe"`, HF class `LLaDA2MoeModelLM`).
//!
//! Reference: the Hugging Face remote code `modeling_llada2_moe.py` shipped with inclusionAI/LLaDA2.x
//! checkpoints; the facts it encodes are in shared/reference/llada2.md section 1. Top-down: norms, rotary,
//! attention (with the block-causal mask and the KV cache), dense MLP, decoder layer, model. The MoE block
//! lives in `moe.rs`.
//!
//! Departures from the reference, all numerically neutral:
//! 1. Attention goes through `scaled_dot_product_attention` with a boolean block-causal mask (the reference
//!    builds an additive mask and softmaxes in fp32; SDPA's CPU/CUDA kernels accumulate in fp32 too).
//! 2. The KV cache holds only finished blocks. With a block-causal mask their keys and values never depend on
//!    later positions, so a cached forward equals a full recompute (tested at 1e-5 in f32).
//! 3. The routed experts of a layer are stored fused, `[E, I, H]` / `[E, H, I]` (the dFactory layout); the
//!    per-expert layout of released checkpoints is stacked into it at load time.

use tch::{nn, Device, Kind, Tensor};

use crate::config::Config;
use crate::device::DType;
use crate::error::{Error, Result};
use crate::lora::{Adapters, FfnLora, LayerLora};
use crate::moe::{Moe, RoutingGroups};
use crate::fp8_matmul::{ExpertMatmul, Fp8MatmulChoice, MatmulPath};
use crate::quant::{ExpertWeights, QTensor, Quantization};
use crate::weights::{Role, WeightSource};

/// How queries see keys. The mask is cut into blocks of `block_length` from position 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockMask {
    pub block_length: i64,
    pub kind: MaskKind,
    /// Multi-block editing: positions from here on see each other in both directions (a window of blocks
    /// treated as one), so earlier blocks of the window can be revised in the light of later ones. Positions
    /// before it stay block-causal, which keeps their cached K/V exact. `None` everywhere else.
    pub bidirectional_from: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MaskKind {
    /// A query in block i sees keys in blocks <= i (what training, dInfer and SGLang use).
    BlockCausal,
    /// The HF remote code's `generate`: its 0/1 block pattern is ADDED to the scores (+1 allowed, +0 "forbidden"),
    /// so earlier blocks do see later positions, with relative weight e^-1. No KV cache is exact under it.
    HfAdditive,
}

impl BlockMask {
    pub fn block_causal(block_length: i64) -> BlockMask {
        BlockMask { block_length, kind: MaskKind::BlockCausal, bidirectional_from: None }
    }
}

/// Memory requests this small pass [`Model::check_memory`] without reading the device's figures.
const ALWAYS_FITS: u64 = 64 << 20;

/// Keys and values of finished blocks, per layer `[batch, kv_heads, len, head_dim]` after QK-norm and RoPE.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<(Tensor, Tensor)>,
    len: i64,
}

impl KvCache {
    pub fn new() -> KvCache {
        KvCache::default()
    }

    /// Number of cached positions (always a whole number of blocks).
    pub fn len(&self) -> i64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Drops every position from `len` on (to rewind to an earlier block).
    pub fn truncate(&mut self, len: i64) {
        if len >= self.len {
            return;
        }
        if len <= 0 {
            self.layers.clear();
        } else {
            for (k, v) in &mut self.layers {
                *k = k.narrow(2, 0, len);
                *v = v.narrow(2, 0, len);
            }
        }
        self.len = len.max(0);
    }

    /// Bytes held by the cached tensors.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|(k, v)| tensor_bytes(k) + tensor_bytes(v)).sum()
    }

    /// An independent copy (for forking a decoder).
    pub fn deep_clone(&self) -> KvCache {
        KvCache { layers: self.layers.iter().map(|(k, v)| (k.copy(), v.copy())).collect(), len: self.len }
    }
}

pub(crate) fn tensor_bytes(t: &Tensor) -> usize {
    t.numel() * t.kind().elt_size_in_bytes()
}

/// RMSNorm in fp32, cast back, times weight (the reference's order).
#[derive(Debug)]
pub(crate) struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub(crate) fn new(w: &mut Weights, name: &str, dim: i64, eps: f64) -> Result<RmsNorm> {
        Ok(RmsNorm { weight: w.get(name, &[dim], Role::Norm)?, eps })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Tensor {
        rms_norm(x, &self.weight, self.eps)
    }
}

pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Tensor {
    let xf = x.to_kind(Kind::Float);
    let var = xf.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
    (xf * (var + eps).rsqrt()).to_kind(x.kind()) * weight
}

/// cos and sin for positions `start..start+len`, `[len, rotary_dim]`, computed in fp32 then cast to `kind`.
pub fn rope_tables(rotary_dim: i64, theta: f64, start: i64, len: i64, kind: Kind, device: Device) -> (Tensor, Tensor) {
    let opts = (Kind::Float, device);
    let exponents = Tensor::arange_start_step(0, rotary_dim, 2, opts) / rotary_dim as f64;
    let inv_freq = Tensor::from(theta).to_device(device).pow(&exponents).reciprocal();
    let pos = Tensor::arange_start(start, start + len, opts);
    let freqs = pos.unsqueeze(1) * inv_freq.unsqueeze(0);
    let emb = Tensor::cat(&[&freqs, &freqs], -1);
    (emb.cos().to_kind(kind), emb.sin().to_kind(kind))
}

/// NeoX rotate-half RoPE on the first `cos.size(-1)` dims of the last axis; the rest pass through.
/// `x` is `[.., len, head_dim]`, `cos`/`sin` are `[len, rotary_dim]`.
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let rd = cos.size()[1];
    let hd = *x.size().last().expect("rank >= 1");
    let rot = x.narrow(-1, 0, rd);
    let half = rd / 2;
    let rotated = Tensor::cat(&[-rot.narrow(-1, half, half), rot.narrow(-1, 0, half)], -1);
    let out = &rot * cos + rotated * sin;
    if rd == hd {
        out
    } else {
        Tensor::cat(&[out, x.narrow(-1, rd, hd - rd)], -1)
    }
}

/// `allowed[q, k]` for queries at `q_start..q_start+q_len` and keys `0..k_len`: block(k) <= block(q).
pub fn block_causal_mask(q_start: i64, q_len: i64, k_len: i64, block_length: i64, device: Device) -> Tensor {
    let opts = (Kind::Int64, device);
    let qb = Tensor::arange_start(q_start, q_start + q_len, opts).floor_divide_scalar(block_length);
    let kb = Tensor::arange(k_len, opts).floor_divide_scalar(block_length);
    kb.unsqueeze(0).le_tensor(&qb.unsqueeze(1))
}

#[derive(Debug)]
struct Attention {
    qkv: Tensor,
    qkv_bias: Option<Tensor>,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    dense: Tensor,
    dense_bias: Option<Tensor>,
    n_heads: i64,
    n_kv: i64,
    head_dim: i64,
}

impl Attention {
    fn new(w: &mut Weights, p: &str, c: &Config) -> Result<Attention> {
        let (h, kv, d) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let qkv_rows = (h + 2 * kv) * d;
        let norm = |w: &mut Weights, n: &str| RmsNorm::new(w, &format!("{p}.{n}.weight"), d, c.rms_norm_eps);
        Ok(Attention {
            qkv: w.get(&format!("{p}.query_key_value.weight"), &[qkv_rows, c.hidden_size], Role::Matrix)?,
            qkv_bias: c
                .use_qkv_bias
                .then(|| w.get(&format!("{p}.query_key_value.bias"), &[qkv_rows], Role::Bias))
                .transpose()?,
            q_norm: c.use_qk_norm.then(|| norm(w, "query_layernorm")).transpose()?,
            k_norm: c.use_qk_norm.then(|| norm(w, "key_layernorm")).transpose()?,
            dense: w.get(&format!("{p}.dense.weight"), &[c.hidden_size, h * d], Role::Matrix)?,
            dense_bias: c.use_bias.then(|| w.get(&format!("{p}.dense.bias"), &[c.hidden_size], Role::Bias)).transpose()?,
            n_heads: h,
            n_kv: kv,
            head_dim: d,
        })
    }

    /// `x`: `[B, L, H]`. Appends the K/V of the first `commit` positions to `cache` (a `(k, v)` slot).
    fn forward(&self, x: &Tensor, rope: &(Tensor, Tensor), mask: &AttnBias, cache: &mut Option<(Tensor, Tensor)>, commit: i64, lora: Option<(&LayerLora, f64)>) -> Tensor {
        let (b, l) = (x.size()[0], x.size()[1]);
        let mut qkv = x.linear(&self.qkv, self.qkv_bias.as_ref());
        if let Some((ad, s)) = lora {
            qkv = qkv + ad.qkv.delta(x, s);
        }
        let qkv = qkv.view([b, l, self.n_heads + 2 * self.n_kv, self.head_dim]);
        let parts = qkv.split_with_sizes([self.n_heads, self.n_kv, self.n_kv], 2);
        let (mut q, mut k) = (parts[0].transpose(1, 2), parts[1].transpose(1, 2));
        let v = parts[2].transpose(1, 2);
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = qn.forward(&q);
            k = kn.forward(&k);
        }
        let q = apply_rope(&q, &rope.0, &rope.1);
        let k = apply_rope(&k, &rope.0, &rope.1);
        let (keys, values) = match cache.as_ref() {
            Some((ck, cv)) => (Tensor::cat(&[ck, &k], 2), Tensor::cat(&[cv, &v], 2)),
            None => (k.shallow_clone(), v.shallow_clone()),
        };
        if commit > 0 {
            let cut = keys.size()[2] - l + commit;
            *cache = Some((keys.narrow(2, 0, cut), values.narrow(2, 0, cut)));
        }
        let scale = (self.head_dim as f64).powf(-0.5);
        let out = match mask {
            AttnBias::None => Tensor::scaled_dot_product_attention(&q, &keys, &values, None::<Tensor>, 0.0, false, scale, true),
            AttnBias::Bool(m) | AttnBias::Additive(m) => {
                Tensor::scaled_dot_product_attention(&q, &keys, &values, Some(m), 0.0, false, scale, true)
            }
        };
        let out = out.transpose(1, 2).reshape([b, l, self.n_heads * self.head_dim]);
        let y = out.linear(&self.dense, self.dense_bias.as_ref());
        match lora {
            Some((ad, s)) => y + ad.dense.delta(&out, s),
            None => y,
        }
    }
}

/// The mask handed to SDPA: none when every query sees every key (the common decoding case), a boolean
/// mask (true = attend), or the HF-compatible additive float mask.
enum AttnBias {
    None,
    Bool(Tensor),
    Additive(Tensor),
}

/// SwiGLU: `down(silu(gate x) * up x)`. Used for dense layers and shared experts.
#[derive(Debug)]
pub(crate) struct Mlp {
    pub(crate) gate: Tensor,
    pub(crate) up: Tensor,
    pub(crate) down: Tensor,
}

impl Mlp {
    pub(crate) fn new(w: &mut Weights, p: &str, hidden: i64, inter: i64) -> Result<Mlp> {
        Ok(Mlp {
            gate: w.get(&format!("{p}.gate_proj.weight"), &[inter, hidden], Role::Matrix)?,
            up: w.get(&format!("{p}.up_proj.weight"), &[inter, hidden], Role::Matrix)?,
            down: w.get(&format!("{p}.down_proj.weight"), &[hidden, inter], Role::Matrix)?,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor, lora: Option<(&FfnLora, f64)>) -> Tensor {
        swiglu(x, &self.gate, &self.up, &self.down, lora)
    }
}

/// SwiGLU with optional LoRA adapters on its three projections.
pub(crate) fn swiglu(x: &Tensor, gate: &Tensor, up: &Tensor, down: &Tensor, lora: Option<(&FfnLora, f64)>) -> Tensor {
    let none = None::<&Tensor>;
    swiglu_with(x, &|x| [x.linear(gate, none), x.linear(up, none)], &|h| h.linear(down, none), lora)
}

/// SwiGLU with its projections given as functions, for weights that are not plain tensors (quantized experts):
/// `gate_up(x)` is `[x @ W_gate^T, x @ W_up^T]` (one function, so fp8 quantizes `x` once for both), `down(h)` is
/// `h @ W_down^T`.
pub(crate) fn swiglu_with(
    x: &Tensor,
    gate_up: &dyn Fn(&Tensor) -> [Tensor; 2],
    down: &dyn Fn(&Tensor) -> Tensor,
    lora: Option<(&FfnLora, f64)>,
) -> Tensor {
    let [g, u] = gate_up(x);
    match lora {
        None => down(&(g.silu() * u)),
        Some((l, s)) => {
            let h = (g + l.gate.delta(x, s)).silu() * (u + l.up.delta(x, s));
            down(&h) + l.down.delta(&h, s)
        }
    }
}

#[derive(Debug)]
enum Ffn {
    Dense(Mlp),
    Moe(Moe),
}

#[derive(Debug)]
struct Layer {
    input_norm: RmsNorm,
    attention: Attention,
    post_norm: RmsNorm,
    ffn: Ffn,
}

impl Layer {
    /// One pre-norm decoder layer; `loads` collects the routed experts' token counts of an MoE layer;
    /// `groups`: the forward's routing groups on a block-routed model.
    fn forward(
        &self,
        x: &Tensor,
        rope: &(Tensor, Tensor),
        bias: &AttnBias,
        groups: Option<&RoutingGroups>,
        slot: &mut Option<(Tensor, Tensor)>,
        commit: i64,
        loads: Option<&mut Vec<Vec<i64>>>,
        lora: Option<(&LayerLora, f64)>,
    ) -> Tensor {
        let h = x + self.attention.forward(&self.input_norm.forward(x), rope, bias, slot, commit, lora);
        let y = self.post_norm.forward(&h);
        let f = match &self.ffn {
            Ffn::Dense(m) => m.forward(&y, lora.map(|(l, s)| (&l.ffn, s))),
            Ffn::Moe(m) => {
                let (out, counts) = m.forward_counted(&y, groups, lora);
                if let Some(loads) = loads {
                    loads.push(counts);
                }
                out
            }
        };
        h + f
    }
}

/// The weights being placed: a source (checkpoint or random init) and the VarStore they are registered in,
/// under their official names.
pub(crate) struct Weights<'a> {
    pub(crate) source: &'a mut dyn WeightSource,
    pub(crate) vs: &'a nn::VarStore,
    pub(crate) quantize: Option<Quantization>,
}

impl Weights<'_> {
    pub(crate) fn get(&mut self, name: &str, shape: &[i64], role: Role) -> Result<Tensor> {
        let t = self.source.tensor(name, shape, role)?;
        Ok(self.register(name, t, role))
    }

    /// Routed experts, quantized when the config asks; quantized experts are not VarStore variables (nothing
    /// trains them).
    pub(crate) fn experts(&mut self, prefix: &str, proj: &str, shape: [i64; 3]) -> Result<ExpertWeights> {
        if let Some(q) = self.quantize {
            return Ok(ExpertWeights::Quantized(self.source.experts_quantized(prefix, proj, shape, q)?));
        }
        let t = self.source.experts(prefix, proj, shape)?;
        Ok(ExpertWeights::Full(self.register(&format!("{prefix}.{proj}"), t, Role::Matrix)))
    }

    fn register(&self, name: &str, t: Tensor, role: Role) -> Tensor {
        let (path, leaf) = name.rsplit_once('.').unwrap_or(("", name));
        let mut p = self.vs.root();
        for part in path.split('.').filter(|s| !s.is_empty()) {
            p = p / part;
        }
        p.add(leaf, t, role != Role::Buffer)
    }
}

/// A loaded LLaDA2 MoE model: weights resident on one device in one dtype.
pub struct Model {
    config: Config,
    vs: nn::VarStore,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Tensor,
    dtype: DType,
    lora: Option<Adapters>,
    /// How fp8 routed experts multiply, and why; `None` unless the experts are held in fp8.
    fp8_matmul: Option<MatmulPath>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("config", &self.config).field("dtype", &self.dtype).finish_non_exhaustive()
    }
}

impl Model {
    /// Builds the model, asking `source` for every tensor by its official name and shape.
    pub fn build(config: &Config, source: &mut dyn WeightSource, device: Device, dtype: DType) -> Result<Model> {
        // The weights alone, from the shapes, before any of them is allocated.
        let needed = crate::memory::weight_bytes(config, dtype.size_bytes() as i64);
        let quant = config.quantization.map(|q| format!(" with {q} routed experts")).unwrap_or_default();
        crate::memory::check(
            format!("a model of {:.2e} parameters in {dtype}{quant}", config.approx_parameters()),
            needed,
            crate::memory::Budget::of(device, || 0)?,
            "check config.json's sizes, or load it in a smaller dtype or on another device",
        )?;
        let vs = nn::VarStore::new(device);
        let c = config;
        let mut w = Weights { source, vs: &vs, quantize: c.quantization };
        let embed = w.get("model.word_embeddings.weight", &[c.vocab_size, c.hidden_size], Role::Matrix)?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers as usize);
        for i in 0..c.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let input_norm = RmsNorm::new(&mut w, &format!("{p}.input_layernorm.weight"), c.hidden_size, c.rms_norm_eps)?;
            let attention = Attention::new(&mut w, &format!("{p}.attention"), c)?;
            let post_norm =
                RmsNorm::new(&mut w, &format!("{p}.post_attention_layernorm.weight"), c.hidden_size, c.rms_norm_eps)?;
            let ffn = if c.is_moe_layer(i) {
                Ffn::Moe(Moe::new(&mut w, &format!("{p}.mlp"), c)?)
            } else {
                Ffn::Dense(Mlp::new(&mut w, &format!("{p}.mlp"), c.hidden_size, c.intermediate_size)?)
            };
            layers.push(Layer { input_norm, attention, post_norm, ffn });
        }
        let norm = RmsNorm::new(&mut w, "model.norm.weight", c.hidden_size, c.rms_norm_eps)?;
        let lm_head = if c.tie_word_embeddings {
            embed.shallow_clone()
        } else {
            w.get("lm_head.weight", &[c.vocab_size, c.hidden_size], Role::Matrix)?
        };
        source.finish()?;
        let mut model = Model { config: c.clone(), vs, embed, layers, norm, lm_head, dtype, lora: None, fp8_matmul: None };
        model.set_fp8_matmul(Fp8MatmulChoice::Auto)?;
        Ok(model)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The parameters under their official names (fused experts as `...mlp.experts.{gate,up,down}_proj`).
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// Number of parameters (expert bias buffers excluded; quantized experts included).
    pub fn num_parameters(&self) -> i64 {
        let quantized: i64 = self.quantized_experts().map(|w| w.size().iter().product::<i64>()).sum();
        self.vs.trainable_variables().iter().map(|t| t.numel() as i64).sum::<i64>() + quantized
    }

    /// How the routed experts are held: `None` in the run dtype, else quantized ([`crate::quant`]).
    pub fn quantization(&self) -> Option<Quantization> {
        self.config.quantization
    }

    /// Bytes of all weights and buffers (quantized experts with their scales).
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes_by_part().iter().map(|p| p.1).sum()
    }

    /// Bytes of the weights by part, in a fixed order: routed experts, attention, dense and shared MLPs,
    /// embeddings and LM head, router, norms.
    pub fn weight_bytes_by_part(&self) -> Vec<(&'static str, usize)> {
        const PARTS: [&str; 6] = ["routed experts", "attention", "dense and shared MLPs", "embeddings and LM head", "router", "norms"];
        let mut bytes = [0usize; 6];
        for (name, t) in self.vs.variables() {
            let part = if name.contains(".mlp.experts.") {
                0
            } else if name.contains("layernorm") || name == "model.norm.weight" {
                5
            } else if name.contains(".attention.") {
                1
            } else if name.contains(".mlp.gate.") {
                4
            } else if name.contains(".mlp.") {
                2
            } else {
                3
            };
            bytes[part] += tensor_bytes(&t);
        }
        bytes[0] += self.quantized_experts().map(ExpertWeights::bytes).sum::<usize>();
        PARTS.into_iter().zip(bytes).collect()
    }

    /// A copy of this model with its routed experts quantized as `format`, for comparing the two: every other
    /// weight is shared with this model (the copy adds only the quantized experts), adapters are merged into
    /// the copy. An error on a model that is quantized already.
    pub fn quantized(&self, format: Quantization) -> Result<Model> {
        if let Some(q) = self.quantization() {
            return Err(Error::invalid("quantize", format, format!("the model's routed experts are already in {q}")));
        }
        if !self.config.has_moe() {
            return Err(Error::invalid("quantize", format, "the model has no routed experts to quantize (a dense model)"));
        }
        let config = Config { quantization: Some(format), ..self.config.clone() };
        let mut source = crate::weights::Shared { tensors: self.merged_variables().into_iter().collect() };
        Model::build(&config, &mut source, self.device(), self.dtype)
    }

    /// How the fp8 routed experts multiply (dequantized, or fp8 on the tensor cores) and why; `None` unless the
    /// experts are held in fp8.
    pub fn fp8_matmul(&self) -> Option<&MatmulPath> {
        self.fp8_matmul.as_ref()
    }

    /// Chooses how fp8 experts multiply ([`crate::fp8_matmul`]). `auto` takes the fast path where its probe
    /// passes on this device and dequantizes elsewhere; `scaled` is an error where the probe fails (the
    /// model keeps its path). Only `auto` is accepted by a model without fp8 experts (it changes nothing).
    pub fn set_fp8_matmul(&mut self, choice: Fp8MatmulChoice) -> Result<()> {
        if self.quantization() != Some(Quantization::Fp8) {
            return match choice {
                Fp8MatmulChoice::Auto => Ok(()),
                Fp8MatmulChoice::Exactly(p) => Err(Error::invalid(
                    "fp8 matmul",
                    p,
                    "the routed experts are not held in fp8: load the model with quantize fp8 first",
                )),
            };
        }
        let path = match choice {
            Fp8MatmulChoice::Auto => crate::fp8_matmul::probe(&self.probe_experts(), self.device()),
            Fp8MatmulChoice::Exactly(ExpertMatmul::Scaled) => match crate::fp8_matmul::probe(&self.probe_experts(), self.device()) {
                p if p.path == ExpertMatmul::Scaled => p,
                p => return Err(Error::invalid("fp8 matmul", "scaled", format!("{}; use dequantize, or emulated to see its arithmetic", p.why))),
            },
            Fp8MatmulChoice::Exactly(ExpertMatmul::Dequantize) => MatmulPath::dequantize("asked for"),
            Fp8MatmulChoice::Exactly(ExpertMatmul::Emulated) => {
                MatmulPath { path: ExpertMatmul::Emulated, why: "asked for: the fast path's fp8 activations, computed in f32".into() }
            }
        };
        for l in &mut self.layers {
            if let Ffn::Moe(m) = &mut l.ffn {
                m.fp8_matmul = path.path;
            }
        }
        self.fp8_matmul = Some(path);
        Ok(())
    }

    /// Expert 0's gate and down projections of the first MoE layer: both shapes an expert multiplies by.
    fn probe_experts(&self) -> Vec<QTensor> {
        let Some((_, m)) = self.moes().next() else { return Vec::new() };
        let [gate, _, down] = m.expert_weights();
        [gate, down].into_iter().filter_map(|w| w.quantized(0)).collect()
    }

    /// The routed experts held quantized (not VarStore variables, so counted apart).
    fn quantized_experts(&self) -> impl Iterator<Item = &ExpertWeights> {
        self.moes().flat_map(|(_, m)| m.expert_weights()).filter(|w| matches!(w, ExpertWeights::Quantized(_)))
    }

    /// The MoE layers with their indices.
    fn moes(&self) -> impl Iterator<Item = (usize, &Moe)> {
        self.layers.iter().enumerate().filter_map(|(i, l)| if let Ffn::Moe(m) = &l.ffn { Some((i, m)) } else { None })
    }

    /// Refuses work estimated at `needed` bytes that the device cannot hold ([`crate::memory`]). Small
    /// requests pass without reading the device's figures, so the check costs nothing in ordinary use.
    pub fn check_memory(&self, what: impl FnOnce() -> String, needed: u64, hint: &str) -> Result<()> {
        if needed <= ALWAYS_FITS {
            return Ok(());
        }
        let budget = crate::memory::Budget::of(self.device(), || self.weight_bytes() as u64)?;
        crate::memory::check(what(), needed, budget, hint)
    }

    /// [`Model::check_memory`] for one forward of `rows` x `queries` positions against `keys` positions.
    /// `grad` (whether gradients are recorded) is asked only when the forward could be large with them.
    fn check_forward_memory(&self, rows: i64, queries: i64, keys: i64, grad: impl FnOnce() -> bool) -> Result<()> {
        let elem = self.dtype.kind().elt_size_in_bytes() as i64;
        let bytes = |grad| crate::memory::forward_bytes(&self.config, rows, queries, keys, elem, grad);
        let grad = bytes(true) > ALWAYS_FITS && grad();
        let needed = bytes(grad);
        self.check_memory(
            || format!("a forward of {rows} x {queries} positions{}", if grad { " with gradients" } else { "" }),
            needed,
            "ask for fewer rows (a smaller count, repeat, batch or group) or a shorter sequence",
        )
    }

    /// Logits (f32, `[B, L - commit, vocab]`) for `ids` (`[B, L]`, int64) placed right after the cached positions.
    ///
    /// Queries see the cache and this input under `mask`. The K/V of the first `commit` positions are appended
    /// to the cache and their logits are not computed (they belong to finished blocks). Because cached blocks
    /// must never depend on later positions, the cache and every commit must end on a block boundary, and the
    /// HF-additive mask (under which nothing is cacheable) works only without a cache.
    pub fn forward(&self, ids: &Tensor, cache: &mut KvCache, commit: i64, mask: BlockMask) -> Result<Tensor> {
        let size = ids.size();
        if size.len() != 2 {
            return Err(Error::invalid("input ids", format!("{size:?}"), "expected a [batch, length] tensor"));
        }
        let (b, l) = (size[0], size[1]);
        let start = cache.len();
        self.check_forward(b, l, start, commit, mask, cache)?;
        self.check_forward_memory(b, l, start + l, || false)?;
        let ids = ids.to_device(self.device()).to_kind(Kind::Int64);
        if l > 0 {
            let (min, max) = (ids.min().int64_value(&[]), ids.max().int64_value(&[]));
            if min < 0 || max >= self.config.vocab_size {
                return Err(Error::invalid(
                    "token id",
                    if min < 0 { min } else { max },
                    format!("ids must be in 0..{}", self.config.vocab_size),
                ));
            }
        }
        tch::no_grad(|| Ok(self.run(&ids, cache, commit, mask)))
    }

    /// Logits (f32, `[B, T, vocab]`) for `ids` (`[B, T]`) at `positions` (`[T]`, int64) under an explicit
    /// attention pattern `allowed` (`[T, T]` bool, true = the query row attends the key column), WITH gradients
    /// and without a cache: training and likelihoods on the composite `[x_t ; x_0]` layout
    /// ([`crate::composite`]). `loads`, when given, receives per MoE layer the number of tokens routed to each
    /// expert (for load balancing).
    pub fn forward_masked(&self, ids: &Tensor, positions: &Tensor, allowed: &Tensor, loads: Option<&mut Vec<Vec<i64>>>) -> Result<Tensor> {
        let size = ids.size();
        let t = *size.last().unwrap_or(&0);
        if size.len() != 2 || t == 0 || size[0] == 0 {
            return Err(Error::invalid("input ids", format!("{size:?}"), "expected a non-empty [batch, length] tensor"));
        }
        if positions.size() != [t] {
            return Err(Error::invalid("positions", format!("{:?}", positions.size()), format!("expected [{t}]")));
        }
        if allowed.size() != [t, t] || allowed.kind() != Kind::Bool {
            return Err(Error::invalid("attention mask", format!("{:?} {:?}", allowed.size(), allowed.kind()), format!("expected [{t}, {t}] bool")));
        }
        let max_pos = positions.max().int64_value(&[]);
        if positions.min().int64_value(&[]) < 0 || max_pos >= self.config.max_position_embeddings {
            return Err(Error::invalid("positions", max_pos, format!("must be in 0..{}", self.config.max_position_embeddings)));
        }
        self.check_forward_memory(size[0], t, t, crate::memory::grad_enabled)?;
        let dev = self.device();
        let kind = self.dtype.kind();
        let c = &self.config;
        let (cos, sin) = rope_tables(c.rotary_dim(), c.rope_theta, 0, max_pos + 1, kind, dev);
        let pos = positions.to_device(dev);
        let rope = (cos.index_select(0, &pos), sin.index_select(0, &pos));
        let bias = AttnBias::Bool(allowed.to_device(dev).view([1, 1, t, t]));
        let groups = match c.block_routing() {
            Some((_, bs)) => {
                let pos = Vec::<i64>::try_from(&positions.to_device(Device::Cpu).to_kind(Kind::Int64))
                    .map_err(|e| Error::invalid("positions", format!("{:?}", positions.kind()), e.to_string()))?;
                Some(RoutingGroups::from_positions(&pos, bs, dev)?)
            }
            None => None,
        };
        let mut x = Tensor::embedding(&self.embed, &ids.to_device(dev), -1, false, false);
        let mut loads = loads;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x, &rope, &bias, groups.as_ref(), &mut None, 0, loads.as_deref_mut(), self.layer_lora(i));
        }
        Ok(self.norm.forward(&x).linear(&self.lm_head, None::<&Tensor>).to_kind(Kind::Float))
    }

    /// Routes every token on its own (LLaDA2.0/2.1 group-limited top-k) with the same weights: the ablation of
    /// block routing. An error on a model that already routes per token.
    pub fn route_per_token(&mut self) -> Result<()> {
        if self.config.block_routing().is_none() {
            return Err(Error::invalid("routing", "token", "the model already routes every token on its own (its config has no expert_capacity / block_size)"));
        }
        self.config.expert_capacity = None;
        self.config.block_size = None;
        let router = crate::moe::Router::from_config(&self.config);
        for l in &mut self.layers {
            if let Ffn::Moe(m) = &mut l.ffn {
                m.set_router(router.clone());
            }
        }
        Ok(())
    }

    /// Per MoE layer, the mean and the largest number of distinct routed experts that the tokens of an
    /// aligned `group` of positions use, over every full group of `ids` (`[B, L]` canvases from position 0, one
    /// block-causal forward with blocks of `group`). Under block routing it is at most `expert_capacity`;
    /// routed per token it shows how many experts a block would touch.
    pub fn experts_per_group(&self, ids: &Tensor, group: i64) -> Result<Vec<(f64, usize)>> {
        let moes: Vec<&Moe> = self.layers.iter().filter_map(|l| if let Ffn::Moe(m) = &l.ffn { Some(m) } else { None }).collect();
        moes.iter().for_each(|m| drop(m.trace(true)));
        let out = tch::no_grad(|| self.forward(ids, &mut KvCache::new(), 0, BlockMask::block_causal(group)));
        let traces: Vec<Vec<Tensor>> = moes.iter().map(|m| m.trace(false)).collect();
        drop(out?);
        let (b, l) = (ids.size()[0], ids.size()[1]);
        let groups = l / group;
        traces
            .into_iter()
            .map(|t| {
                let idx = t.into_iter().next().ok_or_else(|| Error::invalid("routing trace", "empty", "the forward routed nothing"))?;
                let k = idx.size()[2];
                let idx = Vec::<i64>::try_from(idx.to_device(Device::Cpu).flatten(0, -1))?;
                let (mut total, mut most) = (0usize, 0usize);
                for r in 0..b as usize {
                    for g in 0..groups as usize {
                        let mut used: Vec<i64> = (g * group as usize..(g + 1) * group as usize)
                            .flat_map(|p| (0..k as usize).map(move |j| (p, j)))
                            .map(|(p, j)| idx[(r * l as usize + p) * k as usize + j])
                            .collect();
                        used.sort_unstable();
                        used.dedup();
                        total += used.len();
                        most = most.max(used.len());
                    }
                }
                Ok((total as f64 / (b * groups).max(1) as f64, most))
            })
            .collect()
    }

    /// Auxiliary-loss-free load balancing (the tiny-model recipe): per MoE layer,
    /// `expert_bias += rate * sign(mean load - load of the expert)`, with `loads` as [`Model::forward_masked`]
    /// collected them. The bias only steers selection; it is a buffer, not trained by gradient.
    pub fn balance_experts(&self, loads: &[Vec<i64>], rate: f64) {
        let moes = self.layers.iter().filter_map(|l| match &l.ffn {
            Ffn::Moe(m) => Some(m),
            Ffn::Dense(_) => None,
        });
        for (m, counts) in moes.zip(loads) {
            m.balance(counts, rate);
        }
    }

    fn layer_lora(&self, i: usize) -> Option<(&LayerLora, f64)> {
        self.lora.as_ref().map(|a| (&a.layers[i], a.scale()))
    }

    /// The attached LoRA adapters, if any ([`crate::lora`]).
    pub fn lora(&self) -> Option<&Adapters> {
        self.lora.as_ref()
    }

    /// Attaches fresh LoRA adapters of `rank` (scale `alpha / rank`) to every attention and feed-forward
    /// projection; the outputs do not change until they are trained (`B` = 0). Replaces adapters already there.
    pub fn attach_lora(&mut self, rank: i64, alpha: f64, seed: u64) -> Result<()> {
        // Adapters in f32, with their gradients and two optimiser moments when trained: four copies.
        let params = self.lora_parameters(rank);
        self.check_memory(
            || format!("LoRA of rank {rank} ({params} parameters, with gradients and optimiser moments)"),
            (params as u64).saturating_mul(16),
            "use a smaller rank",
        )?;
        let mut b = crate::lora::Builder::new(rank, alpha, seed, self.device())?;
        let mut layers = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let at = &layer.attention;
            let qkv = b.lora(&format!("{p}.attention.query_key_value"), &at.qkv.size());
            let dense = b.lora(&format!("{p}.attention.dense"), &at.dense.size());
            let mut mlp = |name: &str, [gate, up, down]: [Vec<i64>; 3]| FfnLora {
                gate: b.lora(&format!("{name}.gate_proj"), &gate),
                up: b.lora(&format!("{name}.up_proj"), &up),
                down: b.lora(&format!("{name}.down_proj"), &down),
            };
            let sizes = |m: &Mlp| [m.gate.size(), m.up.size(), m.down.size()];
            let (ffn, shared) = match &layer.ffn {
                Ffn::Dense(m) => (mlp(&format!("{p}.mlp"), sizes(m)), None),
                Ffn::Moe(m) => {
                    let experts = mlp(&format!("{p}.mlp.experts"), m.expert_weights().map(ExpertWeights::size));
                    let shared = m.shared().map(|s| mlp(&format!("{p}.mlp.shared_experts"), sizes(s)));
                    (experts, shared)
                }
            };
            layers.push(LayerLora { qkv, dense, ffn, shared });
        }
        self.lora = Some(b.finish(alpha, layers));
        Ok(())
    }

    /// Parameters of LoRA adapters of `rank` on this model ([`Model::attach_lora`]'s projections), from the
    /// shapes: `rank x (in + out)` per projection and per expert.
    pub fn lora_parameters(&self, rank: i64) -> i64 {
        let one = |s: Vec<i64>| {
            let (out, inp) = (s[s.len() - 2], s[s.len() - 1]);
            let lead: i64 = s[..s.len() - 2].iter().product();
            lead.saturating_mul(rank).saturating_mul(out + inp)
        };
        let mut n = 0i64;
        for layer in &self.layers {
            let mut ws = vec![layer.attention.qkv.size(), layer.attention.dense.size()];
            let sizes = |m: &Mlp| [m.gate.size(), m.up.size(), m.down.size()];
            match &layer.ffn {
                Ffn::Dense(m) => ws.extend(sizes(m)),
                Ffn::Moe(m) => {
                    ws.extend(m.expert_weights().map(ExpertWeights::size));
                    ws.extend(m.shared().map(sizes).into_iter().flatten());
                }
            }
            n = ws.into_iter().map(one).fold(n, i64::saturating_add);
        }
        n
    }

    /// Drops the adapters without merging them (the model is the base model again).
    pub fn detach_lora(&mut self) -> Option<Adapters> {
        self.lora.take()
    }

    /// Puts `adapters` back (ones [`Model::detach_lora`] gave), returning those attached now.
    pub fn set_lora(&mut self, adapters: Option<Adapters>) -> Option<Adapters> {
        std::mem::replace(&mut self.lora, adapters)
    }

    /// Folds the adapters into the weights (`W += s B A`, in the weights' dtype; quantized experts are
    /// dequantized, summed and quantized again) and drops them; the outputs are those of the adapted model up
    /// to that rounding. Returns false when no adapters were attached.
    pub fn merge_lora(&mut self) -> bool {
        let Some(ad) = self.lora.take() else { return false };
        let vars = self.vs.variables();
        tch::no_grad(|| {
            for (name, delta) in lora_deltas(&ad) {
                match vars.get(&name) {
                    Some(w) => {
                        let _ = w.shallow_clone().g_add_(&delta.to_kind(w.kind()));
                    }
                    None => {
                        let q = self.quantized_experts_mut(&name).expect("adapters only on the model's weights");
                        *q = QTensor::quantize(&(q.dequantize(Kind::Float) + delta), q.format);
                    }
                }
            }
        });
        true
    }

    /// The quantized routed experts named `model.layers.{i}.mlp.experts.{proj}`.
    fn quantized_experts_mut(&mut self, name: &str) -> Option<&mut QTensor> {
        let rest = name.strip_prefix("model.layers.")?;
        let (i, proj) = rest.split_once(".mlp.experts.")?;
        match &mut self.layers.get_mut(i.parse::<usize>().ok()?)?.ffn {
            Ffn::Moe(m) => match m.expert_weights_mut(proj)? {
                ExpertWeights::Quantized(q) => Some(q),
                ExpertWeights::Full(_) => None,
            },
            Ffn::Dense(_) => None,
        }
    }

    /// The weights by name as the model computes with them: with adapters attached, copies of the adapted
    /// weights hold `W + s B A`; otherwise the VarStore's own tensors (shallow). Quantized experts come as
    /// their values (`...mlp.experts.{proj}`, int8 or fp8) and scales (`...mlp.experts.{proj}_scale`), quantized
    /// again after adding an adapter.
    pub fn merged_variables(&self) -> Vec<(String, Tensor)> {
        let mut vars: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        let deltas: std::collections::HashMap<String, Tensor> = self.lora.as_ref().map(lora_deltas).unwrap_or_default().into_iter().collect();
        tch::no_grad(|| {
            for (name, t) in vars.iter_mut() {
                if let Some(d) = deltas.get(name.as_str()) {
                    *t = &*t + d.to_kind(t.kind());
                }
            }
            for (i, m) in self.moes() {
                for (proj, w) in ["gate_proj", "up_proj", "down_proj"].into_iter().zip(m.expert_weights()) {
                    let ExpertWeights::Quantized(q) = w else { continue };
                    let name = format!("model.layers.{i}.mlp.experts.{proj}");
                    let q = match deltas.get(&name) {
                        Some(d) => QTensor::quantize(&(q.dequantize(Kind::Float) + d), q.format),
                        None => q.shallow_clone(),
                    };
                    vars.push((format!("{name}_scale"), q.scale));
                    vars.push((name, q.data));
                }
            }
        });
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }

    fn check_forward(&self, b: i64, l: i64, start: i64, commit: i64, mask: BlockMask, cache: &KvCache) -> Result<()> {
        let bl = mask.block_length;
        if bl <= 0 {
            return Err(Error::invalid("block length", bl, "must be positive"));
        }
        if b == 0 || l == 0 {
            return Err(Error::invalid("input ids", format!("[{b}, {l}]"), "batch and length must be non-empty"));
        }
        if !(0..=l).contains(&commit) {
            return Err(Error::invalid("commit", commit, format!("must be in 0..={l}")));
        }
        if start + l > self.config.max_position_embeddings {
            return Err(Error::invalid(
                "sequence length",
                start + l,
                format!("the model has {} positions (max_position_embeddings)", self.config.max_position_embeddings),
            ));
        }
        if mask.kind == MaskKind::HfAdditive && (start > 0 || commit > 0) {
            return Err(Error::invalid("KV cache", start + commit, "the HF-additive mask lets earlier blocks see later ones, so nothing can be cached"));
        }
        if let Some(w) = mask.bidirectional_from {
            if start + commit > w {
                return Err(Error::invalid("commit", commit, format!("positions from {w} on are bidirectional and cannot be cached")));
            }
        }
        if start % bl != 0 || (commit > 0 && (start + commit) % bl != 0) {
            return Err(Error::invalid(
                "KV cache",
                format!("{start} cached + {commit} committed"),
                format!("the cache must end on a block boundary (block length {bl})"),
            ));
        }
        if let Some((_, bs)) = self.config.block_routing() {
            // Block routing pools experts per aligned group of canvas positions, so a forward must start on a
            // group boundary and a commit must leave the cache on one.
            if start % bs != 0 || (commit > 0 && (start + commit) % bs != 0) {
                return Err(Error::invalid(
                    "KV cache",
                    format!("{start} cached + {commit} committed"),
                    format!("a block-routed forward must start on a routing-group boundary (block_size {bs})"),
                ));
            }
        }
        if let Some((k, _)) = cache.layers.first() {
            if k.size()[0] != b {
                return Err(Error::invalid("input ids", format!("batch {b}"), format!("the cache holds batch {}", k.size()[0])));
            }
        }
        Ok(())
    }

    fn run(&self, ids: &Tensor, cache: &mut KvCache, commit: i64, mask: BlockMask) -> Tensor {
        let l = ids.size()[1];
        let start = cache.len();
        let dev = self.device();
        let kind = self.dtype.kind();
        let c = &self.config;
        let rope = rope_tables(c.rotary_dim(), c.rope_theta, start, l, kind, dev);
        let mut allowed = block_causal_mask(start, l, start + l, mask.block_length, dev);
        if let Some(w) = mask.bidirectional_from {
            let opts = (Kind::Int64, dev);
            let q_in = Tensor::arange_start(start, start + l, opts).ge(w).unsqueeze(1);
            let k_in = Tensor::arange(start + l, opts).ge(w).unsqueeze(0);
            allowed = allowed.logical_or(&q_in.logical_and(&k_in));
        }
        let bias = match mask.kind {
            MaskKind::HfAdditive => AttnBias::Additive(allowed.to_kind(kind).view([1, 1, l, start + l])),
            MaskKind::BlockCausal if allowed.all().int64_value(&[]) == 1 => AttnBias::None,
            MaskKind::BlockCausal => AttnBias::Bool(allowed.view([1, 1, l, start + l])),
        };
        let mut x = Tensor::embedding(&self.embed, ids, -1, false, false);
        // The cache is taken out while the layers run: if libtorch panics half-way, it is left empty (length
        // 0), never holding some layers extended and others not.
        let taken = std::mem::take(cache);
        let mut slots: Vec<Option<(Tensor, Tensor)>> = if taken.layers.len() == self.layers.len() {
            taken.layers.into_iter().map(Some).collect()
        } else {
            (0..self.layers.len()).map(|_| None).collect()
        };
        // check_forward made `start` a group boundary, so the input's groups are aligned from its first column.
        let groups = c.block_routing().map(|(_, bs)| RoutingGroups::aligned(l, bs, dev));
        for (i, (layer, slot)) in self.layers.iter().zip(slots.iter_mut()).enumerate() {
            x = layer.forward(&x, &rope, &bias, groups.as_ref(), slot, commit, None, self.layer_lora(i));
        }
        if slots.iter().all(Option::is_some) {
            cache.layers = slots.into_iter().flatten().collect();
            cache.len = start + commit;
        }
        let x = if commit > 0 { x.narrow(1, commit, l - commit) } else { x };
        self.norm.forward(&x).linear(&self.lm_head, None::<&Tensor>).to_kind(Kind::Float)
    }
}

/// `(weight name, s B A)` for every adapted weight (fused experts under `...mlp.experts.gate_proj`).
fn lora_deltas(ad: &Adapters) -> Vec<(String, Tensor)> {
    let s = ad.scale();
    let mut out = Vec::new();
    tch::no_grad(|| {
        for (i, l) in ad.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            out.push((format!("{p}.attention.query_key_value.weight"), l.qkv.weight_delta(s)));
            out.push((format!("{p}.attention.dense.weight"), l.dense.weight_delta(s)));
            let fused = l.ffn.gate.a.dim() == 3;
            let (ffn, leaf) = if fused { (format!("{p}.mlp.experts"), "") } else { (format!("{p}.mlp"), ".weight") };
            for (proj, lo) in [("gate_proj", &l.ffn.gate), ("up_proj", &l.ffn.up), ("down_proj", &l.ffn.down)] {
                out.push((format!("{ffn}.{proj}{leaf}"), lo.weight_delta(s)));
            }
            if let Some(sh) = &l.shared {
                for (proj, lo) in [("gate_proj", &sh.gate), ("up_proj", &sh.up), ("down_proj", &sh.down)] {
                    out.push((format!("{p}.mlp.shared_experts.{proj}.weight"), lo.weight_delta(s)));
                }
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vec(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(&t.reshape([-1]).to_kind(Kind::Float)).unwrap()
    }

    #[test]
    fn rms_norm_hand_checked() {
        // x = [3, 4]: mean(x^2) = 12.5, rsqrt(12.5 + 0.5) = 1/sqrt(13); weight [1, 2].
        let x = Tensor::from_slice(&[3.0f32, 4.0]);
        let y = vec(&rms_norm(&x, &Tensor::from_slice(&[1.0f32, 2.0]), 0.5));
        let r = 1.0 / 13f32.sqrt();
        assert!((y[0] - 3.0 * r).abs() < 1e-6 && (y[1] - 8.0 * r).abs() < 1e-6, "{y:?}");
    }

    #[test]
    fn rms_norm_computes_in_f32_and_returns_input_dtype() {
        let x = Tensor::from_slice(&[300.0f32, 400.0]).to_kind(Kind::BFloat16);
        let y = rms_norm(&x, &Tensor::ones([2], (Kind::BFloat16, Device::Cpu)), 1e-6);
        assert_eq!(y.kind(), Kind::BFloat16);
        let y = vec(&y);
        assert!((y[0] - 0.8485).abs() < 0.01 && (y[1] - 1.1314).abs() < 0.01, "{y:?}");
    }

    #[test]
    fn partial_rope_rotates_only_the_head_and_is_identity_at_zero() {
        // head_dim 4, rotary_dim 2, theta 10: inv_freq = [1]; position p rotates (x0, x1) by angle p.
        let (cos, sin) = rope_tables(2, 10.0, 0, 3, Kind::Float, Device::Cpu);
        let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([1, 4]).repeat([3, 1]);
        let y = apply_rope(&x, &cos, &sin);
        let y: Vec<Vec<f32>> = (0..3).map(|p| vec(&y.get(p))).collect();
        assert_eq!(y[0], vec![1.0, 2.0, 3.0, 4.0], "position 0 is the identity");
        for (p, row) in y.iter().enumerate() {
            let a = p as f32;
            // rotate_half: [x0, x1] -> [x0 cos - x1 sin, x1 cos + x0 sin]
            assert!((row[0] - (a.cos() - 2.0 * a.sin())).abs() < 1e-5, "{row:?}");
            assert!((row[1] - (2.0 * a.cos() + a.sin())).abs() < 1e-5, "{row:?}");
            assert_eq!(&row[2..], &[3.0, 4.0], "dims past rotary_dim pass through");
        }
    }

    #[test]
    fn rope_frequencies_follow_theta() {
        // rotary_dim 4, theta 100: inv_freq = [1, 1/10]; emb = [f0, f1, f0, f1].
        let (cos, _) = rope_tables(4, 100.0, 5, 1, Kind::Float, Device::Cpu);
        let c = vec(&cos);
        let want = [5f32.cos(), 0.5f32.cos(), 5f32.cos(), 0.5f32.cos()];
        for (a, b) in c.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{c:?}");
        }
    }

    #[test]
    fn block_causal_pattern() {
        // Blocks of 2 over 6 positions, queries 2..6 (blocks 1 and 2).
        let m = block_causal_mask(2, 4, 6, 2, Device::Cpu);
        let rows: Vec<Vec<i64>> = (0..4).map(|q| Vec::<i64>::try_from(&m.get(q).to_kind(Kind::Int64)).unwrap()).collect();
        assert_eq!(rows[0], vec![1, 1, 1, 1, 0, 0]); // position 2 sees its own block both ways, not block 2
        assert_eq!(rows[1], vec![1, 1, 1, 1, 0, 0]);
        assert_eq!(rows[2], vec![1, 1, 1, 1, 1, 1]);
        assert_eq!(rows[3], vec![1, 1, 1, 1, 1, 1]);
    }
}
