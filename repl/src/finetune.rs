//! `train ...`: fine-tuning the resident model on a JSONL file from the session, the objective of `dllm train
//! --data` (docs/training.md) a few steps at a time, with the model decoding in between (`redecode`, `diff`).
//!
//! During `train N` the trainer owns the model ([`Session::take_loaded`]); between commands the session keeps
//! the rest of the run (optimiser moments, step, data) as a [`TrainerState`] and the model decodes as usual.
//! The learning rate is constant after a 20-step warm-up (no schedule end in an open-ended session), and MTF
//! is on from the first step.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use dllm_engine::rl::Trainable;
use dllm_engine::train::data::{self, DataOptions};
use dllm_engine::train::{DataConfig, StepMetrics, TrainConfig, Trainer, TrainerState};

use crate::grammar::{int, one, opt, sub, Kind, Syntax};
use crate::parse::Args;
use crate::research::{clear_caches, msg, save_policy};
use crate::session::{CmdResult, CommandError, Session};
use crate::value::{Table, Value};

/// The most steps one `train N` runs.
const MAX_STEPS: i64 = 1_000_000;

/// `train`'s subcommands and their arguments; a number alone is `train N`.
pub(crate) const SYNTAX: Syntax = Syntax::Subs {
    what: "train subcommand",
    subs: &[
        sub("show", &[], &[]),
        sub("data", &[], &[one("FILE", Kind::Path)]),
        sub("set", &[], &[one("NAME", Kind::TrainSetting), one("VALUE", Kind::Text)]),
        sub("eval", &[], &[opt("N", int(1, 10_000))]),
        sub("save", &[], &[one("DIR", Kind::Path)]),
        sub("reset", &[], &[]),
    ],
    default: Some("show"),
    otherwise: &[one("N", int(1, MAX_STEPS))],
};

/// The session's fine-tuning: the data file, the settings, and the run once started.
#[derive(Default)]
pub(crate) struct TrainState {
    file: Option<PathBuf>,
    settings: Settings,
    pub(crate) run: Option<TrainerState>,
    /// Metrics of the steps since the run started.
    history: Vec<StepMetrics>,
}

/// What `train set` changes.
#[derive(Debug, Clone, PartialEq)]
struct Settings {
    trainable: String,
    lr: f64,
    batch: usize,
    held_out: f64,
    max_response: usize,
    seed: u64,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings { trainable: "all".into(), lr: 1e-3, batch: 32, held_out: 0.1, max_response: 64, seed: 1 }
    }
}

impl Settings {
    /// Whether going from `self` to `other` needs a new run (another trainable set, split or seed).
    fn needs_new_run(&self, other: &Settings) -> bool {
        self.trainable != other.trainable || self.held_out != other.held_out || self.max_response != other.max_response || self.seed != other.seed
    }
}

/// The settings `train set` changes: (name, meaning).
pub(crate) const SETTINGS: &[(&str, &str)] = &[
    ("trainable", "all | lora:R[:ALPHA] | layers:A-B (a change starts a new run)"),
    ("lr", "AdamW learning rate, in (0, 1]"),
    ("batch", "examples per step, 1 to 4096"),
    ("held_out", "share of the lines held out, in [0, 1) (a change starts a new run)"),
    ("max_response", "most answer tokens with EOS (a change starts a new run)"),
    ("seed", "seed of the split, the batches and the noise (a change starts a new run)"),
];

pub(crate) fn train_cmd(s: &mut Session, a: &Args) -> CmdResult {
    match a.sub {
        Some("show") => Ok(vec![show(s)]),
        Some("data") => {
            let file = PathBuf::from(a.text("FILE").unwrap_or_default());
            let d = load_data(s, &file)?;
            let summary = format!("{}: {} examples for training, {} held out; `train N` trains", file.display(), d.train.len(), d.held_out.len());
            end_run(s)?;
            s.train.file = Some(file);
            Ok(vec![msg(summary)])
        }
        Some("set") => set(s, a),
        Some("eval") => eval(s, a.int("N").unwrap_or(100) as usize),
        Some("save") => {
            let dir = PathBuf::from(a.text("DIR").unwrap_or_default());
            let l = s.ready()?;
            save_policy(l, &dir)?;
            Ok(vec![msg(format!("wrote the fine-tuned model to {} (LoRA merged, the adapters alone in lora/); `load {}` reads it", dir.display(), dir.display()))])
        }
        Some("reset") => {
            let had = s.train.run.is_some();
            end_run(s)?;
            Ok(vec![msg(if had { "fine-tuning run dropped (weights stay as they are)" } else { "no fine-tuning run" })])
        }
        Some(other) => unreachable!("train {other} is in SYNTAX but has no handler"),
        None => steps(s, a.int("N").unwrap_or(1) as usize, a),
    }
}

