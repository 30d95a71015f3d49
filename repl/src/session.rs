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

use dllm_engine::decode::{DecodeSettings, Decoder, Event, LevStep, StepReport, WriteKind};
use dllm_engine::fp8_matmul::Fp8MatmulChoice;
use dllm_engine::{DType, Loaded, Quantization};

use crate::commands::{self, Command};
use crate::parse;
use crate::rl_cmd::RlState;
use crate::value::{Canvas, CanvasCell, CellKind, Removed, RemovedWhy, Value};

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
    /// Routed experts quantized on load: `int8`, `fp8` or `none` ([`dllm_engine::quant`]).
    pub quantize: Option<String>,
    /// How fp8 experts multiply: `auto`, `dequantize`, `scaled` or `emulated` ([`dllm_engine::fp8_matmul`]).
    pub fp8_matmul: Option<String>,
}

impl Default for ModelSource {
    fn default() -> Self {
        ModelSource { dir: None, device: "auto".into(), dtype: None, quantize: None, fp8_matmul: None }
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
        let quantize = Quantization::parse_option(self.quantize.as_deref()).map_err(|e| e.to_string())?;
        let dir = self.dir.clone().unwrap_or_else(|| PathBuf::from(dllm_engine::BUILTIN));
        let fp8 = self.fp8_matmul.as_deref().map(str::parse::<Fp8MatmulChoice>).transpose().map_err(|e| e.to_string())?;
        let mut loaded = dllm_engine::load_with(&dir, device, dtype, quantize).map_err(|e| e.to_string())?;
        if let Some(choice) = fp8 {
            loaded.model.set_fp8_matmul(choice).map_err(|e| e.to_string())?;
        }
        small_model_threads(&loaded);
        Ok(loaded)
    }
}

/// Models below this many parameters run on one CPU thread (see [`small_model_threads`]).
const SMALL_MODEL: i64 = 20_000_000;

/// libtorch's OpenMP threads spin while they wait, and on a shared machine that collapses: a forward of the
/// embedded model took 1.35 s at two threads with a training run on the other core, against 6 ms at one thread
/// (docs/performance.md). For a model this small one thread costs little on a quiet machine, so a session on
/// the CPU uses one, unless `OMP_NUM_THREADS` chooses; loading a larger model afterwards restores libtorch's
/// own count.
fn small_model_threads(l: &Loaded) {
    static DEFAULT: std::sync::OnceLock<i32> = std::sync::OnceLock::new();
    if std::env::var_os("OMP_NUM_THREADS").is_some() {
        return;
    }
    let default = *DEFAULT.get_or_init(tch::get_num_threads);
    let small = l.model.device() == tch::Device::Cpu && l.model.num_parameters() < SMALL_MODEL;
    tch::set_num_threads(if small { 1 } else { default });
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
    /// The user chose decoding rules (`preset`, or `set` of a setting presets decide): loading a LLaDA2.2
    /// model then leaves them alone instead of applying the `llada2.2` preset.
    pub(crate) settings_chosen: bool,
    /// What the background load did to the settings (`adopt_model_defaults`), told by the next command.
    load_note: Option<String>,
    /// RL configuration, run and snapshots (`rl ...`).
    pub(crate) rl: RlState,
    /// Fine-tuning on a JSONL file (`train ...`).
    pub(crate) train: crate::finetune::TrainState,
    interrupt: Arc<AtomicBool>,
    /// Nesting of `execute` (a `source` script runs commands inside a command).
    depth: usize,
}

