//! Shared helpers for the engine's integration tests: small random models with weights that make logits
//! spread out (std 0.3, non-unit norms, non-zero expert biases of both signs), so comparisons are meaningful.

#![allow(dead_code)]

use std::path::Path;

use dllm_engine::checkpoint::SaveOptions;
use dllm_engine::{shapes, Config, DType, Model, RandomInit};
use tch::{Device, Kind, Tensor};

pub fn micro() -> Config {
    shapes::shape("micro").unwrap()
}

/// A random model whose every tensor carries information: N(0, 0.3) matrices, norms ~ U[0.5, 1.5],
/// expert biases ~ U[-0.1, 0.1].
pub fn spiky_model(config: &Config, seed: u64) -> Model {
    let mut init = RandomInit::new(seed, 0.3, Device::Cpu, DType::F32).spread(true);
    Model::build(config, &mut init, Device::Cpu, DType::F32).unwrap()
}

pub fn save(model: &Model, dir: &Path, opts: SaveOptions) {
    shapes::write_checkpoint(model, dir, opts).unwrap();
    let tok = shapes::tokenizer_spec_for(model.config()).to_json();
    std::fs::write(dir.join("tokenizer.json"), serde_json::to_string(&tok).unwrap()).unwrap();
}

pub fn f32_opts() -> SaveOptions {
    SaveOptions { dtype: DType::F32, fused_experts: false, shard_bytes: None }
}

pub fn ids(config: &Config, batch: i64, len: i64, seed: u64) -> Tensor {
    dllm_engine::with_global_seed(seed, || Tensor::randint(config.vocab_size, [batch, len], (Kind::Int64, Device::Cpu)))
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}
