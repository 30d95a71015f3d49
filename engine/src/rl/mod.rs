//! EBPO: short RL updates of the resident model with ELBO-based policy ratios (llada2.md section 4).
//!
//! One update ([`Rl::update`]):
//! 1. `batch` prompts (task-suite instances from the RL seed's stream, or the user's prompts in turn), each
//!    decoded `group` times by the batched decoder under the rollout settings (a preset, a temperature, a seed
//!    per rollout), under the policy as it is (theta_old);
//! 2. rewards ([`Reward`]); group-normalised advantages `A = (r - mean) / (std + 1e-4)` (std over the group,
//!    unbiased, as ESPO); a failing reward stops here and nothing has changed;
//! 3. per rollout, ONE noise plan ([`crate::likelihood::plan`], or for the `edit` estimator an
//!    [`EditPlan`] of drafts and edit labels) with the configured estimator, used for theta_old, the reference
//!    and theta alike: `log rho = (ELBO_theta - ELBO_old) / |y|` (divided by the response length when
//!    `normalise`, ESPO's choice; the sum of block terms otherwise). With `edit` this is L-EBPO's edit-aware
//!    ratio (LLaDA2.2 report eq. 5): the ELBOs are the log-probabilities of the blocks' action vectors;
//! 4. `epochs` passes of the clipped surrogate `-min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A)`, averaged
//!    over the rollouts, plus `kl * k3(ref || theta)` when `kl > 0`; backward, gradient clipping, AdamW.
//!    Rollouts whose advantage is 0 (a group with equal rewards) contribute nothing to the loss and are not
//!    forwarded unless a KL term needs them.
//!
//! Rollouts decode with the `preset` setting; its default `auto` is `llada2.2` (the Levenshtein decoder, whose
//! drafts the `edit` estimator models) on a model whose config has DELETE / SPLIT ids, and `Q` otherwise.
//!
//! Only the trainable subset ([`Trainable`]) gets gradients; the rest of the model is frozen while an [`Rl`]
//! exists ([`crate::trainable::release`] unfreezes). theta_old is the policy at the start of the update; its values come from
//! an explicit pass under the same noise, so in the first epoch `rho` is exactly 1 (a test). Before the first
//! gradient step the update takes a [`Snapshot`] of the trainable parameters and the optimizer's moments: a
//! non-finite loss or gradient norm restores both and the update is rejected with an error.

mod config;
mod reward;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tch::Tensor;

pub use config::{RlConfig, AUTO_PRESET, MAX_EPOCHS, MAX_EVAL, MAX_ROLLOUTS, RL_SETTINGS};
pub use reward::{register, reward_kinds, Reward, RewardFn, RewardKind, RlPrompt, DEFAULT_TIMEOUT, REWARDS};
pub use crate::trainable::{Trainable, MAX_LORA_RANK};

use crate::decode::BatchDecoder;
use crate::edit_likelihood::EditPlan;
use crate::error::{Error, Result};
use crate::likelihood::{self, Estimator, NoisePlan};
use crate::model::Model;
use crate::tasks::response_text;
use crate::trainable::{freeze_except, select};
use crate::tokenizer::{Role, Tokenizer};
use crate::train::AdamW;

/// Copies of named tensors (the trainable parameters, optionally the optimizer's moments).
#[derive(Debug)]
pub struct Snapshot {
    tensors: Vec<(String, Tensor)>,
}

impl Snapshot {
    pub fn take(params: &[(String, Tensor)]) -> Snapshot {
        Snapshot { tensors: params.iter().map(|(n, t)| (n.clone(), t.detach().copy())).collect() }
    }

    pub fn names(&self) -> Vec<&str> {
        self.tensors.iter().map(|(n, _)| n.as_str()).collect()
    }

    pub fn tensors(&self) -> &[(String, Tensor)] {
        &self.tensors
    }

