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
use crate::quant::Quantization;
use crate::tokenizer::Tokenizer;

/// `config` with its routed experts to be quantized as `asked`: a checkpoint stored quantized loads only in
/// its own format.
fn quantized(mut config: Config, asked: Option<Quantization>, file: &Path) -> Result<Config> {
    match (config.quantization, asked) {
        (Some(stored), Some(asked)) if stored != asked => Err(Error::invalid(
            "quantize",
            asked,
            format!("{} stores its routed experts in {stored}: load it with quantize={stored} or without quantize", file.display()),
        )),
        (_, Some(asked)) if !config.has_moe() => {
            Err(Error::invalid("quantize", asked, format!("{} has no routed experts to quantize (a dense model)", file.display())))
        }
        (None, Some(asked)) => {
            config.quantization = Some(asked);
            Ok(config)
        }
        _ => Ok(config),
    }
}

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

/// Loads `dir` onto `device` in `dtype` (default: bf16 on CUDA, f32 on CPU); a `builtin:NAME` path loads
/// that embedded model, `random:SHAPE[:SEED]` a seeded random model of a named shape.
pub fn load(dir: &Path, device: Device, dtype: Option<DType>) -> Result<Loaded> {
    load_with(dir, device, dtype, None)
}

/// [`load`] with the routed experts quantized as `quantize` ([`crate::quant`]); `None` keeps them as the
/// checkpoint stores them (quantized only if dllm saved it quantized).
pub fn load_with(dir: &Path, device: Device, dtype: Option<DType>, quantize: Option<Quantization>) -> Result<Loaded> {
    if is_builtin(dir) {
        return load_embedded_with(&dir.to_string_lossy(), device, dtype, quantize);
    }
    if let Some(spec) = dir.to_str().and_then(|s| s.strip_prefix(RANDOM)) {
        return load_random(spec, device, dtype, quantize);
    }
    let start = Instant::now();
    if !dir.is_dir() {
        return Err(Error::io(dir, std::io::Error::new(std::io::ErrorKind::NotFound, "not a checkpoint folder")));
    }
    let dtype = dtype.unwrap_or_else(|| DType::default_for(device));
    let config = quantized(Config::from_file(&dir.join("config.json"))?, quantize, &dir.join("config.json"))?;
    let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json"), &config)?;
    // Before the weights: a broken template fails the load at once, not after minutes of reading tensors.
    let template = ChatTemplate::from_dir(dir, tokenizer.special_tokens())?;
    let tokenizer = tokenizer.with_chat_template(template);
    let mut ckpt = Checkpoint::open(dir, device, dtype)?;
    let checkpoint_bytes = ckpt.data_bytes();
    let model = Model::build(&config, &mut ckpt, device, dtype)?;
    release_heap(&config);
    Ok(Loaded { model, tokenizer, dir: dir.to_path_buf(), checkpoint_bytes, load_time: start.elapsed() })
}

/// Quantizing while loading frees one expert's full-precision temporaries after another; glibc keeps such
/// freed heap memory in the process (measured: 43 MB of 170 MB after loading a random `mid` in int8), so it is
/// handed back to the system once the model is built.
fn release_heap(config: &Config) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if config.quantization.is_some() {
        // SAFETY: malloc_trim only returns free heap pages to the kernel; it touches no live allocation.
        unsafe { libc::malloc_trim(0) };
    }
}

/// The name the built-in default model goes by.
pub const BUILTIN: &str = "builtin:tiny";

/// The models compiled into the binary: (name, what it is). Any of these names loads wherever a checkpoint
/// folder is accepted (`--model builtin:tiny-2.2`, `load builtin:tiny-2.2`).
pub const BUILTINS: &[(&str, &str)] = &[
    ("builtin:tiny", "LLaDA2.1 tiny (1.76M parameters), trained by `dllm train --preset tiny` on the five 2.1 tasks"),
    (
        "builtin:tiny-2.2",
        "LLaDA2.2 tiny (block routing, DELETE / SPLIT), trained by `dllm train --preset tiny-2.2` on all eight tasks with Levenshtein T2T",
    ),
];

/// Bytes with the alignment of a mapped file, so the embedded safetensors can be read in place.
#[repr(C, align(64))]
struct Aligned<B: ?Sized>(B);

/// One embedded checkpoint: config.json, tokenizer.json, model.safetensors.
struct Embedded {
    config: &'static str,
    tokenizer: &'static [u8],
    weights: &'static [u8],
}

