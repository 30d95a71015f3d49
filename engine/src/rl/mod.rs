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
//! exists ([`Rl::release`] unfreezes). theta_old is the policy at the start of the update; its values come from
//! an explicit pass under the same noise, so in the first epoch `rho` is exactly 1 (a test). Before the first
//! gradient step the update takes a [`Snapshot`] of the trainable parameters and the optimizer's moments: a
//! non-finite loss or gradient norm restores both and the update is rejected with an error.

mod reward;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tch::Tensor;

pub use reward::{Reward, RlPrompt, DEFAULT_TIMEOUT};

use crate::config::Config;
use crate::decode::{BatchDecoder, DecodeSettings, Rng, MAX_LENGTH};
use crate::edit_likelihood::EditPlan;
use crate::error::{Error, Result};
use crate::likelihood::{self, Estimator, NoisePlan};
use crate::model::Model;
use crate::tasks::{below, response_text, Task, BLOCK_LENGTH, GEN_LENGTH, TASKS};
use crate::tokenizer::{Role, Tokenizer};
use crate::train::AdamW;

/// Which parameters an update trains.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Trainable {
    All,
    /// The output projection (the embedding when tied).
    LmHead,
    /// Layers `from..to` (end excluded), every weight in them.
    Layers { from: i64, to: i64 },
    /// LoRA adapters of `rank` with scale `alpha / rank` on the attention and feed-forward projections.
    Lora { rank: i64, alpha: f64 },
}

/// The largest LoRA rank `lora:R` accepts (above the hidden size of every LLaDA2.x model, where a LoRA stops
/// being low-rank).
pub const MAX_LORA_RANK: i64 = 4096;
/// Rollouts (batch x group) one update may decode.
pub const MAX_ROLLOUTS: usize = 4096;
/// Inner epochs one update may run.
pub const MAX_EPOCHS: usize = 100;
/// Held-out prompts per task `rl eval N` may decode.
pub const MAX_EVAL: usize = 1000;

impl Trainable {
    /// `all`, `lm-head`, `layers:A-B` (B excluded) or `layers:A`, `lora:R` (alpha 2R) or `lora:R:ALPHA`.
    pub fn parse(s: &str) -> Result<Trainable> {
        let bad = |why: &str| Error::invalid("trainable", s, format!("{why}; expected all, lm-head, layers:A-B, lora:R or lora:R:ALPHA"));
        let (kind, arg) = s.split_once(':').map_or((s, None), |(k, a)| (k, Some(a)));
        match (kind, arg) {
            ("all", None) => Ok(Trainable::All),
            ("lm-head" | "head", None) => Ok(Trainable::LmHead),
            ("layers", Some(a)) => {
                let (f, t) = a.split_once('-').map_or((a, None), |(f, t)| (f, Some(t)));
                let from: i64 = f.parse().map_err(|_| bad("a layer is an integer"))?;
                let to = match t {
                    Some(t) => t.parse().map_err(|_| bad("a layer is an integer"))?,
                    None => from + 1,
                };
                if from < 0 || to <= from {
                    return Err(bad("the range is empty"));
                }
                Ok(Trainable::Layers { from, to })
            }
            ("lora", Some(a)) => {
                let mut it = a.split(':');
                let rank: i64 = it
                    .next()
                    .and_then(|r| r.parse().ok())
                    .filter(|r| (1..=MAX_LORA_RANK).contains(r))
                    .ok_or_else(|| bad(&format!("the rank is a whole number from 1 to {MAX_LORA_RANK}")))?;
                let alpha = match it.next() {
                    Some(x) => x.parse().ok().filter(|a: &f64| a.is_finite() && *a > 0.0).ok_or_else(|| bad("alpha is a positive number"))?,
                    None => 2.0 * rank as f64,
                };
                Ok(Trainable::Lora { rank, alpha })
            }
            _ => Err(bad("unknown subset")),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Trainable::All => "all".into(),
            Trainable::LmHead => "lm-head".into(),
            Trainable::Layers { from, to } => format!("layers:{from}-{to}"),
            Trainable::Lora { rank, alpha } => format!("lora:{rank}:{alpha}"),
        }
    }
}

