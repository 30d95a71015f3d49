//! The decoder as a stepper: `step()` runs exactly one forward pass of the official LLaDA2.1 loop and returns
//! a typed report of what it unmasked (Gamma_t) and edited (Delta_t). A full decode is a loop over `step()`.
//!
//! One block, per iteration (shared/reference/llada2.md section 2):
//! 1. snapshot the block; 2. no mask left -> post_steps += 1, and past `max_post_steps` the block ends BEFORE
//! the forward; 3. prompt positions are protected; 4. forward, candidates v with probability p;
//! 5. Gamma_t: masks with p > tau_mask, or the most confident `fallback_count` masks when fewer qualify;
//! 6. Delta_t: positions that were not masks at the step start and are not prompt, where v != old and
//! p > tau_edit; 7. both written at once (so a token unmasked now is editable from the next step);
//! 8. no mask at the step start and no edit -> fixed point, the block ends.
//! After a block: with eos_early_stop, stop once the generated part has no mask and holds an EOS.
//!
//! Departures, each deliberate:
//! 1. With editing off, a block ends as soon as it has no mask (no confirmation forward that could not change
//!    anything), as LLaDA2.0's loop does.
//! 2. Fallback ties break towards the lower position (torch.topk leaves tie order unspecified).
//! 3. The forward covers only the current block after a cache of finished blocks (SGLang's schedule); the
//!    first forward of a block carries the just-finished blocks along and commits them. Exact, because the
//!    mask is block-causal (tested against a no-cache reference). Under the HF-additive mask there is no cache.
//! 4. Multi-block editing (`mbe_window` W > 0) is this project's design (docs/decoding.md): the forward covers
//!    the current block and the W finished blocks before it as one bidirectional window, and Delta may revise
//!    generated positions anywhere in that window. Blocks enter the cache only once they leave the window.
//!
//! With `edit_ops levenshtein` (LLaDA2.2) the block rules are those of `levenshtein.rs` instead; the forward,
//! the cache, the journal and rewind are shared.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::levenshtein::{LevStep, LevUndo, LoopMemory};
use super::sampler::{select, Rng};
use super::settings::{DecodeSettings, EditOps, EditTiming};
use crate::error::{Error, Result};
use crate::model::{BlockMask, KvCache, MaskKind, Model};

/// What the decoder needs from a model: logits for a span after a cache. `Model` implements it; tests
/// implement it with scripted logits.
pub trait Denoiser {
    fn vocab_size(&self) -> i64;
    fn max_positions(&self) -> i64;
    /// Logits `[B, L - commit, V]` (f32) for `ids` `[B, L]` placed at canvas positions `start..start+L`,
    /// where `start` positions are already in `cache`; the first `commit` positions join the cache.
    fn forward(&self, ids: &Tensor, start: i64, cache: &mut KvCache, commit: i64, mask: BlockMask) -> Result<Tensor>;
    /// The (DELETE, SPLIT) token ids of a model with Levenshtein editing (LLaDA2.2); `None` before 2.2.
    fn edit_tokens(&self) -> Option<(i64, i64)> {
        None
    }
    /// The routing block of a block-routed MoE (LLaDA2.2 `block_size`): decoding blocks must be multiples of it.
    fn routing_block(&self) -> Option<i64> {
        None
    }
    /// Refuses, before anything is allocated, a decode of `rows` canvases of `len` positions in blocks of
    /// `block` that cannot fit in memory (the KV cache of whole canvases and a block's forward against them).
    fn check_decode_memory(&self, _rows: i64, _len: i64, _block: i64) -> Result<()> {
        Ok(())
    }
}

impl Denoiser for Model {
    fn vocab_size(&self) -> i64 {
        self.config().vocab_size
    }

    fn max_positions(&self) -> i64 {
        self.config().max_position_embeddings
    }

    fn forward(&self, ids: &Tensor, start: i64, cache: &mut KvCache, commit: i64, mask: BlockMask) -> Result<Tensor> {
        debug_assert_eq!(start, cache.len(), "the decoder and the cache disagree on what is cached");
        Model::forward(self, ids, cache, commit, mask)
    }

    fn edit_tokens(&self) -> Option<(i64, i64)> {
        self.config().delete_token_id.zip(self.config().split_token_id)
    }

    fn routing_block(&self) -> Option<i64> {
        self.config().block_routing().map(|(_, block_size)| block_size)
    }

    fn check_decode_memory(&self, rows: i64, len: i64, block: i64) -> Result<()> {
        let elem = self.dtype().kind().elt_size_in_bytes() as i64;
        let host = (rows.max(0) as u64).saturating_mul(len.max(0) as u64).saturating_mul(32); // canvases, journals
        let needed = crate::memory::cache_bytes(self.config(), rows, len, elem)
            .saturating_add(crate::memory::forward_bytes(self.config(), rows, block, len, elem, false))
            .saturating_add(host);
        self.check_memory(
            || format!("decoding {rows} canvas{} of {len} positions", if rows == 1 { "" } else { "es" }),
            needed,
            "ask for fewer rows (batch, group, eval size) or a shorter gen_length",
        )
    }
}