    /// Copies the snapshot into `params` in place: all of them or (on a mismatch of names or shapes) none.
    pub fn load_into(&self, params: &[(String, Tensor)]) -> Result<()> {
        if params.len() != self.tensors.len() {
            return Err(Error::invalid("snapshot", format!("{} tensors", self.tensors.len()), format!("the trainable set has {} tensors; restore under the same `trainable`", params.len())));
        }
        for ((n, t), (sn, st)) in params.iter().zip(&self.tensors) {
            if n != sn || t.size() != st.size() {
                return Err(Error::invalid("snapshot", sn, format!("does not match trainable `{n}` {:?}; restore under the same `trainable`", t.size())));
            }
        }
        tch::no_grad(|| {
            for ((_, t), (_, st)) in params.iter().zip(&self.tensors) {
                let mut t = t.shallow_clone();
                t.copy_(st);
            }
        });
        Ok(())
    }
}

/// One rollout: its prompt, the decoded response ids (through the first EOS) and text, its reward.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rollout {
    pub prompt: usize,
    #[serde(skip)]
    pub prompt_ids: Vec<i64>,
    pub response_ids: Vec<i64>,
    pub response: String,
    pub reward: f64,
    pub advantage: f64,
}

/// Seconds spent per phase of an update.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Phases {
    /// Decoding the rollouts.
    pub rollout: f64,
    pub reward: f64,
    /// Forwards of the likelihood terms (theta_old, the reference, theta).
    pub likelihood: f64,
    /// Backward passes, clipping and the optimizer step.
    pub backward: f64,
    pub total: f64,
}

/// What one update did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UpdateMetrics {
    /// 1-based count of accepted updates.
    pub update: usize,
    pub reward_mean: f64,
    pub reward_std: f64,
    /// Fraction of (rollout, epoch) terms where the clipped branch of the surrogate was taken.
    pub clip_fraction: f64,
    /// Mean k3 estimate of KL(theta_old || theta) over the last epoch's rollouts, `(rho - 1) - log rho`.
    pub approx_kl: f64,
    /// Mean k3 KL to the reference (when `kl > 0`).
    pub ref_kl: Option<f64>,
    /// The last epoch's loss.
    pub loss: f64,
    /// The last epoch's gradient norm before clipping.
    pub grad_norm: f64,
    pub rollouts: usize,
    /// Rollouts with a non-zero advantage (the ones that were forwarded for the loss).
    pub trained: usize,
    pub mean_length: f64,
    pub time: Phases,
    /// Rollouts of the first prompt (for display).
    pub sample: Vec<Rollout>,
}

/// An RL run on a resident model: its configuration, trainable parameters, optimizer and history.
pub struct Rl {
    config: RlConfig,
    params: Vec<(String, Tensor)>,
    opt: AdamW,
    reference: Option<Snapshot>,
    pub history: Vec<UpdateMetrics>,
    /// Checked between rollouts of an epoch and between epochs: set, the update stops and is not applied.
    interrupt: Option<Arc<AtomicBool>>,
}

impl Rl {
    /// Selects the trainable parameters of `model` (attaching LoRA adapters for `lora:R`, replacing any of
    /// another rank), freezes every other parameter, and sets up AdamW.
    pub fn new(model: &mut Model, config: RlConfig) -> Result<Rl> {
        config.validate()?;
        if matches!(config.estimator, Estimator::Edit { .. }) {
            // Refused here rather than at the first update's likelihoods, after its rollouts.
            crate::edit_likelihood::edit_ids(model)?;
        }
        let params = select(model, &config.trainable)?;
        crate::trainable::check_training_memory(model, &params)?;
        freeze_except(model, &params);
        let opt = AdamW::over(shallow(&params), (0.9, 0.999), config.weight_decay);
        let reference = (config.kl > 0.0).then(|| Snapshot::take(&params));
        Ok(Rl { config, params, opt, reference, history: Vec::new(), interrupt: None })
    }

    pub fn config(&self) -> &RlConfig {
        &self.config
    }