/// Everything an update depends on. Defaults: see [`RlConfig::default`] and docs/rl.md.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RlConfig {
    /// Tasks prompts are drawn from (when `prompts` is empty).
    pub tasks: Vec<Task>,
    /// The user's prompts, used in turn instead of the task suite when non-empty.
    pub prompts: Vec<RlPrompt>,
    /// Prompts per update.
    pub batch: usize,
    /// Rollouts per prompt (G).
    pub group: usize,
    /// Rollout decoding: a preset's thresholds (or [`AUTO_PRESET`]), a temperature, the generated length and
    /// the block length.
    pub preset: String,
    pub temperature: f64,
    pub gen_length: i64,
    pub block_length: i64,
    pub reward: Reward,
    pub estimator: Estimator,
    pub eps_low: f64,
    pub eps_high: f64,
    /// Weight of the k3 KL to the reference policy (the policy when RL was configured); 0 = off.
    pub kl: f64,
    /// Inner epochs over the same rollouts (K).
    pub epochs: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// Global gradient-norm clipping.
    pub clip: f64,
    /// Divide log rho (and the KL's log ratio) by the response length.
    pub normalise: bool,
    pub trainable: Trainable,
    pub seed: u64,
}

impl Default for RlConfig {
    fn default() -> RlConfig {
        RlConfig {
            tasks: TASKS.to_vec(),
            prompts: Vec::new(),
            batch: 4,
            group: 8,
            preset: AUTO_PRESET.into(),
            temperature: 1.0,
            gen_length: GEN_LENGTH,
            block_length: BLOCK_LENGTH,
            reward: Reward::Verifier,
            estimator: Estimator::Stratified { levels: 4, antithetic: true },
            eps_low: 0.2,
            eps_high: 0.28,
            kl: 0.0,
            epochs: 1,
            lr: 1e-4,
            weight_decay: 0.0,
            clip: 1.0,
            normalise: true,
            trainable: Trainable::All,
            seed: 0,
        }
    }
}

/// The default rollout preset: `llada2.2` on a model with DELETE / SPLIT ids, `Q` otherwise.
pub const AUTO_PRESET: &str = "auto";

/// Setting names of [`RlConfig::set`], with one-line help.
pub const RL_SETTINGS: &[(&str, &str)] = &[
    ("tasks", "comma-separated tasks prompts are drawn from, or `all`"),
    ("batch", "prompts per update"),
    ("group", "rollouts per prompt (G)"),
    ("preset", "rollout decoding preset: auto (llada2.2 on models with edit ids, else Q), Q, S, llada2.0, llada2.2, ..."),
    ("temperature", "rollout sampling temperature (> 0 so a group's rollouts differ)"),
    ("gen_length", "tokens generated per rollout"),
    ("block_length", "block length of rollouts and likelihoods"),
    ("reward", "verifier | exact | regex PATTERN | command CMD"),
    ("reward_timeout", "seconds an external reward command may take"),
    ("estimator", "ELBO estimator: stratified:N[:anti], midpoint:N[:anti], mc:N[:anti], mean-field[:P], edit:N[:R] (LLaDA2.2)"),
    ("eps_low", "clip range below 1"),
    ("eps_high", "clip range above 1"),
    ("kl", "weight of the KL to the reference policy (0 = off)"),
    ("epochs", "inner epochs over the same rollouts (K)"),
    ("lr", "AdamW learning rate"),
    ("weight_decay", "AdamW decoupled weight decay"),
    ("clip", "gradient-norm clipping"),
    ("normalise", "true | false: divide log rho by the response length"),
    ("trainable", "all | lm-head | layers:A-B | lora:R[:ALPHA]"),
    ("seed", "seed of prompts, rollouts and noise"),
];

