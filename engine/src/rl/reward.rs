//! Rewards of RL rollouts: the task verifier, exact match with the reference answer, a regular expression, or
//! an external command.
//!
//! The external command runs under `sh -c` once per rollout with a JSON object on stdin
//! (`{"prompt", "response", "task", "answers"}`: the user text, the decoded response without EOS, the task name
//! or null, the accepted answers or []) and must print one number on stdout and exit 0 within the timeout.
//! Anything else (a non-zero exit, no number, a timeout) is an error that names the command and what it did;
//! the update it belongs to is then abandoned before any parameter changes.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::tasks::{Example, Task};

/// Default timeout of an external reward command.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Reward {
    /// 1 when the task's verifier accepts the response (any accepted answer), else 0.
    Verifier,
    /// 1 when the response equals the reference answer (a task's canonical answer, or the answer given with
    /// the prompt), else 0.
    Exact,
    /// 1 when the pattern matches somewhere in the response (anchor it with ^...$ for a full match), else 0.
    Regex(String),
    /// The number an external command prints (see the module documentation).
    Command { command: String, timeout_ms: u64 },
}

impl Reward {
    /// `verifier`, `exact`, `regex PATTERN`, or `command CMD...`.
    pub fn parse(spec: &str) -> Result<Reward> {
        let spec = spec.trim();
        let (kind, rest) = spec.split_once(char::is_whitespace).map_or((spec, ""), |(k, r)| (k, r.trim()));
        let r = match kind {
            "verifier" | "task" => Reward::Verifier,
            "exact" => Reward::Exact,
            "regex" if !rest.is_empty() => Reward::Regex(rest.to_string()),
            "command" | "cmd" if !rest.is_empty() => Reward::Command { command: rest.to_string(), timeout_ms: DEFAULT_TIMEOUT.as_millis() as u64 },
            "regex" | "command" | "cmd" => return Err(Error::invalid("reward", spec, format!("`{kind}` needs an argument: `regex PATTERN` or `command CMD`"))),
            _ => return Err(Error::invalid("reward", spec, "expected verifier, exact, regex PATTERN, or command CMD")),
        };
        r.check()?;
        Ok(r)
    }

    /// Checks what can be checked before a rollout (the regular expression compiles).
    pub fn check(&self) -> Result<()> {
        if let Reward::Regex(p) = self {
            regex::Regex::new(p).map_err(|e| Error::invalid("reward regex", p, e.to_string()))?;
        }
        Ok(())
    }

    pub fn describe(&self) -> String {
        match self {
            Reward::Verifier => "verifier".into(),
            Reward::Exact => "exact".into(),
            Reward::Regex(p) => format!("regex {p}"),
            Reward::Command { command, timeout_ms } => format!("command {command} (timeout {} s)", *timeout_ms as f64 / 1e3),
        }
    }

    /// The rewards of `responses[i]` to `prompts[i]`; the first failure is the error.
    pub fn score(&self, prompts: &[&RlPrompt], responses: &[String]) -> Result<Vec<f64>> {
        let re = match self {
            Reward::Regex(p) => Some(regex::Regex::new(p).map_err(|e| Error::invalid("reward regex", p, e.to_string()))?),
            _ => None,
        };
        prompts
            .iter()
            .zip(responses)
            .map(|(p, r)| match self {
                Reward::Verifier => match (p.task, &p.answer) {
                    (Some(t), _) => Ok(f64::from(u8::from(t.verify(&p.text, r)))),
                    (None, _) => Err(Error::invalid("reward", "verifier", format!("the prompt {:?} is not a task of the suite; use exact, regex or command", p.text))),
                },
                Reward::Exact => match &p.answer {
                    Some(a) => Ok(f64::from(u8::from(r == a))),
                    None => Err(Error::invalid("reward", "exact", format!("the prompt {:?} has no reference answer (give it as `TEXT => ANSWER`)", p.text))),
                },
                Reward::Regex(_) => Ok(f64::from(u8::from(re.as_ref().expect("compiled").is_match(r)))),
                Reward::Command { command, timeout_ms } => run_command(command, Duration::from_millis(*timeout_ms), p, r),
            })
            .collect()
    }
}

/// A prompt of an RL update: the user text (the chat template is applied to it), its task when it is one of
/// the suite's, and its reference answer if known.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RlPrompt {
    pub text: String,
    pub task: Option<Task>,
    /// The reference answer (a task's canonical answer: for `order`, ascending).
    pub answer: Option<String>,
    /// Every accepted answer (for the external command).
    pub answers: Vec<String>,
}

impl RlPrompt {
    pub fn of_example(ex: &Example) -> RlPrompt {
        RlPrompt { text: ex.text.clone(), task: Some(ex.task), answer: ex.answers.first().cloned(), answers: ex.answers.clone() }
    }

    /// A user prompt, `TEXT` or `TEXT => ANSWER`. Its task is recognised from its words (`sort 3814`).
    pub fn parse(spec: &str) -> Result<RlPrompt> {
        let (text, answer) = match spec.split_once("=>") {
            Some((t, a)) => (t.trim().to_string(), Some(a.trim().to_string())),
            None => (spec.trim().to_string(), None),
        };
        if text.is_empty() {
            return Err(Error::invalid("prompt", spec, "the prompt text is empty"));
        }
        let task = crate::tasks::ALL_TASKS.into_iter().find(|t| t.recognises(&text));
        Ok(RlPrompt { answers: answer.iter().cloned().collect(), text, task, answer })
    }
}

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
