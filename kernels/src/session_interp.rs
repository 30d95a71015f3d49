//! The interpreter over `dllm_repl::Session`: a cell is a small script of dllm commands, exactly as the
//! terminal reads one (`script::script_items`: one command a line, `;` chains, `#` comments, `\` continues a line).
//!
//! - Each command's values become MIME bundles through `dllm_repl::render` (the one place values become
//!   text): one per run of values, and one per chart ([`bundles`]); the last command's last bundle is the
//!   cell's `execute_result`, the others are `display_data`.
//! - The first failing command ends the cell with ONE error (ename from the kind of failure, evalue its
//!   message, a traceback naming the line); outputs of earlier lines stay.
//! - An interrupt stops a stepping command between decoder steps (the session sets its own flag); the cell
//!   then shows what ran and ends with an `Interrupted` error, so a notebook's queued cells are not run on a
//!   state the person meant to stop. The model stays resident and the decoder consistent.
//! - `NAME?` on a line of its own pages NAME's help (IPython's convention); inspection and is_complete come
//!   from `Session::commands()`, the table the REPL's `help` uses; completion is the terminal's own function
//!   (`dllm_repl::complete`).
//!
//! JSON: every value's JSON travels as `application/vnd.dllm.value+json`, kept in the notebook for programs to
//! read. Never as `application/json`: JupyterLab ranks its JSON tree viewer above HTML, so a result carrying it
//! (even plain data such as `stats`, which renders as a table) would show as a collapsed tree.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use dllm_repl::render::render;
use dllm_repl::complete::find_command as find;
use dllm_repl::script::script_items;
use dllm_repl::value::Value as DValue;
use dllm_repl::{Command, CommandError, ModelSource, Session};
use serde_json::Value;

use crate::interpreter::{
    byte_offset, code_points, plain, Completion, ErrorInfo, ExecContext, ExecuteOk, HelpLink, Interpreter, Interrupter, IsComplete,
    KernelInfo, LanguageInfo, MimeBundle,
};

/// The display that shows the model loading while the first command waits for it.
const LOAD_DISPLAY: &str = "dllm-model-load";
#[cfg(test)]
use dllm_repl::render::VALUE_MIME;

pub struct SessionInterpreter {
    session: Session,
    /// Set by an interrupt; checked between the commands of a cell (the session's own flag is consumed by
    /// the stepping loop that it stops).
    cell_interrupted: Arc<AtomicBool>,
    /// Cells executed, to give each progress display its own id.
    cells: u64,
}

impl SessionInterpreter {
    /// A session whose model starts loading in the background now.
    pub fn new(source: ModelSource) -> SessionInterpreter {
        SessionInterpreter::with_session(Session::new(source))
    }

    pub fn with_session(session: Session) -> SessionInterpreter {
        SessionInterpreter { session, cell_interrupted: Arc::new(AtomicBool::new(false)), cells: 0 }
    }
}

impl Drop for SessionInterpreter {
    /// Waits for a background model load still running: a process that exits while libtorch is loading can
    /// abort in libtorch's static destructors. (Jupyter kills a kernel that takes too long to shut down.)
    fn drop(&mut self) {
        if !self.session.model_ready() {
            let _ = self.session.model();
        }
    }
}


fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A command's values as the outputs a notebook shows ([`dllm_repl::render::outputs`], shared with the Rust
/// API's notebook display).
pub fn bundles(values: &[DValue]) -> Vec<MimeBundle> {
    dllm_repl::render::outputs(values).into_iter().map(to_bundle).collect()
}

/// Values as one MIME bundle ([`dllm_repl::render::output`]).
pub fn bundle(values: &[DValue]) -> MimeBundle {
    to_bundle(dllm_repl::render::output(values))
}

fn to_bundle(o: dllm_repl::render::Output) -> MimeBundle {
    o.into_iter().map(|(mime, data)| (mime.to_string(), data)).collect()
}

/// A progress display: the values' HTML (and JSON) for notebooks, and one line of text/plain (`… step 3: block
/// 2, |Gamma| 4, ...`: the first line of each value but the canvas) for a front-end that prints text and ignores
/// display updates (jupyter console prints the first progress display as it comes, then the result, so a whole
/// canvas there would be noise).
fn progress_bundle(values: &[DValue]) -> MimeBundle {
    let lines: Vec<String> = values
        .iter()
        .filter(|v| !matches!(v, DValue::Canvas(_)))
        .filter_map(|v| render(v).plain.lines().next().map(str::to_string))
        .collect();
    let mut b = bundle(values);
    b.insert("text/plain".into(), Value::String(format!("… {}", lines.join(" · "))));
    b
}

fn command_help(c: &Command) -> MimeBundle {
    let text = c.help_text();
    let mut b = plain(text.clone());
    b.insert("text/html".into(), Value::String(format!("<pre>{}</pre>", html_escape(&text))));
    b
}

