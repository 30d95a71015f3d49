//! The external-command reward (`rl set reward command CMD`), a row of the engine's reward registry that the
//! session registers: it starts a process, which the engine never does.
//!
//! The command runs under `sh -c` once per rollout with a JSON object on stdin (`{"prompt", "response",
//! "task", "answers"}`: the user text, the decoded response without EOS, the task name or null, the accepted
//! answers or []) and must print one number on stdout and exit 0 within the timeout (`rl set reward_timeout S`).
//! Anything else (a non-zero exit, no number, a timeout) is an error that names the command and what it did;
//! the update it belongs to is then abandoned before any parameter changes.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dllm_engine::rl::{RewardKind, RlPrompt};
use dllm_engine::tasks::Task;
use dllm_engine::{Error, Result};

/// Every kind of reward, this one registered first (the session's view of the registry).
pub fn reward_kinds() -> Vec<&'static RewardKind> {
    dllm_engine::rl::register(&COMMAND);
    dllm_engine::rl::reward_kinds()
}

/// The registry row.
pub static COMMAND: RewardKind = RewardKind {
    name: "command",
    aliases: &["cmd"],
    syntax: "command CMD",
    about: "the number CMD prints (sh -c, once per rollout, the rollout as JSON on stdin; `reward_timeout` bounds it)",
    takes_arg: true,
    timed: true,
    make: |command, timeout| {
        let command = command.to_string();
        Ok(Arc::new(move |p: &RlPrompt, r: &str| run_command(&command, timeout, p, r)))
    },
};

fn run_command(command: &str, timeout: Duration, p: &RlPrompt, response: &str) -> Result<f64> {
    let fail = |why: String| Error::invalid("reward command", command, format!("{why}; the update was not applied (nothing changed)"));
    let input = serde_json::json!({
        "prompt": p.text, "response": response, "task": p.task.map(Task::name), "answers": p.answers,
    })
    .to_string();
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(command).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // Its own process group: the timeout and the clean-up reach whatever the command started, and the
    // terminal's Ctrl-C goes to dllm, not to the reward.
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().map_err(|e| fail(format!("could not start: {e}")))?;
    let mut stdin = child.stdin.take().expect("piped");
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let mut stderr = child.stderr.take().expect("piped");
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait().map_err(|e| fail(e.to_string()))? {
            Some(s) => break s,
            None if start.elapsed() > timeout => {
                kill_group(&mut child);
                let _ = child.wait();
                return Err(fail(format!("no answer within {:.1} s (timeout; `rl set reward_timeout S` allows more)", timeout.as_secs_f64())));
            }
            None => std::thread::sleep(Duration::from_millis(2)),
        }
    };
    // What it left running in the background (`sleep 60 &`) would hold stdout open: it ends with the command.
    kill_group(&mut child);
    let _ = writer.join();
    let out = reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    if !status.success() {
        let tail: String = err.trim().chars().rev().take(300).collect::<Vec<_>>().into_iter().rev().collect();
        let said = if tail.is_empty() { String::new() } else { format!(", stderr: {tail}") };
        return Err(fail(format!("exited with {status}{said}")));
    }
    let v: f64 = out.trim().parse().map_err(|_| fail(format!("printed {:?}, expected one number", out.trim())))?;
    if !v.is_finite() {
        return Err(fail(format!("printed {v}, expected a finite number")));
    }
    Ok(v)
}

/// Kills the reward command's process group (the command and everything it started).
fn kill_group(child: &mut std::process::Child) {
    #[cfg(unix)]
    {
        // SAFETY: kill(2) with a negative pid signals that process group; no memory is involved.
        unsafe {
            libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL);
        }
    }
    let _ = child.kill();
}
