//! Files: `export` (a trace), `save` / `open` (a session), `source` (a script). Writes are atomic and never
//! replace a file the command did not write.


use super::{find, msg};
use crate::parse::Args;
use crate::session::{CmdResult, CommandError, Session};

/// Writes `text` to `path` atomically. An existing `path` is replaced only if it is a file this command wrote
/// before (JSON with the top-level key `marker`): a save never destroys what it did not write.
fn write_file(path: &str, text: &str, marker: &str) -> Result<(), CommandError> {
    let p = std::path::Path::new(path);
    if p.exists() {
        let ours = std::fs::read(p).ok().and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok()).is_some_and(|v| v.get(marker).is_some());
        if !p.is_file() || !ours {
            return Err(CommandError::Failed(format!(
                "{path} exists and is not a file this command wrote (JSON with `{marker}`): nothing was written; pick another name, or remove it first"
            )));
        }
    }
    dllm_engine::checkpoint::write_atomic(p, text.as_bytes()).map_err(|e| CommandError::Failed(e.to_string()))
}

pub(super) fn export(s: &mut Session, a: &Args) -> CmdResult {
    let path = a.text("FILE").unwrap_or_default();
    let json = serde_json::to_string_pretty(&s.decoder()?.trace_json()).unwrap_or_default();
    write_file(path, &json, "steps")?;
    Ok(vec![msg(format!("trace written to {path}"))])
}

pub(super) fn save(s: &mut Session, a: &Args) -> CmdResult {
    let path = a.text("FILE").unwrap_or_default();
    let json = crate::persist::to_json(s);
    write_file(path, &serde_json::to_string_pretty(&json).unwrap_or_default(), "dllm_session")?;
    Ok(vec![msg(format!("session saved to {path} ({} branches)", s.branches.len()))])
}

pub(super) fn open(s: &mut Session, a: &Args) -> CmdResult {
    let path = a.text("FILE").unwrap_or_default();
    let text = std::fs::read_to_string(path).map_err(|e| CommandError::Failed(format!("{path}: {e}")))?;
    crate::persist::restore(s, &text).map_err(|e| CommandError::Failed(format!("{path}: {e}")))?;
    Ok(vec![msg(format!("session reopened from {path}: branches {}, on `{}`", s.branch_names().join(", "), s.current))])
}

pub(super) fn source(s: &mut Session, a: &Args) -> CmdResult {
    let path = a.text("FILE").unwrap_or_default();
    let text = std::fs::read_to_string(path).map_err(|e| CommandError::Failed(format!("{path}: {e}")))?;
    let mut out = Vec::new();
    for (i, item) in crate::script::script_items(&text).into_iter().enumerate() {
        let (line, n) = (item.command.as_str(), item.line.unwrap_or(0));
        if s.interrupt_flag().load(std::sync::atomic::Ordering::SeqCst) {
            return Err(CommandError::Interrupted);
        }
        // By the command the word names, so the `script` alias cannot recurse either.
        if find(crate::parse::split_command(line).0).is_some_and(|c| c.name == "source") {
            return Err(CommandError::Failed(format!("{path}:{n}: scripts cannot `source` other scripts")));
        }
        match s.execute(line) {
            Ok(v) => out.extend(v),
            // The first line is not a command: most likely not a script at all, so its text is not repeated
            // (it could be anything, a key or a password).
            Err(CommandError::Unknown { .. }) if i == 0 => {
                return Err(CommandError::Failed(format!("{path}:{n}: not a dllm command; is {path} a script of dllm commands? Nothing ran")))
            }
            Err(e) => return Err(CommandError::Failed(format!("{path}:{n}: `{line}`: {e}"))),
        }
    }
    Ok(out)
}
