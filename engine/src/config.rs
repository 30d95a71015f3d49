//! `config.json` of a `llada2_moe` checkpoint (Hugging Face `LLaDA2MoeConfig`).
//!
//! [`RawConfig`] mirrors the JSON field names one to one (every field optional); [`Config::resolve`] turns it
//! into the resolved [`Config`] the model is built from, in one function, applying the official defaults of
//! `configuration_llada2_moe.py` (e.g. `use_qk_norm` absent means true, `partial_rotary_factor` 0.5).
//!
//! Departure from the Python class: it defaults *every* field, so a config missing `hidden_size` silently
//! builds a 1024-wide model. Here the fields that fix tensor shapes are required, so such a file fails
//! while reading the config, naming the field, instead of later with a shape mismatch.
//!
//! LLaDA2.2 (llada2.2.md sections 1-2) adds block routing: `expert_capacity` (the pool size C) turns it on and
//! `block_size` is the routing group; `rope_parameters` (transformers 5) carries the RoPE fields and is read in
//! preference to the top-level ones; `dtype` replaces `torch_dtype`; `delete_token_id` / `split_token_id` are the
//! Levenshtein edit tokens. A block-routed config without the edit ids gets the published 156930 / 156931 when
//! its vocabulary holds them (llada2.2.md section 1.1 note: the real config.json may not declare them).
//!
//! Audit, field by field: a field that changes the computation and that the engine does not implement is an
//! error naming the field, never silently ignored.
//! - Errors: `model_type` other than llada2_moe, `hidden_act` other than silu, a non-null `rope_scaling`,
//!   `rope_parameters.rope_type` other than "default", a `quantization_config` other than dllm's own
//!   ([`crate::quant`]: int8 / fp8 routed experts), `expert_capacity` without `block_size` or the reverse.
//! - Accepted and not branched on, because the official code never reads them (llada2.md section 1):
//!   `score_function`, `router_dtype`, `moe_router_enable_expert_bias`, `norm_topk_prob`, `rotary_dim`,
//!   `sliding_window`, `use_sliding_window` (even when true: the HF model applies no window), `max_window_layers`,
//!   `norm_head`, `norm_softmax`, `use_rmsnorm`. `n_group` / `topk_group` are read, but block routing does not use
//!   them (llada2.2.md section 2.1), so they are validated only on the group-limited path.
//! - `dtype` / `torch_dtype` name the storage dtype; the loader takes each tensor's dtype from the safetensors
//!   header and the compute dtype from the caller, so they only have to be a float type.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::quant::Quantization;

/// config.json as written by Hugging Face, every field optional. Unknown fields are ignored.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct RawConfig {
    pub model_type: Option<String>,
    pub vocab_size: Option<i64>,
    pub hidden_size: Option<i64>,
    pub intermediate_size: Option<i64>,
    pub num_hidden_layers: Option<i64>,
    pub num_attention_heads: Option<i64>,
    pub num_key_value_heads: Option<i64>,
    pub head_dim: Option<i64>,
    pub hidden_act: Option<String>,
    pub use_qkv_bias: Option<bool>,
    pub use_qk_norm: Option<bool>,
    pub use_bias: Option<bool>,
    pub rms_norm_eps: Option<f64>,
    pub tie_word_embeddings: Option<bool>,
    pub max_position_embeddings: Option<i64>,
    pub rope_theta: Option<f64>,
    pub rope_scaling: Option<serde_json::Value>,
    pub partial_rotary_factor: Option<f64>,
    pub num_experts: Option<i64>,
    pub num_shared_experts: Option<i64>,
    pub num_experts_per_tok: Option<i64>,
    pub n_group: Option<i64>,
    pub topk_group: Option<i64>,
    pub routed_scaling_factor: Option<f64>,
    pub moe_intermediate_size: Option<i64>,
    pub first_k_dense_replace: Option<i64>,
    pub pad_token_id: Option<i64>,
    pub eos_token_id: Option<serde_json::Value>,
    pub mask_token_id: Option<i64>,
    pub delete_token_id: Option<i64>,
    pub split_token_id: Option<i64>,
    /// LLaDA2.2 block routing: the pool size C (present iff block routing is on).
    pub expert_capacity: Option<i64>,
    /// LLaDA2.2 routing group length (32 in the released checkpoints); present iff `expert_capacity` is.
    pub block_size: Option<i64>,
    /// transformers-5 RoPE fields, read in preference to the top-level `rope_theta` / `partial_rotary_factor`.
    pub rope_parameters: Option<RopeParameters>,
    /// Storage dtype (transformers 5 name; older files write `torch_dtype`).
    pub dtype: Option<String>,
    pub torch_dtype: Option<String>,
    /// Routed experts quantized by dllm (`{"quant_method": "dllm", "format": "int8"|"fp8", ...}`); other
    /// quantizers' layouts are refused by name.
    pub quantization_config: Option<serde_json::Value>,
}

