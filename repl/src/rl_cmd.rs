//! `rl ...`: EBPO on the resident model from the session: the configuration, the run (trainable set, optimizer,
//! history) and named snapshots; a first update that fails takes back the run it started. Its entry is in the
//! command table; the engine side is `dllm_engine::rl`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use dllm_engine::rl::{held_out_reward, Rl, RlConfig, RlPrompt, Snapshot, UpdateMetrics, RL_SETTINGS};

use crate::grammar::{int, one, opt, rest, sub, Kind, Syntax};
use crate::parse::Args;
use crate::research::{clear_caches, msg, save_policy};
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

/// `rl`'s subcommands and their arguments.
pub(crate) const SYNTAX: Syntax = Syntax::Subs {
    what: "rl subcommand",
    subs: &[
        sub("show", &["config", "settings"], &[]),
        sub("set", &[], &[one("NAME", Kind::RlSetting), rest("VALUE", Kind::RlValue)]),
        sub("prompt", &[], &[rest("TEXT [=> ANSWER]", Kind::Text)]),
        sub("prompts", &[], &[opt("clear", Kind::OneOf(&["clear"]))]),
        sub("snapshot", &[], &[opt("NAME", Kind::Name)]),
        // Updates run one after another, each interruptible, and hold nothing from before: the bound is only a sanity check.
        sub("update", &["updates"], &[opt("N", int(1, 1_000_000_000))]),
        sub("stats", &["history"], &[]),
        sub("eval", &[], &[opt("N", int(1, dllm_engine::rl::MAX_EVAL as i64))]),
        sub("restore", &[], &[opt("NAME", Kind::Name)]),
        sub("save", &[], &[one("DIR", Kind::Path)]),
        sub("merge", &[], &[]),
        sub("reset", &[], &[]),
    ],
    default: Some("show"),
    otherwise: &[],
};

/// `rl ...`: configure, snapshot, update, inspect, restore and save the policy.
pub(crate) fn rl_cmd(s: &mut Session, a: &Args) -> CmdResult {
    match a.sub.unwrap_or("show") {
        "show" => Ok(vec![rl_table(s)]),
        "set" => {
            let (name, value) = (a.text("NAME").unwrap_or_default(), a.text("VALUE").unwrap_or_default());
            set(s, name, value)?;
            Ok(vec![msg(format!("rl {name} = {}", s.rl.config.get(name)))])
        }
        "prompt" => {
            let p = RlPrompt::parse(a.text("TEXT [=> ANSWER]").unwrap_or_default())?;
            let mut c = s.rl.config.clone();
            c.prompts.push(p.clone());
            apply_config(s, c)?;
            let task = p.task.map(|t| format!(" (task {})", t.name())).unwrap_or_default();
            Ok(vec![msg(format!("RL prompt {} added{task}; updates now use the {} given prompts instead of the task suite", s.rl.config.prompts.len(), s.rl.config.prompts.len()))])
        }
        "prompts" => {
            if a.text("clear").is_some() {
                let mut c = s.rl.config.clone();
                c.prompts.clear();
                apply_config(s, c)?;
                return Ok(vec![msg("RL prompts cleared: updates draw from the task suite")]);
            }
            let rows = s.rl.config.prompts.iter().enumerate().map(|(i, p)| vec![(i + 1).into(), p.text.clone().into(), p.answer.clone().into(), p.task.map(|t| t.name()).into()]).collect();
            Ok(vec![Value::Table(Table { title: "RL prompts".into(), columns: ["#", "prompt", "answer", "task"].map(String::from).to_vec(), rows })])
        }
        "snapshot" => {
            let name = a.text("NAME").unwrap_or("before").to_string();
            let run = ensure_run(s)?;
            let snap = run.snapshot();
            let n = run.num_parameters();
            s.rl.snapshots.insert(name.clone(), snap);
            Ok(vec![msg(format!("snapshot `{name}`: {n} trainable parameters ({}); `rl restore {name}` brings them back", s.rl.config.trainable.describe()))])
        }
        "update" => update(s, a.int("N").unwrap_or(1) as usize, a),
        "stats" => stats(s),
        "eval" => {
            let n = a.int("N").unwrap_or(50) as usize;
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
            let name = a.text("NAME").unwrap_or("before").to_string();
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
            let dir = PathBuf::from(a.text("DIR").unwrap_or_default());
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
            dllm_engine::trainable::release(&l.model);
            s.rl.config.trainable = dllm_engine::rl::Trainable::All;
            s.rl.snapshots.clear();
            // The outputs are the same up to rounding; recompute the cached blocks with the merged weights anyway.
            clear_caches(s);
            Ok(vec![msg("merged the LoRA adapters into the weights; trainable is now `all` (snapshots of the adapters were dropped)")])
        }
        "reset" => {
            let had = s.rl.run.take().is_some();
            let l = s.model_mut()?;
            dllm_engine::trainable::release(&l.model);
            s.rl.snapshots.clear();
            Ok(vec![msg(if had { "RL run dropped (weights stay as they are; snapshots dropped)" } else { "no RL run" })])
        }
        other => unreachable!("rl {other} is in SYNTAX but has no handler"),
    }
}

