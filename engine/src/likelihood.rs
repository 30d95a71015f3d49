//! Likelihood estimates of a response y given a prompt x under a block-diffusion model (llada2.md sections 3
//! and 4): the ELBO, estimated through the vectorised `[x_t ; x_0]` layout ([`crate::composite`]), where ONE
//! forward gives every block's term.
//!
//! # What is scored
//!
//! The canvas is what the decoder lays out: prompt ids, response ids (the response is exactly the given ids;
//! it normally ends with its EOS, which is then scored like any other token), then EOS up to a whole number of
//! blocks. Only response positions are noised and scored. The prompt (also the prompt tail inside the first
//! response block) and the padding EOS after the response are always visible, as clean context: the padding
//! is part of the last block's visible tokens, so the estimate conditions on the canvas length (the response
//! ends inside that block), and it is clean context of nothing else (there is no later block).
//!
//! # The ELBO
//!
//! Block diffusion factorises over blocks, `log p(y | x) = sum_b log p(y^b | x, y^{<b})`, and each block term
//! is bounded below by the continuous-time masked-diffusion ELBO (linear schedule, as LLaDA):
//! `log p(y^b | .) >= E_{t ~ U(0,1)} E_{y_t} [ (1/t) sum_{i in b, y_t masked at i} log p(y_i | y_t^b, x, y^{<b}) ]`,
//! where each response token of the block is masked independently with probability t. Sharing one t and one
//! noise draw across all blocks keeps every block's estimate unbiased, so the sum over blocks estimates the
//! whole ELBO, and the composite layout computes all `B` block terms `log p(y^b | z, x)` of one noised
//! response `z = y_t ⊕ y_0` in one forward (noisy block b sees itself and the CLEAN blocks before it).
//!
//! # Estimators ([`Estimator`])
//!
//! - `Stratified { levels: N }` (the default, EBPO's vectorised estimate): levels `t_n = (n - 1 + u) / N`,
//!   n = 1..N, with ONE `u ~ U(0,1)` drawn from the seed, weights `w_n = 1 / (N t_n)`, value
//!   `sum_n w_n sum_b term_{n,b}`. Unbiased: `t_n` is uniform on the n-th stratum `((n-1)/N, n/N)` (density
//!   N), so `E[w_n f(t_n)] = integral over the stratum of f(t)/t dt` and the N strata tile (0, 1); the ELBO is
//!   `integral_0^1 f(t)/t dt` with `f(t) = E[sum over masked of log p]`. Stratification spreads the levels
//!   over (0, 1), which lowers the spread against N independent draws of t. All N levels are rows of one
//!   batched forward.
//! - `Vectorised { levels, weights }`: explicit `t_n` in (0, 1] and `w_n` (for example [`Estimator::midpoint`]:
//!   `t_n = (n - 1/2) / N`, `w_n = 1 / (N t_n)`, deterministic levels, a midpoint-rule quadrature of the
//!   integral: lower variance, biased by the quadrature error; or [`Estimator::gauss`], the Gauss-Legendre
//!   nodes and weights, unbiased once 2N >= the block length: a block's integrand is then a polynomial the
//!   rule integrates exactly). The noise is still random.
//! - `MonteCarlo { samples: S }` (LLaDA's `get_log_likelihood`): per sample its own `t ~ U(0,1]`, value
//!   `(1/t) sum over masked of log p`, averaged over the S samples.
//! - `MeanField` (d1 / diffu-GRPO's one-step estimate): every response token masked (t = 1), one forward, the
//!   sum of log p at every response position. With the block layout each block is predicted fully masked
//!   from the clean blocks before it. `prompt_mask > 0` (d1 uses [`D1_PROMPT_MASK`] = 0.3, default off) also
//!   masks each prompt token with that probability, in the noisy and the clean copy alike (the model then
//!   conditions on a randomly masked prompt): a regulariser of policy gradients, no longer an estimate of
//!   `log p(y | x)`.
//! - `Edit { levels, rate }` (LLaDA2.2 models only): the log-probability of the blocks' edit actions (token,
//!   DELETE, SPLIT) on Levenshtein drafts, with its own noise plan; see [`crate::edit_likelihood`], which also
//!   states its weighting. [`likelihood`] hands it over; [`plan`] refuses it.
//!
//! `antithetic` (Stratified, Vectorised, MonteCarlo): each mask is paired with its complement (masked <->
//! visible), a noise sample at level `1 - t` weighted by the same rule (`w t / (1 - t)`: for the stratified
//! levels that is `1 / (N (1 - t_n))`, the weight of the mirrored stratum), and the pair is averaged: still
//! unbiased, and the two halves' errors are negatively correlated (ESPO's coupled samples). A mask at t = 1 has
//! an empty complement and stays unpaired.
//!
//! # The report
//!
//! `value` = `sum_m weight_m sum_b term_{m,b}` over the noise masks m. `per_block[b]` = that sum for block b
//! alone (so the blocks add up to `value`; block 0 is the first block holding a response token). `stderr` treats
//! the S samples (levels for Stratified/Vectorised, draws for MonteCarlo; a pair counts as one) as independent:
//! each sample's value `S * sum_{m in sample} weight_m sum_b term_{m,b}` has mean `value`, and `stderr` is
//! their standard deviation over `sqrt(S)` (0 when S < 2). For stratified levels it is conservative: the spread
//! between strata counts as noise. It is only a guide: under the 1/t weight a sample that masks one token at a
//! small t counts `log p / t`, so the variance of Stratified and MonteCarlo is in principle unbounded
//! (log-divergent at t -> 0; antithetic pairs share it), and rare samples with a tiny t dominate the spread.
//! Midpoint levels keep every t >= 1/(2N) and so bound the weights. `rows` is the number of sequences (noise
//! masks) forwarded, `forwards` the number of model calls (rows are batched, up to [`MAX_ROWS`] per call).
//!
//! # Gradients and RL
//!
//! [`likelihood`] runs without gradients. For EBPO's ratio `log rho = ELBO_theta - ELBO_old` with the SAME
//! noise for both models: draw a [`NoisePlan`] once with [`plan`], get `[masks, blocks]` terms WITH gradients
//! from [`plan_terms`] (or [`block_terms`] for explicit masks) for theta and (under `tch::no_grad`) for
//! theta_old, and combine each with [`NoisePlan::combine`].
//! [`block_terms_loop`] is the slow reference (one plain block-causal forward per mask and block) for tests.

