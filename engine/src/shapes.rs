//! Named model shapes for `dllm init-model` and benchmarks, and writing a random checkpoint in the
//! official layout (config.json, model.safetensors, tokenizer.json).

use std::path::Path;

use tch::Device;

use crate::checkpoint::{self, SaveOptions};
use crate::config::{Config, RawConfig, RopeParameters, LLADA22_DELETE_ID, LLADA22_SPLIT_ID};
use crate::device::DType;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::tokenizer::TokenizerSpec;
use crate::weights::RandomInit;

/// The named model shapes (name, what it is for): `init-model --shape`, benchmarks, `random:SHAPE`, training
/// recipes. Decoding presets ([`crate::decode::PRESETS`]) and training recipes ([`crate::train::RECIPES`]) are
/// other tables.
pub const SHAPES: &[(&str, &str)] = &[
    ("micro", "smallest complete model for unit tests: 3 layers (1 dense), 8 experts in 2 groups, vocab 128"),
    ("tiny", "the embedded model's shape (~1.7M parameters): hidden 128, 4 layers, 8 experts top-2, vocab 128"),
    ("mid", "a mid-size CPU benchmark shape (~100M parameters): hidden 512, 8 layers, 32 experts top-4"),
    ("llada2-mini", "LLaDA2.x mini shapes (16B): hidden 2048, 20 layers, 256 experts top-8 (GPU)"),
    ("llada2-flash", "LLaDA2.x flash shapes (100B): hidden 4096, 32 layers, 256 experts top-8 (GPU)"),
    ("micro-2.2", "micro with LLaDA2.2 block routing: 8 experts top-2, pool of 4 per routing group of 4, edit tokens"),
    ("tiny-2.2", "tiny with LLaDA2.2 block routing: 8 experts top-2, pool of 4 per routing group of 8, edit tokens"),
    ("llada2.2-mini", "LLaDA2.2 mini shapes (16B): llada2-mini with block routing (pool 48, group 32), rope_theta 3e6, 128K"),
    ("llada2.2-flash", "LLaDA2.2 flash shapes (100B): llada2-flash with block routing (pool 48, group 32), rope_theta 3e6, 128K"),
];

/// The config of a named shape.
pub fn shape(name: &str) -> Result<Config> {
    let raw = |vocab, hidden, inter, layers, heads, kv, head_dim, experts, top_k, shared, groups, topk_group, moe_inter, theta| RawConfig {
        vocab_size: Some(vocab),
        hidden_size: Some(hidden),
        intermediate_size: Some(inter),
        num_hidden_layers: Some(layers),
        num_attention_heads: Some(heads),
        num_key_value_heads: Some(kv),
        head_dim: Some(head_dim),
        num_experts: Some(experts),
        num_experts_per_tok: Some(top_k),
        num_shared_experts: Some(shared),
        n_group: Some(groups),
        topk_group: Some(topk_group),
        moe_intermediate_size: Some(moe_inter),
        first_k_dense_replace: Some(1),
        rope_theta: Some(theta),
        partial_rotary_factor: Some(0.5),
        routed_scaling_factor: Some(2.5),
        rms_norm_eps: Some(1e-6),
        use_bias: Some(false),
        use_qkv_bias: Some(false),
        tie_word_embeddings: Some(false),
        ..RawConfig::default()
    };
    let mut r = match name {
        "micro" => raw(128, 32, 64, 3, 4, 2, 8, 8, 2, 1, 2, 1, 16, 10000.0),
        "tiny" => raw(128, 128, 512, 4, 4, 2, 32, 8, 2, 1, 2, 1, 128, 10000.0),
        "mid" => raw(8192, 512, 1536, 8, 8, 2, 64, 32, 4, 1, 8, 4, 256, 10000.0),
        "llada2-mini" => raw(157184, 2048, 5120, 20, 16, 4, 128, 256, 8, 1, 8, 4, 512, 600000.0),
        "llada2-flash" => raw(157184, 4096, 9216, 32, 32, 4, 128, 256, 8, 1, 8, 4, 1024, 600000.0),
        // LLaDA2.2 (llada2.2.md section 1.1): the 2.1 shapes plus block routing; n_group / topk_group stay in
        // config.json as in the released files, unused by block routing.
        "micro-2.2" => RawConfig { expert_capacity: Some(4), block_size: Some(4), ..raw(128, 32, 64, 3, 4, 2, 8, 8, 2, 1, 2, 1, 16, 10000.0) },
        "tiny-2.2" => RawConfig { expert_capacity: Some(4), block_size: Some(8), ..raw(128, 128, 512, 4, 4, 2, 32, 8, 2, 1, 2, 1, 128, 10000.0) },
        "llada2.2-mini" => llada22(raw(157184, 2048, 5120, 20, 16, 4, 128, 256, 8, 1, 8, 4, 512, 3e6)),
        "llada2.2-flash" => llada22(raw(157184, 4096, 9216, 32, 32, 4, 128, 256, 8, 1, 8, 4, 1024, 3e6)),
        _ => {
            let names: Vec<&str> = SHAPES.iter().map(|p| p.0).collect();
            return Err(Error::invalid("model shape", name, format!("known shapes: {}", names.join(", "))));
        }
    };
    r.max_position_embeddings = Some(if name.starts_with("llada2.2") {
        131072
    } else if name.starts_with("llada2") {
        32768
    } else {
        4096
    });
    if name.ends_with("-2.2") {
        // The compact vocabulary's last two ids are reserved fillers: the edit tokens go there, so every other
        // token keeps the id it has in micro / tiny.
        let v = r.vocab_size.expect("set");
        (r.delete_token_id, r.split_token_id) = (Some(v - 2), Some(v - 1));
    }
    let spec = tokenizer_spec(r.vocab_size.expect("set"));
    let eos = spec.specials.iter().find(|s| s.1 == crate::tokenizer::EOS_TOKEN).map(|s| s.0);
    r.pad_token_id = eos;
    r.eos_token_id = eos.map(serde_json::Value::from);
    Config::resolve(&r)
}

