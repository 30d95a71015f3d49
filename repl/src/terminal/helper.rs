//! The line editor's helper: completion, hints, the dimmed hint colour, and `\` line continuation. Everything
//! it knows about commands comes from the command table (`Session::commands()`) and the engine's setting and
//! preset tables, so it cannot drift from what `execute` accepts.

use std::borrow::Cow;

use dllm_engine::decode::{PRESETS, SETTINGS};
use dllm_engine::rl::RL_SETTINGS;

/// `rl`'s subcommands, for completion.
const RL_SUBCOMMANDS: &[&str] = &["show", "set", "prompt", "prompts", "snapshot", "update", "stats", "eval", "restore", "save", "merge", "reset"];
/// Estimator specs `likelihood` completes.
const ESTIMATORS: &[&str] = &["stratified:4", "stratified:4:anti", "midpoint:4", "mc:16", "mean-field", "mean-field:0.3", "repeat=", "seed="];
use rustyline::completion::{Completer, FilenameCompleter, Pair};
use rustyline::highlight::{CmdKind, Highlighter};
use rustyline::hint::{Hint, Hinter};
use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::{Context, Helper};

use crate::{Command, Session};

/// Commands whose arguments are file paths.
const FILE_COMMANDS: &[&str] = &["load", "save", "open", "source", "export"];
/// `load`'s words besides paths.
const LOAD_WORDS: &[&str] = &["builtin", "device=auto", "device=cpu", "device=cuda", "dtype=f32", "dtype=bf16", "dtype=f16"];

pub struct ReplHelper {
    files: FilenameCompleter,
    /// The session's branches, refreshed by the loop after each command.
    pub branches: Vec<String>,
    /// Whether to colour hints.
    pub color: bool,
}

impl ReplHelper {
    pub fn new(color: bool) -> ReplHelper {
        ReplHelper { files: FilenameCompleter::new(), branches: Vec::new(), color }
    }
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
struct Parsed<'a> {
    /// The first word (command or alias), when the cursor is past it.
    command: Option<&'a str>,
    /// Complete argument words before the word under the cursor.
    done: Vec<&'a str>,
    /// The word under the cursor (may be empty) and its byte offset in the line.
    word: &'a str,
    start: usize,
}

fn parse(before: &str) -> Parsed<'_> {
    let start = before.rfind(char::is_whitespace).map(|i| i + before[i..].chars().next().map_or(1, char::len_utf8)).unwrap_or(0);
    let word = &before[start..];
    let mut words = before[..start].split_whitespace();
    let command = words.next();
    Parsed { command, done: words.collect(), word, start }
}

fn pairs<'a>(word: &str, names: impl IntoIterator<Item = &'a str>, space: bool) -> Vec<Pair> {
    let mut v: Vec<Pair> = names
        .into_iter()
        .filter(|n| n.starts_with(word))
        .map(|n| Pair { display: n.to_string(), replacement: if space { format!("{n} ") } else { n.to_string() } })
        .collect();
    v.sort_by(|a, b| a.display.cmp(&b.display));
    v.dedup_by(|a, b| a.display == b.display);
    v
}

/// Command names and aliases.
fn command_words() -> impl Iterator<Item = &'static str> {
    Session::commands().iter().flat_map(|c| std::iter::once(c.name).chain(c.aliases.iter().copied()))
}

impl ReplHelper {
    /// Candidates for the word under the cursor (`line[..pos]`), without file paths.
    fn word_candidates(&self, p: &Parsed) -> Option<Vec<Pair>> {
        let Some(cmd) = p.command else {
            return Some(pairs(p.word, command_words(), true));
        };
        let name = find_command(cmd)?.name;
        let i = p.done.len();
        Some(match (name, i) {
            ("set" | "sweep", 0) => pairs(p.word, SETTINGS.iter().map(|s| s.0), true),
            ("set", 1) => {
                let values = setting_values(p.done[0]);
                pairs(p.word, values.iter().map(String::as_str), false)
            }
            ("preset", 0) => pairs(p.word, PRESETS.iter().map(|s| s.0), false),
            ("break", 0) => pairs(p.word, crate::commands::BREAK_EVENTS.iter().copied(), true),
            ("rl", 0) => pairs(p.word, RL_SUBCOMMANDS.iter().copied(), true),
            ("rl", 1) if p.done[0] == "set" => pairs(p.word, RL_SETTINGS.iter().map(|s| s.0), true),
            ("likelihood", _) => pairs(p.word, ESTIMATORS.iter().copied(), true),
            ("help", 0) => pairs(p.word, command_words(), false),
            ("switch", 0) | ("diff", 0 | 1) | ("fork", 0) => pairs(p.word, self.branches.iter().map(String::as_str), true),
            ("load", _) => pairs(p.word, LOAD_WORDS.iter().copied(), false),
            _ => return None,
        })
    }