/// What a write put at a slot: a token, or one of LLaDA2.2's edit operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteKind {
    #[default]
    Token,
    /// DELETE: the slot is removed and the block shifts left.
    Delete,
    /// SPLIT (the report's INSERT): a new mask opens before the slot's token.
    Split,
}

impl WriteKind {
    pub fn is_token(&self) -> bool {
        *self == WriteKind::Token
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unmask {
    pub pos: i64,
    pub token: i64,
    pub p: f32,
    #[serde(default, skip_serializing_if = "WriteKind::is_token")]
    pub kind: WriteKind,
    /// The token's text, filled by [`StepReport::annotate`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Edit {
    pub pos: i64,
    pub old: i64,
    pub new: i64,
    pub p: f32,
    #[serde(default, skip_serializing_if = "WriteKind::is_token")]
    pub kind: WriteKind,
    /// Texts of the old and new tokens, filled by [`StepReport::annotate`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub old_text: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub new_text: String,
}

impl StepReport {
    /// Fills the token texts of Gamma and Delta (the engine's decoder works on ids only).
    pub fn annotate(&mut self, tok: &crate::tokenizer::Tokenizer) {
        for u in &mut self.gamma {
            u.text = tok.token_text(u.token);
        }
        for e in &mut self.delta {
            e.old_text = tok.token_text(e.old);
            e.new_text = tok.token_text(e.new);
        }
        if let Some(lev) = &mut self.lev {
            for r in &mut lev.antiloop {
                r.from_text = tok.token_text(r.from);
                r.to_text = tok.token_text(r.to);
            }
        }
    }
}

/// Totals over a decode so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub forwards: i64,
    pub unmasked: i64,
    pub edits: i64,
    pub fallbacks: i64,
    pub tokens: i64,
    pub tpf: f64,
    pub forward_ms: f64,
    pub total_ms: f64,
    /// Levenshtein decoding: slots deleted, masks inserted by SPLIT, tokens cut off a block's tail, and
    /// anti-loop redraws.
    #[serde(default)]
    pub deletions: i64,
    #[serde(default)]
    pub insertions: i64,
    #[serde(default)]
    pub truncated: i64,
    #[serde(default)]
    pub antiloop: i64,
}

/// `model.forward` with a failure inside libtorch (a panic in tch: out of memory, a kernel error) turned into an
/// error that names the forward, so a step fails cleanly instead of unwinding through the decoder. The cache
/// may be left empty by such a failure (`Model::forward` takes it out while its layers run).
fn guarded_forward(model: &dyn Denoiser, ids: &Tensor, start: i64, cache: &mut KvCache, commit: i64, mask: BlockMask) -> Result<Tensor> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| model.forward(ids, start, cache, commit, mask))) {
        Ok(r) => r,
        Err(panic) => {
            let why = panic.downcast_ref::<String>().map(String::as_str).or_else(|| panic.downcast_ref::<&str>().copied()).unwrap_or("unknown failure");
            Err(Error::invalid("forward", format!("{:?} ids from position {start}", ids.size()), format!("libtorch failed: {why}")))
        }
    }
}

/// A decoder's forward, all or nothing: [`guarded_forward`] then [`check_finite`] (for `step` of `block`). On
/// error the cache keeps at most what it held before (truncated to `start`); the caller's count of committed
/// positions is then `cache.len()`.
pub(crate) fn step_forward(
    model: &dyn Denoiser,
    ids: &Tensor,
    (start, commit): (i64, i64),
    cache: &mut KvCache,
    mask: BlockMask,
    (step, block): (i64, i64),
) -> Result<Tensor> {
    let logits = guarded_forward(model, ids, start, cache, commit, mask).and_then(|l| check_finite(&l, step, block).map(|()| l));
    if logits.is_err() {
        cache.truncate(start);
    }
    logits
}

/// A forward's logits must be finite for the rules to mean anything: NaN or infinite values (a broken
/// checkpoint, an overflowing dtype) fail the step with an error naming it, instead of deciding on garbage.
fn check_finite(logits: &Tensor, step: i64, block: i64) -> Result<()> {
    if logits.isfinite().all().int64_value(&[]) == 1 {
        return Ok(());
    }
    Err(Error::invalid(
        "logits",
        format!("step {step} (block {block})"),
        "the model produced NaN or infinite logits: the checkpoint's weights or config (e.g. rope_theta) are broken, or the dtype overflows; nothing was changed",
    ))
}

/// What one forward pass did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// Forward passes before this one (0-based, over the whole decode).
    pub step: i64,
    pub block: i64,
    /// Forward passes before this one within the block.
    pub block_step: i64,
    /// Gamma_t, sorted by position.
    pub gamma: Vec<Unmask>,
    /// Delta_t, sorted by position.
    pub delta: Vec<Edit>,
    /// Masks left in the block after the write.
    pub masks_left: i64,
    /// Fewer masks than the fallback count passed tau_mask, so the most confident ones were taken.
    pub fallback: bool,
    /// Blocks that ended before this forward (post-step limit reached, or no mask with editing off).
    pub ended_before: Vec<i64>,
    /// This step reached its block's fixed point (no mask at the start, no edit).
    pub block_ended: bool,
    /// The block the decoder moved to after this step, if it moved.
    pub advanced_to: Option<i64>,
    pub finished: bool,
    /// Earlier blocks this step's Delta revised (multi-block editing).
    pub revised_blocks: Vec<i64>,
    /// Canvas span `[from, to)` whose logits the forward produced.
    pub span: (i64, i64),
    pub forward_ms: f64,
    pub total_ms: f64,
    /// Tokens decoded (non-mask generated tokens up to the first EOS) per forward, so far.
    pub tpf: f64,
    /// The current block's tokens after the step, edits applied.
    #[serde(default)]
    pub tokens: Vec<i64>,
    /// What a Levenshtein step did besides Gamma and Delta (slot map, insertions, truncation, flags, counters);
    /// `None` for substitution-only steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lev: Option<LevStep>,
}

