//! The `Session`: one resident model, named decoder branches, the settings for new decodes, breakpoints and
//! watches. Front-ends (terminal, Jupyter kernel) hand it command lines; it answers with typed values.
//!
//! Invariant: a command that fails changes nothing (handlers validate before they mutate; the decoder's own
//! steps are atomic), and a panic inside a command is caught and reported.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use dllm_engine::decode::{DecodeSettings, Decoder, Event, StepReport};
use dllm_engine::{DType, Loaded};

use crate::commands::{self, Command};
use crate::parse;
use crate::research::RlState;
use crate::value::{Canvas, CanvasCell, CellKind, Value};

/// Why a command failed. The session is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("unknown command `{name}`{}", suggest(.suggestions))]
    Unknown { name: String, suggestions: Vec<String> },
    #[error("{message}\nusage: {usage}")]
    Usage { message: String, usage: String },
    #[error("{0}")]
    Failed(String),
    #[error("interrupted")]
    Interrupted,
}

fn suggest(s: &[String]) -> String {
    if s.is_empty() {
        "; `help` lists the commands".into()
    } else {
        format!("; did you mean {}?", s.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(" or "))
    }
}

impl From<dllm_engine::Error> for CommandError {
    fn from(e: dllm_engine::Error) -> Self {
        CommandError::Failed(e.to_string())
    }
}

pub type CmdResult = Result<Vec<Value>, CommandError>;

/// Where the session's model comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSource {
    /// A checkpoint folder; `None` is the embedded default model.
    pub dir: Option<PathBuf>,
    pub device: String,
    pub dtype: Option<String>,
}

impl Default for ModelSource {
    fn default() -> Self {
        ModelSource { dir: None, device: "auto".into(), dtype: None }
    }
}

impl ModelSource {
    pub fn load(&self) -> Result<Loaded, String> {
        let device = match self.device.as_str() {
            "auto" if dllm_engine::cuda_device_count() > 0 => tch::Device::Cuda(0),
            "auto" => tch::Device::Cpu,
            d => dllm_engine::parse_device(d).map_err(|e| e.to_string())?,
        };
        let dtype = self.dtype.as_deref().map(str::parse::<DType>).transpose().map_err(|e| e.to_string())?;
        match &self.dir {
            Some(dir) => dllm_engine::load(dir, device, dtype).map_err(|e| e.to_string()),
            None => dllm_engine::load_builtin(device, dtype).map_err(|e| e.to_string()),
        }
    }
}

enum ModelSlot {
    Loading(JoinHandle<Result<Loaded, String>>),
    Ready(Box<Loaded>),
    Failed(String),
}

/// A breakpoint: stop `continue` when its event fires.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Breakpoint {
    pub id: usize,
    pub event: Event,
}

pub struct Session {
    model: ModelSlot,
    pub(crate) source: ModelSource,
    /// Settings for new decodes; `set` also applies them to the current branch from its next step.
    pub(crate) settings: DecodeSettings,
    pub(crate) prompt: Option<Vec<i64>>,
    pub(crate) branches: BTreeMap<String, Decoder>,
    pub(crate) current: String,
    pub(crate) breakpoints: Vec<Breakpoint>,
    pub(crate) next_break_id: usize,
    pub(crate) watches: Vec<i64>,
    /// RL configuration, run and snapshots (`rl ...`).
    pub(crate) rl: RlState,
    interrupt: Arc<AtomicBool>,
    /// Nesting of `execute` (a `source` script runs commands inside a command).
    depth: usize,
}

impl Session {
    /// A session whose model starts loading in the background now; the first command that needs it waits.
    pub fn new(source: ModelSource) -> Session {
        let src = source.clone();
        let handle = std::thread::spawn(move || src.load());
        let mut settings = DecodeSettings::official(32);
        settings.block_length = 8;
        Session {
            model: ModelSlot::Loading(handle),
            source,
            settings,
            prompt: None,
            branches: BTreeMap::new(),
            current: "main".into(),
            breakpoints: Vec::new(),
            next_break_id: 1,
            watches: Vec::new(),
            rl: RlState::default(),
            interrupt: Arc::new(AtomicBool::new(false)),
            depth: 0,
        }
    }

    /// Set from another thread (Ctrl-C, a kernel's interrupt_request) to stop a long command between steps.
    pub fn interrupt_flag(&self) -> Arc<AtomicBool> {
        self.interrupt.clone()
    }

    /// Whether the model has finished loading (successfully or not).
    pub fn model_ready(&self) -> bool {
        match &self.model {
            ModelSlot::Loading(h) => h.is_finished(),
            _ => true,
        }
    }