    /// Replaces the configuration. A change of `trainable` needs a new [`Rl`] (the caller's job); the optimizer
    /// keeps its moments otherwise. Turning the KL on takes the reference now.
    pub fn set_config(&mut self, config: RlConfig) -> Result<()> {
        config.validate()?;
        if config.trainable != self.config.trainable {
            return Err(Error::invalid("trainable", config.trainable.describe(), "changing the trainable set needs a new RL run"));
        }
        self.opt.weight_decay = config.weight_decay;
        if config.kl > 0.0 && self.reference.is_none() {
            self.reference = Some(Snapshot::take(&self.params));
        }
        self.config = config;
        Ok(())
    }

    /// The trainable parameters by name (shallow: they are the model's).
    pub fn params(&self) -> &[(String, Tensor)] {
        &self.params
    }

    pub fn num_parameters(&self) -> i64 {
        self.params.iter().map(|(_, t)| t.numel() as i64).sum()
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot::take(&self.params)
    }

    /// Restores a snapshot of the trainable parameters (all or nothing) and resets the optimizer's moments.
    pub fn restore(&mut self, snap: &Snapshot) -> Result<()> {
        snap.load_into(&self.params)?;
        self.opt = AdamW::over(shallow(&self.params), (0.9, 0.999), self.config.weight_decay);
        Ok(())
    }

    /// Decodes the rollouts of update `u` and scores them; nothing changes.
    pub fn rollouts(&self, model: &Model, tok: &Tokenizer, u: usize) -> Result<(Vec<RlPrompt>, Vec<Rollout>)> {
        let c = &self.config;
        let prompts = c.prompts_of(u);
        let settings = c.rollout_settings(model.config())?;
        let mut ids = Vec::new();
        let mut seeds = Vec::new();
        for (i, p) in prompts.iter().enumerate() {
            let enc = tok.encode(&Tokenizer::chat_prompt(&[(Role::Human, &p.text)], true))?;
            for g in 0..c.group {
                ids.push(enc.clone());
                seeds.push(c.seed.wrapping_mul(1_000_003).wrapping_add((u * c.batch * c.group + i * c.group + g) as u64));
            }
        }
        let mut dec = BatchDecoder::with_seeds(&ids, &seeds, settings, tok.mask_id, tok.eos_id, model)?;
        dec.run_until(model, self.interrupt.as_deref()).map_err(|e| match e {
            Error::Interrupted(at) => Error::Interrupted(format!("decoding the rollouts of update {} ({at}); it was not applied and the policy is unchanged", u + 1)),
            e => e,
        })?;
        let rollouts = dec
            .rows()
            .iter()
            .zip(ids)
            .enumerate()
            .map(|(j, (row, prompt_ids))| {
                let out = row.output();
                let end = out.iter().position(|&t| t == tok.eos_id).map_or(out.len(), |e| e + 1);
                let response_ids = out[..end].to_vec();
                Rollout { prompt: j / c.group, prompt_ids, response: response_text(tok, &response_ids), response_ids, reward: 0.0, advantage: 0.0 }
            })
            .collect();
        Ok((prompts, rollouts))
    }

    /// Makes [`Rl::update`] check `flag` between rollouts and epochs (a front-end's Ctrl-C or interrupt).
    pub fn set_interrupt(&mut self, flag: Arc<AtomicBool>) {
        self.interrupt = Some(flag);
    }

    fn check_interrupt(&self, at: &str) -> Result<()> {
        match &self.interrupt {
            Some(f) if f.load(Ordering::SeqCst) => Err(Error::Interrupted(format!("{at} of update {}; it was not applied and the policy is unchanged", self.history.len() + 1))),
            _ => Ok(()),
        }
    }

