//! Loading a checkpoint folder as a whole: config.json, the weights, tokenizer.json, and the chat template
//! (chat_template.jinja or tokenizer_config.json) if the checkpoint has one.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tch::Device;

use crate::chat_template::ChatTemplate;
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
    // Before the weights: a broken template fails the load at once, not after minutes of reading tensors.
    let template = ChatTemplate::from_dir(dir, tokenizer.special_tokens())?;
    let tokenizer = tokenizer.with_chat_template(template);
    let mut ckpt = Checkpoint::open(dir, device, dtype)?;
    let checkpoint_bytes = ckpt.data_bytes();
    let model = Model::build(&config, &mut ckpt, device, dtype)?;
    Ok(Loaded { model, tokenizer, dir: dir.to_path_buf(), checkpoint_bytes, load_time: start.elapsed() })
}

/// The name the built-in default model goes by.
pub const BUILTIN: &str = "builtin:tiny";

/// Bytes with the alignment of a mapped file, so the embedded safetensors can be read in place.
#[repr(C, align(64))]
struct Aligned<B: ?Sized>(B);

static EMBEDDED_CONFIG: &str = include_str!("../assets/tiny/config.json");
static EMBEDDED_TOKENIZER: &[u8] = include_bytes!("../assets/tiny/tokenizer.json");
static EMBEDDED_WEIGHTS: &Aligned<[u8]> = &Aligned(*include_bytes!("../assets/tiny/model.safetensors"));

/// The embedded default model: the `tiny` shape trained on the task suite by `dllm train --preset tiny`
/// (`make model` rebuilds engine/assets/tiny), compiled into the binary so it loads from any directory. It has
/// no template file: it chats in the built-in Ling format it was trained on.
pub fn load_builtin(device: Device, dtype: Option<DType>) -> Result<Loaded> {
    let start = Instant::now();
    let dtype = dtype.unwrap_or_else(|| DType::default_for(device));
    let name = Path::new(BUILTIN);
    let config = Config::from_json(EMBEDDED_CONFIG).map_err(|e| e.in_file(name))?;
    let tokenizer = Tokenizer::from_bytes(EMBEDDED_TOKENIZER, name, &config)?;
    let mut ckpt = Checkpoint::from_static(name, &EMBEDDED_WEIGHTS.0, device, dtype)?;
    let checkpoint_bytes = ckpt.data_bytes();
    let model = Model::build(&config, &mut ckpt, device, dtype)?;
    Ok(Loaded { model, tokenizer, dir: PathBuf::from(BUILTIN), checkpoint_bytes, load_time: start.elapsed() })
}
