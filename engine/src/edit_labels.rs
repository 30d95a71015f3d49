//! LCS edit labels of LLaDA2.2's Levenshtein training (report section 3.1; shared/reference/llada2.2.md 4.1):
//! for one block, each slot of a noisy draft gets Keep, Substitute, Delete or Insert, so that applying the
//! labels (Keep / Substitute write the target token, Delete writes DELETE, Insert writes SPLIT) moves the draft
//! towards the target. The supervision targets of Levenshtein T2T and the action vector of L-EBPO.
//!
//! 1. Anchors: a longest common subsequence of draft and target, MASK in the draft matching any target token.
//!    Backtracking from the end takes a match when it is on an optimal path, else skips a draft slot when that
//!    keeps the length (ties: skip the draft slot), else a target slot.
//! 2. An anchor gets Keep with its target token (a matched MASK thus gets the token it stands for).
//! 3. In the gap before an anchor, a draft slot that repeats the draft token just before it (a stutter, the
//!    duplicate that parallel drafting makes) is deleted; the other gap slots pair in order with the target's gap
//!    tokens as Substitute, and draft slots left over are deleted.
//! 4. When the target's gap is longer than what the draft's gap substitutes, the following anchor gets Insert:
//!    one insertion per gap per round; later rounds, labelled on the edited draft, create the rest.
//! 5. Draft slots after the last anchor are deleted; with no anchor at all, every slot is.
//!
//! Choices the report leaves open, ours: the tie rule of 1, which also decides which target tokens matched
//! masks stand for (the report's "nearest feasible position" is not specified); rule 3's stutter deletion, which the pseudocode of llada2.2.md 4.1
//! lacks: without it the report's own figure-2 example ("No man step step in the the river twice" against "No
//! man ever step in the same river twice") labels the second "the" Substitute(same), not the figure's Delete
//! followed by Insert at "river". Target tokens after the last anchor get no slot in this round.

use serde::{Deserialize, Serialize};

/// One draft slot's label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Label {
    /// An anchor: the slot holds (or, a MASK, stands for) this target token.
    Keep(i64),
    /// The slot should become this target token.
    Substitute(i64),
    /// The slot should go.
    Delete,
    /// A new slot should open before this one (which is an anchor and stays).
    Insert,
}

impl Label {
    /// The token a model is trained to predict at the slot: the target token, or the DELETE / SPLIT id.
    pub fn target(self, delete: i64, split: i64) -> i64 {
        match self {
            Label::Keep(t) | Label::Substitute(t) => t,
            Label::Delete => delete,
            Label::Insert => split,
        }
    }

    /// The one-letter name of the report's figures (K, S, D, I).
    pub fn letter(self) -> char {
        match self {
            Label::Keep(_) => 'K',
            Label::Substitute(_) => 'S',
            Label::Delete => 'D',
            Label::Insert => 'I',
        }
    }
}

/// The anchors (draft index, target index) of a longest common subsequence, in order; `mask` in the draft
/// matches anything.
pub fn lcs_anchors(draft: &[i64], target: &[i64], mask: i64) -> Vec<(usize, usize)> {
    let (m, n) = (draft.len(), target.len());
    let matches = |i: usize, j: usize| draft[i] == target[j] || draft[i] == mask;
    // dp[i][j]: LCS length of draft[..i] and target[..j].
    let mut dp = vec![vec![0u32; n + 1]; m + 1];
    for i in 1..=m {
        for j in 1..=n {
            dp[i][j] = if matches(i - 1, j - 1) { dp[i - 1][j - 1] + 1 } else { dp[i - 1][j].max(dp[i][j - 1]) };
        }
    }
    let mut anchors = Vec::with_capacity(dp[m][n] as usize);
    let (mut i, mut j) = (m, n);
    while i > 0 && j > 0 {
        if matches(i - 1, j - 1) && dp[i][j] == dp[i - 1][j - 1] + 1 {
            anchors.push((i - 1, j - 1));
            i -= 1;
            j -= 1;
        } else if dp[i - 1][j] >= dp[i][j - 1] {
            i -= 1;
        } else {
            j -= 1;
        }
    }
    anchors.reverse();
    anchors
}