    /// One EBPO update (see the module documentation). On error (or an interrupt) the policy and optimizer are
    /// unchanged.
    pub fn update(&mut self, model: &Model, tok: &Tokenizer) -> Result<UpdateMetrics> {
        let t0 = Instant::now();
        let c = self.config.clone();
        let u = self.history.len();
        let (prompts, mut rollouts) = self.rollouts(model, tok, u)?;
        self.check_interrupt("after the rollouts")?;
        let t_roll = t0.elapsed().as_secs_f64();

        let refs: Vec<&RlPrompt> = rollouts.iter().map(|r| &prompts[r.prompt]).collect();
        let texts: Vec<String> = rollouts.iter().map(|r| r.response.clone()).collect();
        let rewards = c.reward.score(&refs, &texts)?;
        for (r, &x) in rollouts.iter_mut().zip(&rewards) {
            r.reward = x;
        }
        for g in rollouts.chunks_mut(c.group) {
            let adv = advantages(&g.iter().map(|r| r.reward).collect::<Vec<_>>());
            for (r, a) in g.iter_mut().zip(adv) {
                r.advantage = a;
            }
        }
        let t_reward = t0.elapsed().as_secs_f64() - t_roll;

        // The rollouts that enter the loss, each with its noise plan.
        let active: Vec<usize> = (0..rollouts.len()).filter(|&i| rollouts[i].advantage != 0.0 || c.kl > 0.0).collect();
        let plans: Vec<Noise> = active
            .iter()
            .map(|&i| Noise::draw(&c.estimator, model, tok, c.block_length, &rollouts[i], c.seed ^ ((u as u64) << 32) ^ i as u64))
            .collect::<Result<_>>()?;
        let mut t_like = 0.0;
        let mut t_back = 0.0;
        let tl = Instant::now();
        let old = tch::no_grad(|| self.values(model, tok, &rollouts, &active, &plans))?;
        let reference = match &self.reference {
            Some(snap) if c.kl > 0.0 => Some(self.values_under(snap, model, tok, &rollouts, &active, &plans)?),
            _ => None,
        };
        t_like += tl.elapsed().as_secs_f64();

        let before = Snapshot::take(&self.params);
        let (opt_state, opt_step) = (deep(&self.opt.state_tensors()), self.opt.step);
        let n = rollouts.len() as f64;
        let (mut loss, mut grad_norm, mut clipped, mut kl_old, mut kl_ref) = (0.0, 0.0, 0usize, 0.0, 0.0);
        let result = (|| -> Result<()> {
            // Nothing to learn from (every group agreed with itself): no optimizer step at all.
            let epochs = if active.is_empty() { 0 } else { c.epochs };
            for epoch in 0..epochs {
                self.opt.zero_grad();
                let (mut l_sum, mut k_sum, mut r_sum) = (0.0, 0.0, 0.0);
                clipped = 0;
                for (k, &i) in active.iter().enumerate() {
                    self.check_interrupt(&format!("in epoch {} of {epochs}", epoch + 1))?;
                    let r = &rollouts[i];
                    let tl = Instant::now();
                    let new = plans[k].value(model, tok, c.block_length, r)?;
                    let norm = if c.normalise { r.response_ids.len() as f64 } else { 1.0 };
                    let log_rho = (&new - &old[k]) / norm;
                    let rho = log_rho.exp();
                    let a = r.advantage;
                    let surr = (&rho * a).minimum(&(rho.clamp(1.0 - c.eps_low, 1.0 + c.eps_high) * a));
                    let mut li = -surr;
                    let (lr, rv) = (log_rho.double_value(&[]), rho.double_value(&[]));
                    if (a > 0.0 && rv > 1.0 + c.eps_high) || (a < 0.0 && rv < 1.0 - c.eps_low) {
                        clipped += 1;
                    }
                    k_sum += (rv - 1.0) - lr;
                    if let Some(refv) = &reference {
                        let d = (&refv[k] - &new) / norm; // log(p_ref / p_theta), normalised
                        let k3 = d.exp() - &d - 1.0;
                        r_sum += k3.double_value(&[]);
                        li = li + k3 * c.kl;
                    }
                    let li = li / n;
                    let lv = li.double_value(&[]);
                    t_like += tl.elapsed().as_secs_f64();
                    if !lv.is_finite() {
                        return Err(Error::invalid("loss", lv, format!("non-finite in epoch {} (rollout {i}): the update is rejected and the policy is unchanged", epoch + 1)));
                    }
                    l_sum += lv;
                    let tb = Instant::now();
                    li.backward();
                    t_back += tb.elapsed().as_secs_f64();
                }
                let tb = Instant::now();
                let g = self.opt.clip_grad_norm(c.clip);
                if !g.is_finite() {
                    return Err(Error::invalid("gradient norm", g, format!("non-finite in epoch {}: the update is rejected and the policy is unchanged", epoch + 1)));
                }
                self.opt.update(c.lr);
                t_back += tb.elapsed().as_secs_f64();
                let m = active.len().max(1) as f64;
                (loss, grad_norm, kl_old, kl_ref) = (l_sum, g, k_sum / m, r_sum / m);
            }
            Ok(())
        })();
        if let Err(e) = result {
            before.load_into(&self.params)?;
            self.opt.load_state(opt_state.into_iter().collect(), opt_step)?;
            self.opt.zero_grad();
            return Err(e);
        }
        self.opt.zero_grad();
        let (reward_mean, reward_std) = mean_std(&rewards);
        let metrics = UpdateMetrics {
            update: u + 1,
            reward_mean,
            reward_std,
            clip_fraction: if active.is_empty() { 0.0 } else { clipped as f64 / active.len() as f64 },
            approx_kl: kl_old,
            ref_kl: reference.as_ref().map(|_| kl_ref),
            loss,
            grad_norm,
            rollouts: rollouts.len(),
            trained: rollouts.iter().filter(|r| r.advantage != 0.0).count(),
            mean_length: rollouts.iter().map(|r| r.response_ids.len() as f64).sum::<f64>() / n,
            time: Phases { rollout: t_roll, reward: t_reward, likelihood: t_like, backward: t_back, total: t0.elapsed().as_secs_f64() },
            sample: rollouts.iter().filter(|r| r.prompt == 0).cloned().collect(),
        };
        self.history.push(metrics.clone());
        Ok(metrics)
    }

