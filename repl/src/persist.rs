//! Saving and reopening a session as JSON: settings, prompt, breakpoints, watches and every branch's decoder
//! state (canvas, counters, generator, journal; the KV cache refills on the next step).

use std::collections::BTreeMap;

use dllm_engine::decode::{DecodeSettings, Decoder, DecoderState};
use serde::{Deserialize, Serialize};

use crate::session::{Breakpoint, Session};

const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Saved {
    dllm_session: u32,
    model: String,
    settings: DecodeSettings,
    prompt: Option<Vec<i64>>,
    current: String,
    branches: BTreeMap<String, DecoderState>,
    breakpoints: Vec<Breakpoint>,
    watches: Vec<i64>,
}

pub fn to_json(s: &Session) -> serde_json::Value {
    let saved = Saved {
        dllm_session: VERSION,
        model: s.source.dir.as_ref().map(|d| d.display().to_string()).unwrap_or_else(|| dllm_engine::BUILTIN.into()),
        settings: s.settings.clone(),
        prompt: s.prompt.clone(),
        current: s.current.clone(),
        branches: s.branches.iter().map(|(n, d)| (n.clone(), d.snapshot())).collect(),
        breakpoints: s.breakpoints.clone(),
        watches: s.watches.clone(),
    };
    serde_json::to_value(saved).expect("session serialises")
}

/// Replaces the session's state with a saved one; on any error the session is unchanged.
pub fn restore(s: &mut Session, text: &str) -> Result<(), String> {
    let saved: Saved = serde_json::from_str(text).map_err(|e| format!("not a dllm session file: {e}"))?;
    if saved.dllm_session != VERSION {
        return Err(format!("session format {} is not supported (this dllm writes {VERSION})", saved.dllm_session));
    }
    saved.settings.validate().map_err(|e| e.to_string())?;
    let l = s.model().map_err(|e| e.to_string())?;
    let mut branches = BTreeMap::new();
    for (name, state) in saved.branches {
        let d = Decoder::restore(state, &l.model).map_err(|e| format!("branch `{name}`: {e}"))?;
        branches.insert(name, d);
    }
    if !branches.is_empty() && !branches.contains_key(&saved.current) {
        return Err(format!("the current branch `{}` is not among the saved branches", saved.current));
    }
    s.settings = saved.settings;
    // Reopened settings are the user's: a later `load` keeps them.
    s.settings_chosen = true;
    s.prompt = saved.prompt;
    s.current = saved.current;
    s.branches = branches;
    s.next_break_id = saved.breakpoints.iter().map(|b| b.id + 1).max().unwrap_or(1);
    s.breakpoints = saved.breakpoints;
    s.watches = saved.watches;
    Ok(())
}
