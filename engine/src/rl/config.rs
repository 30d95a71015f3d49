//! The configuration of EBPO updates (`rl set NAME VALUE`): what one update depends on, its settings table,
//! validation at the boundary, and the prompts and rollout settings it implies.

use crate::config::Config;
use crate::decode::{DecodeSettings, Rng, MAX_LENGTH};
use crate::error::{Error, Result};
use crate::likelihood::Estimator;
use crate::tasks::{below, Task, BLOCK_LENGTH, GEN_LENGTH, TASKS};
use crate::trainable::Trainable;

use super::reward::{Reward, RlPrompt};

/// Rollouts (batch x group) one update may decode.
pub const MAX_ROLLOUTS: usize = 4096;
/// Inner epochs one update may run.
pub const MAX_EPOCHS: usize = 100;
/// Held-out prompts per task `rl eval N` may decode.
pub const MAX_EVAL: usize = 1000;

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
            reward: Reward::default(),
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
    ("reward", "how rollouts are scored: verifier, exact, similarity, regex PATTERN, command CMD, ... (`help rl` lists them)"),
    ("reward_timeout", "seconds an external reward command may take"),
    ("estimator", "ELBO estimator: stratified:N[:anti], gauss:N[:anti], mc:N[:anti], ... (`help likelihood` lists them)"),
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
                // A new reward of a timed kind keeps the timeout set before.
                let r = Reward::parse(v)?;
                c.reward = if r.timed() && self.reward.timed() { r.with_timeout(self.reward.timeout())? } else { r };
            }
            "reward_timeout" => {
                let s: f64 = num("reward_timeout", v)?;
                if !(s > 0.0 && s.is_finite() && s < 1e9) {
                    return Err(Error::invalid("reward_timeout", v, "must be a positive number of seconds"));
                }
                c.reward = c.reward.with_timeout(std::time::Duration::from_millis((s * 1e3).round() as u64))?;
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
            "reward_timeout" if self.reward.timed() => format!("{} s", self.reward.timeout().as_secs_f64()),
            "reward_timeout" => "-".into(),
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