/// `rope_parameters` of a transformers-5 config.json. Unknown keys are ignored (they belong to rope types
/// other than "default", which are refused).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct RopeParameters {
    pub rope_type: Option<String>,
    pub rope_theta: Option<f64>,
    pub partial_rotary_factor: Option<f64>,
}

/// The published LLaDA2.2 edit-token ids (llada2.2.md section 0, item 4).
pub const LLADA22_DELETE_ID: i64 = 156930;
pub const LLADA22_SPLIT_ID: i64 = 156931;

/// The resolved model configuration. Field names follow config.json.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    pub vocab_size: i64,
    pub hidden_size: i64,
    /// Width of the dense SwiGLU in layers `< first_k_dense_replace`.
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    pub head_dim: i64,
    pub use_qkv_bias: bool,
    pub use_qk_norm: bool,
    /// Bias on the attention output projection `dense`.
    pub use_bias: bool,
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: bool,
    pub max_position_embeddings: i64,
    pub rope_theta: f64,
    pub partial_rotary_factor: f64,
    pub num_experts: i64,
    /// 0 means no shared expert.
    pub num_shared_experts: i64,
    pub num_experts_per_tok: i64,
    pub n_group: i64,
    pub topk_group: i64,
    pub routed_scaling_factor: f64,
    /// Width of each routed expert; the shared expert is `moe_intermediate_size * num_shared_experts` wide.
    pub moe_intermediate_size: i64,
    pub first_k_dense_replace: i64,
    pub pad_token_id: Option<i64>,
    pub eos_token_id: Option<i64>,
    pub mask_token_id: Option<i64>,
    /// LLaDA2.2 Levenshtein edit tokens: DELETE removes a slot, SPLIT (the report's INSERT) opens a mask
    /// before it. `None` for models without Levenshtein editing (LLaDA2.0/2.1).
    pub delete_token_id: Option<i64>,
    pub split_token_id: Option<i64>,
    /// LLaDA2.2 block routing: pool size C per routing group. `None`: the 2.1 group-limited routing.
    pub expert_capacity: Option<i64>,
    /// LLaDA2.2 routing group length; `Some` exactly when `expert_capacity` is.
    pub block_size: Option<i64>,
    /// How the routed experts are held ([`crate::quant`]): from config.json's `quantization_config` (a
    /// checkpoint dllm quantized) or asked at load time. `None`: in the run dtype.
    #[serde(skip)]
    pub quantization: Option<Quantization>,
}

