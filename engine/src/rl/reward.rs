//! Rewards of RL rollouts: a [`RewardFn`] (a trait: the score of one response to one prompt) made from a spec
//! (`exact`, `regex PATTERN`) by a row of the reward registry ([`REWARDS`], plus the kinds a front-end
//! [`register`]s). A new reward is one impl (or closure) and one row.
//!
//! The engine's rows do no IO. The external-command reward (`command CMD`: a process per rollout) is a row the
//! session registers (dllm-repl's `reward_command`), so the engine never starts a process.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::tasks::{Example, Task};

/// Default timeout of a reward that runs something outside the process (`reward_timeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A reward function.
pub trait RewardFn: Send + Sync {
    /// The reward of `response` (decoded, without EOS) to `prompt`; an error abandons the update it belongs to.
    fn score(&self, prompt: &RlPrompt, response: &str) -> Result<f64>;
}

impl<F: Fn(&RlPrompt, &str) -> Result<f64> + Send + Sync> RewardFn for F {
    fn score(&self, prompt: &RlPrompt, response: &str) -> Result<f64> {
        self(prompt, response)
    }
}

/// One kind of reward: how it is written and what it is, and how it is made from the text after its name.
pub struct RewardKind {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    /// How it is written: `regex PATTERN`.
    pub syntax: &'static str,
    pub about: &'static str,
    /// Whether it takes the text after its name (`regex PATTERN`); one that does refuses an empty one.
    pub takes_arg: bool,
    /// Whether `reward_timeout` applies to it.
    pub timed: bool,
    pub make: fn(arg: &str, timeout: Duration) -> Result<Arc<dyn RewardFn>>,
}

/// The engine's rewards.
pub static REWARDS: &[RewardKind] = &[
    RewardKind {
        name: "verifier",
        aliases: &["task"],
        syntax: "verifier",
        about: "1 when the task's verifier accepts the response (any accepted answer), else 0; task prompts only",
        takes_arg: false,
        timed: false,
        make: |_, _| Ok(Arc::new(|p: &RlPrompt, r: &str| match p.task {
            Some(t) => Ok(f64::from(u8::from(t.verify(&p.text, r)))),
            None => Err(Error::invalid("reward", "verifier", format!("the prompt {:?} is not a task of the suite; use exact, similarity, regex or command", p.text))),
        })),
    },
    RewardKind {
        name: "exact",
        aliases: &[],
        syntax: "exact",
        about: "1 when the response equals the reference answer (a task's canonical answer, or the one given with the prompt), else 0",
        takes_arg: false,
        timed: false,
        make: |_, _| Ok(Arc::new(|p: &RlPrompt, r: &str| Ok(f64::from(u8::from(r == reference(p, "exact")?))))),
    },
    RewardKind {
        name: "similarity",
        aliases: &["levenshtein"],
        syntax: "similarity",
        about: "partial credit: 1 - (character edit distance to the nearest accepted answer) / (the longer length), in [0, 1]",
        takes_arg: false,
        timed: false,
        make: |_, _| Ok(Arc::new(similarity)),
    },
    RewardKind {
        name: "regex",
        aliases: &[],
        syntax: "regex PATTERN",
        about: "1 when PATTERN matches somewhere in the response (anchor it with ^...$ for a full match), else 0",
        takes_arg: true,
        timed: false,
        make: |pattern, _| {
            let re = regex::Regex::new(pattern).map_err(|e| Error::invalid("reward regex", pattern, e.to_string()))?;
            Ok(Arc::new(move |_: &RlPrompt, r: &str| Ok(f64::from(u8::from(re.is_match(r))))))
        },
    },
];

/// Kinds added at run time ([`register`]).
static REGISTERED: RwLock<Vec<&'static RewardKind>> = RwLock::new(Vec::new());

/// Adds a kind of reward (a front-end's: the external command); a second registration of a name is ignored.
pub fn register(kind: &'static RewardKind) {
    let mut r = REGISTERED.write().unwrap_or_else(|e| e.into_inner());
    if !r.iter().any(|k| k.name == kind.name) && !REWARDS.iter().any(|k| k.name == kind.name) {
        r.push(kind);
    }
}

/// Every kind of reward: the engine's, then the registered ones.
pub fn reward_kinds() -> Vec<&'static RewardKind> {
    REWARDS.iter().chain(REGISTERED.read().unwrap_or_else(|e| e.into_inner()).iter().copied()).collect()
}