    fn complete_line(&self, line: &str, pos: usize) -> (usize, Vec<Pair>) {
        let p = parse(&line[..pos]);
        let mut out = self.word_candidates(&p).unwrap_or_default();
        let is_file_cmd = p.command.and_then(find_command).is_some_and(|c| FILE_COMMANDS.contains(&c.name));
        if is_file_cmd && !p.word.contains('=') {
            if let Ok((start, files)) = self.files.complete_path(line, pos) {
                if start == p.start || out.is_empty() {
                    let quoted = line[start..].starts_with('"');
                    out.extend(files.into_iter().map(|f| if quoted { f } else { requote(f) }));
                    return (start, out);
                }
            }
        }
        (p.start, out)
    }
}

/// `rustyline` escapes special characters with `\`, which the command parser does not read outside quotes:
/// write such a path in double quotes instead (left open for a directory, so completion can go on).
fn requote(mut f: Pair) -> Pair {
    if f.replacement.contains('\\') {
        let plain: String = {
            let mut s = String::new();
            let mut it = f.replacement.chars();
            while let Some(c) = it.next() {
                if c == '\\' {
                    s.extend(it.next());
                } else {
                    s.push(c);
                }
            }
            s
        };
        let close = if plain.ends_with('/') { "" } else { "\"" };
        f.replacement = format!("\"{}{close}", plain.replace('"', "\\\""));
    }
    f
}

impl Completer for ReplHelper {
    type Candidate = Pair;

    fn complete(&self, line: &str, pos: usize, _ctx: &Context<'_>) -> rustyline::Result<(usize, Vec<Pair>)> {
        Ok(self.complete_line(line, pos))
    }
}

/// A hint: `display` is shown dimmed after the cursor; only `complete` (a real completion, never a
/// placeholder like `NAME`) is inserted by → or End.
pub struct ReplHint {
    display: String,
    complete: Option<String>,
}

impl Hint for ReplHint {
    fn display(&self) -> &str {
        &self.display
    }
    fn completion(&self) -> Option<&str> {
        self.complete.as_deref()
    }
}

/// The argument part of a usage line (`step [N]` -> `[N]`).
fn usage_args(c: &Command) -> Vec<&'static str> {
    c.usage.split_whitespace().skip(1).collect()
}

impl ReplHelper {
    /// The hint for `line` with the cursor at its end.
    pub fn hint_for(&self, line: &str) -> Option<ReplHint> {
        if line.trim().is_empty() || line.contains('\n') {
            return None;
        }
        let p = parse(line);
        let Some(cmd) = p.command else {
            // Typing the command word: finish a unique name, then show its usage.
            let word = p.word;
            let c = find_command(word).or_else(|| {
                let mut m = Session::commands().iter().filter(|c| c.name.starts_with(word));
                let first = m.next()?;
                m.next().is_none().then_some(first)
            })?;
            let rest = if c.name.starts_with(word) { &c.name[word.len()..] } else { "" };
            let args = usage_args(c);
            let mut display = rest.to_string();
            if !args.is_empty() {
                display += &format!(" {}", args.join(" "));
            }
            display += &format!("  — {}", c.summary);
            return Some(ReplHint { display, complete: (!rest.is_empty()).then(|| rest.to_string()) });
        };
        let c = find_command(cmd)?;
        // Mid-word: finish a unique known word (setting, preset, branch, command).
        if !p.word.is_empty() {
            let cands = self.word_candidates(&p)?;
            let [only] = cands.as_slice() else { return None };
            let rest = only.display.strip_prefix(p.word)?;
            return (!rest.is_empty()).then(|| ReplHint { display: rest.to_string(), complete: Some(rest.to_string()) });
        }
        let i = p.done.len();
        let display = match (c.name, i) {
            ("set", 1) => {
                let (_, help) = SETTINGS.iter().find(|(n, _)| *n == p.done[0])?;
                format!("VALUE  — {help}")
            }
            ("preset", 0) => PRESETS.iter().map(|p| p.0).collect::<Vec<_>>().join(" | "),
            ("rl", 2) if p.done[0] == "set" => {
                let (_, help) = RL_SETTINGS.iter().find(|(n, _)| *n == p.done[1])?;
                format!("VALUE  — {help}")
            }
            ("rl", _) => return None,
            _ => usage_args(c).get(i..)?.join(" "),
        };
        (!display.is_empty()).then_some(ReplHint { display, complete: None })
    }
}

