//! The research commands: likelihoods (`likelihood`), RL updates on the resident model (`rl ...`) and a fresh
//! decode after a weight change (`redecode`). Their entries are in the one command table (`commands::TABLE`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use dllm_engine::decode::Decoder;
use dllm_engine::edit_likelihood::EditParts;
use dllm_engine::likelihood::{likelihood, Estimator, LikelihoodReport, MAX_COUNT};
use dllm_engine::rl::{held_out_reward, Rl, RlConfig, RlPrompt, Snapshot, UpdateMetrics, RL_SETTINGS};
use dllm_engine::{Loaded, Role, Tokenizer};

use crate::parse::Args;
use crate::session::{CmdResult, CommandError, Session};
use crate::value::{Cell, Chart, Series, Table, Value};

/// The session's RL state: the configuration, the run (trainable set + optimizer + history) once started, and
/// named snapshots of the trainable parameters.
#[derive(Default)]
pub(crate) struct RlState {
    pub(crate) config: RlConfig,
    pub(crate) run: Option<Rl>,
    pub(crate) snapshots: BTreeMap<String, Snapshot>,
}

impl RlState {
    /// Forgets the run and the snapshots (the model they belong to is gone).
    pub(crate) fn reset(&mut self) {
        self.run = None;
        self.snapshots.clear();
    }
}

pub(crate) fn msg(text: impl Into<String>) -> Value {
    Value::Message { text: text.into() }
}

pub(crate) fn usage(m: impl Into<String>, u: &str) -> CommandError {
    CommandError::Usage { message: m.into(), usage: u.into() }
}

const LIKELIHOOD_USAGE: &str = "likelihood [ESTIMATOR...] [seed=S] [repeat=R] [-- PROMPT => RESPONSE]";
const RL_USAGE: &str = "rl [show|set NAME VALUE|prompt TEXT [=> ANSWER]|prompts [clear]|snapshot [NAME]|update [N]|stats|eval [N]|restore [NAME]|save DIR|merge|reset]";

/// `likelihood`: ELBO estimates of the current branch's decode or of a given pair, one row per estimator.
pub(crate) fn likelihood_cmd(s: &mut Session, a: &Args) -> CmdResult {
    let (opts, pair) = match a.rest.split_once("--") {
        Some((o, p)) => (o.to_string(), Some(p.trim().to_string())),
        None => (a.rest.clone(), None),
    };
    let words = Args::new(&opts).map_err(|m| usage(m, LIKELIHOOD_USAGE))?.words;
    let mut estimators = Vec::new();
    let (mut seed, mut repeat) = (0u64, 1usize);
    for w in &words {
        if let Some(v) = w.strip_prefix("seed=") {
            seed = v.parse().map_err(|_| usage(format!("seed must be an integer, got {v:?}"), LIKELIHOOD_USAGE))?;
        } else if let Some(v) = w.strip_prefix("repeat=") {
            repeat = v.parse().ok().filter(|r| (1..=MAX_COUNT).contains(r)).ok_or_else(|| {
                usage(format!("repeat must be a whole number from 1 to {MAX_COUNT} (each repeat is a fresh estimate), got {v:?}"), LIKELIHOOD_USAGE)
            })?;
        } else {
            estimators.push(Estimator::parse(w)?);
        }
    }
    if estimators.is_empty() {
        estimators.push(Estimator::default());
    }
    let l = s.ready()?;
    let (prompt, response, what, block) = match pair {
        Some(p) => {
            let (x, y) = p.split_once("=>").ok_or_else(|| usage("give the pair as `-- PROMPT => RESPONSE`", LIKELIHOOD_USAGE))?;
            let (x, y) = (x.trim(), y.trim());
            let prompt = l.tokenizer.encode(&l.tokenizer.chat(&[(Role::Human, x)], true)?)?;
            let mut response = l.tokenizer.encode(y)?;
            response.push(l.tokenizer.eos_id);
            (prompt, response, format!("log p({y:?} | {x:?})"), s.settings.block_length)
        }
        None => {
            let d = s.decoder()?;
            let (prompt, response) = decoded_pair(d, &l.tokenizer)?;
            let text = l.tokenizer.decode(&response[..response.len() - usize::from(response.last() == Some(&l.tokenizer.eos_id))]);
            (prompt, response, format!("log p({text:?} | branch `{}`)", s.current), d.settings.block_length)
        }
    };
    let mut rows = Vec::new();
    let mut parts = Vec::new();
    let flag = s.interrupt_flag();
    for est in &estimators {
        let mut reports: Vec<LikelihoodReport> = Vec::with_capacity(repeat);
        for r in 0..repeat {
            if flag.load(Ordering::SeqCst) {
                return Err(CommandError::Interrupted);
            }
            let (m, t) = (l.tokenizer.mask_id, l.tokenizer.eos_id);
            reports.push(likelihood(&l.model, &prompt, &response, m, t, block, est, seed.wrapping_add(r as u64))?);
        }
        rows.push(likelihood_row(est, &reports));
        if let Some(t) = edit_parts_table(est, &reports) {
            parts.push(Value::Table(t));
        }
    }
    let mut columns = vec!["estimator", "value", "stderr", "per block", "samples", "forwards"];
    if repeat > 1 {
        columns = vec!["estimator", "mean value", "std over seeds", "mean stderr", "per block (mean)", "samples", "forwards"];
    }
    let mut out = vec![Value::Table(Table {
        title: format!("{what}: {} response tokens, block {block}{}", response.len(), if repeat > 1 { format!(", {repeat} seeds") } else { String::new() }),
        columns: columns.into_iter().map(String::from).collect(),
        rows,
    })];
    out.extend(parts);
    Ok(out)
}

