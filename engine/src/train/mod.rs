//! Training a LLaDA2 model on the task suite with the LLaDA2.1 mixed objective (`dllm train`).
//!
//! One step: a batch of task instances (canvases as the decoder sees them), noised by M2T (+ T2T unless the
//! M2T-only control), in the composite `[x_t ; x_0]` layout, one forward with gradients, then
//! `loss = CE(masked) / #masked + CE(visible) / #visible` (the second term only with T2T). Multi-turn Forward
//! (from `mtf_from` of the run on, for `mtf_prob` of the rows): a no-grad draft forward first, and masked
//! positions whose draft confidence exceeds u ~ U[0.3, 0.9] (per row) take the draft's argmax, like a
//! threshold decoder would, so the graded forward sees the model's own mistakes. Then AdamW (warm-up,
//! cosine), gradient clipping, and expert-bias load balancing. The choices the paper leaves open are
//! documented in docs/training.md.
//!
//! On a LLaDA2.2 model (its config has DELETE / SPLIT ids) the T2T stream is Levenshtein T2T (see
//! [`noise`]): targets are LCS edit labels, and MTF is a second labelling round: the draft forward's writes
//! (masks above u, and every visible slot whose argmax differs, as the `llada2.2` decoder at tau_edit 0) are
//! applied with DELETE / SPLIT like a decoding step, and the edited draft is labelled again against the clean
//! block.
//!
//! Runs are deterministic from the seed: step k draws its examples and noise from a generator seeded by
//! (seed, k), so a resumed run continues exactly where the interrupted one was.

mod adamw;
pub mod data;
mod noise;

use std::path::{Path, PathBuf};
use std::time::Instant;

use tch::{Device, Kind, Tensor};

pub use adamw::{learning_rate, AdamW};
pub use noise::{canvas, corruption_ids, edit_targets, noised_batch, noised_groups, suffixes, Batch, NoiseConfig};

use crate::checkpoint::{self, SaveOptions};
use crate::decode::{apply_edits, EditTokens, Rng};
use crate::device::DType;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::rl::Trainable;
use crate::tasks::{below, Task, BLOCK_LENGTH};
use crate::tokenizer::Tokenizer;

/// Everything that defines a run (saved with every checkpoint).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    #[serde(rename = "preset")]
    pub recipe: String,
    /// Model shape (a name of [`crate::shapes::SHAPES`]).
    pub model: String,
    pub steps: i64,
    pub batch: usize,
    pub lr: f64,
    pub warmup: i64,
    /// Final learning rate as a fraction of the peak.
    pub lr_floor: f64,
    pub weight_decay: f64,
    pub clip: f64,
    pub t2t: bool,
    pub mtf: bool,
    /// Fraction of the run after which MTF starts.
    pub mtf_from: f64,
    pub mtf_prob: f64,
    /// Expert-bias step per optimiser step (0 = no balancing).
    pub balance_rate: f64,
    pub checkpoint_every: i64,
    pub seed: u64,
    /// Tasks are drawn uniformly from this list (a task listed twice is drawn twice as often).
    pub task_mix: Vec<Task>,
    pub block: i64,
    /// Fine-tuning a checkpoint on a JSONL file (`dllm train --data`) instead of the task suite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataConfig>,
}

/// What a fine-tuning run trains on and what it trains.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DataConfig {
    /// The JSONL file ([`data`]).
    pub file: PathBuf,
    /// [`data::digest`] of the file when the run started: a resumed run refuses a changed file.
    pub digest: String,
    /// The checkpoint folder or `builtin:NAME` the run starts from.
    pub base: String,
    /// `all`, `lora:R[:ALPHA]` or `layers:A-B` ([`crate::rl::Trainable`]).
    pub trainable: String,
    pub options: data::DataOptions,
}

/// Steps of the `tiny-2.2` run.
const TINY22_STEPS: i64 = 6000;

/// The training recipes (name, what it is): `dllm train --recipe`.
pub const RECIPES: &[(&str, &str)] = &[
    ("tiny", "the embedded model: tiny shape (1.7M parameters), M2T + T2T + MTF, 4,000 steps of 128 sequences"),
    ("m2t", "the control: as tiny, but M2T only (no T2T stream, no MTF)"),
    ("tiny-2.2", "the embedded LLaDA2.2 model: tiny-2.2 shape (block routing, DELETE / SPLIT), M2T + Levenshtein T2T + MTF, all eight tasks"),
    ("smoke", "a test run: micro shape, 300 steps of 32 sequences, copy and reverse"),
    ("smoke-2.2", "a test run: micro-2.2 shape, 300 steps of 32 sequences, copy and dedup, Levenshtein T2T"),
    ("finetune", "fine-tuning on --data: 300 steps of 32 examples, lr 1e-3, M2T + T2T + MTF"),
];