impl Hinter for ReplHelper {
    type Hint = ReplHint;

    fn hint(&self, line: &str, pos: usize, _ctx: &Context<'_>) -> Option<ReplHint> {
        if pos < line.len() {
            return None;
        }
        self.hint_for(line)
    }
}

impl Highlighter for ReplHelper {
    fn highlight_hint<'h>(&self, hint: &'h str) -> Cow<'h, str> {
        if self.color {
            Cow::Owned(format!("\x1b[2m{hint}\x1b[0m"))
        } else {
            Cow::Borrowed(hint)
        }
    }

    fn highlight_char(&self, _line: &str, _pos: usize, _kind: CmdKind) -> bool {
        false
    }
}

impl Validator for ReplHelper {
    /// A line ending in `\` continues on the next one.
    fn validate(&self, ctx: &mut ValidationContext) -> rustyline::Result<ValidationResult> {
        Ok(if ctx.input().ends_with('\\') { ValidationResult::Incomplete } else { ValidationResult::Valid(None) })
    }
}

impl Helper for ReplHelper {}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(line: &str) -> (usize, Vec<String>) {
        let mut h = ReplHelper::new(false);
        h.branches = vec!["main".into(), "q-mode".into()];
        let (start, v) = h.complete_line(line, line.len());
        (start, v.into_iter().map(|p| p.replacement).collect())
    }

    #[test]
    fn completes_commands_settings_presets_branches() {
        assert_eq!(complete("ste"), (0, vec!["step ".to_string()]));
        assert!(complete("se").1.contains(&"settings ".to_string()));
        assert_eq!(complete("set thr"), (4, vec!["threshold ".to_string()]));
        assert_eq!(complete("set edit_timing a"), (16, vec!["after-masks".to_string(), "always".to_string()]));
        assert_eq!(complete("set top_k o").1, vec!["off"]);
        assert_eq!(complete("preset ll").1, vec!["llada2.0", "llada2.2"]);
        assert_eq!(complete("break de").1, vec!["delete "]);
        assert_eq!(complete("break t").1, vec!["text ", "token ", "truncate "]);
        assert_eq!(complete("switch q").1, vec!["q-mode "]);
        assert_eq!(complete("checkout m").1, vec!["main "]);
        assert_eq!(complete("diff main q").1, vec!["q-mode "]);
        assert!(complete("step 3").1.is_empty());
        assert_eq!(complete("rl upd").1, vec!["update "]);
        assert_eq!(complete("rl set eps_h").1, vec!["eps_high "]);
        assert!(complete("likelihood mid").1.contains(&"midpoint:4 ".to_string()));
    }

    #[test]
    fn completes_paths_after_file_commands() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("trace-a.json"), "").unwrap();
        std::fs::create_dir(dir.path().join("my dir")).unwrap();
        let d = dir.path().display();
        let (start, v) = complete(&format!("export {d}/tra"));
        assert_eq!(start, 7);
        assert_eq!(v, vec![format!("{d}/trace-a.json")]);
        let (_, v) = complete(&format!("save {d}/my"));
        assert_eq!(v, vec![format!("\"{d}/my dir/")]);
        assert!(complete("load bui").1.contains(&"builtin".to_string()));
    }

    #[test]
    fn hints_show_usage_and_never_insert_placeholders() {
        let h = ReplHelper::new(false);
        let s = h.hint_for("ste").unwrap();
        assert!(s.display().starts_with("p [N]"), "{}", s.display());
        assert_eq!(s.completion(), Some("p"));
        let s = h.hint_for("set ").unwrap();
        assert_eq!(s.display(), "NAME VALUE");
        assert_eq!(s.completion(), None);
        assert!(h.hint_for("set threshold ").unwrap().display().contains("tau_mask"));
        assert_eq!(h.hint_for("set thresh").unwrap().completion(), Some("old"));
        assert!(h.hint_for("preset ").unwrap().display().contains("llada2.0"));
        assert!(h.hint_for("step 3").is_none());
        assert!(h.hint_for("").is_none());
    }

    #[test]
    fn setting_values_come_from_the_help() {
        assert_eq!(setting_values("edit_timing"), vec!["always", "after-masks"]);
        assert_eq!(setting_values("eos_early_stop"), vec!["true", "false"]);
        assert_eq!(setting_values("edit_threshold"), vec!["off"]);
        assert!(setting_values("gen_length").is_empty());
    }
}