use tch::{Kind, Tensor};

use crate::composite;
use crate::decode::Rng;
use crate::error::{Error, Result};
use crate::model::{BlockMask, KvCache, Model};

/// The prompt masking probability of d1 / diffu-GRPO's mean-field estimate.
pub const D1_PROMPT_MASK: f64 = 0.3;

/// The largest count an estimator spec may ask for (`stratified:N`, `mc:N`, `edit:N`, ...): a count is a number
/// of noised copies of the response, so a huge one would allocate without bound before anything is computed.
pub const MAX_COUNT: usize = 4096;

/// At most this many noised sequences go through one forward in [`likelihood`].
pub const MAX_ROWS: usize = 32;

/// How the ELBO is estimated (see the module documentation).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Estimator {
    /// Explicit levels `t_n` in (0, 1] and weights `w_n`: value `sum_n w_n sum_b term_{n,b}`.
    Vectorised { levels: Vec<f64>, weights: Vec<f64>, antithetic: bool },
    /// `levels` stratified levels `t_n = (n - 1 + u) / N` with one `u ~ U(0,1)` from the seed, `w_n = 1/(N t_n)`.
    Stratified { levels: usize, antithetic: bool },
    /// `samples` independent draws of `t ~ U(0,1]`, each weighted `1 / (samples t)`.
    MonteCarlo { samples: usize, antithetic: bool },
    /// Every response token masked (t = 1), one forward; each prompt token masked with probability
    /// `prompt_mask` (0 = off; d1 uses [`D1_PROMPT_MASK`]).
    MeanField { prompt_mask: f64 },
    /// LLaDA2.2's action-vector likelihood ([`crate::edit_likelihood`]): `levels` stratified samples, each
    /// block a Levenshtein draft at per-token `rate`, masked at the sample's level, scored against its LCS
    /// edit labels (token, DELETE or SPLIT). Needs a model with edit ids.
    Edit { levels: usize, rate: f64 },
}

