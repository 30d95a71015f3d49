//! The typed grammar of commands. Every row of the command table declares its arguments (or subcommands, each
//! with its own) as [`Param`]s of a [`Kind`]; from that one declaration come:
//! - parsing with the checks ([`parse`]: counts, whole numbers in range, probabilities, names from a table),
//!   before any handler runs, so a handler reads typed values ([`crate::parse::Args::int`]);
//! - usage lines ([`usage`]) and the terminal's hint ([`hint`]);
//! - completion for every front-end ([`crate::complete::complete`] asks [`position`] what the word under the
//!   cursor is, then [`Kind`] for its candidates).
//!
//! Names that are data (decoding presets, settings, estimators, rewards, embedded models, shapes) are read from
//! their one table each; nothing here lists them.

use dllm_engine::decode::{find_preset, PRESETS, SETTINGS};

use crate::parse::{Args, Val};

/// What one argument is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// A whole number from `min` to `max`.
    Int { min: i64, max: i64 },
    /// A probability in (0, 1].
    Prob,
    /// One of these words.
    OneOf(&'static [&'static str]),
    /// A decoding setting's name ([`SETTINGS`]); the next argument is its value.
    Setting,
    /// The value of the setting named by the argument before it.
    SettingValue,
    /// An RL setting's name ([`dllm_engine::rl::RL_SETTINGS`]); the next argument is its value.
    RlSetting,
    /// The value of the RL setting before it (the rest of the line: a reward command has spaces).
    RlValue,
    /// A fine-tuning setting's name (`train set`).
    TrainSetting,
    /// A decoding preset ([`PRESETS`]).
    Preset,
    /// An existing branch.
    Branch,
    /// A new name (nothing to complete).
    Name,
    /// A file or folder.
    Path,
    /// What `load` reads: a checkpoint folder, `builtin[:NAME]` or `random:SHAPE[:SEED]`.
    Model,
    /// A likelihood estimator spec ([`dllm_engine::likelihood::ESTIMATORS`]).
    Estimator,
    /// `int8` or `fp8` (`none` where a load may also mean full precision).
    Quantization,
    /// How fp8 experts multiply: auto, dequantize, scaled or emulated.
    Fp8Matmul,
    Device,
    Dtype,
    /// A token: its text, or `#ID`.
    Token,
    /// Comma-separated token ids.
    Ids,
    /// Free text (with [`Arity::Rest`], the rest of the line as typed).
    Text,
    /// A command name.
    Command,
}

/// How many words a parameter takes, and where.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arity {
    One,
    Optional,
    /// One or more.
    Many,
    /// Zero or more.
    Any,
    /// The rest of the line as typed (at least one word unless `Optional` comes first in the table).
    Rest,
    /// `KEY=VALUE` anywhere on the line, at most once.
    Key(&'static str),
    /// Everything after a `--` word, as typed.
    AfterDashes,
}

/// One argument: its name in usage lines (`N`, `POS`), its kind and arity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Param {
    pub name: &'static str,
    pub kind: Kind,
    pub arity: Arity,
}

impl Param {
    /// Whether this is the `KEY=` parameter named `k`.
    pub fn is_key(&self, k: &str) -> bool {
        matches!(self.arity, Arity::Key(x) if x == k)
    }
}

pub const fn one(name: &'static str, kind: Kind) -> Param {
    Param { name, kind, arity: Arity::One }
}
pub const fn opt(name: &'static str, kind: Kind) -> Param {
    Param { name, kind, arity: Arity::Optional }
}
pub const fn many(name: &'static str, kind: Kind) -> Param {
    Param { name, kind, arity: Arity::Many }
}
pub const fn any(name: &'static str, kind: Kind) -> Param {
    Param { name, kind, arity: Arity::Any }
}
pub const fn rest(name: &'static str, kind: Kind) -> Param {
    Param { name, kind, arity: Arity::Rest }
}
pub const fn key(key: &'static str, name: &'static str, kind: Kind) -> Param {
    Param { name, kind, arity: Arity::Key(key) }
}
pub const fn after_dashes(name: &'static str) -> Param {
    Param { name, kind: Kind::Text, arity: Arity::AfterDashes }
}

/// A whole number from `min` to `max`.
pub const fn int(min: i64, max: i64) -> Kind {
    Kind::Int { min, max }
}

