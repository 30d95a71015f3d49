//! The synthetic task suite the embedded model is trained and evaluated on, deterministic from a seed.
//!
//! Each task makes a user text and the set of accepted answers; a verifier checks a response against the
//! task's own rule (not against a stored answer), so it is also the RL reward. Prompts are the Ling chat
//! template, whose role tags are single special tokens in the compact vocabulary:
//! `<role>HUMAN</role>sort 3814<|role_end|><role>ASSISTANT</role>` -> `1348<|endoftext|>`.
//!
//! | task | user text | answer |
//! |---|---|---|
//! | copy | `copy ` + letters | the letters |
//! | reverse | `reverse ` + letters | the letters reversed |
//! | sort | `sort ` + digits | the digits ascending |
//! | add | `a+b=` (1-3 digit numbers) | the sum |
//! | order | `order ` + digits | ascending OR descending: AMBIGUOUS, both accepted, 50/50 in training |
//! | dedup | `dedup ` + letters in runs (`aabccc`) | one letter per run (`abc`) |
//! | expand | `expand ` + letter-count pairs (`a3b1c2`) | the runs written out (`aaabcc`) |
//! | rle | `rle ` + letters in runs (`aabccc`) | letter-count pairs, every count (`a2b1c3`) OR the 1s left out (`a2bc3`): AMBIGUOUS in LENGTH, both accepted, 50/50 in training |
//!
//! `order` is where parallel drafting breaks: a confident model is split between two answers, so positions
//! drafted in the same step can come from different answers; token editing repairs the mix.
//!
//! `dedup` and `expand` ([`EDIT_TASKS`], the LLaDA2.2 length tasks) are where a draft's LENGTH goes wrong:
//! the token at answer position i depends on counting runs (dedup) or summing counts (expand) before it, so a
//! parallel draft that miscounts by one duplicates or drops a letter and shifts everything after it. A
//! substitution can only repair that by rewriting every later token; a DELETE or an INSERT repairs it in one
//! edit. `rle` is `order`'s ambiguity with lengths that differ: its two answers part at the first run of
//! one letter and are shifted by one from there on, so a draft that takes some positions from each answer
//! has a letter or a count too many or too few (`a2bcc3`), which one DELETE or INSERT repairs and
//! substitution repairs only by rewriting the rest. [`TASKS`] is the LLaDA2.1 suite `builtin:tiny` was
//! trained on; [`ALL_TASKS`] adds the length tasks.
//!
//! Lengths: letters and digits strings have 3..=8 characters at the base level and 9..=10 at the hard level
//! (1 in 8 instances); additions use 1..=3 digit numbers. The train split and the held-out split draw from the
//! same distribution with different seeds (held-out instances can coincide with training ones by chance, as
//! in any synthetic suite with a small input space; the hard level makes that rare).

use crate::decode::Rng;
use crate::error::{Error, Result};
use crate::tokenizer::{Role, Tokenizer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Copy,
    Reverse,
    Sort,
    Add,
    Order,
    Dedup,
    Expand,
    Rle,
}

/// The LLaDA2.1 suite (what `builtin:tiny` was trained on), in table order.
pub const TASKS: [Task; 5] = [Task::Copy, Task::Reverse, Task::Sort, Task::Add, Task::Order];

/// The length tasks, where Levenshtein editing (DELETE / INSERT) repairs what substitution cannot cheaply.
pub const EDIT_TASKS: [Task; 3] = [Task::Dedup, Task::Expand, Task::Rle];

/// Every task, in table order (`all` in task lists).
pub const ALL_TASKS: [Task; 8] = [Task::Copy, Task::Reverse, Task::Sort, Task::Add, Task::Order, Task::Dedup, Task::Expand, Task::Rle];

/// The longest answer of `expand` (answer and EOS fill the 16 generated tokens).
const EXPAND_MAX: usize = 15;

/// The tokens generated after a task prompt: the longest answer (10 characters) plus EOS fits in two blocks of 8.
pub const GEN_LENGTH: i64 = 16;
/// The block length the embedded model is trained and decoded with.
pub const BLOCK_LENGTH: i64 = 8;

/// Seed of the held-out split (the train split uses the training run's seed, which must differ).
pub const HELD_OUT_SEED: u64 = 0x4E1D_0u64;