impl Default for Estimator {
    fn default() -> Estimator {
        Estimator::Stratified { levels: 4, antithetic: false }
    }
}

impl Estimator {
    /// A spec as the registry ([`crate::estimator_specs::ESTIMATORS`]) reads it: `stratified:N[:anti]`,
    /// `midpoint:N[:anti]`, `gauss:N[:anti]`, `mc:N[:anti]`, `mean-field[:P]`, `edit:N[:R]`, ...
    pub fn parse(spec: &str) -> Result<Estimator> {
        crate::estimator_specs::parse(spec)
    }

    /// The spec [`Estimator::parse`] reads back (explicit levels no registry row makes are listed).
    pub fn describe(&self) -> String {
        let a = |on: bool| if on { ":anti" } else { "" };
        match self {
            Estimator::Stratified { levels, antithetic } => format!("stratified:{levels}{}", a(*antithetic)),
            Estimator::MonteCarlo { samples, antithetic } => format!("mc:{samples}{}", a(*antithetic)),
            Estimator::MeanField { prompt_mask } if *prompt_mask > 0.0 => format!("mean-field:{prompt_mask}"),
            Estimator::MeanField { .. } => "mean-field".into(),
            Estimator::Edit { levels, rate } => format!("edit:{levels}:{rate}"),
            Estimator::Vectorised { levels, antithetic, .. } => crate::estimator_specs::describe_levels(self, levels.len(), *antithetic)
                .unwrap_or_else(|| format!("levels {levels:?}{}", a(*antithetic))),
        }
    }

    /// Gauss-Legendre levels: the `n` nodes `t_n` of the rule on (0, 1), weights `w_n = q_n / t_n` (`q_n` the
    /// rule's weights). Deterministic levels like midpoint, but unbiased once `2n >= block length`: a block of k
    /// response tokens masked independently at level t makes `f(t)/t` a polynomial of degree at most k - 1,
    /// which the n-point rule integrates exactly when `2n - 1 >= k - 1`. (The rule is symmetric, so antithetic
    /// pairs keep it exact.)
    pub fn gauss(n: usize, antithetic: bool) -> Estimator {
        let (levels, q) = crate::estimator_specs::gauss_legendre(n);
        let weights = levels.iter().zip(&q).map(|(t, q)| q / t).collect();
        Estimator::Vectorised { levels, weights, antithetic }
    }

    /// Midpoint levels `t_n = (n - 1/2) / N` with `w_n = 1 / (N t_n)`.
    pub fn midpoint(n: usize, antithetic: bool) -> Estimator {
        let (levels, weights) = stratified_levels(n, 0.5);
        Estimator::Vectorised { levels, weights, antithetic }
    }

    /// Checks the estimator's numbers (levels, samples, probabilities) without drawing anything.
    pub fn check(&self) -> Result<()> {
        match self {
            Estimator::Edit { levels, rate } => crate::edit_likelihood::check(*levels, *rate),
            other => plan(other, 1, 1, 0).map(|_| ()),
        }
    }
}

/// Levels `t_n = (n - 1 + u) / N`, n = 1..N, and weights `w_n = 1 / (N t_n)`.
pub fn stratified_levels(n: usize, u: f64) -> (Vec<f64>, Vec<f64>) {
    let levels: Vec<f64> = (0..n).map(|i| (i as f64 + u) / n as f64).collect();
    let weights = levels.iter().map(|t| 1.0 / (n as f64 * t)).collect();
    (levels, weights)
}