    /// The resident model, waiting for the background load if needed.
    pub fn model(&mut self) -> Result<&Loaded, CommandError> {
        if let ModelSlot::Loading(_) = &self.model {
            let ModelSlot::Loading(h) = std::mem::replace(&mut self.model, ModelSlot::Failed(String::new())) else { unreachable!() };
            self.model = match h.join() {
                Ok(Ok(l)) => ModelSlot::Ready(Box::new(l)),
                Ok(Err(e)) => ModelSlot::Failed(e),
                Err(_) => ModelSlot::Failed("the loader thread panicked".into()),
            };
        }
        match &self.model {
            ModelSlot::Ready(l) => Ok(l),
            ModelSlot::Failed(e) => Err(CommandError::Failed(format!("no model loaded ({e}); use `load PATH`"))),
            ModelSlot::Loading(_) => unreachable!(),
        }
    }

    /// The model once loaded (commands marked `needs_model` run only then); no waiting.
    pub(crate) fn ready(&self) -> Result<&Loaded, CommandError> {
        match &self.model {
            ModelSlot::Ready(l) => Ok(l),
            ModelSlot::Failed(e) => Err(CommandError::Failed(format!("no model loaded ({e}); use `load PATH`"))),
            ModelSlot::Loading(_) => Err(CommandError::Failed("the model is still loading".into())),
        }
    }

    /// The resident model, mutable (LoRA adapters are attached and merged in place).
    pub(crate) fn model_mut(&mut self) -> Result<&mut Loaded, CommandError> {
        self.model()?;
        match &mut self.model {
            ModelSlot::Ready(l) => Ok(l),
            _ => unreachable!("model() succeeded"),
        }
    }

    /// The model and the RL run together (an update reads one and changes the other).
    pub(crate) fn model_and_rl(&mut self) -> Result<(&Loaded, &mut dllm_engine::rl::Rl), CommandError> {
        self.model()?;
        let ModelSlot::Ready(l) = &self.model else { unreachable!("model() succeeded") };
        let run = self.rl.run.as_mut().ok_or_else(|| CommandError::Failed("no RL run: `rl update` starts one".into()))?;
        Ok((l, run))
    }

    /// Replaces the model (loaded in the foreground); the old one stays if this fails. Branches are dropped
    /// because their tokens belong to the old vocabulary.
    pub(crate) fn replace_model(&mut self, source: ModelSource) -> Result<&Loaded, CommandError> {
        let loaded = source.load().map_err(CommandError::Failed)?;
        self.model = ModelSlot::Ready(Box::new(loaded));
        self.source = source;
        self.rl.reset();
        self.branches.clear();
        self.prompt = None;
        self.current = "main".into();
        self.model()
    }

    /// Runs one command line. Blank lines and `#` comments give nothing.
    pub fn execute(&mut self, line: &str) -> CmdResult {
        self.run_line(line, None)
    }

    /// Like `execute`, and long commands (`step N`, `run`, `continue`) call `progress` after every step with
    /// values showing where the decode is (a step summary and the canvas).
    pub fn execute_with_progress(&mut self, line: &str, progress: &mut dyn FnMut(&[Value])) -> CmdResult {
        self.run_line(line, Some(progress))
    }