/// The scalar state a step changes besides the canvas; journalled so rewind restores it exactly.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    pub block: i64,
    pub block_step: i64,
    pub post_steps: i64,
    /// Forward passes so far.
    pub forwards: i64,
    pub finished: bool,
    pub rng: Rng,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum EntryKind {
    Step(StepReport),
    /// Blocks ended and the decode finished without another forward.
    Finish { ended: Vec<i64> },
    /// A hand edit: set tokens or re-mask positions.
    Manual { what: String },
}

/// One journal entry: the state before it and the canvas writes it made (pos, old, new).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub before: Cursor,
    pub writes: Vec<(i64, i64, i64)>,
    pub kind: EntryKind,
    /// Levenshtein steps: what rewind needs besides the writes (the block's flags, the loop memory's size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lev: Option<LevUndo>,
}

/// A decoder's state without its cache, as saved in session files.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecoderState {
    pub settings: DecodeSettings,
    pub mask_id: i64,
    pub eos_id: i64,
    pub prompt_len: i64,
    pub canvas: Vec<i64>,
    pub cursor: Cursor,
    pub journal: Vec<Entry>,
    /// (DELETE, SPLIT) ids of the model, when it has them.
    #[serde(default)]
    pub edit_ids: Option<(i64, i64)>,
    /// Per canvas position: the slot descends from a mask of its block's initial layout (LLaDA2.2's
    /// `is_orig_mask`; it travels with the slot through shifts). Empty in states saved before it existed.
    #[serde(default)]
    pub orig: Vec<bool>,
    #[serde(default)]
    pub memory: LoopMemory,
}

/// A row's next forward, decided by [`Decoder::plan`] without changing the decoder.
pub(crate) struct Plan {
    pub(super) t0: Instant,
    pub(super) before: Cursor,
    /// The cursor to adopt: blocks that end before the forward ended, post_steps counted.
    pub(super) cursor: Cursor,
    pub(super) ended_before: Vec<i64>,
    pub(super) masks_at_start: i64,
    /// The forward window `[ws, be)` whose logits the rules read.
    pub(crate) ws: i64,
    pub(crate) be: i64,
}

pub(crate) enum Next {
    Forward(Plan),
    Finish { before: Cursor, cursor: Cursor, ended: Vec<i64> },
}

/// The last forward's distribution over its span, for top-k queries without another forward.
#[derive(Debug)]
pub(super) struct LastForward {
    pub(super) from: i64,
    pub(super) dist: Tensor,
}

pub struct Decoder {
    pub settings: DecodeSettings,
    pub(super) mask_id: i64,
    pub(super) eos_id: i64,
    pub(super) prompt_len: i64,
    pub(super) canvas: Vec<i64>,
    pub(super) cursor: Cursor,
    /// Canvas positions whose K/V are in `cache` (whole blocks, all finished).
    committed: i64,
    cache: KvCache,
    pub(super) journal: Vec<Entry>,
    pub(super) last: Option<LastForward>,
    /// Off: every forward recomputes the whole prefix (the reference's cost), for benchmarks and checks.
    cache_enabled: bool,
    /// (DELETE, SPLIT) ids when the model has Levenshtein editing.
    pub(super) edit_ids: Option<(i64, i64)>,
    /// The model's routing block (block-routed MoE), which block_length must be a multiple of.
    routing_block: Option<i64>,
    /// Original-mask flags per canvas position (see [`DecoderState::orig`]).
    pub(super) orig: Vec<bool>,
    /// What the anti-loop rule remembers (blocks seen, tokens written).
    pub(super) memory: LoopMemory,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder").field("cursor", &self.cursor).field("prompt_len", &self.prompt_len).finish_non_exhaustive()
    }
}

