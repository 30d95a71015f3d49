//! Decoder events a breakpoint can stop on: predicates over a step's report and the decoder's state.

use serde::{Deserialize, Serialize};

use super::stepper::{Decoder, StepReport};
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// Delta_t is non-empty.
    Edit,
    /// The fallback fired (too few masks passed tau_mask).
    Fallback,
    /// A block finished (at its fixed point or before a forward).
    BlockEnd,
    /// An EOS was written.
    Eos,
    /// This token id was written.
    Token { id: i64 },
    /// This text appears in the decoded output.
    Text { text: String },
    /// Some position has now been written more than `k` times.
    Oscillation { k: u32 },
    /// The least confident write of the step has p below this.
    LowConfidence { below: f32 },
    /// Forward number `n` (0-based) ran.
    Step { n: i64 },
    /// Multi-block editing revised an earlier block.
    Revised,
    /// A Levenshtein step deleted a slot (DELETE).
    Delete,
    /// A Levenshtein step opened a mask (SPLIT).
    Insert,
    /// A Levenshtein step cut tokens off the block's tail.
    Truncate,
    /// The anti-loop rule redrew a slot.
    Antiloop,
}

/// As `break` takes it: `edit`, `token 5`, `low-confidence 0.3`, `text "ab"`.
impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Edit => f.write_str("edit"),
            Event::Fallback => f.write_str("fallback"),
            Event::BlockEnd => f.write_str("block-end"),
            Event::Eos => f.write_str("eos"),
            Event::Token { id } => write!(f, "token {id}"),
            Event::Text { text } => write!(f, "text {text:?}"),
            Event::Oscillation { k } => write!(f, "oscillation {k}"),
            Event::LowConfidence { below } => write!(f, "low-confidence {below}"),
            Event::Step { n } => write!(f, "step {n}"),
            Event::Revised => f.write_str("revised"),
            Event::Delete => f.write_str("delete"),
            Event::Insert => f.write_str("insert"),
            Event::Truncate => f.write_str("truncate"),
            Event::Antiloop => f.write_str("antiloop"),
        }
    }
}

impl Event {
    /// Whether the event happened in the step `r` that `d` just ran. `Text` needs the tokenizer.
    pub fn fires(&self, r: &StepReport, d: &Decoder, tok: Option<&Tokenizer>) -> bool {
        let written = || r.gamma.iter().map(|u| u.token).chain(r.delta.iter().map(|e| e.new));
        match self {
            Event::Edit => !r.delta.is_empty(),
            Event::Fallback => r.fallback,
            Event::BlockEnd => r.block_ended || !r.ended_before.is_empty() || r.finished,
            Event::Eos => written().any(|t| t == d.eos_id()),
            Event::Token { id } => written().any(|t| t == *id),
            Event::Text { text } => tok.is_some_and(|t| t.decode(&d.output()).contains(text.as_str())),
            Event::Oscillation { k } => {
                let counts = d.change_counts();
                r.delta.iter().any(|e| counts[e.pos as usize] > *k)
            }
            Event::LowConfidence { below } => {
                r.gamma.iter().map(|u| u.p).chain(r.delta.iter().map(|e| e.p)).any(|p| p < *below)
            }
            Event::Step { n } => r.step == *n,
            Event::Revised => !r.revised_blocks.is_empty(),
            Event::Delete => r.lev.as_ref().is_some_and(|l| !l.deleted.is_empty()),
            Event::Insert => r.lev.as_ref().is_some_and(|l| !l.split.is_empty()),
            Event::Truncate => r.lev.as_ref().is_some_and(|l| !l.truncated.is_empty()),
            Event::Antiloop => r.lev.as_ref().is_some_and(|l| !l.antiloop.is_empty()),
        }
    }
}