    fn run_line(&mut self, line: &str, progress: Option<&mut dyn FnMut(&[Value])>) -> CmdResult {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return Ok(Vec::new());
        }
        let (name, rest) = parse::split_command(line);
        let Some(cmd) = commands::find(name) else {
            return Err(CommandError::Unknown { name: name.into(), suggestions: parse::nearest(name, commands::names()) });
        };
        if cmd.needs_model {
            self.model()?;
        }
        let mut args = parse::Args::new(rest).map_err(|m| CommandError::Usage { message: m, usage: cmd.usage.into() })?;
        args.progress = progress.map(std::cell::RefCell::new);
        self.depth += 1;
        let result = match std::panic::catch_unwind(AssertUnwindSafe(|| (cmd.run)(self, &args))) {
            Ok(r) => r,
            Err(p) => {
                let what = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
                Err(CommandError::Failed(format!("internal error in `{}`: {} (the session goes on)", cmd.name, what.unwrap_or_default())))
            }
        };
        self.depth -= 1;
        // An interrupt belongs to the command it arrived during: clear it once the outermost command ends (not
        // at the start, which would drop a Ctrl-C pressed just as a command began).
        if self.depth == 0 {
            self.interrupt.store(false, Ordering::SeqCst);
        }
        result
    }

    /// The command table (for help, completion and docs).
    pub fn commands() -> &'static [Command] {
        commands::TABLE
    }

    pub fn branch_names(&self) -> Vec<String> {
        self.branches.keys().cloned().collect()
    }

    pub(crate) fn decoder(&self) -> Result<&Decoder, CommandError> {
        self.branches
            .get(&self.current)
            .ok_or_else(|| CommandError::Failed("no decode yet: set a prompt with `prompt TEXT` or `chat TEXT`".into()))
    }

    pub(crate) fn decoder_mut(&mut self) -> Result<&mut Decoder, CommandError> {
        let current = self.current.clone();
        self.branches
            .get_mut(&current)
            .ok_or_else(|| CommandError::Failed("no decode yet: set a prompt with `prompt TEXT` or `chat TEXT`".into()))
    }

    /// Starts a fresh decode of `prompt` on the current branch with the session's settings.
    pub(crate) fn start_decode(&mut self, prompt: Vec<i64>) -> Result<(), CommandError> {
        let settings = self.settings.clone();
        let l = self.model()?;
        let d = Decoder::new(&prompt, settings, l.tokenizer.mask_id, l.tokenizer.eos_id, &l.model)?;
        self.branches.insert(self.current.clone(), d);
        self.prompt = Some(prompt);
        Ok(())
    }

    /// Runs up to `n` steps on the current branch, stopping early at a breakpoint (`stop_at_breaks`), at the
    /// end of the decode, or on interrupt. Returns the reports (annotated with texts) and what stopped it.
    pub(crate) fn advance(&mut self, n: usize, stop_at_breaks: bool, args: &parse::Args) -> Result<(Vec<StepReport>, Option<String>), CommandError> {
        self.model()?;
        let ModelSlot::Ready(l) = &self.model else { unreachable!() };
        let current = self.current.clone();
        let d = self
            .branches
            .get_mut(&current)
            .ok_or_else(|| CommandError::Failed("no decode yet: set a prompt with `prompt TEXT` or `chat TEXT`".into()))?;
        let mut out = Vec::new();
        let mut stop = None;
        for _ in 0..n {
            if self.interrupt.load(Ordering::SeqCst) {
                stop = Some("interrupted (Ctrl-C): the decoder is between steps and consistent".to_string());
                break;
            }
            let Some(mut r) = d.step(&l.model)? else {
                stop = Some("the decode has finished".into());
                break;
            };
            r.annotate(&l.tokenizer);
            let hit: Vec<String> = if stop_at_breaks {
                self.breakpoints
                    .iter()
                    .filter(|b| b.event.fires(&r, d, Some(&l.tokenizer)))
                    .map(|b| format!("breakpoint {} ({})", b.id, crate::commands::describe_event(&b.event)))
                    .collect()
            } else {
                Vec::new()
            };
            if let Some(hook) = &args.progress {
                let r = &r;
                let text = format!(
                    "step {}: block {}, |Gamma| {}, |Delta| {}, {} masks left in the block, TPF {:.2}",
                    r.step, r.block, r.gamma.len(), r.delta.len(), r.masks_left, r.tpf
                );
                let values = [Value::Message { text }, canvas_of(d, &l.tokenizer, "canvas")];
                (hook.borrow_mut())(&values);
            }
            out.push(r);
            if !hit.is_empty() {
                stop = Some(format!("stopped at step {}: {}", out.last().map(|r| r.step).unwrap_or(0), hit.join(", ")));
                break;
            }
        }
        Ok((out, stop))
    }

    /// The canvas of the current branch as a value, with the last step's Gamma/Delta marked.
    pub(crate) fn canvas_value(&mut self, title: &str) -> Result<Value, CommandError> {
        self.model()?;
        let ModelSlot::Ready(l) = &self.model else { unreachable!() };
        Ok(canvas_of(self.decoder()?, &l.tokenizer, title))
    }

    pub(crate) fn tokenizer(&self) -> Result<&dllm_engine::Tokenizer, CommandError> {
        Ok(&self.ready()?.tokenizer)
    }
}

/// The canvas of `d` as a value, with its last step's Gamma/Delta marked.
pub(crate) fn canvas_of(d: &Decoder, tok: &dllm_engine::Tokenizer, title: &str) -> Value {
    let last = d.reports().last().cloned();
    let (p, b) = (d.prompt_len(), d.settings.block_length);
    let end = (d.prompt_len() + d.settings.gen_length).min(d.canvas().len() as i64);
    let mut cells = Vec::with_capacity(end as usize);
    for pos in 0..end {
        let id = d.canvas()[pos as usize];
        let kind = if pos < p {
            CellKind::Prompt
        } else if id == d.mask_id() {
            CellKind::Mask
        } else if let Some(e) = last.as_ref().and_then(|r| r.delta.iter().find(|e| e.pos == pos)) {
            CellKind::Edited { old: tok.token_text(e.old) }
        } else if last.as_ref().is_some_and(|r| r.gamma.iter().any(|u| u.pos == pos)) {
            CellKind::Unmasked
        } else {
            CellKind::Token
        };
        let (top, cur) = match d.top_k_at(pos, 3) {
            Some((top, cur)) => (top.into_iter().map(|(t, p)| (tok.token_text(t), p)).collect(), Some(cur)),
            None => (Vec::new(), None),
        };
        cells.push(CanvasCell { pos, id, text: tok.token_text(id), kind, p: if pos < p { None } else { cur }, top });
    }
    Value::Canvas(Canvas {
        title: title.into(),
        block_length: b,
        current_block: d.cursor().block,
        cells,
        low_confidence: 0.5,
    })
}