impl Decoder {
    /// A decoder for `prompt` under `settings`. `mask_id`/`eos_id` come from the tokenizer.
    pub fn new(prompt: &[i64], settings: DecodeSettings, mask_id: i64, eos_id: i64, model: &dyn Denoiser) -> Result<Decoder> {
        settings.validate()?;
        if prompt.is_empty() {
            return Err(Error::invalid("prompt", "", "is empty: give at least one token"));
        }
        let vocab = model.vocab_size();
        if let Some(&bad) = prompt.iter().find(|&&t| t < 0 || t >= vocab) {
            return Err(Error::invalid("prompt token", bad, format!("ids must be in 0..{vocab}")));
        }
        if prompt.contains(&mask_id) {
            return Err(Error::invalid("prompt", format!("{} tokens", prompt.len()), "contains the mask token; re-mask generated positions instead"));
        }
        if let Some((del, split)) = model.edit_tokens() {
            for (id, name) in [(del, "DELETE"), (split, "SPLIT")] {
                if let Some(i) = prompt.iter().position(|&t| t == id) {
                    return Err(Error::invalid(
                        "prompt",
                        format!("{} tokens", prompt.len()),
                        format!("contains the {name} edit token (id {id}) at position {i}; edit tokens are decoder operations, not text"),
                    ));
                }
            }
        }
        let b = settings.block_length;
        let p = prompt.len() as i64;
        let num_blocks = (p + settings.gen_length + b - 1) / b;
        let len = num_blocks * b;
        if len > model.max_positions() {
            return Err(Error::invalid(
                "prompt + gen_length",
                len,
                format!("the canvas ({} blocks of {b}) exceeds the model's {} positions", num_blocks, model.max_positions()),
            ));
        }
        model.check_decode_memory(1, len, b)?;
        let mut canvas = vec![mask_id; len as usize];
        canvas[..prompt.len()].copy_from_slice(prompt);
        let cursor = Cursor { block: p / b, block_step: 0, post_steps: 0, forwards: 0, finished: false, rng: Rng::new(settings.seed) };
        let orig = (0..len).map(|pos| pos >= p).collect();
        let state = DecoderState {
            settings,
            mask_id,
            eos_id,
            prompt_len: p,
            canvas,
            cursor,
            journal: Vec::new(),
            edit_ids: model.edit_tokens(),
            orig,
            memory: LoopMemory::default(),
        };
        let mut d = Decoder::from_state(state);
        d.routing_block = model.routing_block();
        d.check_settings()?;
        Ok(d)
    }

    /// A decoder in `state` with an empty cache (it refills on the next forward).
    fn from_state(state: DecoderState) -> Decoder {
        let orig = if state.orig.len() == state.canvas.len() {
            state.orig
        } else {
            (0..state.canvas.len() as i64).map(|pos| pos >= state.prompt_len).collect()
        };
        Decoder {
            edit_ids: state.edit_ids,
            routing_block: None,
            orig,
            memory: state.memory,
            settings: state.settings,
            mask_id: state.mask_id,
            eos_id: state.eos_id,
            prompt_len: state.prompt_len,
            canvas: state.canvas,
            cursor: state.cursor,
            committed: 0,
            cache: KvCache::new(),
            journal: state.journal,
            last: None,
            cache_enabled: true,
        }
    }

    /// Everything but the cache and the last forward's distribution, for saving a session.
    pub fn snapshot(&self) -> DecoderState {
        DecoderState {
            settings: self.settings.clone(),
            mask_id: self.mask_id,
            eos_id: self.eos_id,
            prompt_len: self.prompt_len,
            canvas: self.canvas.clone(),
            cursor: self.cursor,
            journal: self.journal.clone(),
            edit_ids: self.edit_ids,
            orig: self.orig.clone(),
            memory: self.memory.clone(),
        }
    }

    /// A decoder in a saved state (its cache refills on the next forward). Checks the state against `model`.
    pub fn restore(state: DecoderState, model: &dyn Denoiser) -> Result<Decoder> {
        state.settings.validate()?;
        let vocab = model.vocab_size();
        let b = state.settings.block_length;
        let len = state.canvas.len() as i64;
        if len == 0 || len % b != 0 || state.prompt_len <= 0 || state.prompt_len > len || state.cursor.block * b >= len {
            return Err(Error::invalid("saved decoder", format!("{len} positions"), "inconsistent canvas, prompt or block"));
        }
        if let Some(&t) = state.canvas.iter().find(|&&t| t < 0 || t >= vocab) {
            return Err(Error::invalid("saved decoder", t, format!("token ids must be in 0..{vocab} for this model")));
        }
        if len > model.max_positions() {
            return Err(Error::invalid("saved decoder", len, "longer than the model's positions"));
        }
        if state.edit_ids.is_some() && state.edit_ids != model.edit_tokens() {
            return Err(Error::invalid("saved decoder", format!("{:?}", state.edit_ids), "its DELETE / SPLIT ids differ from this model's"));
        }
        let mut state = state;
        state.edit_ids = model.edit_tokens();
        let mut d = Decoder::from_state(state);
        d.routing_block = model.routing_block();
        Ok(d)
    }

    /// Turns the KV cache off (every forward recomputes the prefix) or back on. The results are the same.
    pub fn set_cache_enabled(&mut self, on: bool) {
        self.cache_enabled = on;
    }

    pub fn canvas(&self) -> &[i64] {
        &self.canvas
    }

    pub fn prompt_len(&self) -> i64 {
        self.prompt_len
    }

    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    pub fn is_finished(&self) -> bool {
        self.cursor.finished
    }

    pub fn num_blocks(&self) -> i64 {
        self.canvas.len() as i64 / self.settings.block_length
    }

    pub fn mask_id(&self) -> i64 {
        self.mask_id
    }

    pub fn eos_id(&self) -> i64 {
        self.eos_id
    }

    /// The model's (DELETE, SPLIT) ids, when it has Levenshtein editing.
    pub fn edit_ids(&self) -> Option<(i64, i64)> {
        self.edit_ids
    }

    /// Canvas positions whose keys and values are cached.
    pub fn cached_len(&self) -> i64 {
        self.committed
    }