/// A likelihood estimate (see the module documentation for each field's meaning).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LikelihoodReport {
    pub value: f64,
    pub per_block: Vec<f64>,
    pub stderr: f64,
    pub samples: usize,
    /// Model calls.
    pub forwards: usize,
    /// Noised sequences forwarded (composite rows).
    pub rows: usize,
    /// The `edit` estimator's contributions by part (they add up to `value`); `None` for the masking estimators.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edit: Option<crate::edit_likelihood::EditParts>,
}

/// The noise of one estimate, drawn once and reusable with several models.
#[derive(Debug, Clone, PartialEq)]
pub struct NoisePlan {
    /// Per mask, over response positions: true = masked (noised and scored).
    pub masks: Vec<Vec<bool>>,
    /// Per mask: its weight in the value.
    pub weights: Vec<f64>,
    /// Per mask: the sample it belongs to (an antithetic pair is one sample).
    pub sample: Vec<usize>,
    pub samples: usize,
    /// Over prompt positions: true = masked (MeanField with `prompt_mask > 0`; otherwise all false).
    pub prompt_mask: Vec<bool>,
}

impl NoisePlan {
    /// The estimate `sum_m weight_m sum_b terms[m, b]` as a scalar tensor (keeps the gradient of `terms`).
    pub fn combine(&self, terms: &Tensor) -> Tensor {
        let w = Tensor::from_slice(&self.weights).to_kind(Kind::Float).to_device(terms.device());
        (terms.sum_dim_intlist(-1, false, Kind::Float) * w).sum(Kind::Float)
    }

    fn push(&mut self, mask: Vec<bool>, weight: f64, sample: usize) {
        self.masks.push(mask);
        self.weights.push(weight);
        self.sample.push(sample);
    }

    /// Adds the mask drawn at level `t` with weight `w` as sample `s`, with its complement when antithetic.
    fn level(&mut self, rng: &mut Rng, len: usize, t: f64, w: f64, s: usize, antithetic: bool) {
        let mask: Vec<bool> = (0..len).map(|_| rng.uniform() < t).collect();
        if antithetic && t < 1.0 {
            let complement = mask.iter().map(|m| !m).collect();
            self.push(mask, w / 2.0, s);
            self.push(complement, w * t / (1.0 - t) / 2.0, s);
        } else {
            self.push(mask, w, s);
        }
    }
}

/// Draws the noise of `est` for a prompt of `prompt_len` and a response of `response_len` tokens.
pub fn plan(est: &Estimator, prompt_len: usize, response_len: usize, seed: u64) -> Result<NoisePlan> {
    if response_len == 0 {
        return Err(Error::invalid("response", "[]", "the response needs at least one token"));
    }
    let mut rng = Rng::new(seed);
    let mut p = NoisePlan { masks: vec![], weights: vec![], sample: vec![], samples: 0, prompt_mask: vec![false; prompt_len] };
    match est {
        Estimator::Vectorised { levels, weights, antithetic } => {
            check_levels(levels, weights)?;
            for (n, (&t, &w)) in levels.iter().zip(weights).enumerate() {
                p.level(&mut rng, response_len, t, w, n, *antithetic);
            }
            p.samples = levels.len();
        }
        Estimator::Stratified { levels, antithetic } => {
            if *levels == 0 {
                return Err(Error::invalid("levels", 0, "needs at least one level"));
            }
            // t_n must be > 0: u in (0, 1].
            let (ts, ws) = stratified_levels(*levels, 1.0 - rng.uniform());
            for (n, (t, w)) in ts.into_iter().zip(ws).enumerate() {
                p.level(&mut rng, response_len, t, w, n, *antithetic);
            }
            p.samples = *levels;
        }
        Estimator::MonteCarlo { samples, antithetic } => {
            if *samples == 0 {
                return Err(Error::invalid("samples", 0, "needs at least one sample"));
            }
            for s in 0..*samples {
                let t = 1.0 - rng.uniform();
                p.level(&mut rng, response_len, t, 1.0 / (*samples as f64 * t), s, *antithetic);
            }
            p.samples = *samples;
        }
        Estimator::MeanField { prompt_mask } => {
            if !(0.0..1.0).contains(prompt_mask) {
                return Err(Error::invalid("prompt_mask", prompt_mask, "must be in [0, 1)"));
            }
            if *prompt_mask > 0.0 {
                p.prompt_mask = (0..prompt_len).map(|_| rng.uniform() < *prompt_mask).collect();
            }
            p.push(vec![true; response_len], 1.0, 0);
            p.samples = 1;
        }
        Estimator::Edit { .. } => {
            return Err(Error::invalid(
                "estimator",
                est.describe(),
                "the edit estimator's noise depends on the response tokens and the model's edit ids: draw it with edit_likelihood::EditPlan::draw",
            ))
        }
    }
    Ok(p)
}