/// `rl set NAME VALUE` ([`Session::rl_set`]).
pub(crate) fn set(s: &mut Session, name: &str, value: &str) -> Result<(), CommandError> {
    let mut c = s.rl.config.clone();
    c.set(name, value)?;
    apply_config(s, c)
}

/// Installs a new configuration: a change of the trainable set ends the run (a new one starts on the next
/// `rl snapshot` / `rl update`); other changes go to the running optimizer.
fn apply_config(s: &mut Session, c: RlConfig) -> Result<(), CommandError> {
    c.validate()?;
    if let Some(run) = s.rl.run.as_mut() {
        if run.config().trainable != c.trainable {
            s.rl.run = None;
            let l = s.model_mut()?;
            dllm_engine::trainable::release(&l.model);
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

/// How to take back the start of a run by a command that then failed: `Some(adapters)` when the run attaches
/// its own LoRA adapters (the ones to put back: those it replaced, or none), `None` when it keeps the model's.
struct RunStart(Option<Option<dllm_engine::lora::Adapters>>);

/// Starts a run if there is none (see [`ensure_run`]); `Some` when this call started it.
fn start_run(s: &mut Session) -> Result<Option<RunStart>, CommandError> {
    if s.rl.run.is_some() {
        return ensure_run(s).map(|_| None);
    }
    let wanted = s.rl.config.trainable.clone();
    let l = s.model_mut()?;
    // A LoRA run attaches fresh adapters unless the model has them at this rank: keep what was there aside
    // (another rank's adapters, or none) to put back on failure.
    let restore = match (&wanted, l.model.lora()) {
        (dllm_engine::rl::Trainable::Lora { rank, alpha }, Some(ad)) if (ad.rank, ad.alpha) != (*rank, *alpha) => Some(l.model.detach_lora()),
        (dllm_engine::rl::Trainable::Lora { .. }, None) => Some(None),
        _ => None,
    };
    match ensure_run(s) {
        Ok(_) => Ok(Some(RunStart(restore))),
        Err(e) => {
            if let (Some(before), Ok(l)) = (restore, s.model_mut()) {
                l.model.set_lora(before);
            }
            Err(e)
        }
    }
}

/// Takes back a run `start_run` started: no run, every parameter trainable, the adapters as they were.
fn undo_start(s: &mut Session, start: RunStart) {
    s.rl.run = None;
    if let Ok(l) = s.model_mut() {
        if let Some(before) = start.0 {
            l.model.set_lora(before);
        }
        dllm_engine::trainable::release(&l.model);
    }
}

fn update(s: &mut Session, n: usize, a: &Args) -> CmdResult {
    let (done, stop) = updates(s, n, &mut |m| {
        if let Some(hook) = &a.progress {
            (hook.borrow_mut())(&[msg(progress_line(m))]);
        }
    })?;
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

/// Up to `n` updates, calling `each` after every one; the metrics, and why it stopped early. The first failing
/// update is the error (nothing changed); a later one stops the run, the earlier updates kept.
pub(crate) fn updates(s: &mut Session, n: usize, each: &mut dyn FnMut(&UpdateMetrics)) -> Result<(Vec<UpdateMetrics>, Option<String>), CommandError> {
    let started = start_run(s)?;
    let result = run_updates(s, n, each);
    if let (Err(_), Some(start)) = (&result, started) {
        undo_start(s, start); // the first update failed: as if the command had not run
    }
    result
}

fn run_updates(s: &mut Session, n: usize, each: &mut dyn FnMut(&UpdateMetrics)) -> Result<(Vec<UpdateMetrics>, Option<String>), CommandError> {
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
                each(&m);
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
    Ok((done, stop))
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
