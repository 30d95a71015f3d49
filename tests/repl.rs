//! The REPL front-end end to end: `dllm -c`, `--json`, exit statuses, `--keep-going`, `dllm run FILE`,
//! commands on stdin, and the interactive program in a pseudo-terminal (prompt, Tab completion, history
//! across runs, Ctrl-C at the prompt and during a long decode, Ctrl-D). All on the embedded model on the CPU.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

fn dllm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dllm")).args(["--device", "cpu"]).args(args).output().expect("run dllm")
}

fn dllm_stdin(args: &[&str], input: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dllm"))
        .args(["--device", "cpu"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run dllm");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn json_lines(out: &Output) -> Vec<Value> {
    text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
}

/// The first value of `type` in a command's JSON result.
fn value_of<'a>(line: &'a Value, ty: &str) -> &'a Value {
    line["result"].as_array().unwrap().iter().find(|v| v["type"] == ty).unwrap_or_else(|| panic!("no {ty} in {line}"))
}

#[test]
fn c_runs_several_commands_in_order() {
    let out = dllm(&["-c", "set gen_length 8; prompt-ids 5,6,7; step; step 3; canvas"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    let at = |s: &str| stdout.find(s).unwrap_or_else(|| panic!("{s:?} missing in:\n{stdout}"));
    assert!(at("gen_length = 8") < at("prompt: 3 tokens"));
    assert!(at("prompt: 3 tokens") < at("Steps"));
    assert_eq!(stdout.matches("Steps").count(), 2, "{stdout}");
    assert!(!stdout.contains('\x1b'), "no ANSI codes when stdout is not a terminal");
    assert!(stderr.is_empty(), "{stderr}");
}

#[test]
fn json_prints_one_object_per_command() {
    let cmds = ["set gen_length 8", "prompt-ids 5,6,7", "step 3", "stats", "settings"];
    let out = dllm(&["--json", "-c", &cmds.join("; ")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), cmds.len(), "{}", text(&out.stdout));
    for (line, cmd) in lines.iter().zip(cmds) {
        assert_eq!(line["command"], cmd);
        assert_eq!(line["ok"], true, "{line}");
        assert!(line["result"].is_array(), "{line}");
    }
    assert_eq!(value_of(&lines[2], "table")["rows"].as_array().unwrap().len(), 3, "three steps");
    assert_eq!(value_of(&lines[3], "data")["data"]["forwards"], 3);
    let settings = value_of(&lines[4], "table")["rows"].as_array().unwrap();
    let gen = settings.iter().find(|r| r[0] == "gen_length").expect("gen_length row");
    assert_eq!(gen[1], "8");
}

#[test]
fn a_failing_command_stops_with_a_nonzero_status() {
    let out = dllm(&["-c", "settings; frobnicate; settings"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("error: `frobnicate`: unknown command `frobnicate`"), "{stderr}");
    assert!(stderr.contains("`help`"), "points at help: {stderr}");
    assert_eq!(text(&out.stdout).matches("gen_length").count(), 1, "stopped after the failure");

    let out = dllm(&["-c", "stpe"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("did you mean `step`"), "{}", text(&out.stderr));

    let out = dllm(&["--json", "-c", "settings; frobnicate; settings"]);
    assert!(!out.status.success());
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["command"], "frobnicate");
    assert_eq!(lines[1]["ok"], false);
    assert!(lines[1]["error"].as_str().unwrap().contains("unknown command"));
    assert!(lines[1].get("result").is_none());
}

#[test]
fn keep_going_runs_the_rest_and_still_fails() {
    let out = dllm(&["--json", "--keep-going", "-c", "frobnicate; canvas; set gen_length 8; settings"]);
    assert!(!out.status.success());
    let lines = json_lines(&out);
    let ok: Vec<bool> = lines.iter().map(|l| l["ok"].as_bool().unwrap()).collect();
    assert_eq!(ok, [false, false, true, true], "{}", text(&out.stdout));
    assert!(lines[1]["error"].as_str().unwrap().contains("no decode yet"));

    let out = dllm(&["--keep-going", "-c", "frobnicate; settings"]);
    assert!(!out.status.success());
    assert!(text(&out.stdout).contains("gen_length"));
}

#[test]
fn run_file_runs_a_script() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("demo.dllm");
    std::fs::write(
        &script,
        "# a demo script\nset gen_length 16\n\nset block_length \\\n  8\nprompt-ids 5,6,7   # ids\nrun\nstats\n",
    )
    .unwrap();
    // `# ids` is not a comment (comments are whole lines), so prompt-ids fails: FILE:LINE in the error.
    let out = Command::new(env!("CARGO_BIN_EXE_dllm")).args(["run", script.to_str().unwrap(), "--device", "cpu"]).output().unwrap();
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&format!("{}:6: `prompt-ids 5,6,7   # ids`", script.display())), "{stderr}");
    assert!(text(&out.stdout).contains("block_length = 8"), "the continued line ran");

    std::fs::write(&script, "# a demo script\nset gen_length 16\n\nset block_length \\\n  8\nchat copy abc\nrun\nstats\n").unwrap();
    // Model options before the subcommand apply too.
    let out = Command::new(env!("CARGO_BIN_EXE_dllm")).args(["--device", "cpu", "run", script.to_str().unwrap(), "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines = json_lines(&out);
    let cmds: Vec<&str> = lines.iter().map(|l| l["command"].as_str().unwrap()).collect();
    assert_eq!(cmds, ["set gen_length 16", "set block_length \n  8", "chat copy abc", "run", "stats"]);
    let line_numbers: Vec<i64> = lines.iter().map(|l| l["line"].as_i64().unwrap()).collect();
    assert_eq!(line_numbers, [2, 4, 6, 7, 8]);
    assert_eq!(value_of(&lines[4], "data")["data"]["tokens"], 4, "the embedded model copies `abc` and stops: abc + EOS");

    let out = Command::new(env!("CARGO_BIN_EXE_dllm")).args(["run", "/nonexistent/script.dllm"]).output().unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("/nonexistent/script.dllm"));
}

#[test]
fn commands_on_stdin_when_it_is_not_a_terminal() {
    let out = dllm_stdin(&[], "set gen_length 8\nprompt-ids 5,6,7\n# comment\nrun\nstats\n");
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.contains("output: "), "{stdout}");
    // `stats` is a table: a `forwards` row with the count.
    let forwards = stdout.lines().find_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
        ["forwards", n] => n.parse::<i64>().ok(),
        _ => None,
    });
    assert!(forwards.is_some_and(|n| n > 0), "{stdout}");

    let out = dllm_stdin(&["--json"], "settings\nfrobnicate\nsettings\n");
    assert!(!out.status.success());
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 2);
    assert_eq!((lines[1]["line"].as_i64(), lines[1]["ok"].as_bool()), (Some(2), Some(false)));

    let out = dllm_stdin(&["--keep-going"], "frobnicate\nsettings\n");
    assert!(!out.status.success());
    assert!(text(&out.stdout).contains("gen_length"));
    assert!(text(&out.stderr).contains("line 1: `frobnicate`"), "{}", text(&out.stderr));

    // `;` chains a line's commands as in `-c` (the README's examples), quotes keep theirs.
    let out = dllm_stdin(&["--json"], "set gen_length 8 ; set block_length 4 ; set threshold 0.7\nprompt \"a; b\" ; branches\n");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines = json_lines(&out);
    let commands: Vec<&str> = lines.iter().map(|l| l["command"].as_str().unwrap()).collect();
    assert_eq!(commands, ["set gen_length 8", "set block_length 4", "set threshold 0.7", "prompt \"a; b\"", "branches"]);
    assert_eq!(lines[4]["line"], 2);
}