impl RlConfig {
    /// Sets one field from text; the error names the setting and what it accepts. Changes nothing on error.
    pub fn set(&mut self, name: &str, value: &str) -> Result<()> {
        let mut c = self.clone();
        let v = value.trim();
        fn num<T: std::str::FromStr>(name: &'static str, v: &str) -> Result<T> {
            v.parse().map_err(|_| Error::invalid(name, v, "expected a number"))
        }
        match name {
            "tasks" => c.tasks = Task::parse_list(v)?,
            "batch" => c.batch = num("batch", v)?,
            "group" => c.group = num("group", v)?,
            "preset" => {
                if v != AUTO_PRESET {
                    DecodeSettings::official(1).apply_preset(v)?;
                }
                c.preset = v.to_string();
            }
            "temperature" => c.temperature = num("temperature", v)?,
            "gen_length" => c.gen_length = num("gen_length", v)?,
            "block_length" => c.block_length = num("block_length", v)?,
            "reward" => {
                let keep = match (&self.reward, Reward::parse(v)?) {
                    (Reward::Command { timeout_ms, .. }, Reward::Command { command, .. }) => Reward::Command { command, timeout_ms: *timeout_ms },
                    (_, r) => r,
                };
                c.reward = keep;
            }
            "reward_timeout" => {
                let s: f64 = num("reward_timeout", v)?;
                if !(s > 0.0 && s.is_finite()) {
                    return Err(Error::invalid("reward_timeout", v, "must be a positive number of seconds"));
                }
                match &mut c.reward {
                    Reward::Command { timeout_ms, .. } => *timeout_ms = (s * 1e3).round() as u64,
                    _ => return Err(Error::invalid("reward_timeout", v, "applies to a `command` reward; set `reward command CMD` first")),
                }
            }
            "estimator" => c.estimator = Estimator::parse(v)?,
            "eps_low" => c.eps_low = num("eps_low", v)?,
            "eps_high" => c.eps_high = num("eps_high", v)?,
            "kl" => c.kl = num("kl", v)?,
            "epochs" => c.epochs = num("epochs", v)?,
            "lr" => c.lr = num("lr", v)?,
            "weight_decay" => c.weight_decay = num("weight_decay", v)?,
            "clip" => c.clip = num("clip", v)?,
            "normalise" | "normalize" => c.normalise = v.parse().map_err(|_| Error::invalid("normalise", v, "expected true or false"))?,
            "trainable" => c.trainable = Trainable::parse(v)?,
            "seed" => c.seed = num("seed", v)?,
            _ => {
                let names: Vec<&str> = RL_SETTINGS.iter().map(|s| s.0).collect();
                return Err(Error::invalid("rl setting", name, format!("known settings: {}", names.join(", "))));
            }
        }
        c.validate()?;
        *self = c;
        Ok(())
    }

    /// The value of a setting as text (for tables).
    pub fn get(&self, name: &str) -> String {
        match name {
            "tasks" => self.tasks.iter().map(|t| t.name()).collect::<Vec<_>>().join(","),
            "batch" => self.batch.to_string(),
            "group" => self.group.to_string(),
            "preset" => self.preset.clone(),
            "temperature" => self.temperature.to_string(),
            "gen_length" => self.gen_length.to_string(),
            "block_length" => self.block_length.to_string(),
            "reward" => self.reward.describe(),
            "reward_timeout" => match &self.reward {
                Reward::Command { timeout_ms, .. } => format!("{} s", *timeout_ms as f64 / 1e3),
                _ => "-".into(),
            },
            "estimator" => self.estimator.describe(),
            "eps_low" => self.eps_low.to_string(),
            "eps_high" => self.eps_high.to_string(),
            "kl" => self.kl.to_string(),
            "epochs" => self.epochs.to_string(),
            "lr" => self.lr.to_string(),
            "weight_decay" => self.weight_decay.to_string(),
            "clip" => self.clip.to_string(),
            "normalise" => self.normalise.to_string(),
            "trainable" => self.trainable.describe(),
            "seed" => self.seed.to_string(),
            _ => String::new(),
        }
    }

