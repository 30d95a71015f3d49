//! The engine's error type. Every variant names what was wrong (file, tensor, field) and, where it helps,
//! what was expected, so a long-lived session can report it and go on.

use std::path::{Path, PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The io error is part of the message, not a `source`: error chains would print it twice.
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },

    #[error("{}{}{message}", file.as_ref().map(|f| format!("{}: ", f.display())).unwrap_or_default(),
            if field.is_empty() { String::new() } else { format!("field `{field}`: ") })]
    /// `field` is empty when the file is not valid JSON at all.
    Config { file: Option<PathBuf>, field: String, message: String },

    #[error("{}: not a valid safetensors file: {message}", file.display())]
    CorruptFile { file: PathBuf, message: String },

    #[error("{}: tensor `{tensor}` is missing (the model needs it{})", file.display(),
            shape.as_ref().map(|s| format!(" with shape {s:?}")).unwrap_or_default())]
    MissingTensor { file: PathBuf, tensor: String, shape: Option<Vec<i64>> },

    #[error("{}: unexpected tensor `{tensor}` (the model has no such parameter; is config.json from another model?)", file.display())]
    ExtraTensor { file: PathBuf, tensor: String },

    #[error("{}: tensor `{tensor}` has shape {found:?}, expected {expected:?}", file.display())]
    ShapeMismatch { file: PathBuf, tensor: String, expected: Vec<i64>, found: Vec<i64> },

    #[error("{}: tensor `{tensor}` has dtype {dtype}, expected F32, F16 or BF16", file.display())]
    UnsupportedDtype { file: PathBuf, tensor: String, dtype: String },

    #[error("{}: {message}", file.display())]
    Index { file: PathBuf, message: String },

    #[error("tokenizer {}: {message}", file.display())]
    Tokenizer { file: PathBuf, message: String },

    #[error("chat template {}{}{}: {message}", file.display(),
            if field.is_empty() { String::new() } else { format!(" field `{field}`") },
            line.map(|l| format!(", line {l}")).unwrap_or_default())]
    /// A template that does not compile or fails to render. `field` is set when the template is a string inside
    /// a JSON file; `line` then counts within that string.
    Template { file: PathBuf, field: String, line: Option<usize>, message: String },

    #[error("invalid {what} {value:?}: {message}")]
    Invalid { what: &'static str, value: String, message: String },

    /// Lines of a training data file that cannot be used, each `line N: what is wrong`.
    #[error("{}: {} bad line{}:\n  {}{}", file.display(), errors.len(), if errors.len() == 1 { "" } else { "s" },
            errors.iter().take(20).cloned().collect::<Vec<_>>().join("\n  "),
            if errors.len() > 20 { format!("\n  ... and {} more", errors.len() - 20) } else { String::new() })]
    Data { file: PathBuf, errors: Vec<String> },

    /// A request whose estimated memory exceeds what the device has ([`crate::memory`]), refused before
    /// anything was allocated; `hint` says how to ask for less.
    #[error("{what} needs about {} of memory; {} {budget}: nothing was allocated; {hint}", crate::memory::human(*needed), crate::memory::human(*free))]
    OutOfMemory { what: String, needed: u64, free: u64, budget: &'static str, hint: String },

    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),

    /// A long operation saw its interrupt flag between two pieces of work and stopped; `what` says what was
    /// left as it was.
    #[error("interrupted: {0}")]
    Interrupted(String),
}

impl Error {
    pub fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io { path: path.to_path_buf(), error: source }
    }

    /// Attaches the file a config error came from.
    pub(crate) fn in_file(self, path: &Path) -> Error {
        match self {
            Error::Config { file: None, field, message } => Error::Config { file: Some(path.to_path_buf()), field, message },
            other => other,
        }
    }

    /// An invalid value: `what` it is, the value, and what is wrong (what to do).
    pub fn invalid(what: &'static str, value: impl ToString, message: impl ToString) -> Error {
        Error::Invalid { what, value: value.to_string(), message: message.to_string() }
    }
}
