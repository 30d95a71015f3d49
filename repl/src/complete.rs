//! Completion of a command line, the same for every front-end: the terminal's Tab (`terminal::ReplHelper`)
//! and the kernel's complete_request call [`complete`]. Everything it knows comes from the command table, the
//! engine's setting, preset and RL-setting tables and the session's branches, so it cannot drift from what
//! `Session::execute` accepts.

use dllm_engine::BUILTINS;
use dllm_engine::decode::{PRESETS, SETTINGS};
use dllm_engine::rl::RL_SETTINGS;

use crate::grammar::{self, Kind};
use crate::{Command, Session};

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
/// session's branch names. What the word is comes from the command's grammar ([`grammar::position`]); a
/// candidate ends in a space when another argument may follow it.
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
    let at = grammar::position(&c.syntax, &p.done);
    // `KEY=VALUE`: the values of that key, written with it.
    if let Some((k, _)) = p.word.split_once('=') {
        let Some(key) = at.keys.iter().find(|q| q.is_key(k)) else { return (start, Vec::new()) };
        let values = values(key.kind, None, branches);
        let full: Vec<String> = values.iter().map(|x| format!("{k}={x}")).collect();
        return (start, names(p.word, full.iter().map(String::as_str), false));
    }
    let mut out = Vec::new();
    if let Some(subs) = at.subs {
        out.extend(subs.iter().flat_map(|s| names(p.word, [s.name], !s.params.is_empty())));
        out.sort_by(|a, b| a.display.cmp(&b.display));
    }
    if let Some(param) = at.param {
        let vs = values(param.kind, grammar::named_setting(param.kind, &p.done), branches);
        out.extend(names(p.word, vs.iter().map(String::as_str), at.more));
        if matches!(param.kind, Kind::Path | Kind::Model) {
            out.extend(paths(p.word));
        }
    }
    let keys: Vec<String> = at.keys.iter().filter_map(|q| match q.arity {
        grammar::Arity::Key(k) => Some(format!("{k}=")),
        _ => None,
    }).collect();
    out.extend(names(p.word, keys.iter().map(String::as_str), false));
    (start, out)
}

/// Each registered estimator's example spec.
fn estimators() -> Vec<String> {
    dllm_engine::estimator_specs::ESTIMATORS.iter().map(|k| k.example.to_string()).collect()
}

/// The words an argument of `kind` takes (`setting`: the setting whose value it is, [`grammar::named_setting`]).
fn values(kind: Kind, setting: Option<&str>, branches: &[String]) -> Vec<String> {
    let strs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
    match kind {
        Kind::OneOf(words) => strs(words),
        Kind::Setting => SETTINGS.iter().map(|s| s.0.to_string()).collect(),
        Kind::SettingValue => setting.map(setting_values).unwrap_or_default(),
        Kind::RlSetting => RL_SETTINGS.iter().map(|s| s.0.to_string()).collect(),
        Kind::RlValue => match setting {
            Some("preset") => std::iter::once("auto".to_string()).chain(PRESETS.iter().map(|p| p.name.to_string())).collect(),
            Some("estimator") => estimators(),
            Some("reward") => crate::reward_command::reward_kinds().iter().map(|k| k.name.to_string()).collect(),
            Some("normalise") => strs(&["true", "false"]),
            _ => Vec::new(),
        },
        Kind::TrainSetting => crate::finetune::SETTINGS.iter().map(|s| s.0.to_string()).collect(),
        Kind::Preset => PRESETS.iter().map(|p| p.name.to_string()).collect(),
        Kind::Branch => branches.to_vec(),
        Kind::Model => std::iter::once("builtin".to_string())
            .chain(BUILTINS.iter().map(|b| b.0.to_string()))
            .chain(dllm_engine::shapes::SHAPES.iter().map(|s| format!("random:{}", s.0)))
            .collect(),
        Kind::Estimator => estimators(),
        Kind::Quantization => strs(&["int8", "fp8"]),
        Kind::Fp8Matmul => strs(&["auto", "dequantize", "scaled", "emulated"]),
        Kind::Device => strs(&["auto", "cpu", "cuda"]),
        Kind::Dtype => strs(&["f32", "bf16", "f16"]),
        Kind::Command => command_words().map(String::from).collect(),
        Kind::Int { .. } | Kind::Prob | Kind::Name | Kind::Path | Kind::Token | Kind::Ids | Kind::Text => Vec::new(),
    }
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
        assert_eq!(complete_all("sweep edit_timing always a").1, vec!["after-masks ", "always "], "every value of a sweep");
        assert_eq!(complete_all("preset sg").1, vec!["sglang", "sglang-indel"]);
        assert_eq!(complete_all("break de").1, vec!["delete"], "no argument follows");
        assert_eq!(complete_all("break t").1, vec!["text ", "token ", "truncate"]);
        assert_eq!(complete_all("switch q").1, vec!["q-mode"]);
        assert_eq!(complete_all("checkout m").1, vec!["main"]);
        assert_eq!(complete_all("diff m").1, vec!["main "], "B follows A");
        assert_eq!(complete_all("diff main q").1, vec!["q-mode"]);
        assert!(complete_all("step 3").1.is_empty());
        assert_eq!(complete_all("rl upd").1, vec!["update "]);
        assert_eq!(complete_all("rl set eps_h").1, vec!["eps_high "]);
        assert_eq!(complete_all("train d").1, vec!["data "]);
        assert_eq!(complete_all("train set tr").1, vec!["trainable "]);
        assert!(complete_all("likelihood mid").1.contains(&"midpoint:4 ".to_string()));
        assert!(complete_all("frobnicate x").1.is_empty());
        assert_eq!(complete_all("fidelity f").1, vec!["fp8 ", "fp8_matmul="], "the format, or the key that may come first");
        assert_eq!(complete_all("fidelity i").1, vec!["int8 "]);
        assert_eq!(complete_all("redecode q8 quantize=i").1, vec!["quantize=int8"]);
        assert_eq!(complete_all("load builtin quantize=f").1, vec!["quantize=fp8"]);
        assert_eq!(complete_all("load builtin quantize=fp8 fp8_matmul=e").1, vec!["fp8_matmul=emulated"]);
        // From the registries: a preset, a branch list, an estimator, a reward.
        assert_eq!(complete_all("preset low").1, vec!["lowconf"]);
        assert_eq!(complete_all("drop main q").1, vec!["q-mode "], "drop takes several branches");
        assert_eq!(complete_all("likelihood gau").1, vec!["gauss:4 "]);
        assert_eq!(complete_all("rl set reward sim").1, vec!["similarity "], "the rest of the line is the value: `regex PATTERN`");
        assert_eq!(complete_all("rl set estimator gau").1, vec!["gauss:4 "]);
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
        assert!(complete_all("load bui").1.contains(&"builtin:tiny-2.2 ".to_string()));
        assert_eq!(complete_all("load builtin dt").1, vec!["dtype="]);
        assert!(complete_all("load builtin dtype=bf16 dt").1.is_empty(), "a key is given once");
    }

    #[test]
    fn setting_values_come_from_the_help() {
        assert_eq!(setting_values("edit_timing"), vec!["always", "after-masks"]);
        assert!(setting_values("top_k").contains(&"off".to_string()));
        assert!(setting_values("threshold").is_empty());
    }
}
