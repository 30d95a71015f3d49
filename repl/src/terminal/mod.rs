//! The terminal front-end: the interactive REPL (rustyline: completion, hints, history, emacs/vi keys, `\`
//! continuation lines, Ctrl-C handling) and the non-interactive modes (`dllm -c`, `dllm run FILE`, commands on
//! stdin, `--json`). Both hand command lines to one `Session` and print its values through `render`.
//!
//! Ctrl-C: at the prompt the line editor clears the line. During a command a SIGINT handler sets the
//! session's interrupt flag, so stepping commands stop between steps and the model stays resident; a second
//! Ctrl-C before the command has noticed the first quits (exit status 130). In the batch modes an interrupted
//! command ends the batch with status 130.

mod helper;

use std::io::{self, BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use rustyline::error::ReadlineError;
use rustyline::history::FileHistory;
use rustyline::{CompletionType, Config, EditMode, Editor};

pub use helper::{find_command, setting_values, ReplHelper};
pub use crate::script::{join_continuations, script_items, split_chain, split_commands, Item, ScriptLines};

use crate::render::render_all;
use crate::value::Value;
use crate::{ModelSource, Session};

/// Front-end options shared by the interactive and batch modes.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Batch modes: print one JSON object per command instead of text.
    pub json: bool,
    /// Batch modes: go on after a failing command (the exit status is still non-zero).
    pub keep_going: bool,
    /// Interactive mode: vi key bindings (also `DLLM_EDIT_MODE=vi`).
    pub vi: bool,
}

/// Exit status of a batch stopped by Ctrl-C (128 + SIGINT).
pub const EXIT_INTERRUPTED: i32 = 130;

// ---------------------------------------------------------------------------------------------------------
// Ctrl-C

/// The flag the SIGINT handler sets (the current session's), and how many SIGINTs arrived.
static INTERRUPT_FLAG: Mutex<Option<Arc<AtomicBool>>> = Mutex::new(None);
static SIGINTS: AtomicUsize = AtomicUsize::new(0);
static INSTALL: Once = Once::new();

/// Routes SIGINT to `flag` (installing the handler once per process).
fn watch_interrupts(flag: Arc<AtomicBool>) {
    *INTERRUPT_FLAG.lock().unwrap_or_else(|e| e.into_inner()) = Some(flag);
    INSTALL.call_once(|| {
        if let Err(e) = ctrlc::set_handler(on_sigint) {
            eprintln!("warning: cannot catch Ctrl-C ({e}); it will end dllm");
        }
    });
}

