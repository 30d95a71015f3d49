//! Several prompts decoded together (rollouts, evaluation): one batched forward per step, rows finishing
//! independently, each row's trajectory exactly the one it has decoded alone.
//!
//! Rows move in block lockstep: each step, the rows whose next forward is on the lowest current block take it
//! together; a row that finished that block early waits (its tokens do not change, and under block-causal
//! attention its logits depend on nothing but its own tokens, so waiting changes nothing but time). All rows
//! share one KV cache of the blocks every row has finished. Rows of different prompt lengths are fine: a prompt
//! is just tokens in its row's canvas. Shorter canvases are padded with EOS beyond their end, which no position
//! of that row's own canvas ever attends to (it lies in later blocks) and no other row sees.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tch::Tensor;

use super::settings::DecodeSettings;
use super::stepper::{Decoder, Denoiser, Next, StepReport};
use crate::error::{Error, Result};
use crate::model::{BlockMask, KvCache, MaskKind};

pub struct BatchDecoder {
    rows: Vec<Decoder>,
    cache: KvCache,
    committed: i64,
}

impl BatchDecoder {
    pub fn new(prompts: &[Vec<i64>], settings: DecodeSettings, mask_id: i64, eos_id: i64, model: &dyn Denoiser) -> Result<BatchDecoder> {
        if prompts.is_empty() {
            return Err(Error::invalid("batch", "[]", "needs at least one prompt"));
        }
        if settings.mbe_window > 0 {
            return Err(Error::invalid("mbe_window", settings.mbe_window, "multi-block editing is not available in batches yet"));
        }
        let b = settings.block_length.max(1);
        let longest = prompts.iter().map(|p| (p.len() as i64).saturating_add(settings.gen_length).saturating_add(b - 1) / b * b).max().unwrap_or(0);
        if longest <= model.max_positions() {
            model.check_decode_memory(prompts.len() as i64, longest, b)?;
        }
        let rows = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                Decoder::new(p, settings.clone(), mask_id, eos_id, model).map_err(|e| Error::invalid("batch row", i, e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(BatchDecoder { rows, cache: KvCache::new(), committed: 0 })
    }

    /// Like [`BatchDecoder::new`], with row i sampling from its own generator seeded `seeds[i]` (rollouts of one
    /// prompt that must differ); each row decodes exactly as alone with `settings.seed = seeds[i]`.
    pub fn with_seeds(prompts: &[Vec<i64>], seeds: &[u64], settings: DecodeSettings, mask_id: i64, eos_id: i64, model: &dyn Denoiser) -> Result<BatchDecoder> {
        if seeds.len() != prompts.len() {
            return Err(Error::invalid("seeds", seeds.len(), format!("needs one seed per prompt ({})", prompts.len())));
        }
        let mut b = BatchDecoder::new(prompts, settings.clone(), mask_id, eos_id, model)?;
        for (row, (p, &seed)) in b.rows.iter_mut().zip(prompts.iter().zip(seeds)) {
            let s = DecodeSettings { seed, ..settings.clone() };
            *row = Decoder::new(p, s, mask_id, eos_id, model)?;
        }
        Ok(b)
    }

    pub fn rows(&self) -> &[Decoder] {
        &self.rows
    }

    pub fn is_finished(&self) -> bool {
        self.rows.iter().all(Decoder::is_finished)
    }

    /// One batched forward for the rows on the lowest current block; returns (row, report) for each of them.
    /// Empty once every row has finished.
    pub fn step(&mut self, model: &dyn Denoiser) -> Result<Vec<(usize, StepReport)>> {
        let settings = self.rows[0].settings.clone();
        settings.validate()?;
        {
            let mut plans = Vec::new();
            for (i, row) in self.rows.iter_mut().enumerate() {
                match row.plan()? {
                    None => {}
                    Some(Next::Finish { before, cursor, ended }) => row.finish(before, cursor, ended),
                    Some(Next::Forward(plan)) => plans.push((i, plan)),
                }
            }
            if plans.is_empty() {
                return Ok(Vec::new());
            }
            let be = plans.iter().map(|(_, p)| p.be).min().expect("non-empty");
            let active: Vec<_> = plans.into_iter().filter(|(_, p)| p.be == be).collect();
            let b = settings.block_length;
            let ws = be - b;
            let hf = settings.attention == MaskKind::HfAdditive;
            if hf && self.committed > 0 {
                self.cache.truncate(0);
                self.committed = 0;
            }
            let start = self.committed;
            let commit = if hf { 0 } else { ws - start };
            let mut ids = Vec::with_capacity(self.rows.len() * (be - start) as usize);
            for row in &self.rows {
                let c = row.canvas();
                ids.extend((start..be).map(|pos| c.get(pos as usize).copied().unwrap_or(row.eos_id())));
            }
            let ids = Tensor::from_slice(&ids).view([self.rows.len() as i64, be - start]);
            let mask = BlockMask { block_length: b, kind: settings.attention, bidirectional_from: None };
            let tf = Instant::now();
            let (first, plan) = &active[0];
            let step = (self.rows[*first].cursor().forwards, plan.cursor.block);
            let logits = super::stepper::step_forward(model, &ids, (start, commit), &mut self.cache, mask, step);
            let logits = logits.inspect_err(|_| self.committed = self.cache.len())?;
            let forward_ms = tf.elapsed().as_secs_f64() * 1e3;
            self.committed = start + commit;
            let mut out = Vec::with_capacity(active.len());
            for (i, plan) in active {
                let report = self.rows[i].apply(plan, &logits.get(i as i64), forward_ms);
                out.push((i, report));
            }
            Ok(out)
        }
    }

    /// Steps until every row has finished; returns the number of batched forwards.
    pub fn run(&mut self, model: &dyn Denoiser) -> Result<i64> {
        self.run_until(model, None)
    }

    /// [`BatchDecoder::run`] that checks `interrupt` before every step and stops with
    /// [`Error::Interrupted`] when it is set (the rows stay as they are, between two steps).
    pub fn run_until(&mut self, model: &dyn Denoiser, interrupt: Option<&AtomicBool>) -> Result<i64> {
        let mut forwards = 0;
        loop {
            if interrupt.is_some_and(|f| f.load(Ordering::SeqCst)) {
                return Err(Error::Interrupted(format!("after {forwards} batched steps of {} rows", self.rows.len())));
            }
            if self.step(model)?.is_empty() {
                return Ok(forwards);
            }
            forwards += 1;
        }
    }
}
