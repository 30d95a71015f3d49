//! One training batch: clean canvases from the task suite, noised by the M2T and T2T streams, in the
//! composite layout.
//!
//! - A canvas is what the decoder works on, up to the block that holds the EOS: the chat prompt, the answer,
//!   EOS, and EOS to the end of that block (with eos_early_stop the decoder stops there; without it, the later
//!   all-EOS blocks are learned from the padding of shorter rows). Rows of a group are padded to the longest
//!   with EOS: later blocks are invisible to earlier ones, so padding changes nothing for the real blocks.
//! - A batch is split into groups of similar layout (sorted by first response block and length), one
//!   composite forward each, so little compute goes to padding; the losses are normalised over the whole batch.
//! - M2T: a ratio sigma per example (U[0.3, 0.8] with probability 0.8, else U[0.8, 1.0], so fully masked
//!   blocks are common, as at the start of decoding); each response token is masked with probability sigma.
//! - T2T: a ratio r ~ U[0.1, 0.3] per example; each VISIBLE response token is replaced with probability r by a
//!   random token of the task alphabet or EOS (in-distribution mistakes, the kind a draft makes).
//! - Levenshtein T2T (LLaDA2.2 models, which have DELETE / SPLIT ids): instead of substitutions alone, each
//!   response block's suffix is redrawn by [`crate::edit_noise::draft_block`] at rate r (substitutions,
//!   drops, stutters and insertions, the block's length kept from the clean continuation), then each slot is
//!   masked with probability sigma, and every slot's target is its LCS edit label against the clean block
//!   ([`crate::edit_labels::lcs_labels`], MASK a wildcard): the token it should hold, DELETE or SPLIT.
//! - The prompt is never noised and carries no loss.

use tch::Tensor;

use crate::composite::{self, Composite};
use crate::decode::Rng;
use crate::edit_labels::lcs_labels;
use crate::edit_noise::{draft_block, OpMix};
use crate::error::{Error, Result};
use crate::tasks::{self, below, Example, GEN_LENGTH};
use crate::tokenizer::Tokenizer;

/// How examples are noised.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct NoiseConfig {
    /// The T2T stream (random-token corruption of visible tokens, loss on every visible response token).
    pub t2t: bool,
    pub block: i64,
    /// Levenshtein T2T with these (DELETE, SPLIT) ids; None = substitutions only (LLaDA2.1).
    #[serde(default)]
    pub edits: Option<(i64, i64)>,
}

/// A noised batch and what is supervised where.
pub struct Batch {
    pub input: Composite,
    /// Clean tokens of the noisy part, `[B, noisy_len]`.
    pub targets: Tensor,
    /// `[B, noisy_len]` bool: response positions that are masks (M2T loss).
    pub masked: Tensor,
    /// `[B, noisy_len]` bool: response positions that are visible (T2T loss).
    pub visible: Tensor,
    /// Canvas tokens in the batch (rows x canvas length), for throughput.
    pub tokens: i64,
    /// The clean canvases (padded to the batch width) and prompt lengths, for relabelling after MTF.
    pub clean: Vec<Vec<i64>>,
    pub prompts: Vec<usize>,
}

/// The clean canvas of `ex` with `answer`, and its prompt length.
pub fn canvas(tok: &Tokenizer, ex: &Example, answer: &str, block: i64) -> Result<(Vec<i64>, usize)> {
    let mut ids = tok.encode(&ex.prompt())?;
    let p = ids.len();
    ids.extend(tok.encode(answer)?);
    if ids.len() - p >= GEN_LENGTH as usize {
        return Err(Error::invalid("answer", answer, format!("answer and EOS must fit the {GEN_LENGTH} generated tokens")));
    }
    let len = (ids.len() as i64 + 1 + block - 1) / block * block;
    ids.resize(len as usize, tok.eos_id);
    Ok((ids, p))
}

/// Ids T2T may write: the task alphabet and EOS.
pub fn corruption_ids(tok: &Tokenizer) -> Result<Vec<i64>> {
    let mut ids = tok.encode(tasks::ALPHABET)?;
    ids.push(tok.eos_id);
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

fn uniform(rng: &mut Rng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.uniform()
}

/// Noises `rows` (clean canvas, prompt length) with `rng` into `groups` composite batches of similar layout.
pub fn noised_groups(rows: &[(Vec<i64>, usize)], groups: usize, tok: &Tokenizer, corrupt: &[i64], cfg: NoiseConfig, rng: &mut Rng) -> Result<Vec<Batch>> {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| (rows[i].1 as i64 / cfg.block, rows[i].0.len()));
    let size = rows.len().div_ceil(groups.max(1)).max(1);
    order
        .chunks(size)
        .map(|chunk| {
            let part: Vec<(Vec<i64>, usize)> = chunk.iter().map(|&i| rows[i].clone()).collect();
            noised_batch(&part, tok, corrupt, cfg, rng)
        })
        .collect()
}