/// The `edit` estimator's contributions by part (means over the seeds), or `None` for a masking estimator.
fn edit_parts_table(est: &Estimator, reports: &[LikelihoodReport]) -> Option<Table> {
    let parts: Vec<&EditParts> = reports.iter().filter_map(|r| r.edit.as_ref()).collect();
    if parts.len() != reports.len() || parts.is_empty() {
        return None;
    }
    let n = parts.len() as f64;
    let mut rows: Vec<Vec<Cell>> = (0..5)
        .map(|k| {
            let name = parts[0].named()[k].0;
            let sum = parts.iter().map(|p| p.named()[k].1.sum).sum::<f64>() / n;
            let count = parts.iter().map(|p| p.named()[k].1.count as f64).sum::<f64>() / n;
            vec![name.into(), sum.into(), count.into()]
        })
        .collect();
    let total = reports.iter().map(|r| r.value).sum::<f64>() / n;
    let slots = parts.iter().map(|p| p.named().iter().map(|(_, c)| c.count as f64).sum::<f64>()).sum::<f64>() / n;
    rows.push(vec!["total".into(), total.into(), slots.into()]);
    Some(Table {
        title: format!("{} by part: weighted sums (masked slots 1/(N t), visible slots 1/N) and scored slots{}", est.describe(), if reports.len() > 1 { ", means over the seeds" } else { "" }),
        columns: ["part", "sum", "slots"].map(String::from).to_vec(),
        rows,
    })
}