fn check_levels(levels: &[f64], weights: &[f64]) -> Result<()> {
    if levels.is_empty() {
        return Err(Error::invalid("levels", "[]", "needs at least one level"));
    }
    if levels.len() != weights.len() {
        return Err(Error::invalid("weights", format!("{} weights", weights.len()), format!("needs one weight per level ({})", levels.len())));
    }
    if let Some(t) = levels.iter().find(|t| !(**t > 0.0 && **t <= 1.0)) {
        return Err(Error::invalid("levels", t, "every level t must be in (0, 1]"));
    }
    if let Some(w) = weights.iter().find(|w| !w.is_finite()) {
        return Err(Error::invalid("weights", w, "weights must be finite"));
    }
    Ok(())
}

/// The clean canvas and where the response lies in it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Layout {
    pub(crate) clean: Vec<i64>,
    pub(crate) prompt_len: usize,
    pub(crate) block: i64,
    /// First block holding a response token.
    pub(crate) first: i64,
    /// Blocks from `first` to the end of the canvas.
    pub(crate) blocks: i64,
}

pub(crate) fn layout(model: &Model, prompt: &[i64], response: &[i64], mask_id: i64, eos_id: i64, block: i64) -> Result<Layout> {
    if response.is_empty() {
        return Err(Error::invalid("response", "[]", "the response needs at least one token"));
    }
    if block <= 0 {
        return Err(Error::invalid("block", block, "the block length must be positive"));
    }
    let vocab = model.config().vocab_size;
    let in_vocab = |what: &'static str, id: i64| {
        if (0..vocab).contains(&id) {
            Ok(())
        } else {
            Err(Error::invalid(what, id, format!("token ids must be in 0..{vocab}")))
        }
    };
    in_vocab("mask_id", mask_id)?;
    in_vocab("eos_id", eos_id)?;
    prompt.iter().try_for_each(|&id| in_vocab("prompt", id))?;
    response.iter().try_for_each(|&id| in_vocab("response", id))?;
    if response.contains(&mask_id) {
        return Err(Error::invalid("response", mask_id, "the response contains the mask id"));
    }
    let len = (prompt.len() + response.len()) as i64;
    let padded = (len + block - 1) / block * block;
    let positions = model.config().max_position_embeddings;
    if padded > positions {
        return Err(Error::invalid(
            "prompt + response",
            format!("{len} tokens in blocks of {block}"),
            format!("the padded sequence ({padded} positions) exceeds the model's {positions} positions"),
        ));
    }
    let mut clean = prompt.to_vec();
    clean.extend_from_slice(response);
    clean.resize(padded as usize, eos_id);
    let first = prompt.len() as i64 / block;
    Ok(Layout { clean, prompt_len: prompt.len(), block, first, blocks: padded / block - first })
}

impl Layout {
    fn check_masks(&self, masks: &[Vec<bool>]) -> Result<()> {
        if masks.is_empty() {
            return Err(Error::invalid("masks", "[]", "needs at least one noise mask"));
        }
        Ok(())
    }