#[test]
fn a_line_that_is_not_utf8_fails_alone() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dllm"))
        .arg("--keep-going")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"set gen_length 8\n\xff\xfe bad\nsettings\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "a failed line fails the batch");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(stderr.contains("line 2: ") && stderr.contains("UTF-8") && stderr.contains("skipped"), "{stderr}");
    assert!(stdout.contains("edit_threshold"), "the line after it ran: {stdout}");
}

#[test]
fn ctrl_c_stops_a_batch_with_status_130() {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_dllm"))
        .args(["--device", "cpu", "--json", "-c", "set gen_length 4000; set block_length 4; prompt-ids 5,6,7; run; stats"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    for _ in 0..3 {
        lines.next().unwrap().unwrap();
    }
    // `run` has started (a 4000-token decode takes many seconds); interrupt it.
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: a signal to our own child.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) }, 0);
    let rest: Vec<Value> = lines.map(|l| serde_json::from_str(&l.unwrap()).unwrap()).collect();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    assert_eq!(rest.len(), 1, "stats did not run: {rest:?}");
    assert_eq!(rest[0]["command"], "run");
    assert!(rest[0]["result"].to_string().contains("interrupted"), "{}", rest[0]);
    assert!(text(&out.stderr).contains("`run`: interrupted"), "{}", text(&out.stderr));
}

