//! Decoding settings: `settings`, `set`, `preset` (each checked on copies and against the resident model before
//! anything changes) and `sweep`.

use dllm_engine::decode::{DecodeSettings, Decoder, Denoiser, EditOps, PRESETS, SETTINGS};

use super::{msg, usage};
use crate::parse::Args;
use crate::session::{CmdResult, CommandError, Session};
use crate::value::{Cell, Table, Value};

fn settings_table(st: &DecodeSettings) -> Value {
    let rows = SETTINGS.iter().map(|(n, h)| vec![Cell::from(*n), Cell::from(st.get(n).unwrap_or_default()), Cell::from(*h)]).collect();
    Value::Table(Table { title: "Decoding settings".into(), columns: vec!["setting".into(), "value".into(), "meaning".into()], rows })
}

pub(super) fn settings(s: &mut Session, _: &Args) -> CmdResult {
    let st = s.decoder().map(|d| d.settings.clone()).unwrap_or_else(|_| s.settings.clone());
    Ok(vec![settings_table(&st)])
}

/// Applies `change` to the session's settings and to the current branch's (checked first on copies).
fn change_settings(s: &mut Session, change: impl Fn(&mut DecodeSettings) -> dllm_engine::Result<()>) -> Result<(), CommandError> {
    let mut next = s.settings.clone();
    change(&mut next)?;
    check_with_model(s, &next)?;
    let branch = match s.decoder() {
        Ok(d) => {
            let mut b = d.settings.clone();
            change(&mut b)?;
            if b.block_length != d.settings.block_length || b.gen_length != d.settings.gen_length {
                // The canvas layout is fixed: such settings apply from the next prompt.
                b.block_length = d.settings.block_length;
                b.gen_length = d.settings.gen_length;
            }
            Some(b)
        }
        Err(_) => None,
    };
    s.settings = next;
    if let (Some(b), Ok(d)) = (branch, s.decoder_mut()) {
        d.settings = b;
    }
    Ok(())
}

/// Refuses Levenshtein editing for a resident model without DELETE / SPLIT ids now rather than at the next
/// step, with the engine's own error: its check runs on a throwaway one-token decoder (no forward). A model
/// still loading is checked at its first step instead.
fn check_with_model(s: &Session, st: &DecodeSettings) -> Result<(), CommandError> {
    let Ok(l) = s.ready() else { return Ok(()) };
    if st.edit_ops == EditOps::Levenshtein && l.model.edit_tokens().is_none() {
        Decoder::new(&[l.tokenizer.eos_id], st.clone(), l.tokenizer.mask_id, l.tokenizer.eos_id, &l.model)?;
    }
    Ok(())
}

/// `set NAME VALUE` ([`Session::set`]).
pub(crate) fn set_setting(s: &mut Session, name: &str, value: &str) -> Result<(), CommandError> {
    change_settings(s, |st| st.set(name, value))?;
    // Presets leave layout, seed and sampling alone, so setting those is not choosing decoding rules.
    if !matches!(name, "gen_length" | "block_length" | "seed" | "temperature" | "top_k" | "top_p" | "attention" | "mbe_window") {
        s.settings_chosen = true;
    }
    Ok(())
}

/// `preset NAME` ([`Session::preset`]).
pub(crate) fn apply_preset(s: &mut Session, name: &str) -> Result<(), CommandError> {
    change_settings(s, |st| st.apply_preset(name))?;
    s.settings_chosen = true;
    Ok(())
}

pub(super) fn set(s: &mut Session, a: &Args) -> CmdResult {
    let (Some(name), Some(value)) = (a.text("NAME"), a.text("VALUE")) else { return Err(usage("set", "expected NAME VALUE")) };
    s.set(name, value)?;
    let layout = matches!(name, "block_length" | "gen_length") && s.decoder().is_ok();
    Ok(vec![msg(format!("{name} = {}{}", s.settings.get(name).unwrap_or_default(), if layout { " (from the next prompt: the canvas layout is fixed)" } else { "" }))])
}

pub(super) fn preset(s: &mut Session, a: &Args) -> CmdResult {
    let Some(name) = a.text("NAME") else {
        let settings = |p: &dllm_engine::decode::Preset| p.settings.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ");
        let rows = PRESETS.iter().map(|p| vec![Cell::from(p.name), Cell::from(p.about), Cell::from(settings(p))]).collect();
        let columns = ["preset", "what it is", "settings it writes (after resetting the rules no preset keeps)"];
        return Ok(vec![Value::Table(Table { title: "Presets".into(), columns: columns.map(String::from).to_vec(), rows })]);
    };
    s.preset(name)?;
    Ok(vec![msg(format!("preset {name} applied"))])
}

pub(super) fn sweep(s: &mut Session, a: &Args) -> CmdResult {
    let name = a.text("NAME").unwrap_or_default();
    let prompt = s.prompt.clone().ok_or_else(|| CommandError::Failed("no prompt: `prompt TEXT` first".into()))?;
    let base = s.settings.clone();
    let mut configs = Vec::new();
    for v in a.texts("VALUE") {
        let mut st = base.clone();
        st.set(name, v)?;
        configs.push((v.to_string(), st));
    }
    let flag = s.interrupt_flag();
    let l = s.ready()?;
    let mut rows = Vec::new();
    for (v, st) in configs {
        let mut d = Decoder::new(&prompt, st, l.tokenizer.mask_id, l.tokenizer.eos_id, &l.model)?;
        while d.step(&l.model)?.is_some() {
            if flag.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(CommandError::Interrupted);
            }
        }
        let st = d.stats();
        rows.push(vec![v.into(), st.forwards.into(), st.tpf.into(), st.edits.into(), st.fallbacks.into(), l.tokenizer.decode(&d.output()).into()]);
    }
    Ok(vec![Value::Table(Table {
        title: format!("sweep of {name}"),
        columns: [name, "steps", "TPF", "edits", "fallbacks", "output"].map(String::from).to_vec(),
        rows,
    })])
}