/// The error of a failed line. `line` is its line number in the cell (shown for cells of several lines).
fn error_info(e: &CommandError, command: &str, line: Option<usize>) -> ErrorInfo {
    let ename = match e {
        CommandError::Unknown { .. } => "UnknownCommand",
        CommandError::Usage { .. } => "UsageError",
        CommandError::Failed(_) => "CommandFailed",
        CommandError::Interrupted => "Interrupted",
    };
    let evalue = e.to_string();
    let mut traceback = vec![format!("\x1b[1;31m{ename}\x1b[0m: {}", evalue.lines().next().unwrap_or_default())];
    traceback.extend(evalue.lines().skip(1).map(String::from));
    let first = command.lines().next().unwrap_or_default();
    traceback.push(match line {
        Some(n) => format!("  in line {n}: `{first}`"),
        None => format!("  in `{first}`"),
    });
    ErrorInfo { ename: ename.into(), evalue, traceback }
}

fn interrupted_error(command: &str) -> ErrorInfo {
    ErrorInfo {
        ename: "Interrupted".into(),
        evalue: "interrupted between decoder steps; the model and the decoder's state are kept".into(),
        traceback: vec![
            "\x1b[1;33mInterrupted\x1b[0m: stopped between decoder steps; the model and the decoder's state are kept".into(),
            format!("  in `{}`", command.lines().next().unwrap_or_default()),
        ],
    }
}

/// Whether a line leaves a double quote open (the command parser's rule: `"` toggles, `\` escapes inside).
fn unclosed_quote(line: &str) -> bool {
    let (mut quoted, mut chars) = (false, line.chars());
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted => {
                chars.next();
            }
            '"' => quoted = !quoted,
            _ => {}
        }
    }
    quoted
}

fn language_info() -> LanguageInfo {
    LanguageInfo {
        name: "dllm".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        mimetype: "text/x-dllm".into(),
        file_extension: ".dllm".into(),
        // Commands read like shell lines (words, double quotes, # comments): the shell modes highlight them.
        pygments_lexer: "bash".into(),
        codemirror_mode: "shell".into(),
    }
}

/// The metadata a notebook for this kernel holds (`kernelspec` as `kernel install` names it, `language_info`
/// as kernel_info reports it). Shipped notebooks carry exactly this, so opening and running one does not mark
/// it modified, and "download as script" gives a `.dllm` file that `dllm run` executes.
pub fn notebook_metadata() -> Value {
    let spec = crate::InstallOptions::default();
    serde_json::json!({
        "kernelspec": {"display_name": spec.display_name, "language": "dllm", "name": spec.name},
        "language_info": serde_json::to_value(language_info()).expect("language_info serialises"),
    })
}

/// `NAME?`: the command whose help a line asks for.
fn help_query(line: &str) -> Option<&'static Command> {
    let word = line.trim().strip_suffix('?')?;
    if word.is_empty() || word.contains(char::is_whitespace) {
        return None;
    }
    find(word)
}

impl Interpreter for SessionInterpreter {
    fn kernel_info(&self) -> KernelInfo {
        KernelInfo {
            implementation: "dllm".into(),
            implementation_version: env!("CARGO_PKG_VERSION").into(),
            language_info: language_info(),
            banner: format!(
                "dllm {}: step a LLaDA2.x diffusion language model in a notebook.\n`help` lists the commands; `step?` shows one's help.",
                env!("CARGO_PKG_VERSION")
            ),
            help_links: Vec::<HelpLink>::new(),
        }
    }

    fn execute(&mut self, code: &str, ctx: &mut ExecContext<'_>) -> Result<ExecuteOk, ErrorInfo> {
        self.cells += 1;
        self.cell_interrupted.store(false, Ordering::SeqCst);
        let items = script_items(code);
        let several = items.len() > 1;
        let mut out = ExecuteOk::default();
        for (i, item) in items.iter().enumerate() {
            let command = item.command.as_str();
            if let Some(c) = help_query(command) {
                out.page = Some(command_help(c));
                continue;
            }
            let waits = Session::waits_for_model(command) && !self.session.model_ready();
            let started = Instant::now();
            if waits {
                let mut b = plain("loading the model…");
                b.insert("text/html".into(), Value::String("<i>loading the model…</i>".into()));
                ctx.display_with_id(b, LOAD_DISPLAY);
            }
            // Long commands show their progress live: one display per command, updated in place after every
            // step (the core coalesces updates to ~10 per second and always sends the last).
            let progress_id = format!("dllm-progress-{}-{i}", self.cells);
            let mut shown = false;
            let result = self.session.execute_with_progress(command, &mut |values: &[DValue]| {
                if shown {
                    ctx.update_display(progress_bundle(values), &progress_id);
                } else {
                    ctx.display_with_id(progress_bundle(values), &progress_id);
                    shown = true;
                }
            });
            if waits {
                ctx.update_display(plain(format!("model ready after {:.1} s", started.elapsed().as_secs_f64())), LOAD_DISPLAY);
            }
            let line = several.then_some(item.line).flatten();
            let values = result.map_err(|e| error_info(&e, command, line))?;
            let interrupted = self.cell_interrupted.swap(false, Ordering::SeqCst);
            if shown {
                // The progress display empties itself once the command is done, so the result below it is the
                // only copy (a front-end that ignores updates, like jupyter console, still gets the result).
                ctx.update_display(plain(String::new()), &progress_id);
            }
            let mut outputs = bundles(&values);
            let last = outputs.pop();
            for b in outputs {
                ctx.display(b);
            }
            match last {
                Some(b) if i + 1 == items.len() && !interrupted => out.result = Some(b),
                Some(b) => ctx.display(b),
                None => {}
            }
            if interrupted {
                return Err(interrupted_error(command));
            }
        }
        Ok(out)
    }

