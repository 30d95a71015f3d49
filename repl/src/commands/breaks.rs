//! Breakpoints and watches: `break EVENT`, `breaks`, `delete`, `watch`.

use dllm_engine::decode::Event;

use super::{checked, msg, usage};
use crate::grammar::{int, one, rest, sub, Kind, Sub};
use crate::parse::Args;
use crate::session::{Breakpoint, CmdResult, CommandError, Session};
use crate::value::{Table, Value};

/// The events `break` takes, each with its argument: the grammar checks them and completion offers them.
pub const BREAK_EVENTS: &[Sub] = &[
    sub("edit", &["delta"], &[]),
    sub("fallback", &[], &[]),
    sub("block-end", &["block"], &[]),
    sub("eos", &[], &[]),
    sub("token", &[], &[one("ID", int(0, i32::MAX as i64))]),
    sub("text", &[], &[rest("TEXT", Kind::Text)]),
    sub("oscillation", &[], &[one("K", int(1, u32::MAX as i64))]),
    sub("low-confidence", &[], &[one("X", Kind::Prob)]),
    sub("step", &[], &[one("N", int(0, u32::MAX as i64))]),
    sub("revised", &[], &[]),
    sub("delete", &[], &[]),
    sub("insert", &["split"], &[]),
    sub("truncate", &[], &[]),
    sub("antiloop", &[], &[]),
];

/// The event of `break`'s words, as the grammar read them.
fn parse_event(a: &Args) -> Event {
    match a.sub.unwrap_or_default() {
        "edit" => Event::Edit,
        "fallback" => Event::Fallback,
        "block-end" => Event::BlockEnd,
        "eos" => Event::Eos,
        "token" => Event::Token { id: checked(a, "ID") },
        "text" => Event::Text { text: a.text("TEXT").unwrap_or_default().to_string() },
        "oscillation" => Event::Oscillation { k: checked(a, "K") as u32 },
        "low-confidence" => Event::LowConfidence { below: a.num("X").unwrap_or_else(|| panic!("the grammar checks X")) as f32 },
        "step" => Event::Step { n: checked(a, "N") },
        "revised" => Event::Revised,
        "delete" => Event::Delete,
        "insert" => Event::Insert,
        "truncate" => Event::Truncate,
        "antiloop" => Event::Antiloop,
        other => unreachable!("break event {other:?} is in BREAK_EVENTS but has no Event"),
    }
}

pub(super) fn brk(s: &mut Session, a: &Args) -> CmdResult {
    let event = parse_event(a);
    if let Event::Text { text } = &event {
        if text.is_empty() {
            return Err(usage("break", "text needs TEXT"));
        }
    }
    let id = s.next_break_id;
    s.next_break_id += 1;
    let text = format!("breakpoint {id}: {}", event);
    s.breakpoints.push(Breakpoint { id, event });
    Ok(vec![msg(text)])
}

pub(super) fn breaks(s: &mut Session, _: &Args) -> CmdResult {
    let rows = s.breakpoints.iter().map(|b| vec![b.id.into(), b.event.to_string().into()]).collect();
    Ok(vec![Value::Table(Table { title: "Breakpoints".into(), columns: vec!["id".into(), "event".into()], rows })])
}

pub(super) fn delete(s: &mut Session, a: &Args) -> CmdResult {
    match a.sub {
        Some("all") => s.breakpoints.clear(),
        _ => {
            let id = checked(a, "ID") as usize;
            let before = s.breakpoints.len();
            s.breakpoints.retain(|b| b.id != id);
            if s.breakpoints.len() == before {
                return Err(CommandError::Failed(format!("no breakpoint {id}; `breaks` lists them")));
            }
        }
    }
    Ok(vec![msg("deleted")])
}

pub(super) fn watch(s: &mut Session, a: &Args) -> CmdResult {
    if a.sub == Some("off") {
        s.watches.clear();
        return Ok(vec![msg("watches cleared")]);
    }
    s.watches.extend(a.ints("POS"));
    s.watches.sort();
    s.watches.dedup();
    Ok(vec![msg(format!("watching {:?}", s.watches))])
}