/// A subcommand: `rl update [N]`, `break token ID`.
#[derive(Debug, Clone, Copy)]
pub struct Sub {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    pub params: &'static [Param],
}

pub const fn sub(name: &'static str, aliases: &'static [&'static str], params: &'static [Param]) -> Sub {
    Sub { name, aliases, params }
}

/// A command's arguments: a list of parameters, or subcommands named by the first word.
#[derive(Debug, Clone, Copy)]
pub enum Syntax {
    Params(&'static [Param]),
    Subs {
        /// What a subcommand is called in errors: "rl subcommand", "event".
        what: &'static str,
        subs: &'static [Sub],
        /// Without a word, this subcommand runs (`rl` = `rl show`); `None`: a subcommand is required.
        default: Option<&'static str>,
        /// A first word that names no subcommand is read as these parameters (`train 100`, `delete 3`).
        otherwise: &'static [Param],
    },
}

/// The placeholder of a parameter in usage lines: `N`, `[N]`, `POS...`, `[device=D]`.
fn form(p: &Param) -> String {
    match p.arity {
        Arity::One | Arity::Rest => p.name.to_string(),
        Arity::Optional => format!("[{}]", p.name),
        Arity::Many => format!("{}...", p.name),
        Arity::Any => format!("[{}...]", p.name),
        Arity::Key(k) => format!("[{k}={}]", p.name),
        Arity::AfterDashes => format!("[-- {}]", p.name),
    }
}

fn forms(params: &[Param]) -> String {
    params.iter().map(form).collect::<Vec<_>>().join(" ")
}

fn sub_form(s: &Sub) -> String {
    if s.params.is_empty() {
        s.name.to_string()
    } else {
        format!("{} {}", s.name, forms(s.params))
    }
}

/// The argument part of the usage line: `[N]`, `NAME VALUE`, `[show|set NAME VALUE|...]`.
pub fn usage(syntax: &Syntax) -> String {
    match syntax {
        Syntax::Params(ps) => forms(ps),
        Syntax::Subs { subs, default, otherwise, .. } => {
            let mut alts: Vec<String> = subs.iter().map(sub_form).collect();
            if !otherwise.is_empty() {
                alts.push(forms(otherwise));
            }
            let alts = alts.join("|");
            if default.is_some() {
                format!("[{alts}]")
            } else {
                alts
            }
        }
    }
}

/// Every kind of argument the syntax takes (with its subcommands').
pub fn kinds(syntax: &Syntax) -> Vec<Kind> {
    match syntax {
        Syntax::Params(ps) => ps.iter().map(|p| p.kind).collect(),
        Syntax::Subs { subs, otherwise, .. } => subs.iter().flat_map(|s| s.params).chain(otherwise.iter()).map(|p| p.kind).collect(),
    }
}

/// The subcommand a word names.
pub fn find_sub(subs: &'static [Sub], word: &str) -> Option<&'static Sub> {
    subs.iter().find(|s| s.name == word || s.aliases.contains(&word))
}

/// The parameters that read the words of `args` (after the subcommand word, if any) and the index of their
/// first word; `Err` names an unknown subcommand.
fn params_of<'a>(syntax: &Syntax, words: &'a [String]) -> Result<(Option<&'static Sub>, &'static [Param], usize), String> {
    match syntax {
        Syntax::Params(ps) => Ok((None, ps, 0)),
        Syntax::Subs { what, subs, default, otherwise } => match words.first() {
            None => match default {
                Some(d) => Ok((find_sub(subs, d), &[], 0)),
                None => Err(format!("missing the {what}: {}", usage(syntax))),
            },
            Some(w) => match find_sub(subs, w) {
                Some(s) => Ok((Some(s), s.params, 1)),
                // A word that is no subcommand but reads as the other form (`train 100`), or an error about it
                // when it looks like one (`train 0`: a number out of range).
                None if otherwise.first().is_some_and(|p| check(p, w).is_ok() || w.starts_with(|c: char| c.is_ascii_digit() || c == '-')) => {
                    Ok((None, otherwise, 0))
                }
                None => {
                    let mut names: Vec<String> = subs.iter().map(|s| s.name.to_string()).collect();
                    names.extend(otherwise.first().map(|p| p.name.to_string()));
                    Err(format!("unknown {what} {w:?}: expected {}", names.join(", ")))
                }
            },
        },
    }
}

/// Reads `args`' words by `syntax`: checks every count, number and name, and stores typed values in `args`
/// (by parameter name; the subcommand's canonical name in `args.sub`). The error names the argument and what
/// it accepts; the caller adds the usage line.
pub fn parse(syntax: &Syntax, args: &mut Args) -> Result<(), String> {
    let (sub, params, first) = params_of(syntax, &args.words)?;
    args.sub = sub.map(|s| s.name);
    // Everything after a `--` word belongs to an AfterDashes parameter, when there is one.
    let mut end = args.words.len();
    if let Some(p) = params.iter().find(|p| p.arity == Arity::AfterDashes) {
        if let Some(i) = args.words.iter().skip(first).position(|w| w == "--") {
            end = first + i;
            let text = args.rest_from(end + 1).trim().to_string();
            if text.is_empty() {
                return Err(format!("missing {} after --", p.name));
            }
            args.values.push((p.name, Val::Text(text)));
        }
    }
    // Key=value words first, wherever they are.
    let mut positional = Vec::new();
    for i in first..end {
        let w = &args.words[i];
        let key = w.split_once('=').and_then(|(k, v)| params.iter().find(|p| p.is_key(k)).map(|p| (p, v)));
        match key {
            Some((p, v)) => {
                if args.values.iter().any(|(n, _)| *n == p.name) {
                    return Err(format!("{} given twice", form(p)));
                }
                let v = check(p, v)?;
                args.values.push((p.name, v));
            }
            None => positional.push(i),
        }
    }
    let mut next = positional.into_iter().peekable();
    for p in params.iter().filter(|p| !matches!(p.arity, Arity::Key(_) | Arity::AfterDashes)) {
        match p.arity {
            Arity::One | Arity::Optional => match next.next() {
                Some(i) => {
                    let v = check(p, &args.words[i])?;
                    args.values.push((p.name, v));
                }
                None if p.arity == Arity::One => return Err(format!("missing {}", p.name)),
                None => {}
            },
            Arity::Many | Arity::Any => {
                let rest: Vec<usize> = next.by_ref().collect();
                if rest.is_empty() && p.arity == Arity::Many {
                    return Err(format!("missing {}", p.name));
                }
                for i in rest {
                    let v = check(p, &args.words[i])?;
                    args.values.push((p.name, v));
                }
            }
            Arity::Rest => {
                let Some(&i) = next.peek() else { return Err(format!("missing {}", p.name)) };
                let text = args.rest_from(i);
                let text = match &args.words[i..end] {
                    // One quoted word: its text without the quotes.
                    [only] if text.trim().starts_with('"') => only.clone(),
                    _ => text.trim().to_string(),
                };
                args.values.push((p.name, Val::Text(text)));
                next.by_ref().for_each(drop);
            }
            Arity::Key(_) | Arity::AfterDashes => unreachable!("filtered"),
        }
    }
    if let Some(i) = next.next() {
        return Err(format!("unexpected {:?}", args.words[i]));
    }
    Ok(())
}

/// Checks one word against its parameter's kind.
fn check(p: &Param, w: &str) -> Result<Val, String> {
    let what = p.name;
    Ok(match p.kind {
        Kind::Int { min, max } => {
            let v = w.parse::<i64>().ok().filter(|v| (min..=max).contains(v));
            Val::Int(v.ok_or_else(|| format!("{what} must be a whole number from {min} to {max}, not {w:?}"))?)
        }
        Kind::Prob => {
            let v = w.parse::<f64>().ok().filter(|v| *v > 0.0 && *v <= 1.0);
            Val::Num(v.ok_or_else(|| format!("{what} must be a probability in (0, 1], not {w:?}"))?)
        }
        Kind::OneOf(words) if !words.contains(&w) => return Err(format!("{what} must be one of {}, not {w:?}", words.join(", "))),
        Kind::Preset if find_preset(w).is_none() => {
            let names: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
            return Err(format!("unknown preset {w:?}; presets: {}", names.join(", ")));
        }
        _ => Val::Text(w.to_string()),
    })
}

/// Where the word under the cursor stands: the parameter it fills (`None` where nothing is expected), whether
/// the subcommand word is being typed, and whether another argument may follow it.
pub struct Position {
    /// The subcommands to offer (the first word of a command with subcommands).
    pub subs: Option<&'static [Sub]>,
    pub param: Option<Param>,
    /// Another argument may follow (completion then adds a space).
    pub more: bool,
    /// `KEY=` parameters not given yet, offered beside positional candidates.
    pub keys: Vec<Param>,
}

/// What the word after the complete words `done` is, under `syntax`.
pub fn position(syntax: &Syntax, done: &[&str]) -> Position {
    let (params, done): (&'static [Param], &[&str]) = match syntax {
        Syntax::Params(ps) => (ps, done),
        Syntax::Subs { subs, otherwise, .. } => match done.first() {
            None => {
                let mut p = Position { subs: Some(subs), param: None, more: true, keys: Vec::new() };
                p.param = otherwise.first().copied();
                return p;
            }
            Some(w) => match find_sub(subs, w) {
                Some(s) => (s.params, &done[1..]),
                None => (otherwise, done),
            },
        },
    };
    let keys: Vec<Param> = params
        .iter()
        .filter(|p| matches!(p.arity, Arity::Key(k) if !done.iter().any(|w| w.starts_with(&format!("{k}=")))))
        .copied()
        .collect();
    if done.contains(&"--") && params.iter().any(|p| p.arity == Arity::AfterDashes) {
        return Position { subs: None, param: None, more: true, keys: Vec::new() };
    }
    let positional = done.iter().filter(|w| !w.split_once('=').is_some_and(|(k, _)| params.iter().any(|p| p.is_key(k)))).count();
    let mut seen = 0;
    let order: Vec<&Param> = params.iter().filter(|p| !matches!(p.arity, Arity::Key(_) | Arity::AfterDashes)).collect();
    for (i, p) in order.iter().enumerate() {
        let last = i + 1 == order.len();
        match p.arity {
            Arity::One | Arity::Optional if seen == positional => {
                return Position { subs: None, param: Some(**p), more: !last || !keys.is_empty(), keys };
            }
            Arity::One | Arity::Optional => seen += 1,
            Arity::Many | Arity::Any | Arity::Rest => return Position { subs: None, param: Some(**p), more: true, keys },
            _ => {}
        }
    }
    let more = !keys.is_empty();
    Position { subs: None, param: None, more, keys }
}

/// The setting whose value an argument of `kind` is, after the complete words `done`: `set NAME VALUE` and
/// `sweep NAME VALUE...` name it first, `rl set NAME VALUE` second.
pub fn named_setting<'a>(kind: Kind, done: &[&'a str]) -> Option<&'a str> {
    match kind {
        Kind::SettingValue => done.first().copied(),
        Kind::RlValue if done.len() == 2 => Some(done[1]),
        _ => None,
    }
}

