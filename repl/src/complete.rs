//! Completion of a command line, the same for every front-end: the terminal's Tab (`terminal::ReplHelper`)
//! and the kernel's complete_request call [`complete`]. Everything it knows comes from the command table, the
//! engine's setting, preset and RL-setting tables and the session's branches, so it cannot drift from what
//! `Session::execute` accepts.

use dllm_engine::decode::{PRESETS, SETTINGS};
use dllm_engine::rl::RL_SETTINGS;

use crate::{Command, Session};

/// `rl`'s subcommands.
const RL_SUBCOMMANDS: &[&str] = &["show", "set", "prompt", "prompts", "snapshot", "update", "stats", "eval", "restore", "save", "merge", "reset"];
/// Estimator specs `likelihood` completes.
const ESTIMATORS: &[&str] = &["stratified:4", "stratified:4:anti", "midpoint:4", "mc:16", "mean-field", "mean-field:0.3", "edit:4", "repeat=", "seed="];
/// Commands whose arguments are file paths.
const FILE_COMMANDS: &[&str] = &["load", "save", "open", "source", "export"];
/// `load`'s words besides paths.
const LOAD_WORDS: &[&str] = &["builtin", "builtin:tiny", "builtin:tiny-2.2", "device=auto", "device=cpu", "device=cuda", "dtype=f32", "dtype=bf16", "dtype=f16", "quantize=int8", "quantize=fp8", "quantize=none", "random:tiny", "random:mid", "random:tiny-2.2"];
/// Paths offered at most (a huge folder must not flood the menu).
const MAX_PATHS: usize = 500;

/// One candidate: what a menu shows, and what replaces the word under the cursor (a trailing space when the
/// word is complete and another argument follows; a path in double quotes when it needs them).
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub display: String,
    pub replacement: String,
}

/// The command a name or alias stands for.
pub fn find_command(word: &str) -> Option<&'static Command> {
    Session::commands().iter().find(|c| c.name == word || c.aliases.contains(&word))
}

/// Fixed values a setting takes, read from its one-line help ("always | after-masks (…)", "… or `off`").
pub fn setting_values(name: &str) -> Vec<String> {
    let Some((_, help)) = SETTINGS.iter().find(|(n, _)| *n == name) else { return Vec::new() };
    let mut out = Vec::new();
    let head = help.split([':', '(']).next().unwrap_or("");
    if head.contains('|') {
        out.extend(head.split('|').map(str::trim).filter(|w| !w.is_empty() && !w.contains(' ')).map(String::from));
    }
    if help.contains("`off`") {
        out.push("off".into());
    }
    out
}

/// Where the line stands: the command word and the argument words before the cursor.
pub(crate) struct Parsed<'a> {
    /// The first word (command or alias), when the cursor is past it.
    pub command: Option<&'a str>,
    /// Complete argument words before the word under the cursor.
    pub done: Vec<&'a str>,
    /// The word under the cursor (may be empty) and its byte offset in the line.
    pub word: &'a str,
    pub start: usize,
}

pub(crate) fn parse(before: &str) -> Parsed<'_> {
    let start = before.rfind(char::is_whitespace).map(|i| i + before[i..].chars().next().map_or(1, char::len_utf8)).unwrap_or(0);
    let word = &before[start..];
    let mut words = before[..start].split_whitespace();
    let command = words.next();
    Parsed { command, done: words.collect(), word, start }
}

fn names<'a>(word: &str, names: impl IntoIterator<Item = &'a str>, space: bool) -> Vec<Candidate> {
    let mut v: Vec<Candidate> = names
        .into_iter()
        .filter(|n| n.starts_with(word))
        .map(|n| Candidate { display: n.to_string(), replacement: if space { format!("{n} ") } else { n.to_string() } })
        .collect();
    v.sort_by(|a, b| a.display.cmp(&b.display));
    v.dedup_by(|a, b| a.display == b.display);
    v
}

/// Command names and aliases.
pub fn command_words() -> impl Iterator<Item = &'static str> {
    Session::commands().iter().flat_map(|c| std::iter::once(c.name).chain(c.aliases.iter().copied()))
}