impl Session {
    /// A session whose model starts loading in the background now; the first command that needs it waits.
    pub fn new(source: ModelSource) -> Session {
        // The session's own reward kinds (they do IO the engine does not).
        crate::reward_command::reward_kinds();
        let src = source.clone();
        let handle = std::thread::spawn(move || src.load());
        Session {
            model: ModelSlot::Loading(handle),
            source,
            settings: default_settings(),
            settings_chosen: false,
            load_note: None,
            prompt: None,
            branches: BTreeMap::new(),
            current: "main".into(),
            breakpoints: Vec::new(),
            next_break_id: 1,
            watches: Vec::new(),
            rl: RlState::default(),
            train: Default::default(),
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
                Ok(Ok(l)) => {
                    // Again on this thread: OpenMP thread counts are per thread.
                    small_model_threads(&l);
                    ModelSlot::Ready(Box::new(l))
                }
                Ok(Err(e)) => ModelSlot::Failed(e),
                Err(_) => ModelSlot::Failed("the loader thread panicked".into()),
            };
            // No decode can exist yet (every decode waits for the model), so only the settings change.
            self.load_note = self.adopt_model_defaults();
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

    /// Takes the resident model out of the session (fine-tuning owns it during `train N`); the session has no
    /// model until [`Session::put_loaded`] gives it back.
    pub(crate) fn take_loaded(&mut self) -> Result<Loaded, CommandError> {
        self.model()?;
        match std::mem::replace(&mut self.model, ModelSlot::Failed("the model was lost while it trained".into())) {
            ModelSlot::Ready(l) => Ok(*l),
            _ => unreachable!("model() succeeded"),
        }
    }

    /// Gives back the model [`Session::take_loaded`] took.
    pub(crate) fn put_loaded(&mut self, l: Loaded) {
        self.model = ModelSlot::Ready(Box::new(l));
    }

    /// The model and the RL run together (an update reads one and changes the other).
    pub(crate) fn model_and_rl(&mut self) -> Result<(&Loaded, &mut dllm_engine::rl::Rl), CommandError> {
        self.model()?;
        let ModelSlot::Ready(l) = &self.model else { unreachable!("model() succeeded") };
        let run = self.rl.run.as_mut().ok_or_else(|| CommandError::Failed("no RL run: `rl update` starts one".into()))?;
        Ok((l, run))
    }

    /// Replaces the model (loaded in the foreground); the old one stays if this fails. Branches are dropped
    /// because their tokens belong to the old vocabulary. Returns a note when the model's kind changed the
    /// settings (see `adopt_model_defaults`).
    pub(crate) fn replace_model(&mut self, source: ModelSource) -> Result<Option<String>, CommandError> {
        let loaded = source.load().map_err(CommandError::Failed)?;
        self.model = ModelSlot::Ready(Box::new(loaded));
        self.source = source;
        self.rl.reset();
        self.train.run = None;
        self.branches.clear();
        self.prompt = None;
        self.current = "main".into();
        Ok(self.adopt_model_defaults())
    }

    /// Unless the user chose decoding rules, a model with DELETE / SPLIT tokens (LLaDA2.2) decodes with the
    /// `llada2.2` preset (what it was trained for; substitution alone would never use its edit operations).
    /// A model without them cannot decode Levenshtein settings at all: the default rules come back if
    /// `llada2.2` was applied this way, else only `edit_ops` goes back to `substitute`. Layout, seed and
    /// sampling settings (which presets leave alone) are kept. Returns what it did.
    fn adopt_model_defaults(&mut self) -> Option<String> {
        let ModelSlot::Ready(l) = &self.model else { return None };
        let lev = self.settings.edit_ops == dllm_engine::decode::EditOps::Levenshtein;
        let ids = l.model.config().delete_token_id.zip(l.model.config().split_token_id);
        match ids {
            Some((del, split)) if !lev && !self.settings_chosen => {
                self.settings.apply_preset("llada2.2").ok()?;
                Some(format!(
                    "this model has DELETE / SPLIT tokens ({del} / {split}, LLaDA2.2): preset llada2.2 applied (Levenshtein editing); `preset S` decodes by substitution only"
                ))
            }
            None if lev && !self.settings_chosen => {
                let mut d = default_settings();
                (d.gen_length, d.block_length, d.seed) = (self.settings.gen_length, self.settings.block_length, self.settings.seed);
                (d.temperature, d.top_k, d.top_p) = (self.settings.temperature, self.settings.top_k, self.settings.top_p);
                self.settings = d;
                Some("this model has no DELETE / SPLIT tokens: back to the default (substitution) rules".into())
            }
            None if lev => {
                self.settings.edit_ops = dllm_engine::decode::EditOps::Substitute;
                Some("this model has no DELETE / SPLIT tokens: edit_ops set to substitute (your other settings are kept)".into())
            }
            _ => None,
        }
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
        let mut args = parse::Args::new(rest).map_err(|m| CommandError::Usage { message: m, usage: cmd.usage() })?;
        crate::grammar::parse(&cmd.syntax, &mut args).map_err(|m| CommandError::Usage { message: m, usage: cmd.usage() })?;
        if cmd.needs_model {
            self.model()?;
        }
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
        let result = match (result, self.load_note.take()) {
            (Ok(mut v), Some(note)) => {
                v.insert(0, Value::Message { text: note });
                Ok(v)
            }
            (r, note) => {
                self.load_note = note;
                r
            }
        };
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

    /// Whether running `line` waits for the model still loading in the background (so a front-end shows that it
    /// is loading): its command needs the model, or it runs a script with a line that does.
    pub fn waits_for_model(line: &str) -> bool {
        let (word, rest) = parse::split_command(line);
        let Some(c) = commands::find(word) else { return false };
        if c.needs_model {
            return true;
        }
        if c.name != "source" {
            return false;
        }
        let file = parse::Args::new(rest).ok().and_then(|a| a.words.into_iter().next());
        let text = file.and_then(|f| std::fs::read_to_string(f).ok()).unwrap_or_default();
        crate::script::script_items(&text).iter().any(|i| commands::find(parse::split_command(&i.command).0).is_some_and(|c| c.needs_model))
    }

    pub fn branch_names(&self) -> Vec<String> {
        self.branches.keys().cloned().collect()
    }

    /// The current branch's decoder: its canvas, cursor, reports, `top_k_at`, statistics.
    pub fn decoder(&self) -> Result<&Decoder, CommandError> {
        self.branches
            .get(&self.current)
            .ok_or_else(|| CommandError::Failed("no decode yet: set a prompt with `prompt TEXT` or `chat TEXT`".into()))
    }

    /// The current branch's decoder, to edit by hand (`set_tokens`, `remask`, `rewind`).
    pub fn decoder_mut(&mut self) -> Result<&mut Decoder, CommandError> {
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
                stop = Some("interrupted: the decoder is between steps and consistent".to_string());
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
                    .map(|b| format!("breakpoint {} ({})", b.id, b.event))
                    .collect()
            } else {
                Vec::new()
            };
            if let Some(hook) = &args.progress {
                let r = &r;
                let lev = match &r.lev {
                    Some(l) => format!(", {} deleted, {} inserted, {} cut", l.deleted.len(), l.split.len(), l.truncated.len()),
                    None => String::new(),
                };
                let text = format!(
                    "step {}: block {}, |Gamma| {}, |Delta| {}{lev}, {} masks left in the block, TPF {:.2}",
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

/// The settings a session starts with: the official LLaDA2.1 rules, 32 tokens in blocks of 8.
fn default_settings() -> DecodeSettings {
    let mut settings = DecodeSettings::official(32);
    settings.block_length = 8;
    settings
}

/// The canvas of `d` as a value, with its last step's Gamma/Delta marked (see [`mark_cells`]).
pub(crate) fn canvas_of(d: &Decoder, tok: &dllm_engine::Tokenizer, title: &str) -> Value {
    let end = (d.prompt_len() + d.settings.gen_length).min(d.canvas().len() as i64);
    let tokens = &d.canvas()[..end as usize];
    let text = |t: i64| tok.token_text(t);
    let (marks, removed) = mark_cells(tokens, d.prompt_len(), d.mask_id(), d.reports().last(), &text);
    let cells = marks
        .into_iter()
        .enumerate()
        .map(|(i, (kind, moved_from))| {
            let (pos, id) = (i as i64, tokens[i]);
            let (top, cur) = match d.top_k_at(pos, 3) {
                Some((top, cur)) => (top.into_iter().map(|(t, p)| (tok.token_text(t), p)).collect(), Some(cur)),
                None => (Vec::new(), None),
            };
            CanvasCell { pos, id, text: tok.token_text(id), kind, p: if pos < d.prompt_len() { None } else { cur }, top, moved_from }
        })
        .collect();
    Value::Canvas(Canvas {
        title: title.into(),
        block_length: d.settings.block_length,
        current_block: d.cursor().block,
        cells,
        low_confidence: 0.5,
        removed,
        fold: true,
    })
}

/// Each position's status after the step `last` (and where a Levenshtein edit moved it from), and what that
/// step removed. A Levenshtein report's positions are step-start positions: they are mapped through its slot
/// map, SPLIT's masks and the tail padding are marked, and DELETE's slots and the cut tail are listed.
pub(crate) fn mark_cells(
    tokens: &[i64],
    prompt_len: i64,
    mask: i64,
    last: Option<&StepReport>,
    text: &dyn Fn(i64) -> String,
) -> (Vec<(CellKind, Option<i64>)>, Vec<Removed>) {
    let lev = last.and_then(|r| r.lev.as_ref());
    // Post-step position -> step-start position, over the Levenshtein step's block.
    let lev_span = lev.map(|l| l.start..l.start + l.slots.len() as i64);
    let mut source = std::collections::HashMap::new();
    if let Some(l) = lev {
        for (i, to) in l.slots.iter().enumerate() {
            if let Some(j) = to {
                source.insert(*j, l.start + i as i64);
            }
        }
    }
    let in_lev = |pos: i64| lev_span.as_ref().is_some_and(|r| r.contains(&pos));
    let mut marks = Vec::with_capacity(tokens.len());
    for (pos, &id) in (0..).zip(tokens) {
        let slot = if in_lev(pos) { source.get(&pos).copied() } else { Some(pos) };
        let kind = if pos < prompt_len {
            CellKind::Prompt
        } else if id == mask {
            if lev.is_some_and(|l| l.inserted.contains(&pos)) {
                CellKind::Inserted
            } else if in_lev(pos) && slot.is_none() {
                CellKind::Padded
            } else {
                CellKind::Mask
            }
        } else {
            // Only token writes mark a cell; a DELETE / SPLIT write shows as a removal / an inserted mask.
            let here = |i: i64| slot == Some(i);
            let edit = last.and_then(|r| r.delta.iter().find(|e| e.kind == WriteKind::Token && here(e.pos)));
            match edit {
                Some(e) => CellKind::Edited { old: text(e.old) },
                None if last.is_some_and(|r| r.gamma.iter().any(|u| u.kind == WriteKind::Token && here(u.pos))) => CellKind::Unmasked,
                None => CellKind::Token,
            }
        };
        marks.push((kind, slot.filter(|&i| i != pos)));
    }
    let removed = match (lev, last) {
        (Some(l), Some(r)) => removed_by(l, r, mask, text),
        _ => Vec::new(),
    };
    (marks, removed)
}

/// What a Levenshtein step took off the canvas: deleted slots (drawn where they stood, before the first token
/// that followed them) and tokens cut off the tail (drawn after the block's end).
fn removed_by(l: &LevStep, r: &StepReport, mask: i64, text: &dyn Fn(i64) -> String) -> Vec<Removed> {
    let mut out = Vec::new();
    // Walk the step-start slots as `apply_edits` does: a kept slot takes one position, a split one two.
    let mut next = l.start;
    for i in 0..l.slots.len() as i64 {
        let pos = l.start + i;
        if l.deleted.contains(&pos) {
            // The slot held a token (Delta) or a mask (Gamma) at the step start.
            let id = r.delta.iter().find(|e| e.pos == pos).map(|e| e.old).unwrap_or(mask);
            out.push(Removed { pos, id, text: text(id), mask: id == mask, why: RemovedWhy::Deleted, before: next });
        } else {
            next += if l.split.contains(&pos) { 2 } else { 1 };
        }
    }
    let end = l.start + l.slots.len() as i64;
    for &(pos, id) in &l.truncated {
        out.push(Removed { pos, id, text: text(id), mask: id == mask, why: RemovedWhy::Truncated, before: end });
    }
    out
}