    pub fn journal(&self) -> &[Entry] {
        &self.journal
    }

    /// Step reports so far, in order.
    pub fn reports(&self) -> impl Iterator<Item = &StepReport> {
        self.journal.iter().filter_map(|e| match &e.kind {
            EntryKind::Step(r) => Some(r),
            _ => None,
        })
    }

    /// The generated part, cut just after the first EOS (EOS kept). Masks remain visible until decoded.
    pub fn output(&self) -> Vec<i64> {
        let gen = &self.canvas[self.prompt_len as usize..];
        let gen = &gen[..gen.len().min(self.settings.gen_length as usize)];
        match gen.iter().position(|&t| t == self.eos_id) {
            Some(i) => gen[..=i].to_vec(),
            None => gen.to_vec(),
        }
    }

    /// Non-mask generated tokens up to the first EOS.
    pub fn decoded_tokens(&self) -> i64 {
        self.output().iter().filter(|&&t| t != self.mask_id).count() as i64
    }

    pub fn tpf(&self) -> f64 {
        if self.cursor.forwards == 0 {
            0.0
        } else {
            self.decoded_tokens() as f64 / self.cursor.forwards as f64
        }
    }

    /// Bytes of tensors this decoder holds: its KV cache and the last forward's distributions (what `drop`
    /// frees; the canvas and journal are small beside them).
    pub fn tensor_bytes(&self) -> usize {
        self.cache.bytes() + self.last.as_ref().map_or(0, |l| l.dist.numel() * l.dist.kind().elt_size_in_bytes())
    }

    /// Forwards, unmasked tokens, edits, fallbacks, TPF and time so far.
    pub fn stats(&self) -> Stats {
        let mut st = Stats { tokens: self.decoded_tokens(), tpf: self.tpf(), ..Stats::default() };
        for r in self.reports() {
            st.forwards += 1;
            st.unmasked += r.gamma.len() as i64;
            st.edits += r.delta.len() as i64;
            st.fallbacks += i64::from(r.fallback);
            st.forward_ms += r.forward_ms;
            st.total_ms += r.total_ms;
            if let Some(lev) = &r.lev {
                st.deletions += lev.deleted.len() as i64;
                st.insertions += lev.inserted.len() as i64;
                st.truncated += lev.truncated.len() as i64;
                st.antiloop += lev.antiloop.len() as i64;
            }
        }
        st
    }

    /// How often each canvas position has been written (by steps and by hand) so far.
    pub fn change_counts(&self) -> Vec<u32> {
        let mut counts = vec![0u32; self.canvas.len()];
        for e in &self.journal {
            for &(pos, _, _) in &e.writes {
                counts[pos as usize] += 1;
            }
        }
        counts
    }

    pub(super) fn block_range(&self, block: i64) -> std::ops::Range<usize> {
        let b = self.settings.block_length;
        (block * b) as usize..((block + 1) * b) as usize
    }

    pub(super) fn masks_in(&self, block: i64) -> i64 {
        self.canvas[self.block_range(block)].iter().filter(|&&t| t == self.mask_id).count() as i64
    }

    /// First position of the forward window when `block` is current: the block itself, or the MBE window
    /// before it (never before the block holding the prompt's end, whose earlier blocks are all prompt).
    fn window_start(&self, block: i64) -> i64 {
        let b = self.settings.block_length;
        let first_gen_block = self.prompt_len / b;
        (block - self.settings.mbe_window).max(first_gen_block) * b
    }

    fn check_settings(&self) -> Result<()> {
        self.settings.validate()?;
        if self.canvas.len() as i64 % self.settings.block_length != 0 {
            return Err(Error::invalid(
                "block_length",
                self.settings.block_length,
                "cannot change after the decode started (the canvas is laid out in blocks); start a new decode",
            ));
        }
        if let Some(rb) = self.routing_block {
            if self.settings.block_length % rb != 0 {
                return Err(Error::invalid(
                    "block_length",
                    self.settings.block_length,
                    format!("must be a multiple of the model's routing block_size {rb} (block-routed MoE)"),
                ));
            }
        }
        if self.settings.edit_ops == EditOps::Levenshtein && self.edit_ids.is_none() {
            return Err(Error::invalid(
                "edit_ops",
                "levenshtein",
                "this model has no DELETE / SPLIT tokens (LLaDA2.0 / 2.1): use edit_ops substitute or a 2.1 preset",
            ));
        }
        Ok(())
    }

    /// Decides the next forward without changing anything: blocks that end before it (the post-step limit,
    /// or no mask left with editing off) are ended on a copy of the cursor. `None` once finished.
    pub(crate) fn plan(&self) -> Result<Option<Next>> {
        if self.settings.edit_ops == EditOps::Levenshtein {
            return self.plan_levenshtein();
        }
        Ok(self.plan_substitute())
    }