static TINY_WEIGHTS: &Aligned<[u8]> = &Aligned(*include_bytes!("../assets/tiny/model.safetensors"));
static TINY22_WEIGHTS: &Aligned<[u8]> = &Aligned(*include_bytes!("../assets/tiny-2.2/model.safetensors"));

fn embedded(name: &str) -> Option<Embedded> {
    match name {
        "builtin:tiny" => Some(Embedded {
            config: include_str!("../assets/tiny/config.json"),
            tokenizer: include_bytes!("../assets/tiny/tokenizer.json"),
            weights: &TINY_WEIGHTS.0,
        }),
        "builtin:tiny-2.2" => Some(Embedded {
            config: include_str!("../assets/tiny-2.2/config.json"),
            tokenizer: include_bytes!("../assets/tiny-2.2/tokenizer.json"),
            weights: &TINY22_WEIGHTS.0,
        }),
        _ => None,
    }
}

/// The prefix of a seeded random model of a named shape: `random:mid`, `random:llada2.2-mini:7` (seed 7).
pub const RANDOM: &str = "random:";

/// `random:SHAPE[:SEED]`: a model of a named shape ([`crate::shapes`]) with seeded N(0, 0.02) weights and
/// the shape's tokenizer, built in memory (nothing is read or written): to try shapes, memory and speed
/// without a checkpoint. Its outputs are noise.
fn load_random(spec: &str, device: Device, dtype: Option<DType>, quantize: Option<Quantization>) -> Result<Loaded> {
    let start = Instant::now();
    let (name, seed) = match spec.rsplit_once(':') {
        Some((n, s)) => (n, s.parse::<u64>().map_err(|_| Error::invalid("random model seed", s, "expected random:SHAPE or random:SHAPE:SEED with a whole-number seed"))?),
        None => (spec, 0),
    };
    let path = PathBuf::from(format!("{RANDOM}{spec}"));
    let config = quantized(crate::shapes::shape(name)?, quantize, &path)?;
    let dtype = dtype.unwrap_or_else(|| DType::default_for(device));
    let tok = serde_json::to_vec(&crate::shapes::tokenizer_spec_for(&config).to_json()).expect("json");
    let tokenizer = Tokenizer::from_bytes(&tok, &path, &config)?;
    let mut init = crate::weights::RandomInit::new(seed, 0.02, device, dtype);
    let model = Model::build(&config, &mut init, device, dtype)?;
    Ok(Loaded { model, tokenizer, dir: path, checkpoint_bytes: 0, load_time: start.elapsed() })
}

/// Whether `path` names an embedded model (`builtin:...`) rather than a folder.
pub fn is_builtin(path: &Path) -> bool {
    path.to_str().is_some_and(|s| s.starts_with("builtin:"))
}

/// The embedded default model ([`BUILTIN`]).
pub fn load_builtin(device: Device, dtype: Option<DType>) -> Result<Loaded> {
    load_embedded(BUILTIN, device, dtype)
}

/// An embedded model by name (one of [`BUILTINS`]), compiled into the binary so it loads from any directory
/// (`make model` rebuilds engine/assets/). They have no template file: they chat in the built-in Ling format
/// they were trained on.
pub fn load_embedded(name: &str, device: Device, dtype: Option<DType>) -> Result<Loaded> {
    load_embedded_with(name, device, dtype, None)
}

fn load_embedded_with(name: &str, device: Device, dtype: Option<DType>, quantize: Option<Quantization>) -> Result<Loaded> {
    let start = Instant::now();
    let e = embedded(name).ok_or_else(|| {
        let names: Vec<&str> = BUILTINS.iter().map(|b| b.0).collect();
        Error::invalid("embedded model", name, format!("known: {}", names.join(", ")))
    })?;
    let dtype = dtype.unwrap_or_else(|| DType::default_for(device));
    let path = Path::new(name);
    let config = quantized(Config::from_json(e.config).map_err(|err| err.in_file(path))?, quantize, path)?;
    let tokenizer = Tokenizer::from_bytes(e.tokenizer, path, &config)?;
    let mut ckpt = Checkpoint::from_static(path, e.weights, device, dtype)?;
    let checkpoint_bytes = ckpt.data_bytes();
    let model = Model::build(&config, &mut ckpt, device, dtype)?;
    release_heap(&config);
    Ok(Loaded { model, tokenizer, dir: PathBuf::from(name), checkpoint_bytes, load_time: start.elapsed() })
}