fn likelihood_row(est: &Estimator, reports: &[LikelihoodReport]) -> Vec<Cell> {
    let n = reports.len() as f64;
    let mean = reports.iter().map(|r| r.value).sum::<f64>() / n;
    let blocks = reports[0].per_block.len();
    let per_block: Vec<String> = (0..blocks).map(|b| format!("{:.3}", reports.iter().map(|r| r.per_block[b]).sum::<f64>() / n)).collect();
    let first = &reports[0];
    if reports.len() == 1 {
        return vec![est.describe().into(), mean.into(), first.stderr.into(), per_block.join(" ").into(), first.samples.into(), first.forwards.into()];
    }
    let std = (reports.iter().map(|r| (r.value - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    let stderr = reports.iter().map(|r| r.stderr).sum::<f64>() / n;
    vec![est.describe().into(), mean.into(), std.into(), stderr.into(), per_block.join(" ").into(), first.samples.into(), first.forwards.into()]
}

/// The prompt and the decoded response (through its first EOS) of a finished region of `d`.
fn decoded_pair(d: &Decoder, tok: &Tokenizer) -> Result<(Vec<i64>, Vec<i64>), CommandError> {
    let p = d.prompt_len() as usize;
    let out = d.output();
    let end = out.iter().position(|&t| t == tok.eos_id).map_or(out.len(), |e| e + 1);
    let response = out[..end].to_vec();
    let masks = response.iter().filter(|&&t| t == d.mask_id()).count();
    if masks > 0 {
        return Err(CommandError::Failed(format!("the response still holds {masks} masks: finish the decode (`run`) first, or score a pair with `likelihood -- PROMPT => RESPONSE`")));
    }
    if response.is_empty() {
        return Err(CommandError::Failed("the branch has no decoded response yet: `run` first".into()));
    }
    Ok((d.canvas()[..p].to_vec(), response))
}

/// `rl ...`: configure, snapshot, update, inspect, restore and save the policy.
pub(crate) fn rl_cmd(s: &mut Session, a: &Args) -> CmdResult {
    let sub = a.get(0).unwrap_or("show");
    let rest = a.rest.trim_start().strip_prefix(sub).unwrap_or("").trim();
    match sub {
        "show" | "config" | "settings" => Ok(vec![rl_table(s)]),
        "set" => {
            let name = a.get(1).ok_or_else(|| usage("missing NAME", RL_USAGE))?;
            let value = rest.strip_prefix(name).unwrap_or("").trim();
            if value.is_empty() {
                return Err(usage(format!("missing VALUE for `{name}`"), RL_USAGE));
            }
            let mut c = s.rl.config.clone();
            c.set(name, value)?;
            apply_config(s, c)?;
            Ok(vec![msg(format!("rl {name} = {}", s.rl.config.get(name)))])
        }
        "prompt" => {
            if rest.is_empty() {
                return Err(usage("missing TEXT", RL_USAGE));
            }
            let p = RlPrompt::parse(rest)?;
            let mut c = s.rl.config.clone();
            c.prompts.push(p.clone());
            apply_config(s, c)?;
            let task = p.task.map(|t| format!(" (task {})", t.name())).unwrap_or_default();
            Ok(vec![msg(format!("RL prompt {} added{task}; updates now use the {} given prompts instead of the task suite", s.rl.config.prompts.len(), s.rl.config.prompts.len()))])
        }
        "prompts" => {
            if rest == "clear" {
                let mut c = s.rl.config.clone();
                c.prompts.clear();
                apply_config(s, c)?;
                return Ok(vec![msg("RL prompts cleared: updates draw from the task suite")]);
            }
            let rows = s.rl.config.prompts.iter().enumerate().map(|(i, p)| vec![(i + 1).into(), p.text.clone().into(), p.answer.clone().into(), p.task.map(|t| t.name()).into()]).collect();
            Ok(vec![Value::Table(Table { title: "RL prompts".into(), columns: ["#", "prompt", "answer", "task"].map(String::from).to_vec(), rows })])
        }
        "snapshot" => {
            let name = a.get(1).unwrap_or("before").to_string();
            let run = ensure_run(s)?;
            let snap = run.snapshot();
            let n = run.num_parameters();
            s.rl.snapshots.insert(name.clone(), snap);
            Ok(vec![msg(format!("snapshot `{name}`: {n} trainable parameters ({}); `rl restore {name}` brings them back", s.rl.config.trainable.describe()))])
        }
        "update" | "updates" => {
            let n = match a.get(1) {
                // Not bounded: updates run one after another, each interruptible, and hold nothing from before.
                None => 1,
                Some(v) => v.parse::<usize>().ok().filter(|n| *n >= 1).ok_or_else(|| usage(format!("N must be a positive integer, got {v:?}"), RL_USAGE))?,
            };
            update(s, n, a)
        }
        "stats" | "history" => stats(s),
        "eval" => {
            let n = match a.get(1) {
                None => 50,
                Some(v) => v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=dllm_engine::rl::MAX_EVAL).contains(n))
                    .ok_or_else(|| usage(format!("N must be a whole number from 1 to {}, got {v:?}", dllm_engine::rl::MAX_EVAL), RL_USAGE))?,
            };
            let c = s.rl.config.clone();
            let flag = s.interrupt_flag();
            let l = s.ready()?;
            let (mean, rows) = held_out_reward(&l.model, &l.tokenizer, &c, n, Some(&flag))?;
            let shown = rows.iter().take(8).map(|(p, r, x)| vec![p.text.clone().into(), r.clone().into(), p.answer.clone().into(), (*x).into()]).collect();
            Ok(vec![
                msg(format!("held-out reward ({}, greedy {} decodes of {} prompts): {mean:.3}", c.reward.describe(), c.rollout_preset(l.model.config()), rows.len())),
                Value::Table(Table { title: "first held-out decodes".into(), columns: ["prompt", "response", "answer", "reward"].map(String::from).to_vec(), rows: shown }),
            ])
        }
        "restore" => {
            let name = a.get(1).unwrap_or("before").to_string();
            let snap = s.rl.snapshots.get(&name).ok_or_else(|| {
                let known: Vec<&String> = s.rl.snapshots.keys().collect();
                CommandError::Failed(format!("no snapshot `{name}` (snapshots: {known:?}); take one with `rl snapshot {name}`"))
            })?;
            let run = s.rl.run.as_mut().ok_or_else(|| CommandError::Failed("no RL run holds trainable parameters; `rl snapshot` starts one".into()))?;
            run.restore(snap)?;
            clear_caches(s);
            Ok(vec![msg(format!("restored snapshot `{name}` (optimizer moments reset); branches will recompute their cached blocks"))])
        }
        "save" => {
            let dir = a.get(1).ok_or_else(|| usage("missing DIR", RL_USAGE))?;
            let dir = PathBuf::from(dir);
            let l = s.ready()?;
            save_policy(l, &dir)?;
            let lora = if l.model.lora().is_some() { " (LoRA adapters merged into the written weights)" } else { "" };
            Ok(vec![msg(format!("saved the policy to {}{lora}; `load {}` loads it", dir.display(), dir.display()))])
        }
        "merge" => {
            if s.model_mut()?.model.lora().is_none() {
                return Err(CommandError::Failed("no LoRA adapters to merge (`rl set trainable lora:R` attaches them)".into()));
            }
            s.rl.run = None;
            let l = s.model_mut()?;
            l.model.merge_lora();
            Rl::release(&l.model);
            s.rl.config.trainable = dllm_engine::rl::Trainable::All;
            s.rl.snapshots.clear();
            // The outputs are the same up to rounding; recompute the cached blocks with the merged weights anyway.
            clear_caches(s);
            Ok(vec![msg("merged the LoRA adapters into the weights; trainable is now `all` (snapshots of the adapters were dropped)")])
        }
        "reset" => {
            let had = s.rl.run.take().is_some();
            let l = s.model_mut()?;
            Rl::release(&l.model);
            s.rl.snapshots.clear();
            Ok(vec![msg(if had { "RL run dropped (weights stay as they are; snapshots dropped)" } else { "no RL run" })])
        }
        other => Err(usage(format!("unknown rl subcommand `{other}`"), RL_USAGE)),
    }
}

/// Installs a new configuration: a change of the trainable set ends the run (a new one starts on the next
/// `rl snapshot` / `rl update`); other changes go to the running optimizer.
fn apply_config(s: &mut Session, c: RlConfig) -> Result<(), CommandError> {
    c.validate()?;
    if let Some(run) = s.rl.run.as_mut() {
        if run.config().trainable != c.trainable {
            s.rl.run = None;
            let l = s.model_mut()?;
            Rl::release(&l.model);
        } else {
            run.set_config(c.clone())?;
        }
    }
    s.rl.config = c;
    Ok(())
}

fn ensure_run(s: &mut Session) -> Result<&mut Rl, CommandError> {
    if s.train.run.is_some() {
        return Err(CommandError::Failed("a fine-tuning run holds the model's trainable set: `train reset` ends it (the weights stay)".into()));
    }
    if s.rl.run.is_none() {
        let (c, flag) = (s.rl.config.clone(), s.interrupt_flag());
        let l = s.model_mut()?;
        let mut run = Rl::new(&mut l.model, c)?;
        run.set_interrupt(flag);
        s.rl.run = Some(run);
    }
    Ok(s.rl.run.as_mut().expect("just set"))
}

/// After the weights changed, every branch's cached blocks are stale.
pub(crate) fn clear_caches(s: &mut Session) {
    for d in s.branches.values_mut() {
        d.clear_cache();
    }
}

/// How to take back the start of a run by a command that then failed: the adapters the model had before the
/// run replaced them (`Some`), or `None` when it kept them or had none to replace.
struct RunStart(Option<dllm_engine::lora::Adapters>);

/// Starts a run if there is none (see [`ensure_run`]); `Some` when this call started it.
fn start_run(s: &mut Session) -> Result<Option<RunStart>, CommandError> {
    if s.rl.run.is_some() {
        return ensure_run(s).map(|_| None);
    }
    let wanted = s.rl.config.trainable.clone();
    let l = s.model_mut()?;
    // A LoRA run of another rank replaces the adapters attached now: keep those aside to put back on failure.
    let replaced = match (&wanted, l.model.lora()) {
        (dllm_engine::rl::Trainable::Lora { rank, alpha }, Some(ad)) if (ad.rank, ad.alpha) != (*rank, *alpha) => l.model.detach_lora(),
        _ => None,
    };
    match ensure_run(s) {
        Ok(_) => Ok(Some(RunStart(replaced))),
        Err(e) => {
            if let (Some(ad), Ok(l)) = (replaced, s.model_mut()) {
                l.model.set_lora(Some(ad));
            }
            Err(e)
        }
    }
}

/// Takes back a run `start_run` started: no run, every parameter trainable, the adapters as they were.
fn undo_start(s: &mut Session, start: RunStart) {
    s.rl.run = None;
    if let Ok(l) = s.model_mut() {
        if let Some(ad) = start.0 {
            l.model.set_lora(Some(ad));
        }
        Rl::release(&l.model);
    }
}

fn update(s: &mut Session, n: usize, a: &Args) -> CmdResult {
    let started = start_run(s)?;
    let result = run_updates(s, n, a);
    if let (Err(_), Some(start)) = (&result, started) {
        undo_start(s, start); // the first update failed: as if the command had not run
    }
    result
}

fn run_updates(s: &mut Session, n: usize, a: &Args) -> CmdResult {
    let flag = s.interrupt_flag();
    let mut done: Vec<UpdateMetrics> = Vec::new();
    let mut stop = None;
    for _ in 0..n {
        if flag.load(Ordering::SeqCst) {
            stop = Some("interrupted between updates; the policy is consistent".to_string());
            break;
        }
        let (l, run) = s.model_and_rl()?;
        let result = run.update(&l.model, &l.tokenizer);
        clear_caches(s);
        match result {
            Ok(m) => {
                if let Some(hook) = &a.progress {
                    (hook.borrow_mut())(&[msg(progress_line(&m))]);
                }
                done.push(m);
            }
            Err(dllm_engine::Error::Interrupted(why)) => {
                stop = Some(format!("interrupted {why}"));
                break;
            }
            Err(e) if done.is_empty() => return Err(e.into()),
            Err(e) => {
                stop = Some(format!("update {} failed and was not applied: {e}", done.len() + 1));
                break;
            }
        }
    }
    let mut out = vec![Value::Table(metrics_table(&format!("{} RL update{}", done.len(), if done.len() == 1 { "" } else { "s" }), &done))];
    if let Some(last) = done.last() {
        let rows = last.sample.iter().map(|r| vec![r.response.clone().into(), r.reward.into(), r.advantage.into()]).collect();
        out.push(Value::Table(Table { title: format!("update {}: the rollouts of its first prompt", last.update), columns: ["response", "reward", "advantage"].map(String::from).to_vec(), rows }));
    }
    if let Some(m) = stop {
        out.push(msg(m));
    }
    Ok(out)
}

fn progress_line(m: &UpdateMetrics) -> String {
    format!(
        "update {}: reward {:.3} ± {:.3}, loss {:.4}, clip {:.2}, KL {:.2e}, |g| {:.3}, {:.2} s (rollout {:.2}, likelihood {:.2}, backward {:.2})",
        m.update, m.reward_mean, m.reward_std, m.loss, m.clip_fraction, m.approx_kl, m.grad_norm, m.time.total, m.time.rollout, m.time.likelihood, m.time.backward
    )
}

fn metrics_table(title: &str, ms: &[UpdateMetrics]) -> Table {
    let rows = ms
        .iter()
        .map(|m| {
            vec![
                m.update.into(),
                m.reward_mean.into(),
                m.reward_std.into(),
                m.loss.into(),
                m.clip_fraction.into(),
                m.approx_kl.into(),
                m.ref_kl.into(),
                m.grad_norm.into(),
                m.trained.into(),
                m.time.rollout.into(),
                m.time.likelihood.into(),
                m.time.backward.into(),
                m.time.total.into(),
            ]
        })
        .collect();
    let columns = ["update", "reward", "reward std", "loss", "clip frac", "approx KL", "ref KL", "grad norm", "trained", "rollout s", "likelihood s", "backward s", "total s"];
    Table { title: title.into(), columns: columns.map(String::from).to_vec(), rows }
}

fn stats(s: &mut Session) -> CmdResult {
    let run = s.rl.run.as_ref().ok_or_else(|| CommandError::Failed("no RL run yet: `rl update` starts one".into()))?;
    let h = &run.history;
    if h.is_empty() {
        return Ok(vec![msg("no update yet: `rl update N`")]);
    }
    let series = |name: &str, f: &dyn Fn(&UpdateMetrics) -> f64| Series { name: name.into(), points: h.iter().map(|m| (m.update as f64, f(m))).collect() };
    Ok(vec![
        Value::Table(metrics_table("RL history", h)),
        Value::Chart(Chart {
            title: "Reward per update".into(),
            x_label: "update".into(),
            y_label: "reward".into(),
            series: vec![series("reward mean", &|m| m.reward_mean), series("clip fraction", &|m| m.clip_fraction)],
        }),
    ])
}

fn rl_table(s: &Session) -> Value {
    let c = &s.rl.config;
    let mut rows: Vec<Vec<Cell>> = RL_SETTINGS.iter().map(|(n, help)| vec![(*n).into(), c.get(n).into(), (*help).into()]).collect();
    let state = match &s.rl.run {
        None => "not started (`rl snapshot` or `rl update` starts it)".to_string(),
        Some(r) => format!("{} updates, {} trainable parameters", r.history.len(), r.num_parameters()),
    };
    rows.push(vec!["run".into(), state.into(), "".into()]);
    if let Some(ad) = s.ready().ok().and_then(|l| l.model.lora()) {
        let what = format!("rank {}, alpha {}, {} parameters", ad.rank, ad.alpha, ad.num_parameters());
        rows.push(vec!["lora adapters".into(), what.into(), "attached to the model (`rl merge` folds them in)".into()]);
    }
    let snaps: Vec<&String> = s.rl.snapshots.keys().collect();
    rows.push(vec!["snapshots".into(), format!("{snaps:?}").into(), "".into()]);
    rows.push(vec!["prompts".into(), format!("{} given", c.prompts.len()).into(), "`rl prompt TEXT [=> ANSWER]` adds one".into()]);
    Value::Table(Table { title: "RL settings (`rl set NAME VALUE`)".into(), columns: ["setting", "value", "meaning"].map(String::from).to_vec(), rows })
}

/// Writes the resident model (LoRA merged; the adapters alone too, in `dir/lora`) and its tokenizer into `dir`
/// as a loadable checkpoint: into a
/// temporary sibling folder first, then put in place atomically (`checkpoint::install_dir`), so `dir` is
/// either the old checkpoint or the complete new one. An existing `dir` that is not a checkpoint folder (no
/// config.json) and not empty is refused: a save never destroys what it did not write.
pub(crate) fn save_policy(l: &Loaded, dir: &Path) -> Result<(), CommandError> {
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return Err(CommandError::Failed(format!("cannot save into {}: the folder {} does not exist", dir.display(), parent.display())));
    }
    if dir.exists() {
        let empty = std::fs::read_dir(dir).map(|mut d| d.next().is_none()).unwrap_or(false);
        if !dir.is_dir() || !(empty || dir.join("config.json").is_file()) {
            return Err(CommandError::Failed(format!(
                "{} exists and is not a checkpoint folder (no config.json): nothing was written; save into a new folder, or remove it first",
                dir.display()
            )));
        }
    }
    let tmp = dllm_engine::checkpoint::temp_sibling(dir)?;
    let write = || -> Result<(), CommandError> {
        let opts = dllm_engine::checkpoint::SaveOptions { dtype: l.model.dtype(), fused_experts: false, shard_bytes: None };
        dllm_engine::presets::write_checkpoint(&l.model, &tmp, opts)?;
        let tok = l.tokenizer.to_json_text()?;
        std::fs::write(tmp.join("tokenizer.json"), tok).map_err(|e| CommandError::Failed(format!("{}: {e}", tmp.display())))?;
        if let Some(ad) = l.model.lora() {
            dllm_engine::lora::write_adapters(ad, &tmp, serde_json::json!({ "base": l.dir }))?;
        }
        // The checkpoint's chat template travels with the policy, so prompts render the same after a reload.
        for name in ["chat_template.jinja", "tokenizer_config.json"] {
            let from = l.dir.join(name);
            if from.is_file() {
                std::fs::copy(&from, tmp.join(name)).map_err(|e| CommandError::Failed(format!("{}: {e}", from.display())))?;
            }
        }
        Ok(dllm_engine::checkpoint::install_dir(&tmp, dir)?)
    };
    let r = write();
    if r.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    r
}