    fn plan_substitute(&self) -> Option<Next> {
        if self.cursor.finished {
            return None;
        }
        let t0 = Instant::now();
        let before = self.cursor;
        let mut c = self.cursor;
        let mut ended_before = Vec::new();
        loop {
            if self.masks_in(c.block) > 0 {
                break;
            }
            if self.settings.edit_threshold().is_some() && c.post_steps < self.settings.max_post_steps {
                break;
            }
            ended_before.push(c.block);
            self.end_block(&mut c);
            if c.finished {
                return Some(Next::Finish { before, cursor: c, ended: ended_before });
            }
        }
        let masks_at_start = self.masks_in(c.block);
        if masks_at_start == 0 {
            c.post_steps += 1;
        }
        let b = self.settings.block_length;
        let (ws, be) = (self.window_start(c.block), (c.block + 1) * b);
        Some(Next::Forward(Plan { t0, before, cursor: c, ended_before, masks_at_start, ws, be }))
    }

    /// Adopts a decode end decided by `plan` (no forward).
    pub(crate) fn finish(&mut self, before: Cursor, cursor: Cursor, ended: Vec<i64>) {
        self.cursor = cursor;
        self.journal.push(Entry { before, writes: Vec::new(), kind: EntryKind::Finish { ended }, lev: None });
    }

    /// Runs one forward pass (after ending blocks that end before it). `None` once the decode is finished.
    /// A failed forward changes nothing.
    pub fn step(&mut self, model: &dyn Denoiser) -> Result<Option<StepReport>> {
        self.check_settings()?;
        let plan = match self.plan()? {
            None => return Ok(None),
            Some(Next::Finish { before, cursor, ended }) => {
                self.finish(before, cursor, ended);
                return Ok(None);
            }
            Some(Next::Forward(plan)) => plan,
        };
        // The forward: from the cache's end to the block's end; finished blocks before the window join the cache.
        let (ws, be) = (plan.ws, plan.be);
        let no_cache = self.settings.attention == MaskKind::HfAdditive || !self.cache_enabled;
        if no_cache || self.committed > ws {
            let keep = if no_cache { 0 } else { ws };
            self.cache.truncate(keep);
            self.committed = keep;
        }
        let start = self.committed;
        let commit = if no_cache { 0 } else { ws - start };
        let ids = Tensor::from_slice(&self.canvas[start as usize..be as usize]).view([1, -1]);
        let mask = self.attention_mask(ws);
        let tf = Instant::now();
        let logits = step_forward(model, &ids, (start, commit), &mut self.cache, mask, (plan.before.forwards, plan.cursor.block));
        // The step fails as a whole (a forward that failed inside libtorch leaves the cache empty).
        let logits = logits.inspect_err(|_| self.committed = self.cache.len())?;
        let forward_ms = tf.elapsed().as_secs_f64() * 1e3;
        self.committed = start + commit;
        Ok(Some(self.apply(plan, &logits.get(0), forward_ms)))
    }

    fn attention_mask(&self, ws: i64) -> BlockMask {
        BlockMask {
            block_length: self.settings.block_length,
            kind: self.settings.attention,
            bidirectional_from: (self.settings.mbe_window > 0).then_some(ws),
        }
    }

    /// Applies the rules to a forward's logits (`[L, V]`, the last `be - ws` rows covering the window).
    pub(crate) fn apply(&mut self, plan: Plan, logits: &Tensor, forward_ms: f64) -> StepReport {
        if self.settings.edit_ops == EditOps::Levenshtein {
            return self.apply_levenshtein(plan, logits, forward_ms);
        }
        let Plan { t0, before, cursor, ended_before, masks_at_start, ws, be } = plan;
        self.cursor = cursor;
        let b = self.settings.block_length;
        let block = self.cursor.block;
        let bs = block * b;
        let block_step = self.cursor.block_step;
        let got = logits.size()[0];
        let mut logits = logits.narrow(0, got - (be - ws), be - ws).to_kind(Kind::Float);
        if let Some((del, split)) = self.edit_ids {
            // Substitution only: a LLaDA2.2 model's DELETE / SPLIT predictions are never written.
            logits = logits.index_fill(1, &Tensor::from_slice(&[del, split]).to_device(logits.device()), f64::NEG_INFINITY);
        }
        let prev: Vec<Option<i64>> =
            (ws..be).map(|pos| if pos == ws { None } else { Some(self.canvas[pos as usize - 1]) }).collect();
        let cand = select(&logits, &prev, &self.settings, &mut self.cursor.rng);
        let at = |pos: i64| (pos - ws) as usize;

        // Gamma_t over the current block's masks.
        let mut masks: Vec<i64> = (bs..be).filter(|&pos| self.canvas[pos as usize] == self.mask_id).collect();
        let k = self.settings.fallback_count(block_step).min(masks.len() as i64) as usize;
        let passing: Vec<i64> =
            masks.iter().copied().filter(|&pos| cand.probs[at(pos)] as f64 > self.settings.threshold).collect();
        let fallback = passing.len() < k;
        let chosen = if fallback {
            masks.sort_by(|&a, &c| cand.probs[at(c)].total_cmp(&cand.probs[at(a)]).then(a.cmp(&c)));
            let mut top: Vec<i64> = masks[..k].to_vec();
            top.sort();
            top
        } else {
            passing
        };
        let gamma: Vec<Unmask> = chosen
            .iter()
            .map(|&pos| Unmask { pos, token: cand.tokens[at(pos)], p: cand.probs[at(pos)], kind: WriteKind::Token, text: String::new() })
            .collect();

        // Delta_t over non-mask, non-prompt positions of the window.
        let mut delta = Vec::new();
        if let Some(tau) = self.settings.edit_threshold() {
            let allowed = self.settings.edit_timing == EditTiming::Always || masks_at_start == 0;
            for pos in ws.max(self.prompt_len)..be {
                let old = self.canvas[pos as usize];
                let (v, p) = (cand.tokens[at(pos)], cand.probs[at(pos)]);
                if allowed && old != self.mask_id && v != old && p as f64 > tau {
                    delta.push(Edit { pos, old, new: v, p, kind: WriteKind::Token, old_text: String::new(), new_text: String::new() });
                }
            }
        }

        // Write both at once.
        let mut writes = Vec::with_capacity(gamma.len() + delta.len());
        for u in &gamma {
            writes.push((u.pos, self.mask_id, u.token));
        }
        for e in &delta {
            writes.push((e.pos, e.old, e.new));
        }
        for &(pos, _, new) in &writes {
            self.canvas[pos as usize] = new;
        }
        let mut revised_blocks: Vec<i64> = delta.iter().map(|e| e.pos / b).filter(|&blk| blk < block).collect();
        revised_blocks.dedup();

        let block_ended = masks_at_start == 0 && delta.is_empty();
        let advanced_to = self.close_step(LastForward { from: ws, dist: cand.dist }, block_ended);
        let report = StepReport {
            step: before.forwards,
            block,
            block_step,
            gamma,
            delta,
            masks_left: self.masks_in(block),
            fallback,
            ended_before,
            block_ended,
            advanced_to,
            finished: self.cursor.finished,
            revised_blocks,
            span: (ws, be),
            forward_ms,
            total_ms: t0.elapsed().as_secs_f64() * 1e3,
            tpf: self.tpf(),
            tokens: self.canvas[self.block_range(block)].to_vec(),
            lev: None,
        };
        self.journal.push(Entry { before, writes, kind: EntryKind::Step(report.clone()), lev: None });
        report
    }

