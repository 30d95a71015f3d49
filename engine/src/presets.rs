//! Named model shapes for `dllm init-model` and benchmarks, and writing a random checkpoint in the
//! official layout (config.json, model.safetensors, tokenizer.json).

use std::path::Path;

use tch::Device;

use crate::checkpoint::{self, SaveOptions};
use crate::config::{Config, RawConfig};
use crate::device::DType;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::tokenizer::TokenizerSpec;
use crate::weights::RandomInit;

/// (name, what it is for).
pub const PRESETS: &[(&str, &str)] = &[
    ("micro", "smallest complete model for unit tests: 3 layers (1 dense), 8 experts in 2 groups, vocab 128"),
    ("tiny", "the embedded model's shape (~1.7M parameters): hidden 128, 4 layers, 8 experts top-2, vocab 128"),
    ("mid", "a mid-size CPU benchmark shape (~100M parameters): hidden 512, 8 layers, 32 experts top-4"),
    ("llada2-mini", "LLaDA2.x mini shapes (16B): hidden 2048, 20 layers, 256 experts top-8 (GPU)"),
    ("llada2-flash", "LLaDA2.x flash shapes (100B): hidden 4096, 32 layers, 256 experts top-8 (GPU)"),
];

/// The config of a named preset.
pub fn preset(name: &str) -> Result<Config> {
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
        _ => {
            let names: Vec<&str> = PRESETS.iter().map(|p| p.0).collect();
            return Err(Error::invalid("preset", name, format!("known presets: {}", names.join(", "))));
        }
    };
    r.max_position_embeddings = Some(if name.starts_with("llada2") { 32768 } else { 4096 });
    let spec = tokenizer_spec(r.vocab_size.expect("set"));
    let eos = spec.specials.iter().find(|s| s.1 == crate::tokenizer::EOS_TOKEN).map(|s| s.0);
    r.pad_token_id = eos;
    r.eos_token_id = eos.map(serde_json::Value::from);
    Config::resolve(&r)
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
    let tok = serde_json::to_string(&tokenizer_spec(config.vocab_size).to_json()).expect("json");
    checkpoint::write_atomic(&dir.join("tokenizer.json"), tok.as_bytes())
}

/// Writes `model`'s weights and config.json into `dir` (the tokenizer is the caller's). LoRA adapters, if
/// attached, are written merged into their weights.
pub fn write_checkpoint(model: &Model, dir: &Path, opts: SaveOptions) -> Result<()> {
    let tensors = model.merged_variables();
    checkpoint::save(&tensors, dir, opts)?;
    let mut cfg = model.config().to_hf_json();
    cfg["torch_dtype"] = serde_json::Value::from(match opts.dtype {
        DType::F32 => "float32",
        DType::Bf16 => "bfloat16",
        DType::F16 => "float16",
    });
    checkpoint::write_atomic(&dir.join("config.json"), serde_json::to_string_pretty(&cfg).expect("json").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llada2_shapes_have_the_published_sizes() {
        // LLaDA2.x mini is "16B" and flash "100B" total parameters.
        let mini = preset("llada2-mini").unwrap().num_parameters() as f64 / 1e9;
        let flash = preset("llada2-flash").unwrap().num_parameters() as f64 / 1e9;
        assert!((15.5..17.0).contains(&mini), "mini: {mini}B");
        assert!((98.0..106.0).contains(&flash), "flash: {flash}B");
        assert_eq!(preset("llada2-mini").unwrap().rotary_dim(), 64);
    }

    #[test]
    fn parameter_count_matches_a_built_model() {
        for name in ["micro", "tiny"] {
            let c = preset(name).unwrap();
            let m = random_model(&c, 0, Device::Cpu, DType::F32).unwrap();
            assert_eq!(m.num_parameters(), c.num_parameters(), "{name}");
        }
    }

    #[test]
    fn unknown_preset_lists_the_known_ones() {
        let e = preset("huge").unwrap_err().to_string();
        assert!(e.contains("micro, tiny, mid, llada2-mini, llada2-flash"), "{e}");
    }
}
