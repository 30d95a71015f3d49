//! Command text to commands, the same in every front-end: `-c` text, scripts (`dllm run`, `source`), commands on
//! stdin, lines of the interactive REPL and notebook cells. One command a line; `;` outside double quotes
//! separates commands on a line (`\"` escapes a quote inside them); `#` starts a comment line; a line ending in
//! `\` continues on the next (the command gets a newline there).

use std::collections::VecDeque;
use std::io;

/// One command of a batch; `line` is its first line in a script, a cell or on stdin.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub command: String,
    pub line: Option<usize>,
}

/// Splits at `;` (and at newlines when `newlines`) outside double quotes; parts trimmed, empty parts and
/// `#` comments dropped.
fn split(text: &str, newlines: bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut chars) = (false, text.chars());
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted => {
                cur.push(c);
                cur.extend(chars.next());
            }
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ';' if !quoted => out.push(std::mem::take(&mut cur)),
            '\n' if newlines && !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter().map(|c| c.trim().to_string()).filter(|c| !c.is_empty() && !c.starts_with('#')).collect()
}

/// Where the last command of a line starts: the byte after its last `;` outside double quotes (0 if none).
/// Completion uses it to find the command the cursor is in.
pub fn last_command_start(line: &str) -> usize {
    let (mut quoted, mut escaped, mut start) = (false, false, 0);
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ';' if !quoted => start = i + 1,
            _ => {}
        }
    }
    start
}

/// `-c` text: commands separated by `;` or newlines outside double quotes.
pub fn split_commands(text: &str) -> Vec<String> {
    split(text, true)
}

/// One (joined) line: commands separated by `;` outside double quotes; newlines of continued lines stay.
pub fn split_chain(line: &str) -> Vec<String> {
    split(line, false)
}

/// The commands of lines read one by one (a script, stdin): comments and blank lines skipped, `\`
/// continuations joined, `;` chains split. A line that cannot be read (not UTF-8) is an error item for that
/// line alone; reading goes on after it.
pub struct ScriptLines<I> {
    lines: I,
    n: usize,
    pending: VecDeque<Item>,
}

impl<I: Iterator<Item = io::Result<String>>> ScriptLines<I> {
    pub fn new(lines: I) -> Self {
        ScriptLines { lines, n: 0, pending: VecDeque::new() }
    }

    fn unreadable(&self, e: io::Error) -> io::Error {
        io::Error::new(e.kind(), format!("line {}: {e}", self.n))
    }
}

impl<I: Iterator<Item = io::Result<String>>> Iterator for ScriptLines<I> {
    type Item = io::Result<Item>;

    fn next(&mut self) -> Option<io::Result<Item>> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(Ok(item));
            }
            self.n += 1;
            let mut text = match self.lines.next()? {
                Ok(l) => l,
                Err(e) => return Some(Err(self.unreadable(e))),
            };
            let first = self.n;
            text.truncate(text.trim_end_matches('\r').len());
            while text.ends_with('\\') {
                text.pop();
                text.push('\n');
                match self.lines.next() {
                    Some(Ok(l)) => {
                        self.n += 1;
                        text += l.trim_end_matches('\r');
                    }
                    Some(Err(e)) => {
                        self.n += 1;
                        return Some(Err(self.unreadable(e)));
                    }
                    None => break,
                }
            }
            if text.trim_start().starts_with('#') {
                continue;
            }
            self.pending.extend(split_chain(&text).into_iter().map(|command| Item { command, line: Some(first) }));
        }
    }
}

/// The commands of a script's or a cell's text.
pub fn script_items(text: &str) -> Vec<Item> {
    ScriptLines::new(text.lines().map(|l| Ok(l.to_string()))).filter_map(Result::ok).collect()
}

/// A line of the interactive editor with its `\`-newline continuations turned into newlines.
pub fn join_continuations(buffer: &str) -> String {
    buffer.replace("\\\r\n", "\n").replace("\\\n", "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_on_semicolons_outside_quotes() {
        assert_eq!(split_commands("set gen_length 8; step 3 ;; canvas"), vec!["set gen_length 8", "step 3", "canvas"]);
        assert_eq!(split_commands(r#"prompt "a; b"; step"#), vec![r#"prompt "a; b""#, "step"]);
        assert_eq!(split_commands(r#"prompt "x\"; y"; run"#), vec![r#"prompt "x\"; y""#, "run"]);
        assert_eq!(split_commands("step\n# note\nrun"), vec!["step", "run"]);
        assert!(split_commands("  ; ").is_empty());
        assert_eq!(split_chain("prompt a\nb; step"), vec!["prompt a\nb", "step"], "a chain keeps continuation newlines");
    }

    #[test]
    fn scripts_skip_comments_join_continuations_and_split_chains() {
        let items = script_items("# setup; step\nset gen_length 8\n\nprompt a \\\n  b\r\n  step 2 ; canvas \n");
        assert_eq!(
            items,
            vec![
                Item { command: "set gen_length 8".into(), line: Some(2) },
                Item { command: "prompt a \n  b".into(), line: Some(4) },
                Item { command: "step 2".into(), line: Some(6) },
                Item { command: "canvas".into(), line: Some(6) },
            ]
        );
        assert_eq!(join_continuations("prompt a\\\nb"), "prompt a\nb");
    }

    #[test]
    fn an_unreadable_line_is_an_error_for_that_line_only() {
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "stream did not contain valid UTF-8");
        let lines = vec![Ok("step".to_string()), Err(bad()), Ok("run".to_string())];
        let got: Vec<_> = ScriptLines::new(lines.into_iter()).collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].as_ref().unwrap().command, "step");
        assert!(got[1].as_ref().unwrap_err().to_string().starts_with("line 2: "), "{:?}", got[1]);
        assert_eq!(got[2].as_ref().unwrap(), &Item { command: "run".into(), line: Some(3) });
    }
}