/// Reads `file` with the resident tokenizer (every bad line is an error naming it).
fn load_data(s: &Session, file: &std::path::Path) -> Result<data::Dataset, CommandError> {
    let l = s.ready()?;
    let t = &s.train.settings;
    let options = DataOptions {
        held_out: t.held_out,
        max_response: t.max_response,
        max_positions: l.model.config().max_position_embeddings as usize,
        block: dllm_engine::tasks::BLOCK_LENGTH,
        seed: t.seed,
    };
    Ok(data::load(file, &l.tokenizer, options)?)
}

/// Ends the run: the weights stay as trained, every parameter trains again (and RL may select its own).
fn end_run(s: &mut Session) -> Result<(), CommandError> {
    if s.train.run.take().is_some() {
        let l = s.ready()?;
        dllm_engine::trainable::release(&l.model);
    }
    s.train.history.clear();
    Ok(())
}

fn set(s: &mut Session, a: &Args) -> CmdResult {
    let (name, v) = (a.text("NAME").unwrap_or_default(), a.text("VALUE").unwrap_or_default());
    let bad = |why: &str| CommandError::Failed(format!("train set {name} {v:?}: {why}"));
    let mut t = s.train.settings.clone();
    match name {
        "trainable" => t.trainable = Trainable::parse(v).map(|_| v.to_string())?,
        "lr" => t.lr = v.parse::<f64>().ok().filter(|x| x.is_finite() && *x > 0.0 && *x <= 1.0).ok_or_else(|| bad("must be a number in (0, 1]"))?,
        "batch" => t.batch = v.parse::<usize>().ok().filter(|b| (1..=4096).contains(b)).ok_or_else(|| bad("must be a whole number from 1 to 4096"))?,
        "held_out" => t.held_out = v.parse::<f64>().ok().filter(|x| (0.0..1.0).contains(x)).ok_or_else(|| bad("must be a number in [0, 1)"))?,
        "max_response" => t.max_response = v.parse::<usize>().ok().filter(|b| (1..=1 << 20).contains(b)).ok_or_else(|| bad("must be a whole number from 1 to 1048576"))?,
        "seed" => t.seed = v.parse::<u64>().map_err(|_| bad("must be a whole number"))?,
        _ => {
            let names: Vec<&str> = SETTINGS.iter().map(|s| s.0).collect();
            return Err(bad(&format!("unknown setting; known: {}", names.join(", "))));
        }
    }
    let new_run = s.train.settings.needs_new_run(&t) && s.train.run.is_some();
    if new_run {
        end_run(s)?;
    } else if let Some(run) = s.train.run.as_mut() {
        let wd = run.cfg().weight_decay;
        run.set_rates(t.lr, wd, t.batch);
    }
    s.train.settings = t;
    Ok(vec![msg(format!("train {name} = {v}{}", if new_run { " (the run ends; a new one starts at the next `train N`)" } else { "" }))])
}

fn show(s: &Session) -> Value {
    let t = &s.train.settings;
    let value = |name: &str| match name {
        "trainable" => t.trainable.clone(),
        "lr" => t.lr.to_string(),
        "batch" => t.batch.to_string(),
        "held_out" => t.held_out.to_string(),
        "max_response" => t.max_response.to_string(),
        _ => t.seed.to_string(),
    };
    let mut rows: Vec<Vec<crate::value::Cell>> = vec![vec!["data".into(), s.train.file.as_ref().map_or("-".into(), |f| f.display().to_string()).into(), "`train data FILE` (JSONL)".into()]];
    rows.extend(SETTINGS.iter().map(|(n, m)| vec![(*n).into(), value(n).into(), (*m).into()]));
    let run = match &s.train.run {
        Some(r) => format!("step {}, {} parameters trained", r.step(), r.trainable_parameters()),
        None => "not started (`train N` starts one)".into(),
    };
    rows.push(vec!["run".into(), run.into(), "".into()]);
    Value::Table(Table { title: "fine-tuning (`train set NAME VALUE`)".into(), columns: ["setting", "value", "meaning"].map(String::from).to_vec(), rows })
}