/// The released LLaDA2.2 layout on top of a 2.1 shape: block routing with a pool of 48 per 32 positions, RoPE
/// in `rope_parameters`, 128K positions and the published edit ids.
fn llada22(r: RawConfig) -> RawConfig {
    RawConfig {
        expert_capacity: Some(48),
        block_size: Some(32),
        rope_parameters: Some(RopeParameters { rope_type: Some("default".into()), rope_theta: r.rope_theta, partial_rotary_factor: r.partial_rotary_factor }),
        delete_token_id: Some(LLADA22_DELETE_ID),
        split_token_id: Some(LLADA22_SPLIT_ID),
        ..r
    }
}

/// The tokenizer a random checkpoint of `config` ships with: [`tokenizer_spec`] of its vocabulary, plus the
/// LLaDA2.2 edit tokens when the config has them.
pub fn tokenizer_spec_for(config: &Config) -> TokenizerSpec {
    let spec = tokenizer_spec(config.vocab_size);
    match (config.delete_token_id, config.split_token_id) {
        (Some(d), Some(s)) => spec.with_edit_tokens(d, s),
        _ => spec,
    }
}

/// The tokenizer a random checkpoint of this vocabulary size ships with: the official special ids when the
/// vocabulary has LLaDA2's size, a compact character vocabulary otherwise.
pub fn tokenizer_spec(vocab_size: i64) -> TokenizerSpec {
    if vocab_size > 156900 {
        TokenizerSpec::llada2(vocab_size)
    } else {
        TokenizerSpec::compact(vocab_size)
    }
}

/// Builds a seeded random model of `config` on `device` (nothing touches the disk), with the usual
/// initialisation (N(0, 0.02) matrices, unit norms, zero biases).
pub fn random_model(config: &Config, seed: u64, device: Device, dtype: DType) -> Result<Model> {
    let mut init = RandomInit::new(seed, 0.02, device, dtype);
    Model::build(config, &mut init, device, dtype)
}

/// Writes a random checkpoint of `config` into `dir`: config.json, weights, tokenizer.json.
pub fn write_random_checkpoint(config: &Config, init: RandomInit, dir: &Path, opts: SaveOptions) -> Result<()> {
    let mut init = init;
    let model = Model::build(config, &mut init, Device::Cpu, DType::F32)?;
    write_checkpoint(&model, dir, opts)?;
    let tok = serde_json::to_string(&tokenizer_spec_for(config).to_json()).expect("json");
    checkpoint::write_atomic(&dir.join("tokenizer.json"), tok.as_bytes())
}