    /// [`Rl::values`] (without gradients) under the parameters of `snap`, swapped in and back out.
    fn values_under(&self, snap: &Snapshot, model: &Model, tok: &Tokenizer, rollouts: &[Rollout], active: &[usize], plans: &[Noise]) -> Result<Vec<Tensor>> {
        let current = Snapshot::take(&self.params);
        snap.load_into(&self.params)?;
        let v = tch::no_grad(|| self.values(model, tok, rollouts, active, plans));
        current.load_into(&self.params)?;
        v
    }

    /// The ELBO estimate of each active rollout under the current parameters (combined plan terms).
    fn values(&self, model: &Model, tok: &Tokenizer, rollouts: &[Rollout], active: &[usize], plans: &[Noise]) -> Result<Vec<Tensor>> {
        active.iter().zip(plans).map(|(&i, p)| Ok(p.value(model, tok, self.config.block_length, &rollouts[i])?.detach())).collect()
    }
}

/// One rollout's noise, drawn once and shared by theta_old, the reference and theta.
enum Noise {
    /// A masking estimator's masks.
    Masks(NoisePlan),
    /// The `edit` estimator's drafts, masks and action labels.
    Edits(EditPlan),
}

impl Noise {
    fn draw(est: &Estimator, model: &Model, tok: &Tokenizer, block: i64, r: &Rollout, seed: u64) -> Result<Noise> {
        match est {
            Estimator::Edit { levels, rate } => {
                EditPlan::draw(model, &r.prompt_ids, &r.response_ids, tok.mask_id, tok.eos_id, block, *levels, *rate, seed).map(Noise::Edits)
            }
            _ => likelihood::plan(est, r.prompt_ids.len(), r.response_ids.len(), seed).map(Noise::Masks),
        }
    }

    /// The estimate of `r` under the model's current parameters, a scalar WITH gradients.
    fn value(&self, model: &Model, tok: &Tokenizer, block: i64, r: &Rollout) -> Result<Tensor> {
        match self {
            Noise::Masks(p) => {
                let terms = likelihood::plan_terms(model, &r.prompt_ids, &r.response_ids, tok.mask_id, tok.eos_id, block, p)?;
                Ok(p.combine(&terms))
            }
            Noise::Edits(p) => Ok(p.combine(&p.logp(model)?)),
        }
    }
}