/// The reference answer of a prompt, or an error naming the reward that needs it.
fn reference<'a>(p: &'a RlPrompt, reward: &str) -> Result<&'a str> {
    p.answer.as_deref().ok_or_else(|| Error::invalid("reward", reward, format!("the prompt {:?} has no reference answer (give it as `TEXT => ANSWER`)", p.text)))
}

/// `similarity`: the best over the accepted answers (the reference answer when none are listed).
fn similarity(p: &RlPrompt, r: &str) -> Result<f64> {
    let answers: Vec<&str> = if p.answers.is_empty() { vec![reference(p, "similarity")?] } else { p.answers.iter().map(String::as_str).collect() };
    let r: Vec<char> = r.chars().collect();
    Ok(answers
        .iter()
        .map(|a| {
            let a: Vec<char> = a.chars().collect();
            let longer = a.len().max(r.len());
            if longer == 0 {
                1.0
            } else {
                1.0 - edit_distance(&a, &r) as f64 / longer as f64
            }
        })
        .fold(0.0, f64::max))
}

/// Levenshtein distance (insertions, deletions, substitutions), two rows.
fn edit_distance(a: &[char], b: &[char]) -> usize {
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, x) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(x != y)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A reward as configured: its spec (what `rl show` prints and configurations compare), its timeout, and the
/// function its kind made.
#[derive(Clone)]
pub struct Reward {
    spec: String,
    timeout: Duration,
    timed: bool,
    f: Arc<dyn RewardFn>,
}

impl std::fmt::Debug for Reward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Reward({})", self.describe())
    }
}

impl PartialEq for Reward {
    fn eq(&self, other: &Reward) -> bool {
        self.spec == other.spec && self.timeout == other.timeout
    }
}

impl serde::Serialize for Reward {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.spec)
    }
}

impl Default for Reward {
    fn default() -> Reward {
        Reward::parse("verifier").expect("the verifier reward is a registry row")
    }
}

impl Reward {
    /// `NAME [ARG]`, a row of [`reward_kinds`]; the error lists them.
    pub fn parse(spec: &str) -> Result<Reward> {
        Reward::parse_with(spec, DEFAULT_TIMEOUT)
    }

    fn parse_with(spec: &str, timeout: Duration) -> Result<Reward> {
        let spec = spec.trim();
        let (name, arg) = spec.split_once(char::is_whitespace).map_or((spec, ""), |(k, r)| (k, r.trim()));
        let kinds = reward_kinds();
        let expected = || kinds.iter().map(|k| k.syntax).collect::<Vec<_>>().join(", ");
        let kind = kinds
            .iter()
            .find(|k| k.name == name || k.aliases.contains(&name))
            .ok_or_else(|| Error::invalid("reward", spec, format!("expected one of: {}", expected())))?;
        match (kind.takes_arg, arg.is_empty()) {
            (true, true) => return Err(Error::invalid("reward", spec, format!("`{}` needs an argument: `{}`", kind.name, kind.syntax))),
            (false, false) => return Err(Error::invalid("reward", spec, format!("`{}` takes no argument", kind.name))),
            _ => {}
        }
        let f = (kind.make)(arg, timeout)?;
        let spec = if arg.is_empty() { kind.name.to_string() } else { format!("{} {arg}", kind.name) };
        Ok(Reward { spec, timeout, timed: kind.timed, f })
    }

    /// A reward from any function (a notebook's own metric); `name` is what `rl show` prints.
    pub fn from_fn(name: &str, f: impl RewardFn + 'static) -> Reward {
        Reward { spec: name.to_string(), timeout: DEFAULT_TIMEOUT, timed: false, f: Arc::new(f) }
    }

    /// The same reward with another timeout; refused for kinds it does not apply to.
    pub fn with_timeout(&self, timeout: Duration) -> Result<Reward> {
        let secs = format!("{}", timeout.as_secs_f64());
        if !self.timed() {
            return Err(Error::invalid("reward_timeout", secs, "applies to a reward that runs outside dllm (`reward command CMD`); set one first"));
        }
        Reward::parse_with(&self.spec, timeout)
    }

    /// Whether `reward_timeout` applies (its kind runs something outside the process).
    pub fn timed(&self) -> bool {
        self.timed
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The spec, with the timeout where it applies.
    pub fn describe(&self) -> String {
        if self.timed() {
            format!("{} (timeout {} s)", self.spec, self.timeout.as_secs_f64())
        } else {
            self.spec.clone()
        }
    }

    /// The rewards of `responses[i]` to `prompts[i]`; the first failure is the error.
    pub fn score(&self, prompts: &[&RlPrompt], responses: &[String]) -> Result<Vec<f64>> {
        prompts.iter().zip(responses).map(|(p, r)| self.f.score(p, r)).collect()
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