    fn complete(&mut self, code: &str, cursor_pos: usize) -> Completion {
        // The terminal's completion (`dllm_repl::complete`) on the line the cursor is in. Jupyter inserts the
        // match itself, so the terminal's trailing "next argument" space is left out.
        let cursor = byte_offset(code, cursor_pos);
        let line_start = code[..cursor].rfind('\n').map(|i| i + 1).unwrap_or(0);
        let line_end = code[cursor..].find('\n').map(|i| cursor + i).unwrap_or(code.len());
        let (start, candidates) = dllm_repl::complete::complete(&code[line_start..line_end], cursor - line_start, &self.session.branch_names());
        let mut matches: Vec<String> = candidates.into_iter().map(|c| c.replacement.trim_end().to_string()).collect();
        matches.dedup();
        Completion { matches, cursor_start: code_points(code, line_start + start), cursor_end: cursor_pos }
    }

    fn inspect(&mut self, code: &str, cursor_pos: usize, _detail_level: u8) -> Option<MimeBundle> {
        let cursor = byte_offset(code, cursor_pos);
        let line_start = code[..cursor].rfind('\n').map(|i| i + 1).unwrap_or(0);
        let line_end = code[cursor..].find('\n').map(|i| cursor + i).unwrap_or(code.len());
        let line = &code[line_start..line_end];
        // The word under the cursor if it names a command, else the line's command.
        let at = cursor - line_start;
        let ws = line[..at].rfind(char::is_whitespace).map(|i| i + 1).unwrap_or(0);
        let we = line[at..].find(char::is_whitespace).map(|i| at + i).unwrap_or(line.len());
        let under = line[ws..we].trim_end_matches('?');
        let first = line.split_whitespace().next().unwrap_or_default().trim_end_matches('?');
        find(under).or_else(|| find(first)).map(command_help)
    }

    fn is_complete(&mut self, code: &str) -> IsComplete {
        if code.trim_end().ends_with('\\') {
            return IsComplete::Incomplete { indent: String::new() };
        }
        for item in script_items(code) {
            let word = item.command.split_whitespace().next().unwrap_or_default();
            if help_query(&item.command).is_none() && (find(word).is_none() || unclosed_quote(&item.command)) {
                return IsComplete::Invalid;
            }
        }
        IsComplete::Complete
    }