/// The characters task texts are made of: T2T corruptions are drawn from them (plus EOS).
pub const ALPHABET: &str = "abcdefghijklmnopqrstuvwxyz0123456789+= ";

/// One instance: the user text and every accepted answer (the first is canonical).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Example {
    pub task: Task,
    pub text: String,
    pub answers: Vec<String>,
}

impl Example {
    /// The chat prompt the model sees.
    pub fn prompt(&self) -> String {
        Tokenizer::chat_prompt(&[(Role::Human, &self.text)], true)
    }

    /// Whether `response` (decoded text, EOS and anything after it removed) is correct.
    pub fn verify(&self, response: &str) -> bool {
        self.task.verify(&self.text, response)
    }
}

impl Task {
    pub fn name(self) -> &'static str {
        match self {
            Task::Copy => "copy",
            Task::Reverse => "reverse",
            Task::Sort => "sort",
            Task::Add => "add",
            Task::Order => "order",
            Task::Dedup => "dedup",
            Task::Expand => "expand",
            Task::Rle => "rle",
        }
    }

    pub fn from_name(name: &str) -> Result<Task> {
        ALL_TASKS.into_iter().find(|t| t.name() == name.trim().to_ascii_lowercase()).ok_or_else(|| {
            let names: Vec<&str> = ALL_TASKS.iter().map(|t| t.name()).collect();
            Error::invalid("task", name, format!("known tasks: {}", names.join(", ")))
        })
    }

    /// Parses a comma-separated list (`all` = every task, `2.1` = [`TASKS`], `edit` = [`EDIT_TASKS`]).
    pub fn parse_list(list: &str) -> Result<Vec<Task>> {
        match list.trim() {
            "all" => return Ok(ALL_TASKS.to_vec()),
            "2.1" => return Ok(TASKS.to_vec()),
            "edit" | "length" => return Ok(EDIT_TASKS.to_vec()),
            _ => {}
        }
        list.split(',').map(Task::from_name).collect()
    }

    /// Whether `text` is a user text of this task (`sort 3814`, `12+7=`).
    pub fn recognises(self, text: &str) -> bool {
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        match self {
            Task::Expand => text.strip_prefix("expand ").and_then(parse_runs).is_some(),
            Task::Copy | Task::Reverse | Task::Dedup | Task::Rle => {
                text.strip_prefix(self.name()).and_then(|r| r.strip_prefix(' ')).is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase()))
            }
            Task::Sort | Task::Order => text.strip_prefix(self.name()).and_then(|r| r.strip_prefix(' ')).is_some_and(digits),
            Task::Add => text.strip_suffix('=').and_then(|t| t.split_once('+')).is_some_and(|(a, b)| digits(a) && digits(b)),
        }
    }

    /// Whether the task has several correct answers.
    pub fn is_ambiguous(self) -> bool {
        matches!(self, Task::Order | Task::Rle)
    }

    /// A random instance.
    pub fn generate(self, rng: &mut Rng) -> Example {
        let len = if below(rng, 8) == 0 { 9 + below(rng, 2) } else { 3 + below(rng, 6) };
        let letters = |rng: &mut Rng| -> String { (0..len).map(|_| (b'a' + below(rng, 26) as u8) as char).collect() };
        let digits = |rng: &mut Rng| -> String { (0..len).map(|_| (b'0' + below(rng, 10) as u8) as char).collect() };
        let (text, answers) = match self {
            Task::Copy => {
                let s = letters(rng);
                (format!("copy {s}"), vec![s])
            }
            Task::Reverse => {
                let s = letters(rng);
                (format!("reverse {s}"), vec![s.chars().rev().collect()])
            }
            Task::Sort => {
                let s = digits(rng);
                (format!("sort {s}"), vec![sorted(&s, false)])
            }
            Task::Add => {
                let number = |rng: &mut Rng| {
                    let d = 1 + below(rng, 3) as u32;
                    below(rng, 10u64.pow(d) as usize) as u64
                };
                let (a, b) = (number(rng), number(rng));
                (format!("{a}+{b}="), vec![(a + b).to_string()])
            }
            Task::Order => {
                let s = digits(rng);
                let (up, down) = (sorted(&s, false), sorted(&s, true));
                let answers = if up == down { vec![up] } else { vec![up, down] };
                (format!("order {s}"), answers)
            }
            Task::Dedup => {
                // `len` runs of 1-3 copies of a letter, neighbours different.
                let runs = distinct_runs(rng, len);
                let text: String = runs.iter().map(|&c| c.to_string().repeat(1 + below(rng, 3))).collect();
                (format!("dedup {text}"), vec![runs.into_iter().collect()])
            }
            Task::Expand => {
                // 2-5 runs of 1-4 copies, at most EXPAND_MAX letters in all.
                let k = 2 + below(rng, 4);
                let letters = distinct_runs(rng, k);
                let mut total = 0;
                let mut pairs = String::new();
                let mut answer = String::new();
                for (i, c) in letters.into_iter().enumerate() {
                    let left = k - i - 1;
                    let n = (1 + below(rng, 4)).min(EXPAND_MAX - total - left);
                    total += n;
                    pairs.push_str(&format!("{c}{n}"));
                    answer.push_str(&c.to_string().repeat(n));
                }
                (format!("expand {pairs}"), vec![answer])
            }
            Task::Rle => {
                // 2-6 runs, each of one letter (half of them) or 2-4: the answer with every count has at most 12
                // characters.
                let k = 2 + below(rng, 5);
                let letters = distinct_runs(rng, k);
                let runs: Vec<(char, usize)> =
                    letters.into_iter().map(|c| (c, if below(rng, 2) == 0 { 1 } else { 2 + below(rng, 3) })).collect();
                let text: String = runs.iter().map(|&(c, n)| c.to_string().repeat(n)).collect();
                let (every, short) = (run_length(&runs, false), run_length(&runs, true));
                let answers = if every == short { vec![every] } else { vec![every, short] };
                (format!("rle {text}"), answers)
            }
        };
        Example { task: self, text, answers }
    }

    /// The task's rule applied to `text` (the user text) and `response`.
    pub fn verify(self, text: &str, response: &str) -> bool {
        let arg = |prefix: &str| text.strip_prefix(prefix).map(str::to_string);
        match self {
            Task::Copy => arg("copy ").is_some_and(|s| response == s),
            Task::Reverse => arg("reverse ").is_some_and(|s| response == s.chars().rev().collect::<String>()),
            Task::Sort => arg("sort ").is_some_and(|s| response == sorted(&s, false)),
            Task::Order => arg("order ").is_some_and(|s| response == sorted(&s, false) || response == sorted(&s, true)),
            Task::Dedup => arg("dedup ").is_some_and(|s| response == dedup(&s)),
            Task::Rle => arg("rle ").is_some_and(|s| {
                let runs = runs_of(&s);
                !runs.is_empty() && (response == run_length(&runs, false) || response == run_length(&runs, true))
            }),
            Task::Expand => arg("expand ").and_then(|s| parse_runs(&s)).is_some_and(|runs| {
                response == runs.iter().map(|&(c, n)| c.to_string().repeat(n)).collect::<String>()
            }),
            Task::Add => {
                let Some((a, b)) = text.strip_suffix('=').and_then(|t| t.split_once('+')) else { return false };
                match (a.parse::<u64>(), b.parse::<u64>()) {
                    (Ok(a), Ok(b)) => response == (a + b).to_string(),
                    _ => false,
                }
            }
        }
    }
}