impl TrainConfig {
    /// The config of a named training recipe ([`RECIPES`]).
    pub fn recipe(name: &str) -> Result<TrainConfig> {
        let base = TrainConfig {
            recipe: name.to_string(),
            model: "tiny".into(),
            steps: 4000,
            batch: 128,
            lr: 2e-3,
            warmup: 100,
            lr_floor: 0.1,
            weight_decay: 0.1,
            clip: 1.0,
            t2t: true,
            mtf: true,
            mtf_from: 0.2,
            mtf_prob: 0.5,
            balance_rate: 1e-3,
            checkpoint_every: 200,
            seed: 1,
            task_mix: vec![Task::Copy, Task::Reverse, Task::Sort, Task::Add, Task::Add, Task::Order],
            block: BLOCK_LENGTH,
            data: None,
        };
        match name {
            "tiny" => Ok(base),
            "tiny-2.2" => Ok(TrainConfig {
                model: "tiny-2.2".into(),
                steps: TINY22_STEPS,
                task_mix: vec![
                    Task::Copy, Task::Reverse, Task::Sort, Task::Add, Task::Add, Task::Add, Task::Order, Task::Order,
                    Task::Dedup, Task::Dedup, Task::Expand, Task::Rle, Task::Rle,
                ],
                ..base
            }),
            "m2t" => Ok(TrainConfig { t2t: false, mtf: false, ..base }),
            "smoke" => Ok(TrainConfig {
                model: "micro".into(),
                steps: 300,
                batch: 32,
                lr: 3e-3,
                warmup: 20,
                mtf_from: 0.5,
                checkpoint_every: 100,
                task_mix: vec![Task::Copy, Task::Reverse],
                ..base
            }),
            // The smoke run on the LLaDA2.2 shape, with a length task.
            "smoke-2.2" => Ok(TrainConfig {
                recipe: name.into(),
                model: "micro-2.2".into(),
                task_mix: vec![Task::Copy, Task::Dedup],
                ..TrainConfig::recipe("smoke")?
            }),
            // The data and the base come from `dllm train --data` ([`TrainConfig::data`]).
            "finetune" => Ok(TrainConfig { steps: 300, batch: 32, lr: 1e-3, warmup: 20, mtf_from: 0.5, checkpoint_every: 100, task_mix: Vec::new(), ..base }),
            _ => {
                let names: Vec<&str> = RECIPES.iter().map(|p| p.0).collect();
                Err(Error::invalid("training recipe", name, format!("known recipes: {}", names.join(", "))))
            }
        }
    }
}

/// What one optimiser step did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepMetrics {
    /// Steps completed after this one.
    pub step: i64,
    pub steps: i64,
    pub loss: f64,
    pub m2t_loss: f64,
    /// CE on visible response tokens (reported for the M2T-only control too, where it is not trained).
    pub t2t_loss: f64,
    pub grad_norm: f64,
    pub lr: f64,
    pub mtf: bool,
    /// Canvas tokens in the batch.
    pub tokens: i64,
    pub seconds: f64,
    /// Time split: building the noised batch, forwards (draft and graded), backward, optimiser update.
    pub split: [f64; 4],
    /// The loss was not finite: no update was made.
    pub skipped: bool,
    /// (M2T, T2T) losses on the held-out examples of a fine-tuning run, at checkpoint steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_out: Option<(f64, f64)>,
}

/// A model being trained, its optimiser and where the run stands.
pub struct Trainer {
    pub cfg: TrainConfig,
    pub model: Model,
    pub tokenizer: Tokenizer,
    /// Files written beside the weights: tokenizer.json, and a fine-tuned checkpoint's chat template.
    files: Vec<(String, Vec<u8>)>,
    opt: AdamW,
    pub step: i64,
    corrupt: Vec<i64>,
    /// (DELETE, SPLIT) of a LLaDA2.2 model: Levenshtein T2T.
    edits: Option<(i64, i64)>,
    /// The examples of a fine-tuning run ([`TrainConfig::data`]).
    pub data: Option<data::Dataset>,
    trainable: Trainable,
}

/// A [`Trainer`] without its model: what a session keeps between `train` commands while the model stays
/// resident (and decodes) in between ([`Trainer::into_parts`], [`Trainer::from_parts`]).
pub struct TrainerState {
    cfg: TrainConfig,
    tokenizer: Tokenizer,
    files: Vec<(String, Vec<u8>)>,
    opt: AdamW,
    step: i64,
    corrupt: Vec<i64>,
    edits: Option<(i64, i64)>,
    data: Option<data::Dataset>,
    trainable: Trainable,
}

impl TrainerState {
    pub fn cfg(&self) -> &TrainConfig {
        &self.cfg
    }

    pub fn step(&self) -> i64 {
        self.step
    }

    pub fn data(&self) -> Option<&data::Dataset> {
        self.data.as_ref()
    }

    pub fn trainable_parameters(&self) -> i64 {
        self.opt.num_parameters()
    }