    /// Counts the forward a step just applied and keeps its distribution; when the step ended its block, moves
    /// on (or finishes). Returns the block moved to.
    pub(super) fn close_step(&mut self, last: LastForward, block_ended: bool) -> Option<i64> {
        self.cursor.forwards += 1;
        self.cursor.block_step += 1;
        self.last = Some(last);
        if !block_ended {
            return None;
        }
        let mut c = self.cursor;
        self.end_block(&mut c);
        self.cursor = c;
        (!self.cursor.finished).then_some(self.cursor.block)
    }

    /// Ends the block `c` is on: the decode finishes (last block, or EOS early stop) or moves on.
    pub(super) fn end_block(&self, c: &mut Cursor) {
        let b = self.settings.block_length;
        let end = (c.block + 1) * b;
        if self.settings.eos_early_stop {
            let gen = &self.canvas[self.prompt_len as usize..end as usize];
            if !gen.contains(&self.mask_id) && gen.contains(&self.eos_id) {
                c.finished = true;
                return;
            }
        }
        if c.block + 1 >= self.num_blocks() {
            c.finished = true;
            return;
        }
        c.block += 1;
        c.block_step = 0;
        c.post_steps = 0;
    }

    /// Steps until the decode finishes; returns the reports.
    pub fn run(&mut self, model: &dyn Denoiser) -> Result<Vec<StepReport>> {
        let mut out = Vec::new();
        while let Some(r) = self.step(model)? {
            out.push(r);
        }
        Ok(out)
    }

    /// Restores exactly the state before forward `step` (canvas, block, counters, generator). Cached blocks
    /// that are still finished and unchanged stay cached.
    pub fn rewind(&mut self, step: i64) -> Result<()> {
        let Some(idx) = self.journal.iter().position(|e| matches!(&e.kind, EntryKind::Step(r) if r.step == step)) else {
            let done = self.cursor.forwards;
            return Err(Error::invalid("step", step, format!("no such step: this decode has run steps 0..{done}")));
        };
        let mut lowest = i64::MAX;
        let undone: Vec<Entry> = self.journal.drain(idx..).collect();
        for e in undone.into_iter().rev() {
            for &(pos, old, _) in e.writes.iter().rev() {
                self.canvas[pos as usize] = old;
                lowest = lowest.min(pos);
            }
            if let Some(u) = &e.lev {
                self.undo_levenshtein(u);
            }
            self.cursor = e.before;
        }
        let b = self.settings.block_length;
        let keep = self.committed.min(self.window_start(self.cursor.block)).min(if lowest == i64::MAX { i64::MAX } else { lowest / b * b });
        self.cache.truncate(keep);
        self.committed = keep;
        self.last = None;
        Ok(())
    }

    /// Forgets the cached keys and values (the weights changed: an RL update); the next forward recomputes the
    /// finished blocks under the current weights. The canvas and the journal stay.
    pub fn clear_cache(&mut self) {
        self.cache.truncate(0);
        self.committed = 0;
    }

    /// An independent copy (settings, canvas, cache, journal) to try other settings from here.
    pub fn fork(&self) -> Decoder {
        Decoder {
            committed: self.committed,
            cache: self.cache.deep_clone(),
            last: self.last.as_ref().map(|l| LastForward { from: l.from, dist: l.dist.copy() }),
            cache_enabled: self.cache_enabled,
            ..Decoder::from_state(self.snapshot())
        }
    }