    fn interrupter(&self) -> Interrupter {
        let (session, cell) = (self.session.interrupt_flag(), self.cell_interrupted.clone());
        Arc::new(move || {
            session.store(true, Ordering::SeqCst);
            cell.store(true, Ordering::SeqCst);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interp() -> SessionInterpreter {
        SessionInterpreter::new(ModelSource { device: "cpu".into(), ..ModelSource::default() })
    }

    /// Dropping waits for the background load (see `Drop`).
    fn done(i: SessionInterpreter) {
        drop(i);
    }

    #[test]
    fn completes_commands_and_settings() {
        let mut i = interp();
        let c = i.complete("ste", 3);
        assert_eq!(c.matches, vec!["step"]);
        assert_eq!((c.cursor_start, c.cursor_end), (0, 3));
        let c = i.complete("set thr", 7);
        assert_eq!(c.matches, vec!["threshold"]);
        assert_eq!(c.cursor_start, 4);
        let c = i.complete("step\npr", 7);
        assert_eq!(c.matches, vec!["preset", "prompt", "prompt-ids"]);
        assert_eq!(c.cursor_start, 5);
        // Code points, not bytes: "é" is two bytes.
        let c = i.complete("# é\nca", 6);
        assert_eq!((c.matches[0].as_str(), c.cursor_start), ("canvas", 4));
        assert_eq!(i.complete("preset ", 7).matches.len(), dllm_engine::decode::PRESETS.len());
        assert_eq!(i.complete("break an", 8).matches, vec!["antiloop"]);
        // What the terminal completes, the kernel completes (one function): RL subcommands and settings,
        // estimators, setting values, the session's branches, commands after a `;`.
        assert_eq!(i.complete("rl upd", 6).matches, vec!["update"]);
        assert_eq!(i.complete("rl set eps_h", 12).matches, vec!["eps_high"]);
        assert!(i.complete("likelihood mid", 14).matches.contains(&"midpoint:4".to_string()));
        assert_eq!(i.complete("set edit_timing a", 17).matches, vec!["after-masks", "always"]);
        assert!(i.complete("switch ma", 9).matches.is_empty(), "no branches before the first decode");
        assert_eq!(i.complete("step 2 ; ca", 11).matches, vec!["canvas"]);
        // The same candidates as the terminal's Tab, line for line (the kernel drops the trailing space).
        let mut tab = dllm_repl::terminal::ReplHelper::new(false);
        tab.branches = i.session.branch_names();
        for line in ["ste", "set thr", "preset low", "likelihood gau", "rl set reward sim", "rl set estimator ", "fidelity ", "load random:m", "break t", "train d", "help rl"] {
            let kernel = i.complete(line, line.chars().count()).matches;
            let terminal: Vec<String> = tab.tab(line).into_iter().map(|c| c.trim_end().to_string()).collect();
            assert_eq!(kernel, terminal, "{line}");
            assert!(!kernel.is_empty(), "{line}");
        }
        done(i);
    }

    #[test]
    fn is_complete_and_inspect_follow_the_table() {
        let mut i = interp();
        assert_eq!(i.is_complete("step 3"), IsComplete::Complete);
        assert_eq!(i.is_complete(""), IsComplete::Complete);
        assert_eq!(i.is_complete("prompt a long \\"), IsComplete::Incomplete { indent: String::new() });
        assert_eq!(i.is_complete("stpe 3"), IsComplete::Invalid);
        assert_eq!(i.is_complete("prompt \"open"), IsComplete::Invalid);
        assert_eq!(i.is_complete("step?"), IsComplete::Complete);
        let help = i.inspect("step 3", 2, 0).unwrap();
        assert!(help["text/plain"].as_str().unwrap().starts_with("usage: step [N]"));
        assert!(i.inspect("nothing here", 3, 0).is_none());
        done(i);
    }

    #[test]
    fn cells_run_line_by_line_with_one_error() {
        let mut i = interp();
        let mut outs = Vec::new();
        {
            let mut sink = |o| outs.push(o);
            let mut ctx = ExecContext::new(&mut sink);
            let ok = i.execute("set threshold 0.8\n# a comment\nsettings", &mut ctx).unwrap();
            let result = ok.result.unwrap();
            assert!(result["text/html"].as_str().unwrap().contains("threshold"));
            assert!(result.contains_key(VALUE_MIME) && !result.contains_key("application/json"));
            let err = i.execute("set threshold 0.5\nstpe\nsettings", &mut ctx).unwrap_err();
            assert_eq!(err.ename, "UnknownCommand");
            assert!(err.evalue.contains("did you mean"), "{}", err.evalue);
            assert!(err.traceback.last().unwrap().contains("line 2"));
            let ok = i.execute("step?", &mut ctx).unwrap();
            assert!(ok.result.is_none() && ok.page.is_some());
        }
        assert_eq!(outs.len(), 2, "the first lines of both cells displayed: {outs:?}");
        done(i);
    }

    #[test]
    fn long_commands_show_live_progress_in_one_updated_display() {
        use crate::interpreter::Output;
        let mut i = interp();
        let mut outs = Vec::new();
        {
            let mut sink = |o| outs.push(o);
            let mut ctx = ExecContext::new(&mut sink);
            i.execute("set gen_length 16\nset block_length 8\nprompt-ids 10,11,12\nstep 4", &mut ctx).unwrap();
        }
        let ids: Vec<String> = outs
            .iter()
            .filter_map(|o| match o {
                Output::Display { display_id: Some(id), .. } if id.starts_with("dllm-progress") => Some(id.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(ids.len(), 1, "one progress display for `step 4`");
        let updates: Vec<&Output> = outs.iter().filter(|o| matches!(o, Output::Update { display_id, .. } if *display_id == ids[0])).collect();
        assert_eq!(updates.len(), 4, "then updated after each further step, and emptied at the end");
        let Output::Update { data, .. } = updates[3] else { unreachable!() };
        assert_eq!(data["text/plain"], "", "the progress makes way for the result: {data:?}");
        assert_eq!(data.len(), 1);
        done(i);
    }
}