impl Config {
    /// Reads and resolves `path` (a config.json). Errors name the file and the field.
    pub fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Config::from_json(&text).map_err(|e| e.in_file(path))
    }

    /// Parses and resolves config.json text.
    pub fn from_json(text: &str) -> Result<Config> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            if inner.is_syntax() || inner.is_eof() {
                return Error::Config { file: None, field: String::new(), message: format!("not valid JSON: {inner}") };
            }
            Error::Config { file: None, field, message: inner.to_string() }
        })?;
        Config::resolve(&raw)
    }

    /// Applies the official defaults and checks the result is a model we can build.
    pub fn resolve(raw: &RawConfig) -> Result<Config> {
        let bad = |field: &str, message: String| Error::Config { file: None, field: field.into(), message };
        let required = |v: Option<i64>, field: &str| {
            v.ok_or_else(|| bad(field, "missing required field (it fixes tensor shapes, so there is no default)".into()))
        };
        if let Some(t) = &raw.model_type {
            if t != "llada2_moe" {
                return Err(bad("model_type", format!("expected \"llada2_moe\", found {t:?}")));
            }
        }
        if let Some(act) = &raw.hidden_act {
            if act != "silu" {
                return Err(bad("hidden_act", format!("only \"silu\" is supported, found {act:?}")));
            }
        }
        if let Some(s) = &raw.rope_scaling {
            if !s.is_null() {
                return Err(bad("rope_scaling", format!("only null (plain RoPE) is supported, found {s}")));
            }
        }
        let quantization = match &raw.quantization_config {
            Some(q) if !q.is_null() => Some(Quantization::from_json(q).map_err(|m| bad("quantization_config", m))?),
            _ => None,
        };
        let rope = raw.rope_parameters.clone().unwrap_or_default();
        if let Some(t) = &rope.rope_type {
            if t != "default" {
                return Err(bad("rope_parameters.rope_type", format!("only \"default\" (plain RoPE) is supported, found {t:?}")));
            }
        }
        for (field, v) in [("dtype", &raw.dtype), ("torch_dtype", &raw.torch_dtype)] {
            if let Some(d) = v {
                if !["float32", "bfloat16", "float16"].contains(&d.as_str()) {
                    return Err(bad(field, format!("expected float32, bfloat16 or float16, found {d:?}")));
                }
            }
        }
        match (raw.expert_capacity, raw.block_size) {
            (Some(_), None) => return Err(bad("block_size", "missing: expert_capacity (block routing) needs the routing block size".into())),
            (None, Some(_)) => return Err(bad("expert_capacity", "missing: block_size is given, but block routing is on only with expert_capacity".into())),
            _ => {}
        }
        let hidden_size = required(raw.hidden_size, "hidden_size")?;
        let num_hidden_layers = required(raw.num_hidden_layers, "num_hidden_layers")?;
        let num_attention_heads = required(raw.num_attention_heads, "num_attention_heads")?;
        let vocab_size = required(raw.vocab_size, "vocab_size")?;
        let first_k_dense_replace = raw.first_k_dense_replace.unwrap_or(0);
        let has_moe = first_k_dense_replace < num_hidden_layers;
        let has_dense = first_k_dense_replace > 0;
        let intermediate_size =
            if has_dense { required(raw.intermediate_size, "intermediate_size")? } else { raw.intermediate_size.unwrap_or(0) };
        let (num_experts, num_experts_per_tok, moe_intermediate_size) = if has_moe {
            (
                required(raw.num_experts, "num_experts")?,
                required(raw.num_experts_per_tok, "num_experts_per_tok")?,
                required(raw.moe_intermediate_size, "moe_intermediate_size")?,
            )
        } else {
            (raw.num_experts.unwrap_or(0), raw.num_experts_per_tok.unwrap_or(0), raw.moe_intermediate_size.unwrap_or(0))
        };
        let num_key_value_heads = match raw.num_key_value_heads {
            None | Some(0) => num_attention_heads, // 0 means "as many as query heads" in the official class
            Some(n) => n,
        };
        let eos_token_id = match &raw.eos_token_id {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Number(n)) => n.as_i64(),
            // transformers allows a list of EOS ids; the first is the one generation stops on.
            Some(serde_json::Value::Array(a)) => a.first().and_then(|v| v.as_i64()),
            Some(other) => return Err(bad("eos_token_id", format!("expected an integer or a list, found {other}"))),
        };
        // Edit ids: read as given; a block-routed (2.2) config that names neither gets the published ids when
        // its vocabulary holds them. A small-vocabulary block-routed config without ids has no edit tokens.
        let (delete_token_id, split_token_id) = match (raw.delete_token_id, raw.split_token_id) {
            (None, None) if raw.expert_capacity.is_some() && vocab_size > LLADA22_SPLIT_ID => {
                (Some(LLADA22_DELETE_ID), Some(LLADA22_SPLIT_ID))
            }
            (Some(_), None) => return Err(bad("split_token_id", "missing: delete_token_id is given, and edits need both".into())),
            (None, Some(_)) => return Err(bad("delete_token_id", "missing: split_token_id is given, and edits need both".into())),
            ids => ids,
        };
        let cfg = Config {
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim: raw.head_dim.unwrap_or(if num_attention_heads > 0 { hidden_size / num_attention_heads } else { 0 }),
            use_qkv_bias: raw.use_qkv_bias.unwrap_or(false),
            use_qk_norm: raw.use_qk_norm.unwrap_or(true),
            use_bias: raw.use_bias.unwrap_or(true),
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-5),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(16384),
            rope_theta: rope.rope_theta.or(raw.rope_theta).unwrap_or(10000.0),
            partial_rotary_factor: rope.partial_rotary_factor.or(raw.partial_rotary_factor).unwrap_or(0.5),
            num_experts,
            num_shared_experts: raw.num_shared_experts.unwrap_or(0),
            num_experts_per_tok,
            n_group: raw.n_group.unwrap_or(8),
            topk_group: raw.topk_group.unwrap_or(4),
            routed_scaling_factor: raw.routed_scaling_factor.unwrap_or(2.5),
            moe_intermediate_size,
            first_k_dense_replace,
            pad_token_id: raw.pad_token_id,
            eos_token_id,
            mask_token_id: raw.mask_token_id,
            delete_token_id,
            split_token_id,
            expert_capacity: raw.expert_capacity,
            block_size: raw.block_size,
            quantization,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        let bad = |field: &str, message: String| Err(Error::Config { file: None, field: field.into(), message });
        // Numbers that feed the forward directly: a negative theta or epsilon gives NaN logits at the first step.
        for (field, v) in [("rope_theta", self.rope_theta), ("rms_norm_eps", self.rms_norm_eps), ("routed_scaling_factor", self.routed_scaling_factor)] {
            if !(v.is_finite() && v > 0.0) {
                return bad(field, format!("must be a positive finite number, found {v}"));
            }
        }
        if !(self.partial_rotary_factor > 0.0 && self.partial_rotary_factor <= 1.0) {
            return bad("partial_rotary_factor", format!("must be in (0, 1], found {}", self.partial_rotary_factor));
        }
        // Every size: positive where the model needs one, and none larger than any checkpoint's, checked before
        // anything multiplies them (products of such fields overflow).
        const MOST: i64 = 1 << 31;
        for (field, v, positive) in [
            ("vocab_size", self.vocab_size, true),
            ("hidden_size", self.hidden_size, true),
            ("intermediate_size", self.intermediate_size, false),
            ("num_hidden_layers", self.num_hidden_layers, true),
            ("num_attention_heads", self.num_attention_heads, true),
            ("num_key_value_heads", self.num_key_value_heads, true),
            ("head_dim", self.head_dim, true),
            ("max_position_embeddings", self.max_position_embeddings, true),
            ("num_experts", self.num_experts, false),
            ("num_shared_experts", self.num_shared_experts, false),
            ("num_experts_per_tok", self.num_experts_per_tok, false),
            ("moe_intermediate_size", self.moe_intermediate_size, false),
            ("first_k_dense_replace", self.first_k_dense_replace, false),
            ("n_group", self.n_group, false),
            ("topk_group", self.topk_group, false),
        ] {
            if positive && v <= 0 {
                return bad(field, format!("must be positive, found {v}"));
            }
            if v > MOST {
                return bad(field, format!("{v} is larger than any model's (at most {MOST})"));
            }
        }
        let params = self.approx_parameters();
        if params > 1e13 {
            return bad("num_hidden_layers", format!("these sizes make a model of about {params:.1e} parameters, more than any checkpoint: a field is wrong"));
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return bad(
                "num_key_value_heads",
                format!("{} does not divide num_attention_heads {}", self.num_key_value_heads, self.num_attention_heads),
            );
        }
        if self.rotary_dim() % 2 != 0 || self.rotary_dim() > self.head_dim {
            return bad(
                "partial_rotary_factor",
                format!("head_dim {} * {} gives an odd or too large rotary_dim", self.head_dim, self.partial_rotary_factor),
            );
        }
        if self.first_k_dense_replace < 0 {
            return bad("first_k_dense_replace", format!("must be >= 0, found {}", self.first_k_dense_replace));
        }
        if self.has_moe() {
            for (field, v) in [
                ("num_experts", self.num_experts),
                ("num_experts_per_tok", self.num_experts_per_tok),
                ("moe_intermediate_size", self.moe_intermediate_size),
            ] {
                if v <= 0 {
                    return bad(field, format!("must be positive in a model with MoE layers, found {v}"));
                }
            }
            if self.num_experts_per_tok > self.num_experts {
                return bad("num_experts_per_tok", format!("{} exceeds num_experts {}", self.num_experts_per_tok, self.num_experts));
            }
            if let Some(cap) = self.expert_capacity {
                if cap < self.num_experts_per_tok || cap > self.num_experts {
                    return bad(
                        "expert_capacity",
                        format!("{cap} must be in num_experts_per_tok..=num_experts ({}..={})", self.num_experts_per_tok, self.num_experts),
                    );
                }
            }
            if self.expert_capacity.is_none() && self.group_limited() {
                if self.num_experts % self.n_group != 0 {
                    return bad("n_group", format!("{} does not divide num_experts {}", self.n_group, self.num_experts));
                }
                if self.num_experts / self.n_group < 2 {
                    return bad("n_group", "each group needs at least 2 experts (its score is the sum of its top 2)".into());
                }
                if self.topk_group < 1 || self.topk_group > self.n_group {
                    return bad("topk_group", format!("must be in 1..={}, found {}", self.n_group, self.topk_group));
                }
                let reachable = self.topk_group * (self.num_experts / self.n_group);
                if reachable < self.num_experts_per_tok {
                    return bad(
                        "topk_group",
                        format!("{} groups hold {reachable} experts, fewer than num_experts_per_tok", self.topk_group),
                    );
                }
            }
            if self.num_shared_experts < 0 {
                return bad("num_shared_experts", format!("must be >= 0, found {}", self.num_shared_experts));
            }
        }
        if let Some(bs) = self.block_size {
            if bs < 1 {
                return bad("block_size", format!("must be >= 1, found {bs}"));
            }
        }
        self.validate_edit_ids()?;
        if self.intermediate_size <= 0 && self.first_k_dense_replace > 0 {
            return bad("intermediate_size", format!("must be positive, found {}", self.intermediate_size));
        }
        Ok(())
    }

    /// DELETE and SPLIT must be two distinct ordinary vocabulary ids that are neither the mask nor EOS (the
    /// decoder tells them apart by id).
    fn validate_edit_ids(&self) -> Result<()> {
        let bad = |field: &str, message: String| Err(Error::Config { file: None, field: field.into(), message });
        let (Some(del), Some(split)) = (self.delete_token_id, self.split_token_id) else { return Ok(()) };
        if del == split {
            return bad("split_token_id", format!("{split} is also delete_token_id"));
        }
        for (field, id) in [("delete_token_id", del), ("split_token_id", split)] {
            if !(0..self.vocab_size).contains(&id) {
                return bad(field, format!("{id} is outside the vocabulary 0..{}", self.vocab_size));
            }
            if Some(id) == self.mask_token_id {
                return bad(field, format!("{id} is also mask_token_id"));
            }
            if Some(id) == self.eos_token_id {
                return bad(field, format!("{id} is also eos_token_id"));
            }
        }
        Ok(())
    }

    /// `(expert_capacity, block_size)` when the MoE layers use LLaDA2.2 block routing (`moe.rs`), `None` for the
    /// 2.1 group-limited routing. A block-routed forward must start on a routing-group boundary.
    pub fn block_routing(&self) -> Option<(i64, i64)> {
        match (self.expert_capacity, self.block_size) {
            (Some(c), Some(b)) if self.has_moe() => Some((c, b)),
            _ => None,
        }
    }

    /// Dimensions of each head that RoPE rotates (`head_dim * partial_rotary_factor`, as the HF code computes it).
    pub fn rotary_dim(&self) -> i64 {
        (self.head_dim as f64 * self.partial_rotary_factor) as i64
    }

    pub fn has_moe(&self) -> bool {
        self.first_k_dense_replace < self.num_hidden_layers
    }

    pub fn is_moe_layer(&self, layer: i64) -> bool {
        layer >= self.first_k_dense_replace
    }

    /// Group-limited routing applies when there is more than one group; with one group it is the identity.
    pub fn group_limited(&self) -> bool {
        self.n_group > 1
    }

    /// Number of parameters a model of this config has (expert biases excluded), computed from the shapes.
    /// [`Config::num_parameters`] in floating point, which cannot overflow (for checking sizes).
    pub fn approx_parameters(&self) -> f64 {
        let f = |x: i64| x.max(0) as f64;
        let (h, d) = (f(self.hidden_size), f(self.head_dim));
        let attn = (2.0 * f(self.num_attention_heads) + 2.0 * f(self.num_key_value_heads)) * d * h;
        let moe = f(self.num_experts) * h + (f(self.num_experts) + f(self.num_shared_experts)) * 3.0 * h * f(self.moe_intermediate_size);
        let dense = 3.0 * h * f(self.intermediate_size);
        f(self.num_hidden_layers) * (attn + moe.max(dense)) + 2.0 * f(self.vocab_size) * h
    }

    pub fn num_parameters(&self) -> i64 {
        let (h, d) = (self.hidden_size, self.head_dim);
        let attn = (self.num_attention_heads + 2 * self.num_key_value_heads) * d * h
            + self.num_attention_heads * d * h
            + if self.use_qk_norm { 2 * d } else { 0 }
            + if self.use_qkv_bias { (self.num_attention_heads + 2 * self.num_key_value_heads) * d } else { 0 }
            + if self.use_bias { h } else { 0 };
        let dense = 3 * h * self.intermediate_size;
        let moe = self.num_experts * h
            + self.num_experts * 3 * h * self.moe_intermediate_size
            + self.num_shared_experts * 3 * h * self.moe_intermediate_size;
        let layers: i64 =
            (0..self.num_hidden_layers).map(|i| attn + 2 * h + if self.is_moe_layer(i) { moe } else { dense }).sum();
        let embeddings = self.vocab_size * h * if self.tie_word_embeddings { 1 } else { 2 };
        layers + embeddings + h
    }

    /// The config.json a checkpoint writer puts next to the weights (official field names).
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("Config serialises");
        let obj = v.as_object_mut().expect("object");
        obj.insert("model_type".into(), "llada2_moe".into());
        obj.insert("architectures".into(), serde_json::json!(["LLaDA2MoeModelLM"]));
        obj.insert("hidden_act".into(), "silu".into());
        obj.insert("score_function".into(), "sigmoid".into());
        obj.insert("router_dtype".into(), "fp32".into());
        obj.insert("moe_router_enable_expert_bias".into(), true.into());
        obj.insert("norm_topk_prob".into(), true.into());
        if self.expert_capacity.is_some() {
            // The 2.2 layout (llada2.2.md section 1.1): RoPE fields also in rope_parameters, as transformers 5 writes.
            obj.insert(
                "rope_parameters".into(),
                serde_json::json!({"rope_type": "default", "rope_theta": self.rope_theta, "partial_rotary_factor": self.partial_rotary_factor}),
            );
        }
        if let Some(q) = self.quantization {
            obj.insert("quantization_config".into(), q.to_json());
        }
        obj.retain(|_, v| !v.is_null());
        v
    }
}