fn shallow(v: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    v.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect()
}

fn deep(v: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    v.iter().map(|(n, t)| (n.clone(), t.copy())).collect()
}

/// `(r - mean) / (std + 1e-4)` with the unbiased std of the group (all zeros when the rewards are equal).
pub fn advantages(rewards: &[f64]) -> Vec<f64> {
    let n = rewards.len() as f64;
    let mean = rewards.iter().sum::<f64>() / n;
    let var = if rewards.len() > 1 { rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    rewards.iter().map(|r| if var == 0.0 { 0.0 } else { (r - mean) / (var.sqrt() + 1e-4) }).collect()
}

fn mean_std(x: &[f64]) -> (f64, f64) {
    let n = x.len().max(1) as f64;
    let mean = x.iter().sum::<f64>() / n;
    (mean, (x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt())
}

/// The mean reward of the greedy decodes (temperature 0, the rollout preset) of the first `n` held-out
/// instances of each of `config.tasks` (or of the user's prompts), and the responses. `interrupt`, when set,
/// stops the decodes between two steps with [`Error::Interrupted`].
pub fn held_out_reward(model: &Model, tok: &Tokenizer, config: &RlConfig, n: usize, interrupt: Option<&AtomicBool>) -> Result<(f64, Vec<(RlPrompt, String, f64)>)> {
    let prompts: Vec<RlPrompt> = if config.prompts.is_empty() {
        config.tasks.iter().flat_map(|&t| crate::tasks::instances(t, crate::tasks::HELD_OUT_SEED, n)).map(|e| RlPrompt::of_example(&e)).collect()
    } else {
        config.prompts.clone()
    };
    let mut settings = config.rollout_settings(model.config())?;
    settings.temperature = 0.0;
    let ids = prompts
        .iter()
        .map(|p| tok.encode(&Tokenizer::chat_prompt(&[(Role::Human, &p.text)], true)))
        .collect::<Result<Vec<_>>>()?;
    let rows = crate::eval::decode_batched(model, tok, &ids, &settings, crate::eval::DEFAULT_BATCH, interrupt)?;
    let texts: Vec<String> = rows.iter().map(|r| response_text(tok, &r.output)).collect();
    let refs: Vec<&RlPrompt> = prompts.iter().collect();
    let rewards = config.reward.score(&refs, &texts)?;
    let mean = rewards.iter().sum::<f64>() / rewards.len().max(1) as f64;
    Ok((mean, prompts.into_iter().zip(texts).zip(rewards).map(|((p, t), r)| (p, t, r)).collect()))
}

/// `log rho` of each rollout between the current parameters and `snap` (same trainable set) under the same
/// noise: `(ELBO_theta - ELBO_snap) / norm`, without gradients. Exactly 0 when they are equal.
pub fn log_ratios(rl: &Rl, model: &Model, tok: &Tokenizer, rollouts: &[Rollout], snap: &Snapshot, seed: u64) -> Result<Vec<f64>> {
    let c = rl.config();
    let active: Vec<usize> = (0..rollouts.len()).collect();
    let plans: Vec<Noise> = rollouts
        .iter()
        .enumerate()
        .map(|(i, r)| Noise::draw(&c.estimator, model, tok, c.block_length, r, seed ^ i as u64))
        .collect::<Result<_>>()?;
    let new = tch::no_grad(|| rl.values(model, tok, rollouts, &active, &plans))?;
    let old = rl.values_under(snap, model, tok, rollouts, &active, &plans)?;
    Ok(new
        .iter()
        .zip(&old)
        .zip(rollouts)
        .map(|((n, o), r)| {
            let norm = if c.normalise { r.response_ids.len() as f64 } else { 1.0 };
            (n - o).double_value(&[]) / norm
        })
        .collect())
}