/// Runs `f` on a trainer holding the resident model (the run's, or a new one), then gives the model back to
/// the session and keeps the rest of the run, whatever `f` returns.
fn with_trainer<T>(s: &mut Session, f: impl FnOnce(&mut Trainer) -> Result<T, CommandError>) -> Result<T, CommandError> {
    if s.rl.run.is_some() {
        return Err(CommandError::Failed("an RL run holds the model's trainable set: `rl reset` ends it (the weights stay)".into()));
    }
    let file = s.train.file.clone().ok_or_else(|| CommandError::Failed("no data: `train data FILE.jsonl` first".into()))?;
    let cfg = match &s.train.run {
        Some(_) => None,
        None => Some(config(s, &file)?),
    };
    let loaded = s.take_loaded()?;
    let dllm_engine::Loaded { model, tokenizer, dir, checkpoint_bytes, load_time } = loaded;
    let mut trainer = match (s.train.run.take(), cfg) {
        (Some(state), _) => Trainer::from_parts(state, model),
        (None, Some(cfg)) => match Trainer::fine_tune_resident(cfg, model, tokenizer.clone(), &dir) {
            Ok(t) => t,
            Err((e, model)) => {
                s.put_loaded(dllm_engine::Loaded { model, tokenizer, dir, checkpoint_bytes, load_time });
                return Err(e.into());
            }
        },
        (None, None) => unreachable!("a configuration when there is no run"),
    };
    let result = f(&mut trainer);
    let (model, state) = trainer.into_parts();
    s.put_loaded(dllm_engine::Loaded { model, tokenizer, dir, checkpoint_bytes, load_time });
    s.train.run = Some(state);
    result
}

/// A new run's configuration: preset `finetune` with the session's settings, open-ended.
fn config(s: &Session, file: &std::path::Path) -> Result<TrainConfig, CommandError> {
    let l = s.ready()?;
    let t = &s.train.settings;
    let mut cfg = TrainConfig::recipe("finetune")?;
    (cfg.steps, cfg.mtf_from, cfg.lr, cfg.batch, cfg.seed) = (i64::MAX / 2, 0.0, t.lr, t.batch, t.seed);
    let bytes = std::fs::read(file).map_err(|e| CommandError::Failed(format!("{}: {e}", file.display())))?;
    let options = DataOptions { held_out: t.held_out, max_response: t.max_response, max_positions: 0, block: cfg.block, seed: t.seed };
    cfg.data = Some(DataConfig { file: file.to_path_buf(), digest: data::digest(&bytes), base: l.dir.display().to_string(), trainable: t.trainable.clone(), options });
    Ok(cfg)
}

/// `train N`: N steps with a progress line each, stopping between steps on an interrupt.
fn steps(s: &mut Session, n: usize, a: &Args) -> CmdResult {
    let flag = s.interrupt_flag();
    let mut done: Vec<StepMetrics> = Vec::new();
    let mut stop = None;
    let held = with_trainer(s, |t| {
        for _ in 0..n {
            if flag.load(Ordering::SeqCst) {
                stop = Some(format!("interrupted after {} of {n} steps; the model is consistent", done.len()));
                break;
            }
            let m = t.train_step()?;
            if let Some(hook) = &a.progress {
                (hook.borrow_mut())(&[msg(format!("step {}: m2t {:.3}, t2t {:.3}, |g| {:.3}, {:.2} s", m.step, m.m2t_loss, m.t2t_loss, m.grad_norm, m.seconds))]);
            }
            done.push(m);
        }
        Ok(t.held_out_loss()?)
    });
    s.train.history.extend(done.iter().cloned());
    clear_caches(s);
    let held = held?;
    let every = done.len().div_ceil(10).max(1);
    let rows = done
        .iter()
        .enumerate()
        .filter(|(i, _)| i % every == 0 || i + 1 == done.len())
        .map(|(_, m)| vec![m.step.into(), m.m2t_loss.into(), m.t2t_loss.into(), m.grad_norm.into(), m.lr.into()])
        .collect();
    let mut out = vec![Value::Table(Table {
        title: format!("{} fine-tuning step{}", done.len(), if done.len() == 1 { "" } else { "s" }),
        columns: ["step", "m2t loss", "t2t loss", "grad norm", "lr"].map(String::from).to_vec(),
        rows,
    })];
    if let Some((m, t)) = held {
        out.push(msg(format!("held-out loss: m2t {m:.4}, t2t {t:.4}")));
    }
    if let Some(m) = stop {
        out.push(msg(m));
    }
    Ok(out)
}

/// `train eval [N]`: held-out losses and exact answers of greedy decodes of N held-out prompts.
fn eval(s: &mut Session, n: usize) -> CmdResult {
    let (loss, acc) = with_trainer(s, |t| Ok((t.held_out_loss()?, t.held_out_accuracy(n)?)))?;
    let (Some((m, v)), Some((acc, count))) = (loss, acc) else {
        return Err(CommandError::Failed("no held-out examples: `train set held_out 0.1` keeps some".into()));
    };
    let step = s.train.run.as_ref().map_or(0, |r| r.step());
    Ok(vec![Value::Table(Table {
        title: format!("held-out evaluation after {step} steps"),
        columns: ["m2t loss", "t2t loss", "exact answers", "decoded"].map(String::from).to_vec(),
        rows: vec![vec![m.into(), v.into(), format!("{:.1}%", 100.0 * acc).into(), count.into()]],
    })])
}