    /// Sets generated positions by hand (journalled; rewind undoes it). Positions in cached blocks drop the
    /// cache from their block on.
    pub fn set_tokens(&mut self, edits: &[(i64, i64)], vocab_size: i64) -> Result<()> {
        for &(pos, tok) in edits {
            self.check_generated(pos)?;
            if tok < 0 || tok >= vocab_size {
                return Err(Error::invalid("token", tok, format!("ids must be in 0..{vocab_size}")));
            }
            if let Some((del, split)) = self.edit_ids {
                if tok == del || tok == split {
                    let name = if tok == del { "DELETE" } else { "SPLIT" };
                    return Err(Error::invalid("token", tok, format!("is the {name} edit operation, not a token: a decoder step applies it")));
                }
            }
        }
        let what = format!("set {}", edits.iter().map(|(p, t)| format!("{p}={t}")).collect::<Vec<_>>().join(" "));
        self.manual(edits, what)
    }

    /// Turns positions of the current block back into masks (journalled).
    pub fn remask(&mut self, positions: &[i64]) -> Result<()> {
        if self.cursor.finished {
            return Err(Error::invalid("remask", format!("{positions:?}"), "the decode has finished: rewind to a step first"));
        }
        let r = self.block_range(self.cursor.block);
        for &pos in positions {
            self.check_generated(pos)?;
            if !r.contains(&(pos as usize)) {
                return Err(Error::invalid(
                    "position",
                    pos,
                    format!("only positions of the current block {} ({} to {}) can be re-masked; rewind to go back", self.cursor.block, r.start, r.end - 1),
                ));
            }
        }
        let edits: Vec<(i64, i64)> = positions.iter().map(|&p| (p, self.mask_id)).collect();
        self.manual(&edits, format!("remask {positions:?}"))
    }

    fn check_generated(&self, pos: i64) -> Result<()> {
        if pos < self.prompt_len || pos >= self.canvas.len() as i64 {
            return Err(Error::invalid(
                "position",
                pos,
                format!("generated positions are {} to {} (the prompt is 0 to {})", self.prompt_len, self.canvas.len() - 1, self.prompt_len - 1),
            ));
        }
        Ok(())
    }

    fn manual(&mut self, edits: &[(i64, i64)], what: String) -> Result<()> {
        let before = self.cursor;
        let mut writes = Vec::new();
        for &(pos, tok) in edits {
            let old = self.canvas[pos as usize];
            if old != tok {
                writes.push((pos, old, tok));
                self.canvas[pos as usize] = tok;
            }
        }
        let b = self.settings.block_length;
        if let Some(lowest) = writes.iter().map(|w| w.0).min() {
            if lowest < self.committed {
                self.committed = lowest / b * b;
                self.cache.truncate(self.committed);
            }
        }
        self.journal.push(Entry { before, writes, kind: EntryKind::Manual { what }, lev: None });
        Ok(())
    }

    /// The canvas positions whose distributions the last forward kept (`from..to`, end excluded): what
    /// [`Decoder::top_k_at`] can answer. `None` when there was no forward since the decode started or rewound.
    pub fn last_forward_span(&self) -> Option<std::ops::Range<i64>> {
        self.last.as_ref().map(|l| l.from..l.from + l.dist.size()[0])
    }

    /// The `k` most likely tokens at `pos` under the last forward, and the probability there of the token now
    /// at `pos`. `None` when the last forward did not cover `pos` (or there was none since a rewind).
    pub fn top_k_at(&self, pos: i64, k: i64) -> Option<(Vec<(i64, f32)>, f32)> {
        let last = self.last.as_ref()?;
        let row = pos - last.from;
        if row < 0 || row >= last.dist.size()[0] {
            return None;
        }
        let dist = last.dist.get(row);
        let (p, idx) = dist.topk(k.min(dist.size()[0]), -1, true, true);
        let p = Vec::<f32>::try_from(&p.to_device(tch::Device::Cpu)).ok()?;
        let idx = Vec::<i64>::try_from(&idx.to_device(tch::Device::Cpu)).ok()?;
        let current = dist.double_value(&[self.canvas[pos as usize]]) as f32;
        Some((idx.into_iter().zip(p).collect(), current))
    }

    /// The trace as JSON: prompt, settings, one entry per forward, output (see docs/decoding.md).
    pub fn trace_json(&self) -> serde_json::Value {
        let steps: Vec<serde_json::Value> = self
            .reports()
            .map(|r| {
                let mut step = serde_json::json!({
                    "block": r.block,
                    "step": r.block_step,
                    "gamma": r.gamma.iter().map(|u| serde_json::json!([u.pos, u.token, u.p])).collect::<Vec<_>>(),
                    "delta": r.delta.iter().map(|e| serde_json::json!([e.pos, e.old, e.new, e.p])).collect::<Vec<_>>(),
                    "tokens": &r.tokens,
                });
                if let Some(lev) = &r.lev {
                    lev.extend_trace(&mut step);
                }
                step
            })
            .collect();
        serde_json::json!({
            "prompt_ids": &self.canvas[..self.prompt_len as usize],
            "settings": &self.settings,
            "steps": steps,
            "output_ids": self.output(),
        })
    }
}