/// `redecode NAME`: a fresh decode of the current branch's prompt on a new branch, run to the end.
pub(crate) fn redecode(s: &mut Session, a: &Args) -> CmdResult {
    let name = a.get(0).ok_or_else(|| usage("missing NAME", "redecode NAME"))?.to_string();
    if s.branches.contains_key(&name) {
        return Err(CommandError::Failed(format!("branch `{name}` exists; pick another name")));
    }
    let prompt = s.decoder()?.canvas()[..s.decoder()?.prompt_len() as usize].to_vec();
    let settings = s.decoder()?.settings.clone();
    let from = s.current.clone();
    let flag = s.interrupt_flag();
    let l = s.ready()?;
    let mut d = Decoder::new(&prompt, settings, l.tokenizer.mask_id, l.tokenizer.eos_id, &l.model)?;
    while d.step(&l.model)?.is_some() {
        if flag.load(Ordering::SeqCst) {
            return Err(CommandError::Interrupted);
        }
    }
    let out = l.tokenizer.decode(&d.output());
    let st = d.stats();
    s.branches.insert(name.clone(), d);
    s.current = name.clone();
    Ok(vec![msg(format!("decoded `{from}`'s prompt afresh on `{name}` (now current): {out:?}, {} forwards, TPF {:.2}; `diff {from} {name}` compares", st.forwards, st.tpf))])
}