/// The terminal's hint after the complete words `done`: the parameters still to come (`POS [K]`), or for a
/// setting's value its meaning.
pub fn hint(syntax: &Syntax, done: &[&str]) -> Option<String> {
    let pos = position(syntax, done);
    if pos.subs.is_some() {
        return Some(usage(syntax));
    }
    let p = pos.param?;
    let name = pos.param.and_then(|p| named_setting(p.kind, done));
    let meaning = |table: &[(&str, &str)]| table.iter().find(|(n, _)| Some(*n) == name).map(|(_, h)| format!("VALUE  — {h}"));
    match p.kind {
        Kind::SettingValue => meaning(SETTINGS),
        Kind::RlValue => meaning(dllm_engine::rl::RL_SETTINGS),
        Kind::Preset => Some(PRESETS.iter().map(|p| p.name).collect::<Vec<_>>().join(" | ")),
        _ => {
            let params: &[Param] = match syntax {
                Syntax::Params(ps) => ps,
                Syntax::Subs { subs, otherwise, .. } => done.first().and_then(|w| find_sub(subs, w)).map_or(*otherwise, |s| s.params),
            };
            let from = params.iter().position(|q| *q == p)?;
            Some(forms(&params[from..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEP: Syntax = Syntax::Params(&[opt("N", int(1, 100))]);
    const LOAD: Syntax = Syntax::Params(&[opt("MODEL", Kind::Model), key("device", "D", Kind::Device), key("dtype", "T", Kind::Dtype)]);
    const LIKE: Syntax = Syntax::Params(&[any("ESTIMATOR", Kind::Estimator), key("seed", "S", int(0, 9)), after_dashes("PROMPT => RESPONSE")]);
    const SUBS: Syntax = Syntax::Subs {
        what: "subcommand",
        subs: &[sub("show", &[], &[]), sub("update", &["updates"], &[opt("N", int(1, 5))]), sub("prompt", &[], &[rest("TEXT", Kind::Text)])],
        default: Some("show"),
        otherwise: &[],
    };

    fn parsed(syntax: &Syntax, line: &str) -> Result<Args<'static>, String> {
        let mut a = Args::new(line)?;
        parse(syntax, &mut a)?;
        Ok(a)
    }

    #[test]
    fn numbers_are_checked_before_any_handler() {
        assert_eq!(parsed(&STEP, "3").unwrap().int("N"), Some(3));
        assert_eq!(parsed(&STEP, "").unwrap().int("N"), None);
        for bad in ["3.7", "-5", "0", "9e99", "101", "x"] {
            let e = parsed(&STEP, bad).err().unwrap();
            assert!(e.contains("whole number from 1 to 100") && e.contains(bad), "{bad}: {e}");
        }
        assert!(parsed(&STEP, "3 4").err().unwrap().contains("unexpected \"4\""));
    }

    #[test]
    fn keys_anywhere_once_and_dashes() {
        let a = parsed(&LOAD, "device=cpu /m dtype=bf16").unwrap();
        assert_eq!((a.text("MODEL"), a.text("D"), a.text("T")), (Some("/m"), Some("cpu"), Some("bf16")));
        assert!(parsed(&LOAD, "dtype=f32 dtype=bf16").err().unwrap().contains("given twice"));
        let a = parsed(&LIKE, "mc:4 stratified:2 seed=3 -- sort 31 => 13").unwrap();
        assert_eq!(a.texts("ESTIMATOR"), vec!["mc:4", "stratified:2"]);
        assert_eq!(a.int("S"), Some(3));
        assert_eq!(a.text("PROMPT => RESPONSE"), Some("sort 31 => 13"));
        assert!(parsed(&LIKE, "seed=10").err().unwrap().contains("S must be a whole number from 0 to 9"));
        assert!(parsed(&LIKE, "--").err().unwrap().contains("missing PROMPT"));
    }

    #[test]
    fn subcommands_default_aliases_and_rest() {
        assert_eq!(parsed(&SUBS, "").unwrap().sub, Some("show"));
        let a = parsed(&SUBS, "updates 2").unwrap();
        assert_eq!((a.sub, a.int("N")), (Some("update"), Some(2)));
        assert!(parsed(&SUBS, "update 9").err().unwrap().contains("from 1 to 5"));
        assert!(parsed(&SUBS, "frob").err().unwrap().contains("unknown subcommand \"frob\": expected show, update, prompt"));
        assert_eq!(parsed(&SUBS, "prompt sort  3 1 => 13").unwrap().text("TEXT"), Some("sort  3 1 => 13"));
        assert_eq!(parsed(&SUBS, "prompt \"a; b\"").unwrap().text("TEXT"), Some("a; b"));
        assert_eq!(usage(&SUBS), "[show|update [N]|prompt TEXT]");
        assert_eq!(usage(&LIKE), "[ESTIMATOR...] [seed=S] [-- PROMPT => RESPONSE]");
    }

    #[test]
    fn positions_for_completion_and_hints() {
        let p = position(&LOAD, &[]);
        assert_eq!(p.param.map(|p| p.kind), Some(Kind::Model));
        assert_eq!(p.keys.len(), 2);
        let p = position(&LOAD, &["device=cpu"]);
        assert_eq!(p.keys.len(), 1, "a key given is not offered again");
        assert!(position(&STEP, &["3"]).param.is_none());
        assert!(position(&SUBS, &[]).subs.is_some());
        assert_eq!(position(&SUBS, &["update"]).param.map(|p| p.name), Some("N"));
        assert_eq!(hint(&STEP, &[]).as_deref(), Some("[N]"));
        assert_eq!(hint(&SUBS, &["prompt"]).as_deref(), Some("TEXT"));
    }
}