    /// The learning rate, weight decay and batch of the next steps (the optimiser's moments stay).
    pub fn set_rates(&mut self, lr: f64, weight_decay: f64, batch: usize) {
        (self.cfg.lr, self.cfg.weight_decay, self.cfg.batch) = (lr, weight_decay, batch);
        self.opt.weight_decay = weight_decay;
    }
}

/// Adapters of a LoRA run, beside the merged weights: `lora/adapter.safetensors` and `lora/adapter.json`
/// ([`crate::lora::write_adapters`]).
pub const ADAPTER_DIR: &str = "lora";

impl Trainer {
    /// A fresh run: the model shape's random initialisation from the seed, or the base checkpoint of a
    /// fine-tuning run.
    pub fn new(cfg: TrainConfig) -> Result<Trainer> {
        match cfg.data.clone() {
            None => {
                let config = crate::shapes::shape(&cfg.model)?;
                let model = crate::shapes::random_model(&config, cfg.seed, Device::Cpu, DType::F32)?;
                Trainer::with_model(cfg, model, 0)
            }
            Some(d) => {
                let base = crate::load(Path::new(&d.base), Device::Cpu, Some(DType::F32))?;
                Trainer::fine_tune(cfg, base, 0)
            }
        }
    }

    /// A task-suite run on `model` (the tokenizer of its preset shape).
    fn with_model(cfg: TrainConfig, model: Model, step: i64) -> Result<Trainer> {
        let config = model.config().clone();
        let tokenizer_json = serde_json::to_string(&crate::shapes::tokenizer_spec_for(&config).to_json()).expect("json");
        let tokenizer = Tokenizer::from_bytes(tokenizer_json.as_bytes(), Path::new("tokenizer.json"), &config)?;
        let corrupt = corruption_ids(&tokenizer)?;
        let opt = AdamW::new(model.var_store(), (0.9, 0.95), cfg.weight_decay);
        let edits = config.delete_token_id.zip(config.split_token_id);
        let files = vec![("tokenizer.json".to_string(), tokenizer_json.into_bytes())];
        Ok(Trainer { cfg, model, tokenizer, files, opt, step, corrupt, edits, data: None, trainable: Trainable::All })
    }

    /// A fine-tuning run on `loaded` (its tokenizer and chat template): reads the data, selects and unfreezes
    /// the trainable parameters (attaching LoRA adapters for `lora:R`).
    fn fine_tune(cfg: TrainConfig, loaded: crate::Loaded, step: i64) -> Result<Trainer> {
        let crate::Loaded { model, tokenizer, dir, .. } = loaded;
        Trainer::fine_tune_on(cfg, model, tokenizer, &dir, step).map_err(|(e, _)| e)
    }

    /// [`Trainer::fine_tune`] that gives `model` back, unchanged, when it fails (a session keeps its model).
    #[allow(clippy::result_large_err)]
    fn fine_tune_on(cfg: TrainConfig, mut model: Model, tokenizer: Tokenizer, dir: &Path, step: i64) -> std::result::Result<Trainer, (Error, Model)> {
        let prepared = (|| -> Result<_> {
            let d = cfg.data.clone().ok_or_else(|| Error::invalid("training run", &cfg.recipe, "has no data"))?;
            let trainable = Trainable::parse(&d.trainable)?;
            let mut options = d.options;
            if options.max_positions == 0 {
                options.max_positions = model.config().max_position_embeddings as usize;
            }
            let dataset = data::load(&d.file, &tokenizer, options)?;
            if dataset.digest != d.digest {
                return Err(Error::invalid(
                    "--data",
                    d.file.display().to_string(),
                    "the file changed since the run started (its digest differs): use --fresh to start over on it",
                ));
            }
            let mut files = vec![("tokenizer.json".to_string(), tokenizer.to_json_text()?.into_bytes())];
            for name in ["chat_template.jinja", "tokenizer_config.json"] {
                let path = dir.join(name);
                if path.is_file() {
                    files.push((name.to_string(), std::fs::read(&path).map_err(|e| Error::io(&path, e))?));
                }
            }
            Ok((trainable, dataset, files))
        })();
        let (trainable, dataset, files) = match prepared {
            Ok(p) => p,
            Err(e) => return Err((e, model)),
        };
        // The one step that changes the model: attaching adapters (it fails before attaching, or not at all).
        let params = match crate::trainable::select(&mut model, &trainable) {
            Ok(p) => p,
            Err(e) => return Err((e, model)),
        };
        if let Err(e) = crate::trainable::check_training_memory(&model, &params) {
            return Err((e, model));
        }
        crate::trainable::freeze_except(&model, &params);
        let opt = AdamW::over(params, (0.9, 0.95), cfg.weight_decay);
        let mut corrupt: Vec<i64> = dataset.train.iter().flat_map(|e| e.response.iter().copied()).collect();
        corrupt.push(tokenizer.eos_id);
        corrupt.sort_unstable();
        corrupt.dedup();
        let edits = model.config().delete_token_id.zip(model.config().split_token_id);
        Ok(Trainer { cfg, model, tokenizer, files, opt, step, corrupt, edits, data: Some(dataset), trainable })
    }

