//! dllm-engine: LLaDA2.x MoE diffusion language models on libtorch (tch).
//!
//! The model ([`Model`]) with its block-causal attention and KV cache, checkpoints in the official
//! safetensors layout ([`load`], [`checkpoint`]), the tokenizer and chat templates ([`Tokenizer`],
//! [`ChatTemplate`]), devices and dtypes, and named model shapes ([`shapes`]). No terminal or socket IO happens here.

mod chat_template;
mod checkpoint_dir;
pub mod checkpoint;
pub mod composite;
mod config;
pub mod decode;
pub mod edit_labels;
pub mod edit_likelihood;
pub mod edit_noise;
pub mod estimator_specs;
pub mod fp8_matmul;
pub mod eval;
pub mod likelihood;
pub mod rl;
mod device;
mod error;
pub mod lora;
pub mod memory;
pub mod quant;
mod model;
mod moe;
pub mod shapes;
pub mod tasks;
pub mod trainable;
pub mod train;
mod tokenizer;
mod weights;

pub use chat_template::{ChatTemplate, SpecialTokens};
pub use checkpoint_dir::{is_builtin, load, load_builtin, load_embedded, load_with, Loaded, BUILTIN, BUILTINS, RANDOM};
pub use quant::Quantization;
pub use config::{Config, RawConfig, RopeParameters};
pub use device::{cuda_device_count, cuda_status, load_cuda_backend, parse_device, DType};
pub use error::{Error, Result};
pub use model::{apply_rope, block_causal_mask, rms_norm, rope_tables, BlockMask, KvCache, MaskKind, Model};
pub use moe::{Router, RoutingGroups};
pub use tokenizer::{Role, Tokenizer, TokenizerSpec};
pub use weights::{with_global_seed, RandomInit, Role as WeightRole, WeightSource};