    /// Checks every field; the error names the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |n: &'static str, v: String, why: &str| Err(Error::invalid(n, v, why));
        if self.tasks.is_empty() && self.prompts.is_empty() {
            return bad("tasks", String::new(), "give at least one task or prompt");
        }
        if self.batch == 0 {
            return bad("batch", "0".into(), "must be at least 1 prompt");
        }
        if self.group < 2 {
            return bad("group", self.group.to_string(), "needs at least 2 rollouts per prompt (advantages compare a group)");
        }
        if self.batch.saturating_mul(self.group) > MAX_ROLLOUTS {
            return bad(
                "batch x group",
                format!("{} x {}", self.batch, self.group),
                &format!("an update decodes at most {MAX_ROLLOUTS} rollouts (batch {} x group {} is {})", self.batch, self.group, self.batch.saturating_mul(self.group)),
            );
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return bad("temperature", self.temperature.to_string(), "must be > 0: with greedy decoding every rollout of a group is the same");
        }
        for (name, v) in [("gen_length", self.gen_length), ("block_length", self.block_length)] {
            if !(1..=MAX_LENGTH).contains(&v) {
                return bad(name, v.to_string(), &format!("must be from 1 to {MAX_LENGTH}"));
            }
        }
        for (n, v) in [("eps_low", self.eps_low), ("eps_high", self.eps_high)] {
            if !(v > 0.0 && v < 1.0) {
                return bad(n, v.to_string(), "must be in (0, 1)");
            }
        }
        if !(self.kl >= 0.0 && self.kl.is_finite()) {
            return bad("kl", self.kl.to_string(), "must be >= 0");
        }
        if !(1..=MAX_EPOCHS).contains(&self.epochs) {
            return bad("epochs", self.epochs.to_string(), &format!("must be from 1 to {MAX_EPOCHS}"));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("lr", self.lr.to_string(), "must be > 0");
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return bad("weight_decay", self.weight_decay.to_string(), "must be >= 0");
        }
        if !(self.clip > 0.0) {
            return bad("clip", self.clip.to_string(), "must be > 0");
        }
        self.reward.check()?;
        self.estimator.check()
    }

    /// The rollout preset on a model of `config`: [`AUTO_PRESET`] resolved, any other name as set.
    pub fn rollout_preset(&self, config: &Config) -> &str {
        match self.preset.as_str() {
            AUTO_PRESET if config.delete_token_id.is_some() && config.split_token_id.is_some() => "llada2.2",
            AUTO_PRESET => "Q",
            p => p,
        }
    }

    /// The rollout decoding settings on a model of `config` (the preset's thresholds, sampling at
    /// `temperature`, EOS early stop).
    pub fn rollout_settings(&self, config: &Config) -> Result<DecodeSettings> {
        let mut s = DecodeSettings::official(self.gen_length);
        s.block_length = self.block_length;
        s.apply_preset(self.rollout_preset(config))?;
        s.temperature = self.temperature;
        s.eos_early_stop = true;
        s.validate()?;
        Ok(s)
    }

    /// The prompts of update `u`: task instances from the RL seed's stream, or the user's prompts in turn.
    pub fn prompts_of(&self, u: usize) -> Vec<RlPrompt> {
        if !self.prompts.is_empty() {
            return (0..self.batch).map(|i| self.prompts[(u * self.batch + i) % self.prompts.len()].clone()).collect();
        }
        let mut rng = Rng::new(self.seed ^ 0x0005_EED0_FA11 ^ (u as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        (0..self.batch)
            .map(|_| {
                let t = self.tasks[below(&mut rng, self.tasks.len())];
                RlPrompt::of_example(&t.generate(&mut rng))
            })
            .collect()
    }
}

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

    /// Unfreezes every parameter of `model` (the end of RL on it).
    pub fn release(model: &Model) {
        for (name, t) in model.var_store().variables() {
            if !name.ends_with("expert_bias") {
                let _ = t.set_requires_grad(true);
            }
        }
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

/// The trainable tensors of `t` on `model` (attaching LoRA adapters when asked).
pub(crate) fn select(model: &mut Model, t: &Trainable) -> Result<Vec<(String, Tensor)>> {
    let mut vars: Vec<(String, Tensor)> = model.var_store().variables().into_iter().filter(|(n, _)| !n.ends_with("expert_bias")).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let layers = model.config().num_hidden_layers;
    let chosen: Vec<(String, Tensor)> = match t {
        Trainable::All => vars,
        Trainable::LmHead => {
            let name = if model.config().tie_word_embeddings { "model.word_embeddings.weight" } else { "lm_head.weight" };
            vars.into_iter().filter(|(n, _)| n == name).collect()
        }
        Trainable::Layers { from, to } => {
            if *to > layers {
                return Err(Error::invalid("trainable", t.describe(), format!("the model has layers 0..{layers}")));
            }
            vars.into_iter()
                .filter(|(n, _)| {
                    n.strip_prefix("model.layers.")
                        .and_then(|r| r.split('.').next())
                        .and_then(|i| i.parse::<i64>().ok())
                        .is_some_and(|i| (*from..*to).contains(&i))
                })
                .collect()
        }
        Trainable::Lora { rank, alpha } => {
            let keep = model.lora().is_some_and(|a| a.rank == *rank && a.alpha == *alpha);
            if !keep {
                model.attach_lora(*rank, *alpha, 0x10AA)?;
            }
            model.lora().expect("attached").variables()
        }
    };
    if chosen.is_empty() {
        return Err(Error::invalid("trainable", t.describe(), "selects no parameter"));
    }
    Ok(chosen)
}

/// Gradients only for `params`: every other model parameter (LoRA adapters included) stops requiring them.
pub(crate) fn freeze_except(model: &Model, params: &[(String, Tensor)]) {
    let keep: std::collections::HashSet<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
    let adapters = model.lora().map(|a| a.variables()).unwrap_or_default();
    for (name, t) in model.var_store().variables().into_iter().chain(adapters) {
        if !name.ends_with("expert_bias") {
            let _ = t.set_requires_grad(keep.contains(name.as_str()));
        }
    }
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