    /// The latest complete checkpoint under `out/train`, if any.
    pub fn resume(out: &Path) -> Result<Option<Trainer>> {
        let Some(dir) = latest_checkpoint(out)? else { return Ok(None) };
        let state: serde_json::Value = read_json(&dir.join("state.json"))?;
        let cfg: TrainConfig = serde_json::from_value(state["config"].clone())
            .map_err(|e| Error::invalid("training checkpoint", dir.display().to_string(), format!("state.json: {e}")))?;
        let step = state["step"].as_i64().ok_or_else(|| Error::invalid("training checkpoint", dir.display().to_string(), "state.json has no step"))?;
        let mut t = match &cfg.data {
            None => Trainer::with_model(cfg, crate::load(&dir, Device::Cpu, Some(DType::F32))?.model, step)?,
            Some(d) if d.trainable.starts_with("lora") => {
                // The base never changes under LoRA: the base itself, then the saved adapters.
                let base = crate::load(Path::new(&d.base), Device::Cpu, Some(DType::F32))?;
                let t = Trainer::fine_tune(cfg, base, step)?;
                let path = dir.join(ADAPTER_DIR).join("adapter.safetensors");
                let saved = Tensor::read_safetensors(&path).map_err(|e| Error::CorruptFile { file: path.clone(), message: e.to_string() })?;
                let saved: std::collections::HashMap<String, Tensor> = saved.into_iter().collect();
                tch::no_grad(|| -> Result<()> {
                    for (name, mut t) in t.model.lora().expect("attached").variables() {
                        let v = saved.get(&name).ok_or_else(|| Error::MissingTensor { file: path.clone(), tensor: name.clone(), shape: Some(t.size()) })?;
                        t.f_copy_(v)?;
                    }
                    Ok(())
                })?;
                t
            }
            Some(_) => Trainer::fine_tune(cfg, crate::load(&dir, Device::Cpu, Some(DType::F32))?, step)?,
        };
        let path = dir.join("optimizer.safetensors");
        let tensors = Tensor::read_safetensors(&path).map_err(|e| Error::CorruptFile { file: path.clone(), message: e.to_string() })?;
        t.opt.load_state(tensors.into_iter().collect(), step)?;
        Ok(Some(t))
    }

    /// A fine-tuning run on a resident model (`cfg.data` names the file; the base is `model` as it is), with
    /// the tokenizer and chat template of the checkpoint folder `dir` it came from.
    /// On failure the model comes back unchanged with the error.
    #[allow(clippy::result_large_err)]
    pub fn fine_tune_resident(cfg: TrainConfig, model: Model, tokenizer: Tokenizer, dir: &Path) -> std::result::Result<Trainer, (Error, Model)> {
        Trainer::fine_tune_on(cfg, model, tokenizer, dir, 0)
    }

    /// The model and the rest, to keep apart between steps.
    pub fn into_parts(self) -> (Model, TrainerState) {
        let Trainer { cfg, model, tokenizer, files, opt, step, corrupt, edits, data, trainable } = self;
        (model, TrainerState { cfg, tokenizer, files, opt, step, corrupt, edits, data, trainable })
    }

    /// A trainer again from [`Trainer::into_parts`] (the same model, or one whose trainable tensors are those
    /// the optimiser holds).
    pub fn from_parts(state: TrainerState, model: Model) -> Trainer {
        let TrainerState { cfg, tokenizer, files, opt, step, corrupt, edits, data, trainable } = state;
        Trainer { cfg, model, tokenizer, files, opt, step, corrupt, edits, data, trainable }
    }

    /// Number of parameters the run trains.
    pub fn trainable_parameters(&self) -> i64 {
        self.opt.num_parameters()
    }

    pub fn is_done(&self) -> bool {
        self.step >= self.cfg.steps
    }

    /// The generator of step `step`: examples and noise are a function of (seed, step) only.
    fn step_rng(&self) -> Rng {
        Rng::new(self.cfg.seed.wrapping_mul(0xA24B_AED4_963E_E407) ^ (self.step as u64).wrapping_mul(0x9FB2_1C65_1E98_DF25))
    }

