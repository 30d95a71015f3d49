//! The line editor's helper: completion, hints, the dimmed hint colour, and `\` line continuation. Everything
//! it knows about commands comes from the command table (`Session::commands()`) and the engine's setting and
//! preset tables, so it cannot drift from what `execute` accepts.

use std::borrow::Cow;

use rustyline::completion::{Completer, Pair};
use rustyline::highlight::{CmdKind, Highlighter};
use rustyline::hint::{Hint, Hinter};
use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::{Context, Helper};

use crate::complete::parse;
pub use crate::complete::{find_command, setting_values};
use crate::Session;

pub struct ReplHelper {
    /// The session's branches, refreshed by the loop after each command.
    pub branches: Vec<String>,
    /// Whether to colour hints.
    pub color: bool,
}

impl ReplHelper {
    pub fn new(color: bool) -> ReplHelper {
        ReplHelper { branches: Vec::new(), color }
    }

    /// What Tab offers at the end of `line`: the replacements.
    pub fn tab(&self, line: &str) -> Vec<String> {
        self.complete_line(line, line.len()).1.into_iter().map(|p| p.replacement).collect()
    }

    /// Tab: the shared completion (`crate::complete`), as rustyline pairs.
    fn complete_line(&self, line: &str, pos: usize) -> (usize, Vec<Pair>) {
        let (start, v) = crate::complete::complete(line, pos, &self.branches);
        (start, v.into_iter().map(|c| Pair { display: c.display, replacement: c.replacement }).collect())
    }
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
            let args = crate::grammar::usage(&c.syntax);
            let mut display = rest.to_string();
            if !args.is_empty() {
                display += &format!(" {args}");
            }
            display += &format!("  — {}", c.summary);
            return Some(ReplHint { display, complete: (!rest.is_empty()).then(|| rest.to_string()) });
        };
        let c = find_command(cmd)?;
        // Mid-word: finish a unique candidate of the shared completion (setting, preset, branch, path...).
        if !p.word.is_empty() {
            let (_, cands) = crate::complete::complete(line, line.len(), &self.branches);
            let [only] = cands.as_slice() else { return None };
            let rest = only.replacement.trim_end().strip_prefix(p.word)?;
            return (!rest.is_empty()).then(|| ReplHint { display: rest.to_string(), complete: Some(rest.to_string()) });
        }
        let display = crate::grammar::hint(&c.syntax, &p.done)?;
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
    fn hints_show_usage_and_never_insert_placeholders() {
        let h = ReplHelper::new(false);
        let s = h.hint_for("ste").unwrap();
        assert!(s.display().starts_with("p [N]"), "{}", s.display());
        assert_eq!(s.completion(), Some("p"));
        let s = h.hint_for("set ").unwrap();
        assert_eq!(s.display(), "NAME VALUE");
        assert_eq!(s.completion(), None);
        assert!(h.hint_for("set threshold ").unwrap().display().contains("tau_mask"));
        assert!(h.hint_for("sweep threshold 0.5 ").unwrap().display().contains("tau_mask"), "every value of a sweep");
        assert!(h.hint_for("rl set kl ").unwrap().display().contains("KL"));
        assert_eq!(h.hint_for("set thresh").unwrap().completion(), Some("old"));
        assert!(h.hint_for("preset ").unwrap().display().contains("llada2.0"));
        assert!(h.hint_for("step 3").is_none());
        assert!(h.hint_for("").is_none());
    }

    #[test]
    fn tab_offers_the_shared_completion() {
        // The cases live with `crate::complete`; here only that Tab hands them to rustyline unchanged.
        assert_eq!(complete("set thr"), (4, vec!["threshold ".to_string()]));
        assert_eq!(complete("switch q").1, vec!["q-mode"]);
    }
}
