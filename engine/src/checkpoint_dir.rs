//! Loading a checkpoint folder as a whole: config.json, the weights, tokenizer.json.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tch::Device;

use crate::checkpoint::Checkpoint;
use crate::config::Config;
use crate::device::DType;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::tokenizer::Tokenizer;

/// A model resident on its device, its tokenizer, and where they came from.
#[derive(Debug)]
pub struct Loaded {
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub dir: PathBuf,
    /// Bytes of tensor data in the checkpoint files.
    pub checkpoint_bytes: usize,
    pub load_time: Duration,
}

/// Loads `dir` onto `device` in `dtype` (default: bf16 on CUDA, f32 on CPU).
pub fn load(dir: &Path, device: Device, dtype: Option<DType>) -> Result<Loaded> {
    let start = Instant::now();
    if !dir.is_dir() {
        return Err(Error::io(dir, std::io::Error::new(std::io::ErrorKind::NotFound, "not a checkpoint folder")));
    }
    let dtype = dtype.unwrap_or_else(|| DType::default_for(device));
    let config = Config::from_file(&dir.join("config.json"))?;
    let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json"), &config)?;
    let mut ckpt = Checkpoint::open(dir, device, dtype)?;
    let checkpoint_bytes = ckpt.data_bytes();
    let model = Model::build(&config, &mut ckpt, device, dtype)?;
    Ok(Loaded { model, tokenizer, dir: dir.to_path_buf(), checkpoint_bytes, load_time: start.elapsed() })
}

/// The name the built-in default model goes by.
pub const BUILTIN: &str = "builtin:tiny-random";

/// The embedded default model: the `tiny` preset with seed 0, UNTRAINED (random weights), built in memory.
/// It exercises every part of the architecture; it does not produce meaningful text.
pub fn load_builtin(device: Device, dtype: Option<DType>) -> Result<Loaded> {
    let start = Instant::now();
    let dtype = dtype.unwrap_or_else(|| DType::default_for(device));
    let config = crate::presets::preset("tiny")?;
    let tok_json = serde_json::to_vec(&crate::presets::tokenizer_spec(config.vocab_size).to_json()).expect("json");
    let tokenizer = Tokenizer::from_bytes(&tok_json, Path::new(BUILTIN), &config)?;
    let model = crate::presets::random_model(&config, 0, device, dtype)?;
    let checkpoint_bytes = model.weight_bytes();
    Ok(Loaded { model, tokenizer, dir: PathBuf::from(BUILTIN), checkpoint_bytes, load_time: start.elapsed() })
}