/// Noises `rows` (clean canvas, prompt length) with `rng` into a composite batch.
pub fn noised_batch(rows: &[(Vec<i64>, usize)], tok: &Tokenizer, corrupt: &[i64], cfg: NoiseConfig, rng: &mut Rng) -> Result<Batch> {
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let mut clean = Vec::with_capacity(rows.len());
    let mut noisy = Vec::with_capacity(rows.len());
    let mut response = Vec::with_capacity(rows.len());
    for (ids, p) in rows {
        let mut c = ids.clone();
        c.resize(width, tok.eos_id);
        let sigma = if rng.uniform() < 0.8 { uniform(rng, 0.3, 0.8) } else { uniform(rng, 0.8, 1.0) };
        let r = uniform(rng, 0.1, 0.3);
        let mut n = c.clone();
        if let (true, Some(_)) = (cfg.t2t, cfg.edits) {
            for (s0, be) in suffixes(*p, width, cfg.block) {
                let draft = draft_block(&c[s0..be], &c[be..], tok.eos_id, r, OpMix::DEFAULT, corrupt, rng);
                for (slot, d) in n[s0..be].iter_mut().zip(draft) {
                    *slot = if rng.uniform() < sigma { tok.mask_id } else { d };
                }
            }
        } else {
            for tok_i in n.iter_mut().skip(*p) {
                if rng.uniform() < sigma {
                    *tok_i = tok.mask_id;
                } else if cfg.t2t && rng.uniform() < r {
                    *tok_i = corrupt[below(rng, corrupt.len())];
                }
            }
        }
        response.push(*p);
        clean.push(c);
        noisy.push(n);
    }
    let first = response.iter().map(|&p| p as i64 / cfg.block).min().unwrap_or(0);
    let input = composite::build(&noisy, &clean, cfg.block, first)?;
    let (start, len) = (input.noisy_start as usize, input.noisy_len as usize);
    let b = rows.len() as i64;
    let mut targets = Vec::with_capacity(rows.len() * len);
    let mut masked = Vec::with_capacity(rows.len() * len);
    let mut visible = Vec::with_capacity(rows.len() * len);
    for ((c, n), &p) in clean.iter().zip(&noisy).zip(&response) {
        let t = match cfg.edits {
            Some(ids) => edit_targets(n, c, p, cfg.block, tok.mask_id, ids),
            None => c.clone(),
        };
        targets.extend_from_slice(&t[start..start + len]);
        for i in start..start + len {
            let resp = i >= p;
            masked.push(resp && n[i] == tok.mask_id);
            visible.push(resp && n[i] != tok.mask_id);
        }
    }
    let shape = [b, len as i64];
    Ok(Batch {
        input,
        targets: Tensor::from_slice(&targets).view(shape),
        masked: Tensor::from_slice(&masked).view(shape),
        visible: Tensor::from_slice(&visible).view(shape),
        tokens: b * width as i64,
        clean,
        prompts: response,
    })
}

/// The response part of every block of a canvas of `width` tokens: (first response slot, block end).
pub fn suffixes(prompt: usize, width: usize, block: i64) -> impl Iterator<Item = (usize, usize)> {
    let block = block as usize;
    (prompt / block..width.div_ceil(block)).map(move |b| ((b * block).max(prompt), ((b + 1) * block).min(width))).filter(|(s, e)| s < e)
}