// -------------------------------------------------------------------------------------------------------
// The interactive program in a pseudo-terminal.

/// A child process on a pseudo-terminal; everything it writes is collected by a thread.
struct Pty {
    master: std::fs::File,
    child: std::process::Child,
    out: Arc<Mutex<Vec<u8>>>,
    /// How far `expect` has consumed the ANSI-stripped output.
    pos: usize,
}

const TIMEOUT: Duration = Duration::from_secs(180);

impl Pty {
    /// Runs dllm with `args` and `envs` (`DLLM_EDIT_MODE` and `NO_COLOR` only when `envs` sets them).
    fn spawn(args: &[&str], envs: &[(&str, &Path)]) -> Pty {
        use std::os::fd::{FromRawFd, OwnedFd};
        use std::os::unix::process::CommandExt;
        // SAFETY: plain POSIX calls on descriptors this function owns.
        let (master, slave) = unsafe {
            let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
            assert!(m >= 0, "posix_openpt");
            assert_eq!(libc::grantpt(m), 0);
            assert_eq!(libc::unlockpt(m), 0);
            let mut name = [0 as libc::c_char; 128];
            assert_eq!(libc::ptsname_r(m, name.as_mut_ptr(), name.len()), 0);
            let s = libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
            assert!(s >= 0, "open the slave");
            let ws = libc::winsize { ws_row: 50, ws_col: 200, ws_xpixel: 0, ws_ypixel: 0 };
            libc::ioctl(m, libc::TIOCSWINSZ, &ws);
            (std::fs::File::from_raw_fd(m), OwnedFd::from_raw_fd(s))
        };
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dllm"));
        cmd.args(args)
            .env("TERM", "xterm")
            .env_remove("NO_COLOR")
            .env_remove("DLLM_EDIT_MODE")
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        for (k, v) in envs {
            cmd.env(k, v);
        }
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn dllm on a pty");
        drop(cmd); // closes our copies of the slave, so reads end when the child exits
        let out = Arc::new(Mutex::new(Vec::new()));
        let (mut reader, sink) = (master.try_clone().unwrap(), out.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Pty { master, child, out, pos: 0 }
    }

    fn send(&mut self, s: &str) {
        self.master.write_all(s.as_bytes()).unwrap();
        self.master.flush().unwrap();
    }

    /// Everything written so far, without escape sequences and carriage returns.
    fn screen(&self) -> String {
        strip_ansi(&String::from_utf8_lossy(&self.out.lock().unwrap()))
    }

    /// Waits for `pat` after what earlier calls consumed; returns the text up to and including it.
    fn expect(&mut self, pat: &str) -> String {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if let Some(i) = s.get(self.pos..).and_then(|rest| rest.find(pat)) {
                let got = s[self.pos..self.pos + i + pat.len()].to_string();
                self.pos += i + pat.len();
                return got;
            }
            if start.elapsed() > TIMEOUT {
                panic!("timed out waiting for {pat:?}; output since the last match:\n{}", s.get(self.pos..).unwrap_or(""));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the terminal is in cooked mode (signals on): the line editor has handed a line over.
    fn cooked(&self) -> bool {
        use std::os::fd::AsRawFd;
        // SAFETY: tcgetattr fills a termios we own.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            libc::tcgetattr(self.master.as_raw_fd(), &mut t) == 0 && t.c_lflag & libc::ISIG != 0
        }
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            if start.elapsed() > TIMEOUT {
                let _ = self.child.kill();
                panic!("dllm did not exit; output:\n{}", self.screen());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Drops CSI and OSC sequences, other two-byte escapes and `\r`; an unfinished sequence at the end is left
/// out, so a later, longer output strips to an extension of this one.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            '\x1b' => match it.next() {
                Some('[') => {
                    if !it.by_ref().any(|c| ('\x40'..='\x7e').contains(&c)) {
                        break;
                    }
                }
                Some(']') => {
                    let mut prev = ' ';
                    let done = it.by_ref().any(|c| {
                        let end = c == '\x07' || (prev == '\x1b' && c == '\\');
                        prev = c;
                        end
                    });
                    if !done {
                        break;
                    }
                }
                Some(_) => {}
                None => break,
            },
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

#[test]
fn interactive_repl_in_a_pseudo_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let history = dir.path().join("sub").join("history");
    let envs = [("DLLM_HISTORY", history.as_path())];

    let mut t = Pty::spawn(&["--device", "cpu"], &envs);
    t.expect("builtin:tiny (the embedded model");
    t.expect("dllm> ");
    t.send("set gen_length 4000\r");
    t.expect("gen_length = 4000");
    t.expect("dllm> ");
    t.send("set block_length 4\r");
    t.expect("dllm> ");
    t.send("prompt-ids 5,6,7\r");
    t.expect("prompt: 3 tokens");
    t.expect("dllm> ");

    // Tab completes `ste` to `step` (the history below shows what ran).
    t.send("ste\t");
    t.send("\r");
    t.expect("Steps");
    t.expect("dllm> ");
    // ... and a value from a registry: the reward `similarity`.
    t.send("rl set reward sim\t");
    t.send("\r");
    t.expect("rl reward = similarity");
    t.expect("dllm> ");

    // Ctrl-C at the prompt drops the line.
    t.send("garbage");
    t.send("\x03");
    t.expect("garbage\ndllm> ");
    t.send("settings\r");
    t.expect("edit_threshold");
    t.expect("dllm> ");

    // A `;` chain runs in order and stops at the first failure, naming what it did not run.
    t.send("fork q ; switch nope ; set threshold 0.5\r");
    t.expect("not run: `set threshold 0.5`");
    t.expect("dllm> ");
    t.send("branches ; switch main\r");
    t.expect("on branch `main`");
    t.expect("dllm> ");

    // Ctrl-C during a long decode stops it between steps; the session goes on.
    t.send("run\r");
    let start = Instant::now();
    while !t.cooked() && start.elapsed() < TIMEOUT {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(500));
    t.send("\x03");
    t.expect("interrupted");
    t.expect("dllm> ");
    t.send("stats\r");
    t.expect("forwards");
    t.expect("dllm> ");
    t.send("canvas\r");
    t.expect("masked");
    t.expect("dllm> ");

    t.send("\x04");
    assert!(t.wait_exit().success(), "Ctrl-D leaves with status 0");
    let screen = t.screen();
    if std::env::var_os("DLLM_TEST_SHOW_PTY").is_some() {
        eprintln!("{screen}");
    }
    assert!(!screen.contains("unknown command"), "{screen}");
    assert!(!screen.contains("the decode has finished"), "the decode was interrupted, not finished");

    let saved = std::fs::read_to_string(&history).expect("the history file was written");
    let lines: Vec<&str> = saved.lines().collect();
    for cmd in ["set gen_length 4000", "prompt-ids 5,6,7", "step", "settings", "run", "stats", "canvas"] {
        assert!(lines.contains(&cmd), "{cmd:?} not in the history:\n{saved}");
    }
    assert!(!lines.contains(&"ste") && !saved.contains("garbage"), "{saved}");

    // A second run recalls the history: ↑ brings back `canvas`, which now fails (no decode in this session).
    let mut t = Pty::spawn(&["--device", "cpu"], &envs);
    t.expect("dllm> ");
    t.send("\x1b[A");
    t.send("\r");
    t.expect("no decode yet");
    t.expect("dllm> ");
    t.send("\x04");
    assert!(t.wait_exit().success());
}

#[test]
fn vi_keys_with_the_flag_or_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let history = dir.path().join("history");
    for (args, vi_env) in [(&["--device", "cpu", "--vi"][..], false), (&["--device", "cpu"][..], true)] {
        let mut cmd_env = vec![("DLLM_HISTORY", history.as_path())];
        if vi_env {
            cmd_env.push(("DLLM_EDIT_MODE", Path::new("vi")));
        }
        let mut t = Pty::spawn(args, &cmd_env);
        t.expect("dllm> ");
        // Insert mode, Escape to normal mode (after vi's 500 ms key-sequence wait), `0x` drops the `x`.
        t.send("xsettings");
        t.send("\x1b");
        std::thread::sleep(Duration::from_millis(1200));
        t.send("0x\r");
        t.expect("edit_threshold");
        t.expect("dllm> ");
        t.send("\x04");
        assert!(t.wait_exit().success());
        assert!(!t.screen().contains("unknown command"), "{}", t.screen());
    }
}

#[test]
fn a_spinner_while_the_model_loads_and_ctrl_c_cuts_the_wait() {
    // A checkpoint whose config.json is a FIFO: loading blocks until the test writes the config.
    let dir = tempfile::tempdir().unwrap();
    let (src, slow) = (dir.path().join("src"), dir.path().join("slow"));
    let st = Command::new(env!("CARGO_BIN_EXE_dllm"))
        .args(["init-model", "--shape", "micro", "--seed", "0", "--out", src.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::create_dir(&slow).unwrap();
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap();
        if f.file_name() != "config.json" {
            std::fs::copy(f.path(), slow.join(f.file_name())).unwrap();
        }
    }
    let fifo = std::ffi::CString::new(slow.join("config.json").to_str().unwrap()).unwrap();
    // SAFETY: mkfifo on a path we own.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);

    let history = dir.path().join("history");
    let mut t = Pty::spawn(&["--device", "cpu", "--model", slow.to_str().unwrap()], &[("DLLM_HISTORY", history.as_path())]);
    t.expect("loading");
    t.expect("dllm> ");
    t.send("info\r");
    t.expect("loading model");
    t.send("\x03");
    t.expect("interrupted while the model was loading");
    t.expect("dllm> ");
    let config = std::fs::read(src.join("config.json")).unwrap();
    let fifo_path = slow.join("config.json");
    std::thread::spawn(move || std::fs::write(fifo_path, config));
    t.send("info\r");
    t.expect("mask / eos id");
    t.expect("dllm> ");
    t.send("\x04");
    assert!(t.wait_exit().success());
}

#[test]
fn requests_that_cannot_fit_are_refused_with_an_estimate_and_the_session_goes_on() {
    // DLLM_MEMORY_LIMIT makes the budget the same on every machine (the check itself reads MemAvailable, the
    // cgroup and `ulimit -v` as well, and takes the smallest).
    let lines = "rl set batch 64; rl set group 64; rl set gen_length 400; rl update 1; \
                 rl set trainable lora:4096; rl snapshot a; rl set trainable lora:2; rl snapshot a; \
                 rl set batch 1; rl set group 2; rl set gen_length 16; rl update 1; rl history";
    let run = |limit: &str| {
        Command::new(env!("CARGO_BIN_EXE_dllm"))
            .args(["--device", "cpu", "--json", "--keep-going", "-c", lines])
            .env("DLLM_MEMORY_LIMIT", limit)
            .output()
            .unwrap()
    };
    let out = run("1GB");
    let lines = json_lines(&out);
    let ok: Vec<bool> = lines.iter().map(|l| l["ok"].as_bool().unwrap()).collect();
    assert_eq!(ok, [true, true, true, false, true, false, true, true, true, true, true, true, true], "{}", text(&out.stdout));
    let error = |i: usize| lines[i]["error"].as_str().unwrap().to_string();
    // 4096 rollouts of 424 positions: the KV cache alone is 4096 x 424 x 2 x 32 x 2 x 4 B x 4 layers = 3.6 GB.
    assert!(error(3).starts_with("decoding 4096 canvases of 424 positions needs about 4.2 GB of memory; "), "{}", error(3));
    assert!(error(5).starts_with("LoRA of rank 4096 (103284736 parameters"), "{}", error(5));
    for i in [3, 5] {
        assert!(error(i).contains("under DLLM_MEMORY_LIMIT") && error(i).contains("nothing was allocated"), "{}", error(i));
    }
    // The refused update left no trace: the one that fits is update 1.
    assert_eq!(value_of(&lines[12], "table")["rows"].as_array().unwrap().len(), 1, "{}", lines[12]);

    let out = run("plenty");
    assert!(text(&out.stdout).contains("invalid DLLM_MEMORY_LIMIT \\\"plenty\\\""), "{}", text(&out.stdout));
}

#[test]
fn a_script_that_fails_while_the_model_loads_exits_cleanly() {
    // The first command fails before the background load has finished; the process must end with status 1 and
    // only the error (before the fix, about one exit in four printed a libtorch panic from the loading thread).
    for i in 0..20 {
        let out = dllm(&["-c", "frobnicate"]);
        assert_eq!(out.status.code(), Some(1), "run {i}");
        assert_eq!(text(&out.stderr).trim(), "error: `frobnicate`: unknown command `frobnicate`; `help` lists the commands", "run {i}");
    }
}