/// Completes the word that ends at byte `pos` of `line` (one command line; for several commands chained with
/// `;`, the one the cursor is in): `(byte offset where the word starts, candidates)`. `branches` are the
/// session's branch names.
pub fn complete(line: &str, pos: usize, branches: &[String]) -> (usize, Vec<Candidate>) {
    let before = &line[..pos];
    // The command the cursor is in: after the last `;` outside quotes.
    let cmd_start = crate::script::last_command_start(before);
    let p = parse(&before[cmd_start..]);
    let start = cmd_start + p.start;
    let Some(cmd) = p.command else {
        return (start, names(p.word, command_words(), true));
    };
    let Some(c) = find_command(cmd) else { return (start, Vec::new()) };
    let i = p.done.len();
    let mut out = match (c.name, i) {
        ("set" | "sweep", 0) => names(p.word, SETTINGS.iter().map(|s| s.0), true),
        ("set", 1) => {
            let values = setting_values(p.done[0]);
            names(p.word, values.iter().map(String::as_str), false)
        }
        ("preset", 0) => names(p.word, PRESETS.iter().map(|s| s.name), false),
        ("break", 0) => names(p.word, crate::commands::BREAK_EVENTS.iter().copied(), true),
        ("rl", 0) => names(p.word, RL_SUBCOMMANDS.iter().copied(), true),
        ("rl", 1) if p.done[0] == "set" => names(p.word, RL_SETTINGS.iter().map(|s| s.0), true),
        ("rl", 1) if p.done[0] == "restore" => Vec::new(),
        ("train", 0) => names(p.word, crate::finetune::SUBCOMMANDS.iter().copied(), true),
        ("train", 1) if p.done[0] == "set" => names(p.word, crate::finetune::SETTINGS.iter().map(|s| s.0), true),
        ("likelihood", _) => names(p.word, ESTIMATORS.iter().copied(), true),
        ("help", 0) => names(p.word, command_words(), false),
        ("switch", 0) | ("diff", 0 | 1) | ("fork", 0) => names(p.word, branches.iter().map(String::as_str), true),
        ("load", _) => names(p.word, LOAD_WORDS.iter().copied(), false),
        ("fidelity", 0) => names(p.word, ["int8", "fp8"], false),
        ("redecode", 1) => names(p.word, ["quantize=int8", "quantize=fp8"], false),
        _ => Vec::new(),
    };
    let path_arg = FILE_COMMANDS.contains(&c.name)
        || (c.name == "rl" && p.done.first() == Some(&"save") && i == 1)
        || (c.name == "train" && matches!(p.done.first(), Some(&"data" | &"save")) && i == 1);
    if path_arg && !p.word.contains('=') {
        out.extend(paths(p.word));
    }
    (start, out)
}