/// Per canvas position, what the model is trained to predict at the noisy canvas `noisy` whose clean form is
/// `clean`: the clean token in the prompt, and in every response block the LCS edit label's target (the token
/// the slot should hold, DELETE or SPLIT).
pub fn edit_targets(noisy: &[i64], clean: &[i64], prompt: usize, block: i64, mask: i64, (delete, split): (i64, i64)) -> Vec<i64> {
    let mut t = clean.to_vec();
    for (s0, be) in suffixes(prompt, clean.len(), block) {
        for (slot, label) in t[s0..be].iter_mut().zip(lcs_labels(&noisy[s0..be], &clean[s0..be], mask)) {
            *slot = label.target(delete, split);
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{apply_edits, EditTokens};
    use crate::tasks::ALL_TASKS;

    fn tokenizer(preset: &str) -> (Tokenizer, (i64, i64)) {
        let config = crate::shapes::shape(preset).unwrap();
        let json = serde_json::to_vec(&crate::shapes::tokenizer_spec_for(&config).to_json()).unwrap();
        let tok = Tokenizer::from_bytes(&json, std::path::Path::new("tokenizer.json"), &config).unwrap();
        (tok, (config.delete_token_id.unwrap(), config.split_token_id.unwrap()))
    }

    #[test]
    fn edit_targets_label_each_response_block_against_its_clean_form() {
        let (m, del, split) = (1, 90, 91);
        // Prompt of 3, blocks of 4: block 0 holds the prompt and one response slot.
        let clean = [7, 7, 7, 20, 21, 22, 23, 24, 0, 0, 0, 0];
        let noisy = [7, 7, 7, m, 21, 21, 22, 23, 24, 0, 0, 0];
        let t = edit_targets(&noisy, &clean, 3, 4, m, (del, split));
        assert_eq!(&t[..4], &clean[..4], "the prompt and a mask that stands for its token");
        // The stutter goes (one twin), the rest is kept; 24 comes back as the pad mask's M2T target next round.
        assert_eq!(&t[4..8], &[del, 21, 22, 23]);
        // Block 2: 24, pushed in from block 1, stands where an EOS should: substituted.
        assert_eq!(t[8..], [0, 0, 0, 0]);
        assert_eq!(lcs_labels(&noisy[8..], &clean[8..], m).iter().map(|l| l.letter()).collect::<String>(), "SKKK");
        assert_eq!(suffixes(3, 12, 4).collect::<Vec<_>>(), vec![(3, 4), (4, 8), (8, 12)]);
        assert_eq!(suffixes(4, 12, 4).collect::<Vec<_>>(), vec![(4, 8), (8, 12)]);
    }

    #[test]
    fn levenshtein_batches_train_delete_and_split_and_their_labels_repair_the_drafts() {
        let (tok, (del, split)) = tokenizer("tiny-2.2");
        let corrupt = corruption_ids(&tok).unwrap();
        let mut rng = Rng::new(5);
        let rows: Vec<(Vec<i64>, usize)> = (0..64)
            .map(|i| {
                let ex = ALL_TASKS[i % ALL_TASKS.len()].generate(&mut rng);
                canvas(&tok, &ex, &ex.answers[0], 8).unwrap()
            })
            .collect();
        let cfg = NoiseConfig { t2t: true, block: 8, edits: Some((del, split)) };
        let b = noised_batch(&rows, &tok, &corrupt, cfg, &mut rng).unwrap();
        let (start, len) = (b.input.noisy_start as usize, b.input.noisy_len as usize);
        let targets = Vec::<i64>::try_from(b.targets.flatten(0, -1)).unwrap();
        let noisy = Vec::<i64>::try_from(b.input.ids.narrow(1, 0, len as i64).flatten(0, -1)).unwrap();
        let count = |id: i64| targets.iter().filter(|&&t| t == id).count();
        assert!(count(del) > 10 && count(split) > 5, "{} DELETE and {} SPLIT targets", count(del), count(split));
        let et = EditTokens { mask: tok.mask_id, delete: del, split };
        let (mut before, mut after) = (0, 0);
        for (r, (clean, p)) in b.clean.iter().zip(&b.prompts).enumerate() {
            let row = &noisy[r * len..(r + 1) * len];
            let trow = &targets[r * len..(r + 1) * len];
            assert_eq!(&row[..p.saturating_sub(start)], &clean[start..(*p).max(start)], "the prompt is never noised");
            for (s0, be) in suffixes(*p, clean.len(), 8) {
                let (x, t, y) = (&row[s0 - start..be - start], &trow[s0 - start..be - start], &clean[s0..be]);
                let wrong = |v: &[i64]| v.iter().zip(y).filter(|(a, b)| **a != tok.mask_id && a != b).count();
                let applied = apply_edits(t, x, &vec![true; x.len()], 0, et);
                assert!(wrong(&applied.tokens) <= wrong(x), "labels {t:?} made {x:?} worse against {y:?}: {:?}", applied.tokens);
                (before, after) = (before + wrong(x), after + wrong(&applied.tokens));
            }
        }
        assert!(before > 50 && after * 4 < before, "wrong tokens before {before}, after applying the labels {after}");
        // Without edit ids the 2.1 stream: targets are the clean canvas.
        let plain = noised_batch(&rows, &tok, &corrupt, NoiseConfig { edits: None, ..cfg }, &mut Rng::new(5)).unwrap();
        let t = Vec::<i64>::try_from(plain.targets.flatten(0, -1)).unwrap();
        assert!(!t.contains(&del) && !t.contains(&split));
    }
}