/// `n` instances of `task` for a split seed, always the same for the same arguments (the held-out set is
/// `instances(task, HELD_OUT_SEED, n)`). Each task has its own stream, so adding tasks changes no other.
pub fn instances(task: Task, seed: u64, n: usize) -> Vec<Example> {
    let mut rng = Rng::new(seed ^ (task as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    (0..n).map(|_| task.generate(&mut rng)).collect()
}

/// A uniform integer in `0..n` (n > 0).
pub fn below(rng: &mut Rng, n: usize) -> usize {
    ((rng.next_u64() >> 11) % n as u64) as usize
}

/// `n` random lowercase letters, each different from the one before.
fn distinct_runs(rng: &mut Rng, n: usize) -> Vec<char> {
    let mut out: Vec<char> = Vec::with_capacity(n);
    while out.len() < n {
        let c = (b'a' + below(rng, 26) as u8) as char;
        if out.last() != Some(&c) {
            out.push(c);
        }
    }
    out
}

/// One letter per run of equal letters.
fn dedup(s: &str) -> String {
    let mut c: Vec<char> = s.chars().collect();
    c.dedup();
    c.into_iter().collect()
}

/// The runs of equal characters of `s`, as (character, count).
fn runs_of(s: &str) -> Vec<(char, usize)> {
    let mut runs: Vec<(char, usize)> = Vec::new();
    for c in s.chars() {
        match runs.last_mut() {
            Some((last, n)) if *last == c => *n += 1,
            _ => runs.push((c, 1)),
        }
    }
    runs
}

/// Runs written as letter-count pairs (`a2b1c3`); `short` leaves out the counts of 1 (`a2bc3`).
fn run_length(runs: &[(char, usize)], short: bool) -> String {
    runs.iter().map(|&(c, n)| if short && n == 1 { c.to_string() } else { format!("{c}{n}") }).collect()
}

/// `a3b1c2` as (letter, count) pairs: lowercase letters each followed by one digit 1-9.
fn parse_runs(s: &str) -> Option<Vec<(char, usize)>> {
    let b = s.as_bytes();
    if b.is_empty() || b.len() % 2 != 0 {
        return None;
    }
    b.chunks(2)
        .map(|p| (p[0].is_ascii_lowercase() && (b'1'..=b'9').contains(&p[1])).then(|| (p[0] as char, (p[1] - b'0') as usize)))
        .collect()
}

fn sorted(s: &str, descending: bool) -> String {
    let mut c: Vec<char> = s.chars().collect();
    c.sort_unstable();
    if descending {
        c.reverse();
    }
    c.into_iter().collect()
}

/// The text of a decoded response: everything before the first EOS, without the EOS.
pub fn response_text(tok: &Tokenizer, output: &[i64]) -> String {
    let end = output.iter().position(|&t| t == tok.eos_id).unwrap_or(output.len());
    tok.decode(&output[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifiers_on_hand_made_cases() {
        assert!(Task::Copy.verify("copy abc", "abc"));
        assert!(!Task::Copy.verify("copy abc", "abcd"));
        assert!(Task::Reverse.verify("reverse abc", "cba"));
        assert!(!Task::Reverse.verify("reverse abc", "abc"));
        assert!(Task::Sort.verify("sort 3141", "1134"));
        assert!(!Task::Sort.verify("sort 3141", "4311"));
        assert!(Task::Order.verify("order 3141", "1134") && Task::Order.verify("order 3141", "4311"));
        assert!(!Task::Order.verify("order 3141", "1143"), "a mix of both orders is wrong");
        assert!(Task::Add.verify("99+1=", "100"));
        assert!(!Task::Add.verify("99+1=", "0100") && !Task::Add.verify("99+1=", "10"));
        assert!(!Task::Add.verify("garbage", "1"), "a malformed prompt never verifies");
        assert!(!Task::Copy.verify("reverse abc", "abc"), "the rule belongs to the task");
        assert!(Task::Dedup.verify("dedup aabccca", "abca"));
        assert!(!Task::Dedup.verify("dedup aabccca", "abbca") && !Task::Dedup.verify("dedup aabccca", "aca"), "a duplicate or a drop is wrong");
        assert!(Task::Expand.verify("expand a3b1c2", "aaabcc"));
        assert!(!Task::Expand.verify("expand a3b1c2", "aaaabcc") && !Task::Expand.verify("expand a3b1c2", "aabcc"));
        assert!(!Task::Expand.verify("expand a3b", "aaab") && !Task::Expand.verify("expand a0", ""), "malformed runs never verify");
        assert!(Task::Rle.verify("rle aabccc", "a2b1c3") && Task::Rle.verify("rle aabccc", "a2bc3"));
        assert!(!Task::Rle.verify("rle aabccc", "a2bcc3") && !Task::Rle.verify("rle aabccc", "a2b1c"), "a mix of both answers is wrong");
        assert!(!Task::Rle.verify("rle abdb", "a1bd1b1") && !Task::Rle.verify("rle ", ""), "one answer or the other, never a mix; empty input never verifies");
        assert!(Task::Rle.verify("rle aabb", "a2b2"));
    }

    #[test]
    fn generated_answers_pass_their_verifier_and_are_deterministic() {
        for task in ALL_TASKS {
            let a = instances(task, 7, 300);
            assert_eq!(a, instances(task, 7, 300), "{task:?}");
            assert_ne!(a, instances(task, 8, 300), "{task:?}: seeds differ");
            for ex in &a {
                assert!(!ex.answers.is_empty());
                for ans in &ex.answers {
                    assert!(ex.verify(ans), "{ex:?}");
                    assert!(ans.len() < GEN_LENGTH as usize, "answer + EOS fits the generation window: {ex:?}");
                }
                assert!(ex.text.chars().all(|c| ALPHABET.contains(c)), "{ex:?}");
            }
            let hard = a.iter().filter(|e| e.task != Task::Add && e.answers[0].len() >= 9).count();
            if !matches!(task, Task::Add | Task::Expand | Task::Rle) {
                assert!((15..=70).contains(&hard), "{task:?}: about 1 in 8 instances at the hard level, got {hard}/300");
            }
        }
        for ex in instances(Task::Expand, 9, 300).iter().chain(&instances(Task::Dedup, 9, 300)) {
            assert!(ex.task.recognises(&ex.text), "{ex:?}");
            assert!(ex.answers[0].len() >= 2, "{ex:?}");
        }
        let d = instances(Task::Dedup, 9, 300);
        assert!(d.iter().filter(|e| e.text.len() - "dedup ".len() > e.answers[0].len()).count() > 250, "most dedup inputs hold a run");
        let order = instances(Task::Order, 1, 100);
        assert!(order.iter().filter(|e| e.answers.len() == 2).count() > 90, "order is ambiguous");
        let rle = instances(Task::Rle, 1, 300);
        let two = rle.iter().filter(|e| e.answers.len() == 2).count();
        assert!((220..=280).contains(&two), "most rle instances have a run of one letter, so two answers: {two}/300");
        for ex in rle.iter().filter(|e| e.answers.len() == 2) {
            assert!(ex.task.recognises(&ex.text) && ex.answers[0].len() > ex.answers[1].len(), "the answers differ in length: {ex:?}");
        }
    }

    #[test]
    fn tokenizer_round_trips_task_prompts_with_single_token_specials() {
        let config = crate::shapes::shape("tiny").unwrap();
        let json = serde_json::to_vec(&crate::shapes::tokenizer_spec(config.vocab_size).to_json()).unwrap();
        let tok = Tokenizer::from_bytes(&json, std::path::Path::new("tokenizer.json"), &config).unwrap();
        for task in ALL_TASKS {
            for ex in instances(task, 3, 20) {
                let p = ex.prompt();
                let ids = tok.encode(&p).unwrap();
                assert_eq!(tok.decode(&ids), p);
                assert_eq!(ids.len(), ex.text.len() + 3, "role tags and role end are one token each: {p}");
                let mut out = tok.encode(&ex.answers[0]).unwrap();
                out.push(tok.eos_id);
                out.push(tok.eos_id);
                assert_eq!(response_text(&tok, &out), ex.answers[0]);
            }
        }
        assert_eq!(tok.token_text(tok.mask_id), "<|mask|>");
        assert_eq!(tok.token_text(tok.eos_id), "<|endoftext|>");
        // The whole printable ASCII range is in the vocabulary, one token per character.
        let all: String = (0x20u8..0x7f).map(char::from).collect();
        assert_eq!(tok.encode(&all).unwrap().len(), all.len());
        assert_eq!(tok.decode(&tok.encode(&all).unwrap()), all);
    }

    #[test]
    fn task_names_parse() {
        assert_eq!(Task::parse_list("copy,add").unwrap(), vec![Task::Copy, Task::Add]);
        assert_eq!(Task::parse_list("all").unwrap().len(), 8);
        assert_eq!(Task::parse_list("2.1").unwrap(), TASKS);
        assert_eq!(Task::parse_list("edit").unwrap(), EDIT_TASKS);
        let e = Task::from_name("mul").unwrap_err().to_string();
        assert!(e.contains("known tasks: copy, reverse, sort, add, order, dedup, expand, rle"), "{e}");
    }
}