    /// The noised batch of the current step, in groups of similar layout.
    pub fn batch(&self, rng: &mut Rng) -> Result<Vec<Batch>> {
        let mut rows = Vec::with_capacity(self.cfg.batch);
        if let Some(d) = &self.data {
            for _ in 0..self.cfg.batch {
                rows.push(data::canvas(&d.train[below(rng, d.train.len())], self.tokenizer.eos_id, self.cfg.block));
            }
            return self.noised(&rows, rng);
        }
        for _ in 0..self.cfg.batch {
            let task = self.cfg.task_mix[below(rng, self.cfg.task_mix.len())];
            let ex = task.generate(rng);
            let answer = &ex.answers[below(rng, ex.answers.len())];
            rows.push(canvas(&self.tokenizer, &ex, answer, self.cfg.block)?);
        }
        self.noised(&rows, rng)
    }

    /// `rows` noised in groups of up to 32 of similar layout.
    fn noised(&self, rows: &[(Vec<i64>, usize)], rng: &mut Rng) -> Result<Vec<Batch>> {
        let groups = rows.len().div_ceil(32);
        noised_groups(rows, groups, &self.tokenizer, &self.corrupt, NoiseConfig { t2t: self.cfg.t2t, block: self.cfg.block, edits: self.edits.filter(|_| self.cfg.t2t) }, rng)
    }

    /// One optimiser step.
    pub fn train_step(&mut self) -> Result<StepMetrics> {
        let start = Instant::now();
        let mut rng = self.step_rng();
        let groups = self.batch(&mut rng)?;
        let mut split = [start.elapsed().as_secs_f64(), 0.0, 0.0, 0.0];
        let mtf = self.cfg.mtf && self.step as f64 >= self.cfg.mtf_from * self.cfg.steps as f64;
        let (m2t, t2t, loads, tokens) = self.losses(&groups, mtf, &mut rng)?;
        let loss = if self.cfg.t2t { &m2t + &t2t } else { m2t.shallow_clone() };
        let loss_value = loss.double_value(&[]);
        split[1] = start.elapsed().as_secs_f64() - split[0];
        let lr = learning_rate(self.step, self.cfg.steps, self.cfg.warmup, self.cfg.lr, self.cfg.lr_floor);
        let mut metrics = StepMetrics {
            step: self.step + 1,
            steps: self.cfg.steps,
            loss: loss_value,
            m2t_loss: m2t.double_value(&[]),
            t2t_loss: t2t.double_value(&[]),
            grad_norm: 0.0,
            lr,
            mtf,
            tokens,
            seconds: 0.0,
            split,
            skipped: !loss_value.is_finite(),
            held_out: None,
        };
        if !metrics.skipped {
            self.opt.zero_grad();
            loss.backward();
            metrics.split[2] = start.elapsed().as_secs_f64() - split[0] - split[1];
            metrics.grad_norm = self.opt.clip_grad_norm(self.cfg.clip);
            self.opt.update(lr);
            self.opt.zero_grad();
            // The expert bias is part of the base: balanced only when the whole model trains.
            if self.cfg.balance_rate > 0.0 && self.trainable == Trainable::All {
                self.model.balance_experts(&loads, self.cfg.balance_rate);
            }
        }
        self.step += 1;
        metrics.seconds = start.elapsed().as_secs_f64();
        metrics.split[3] = (metrics.seconds - split[0] - split[1] - metrics.split[2]).max(0.0);
        Ok(metrics)
    }

    /// The M2T and T2T losses (means over masked and visible response positions, with gradients) of `groups`
    /// after the MTF round when `mtf`, the per-layer expert loads and the canvas tokens.
    fn losses(&self, groups: &[Batch], mtf: bool, rng: &mut Rng) -> Result<(Tensor, Tensor, Vec<Vec<i64>>, i64)> {
        let zero = || Tensor::zeros([], (Kind::Float, Device::Cpu));
        let (mut m_sum, mut m_n, mut v_sum, mut v_n) = (zero(), zero(), zero(), zero());
        let (mut loads, mut tokens) = (Vec::new(), 0);
        for batch in groups {
            let (masked, visible, ids, targets) = self.multi_turn(batch, mtf, rng)?;
            let input = &batch.input;
            let mut group_loads = Vec::new();
            let logits = self.model.forward_masked(&ids, &input.positions, &input.allowed, Some(&mut group_loads))?.narrow(1, 0, input.noisy_len);
            let logp = logits.log_softmax(-1, Kind::Float).gather(-1, &targets.unsqueeze(-1), false).squeeze_dim(-1);
            let (mf, vf) = (masked.to_kind(Kind::Float), visible.to_kind(Kind::Float));
            m_sum = m_sum - (&logp * &mf).sum(Kind::Float);
            v_sum = v_sum - (&logp * &vf).sum(Kind::Float);
            m_n = m_n + mf.sum(Kind::Float);
            v_n = v_n + vf.sum(Kind::Float);
            add_loads(&mut loads, group_loads);
            tokens += batch.tokens;
        }
        Ok((m_sum / m_n.clamp_min(1.0), v_sum / v_n.clamp_min(1.0), loads, tokens))
    }