fn on_sigint() {
    SIGINTS.fetch_add(1, Ordering::SeqCst);
    let flag = INTERRUPT_FLAG.lock().ok().and_then(|f| f.clone());
    match flag {
        Some(f) if !f.swap(true, Ordering::SeqCst) => {
            eprintln!("\n(stopping…; press Ctrl-C again to quit)");
        }
        _ => {
            eprintln!("\ninterrupted again: quitting");
            std::process::exit(EXIT_INTERRUPTED);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Output

fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

/// Whether results go to stdout with ANSI colours (a terminal, and `NO_COLOR` unset).
pub fn stdout_ansi() -> bool {
    io::stdout().is_terminal() && !no_color()
}

fn stderr_color() -> bool {
    io::stderr().is_terminal() && !no_color()
}

/// Prints values as text (`ansi` or plain); an error means stdout is gone.
fn print_values(values: &[Value], ansi: bool) -> io::Result<()> {
    if values.is_empty() {
        return Ok(());
    }
    let b = render_all(values);
    let text = if ansi { b.ansi } else { b.plain };
    if text.is_empty() {
        return Ok(());
    }
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    if !text.ends_with('\n') {
        out.write_all(b"\n")?;
    }
    out.flush()
}

fn print_error(message: &str) {
    if stderr_color() {
        eprintln!("\x1b[1;31merror\x1b[0m: {message}");
    } else {
        eprintln!("error: {message}");
    }
}

/// What the startup line says about the model.
pub fn describe_source(src: &ModelSource) -> String {
    let what = match &src.dir {
        None => format!("{} (the embedded model, trained on the task suite: try `chat sort 3142` then `run`)", dllm_engine::BUILTIN),
        Some(d) => d.display().to_string(),
    };
    let device = if src.device == "auto" { String::new() } else { format!(" on {}", src.device) };
    let dtype = src.dtype.as_ref().map(|d| format!(" in {d}")).unwrap_or_default();
    format!("{what}{device}{dtype}")
}

/// The one-line hint printed when the REPL starts.
pub fn banner(src: &ModelSource) -> String {
    format!(
        "dllm {} — type `help` for the commands, Tab completes, Ctrl-C stops a command, Ctrl-D leaves (model: {}; loading…)",
        env!("CARGO_PKG_VERSION"),
        describe_source(src)
    )
}

// ---------------------------------------------------------------------------------------------------------
// Parsing command text

/// Whether a command line waits for the model (so the terminal shows the loading spinner first).
pub fn needs_model(line: &str) -> bool {
    Session::waits_for_model(line)
}

// ---------------------------------------------------------------------------------------------------------
// Batch modes

/// Runs commands one after another on a new session over `source`; returns the exit status: 0, 1 when a
/// command failed (the batch stops there unless `keep_going`), or 130 when Ctrl-C stopped it. `name` (a
/// script's path) prefixes error messages with `name:LINE:`.
pub fn run_batch(source: ModelSource, items: impl IntoIterator<Item = io::Result<Item>>, name: Option<&str>, opts: &Options) -> i32 {
    let mut session = Session::new(source);
    run_items(&mut session, items, name, opts)
}

/// `run_batch` on an existing session.
pub fn run_items(session: &mut Session, items: impl IntoIterator<Item = io::Result<Item>>, name: Option<&str>, opts: &Options) -> i32 {
    watch_interrupts(session.interrupt_flag());
    let ansi = !opts.json && stdout_ansi();
    let mut status = 0;
    for item in items {
        let item = match item {
            Ok(i) => i,
            // A line that is not UTF-8 fails like a command; the lines after it can still be read.
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                print_error(&format!("{}: {e}; the line was skipped", name.unwrap_or("stdin")));
                status = 1;
                if opts.keep_going {
                    continue;
                }
                return status;
            }
            Err(e) => {
                print_error(&format!("{}: {e}", name.unwrap_or("stdin")));
                return 1;
            }
        };
        let command = item.command.trim();
        if command.is_empty() || command.starts_with('#') {
            continue;
        }
        let sigints = SIGINTS.load(Ordering::SeqCst);
        let result = session.execute(command);
        let where_ = match (name, item.line) {
            (Some(n), Some(l)) => format!("{n}:{l}: "),
            (None, Some(l)) => format!("line {l}: "),
            _ => String::new(),
        };
        let failed = result.is_err();
        let written = if opts.json {
            let mut obj = serde_json::Map::new();
            obj.insert("command".into(), command.into());
            if let Some(l) = item.line {
                obj.insert("line".into(), l.into());
            }
            match result {
                Ok(values) => {
                    obj.insert("ok".into(), true.into());
                    obj.insert("result".into(), render_all(&values).json);
                }
                Err(e) => {
                    obj.insert("ok".into(), false.into());
                    obj.insert("error".into(), e.to_string().into());
                }
            }
            let mut out = io::stdout().lock();
            writeln!(out, "{}", serde_json::Value::Object(obj)).and_then(|()| out.flush())
        } else {
            match result {
                Ok(values) => print_values(&values, ansi),
                Err(e) => {
                    print_error(&format!("{where_}`{command}`: {e}"));
                    Ok(())
                }
            }
        };
        if written.is_err() {
            // stdout is closed (`dllm ... | head`): nobody reads the rest.
            return status.max(1);
        }
        if SIGINTS.load(Ordering::SeqCst) != sigints {
            print_error(&format!("{where_}`{command}`: interrupted; stopping"));
            return EXIT_INTERRUPTED;
        }
        if failed {
            status = 1;
            if !opts.keep_going {
                return status;
            }
        }
    }
    status
}

/// `dllm -c "cmd; cmd"`.
pub fn run_command_string(source: ModelSource, text: &str, opts: &Options) -> i32 {
    run_batch(source, split_commands(text).into_iter().map(|command| Ok(Item { command, line: None })), None, opts)
}

/// `dllm run FILE`.
pub fn run_script(source: ModelSource, path: &std::path::Path, opts: &Options) -> i32 {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => {
            print_error(&format!("{}: {e}", path.display()));
            return 1;
        }
    };
    let name = path.display().to_string();
    run_batch(source, ScriptLines::new(io::BufReader::new(file).lines()), Some(&name), opts)
}

/// Commands from stdin (not a terminal), read and run one at a time.
pub fn run_stdin(source: ModelSource, opts: &Options) -> i32 {
    run_batch(source, ScriptLines::new(io::stdin().lock().lines()), None, opts)
}

// ---------------------------------------------------------------------------------------------------------
// The interactive REPL

/// The history file: `$DLLM_HISTORY` (empty: no history), else `<data dir>/dllm/history`.
pub fn history_path() -> Option<PathBuf> {
    match std::env::var_os("DLLM_HISTORY") {
        Some(p) if p.is_empty() => None,
        Some(p) => Some(PathBuf::from(p)),
        None => dirs::data_dir().map(|d| d.join("dllm").join("history")),
    }
}

fn edit_mode(opts: &Options) -> EditMode {
    let env_vi = std::env::var("DLLM_EDIT_MODE").is_ok_and(|m| m.eq_ignore_ascii_case("vi"));
    if opts.vi || env_vi {
        EditMode::Vi
    } else {
        EditMode::Emacs
    }
}

/// Shows a spinner on stderr until the background load has finished; false when Ctrl-C cut the wait short.
fn wait_for_model(session: &Session, flag: &AtomicBool) -> bool {
    flag.store(false, Ordering::SeqCst);
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_message("loading model…");
    spinner.enable_steady_tick(Duration::from_millis(100));
    let mut ok = true;
    while !session.model_ready() {
        if flag.swap(false, Ordering::SeqCst) {
            ok = false;
            break;
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    spinner.finish_and_clear();
    ok
}

/// The interactive REPL on a terminal; returns the exit status (0 after Ctrl-D).
pub fn interactive(source: ModelSource, opts: &Options) -> i32 {
    let mut session = Session::new(source.clone());
    let flag = session.interrupt_flag();
    watch_interrupts(flag.clone());
    let ansi = stdout_ansi();
    let config = Config::builder()
        .edit_mode(edit_mode(opts))
        .completion_type(CompletionType::List)
        .auto_add_history(false)
        .history_ignore_space(true)
        .max_history_size(10_000)
        .and_then(|b| b.history_ignore_dups(true))
        .map(|b| b.build())
        .unwrap_or_default();
    let mut rl = match Editor::<ReplHelper, FileHistory>::with_config(config) {
        Ok(rl) => rl,
        Err(e) => {
            print_error(&format!("cannot start the line editor ({e}); reading commands line by line"));
            return run_items(&mut session, ScriptLines::new(io::stdin().lock().lines()), None, opts);
        }
    };
    rl.set_helper(Some(ReplHelper::new(ansi)));
    let history = history_path();
    if let Some(p) = &history {
        let _ = rl.load_history(p);
    }
    println!("{}", banner(&source));
    let prompt = ("dllm> ".to_string(), if ansi { "\x1b[1;32mdllm>\x1b[0m ".to_string() } else { "dllm> ".to_string() });
    loop {
        match rl.readline(&prompt) {
            Ok(buffer) => {
                let line = join_continuations(&buffer);
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                if rl.add_history_entry(buffer.trim_end()).unwrap_or(false) {
                    if let Some(p) = &history {
                        if let Some(dir) = p.parent() {
                            let _ = std::fs::create_dir_all(dir);
                        }
                        let _ = rl.append_history(p);
                    }
                }
                // `a ; b ; c` runs in order and stops at the first command that fails (or is interrupted).
                let chain = split_chain(line);
                for (i, command) in chain.iter().enumerate() {
                    if matches!(command.as_str(), "exit" | "quit") {
                        println!();
                        return 0;
                    }
                    if needs_model(command) && !session.model_ready() && !wait_for_model(&session, &flag) {
                        print_error("interrupted while the model was loading (it goes on loading)");
                        break;
                    }
                    match session.execute(command) {
                        Ok(values) => {
                            let _ = print_values(&values, ansi);
                        }
                        Err(e) => {
                            let rest = &chain[i + 1..];
                            let skipped = if rest.is_empty() { String::new() } else { format!(" (not run: `{}`)", rest.join(" ; ")) };
                            let at = if chain.len() > 1 { format!("`{command}`: ") } else { String::new() };
                            print_error(&format!("{at}{e}{skipped}"));
                            break;
                        }
                    }
                }
                if let Some(h) = rl.helper_mut() {
                    h.branches = session.branch_names();
                }
            }
            // Ctrl-C at the prompt: the line is dropped, a new prompt appears.
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => {
                print_error(&format!("reading the terminal: {e}"));
                return 1;
            }
        }
    }
    println!();
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_commands_are_known() {
        assert!(needs_model("step 3"));
        assert!(needs_model("s"));
        assert!(!needs_model("set gen_length 8"));
        assert!(!needs_model("frobnicate"));
        assert!(banner(&ModelSource::default()).contains("builtin:tiny (the embedded model"));
    }
}
