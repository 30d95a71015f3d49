//! A tiny interpreter for protocol tests: no model, instant, deterministic. Each line of a cell is one of
//!
//! ```text
//! print TEXT      stdout stream            eprint TEXT   stderr stream
//! echo TEXT       the cell's value         display TEXT  display_data (text/plain, text/html)
//! progress N      a display updated N times in a row (the core coalesces the updates)
//! sleep MS        waits, checking the interrupt every 5 ms (interrupted: an error, state kept)
//! fail TEXT       an error                 count         how many cells ran (state survives interrupts)
//! clear           clear_output
//! ```
//!
//! A line ending in `\` is incomplete; a line starting with `bad` is invalid.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::interpreter::{
    plain, Completion, ErrorInfo, ExecContext, ExecuteOk, Interpreter, Interrupter, IsComplete, KernelInfo, LanguageInfo,
    MimeBundle, StreamName,
};

const WORDS: &[&str] = &["print", "eprint", "echo", "display", "progress", "sleep", "fail", "count", "clear"];

#[derive(Default)]
pub struct MockInterpreter {
    interrupted: Arc<AtomicBool>,
    cells: u64,
}

impl MockInterpreter {
    pub fn new() -> MockInterpreter {
        MockInterpreter::default()
    }
}

fn error(ename: &str, evalue: &str) -> ErrorInfo {
    ErrorInfo { ename: ename.into(), evalue: evalue.into(), traceback: vec![format!("{ename}: {evalue}")] }
}

impl Interpreter for MockInterpreter {
    fn kernel_info(&self) -> KernelInfo {
        KernelInfo {
            implementation: "mock".into(),
            implementation_version: "0.0.0".into(),
            language_info: LanguageInfo {
                name: "mock".into(),
                version: "0".into(),
                mimetype: "text/plain".into(),
                file_extension: ".mock".into(),
                pygments_lexer: "text".into(),
                codemirror_mode: "null".into(),
            },
            banner: "mock interpreter".into(),
            help_links: Vec::new(),
        }
    }

    fn execute(&mut self, code: &str, ctx: &mut ExecContext<'_>) -> Result<ExecuteOk, ErrorInfo> {
        self.interrupted.store(false, Ordering::SeqCst);
        self.cells += 1;
        let mut result = None;
        for line in code.lines() {
            let (word, rest) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
            match word {
                "" => {}
                "print" => ctx.stream(StreamName::Stdout, &format!("{rest}\n")),
                "eprint" => ctx.stream(StreamName::Stderr, &format!("{rest}\n")),
                "echo" => result = Some(plain(rest)),
                "display" => {
                    let mut b = plain(rest);
                    b.insert("text/html".into(), Value::String(format!("<b>{rest}</b>")));
                    ctx.display(b);
                }
                "progress" => {
                    let n: u64 = rest.parse().map_err(|_| error("ValueError", "progress N"))?;
                    ctx.display_with_id(plain("0"), "progress");
                    for i in 1..=n {
                        ctx.update_display(plain(i.to_string()), "progress");
                    }
                }
                "sleep" => {
                    let ms: u64 = rest.parse().map_err(|_| error("ValueError", "sleep MS"))?;
                    let end = Instant::now() + Duration::from_millis(ms);
                    while Instant::now() < end {
                        if self.interrupted.swap(false, Ordering::SeqCst) {
                            return Err(error("Interrupted", "interrupted"));
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
                "fail" => return Err(error("MockError", rest)),
                "count" => result = Some(plain(self.cells.to_string())),
                "clear" => ctx.clear_output(false),
                "panic" => panic!("mock panic"),
                other => return Err(error("UnknownWord", other)),
            }
        }
        Ok(ExecuteOk { result, page: None })
    }

    fn complete(&mut self, code: &str, cursor_pos: usize) -> Completion {
        let before: String = code.chars().take(cursor_pos).collect();
        let start = before.rfind(char::is_whitespace).map(|i| i + 1).unwrap_or(0);
        let word = &before[start..];
        Completion {
            matches: WORDS.iter().filter(|w| w.starts_with(word)).map(|w| w.to_string()).collect(),
            cursor_start: crate::interpreter::code_points(&before, start),
            cursor_end: cursor_pos,
        }
    }

    fn inspect(&mut self, code: &str, _cursor_pos: usize, _detail: u8) -> Option<MimeBundle> {
        let w = code.split_whitespace().next()?;
        WORDS.contains(&w).then(|| plain(format!("{w}: a mock word")))
    }

    fn is_complete(&mut self, code: &str) -> IsComplete {
        if code.trim_end().ends_with('\\') {
            IsComplete::Incomplete { indent: String::new() }
        } else if code.lines().any(|l| l.trim_start().starts_with("bad")) {
            IsComplete::Invalid
        } else {
            IsComplete::Complete
        }
    }

    fn interrupter(&self) -> Interrupter {
        let f = self.interrupted.clone();
        Arc::new(move || f.store(true, Ordering::SeqCst))
    }
}