    /// The (M2T, T2T) losses on the held-out examples of a fine-tuning run (up to 256 of them, under fixed
    /// noise, without MTF), or `None` without held-out data. The same noise at every call, so the values of
    /// two calls compare.
    pub fn held_out_loss(&self) -> Result<Option<(f64, f64)>> {
        let Some(d) = self.data.as_ref().filter(|d| !d.held_out.is_empty()) else { return Ok(None) };
        let rows: Vec<(Vec<i64>, usize)> = d.held_out.iter().take(256).map(|e| data::canvas(e, self.tokenizer.eos_id, self.cfg.block)).collect();
        let mut rng = Rng::new(self.cfg.seed ^ 0x4E1D_0075);
        let groups = self.noised(&rows, &mut rng)?;
        let (m2t, t2t, _, _) = tch::no_grad(|| self.losses(&groups, false, &mut rng))?;
        Ok(Some((m2t.double_value(&[]), t2t.double_value(&[]))))
    }

    /// Exact-match accuracy of greedy decodes of the first `n` held-out prompts of a fine-tuning run (the
    /// answer as written against the decoded text up to EOS), under the model's usual preset (`llada2.2` on a
    /// model with edit tokens, `Q` otherwise) with the run's block length; `None` without held-out data.
    pub fn held_out_accuracy(&self, n: usize) -> Result<Option<(f64, usize)>> {
        let Some(d) = self.data.as_ref().filter(|d| !d.held_out.is_empty()) else { return Ok(None) };
        let examples: Vec<&data::Example> = d.held_out.iter().take(n).collect();
        Ok(Some((data::accuracy(&self.model, &self.tokenizer, &examples, self.cfg.block)?, examples.len())))
    }