    /// The noisy canvas of `mask` (over response positions) and `prompt_mask` (over prompt positions).
    fn noisy(&self, mask: &[bool], prompt_mask: &[bool], mask_id: i64) -> Vec<i64> {
        let mut row = self.clean.clone();
        let at = prompt_mask.iter().enumerate().chain(mask.iter().enumerate().map(|(j, m)| (self.prompt_len + j, m)));
        for (i, &m) in at {
            if m {
                row[i] = mask_id;
            }
        }
        row
    }
}

/// Per-mask per-block sums of `log p(clean token)` over the masked response positions, `[masks, blocks]` f32,
/// WITH gradients, from one composite forward (all masks are rows of one batch). `masks[m]` has one entry per
/// response position (true = masked). Block 0 is the first block holding a response token.
pub fn block_terms(model: &Model, prompt: &[i64], response: &[i64], mask_id: i64, eos_id: i64, block: i64, masks: &[Vec<bool>]) -> Result<Tensor> {
    let lay = layout(model, prompt, response, mask_id, eos_id, block)?;
    check_response_masks(masks, response.len())?;
    terms(model, &lay, masks, &[], mask_id)
}

/// [`block_terms`] for the masks of `plan` (with its prompt masking), in one forward.
pub fn plan_terms(model: &Model, prompt: &[i64], response: &[i64], mask_id: i64, eos_id: i64, block: i64, plan: &NoisePlan) -> Result<Tensor> {
    let lay = layout(model, prompt, response, mask_id, eos_id, block)?;
    check_response_masks(&plan.masks, response.len())?;
    check_prompt_mask(&plan.prompt_mask, prompt.len())?;
    terms(model, &lay, &plan.masks, &plan.prompt_mask, mask_id)
}

fn check_response_masks(masks: &[Vec<bool>], r: usize) -> Result<()> {
    if let Some(m) = masks.iter().find(|m| m.len() != r) {
        return Err(Error::invalid("masks", format!("{} positions", m.len()), format!("every mask needs one entry per response position ({r})")));
    }
    Ok(())
}

fn check_prompt_mask(mask: &[bool], p: usize) -> Result<()> {
    if !mask.is_empty() && mask.len() != p {
        return Err(Error::invalid("prompt_mask", format!("{} positions", mask.len()), format!("needs one entry per prompt position ({p})")));
    }
    Ok(())
}

fn terms(model: &Model, lay: &Layout, masks: &[Vec<bool>], prompt_mask: &[bool], mask_id: i64) -> Result<Tensor> {
    lay.check_masks(masks)?;
    let rows = masks.len() as i64;
    let dev = model.device();
    let noisy: Vec<Vec<i64>> = masks.iter().map(|m| lay.noisy(m, prompt_mask, mask_id)).collect();
    let context = lay.noisy(&[], prompt_mask, mask_id);
    let clean = vec![context; masks.len()];
    let comp = composite::build(&noisy, &clean, lay.block, lay.first)?;
    let (start, len) = (comp.noisy_start as usize, comp.noisy_len);
    let logits = model.forward_masked(&comp.ids, &comp.positions, &comp.allowed, None)?.narrow(1, 0, len);
    let targets = Tensor::from_slice(&lay.clean[start..]).to_device(dev).view([1, len, 1]).expand([rows, len, 1], false);
    let logp = logits.gather(-1, &targets, false).squeeze_dim(-1) - logits.logsumexp(-1, false);
    let mut scored = Vec::with_capacity(masks.len() * len as usize);
    for m in masks {
        for i in start..start + len as usize {
            scored.push(i >= lay.prompt_len && m.get(i - lay.prompt_len).copied().unwrap_or(false));
        }
    }
    let scored = Tensor::from_slice(&scored).to_device(dev).view([rows, len]);
    Ok(logp.masked_fill(&scored.logical_not(), 0.0).view([rows, lay.blocks, lay.block]).sum_dim_intlist(-1, false, Kind::Float))
}

