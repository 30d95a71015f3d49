//! Levenshtein noise: a clean block turned into a draft with the length errors parallel drafting makes, for
//! Levenshtein T2T training and the `edit` likelihood estimator (LLaDA2.2 report section 3.1; the report does
//! not publish its noise process, this is ours, written down in docs/training.md).
//!
//! A draft is read off the clean stream (the block's tokens, then what follows the block in the canvas, then
//! `filler`) one token at a time; at each of the block's own tokens, with probability `rate`, one of:
//! - substitute: a random token of `alphabet` in its place (differs from the clean token);
//! - drop: the token is skipped, so the rest of the block shifts left and the next block's first token
//!   slides in at the tail (what a draft that lost a character looks like);
//! - stutter: the token is written twice (the duplicate of parallel drafting), pushing the tail off;
//! - insert: a random alphabet token before it.
//!
//! The draft has the block's length: the tail is cut or continued from the stream. Tokens past the block are
//! never corrupted, so a block's noise depends on its own tokens and the clean continuation only.

use crate::decode::Rng;
use crate::tasks::below;

/// Probabilities of the operations, given that a token is corrupted (they sum to 1).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OpMix {
    pub substitute: f64,
    pub drop: f64,
    pub stutter: f64,
    pub insert: f64,
}

impl OpMix {
    /// The mix of training and of the `edit` estimator: half substitutions, half length errors, duplicates
    /// and drops (what drafts make) before random insertions.
    pub const DEFAULT: OpMix = OpMix { substitute: 0.5, drop: 0.2, stutter: 0.2, insert: 0.1 };
    /// Substitutions only: the 2.1 T2T noise.
    pub const SUBSTITUTE: OpMix = OpMix { substitute: 1.0, drop: 0.0, stutter: 0.0, insert: 0.0 };
}

/// A draft of `target` (the block's clean tokens) of the same length; `continuation` is what follows the
/// block, `filler` what follows that; each of the block's tokens is corrupted with probability `rate`.
pub fn draft_block(target: &[i64], continuation: &[i64], filler: i64, rate: f64, mix: OpMix, alphabet: &[i64], rng: &mut Rng) -> Vec<i64> {
    let n = target.len();
    let mut out = Vec::with_capacity(n + 2);
    let stream = target.iter().chain(continuation).copied().chain(std::iter::repeat(filler));
    for (j, tok) in stream.enumerate() {
        if out.len() >= n {
            break;
        }
        if j >= n || alphabet.is_empty() || rng.uniform() >= rate {
            out.push(tok);
            continue;
        }
        let u = rng.uniform();
        if u < mix.substitute {
            out.push(other(tok, alphabet, rng));
        } else if u < mix.substitute + mix.drop {
            // skipped
        } else if u < mix.substitute + mix.drop + mix.stutter {
            out.extend([tok, tok]);
        } else {
            out.extend([alphabet[below(rng, alphabet.len())], tok]);
        }
    }
    out.truncate(n);
    out
}

/// A random token of `alphabet` other than `tok` (`tok` itself when it is the only one).
fn other(tok: i64, alphabet: &[i64], rng: &mut Rng) -> i64 {
    let choices = alphabet.iter().filter(|&&a| a != tok).count();
    if choices == 0 {
        return tok;
    }
    *alphabet.iter().filter(|&&a| a != tok).nth(below(rng, choices)).expect("counted")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edit_labels::{lcs_labels, Label};

    const ALPHA: [i64; 4] = [10, 11, 12, 13];

    #[test]
    fn no_noise_is_the_block_itself_and_lengths_are_kept() {
        let mut rng = Rng::new(1);
        let t = [1, 2, 3, 4];
        assert_eq!(draft_block(&t, &[5, 6], 0, 0.0, OpMix::DEFAULT, &ALPHA, &mut rng), t);
        for seed in 0..200 {
            let mut rng = Rng::new(seed);
            let d = draft_block(&t, &[5, 6], 0, 0.6, OpMix::DEFAULT, &ALPHA, &mut rng);
            assert_eq!(d.len(), 4);
        }
    }

    #[test]
    fn each_operation_does_what_it_says() {
        let t = [1, 2, 3, 4];
        let only = |mix: OpMix, seed| draft_block(&t, &[5, 6], 0, 1.0, mix, &ALPHA, &mut Rng::new(seed));
        // Every token dropped: the continuation, then the filler.
        assert_eq!(only(OpMix { substitute: 0.0, drop: 1.0, stutter: 0.0, insert: 0.0 }, 1), vec![5, 6, 0, 0]);
        assert_eq!(only(OpMix { substitute: 0.0, drop: 0.0, stutter: 1.0, insert: 0.0 }, 1), vec![1, 1, 2, 2]);
        let ins = only(OpMix { substitute: 0.0, drop: 0.0, stutter: 0.0, insert: 1.0 }, 1);
        assert!(ALPHA.contains(&ins[0]) && ins[1] == 1 && ALPHA.contains(&ins[2]) && ins[3] == 2, "{ins:?}");
        let sub = only(OpMix::SUBSTITUTE, 1);
        assert!(sub.iter().zip(&t).all(|(d, c)| ALPHA.contains(d) && d != c), "{sub:?}");
    }

    #[test]
    fn a_single_length_error_is_labelled_as_one_delete_or_one_insert() {
        // A stutter of token 2 pushes 4 off: one of the twins goes (the tie rule anchors the later one); the
        // lost 4 comes back as the pad mask's M2T target in the next round.
        let t = [1, 2, 3, 4];
        let stutter = [1, 2, 2, 3];
        assert_eq!(lcs_labels(&stutter, &t, 99).iter().map(|l| l.letter()).collect::<String>(), "KDKK");
        // A drop of 2 pulls 5 in: insert before 3, delete the 5.
        let dropped = [1, 3, 4, 5];
        let l = lcs_labels(&dropped, &t, 99);
        assert_eq!(l, vec![Label::Keep(1), Label::Insert, Label::Keep(4), Label::Delete]);
    }
}