    /// Multi-turn Forward on one group: for a `mtf_prob` share of the rows, a no-grad draft forward, and masked
    /// positions whose draft confidence exceeds the row's u ~ U[0.3, 0.9] take the draft's argmax. Returns the
    /// masked and visible positions, the input ids and the targets after it (unchanged when `on` is false). On
    /// a LLaDA2.2 model the round is a Levenshtein step ([`Trainer::edit_round`]).
    fn multi_turn(&self, batch: &Batch, on: bool, rng: &mut Rng) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
        let input = &batch.input;
        if !on {
            return Ok((batch.masked.shallow_clone(), batch.visible.shallow_clone(), input.ids.shallow_clone(), batch.targets.shallow_clone()));
        }
        let (b, nl) = (input.ids.size()[0], input.noisy_len);
        let draft = tch::no_grad(|| self.model.forward_masked(&input.ids, &input.positions, &input.allowed, None))?.narrow(1, 0, nl);
        let (conf, arg) = draft.softmax(-1, Kind::Float).max_dim(-1, false);
        let rows: Vec<bool> = (0..b).map(|_| rng.uniform() < self.cfg.mtf_prob).collect();
        let u: Vec<f32> = (0..b).map(|_| (0.3 + 0.6 * rng.uniform()) as f32).collect();
        if let Some(edits) = self.edits.filter(|_| self.cfg.t2t) {
            return self.edit_round(batch, &conf, &arg, &rows, &u, edits);
        }
        let fill = batch
            .masked
            .logical_and(&conf.gt_tensor(&Tensor::from_slice(&u).view([b, 1])))
            .logical_and(&Tensor::from_slice(&rows).view([b, 1]));
        let noisy = arg.where_self(&fill, &input.ids.narrow(1, 0, nl));
        let ids = Tensor::cat(&[noisy, input.ids.narrow(1, nl, input.ids.size()[1] - nl)], 1);
        Ok((batch.masked.logical_and(&fill.logical_not()), batch.visible.logical_or(&fill), ids, batch.targets.shallow_clone()))
    }

    /// The Levenshtein MTF round: in each chosen row's response blocks, masks whose draft confidence exceeds
    /// the row's u and every visible slot whose argmax differs from it take the argmax (DELETE and SPLIT
    /// included), the writes are applied as a decoding step applies them ([`apply_edits`]: deletions shift the
    /// block left, SPLIT opens a mask, the tail is padded with masks or cut), and the edited draft is labelled
    /// again against the clean block: the report's later rounds, on the model's own edits.
    fn edit_round(&self, batch: &Batch, conf: &Tensor, arg: &Tensor, rows: &[bool], u: &[f32], (delete, split): (i64, i64)) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
        let input = &batch.input;
        let (b, nl, total) = (rows.len(), input.noisy_len as usize, input.ids.size()[1] as usize);
        let start = input.noisy_start as usize;
        let flat = |t: &Tensor| -> Result<Vec<i64>> { Ok(Vec::<i64>::try_from(t.flatten(0, -1))?) };
        let mut ids = flat(&input.ids)?;
        let (arg, conf) = (flat(arg)?, Vec::<f32>::try_from(conf.flatten(0, -1))?);
        let mut targets = flat(&batch.targets)?;
        let mask = self.tokenizer.mask_id;
        let et = EditTokens { mask, delete, split };
        for r in (0..b).filter(|&r| rows[r]) {
            let (clean, p) = (&batch.clean[r], batch.prompts[r]);
            let row = &mut ids[r * total..r * total + nl];
            for (s0, be) in suffixes(p, clean.len(), self.cfg.block) {
                let (a, z) = (s0 - start, be - start);
                let old = row[a..z].to_vec();
                let new: Vec<i64> = (a..z)
                    .map(|i| {
                        let (g, c) = (arg[r * nl + i], conf[r * nl + i]);
                        let write = if row[i] == mask { c > u[r] } else { g != row[i] };
                        if write { g } else { row[i] }
                    })
                    .collect();
                let applied = apply_edits(&new, &old, &vec![true; old.len()], 0, et);
                row[a..z].copy_from_slice(&applied.tokens);
            }
            let mut canvas = clean.clone();
            canvas[start..].copy_from_slice(&row[..nl]);
            let t = edit_targets(&canvas, clean, p, self.cfg.block, mask, (delete, split));
            targets[r * nl..(r + 1) * nl].copy_from_slice(&t[start..]);
        }
        let ids = Tensor::from_slice(&ids).view([b as i64, total as i64]);
        let noisy = ids.narrow(1, 0, nl as i64);
        let response = batch.masked.logical_or(&batch.visible);
        let masked = noisy.eq(mask).logical_and(&response);
        let visible = noisy.ne(mask).logical_and(&response);
        Ok((masked, visible, ids, Tensor::from_slice(&targets).view([b as i64, nl as i64])))
    }

    /// Writes the model (tokenizer.json, model.safetensors in the official per-expert layout, then config.json)
    /// to `dir`, each file atomically.
    ///
    /// A LoRA run writes the merged weights (a checkpoint that loads like any other) and the adapters alone
    /// in `lora/` ([`ADAPTER_DIR`]: `adapter.safetensors`, and `adapter.json` with the rank, alpha and base).
    pub fn save_model(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        for (name, bytes) in &self.files {
            checkpoint::write_atomic(&dir.join(name), bytes)?;
        }
        if let (Some(ad), Some(d)) = (self.model.lora(), &self.cfg.data) {
            crate::lora::write_adapters(ad, dir, serde_json::json!({ "base": d.base, "trainable": d.trainable }))?;
        }
        crate::shapes::write_checkpoint(&self.model, dir, SaveOptions { dtype: DType::F32, fused_experts: false, shard_bytes: None })
    }

    /// A resumable checkpoint `out/train/step-NNNNNN` (model, optimiser state, state.json), written into a
    /// temporary folder and renamed, so it is complete or absent; older ones are removed afterwards. The model
    /// files in `out` itself are refreshed too, so `out` is a loadable checkpoint during the run.
    ///
    /// The first time (no `out/config.json` yet) the whole of `out` is built beside it and put in place at once
    /// (`checkpoint::install_dir`): `out` is absent, as it was, or a complete checkpoint, whatever kills the
    /// run. Later ones change only the weights in `out` (config.json and tokenizer.json do not change during a
    /// run), and each file is replaced atomically.
    pub fn checkpoint(&self, out: &Path, history: &[StepMetrics]) -> Result<PathBuf> {
        let step = format!("step-{:06}", self.step);
        if out.join("config.json").is_file() {
            self.write_step(&out.join("train"), &step, history)?;
            self.save_model(out)?;
        } else {
            let tmp = checkpoint::temp_sibling(out)?;
            let built = self.write_step(&tmp.join("train"), &step, history).and_then(|_| self.save_model(&tmp));
            if let Err(e) = built.and_then(|_| checkpoint::install_dir(&tmp, out)) {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
        }
        Ok(out.join("train").join(step))
    }

    /// Writes `train/STEP` through a temporary folder and a rename, then removes the older steps.
    fn write_step(&self, train: &Path, step: &str, history: &[StepMetrics]) -> Result<()> {
        let tmp = train.join(format!(".tmp-{step}"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        self.save_model(&tmp)?;
        let opt_path = tmp.join("optimizer.safetensors");
        Tensor::write_safetensors(&self.opt.state_tensors(), &opt_path).map_err(|e| Error::io(&opt_path, std::io::Error::other(e.to_string())))?;
        let state = serde_json::json!({ "step": self.step, "config": self.cfg, "history": history });
        checkpoint::write_atomic(&tmp.join("state.json"), serde_json::to_string_pretty(&state).expect("json").as_bytes())?;
        let done = train.join(step);
        if done.exists() {
            std::fs::remove_dir_all(&done).map_err(|e| Error::io(&done, e))?;
        }
        std::fs::rename(&tmp, &done).map_err(|e| Error::io(&done, e))?;
        for entry in std::fs::read_dir(train).map_err(|e| Error::io(train, e))?.flatten() {
            let p = entry.path();
            if p != done && entry.file_name().to_string_lossy().starts_with("step-") {
                let _ = std::fs::remove_dir_all(&p);
            }
        }
        Ok(())
    }
}

/// Refuses an `out` that holds anything a training run did not write: a run may replace the whole folder
/// (its first checkpoint) or remove `out/train` (`--fresh`), and must not take a person's files with it.
fn check_out(out: &Path) -> Result<()> {
    if !out.exists() || out.join("config.json").is_file() {
        return Ok(());
    }
    let not_ours = |e: &std::fs::DirEntry| {
        let n = e.file_name().to_string_lossy().into_owned();
        !(n.starts_with('.') || ["train", "model.safetensors", "tokenizer.json"].contains(&n.as_str()))
    };
    let entries = std::fs::read_dir(out).map_err(|e| Error::io(out, e))?;
    if let Some(e) = entries.flatten().find(not_ours) {
        return Err(Error::invalid(
            "--out",
            out.display().to_string(),
            format!("it exists and is not a training folder (it holds {:?}, and no config.json): nothing was written; use a new folder", e.file_name()),
        ));
    }
    Ok(())
}

/// Adds one forward's per-layer expert loads into `total`.
fn add_loads(total: &mut Vec<Vec<i64>>, loads: Vec<Vec<i64>>) {
    if total.is_empty() {
        *total = loads;
        return;
    }
    for (t, l) in total.iter_mut().zip(loads) {
        for (a, b) in t.iter_mut().zip(l) {
            *a += b;
        }
    }
}

/// The highest-numbered complete `step-N` folder under `out/train`.
pub fn latest_checkpoint(out: &Path) -> Result<Option<PathBuf>> {
    let train = out.join("train");
    if !train.is_dir() {
        return Ok(None);
    }
    let mut best: Option<(i64, PathBuf)> = None;
    for entry in std::fs::read_dir(&train).map_err(|e| Error::io(&train, e))?.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(n) = name.strip_prefix("step-").and_then(|n| n.parse::<i64>().ok()) {
            if entry.path().join("state.json").is_file() && best.as_ref().is_none_or(|b| n > b.0) {
                best = Some((n, entry.path()));
            }
        }
    }
    Ok(best.map(|b| b.1))
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::invalid("training checkpoint", path.display().to_string(), e.to_string()))
}

