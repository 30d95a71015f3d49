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
//! - The prompt is never noised and carries no loss.

use tch::Tensor;

use crate::composite::{self, Composite};
use crate::decode::Rng;
use crate::error::{Error, Result};
use crate::tasks::{self, below, Example, GEN_LENGTH};
use crate::tokenizer::Tokenizer;

/// How examples are noised.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct NoiseConfig {
    /// The T2T stream (random-token corruption of visible tokens, loss on every visible response token).
    pub t2t: bool,
    pub block: i64,
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
        for tok_i in n.iter_mut().skip(*p) {
            if rng.uniform() < sigma {
                *tok_i = tok.mask_id;
            } else if cfg.t2t && rng.uniform() < r {
                *tok_i = corrupt[below(rng, corrupt.len())];
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
        for i in start..start + len {
            targets.push(c[i]);
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
    })
}