/// The labels of every draft slot against `target` (see the module doc).
pub fn lcs_labels(draft: &[i64], target: &[i64], mask: i64) -> Vec<Label> {
    let mut labels = vec![Label::Delete; draft.len()];
    let (mut next_x, mut next_y) = (0usize, 0usize);
    for (i, j) in lcs_anchors(draft, target, mask) {
        let gap_y = &target[next_y..j];
        let mut paired = 0;
        for x in next_x..i {
            let stutter = x > 0 && draft[x] != mask && draft[x] == draft[x - 1];
            if !stutter && paired < gap_y.len() {
                labels[x] = Label::Substitute(gap_y[paired]);
                paired += 1;
            }
        }
        labels[i] = if paired < gap_y.len() { Label::Insert } else { Label::Keep(target[j]) };
        (next_x, next_y) = (i + 1, j + 1);
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: i64 = 0;

    /// Words as ids (for readable tests): every distinct word gets its own id, MASK is "_".
    fn ids(text: &str, vocab: &mut Vec<String>) -> Vec<i64> {
        text.split(' ')
            .map(|w| {
                if w == "_" {
                    return M;
                }
                let at = vocab.iter().position(|v| v == w).unwrap_or_else(|| {
                    vocab.push(w.to_string());
                    vocab.len() - 1
                });
                at as i64 + 1
            })
            .collect()
    }

    fn letters(draft: &str, target: &str) -> String {
        let mut vocab = Vec::new();
        let (x, y) = (ids(draft, &mut vocab), ids(target, &mut vocab));
        lcs_labels(&x, &y, M).iter().map(|l| l.letter()).collect()
    }

    #[test]
    fn the_reports_figure_two() {
        let mut vocab = Vec::new();
        let x = ids("No man step step in the the river twice", &mut vocab);
        let y = ids("No man ever step in the same river twice", &mut vocab);
        let labels = lcs_labels(&x, &y, M);
        assert_eq!(labels.iter().map(|l| l.letter()).collect::<String>(), "KKSKKKDIK");
        let ever = y[2];
        assert_eq!(labels[2], Label::Substitute(ever));
        assert_eq!(labels[7].target(90, 91), 91, "Insert trains SPLIT");
        assert_eq!(labels[6].target(90, 91), 90, "Delete trains DELETE");
        assert_eq!(lcs_anchors(&x, &y, M), vec![(0, 0), (1, 1), (3, 3), (4, 4), (5, 5), (7, 7), (8, 8)]);
    }

    #[test]
    fn keep_substitute_delete_and_one_insert_per_gap() {
        assert_eq!(letters("a b c", "a b c"), "KKK");
        assert_eq!(letters("a b c", "a x c"), "KSK");
        // A dropped "b": the gap before "c" is empty in the draft, so "c" gets the insertion; "e" is past the
        // last anchor and goes.
        assert_eq!(letters("a c d e", "a b c d"), "KIKD");
        // Two dropped: one insertion this round, the draft's tail goes.
        assert_eq!(letters("a d e f", "a b c d"), "KIDD");
        // An extra "b": deleted; the target's tail ("e") waits for a later round.
        assert_eq!(letters("a b c d", "a c d e"), "KDKK");
        // A stutter in a gap is deleted, not substituted, and the missing "b" is inserted before "c" (without
        // the stutter rule: KSK). A stutter the LCS anchors is kept and its twin goes.
        assert_eq!(letters("a a c", "a b c"), "KDI");
        assert_eq!(letters("a a b", "a b c"), "DKK");
        assert_eq!(letters("x y", "a b"), "DD", "no anchor: every slot goes");
    }

    #[test]
    fn masks_match_anything_and_keep_the_token_they_stand_for() {
        let mut vocab = Vec::new();
        let x = ids("a _ _ d", &mut vocab);
        let y = ids("a b c d", &mut vocab);
        let labels = lcs_labels(&x, &y, M);
        assert_eq!(labels, vec![Label::Keep(y[0]), Label::Keep(y[1]), Label::Keep(y[2]), Label::Keep(y[3])]);
        // Among equally long alignments the tie rule decides: here the masks stand for "c" and "d", "b" is
        // inserted before them and "z" goes.
        assert_eq!(letters("a _ _ z", "a b c d"), "KIKD");
    }

    #[test]
    fn applying_the_labels_moves_the_draft_to_the_target() {
        use crate::decode::{apply_edits, EditTokens};
        let (del, split) = (90, 91);
        let mut vocab = Vec::new();
        let x = ids("No man step step in the the river twice", &mut vocab);
        let y = ids("No man ever step in the same river twice", &mut vocab);
        let new: Vec<i64> = lcs_labels(&x, &y, M).iter().map(|l| l.target(del, split)).collect();
        let a = apply_edits(&new, &x, &[true; 9], 0, EditTokens { mask: M, delete: del, split });
        // "No man ever step in the [MASK] river twice": the mask is left for M2T (the figure's next step).
        let mut want = y.clone();
        want[6] = M;
        assert_eq!(a.tokens, want);
        // A second round on the filled draft keeps everything.
        assert!(lcs_labels(&y, &y, M).iter().all(|l| matches!(l, Label::Keep(_))));
    }
}