/// Trains `cfg` into `out` (resuming from `out/train` when a checkpoint is there and `fresh` is false),
/// calling `progress` after every step; `progress` returning false stops the run at once, as an interruption
/// would (work since the last checkpoint is not saved). Returns the per-step metrics of this invocation.
pub fn run(cfg: TrainConfig, out: &Path, fresh: bool, progress: impl FnMut(&Trainer, &StepMetrics) -> bool) -> Result<Vec<StepMetrics>> {
    let mut trainer = prepare(cfg, out, fresh)?;
    run_trainer(&mut trainer, out, progress)
}

/// The trainer [`run`] would train: resumed from `out/train` unless `fresh` (or nothing is there), else new.
/// Refuses an `out` that is not a training folder, and a checkpoint whose configuration differs from `cfg`.
pub fn prepare(cfg: TrainConfig, out: &Path, fresh: bool) -> Result<Trainer> {
    check_out(out)?;
    let resumed = if fresh { None } else { Trainer::resume(out)? };
    let trainer = match resumed {
        Some(t) => {
            if t.cfg != cfg {
                return Err(Error::invalid(
                    "training run",
                    out.display().to_string(),
                    format!("its checkpoint is from recipe `{}` with other settings; use another --out or --fresh", t.cfg.recipe),
                ));
            }
            t
        }
        None => {
            let train = out.join("train");
            if fresh && train.exists() {
                std::fs::remove_dir_all(&train).map_err(|e| Error::io(&train, e))?;
            }
            Trainer::new(cfg)?
        }
    };
    Ok(trainer)
}

/// Trains `trainer` to its last step (see [`run`]); it is left at the step it reached, as saved.
pub fn run_trainer(trainer: &mut Trainer, out: &Path, mut progress: impl FnMut(&Trainer, &StepMetrics) -> bool) -> Result<Vec<StepMetrics>> {
    let mut history = Vec::new();
    while !trainer.is_done() {
        let mut m = trainer.train_step()?;
        let at_checkpoint = trainer.step % trainer.cfg.checkpoint_every == 0 || trainer.is_done();
        if at_checkpoint {
            m.held_out = trainer.held_out_loss()?;
        }
        let go_on = progress(trainer, &m);
        history.push(m);
        if !go_on {
            return Ok(history);
        }
        if at_checkpoint {
            trainer.checkpoint(out, &history)?;
        }
    }
    if history.is_empty() {
        trainer.save_model(out)?; // a finished run resumed: its model again
    }
    Ok(history)
}