/// Files and folders completing `word` (a path, maybe opened with `"`): folders end in `/` and stay open for
/// the next Tab; a path with a space or a quote is written in double quotes, which the command parser reads
/// (it does not read backslash escapes outside them).
fn paths(word: &str) -> Vec<Candidate> {
    let (quoted, partial) = match word.strip_prefix('"') {
        Some(rest) => (true, rest),
        None => (false, word),
    };
    let (dir, prefix) = match partial.rfind('/') {
        Some(i) => (&partial[..=i], &partial[i + 1..]),
        None => ("", partial),
    };
    let Ok(entries) = std::fs::read_dir(if dir.is_empty() { "." } else { dir }) else { return Vec::new() };
    let mut out: Vec<Candidate> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            if !name.starts_with(prefix) || (name.starts_with('.') && !prefix.starts_with('.')) {
                return None;
            }
            let is_dir = e.file_type().ok()?.is_dir();
            let full = format!("{dir}{name}{}", if is_dir { "/" } else { "" });
            let replacement = if quoted || full.contains([' ', '"', ';', '\t']) {
                format!("\"{}{}", full.replace('"', "\\\""), if is_dir { "" } else { "\"" })
            } else {
                full
            };
            Some(Candidate { display: format!("{name}{}", if is_dir { "/" } else { "" }), replacement })
        })
        .take(MAX_PATHS)
        .collect();
    out.sort_by(|a, b| a.replacement.cmp(&b.replacement));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete_all(line: &str) -> (usize, Vec<String>) {
        let (start, v) = complete(line, line.len(), &["main".to_string(), "q-mode".to_string()]);
        (start, v.into_iter().map(|c| c.replacement).collect())
    }

    #[test]
    fn completes_commands_settings_presets_branches() {
        assert_eq!(complete_all("ste"), (0, vec!["step ".to_string()]));
        assert!(complete_all("se").1.contains(&"settings ".to_string()));
        assert_eq!(complete_all("set thr"), (4, vec!["threshold ".to_string()]));
        assert_eq!(complete_all("set edit_timing a"), (16, vec!["after-masks".to_string(), "always".to_string()]));
        assert_eq!(complete_all("set top_k o").1, vec!["off"]);
        assert_eq!(complete_all("preset sg").1, vec!["sglang", "sglang-indel"]);
        assert_eq!(complete_all("break de").1, vec!["delete "]);
        assert_eq!(complete_all("break t").1, vec!["text ", "token ", "truncate "]);
        assert_eq!(complete_all("switch q").1, vec!["q-mode "]);
        assert_eq!(complete_all("checkout m").1, vec!["main "]);
        assert_eq!(complete_all("diff main q").1, vec!["q-mode "]);
        assert!(complete_all("step 3").1.is_empty());
        assert_eq!(complete_all("rl upd").1, vec!["update "]);
        assert_eq!(complete_all("rl set eps_h").1, vec!["eps_high "]);
        assert_eq!(complete_all("train d").1, vec!["data "]);
        assert_eq!(complete_all("train set tr").1, vec!["trainable "]);
        assert!(complete_all("likelihood mid").1.contains(&"midpoint:4 ".to_string()));
        assert!(complete_all("frobnicate x").1.is_empty());
        assert_eq!(complete_all("fidelity f").1, vec!["fp8"]);
        assert_eq!(complete_all("redecode q8 quantize=i").1, vec!["quantize=int8"]);
        assert_eq!(complete_all("load builtin quantize=f").1, vec!["quantize=fp8"]);
    }

    #[test]
    fn a_chain_completes_the_command_under_the_cursor() {
        assert_eq!(complete_all("step 2 ; set thr"), (13, vec!["threshold ".to_string()]));
        assert_eq!(complete_all("prompt \"a; b\" ; ste").1, vec!["step "]);
        assert_eq!(complete_all("prompt \"a; ste").1, Vec::<String>::new(), "inside quotes it is prompt text");
    }

    #[test]
    fn completes_paths_after_file_commands() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("trace-a.json"), "").unwrap();
        std::fs::create_dir(dir.path().join("my dir")).unwrap();
        let d = dir.path().display();
        let (start, v) = complete_all(&format!("export {d}/tra"));
        assert_eq!(start, 7);
        assert_eq!(v, vec![format!("{d}/trace-a.json")]);
        let (_, v) = complete_all(&format!("save {d}/my"));
        assert_eq!(v, vec![format!("\"{d}/my dir/")]);
        let (_, v) = complete_all(&format!("rl save {d}/my"));
        assert_eq!(v, vec![format!("\"{d}/my dir/")], "rl save takes a folder");
        let (_, v) = complete_all(&format!("train data {d}/tra"));
        assert_eq!(v, vec![format!("{d}/trace-a.json")], "train data takes a file");
        assert!(complete_all(&format!("train set {d}/tra")).1.is_empty(), "a setting name is not a path");
        assert!(complete_all("load bui").1.contains(&"builtin:tiny-2.2".to_string()));
    }

    #[test]
    fn setting_values_come_from_the_help() {
        assert_eq!(setting_values("edit_timing"), vec!["always", "after-masks"]);
        assert!(setting_values("top_k").contains(&"off".to_string()));
        assert!(setting_values("threshold").is_empty());
    }
}