/// Writes `model`'s weights and then config.json into `dir` (the tokenizer is the caller's), each atomically;
/// config.json last, so a folder with a config has its weights. LoRA adapters, if attached, are written merged
/// into their weights.
pub fn write_checkpoint(model: &Model, dir: &Path, opts: SaveOptions) -> Result<()> {
    let tensors = model.merged_variables();
    checkpoint::save(&tensors, dir, opts)?;
    let mut cfg = model.config().to_hf_json();
    let dtype = serde_json::Value::from(match opts.dtype {
        DType::F32 => "float32",
        DType::Bf16 => "bfloat16",
        DType::F16 => "float16",
    });
    if model.config().block_routing().is_some() {
        cfg["dtype"] = dtype.clone(); // the transformers-5 name, as the 2.2 files write it
    }
    cfg["torch_dtype"] = dtype;
    checkpoint::write_atomic(&dir.join("config.json"), serde_json::to_string_pretty(&cfg).expect("json").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llada2_shapes_have_the_published_sizes() {
        // LLaDA2.x mini is "16B" and flash "100B" total parameters.
        let mini = shape("llada2-mini").unwrap().num_parameters() as f64 / 1e9;
        let flash = shape("llada2-flash").unwrap().num_parameters() as f64 / 1e9;
        assert!((15.5..17.0).contains(&mini), "mini: {mini}B");
        assert!((98.0..106.0).contains(&flash), "flash: {flash}B");
        assert_eq!(shape("llada2-mini").unwrap().rotary_dim(), 64);
        // 2.2 adds no parameters (llada2.2.md section 1.2): same counts as 2.1, block routing on, 128K.
        for (v21, v22) in [("llada2-mini", "llada2.2-mini"), ("llada2-flash", "llada2.2-flash")] {
            let (a, b) = (shape(v21).unwrap(), shape(v22).unwrap());
            assert_eq!(a.num_parameters(), b.num_parameters(), "{v22}");
            assert_eq!(a.block_routing(), None);
            assert_eq!(b.block_routing(), Some((48, 32)), "{v22}");
            assert_eq!((b.rope_theta, b.max_position_embeddings, b.rotary_dim()), (3e6, 131072, 64), "{v22}");
            assert_eq!((b.delete_token_id, b.split_token_id), (Some(156930), Some(156931)), "{v22}");
        }
    }

    #[test]
    fn small_2_2_shapes_route_by_blocks_and_carry_edit_tokens() {
        for (name, base, bs) in [("micro-2.2", "micro", 4), ("tiny-2.2", "tiny", 8)] {
            let c = shape(name).unwrap();
            assert_eq!(c.block_routing(), Some((4, bs)), "{name}");
            assert!(c.expert_capacity.unwrap() < c.num_experts, "{name}: the pool must actually restrict");
            assert_eq!((c.delete_token_id, c.split_token_id), (Some(126), Some(127)), "{name}");
            assert_eq!(c.num_parameters(), shape(base).unwrap().num_parameters(), "{name}");
            let spec = tokenizer_spec_for(&c);
            assert!(spec.specials.contains(&(126, "<|delete|>".into())) && spec.specials.contains(&(127, "<|split|>".into())));
            // Every other token keeps its id: the base shape's tokenizer is a prefix of the specials and the
            // same vocabulary otherwise.
            let (a, b) = (tokenizer_spec_for(&shape(base).unwrap()).to_json(), spec.to_json());
            assert_eq!(a["model"]["vocab"]["a"], b["model"]["vocab"]["a"]);
            assert_eq!(a["model"]["vocab"]["<|mask|>"], b["model"]["vocab"]["<|mask|>"]);
        }
        // The 2.1 shapes are untouched.
        assert_eq!(shape("micro").unwrap().delete_token_id, None);
    }

    #[test]
    fn block_routed_config_round_trips_through_config_json() {
        for name in ["micro-2.2", "llada2.2-mini"] {
            let c = shape(name).unwrap();
            let json = c.to_hf_json();
            assert_eq!(json["rope_parameters"]["rope_theta"], c.rope_theta, "{name}");
            assert_eq!(json["rope_parameters"]["rope_type"], "default");
            assert_eq!(Config::from_json(&json.to_string()).unwrap(), c, "{name}");
        }
        // 2.1 configs are written exactly as before: no 2.2 field appears.
        let json = shape("micro").unwrap().to_hf_json();
        for field in ["expert_capacity", "block_size", "rope_parameters", "delete_token_id", "split_token_id", "dtype"] {
            assert!(json.get(field).is_none(), "{field}");
        }
    }

    #[test]
    fn parameter_count_matches_a_built_model() {
        for name in ["micro", "tiny"] {
            let c = shape(name).unwrap();
            let m = random_model(&c, 0, Device::Cpu, DType::F32).unwrap();
            assert_eq!(m.num_parameters(), c.num_parameters(), "{name}");
        }
    }

    #[test]
    fn unknown_shape_lists_the_known_ones() {
        let e = shape("huge").unwrap_err().to_string();
        assert!(e.contains("micro, tiny, mid, llada2-mini, llada2-flash, micro-2.2, tiny-2.2, llada2.2-mini, llada2.2-flash"), "{e}");
    }
}