/// The slow reference of [`block_terms`]: every term from its own plain block-causal forward (no cache) of
/// `clean[..b*block] ++ noisy block b`. `[masks, blocks]` f32, no gradients. For tests and benchmarks.
pub fn block_terms_loop(model: &Model, prompt: &[i64], response: &[i64], mask_id: i64, eos_id: i64, block: i64, masks: &[Vec<bool>]) -> Result<Tensor> {
    let lay = layout(model, prompt, response, mask_id, eos_id, block)?;
    check_response_masks(masks, response.len())?;
    lay.check_masks(masks)?;
    let dev = model.device();
    let mut out = Vec::with_capacity(masks.len() * lay.blocks as usize);
    for m in masks {
        let noisy = lay.noisy(m, &[], mask_id);
        for b in lay.first..lay.first + lay.blocks {
            let (s, e) = ((b * block) as usize, ((b + 1) * block) as usize);
            let mut seq = lay.clean[..s].to_vec();
            seq.extend_from_slice(&noisy[s..e]);
            let ids = Tensor::from_slice(&seq).view([1, -1]);
            let logits = model.forward(&ids, &mut KvCache::new(), s as i64, BlockMask::block_causal(block))?.get(0);
            let targets = Tensor::from_slice(&lay.clean[s..e]).to_device(dev).view([block, 1]);
            let logp = logits.gather(-1, &targets, false).squeeze_dim(-1) - logits.logsumexp(-1, false);
            let scored: Vec<bool> = (s..e).map(|i| i >= lay.prompt_len && m.get(i - lay.prompt_len).copied().unwrap_or(false)).collect();
            let scored = Tensor::from_slice(&scored).to_device(dev);
            out.push(logp.masked_fill(&scored.logical_not(), 0.0).sum(Kind::Float));
        }
    }
    Ok(Tensor::stack(&out, 0).view([masks.len() as i64, lay.blocks]))
}

/// Estimates the ELBO of `log p(response | prompt)` with `est` (noise from `seed`), without gradients.
#[allow(clippy::too_many_arguments)]
pub fn likelihood(model: &Model, prompt: &[i64], response: &[i64], mask_id: i64, eos_id: i64, block: i64, est: &Estimator, seed: u64) -> Result<LikelihoodReport> {
    if let Estimator::Edit { levels, rate } = est {
        return crate::edit_likelihood::likelihood(model, prompt, response, mask_id, eos_id, block, *levels, *rate, seed);
    }
    let lay = layout(model, prompt, response, mask_id, eos_id, block)?;
    let plan = plan(est, prompt.len(), response.len(), seed)?;
    let mut parts = Vec::new();
    for chunk in plan.masks.chunks(MAX_ROWS) {
        parts.push(tch::no_grad(|| terms(model, &lay, chunk, &plan.prompt_mask, mask_id))?);
    }
    let forwards = parts.len();
    let t = Tensor::cat(&parts, 0).to_kind(Kind::Double).to_device(tch::Device::Cpu);
    let terms: Vec<Vec<f64>> = Vec::<Vec<f64>>::try_from(&t)?;
    Ok(report(&plan, &terms, forwards))
}

/// The report of `plan` given its `[masks][blocks]` terms.
pub fn report(plan: &NoisePlan, terms: &[Vec<f64>], forwards: usize) -> LikelihoodReport {
    let blocks = terms.first().map_or(0, |r| r.len());
    let mut per_block = vec![0.0; blocks];
    let mut per_sample = vec![0.0; plan.samples];
    for ((row, &w), &s) in terms.iter().zip(&plan.weights).zip(&plan.sample) {
        for (acc, x) in per_block.iter_mut().zip(row) {
            *acc += w * x;
        }
        per_sample[s] += w * row.iter().sum::<f64>();
    }
    let value = per_block.iter().sum();
    let n = plan.samples as f64;
    let stderr = if plan.samples < 2 {
        0.0
    } else {
        let vals: Vec<f64> = per_sample.iter().map(|v| n * v).collect();
        let mean = vals.iter().sum::<f64>() / n;
        (vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0) / n).sqrt()
    };
    LikelihoodReport { value, per_block, stderr, samples: plan.samples, forwards, rows: plan.masks.len(), edit: None }
}
