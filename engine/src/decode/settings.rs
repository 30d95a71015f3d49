//! Decoding settings: the policy is data. Every field can be read and set by name (`get`/`set`), and named
//! presets reproduce the settings of the official and the other public decoders.
//!
//! Sources of the presets (see shared/reference/llada2.md section 2):
//! - `Q` / `S`: the LLaDA2.1 model card's quality and speed modes (0.7 / 0.5 and 0.5 / 0.0, 16 post steps).
//! - `lowconf`: LLaDA's low-confidence remasking (Nie et al. 2025) with as many steps as tokens: no
//!   probability exceeds a threshold of 1, so each step's fallback unmasks the one most confident mask; no
//!   editing. The one-token-per-forward baseline that parallel decoding is measured against.
//! - `llada2.0`: LLaDA2.0's `generate`: threshold 0.95, no editing, its fallback schedule (the block's
//!   length spread over `steps` = 32 steps: with block 32, one token per step), stop once a block holds EOS.
//! - `sglang`: SGLang `JointThreshold` defaults: threshold 0.5, edit_threshold 0 (always edit), 16 post steps,
//!   penalty_lambda 0. (The same numbers as S mode, from a different code base.)
//! - `diffusers`: diffusers `LLaDA2Pipeline` defaults: 0.7 / 0.5 / 16, eos_early_stop on, and its semantics:
//!   edits only once every mask of the block is resolved.
//! - `llada2.2`: the LLaDA2.2 reference `generate` (Levenshtein editing, shared/reference/llada2.2.md
//!   sections 3.3 and 3.6): threshold 0.5, edit threshold 0.0, 16 post steps, the minimum-transfer schedule
//!   over 32 steps, a post counter that resets while an original mask is unresolved, the final round without
//!   DELETE / SPLIT, the random anti-loop redraw, at most 1000 steps a block (then an error), EOS early stop.
//! - `sglang-indel`: SGLang's revised `JointThresholdInDel` (PR #31773 at 0fbe7e46, llada2.2.md section 3.4):
//!   need = 1 + introduced masks, a cumulative post counter, a final round that also forbids MASK and also
//!   triggers with 0 post steps once no original mask is left, the MASK-argmax fallback at original masks,
//!   the deterministic lowest-confidence anti-loop, a cap of block + post steps + 1 that forces the final round.
//! With no preset, settings start from the official `generate` defaults: greedy, threshold 0.95,
//! editing 0.9... see [`DecodeSettings::official`].

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::MaskKind;

/// Token-to-token editing: off, or on with the threshold tau_edit. `Threshold(0.0)` means "edit every changed
/// token" (the official code's `editing_threshold = 0`), which is NOT off.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Editing {
    Off,
    Threshold(f64),
}

/// When Delta_t may be non-empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EditTiming {
    /// Every step, on tokens that were not masks at the step start (official LLaDA2.1, SGLang).
    Always,
    /// Only in steps that start with no mask left in the block (diffusers `LLaDA2Pipeline`).
    AfterMasks,
}

/// What DELETE / SPLIT predictions of a LLaDA2.2 model do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EditOps {
    /// Substitution only (LLaDA2.0 / 2.1): DELETE and SPLIT are never written.
    #[default]
    Substitute,
    /// Levenshtein editing (LLaDA2.2): DELETE removes a slot and shifts the block left, SPLIT opens a mask
    /// before the slot's token; the block is padded with masks or cut at the tail.
    Levenshtein,
}

/// The post-step counter of a Levenshtein block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PostCounter {
    /// Back to 0 whenever an original mask is unresolved at a step start (HF reference).
    #[default]
    Reset,
    /// Counts every step without an original mask, never reset (SGLang).
    Cumulative,
}

/// When a Levenshtein block's final round happens, besides `post >= max_post_steps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FinalTrigger {
    /// With max_post_steps 0: the step that resolves the last original masks (HF reference).
    #[default]
    Reference,
    /// Also with max_post_steps 0 once no original mask is left at the step start (SGLang revised).
    Sglang,
}

/// Tokens the final round may not write (they are redrawn without them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FinalForbid {
    /// DELETE and SPLIT (HF reference).
    #[default]
    Edits,
    /// DELETE, SPLIT and MASK (SGLang revised).
    EditsAndMask,
}

/// What a Levenshtein step does when its block comes back to a state it has been in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AntiLoop {
    Off,
    /// The written block was seen before: up to 5 times, a random written slot (the decoder's generator) is
    /// redrawn without its current token, until the block is new (HF reference).
    #[default]
    Random,
    /// The input block was seen before: the least confident written slot takes the best token never written
    /// there before (and not MASK at an original mask); deterministic (SGLang revised).
    Lowest,
}

/// What happens when a Levenshtein block reaches `max_steps_per_block`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CapAction {
    /// The step fails with an error naming the block (HF reference: "did not converge").
    #[default]
    Error,
    /// The step is a final round (SGLang).
    Final,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecodeSettings {
    /// Tokens to generate after the prompt.
    pub gen_length: i64,
    /// Block size of the block-causal attention and of the decoding loop.
    pub block_length: i64,
    /// tau_mask: a mask position is unmasked when its token's probability exceeds this.
    pub threshold: f64,
    pub editing: Editing,
    pub edit_timing: EditTiming,
    /// Edit-only passes allowed once a block has no mask (checked before the forward).
    pub max_post_steps: i64,
    /// Fallback: when fewer masks than this pass tau_mask, the this-many most confident ones are unmasked.
    pub num_to_transfer: i64,
    /// LLaDA2.0's schedule: when set, the fallback count of step t of a block is the block length spread
    /// evenly over this many steps (earlier steps take the remainder), instead of `num_to_transfer`.
    pub fallback_steps: Option<i64>,
    /// 0 = greedy (argmax); otherwise logits / temperature, then top-k, top-p, and a seeded draw.
    pub temperature: f64,
    pub top_k: Option<i64>,
    pub top_p: Option<f64>,
    /// SGLang's repetition penalty: subtract this from the logit of the previous position's token.
    pub penalty_lambda: f64,
    /// After a block: stop when the generated part has no mask and holds an EOS.
    pub eos_early_stop: bool,
    /// block-causal (default) or hf-additive (the HF remote code's generate; disables the KV cache).
    pub attention: MaskKind,
    /// Multi-block editing: the number of finished blocks before the current one that Delta may still revise
    /// (0 = off). See docs/decoding.md for the design.
    pub mbe_window: i64,
    /// Seed of the decoder's own generator (used when temperature > 0, and by the random anti-loop).
    pub seed: u64,
    /// Substitution only, or Levenshtein editing with DELETE / SPLIT (LLaDA2.2 models). The fields below apply
    /// to Levenshtein decoding only (docs/decoding.md).
    #[serde(default)]
    pub edit_ops: EditOps,
    /// The LLaDA2.2 minimum-transfer schedule: the block's generated slots spread over this many steps (entries
    /// may be 0), plus the masks edits introduced; from this step on every mask is unmasked. `None`: the
    /// minimum is `num_to_transfer` + introduced masks.
    #[serde(default)]
    pub schedule_steps: Option<i64>,
    #[serde(default)]
    pub post_counter: PostCounter,
    #[serde(default)]
    pub final_trigger: FinalTrigger,
    #[serde(default)]
    pub final_forbid: FinalForbid,
    /// At an unresolved original mask whose best token is MASK, take the best other token and its probability.
    #[serde(default)]
    pub mask_fallback: bool,
    #[serde(default)]
    pub antiloop: AntiLoop,
    /// Steps a Levenshtein block may take; `None`: block_length + max_post_steps + 1 (SGLang).
    #[serde(default = "default_max_steps")]
    pub max_steps_per_block: Option<i64>,
    #[serde(default)]
    pub cap_action: CapAction,
}

fn default_max_steps() -> Option<i64> {
    Some(1000)
}

/// A named decoding preset: what it is, and the settings it writes, by name and value exactly as `set` takes
/// them. Adding a preset is adding a row here; `preset`, its completion, `--preset` and the docs read this table.
#[derive(Debug)]
pub struct Preset {
    pub name: &'static str,
    /// Other names it answers to.
    pub aliases: &'static [&'static str],
    pub about: &'static str,
    /// Written after [`PRESET_BASE`].
    pub settings: &'static [(&'static str, &'static str)],
}

/// What every preset writes first: the rules a preset never leaves as they were (the length, block, sampling
/// and seed are kept, and so are attention and the multi-block window).
pub const PRESET_BASE: &[(&str, &str)] = &[
    ("num_to_transfer", "1"),
    ("penalty_lambda", "0"),
    ("fallback_steps", "off"),
    ("eos_early_stop", "false"),
    ("edit_ops", "substitute"),
    ("schedule_steps", "off"),
    ("post_counter", "reset"),
    ("final_trigger", "reference"),
    ("final_forbid", "edits"),
    ("mask_fallback", "false"),
    ("antiloop", "random"),
    ("max_steps_per_block", "1000"),
    ("cap_action", "error"),
];

/// The decoding presets (sources in the module docs).
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "Q",
        aliases: &[],
        about: "LLaDA2.1 quality mode: threshold 0.7, edit threshold 0.5, 16 post steps",
        settings: &[("threshold", "0.7"), ("edit_threshold", "0.5"), ("max_post_steps", "16"), ("edit_timing", "always")],
    },
    Preset {
        name: "S",
        aliases: &[],
        about: "LLaDA2.1 speed mode: threshold 0.5, edit threshold 0.0 (always edit), 16 post steps",
        settings: &[("threshold", "0.5"), ("edit_threshold", "0"), ("max_post_steps", "16"), ("edit_timing", "always")],
    },
    Preset {
        name: "llada2.1",
        aliases: &["official"],
        about: "LLaDA2.1 generate defaults (HF signature, the settings a session starts from): 0.95 / 0.9 / 16",
        settings: &[("threshold", "0.95"), ("edit_threshold", "0.9"), ("max_post_steps", "16"), ("edit_timing", "always")],
    },
    Preset {
        name: "lowconf",
        aliases: &["one-per-step"],
        about: "LLaDA's low-confidence remasking, one token per forward (steps = gen length), no editing: the baseline of parallel decoding",
        settings: &[("threshold", "1"), ("edit_threshold", "off"), ("max_post_steps", "0"), ("edit_timing", "always")],
    },
    Preset {
        name: "llada2.0",
        aliases: &["llada2"],
        about: "LLaDA2.0 generate: threshold 0.95, editing off, fallback schedule over 32 steps, stop at EOS",
        settings: &[
            ("threshold", "0.95"),
            ("edit_threshold", "off"),
            ("max_post_steps", "0"),
            ("edit_timing", "always"),
            ("fallback_steps", "32"),
            ("eos_early_stop", "true"),
        ],
    },
    Preset {
        name: "sglang",
        aliases: &[],
        about: "SGLang JointThreshold defaults: threshold 0.5, edit threshold 0, 16 post steps, penalty 0",
        settings: &[("threshold", "0.5"), ("edit_threshold", "0"), ("max_post_steps", "16"), ("edit_timing", "always")],
    },
    Preset {
        name: "diffusers",
        aliases: &[],
        about: "diffusers LLaDA2Pipeline: 0.7 / 0.5 / 16, edits only after the block's masks are resolved",
        settings: &[("threshold", "0.7"), ("edit_threshold", "0.5"), ("max_post_steps", "16"), ("edit_timing", "after-masks"), ("eos_early_stop", "true")],
    },
    Preset {
        name: "llada2.2",
        aliases: &[],
        about: "LLaDA2.2 generate: Levenshtein editing (DELETE / SPLIT), 0.5 / 0.0 / 16, schedule over 32 steps",
        settings: &[
            ("threshold", "0.5"),
            ("edit_threshold", "0"),
            ("max_post_steps", "16"),
            ("edit_timing", "always"),
            ("edit_ops", "levenshtein"),
            ("schedule_steps", "32"),
            ("eos_early_stop", "true"),
        ],
    },
    Preset {
        name: "sglang-indel",
        aliases: &[],
        about: "SGLang JointThresholdInDel (revised): 0.5 / 0.0 / 16, 1 + introduced masks, cumulative post steps",
        settings: &[
            ("threshold", "0.5"),
            ("edit_threshold", "0"),
            ("max_post_steps", "16"),
            ("edit_timing", "always"),
            ("edit_ops", "levenshtein"),
            ("post_counter", "cumulative"),
            ("final_trigger", "sglang"),
            ("final_forbid", "edits+mask"),
            ("mask_fallback", "true"),
            ("antiloop", "lowest"),
            ("max_steps_per_block", "auto"),
            ("cap_action", "final"),
            ("eos_early_stop", "true"),
        ],
    },
];

/// The preset named `name` (or one of its aliases), case-insensitively.
pub fn find_preset(name: &str) -> Option<&'static Preset> {
    let n = name.to_ascii_lowercase();
    PRESETS.iter().find(|p| p.name.to_ascii_lowercase() == n || p.aliases.contains(&n.as_str()))
}

/// The preset names, for messages and help: `Q, S, llada2.0, ...`.
pub fn preset_names() -> String {
    PRESETS.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
}

/// The largest `gen_length` and `block_length` (2^20 tokens), and the largest count of steps or tokens any
/// integer setting accepts: far beyond any model's positions, small enough that no arithmetic on settings
/// overflows.
pub const MAX_LENGTH: i64 = 1 << 20;

/// Setting names accepted by [`DecodeSettings::set`], with one-line help.
pub const SETTINGS: &[(&str, &str)] = &[
    ("gen_length", "tokens to generate after the prompt"),
    ("block_length", "block size (attention and decoding)"),
    ("threshold", "tau_mask in [0, 1]: unmask a mask when p exceeds it"),
    ("edit_threshold", "tau_edit in [0, 1], or `off`: edit a token when another has p above it"),
    ("edit_timing", "always | after-masks (diffusers)"),
    ("max_post_steps", "edit-only passes once a block has no mask"),
    ("num_to_transfer", "fallback count when too few masks pass the threshold"),
    ("fallback_steps", "LLaDA2.0 fallback schedule over N steps, or `off`"),
    ("temperature", "0 = greedy; > 0 samples with the decoder's seeded generator"),
    ("top_k", "keep the k most likely tokens before sampling, or `off`"),
    ("top_p", "nucleus sampling mass in (0, 1], or `off`"),
    ("penalty_lambda", "SGLang repetition penalty on the previous position's token"),
    ("eos_early_stop", "true | false: stop after a block once an EOS is in place and no mask remains"),
    ("attention", "block-causal | hf-additive (HF remote code's additive 0/1 mask; no KV cache)"),
    ("mbe_window", "multi-block editing: finished blocks Delta may still revise (0 = off)"),
    ("seed", "seed of the decoder's sampling generator"),
    ("edit_ops", "substitute | levenshtein (LLaDA2.2: DELETE / SPLIT shift positions)"),
    ("schedule_steps", "Levenshtein: minimum-transfer schedule over N steps (LLaDA2.2: 32), or `off`"),
    ("post_counter", "Levenshtein: reset (while an original mask is open) | cumulative (SGLang)"),
    ("final_trigger", "Levenshtein: reference | sglang (also final with 0 post steps once no original mask is left)"),
    ("final_forbid", "Levenshtein: tokens the final round redraws: edits (DELETE, SPLIT) | edits+mask"),
    ("mask_fallback", "Levenshtein: true | false: at an original mask whose argmax is MASK take the best other token"),
    ("antiloop", "Levenshtein: random (reference) | lowest (SGLang) | off: redraw when a block repeats"),
    ("max_steps_per_block", "Levenshtein: step cap of a block, or `auto` (block + post steps + 1)"),
    ("cap_action", "Levenshtein: at the step cap: error | final (a final round)"),
];

impl DecodeSettings {
    /// The official LLaDA2.1 `generate` defaults (greedy, block 32, threshold 0.95, editing threshold 0.9,
    /// 16 post steps, eos_early_stop off, num_to_transfer 1) for `gen_length` tokens.
    pub fn official(gen_length: i64) -> DecodeSettings {
        DecodeSettings {
            gen_length,
            block_length: 32,
            threshold: 0.95,
            editing: Editing::Threshold(0.9),
            edit_timing: EditTiming::Always,
            max_post_steps: 16,
            num_to_transfer: 1,
            fallback_steps: None,
            temperature: 0.0,
            top_k: None,
            top_p: None,
            penalty_lambda: 0.0,
            eos_early_stop: false,
            attention: MaskKind::BlockCausal,
            mbe_window: 0,
            seed: 0,
            edit_ops: EditOps::Substitute,
            schedule_steps: None,
            post_counter: PostCounter::Reset,
            final_trigger: FinalTrigger::Reference,
            final_forbid: FinalForbid::Edits,
            mask_fallback: false,
            antiloop: AntiLoop::Random,
            max_steps_per_block: Some(1000),
            cap_action: CapAction::Error,
        }
    }

    /// Applies a named preset ([`PRESETS`]): [`PRESET_BASE`], then its own settings (length, block, sampling and
    /// seed are kept).
    pub fn apply_preset(&mut self, name: &str) -> Result<()> {
        let p = find_preset(name).ok_or_else(|| Error::invalid("preset", name, format!("known presets: {}", preset_names())))?;
        let mut next = self.clone();
        for (setting, value) in PRESET_BASE.iter().chain(p.settings) {
            next.assign(setting, value)?;
        }
        *self = next;
        Ok(())
    }

    /// Checks every field; the error names the setting and the allowed range.
    pub fn validate(&self) -> Result<()> {
        let bad = |name: &'static str, v: String, why: &str| Err(Error::invalid(name, v, why));
        for (name, v) in [("gen_length", self.gen_length), ("block_length", self.block_length)] {
            if !(1..=MAX_LENGTH).contains(&v) {
                return bad(name, v.to_string(), &format!("must be from 1 to {MAX_LENGTH} (a canvas also has to fit the model's positions)"));
            }
        }
        // Counts of steps and tokens: bounded like lengths, so arithmetic on them (a step cap is block_length +
        // max_post_steps + 1) never overflows.
        let counts = [
            ("max_post_steps", Some(self.max_post_steps)),
            ("num_to_transfer", Some(self.num_to_transfer)),
            ("fallback_steps", self.fallback_steps),
            ("top_k", self.top_k),
            ("mbe_window", Some(self.mbe_window)),
            ("schedule_steps", self.schedule_steps),
            ("max_steps_per_block", self.max_steps_per_block),
        ];
        for (name, v) in counts {
            if let Some(v) = v.filter(|v| *v > MAX_LENGTH) {
                return bad(name, v.to_string(), &format!("must be at most {MAX_LENGTH}"));
            }
        }
        if !(0.0..=1.0).contains(&self.threshold) {
            return bad("threshold", self.threshold.to_string(), "must be in [0, 1]");
        }
        if let Editing::Threshold(t) = self.editing {
            if !(0.0..=1.0).contains(&t) {
                return bad("edit_threshold", t.to_string(), "must be in [0, 1] (or `off`)");
            }
        }
        if self.max_post_steps < 0 {
            return bad("max_post_steps", self.max_post_steps.to_string(), "must be >= 0");
        }
        if self.num_to_transfer < 1 {
            return bad("num_to_transfer", self.num_to_transfer.to_string(), "must be at least 1");
        }
        if let Some(s) = self.fallback_steps {
            if s < 1 {
                return bad("fallback_steps", s.to_string(), "must be at least 1 (or `off`)");
            }
        }
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad("temperature", self.temperature.to_string(), "must be >= 0");
        }
        if let Some(k) = self.top_k {
            if k < 1 {
                return bad("top_k", k.to_string(), "must be at least 1 (or `off`)");
            }
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return bad("top_p", p.to_string(), "must be in (0, 1] (or `off`)");
            }
        }
        if !(self.penalty_lambda >= 0.0 && self.penalty_lambda.is_finite()) {
            return bad("penalty_lambda", self.penalty_lambda.to_string(), "must be >= 0");
        }
        if self.mbe_window < 0 {
            return bad("mbe_window", self.mbe_window.to_string(), "must be >= 0");
        }
        if self.mbe_window > 0 && self.attention == MaskKind::HfAdditive {
            return bad("mbe_window", self.mbe_window.to_string(), "multi-block editing needs attention block-causal");
        }
        if self.mbe_window > 0 && self.edit_ops == EditOps::Levenshtein {
            return bad("mbe_window", self.mbe_window.to_string(), "multi-block editing is not defined for Levenshtein edits (edit_ops levenshtein): set it to 0");
        }
        if let Some(s) = self.schedule_steps {
            if s < 1 {
                return bad("schedule_steps", s.to_string(), "must be at least 1 (or `off`)");
            }
        }
        if let Some(s) = self.max_steps_per_block {
            if s < 1 {
                return bad("max_steps_per_block", s.to_string(), "must be at least 1 (or `auto`)");
            }
        }
        Ok(())
    }

    /// The fallback count of step `t` (0-based) within a block.
    pub fn fallback_count(&self, t: i64) -> i64 {
        match self.fallback_steps {
            Some(steps) if t < steps => {
                let (base, rem) = (self.block_length / steps, self.block_length % steps);
                (base + i64::from(t < rem)).max(1)
            }
            _ => self.num_to_transfer,
        }
    }

    /// The LLaDA2.2 schedule's minimum for step `t` of a block with `n0` generated slots: `n0` spread over
    /// `schedule_steps` entries, the first `n0 % steps` one larger (entries may be 0). `None` past the schedule
    /// (every mask is unmasked) or without one.
    pub fn schedule_count(&self, t: i64, n0: i64) -> Option<i64> {
        let steps = self.schedule_steps?;
        (t < steps).then(|| n0 / steps + i64::from(t < n0 % steps))
    }

    /// The step cap of a Levenshtein block.
    pub fn step_cap(&self) -> i64 {
        self.max_steps_per_block.unwrap_or(self.block_length + self.max_post_steps + 1)
    }

    pub fn edit_threshold(&self) -> Option<f64> {
        match self.editing {
            Editing::Off => None,
            Editing::Threshold(t) => Some(t),
        }
    }

    /// Sets one field by name from text; on error nothing changes.
    pub fn set(&mut self, name: &str, value: &str) -> Result<()> {
        let mut next = self.clone();
        next.assign(name, value)?;
        next.validate()?;
        *self = next;
        Ok(())
    }

    /// Writes one setting from its text, unchecked against the others ([`DecodeSettings::set`] validates).
    fn assign(&mut self, name: &str, value: &str) -> Result<()> {
        let next = self;
        let v = value.trim();
        let num = |what: &'static str| v.parse::<f64>().map_err(|_| Error::invalid(what, v, "expected a number"));
        let int = |what: &'static str| v.parse::<i64>().map_err(|_| Error::invalid(what, v, "expected an integer"));
        let off = matches!(v.to_ascii_lowercase().as_str(), "off" | "none");
        match name {
            "gen_length" => next.gen_length = int("gen_length")?,
            "block_length" => next.block_length = int("block_length")?,
            "threshold" => next.threshold = num("threshold")?,
            "edit_threshold" => next.editing = if off { Editing::Off } else { Editing::Threshold(num("edit_threshold")?) },
            "edit_timing" => {
                next.edit_timing = match v {
                    "always" => EditTiming::Always,
                    "after-masks" => EditTiming::AfterMasks,
                    _ => return Err(Error::invalid("edit_timing", v, "expected always or after-masks")),
                }
            }
            "max_post_steps" => next.max_post_steps = int("max_post_steps")?,
            "num_to_transfer" => next.num_to_transfer = int("num_to_transfer")?,
            "fallback_steps" => next.fallback_steps = if off { None } else { Some(int("fallback_steps")?) },
            "temperature" => next.temperature = num("temperature")?,
            "top_k" => next.top_k = if off { None } else { Some(int("top_k")?) },
            "top_p" => next.top_p = if off { None } else { Some(num("top_p")?) },
            "penalty_lambda" => next.penalty_lambda = num("penalty_lambda")?,
            "eos_early_stop" => {
                next.eos_early_stop = match v {
                    "true" | "on" | "yes" | "1" => true,
                    "false" | "off" | "no" | "0" => false,
                    _ => return Err(Error::invalid("eos_early_stop", v, "expected true or false")),
                }
            }
            "attention" => {
                next.attention = match v {
                    "block-causal" => MaskKind::BlockCausal,
                    "hf-additive" => MaskKind::HfAdditive,
                    _ => return Err(Error::invalid("attention", v, "expected block-causal or hf-additive")),
                }
            }
            "mbe_window" => next.mbe_window = int("mbe_window")?,
            "seed" => next.seed = v.parse::<u64>().map_err(|_| Error::invalid("seed", v, "expected a non-negative integer"))?,
            "edit_ops" => next.edit_ops = choice("edit_ops", v, &[("substitute", EditOps::Substitute), ("levenshtein", EditOps::Levenshtein)])?,
            "schedule_steps" => next.schedule_steps = if off { None } else { Some(int("schedule_steps")?) },
            "post_counter" => next.post_counter = choice("post_counter", v, &[("reset", PostCounter::Reset), ("cumulative", PostCounter::Cumulative)])?,
            "final_trigger" => next.final_trigger = choice("final_trigger", v, &[("reference", FinalTrigger::Reference), ("sglang", FinalTrigger::Sglang)])?,
            "final_forbid" => next.final_forbid = choice("final_forbid", v, &[("edits", FinalForbid::Edits), ("edits+mask", FinalForbid::EditsAndMask)])?,
            "mask_fallback" => next.mask_fallback = choice("mask_fallback", v, &[("true", true), ("on", true), ("false", false), ("off", false)])?,
            "antiloop" => next.antiloop = choice("antiloop", v, &[("random", AntiLoop::Random), ("lowest", AntiLoop::Lowest), ("off", AntiLoop::Off)])?,
            "max_steps_per_block" => {
                next.max_steps_per_block = if v == "auto" { None } else { Some(int("max_steps_per_block")?) }
            }
            "cap_action" => next.cap_action = choice("cap_action", v, &[("error", CapAction::Error), ("final", CapAction::Final)])?,
            _ => {
                let names: Vec<&str> = SETTINGS.iter().map(|s| s.0).collect();
                return Err(Error::invalid("setting", name, format!("known settings: {}", names.join(", "))));
            }
        }
        Ok(())
    }

    /// The value of one field as text (as `set` accepts it).
    pub fn get(&self, name: &str) -> Option<String> {
        let opt = |o: Option<String>| o.unwrap_or_else(|| "off".into());
        Some(match name {
            "gen_length" => self.gen_length.to_string(),
            "block_length" => self.block_length.to_string(),
            "threshold" => self.threshold.to_string(),
            "edit_threshold" => opt(self.edit_threshold().map(|t| t.to_string())),
            "edit_timing" => match self.edit_timing {
                EditTiming::Always => "always".into(),
                EditTiming::AfterMasks => "after-masks".into(),
            },
            "max_post_steps" => self.max_post_steps.to_string(),
            "num_to_transfer" => self.num_to_transfer.to_string(),
            "fallback_steps" => opt(self.fallback_steps.map(|s| s.to_string())),
            "temperature" => self.temperature.to_string(),
            "top_k" => opt(self.top_k.map(|k| k.to_string())),
            "top_p" => opt(self.top_p.map(|p| p.to_string())),
            "penalty_lambda" => self.penalty_lambda.to_string(),
            "eos_early_stop" => self.eos_early_stop.to_string(),
            "attention" => match self.attention {
                MaskKind::BlockCausal => "block-causal".into(),
                MaskKind::HfAdditive => "hf-additive".into(),
            },
            "mbe_window" => self.mbe_window.to_string(),
            "seed" => self.seed.to_string(),
            "edit_ops" => match self.edit_ops {
                EditOps::Substitute => "substitute".into(),
                EditOps::Levenshtein => "levenshtein".into(),
            },
            "schedule_steps" => opt(self.schedule_steps.map(|s| s.to_string())),
            "post_counter" => match self.post_counter {
                PostCounter::Reset => "reset".into(),
                PostCounter::Cumulative => "cumulative".into(),
            },
            "final_trigger" => match self.final_trigger {
                FinalTrigger::Reference => "reference".into(),
                FinalTrigger::Sglang => "sglang".into(),
            },
            "final_forbid" => match self.final_forbid {
                FinalForbid::Edits => "edits".into(),
                FinalForbid::EditsAndMask => "edits+mask".into(),
            },
            "mask_fallback" => self.mask_fallback.to_string(),
            "antiloop" => match self.antiloop {
                AntiLoop::Off => "off".into(),
                AntiLoop::Random => "random".into(),
                AntiLoop::Lowest => "lowest".into(),
            },
            "max_steps_per_block" => self.max_steps_per_block.map_or_else(|| "auto".into(), |s| s.to_string()),
            "cap_action" => match self.cap_action {
                CapAction::Error => "error".into(),
                CapAction::Final => "final".into(),
            },
            _ => return None,
        })
    }
}

/// One of the named values of a setting; the error lists them.
fn choice<T: Copy>(setting: &'static str, v: &str, options: &[(&str, T)]) -> Result<T> {
    options.iter().find(|(name, _)| *name == v).map(|(_, t)| *t).ok_or_else(|| {
        let names: Vec<&str> = options.iter().map(|o| o.0).collect();
        Error::invalid(setting, v, format!("expected {}", names.join(" or ")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_row_is_settings_that_read_back_as_written() {
        for p in PRESETS {
            let mut d = DecodeSettings::official(64);
            d.apply_preset(p.name).unwrap();
            d.validate().unwrap();
            for (k, v) in PRESET_BASE.iter().filter(|(k, _)| !p.settings.iter().any(|(n, _)| n == k)).chain(p.settings) {
                assert_eq!(d.get(k).as_deref(), Some(*v), "{}: {k}", p.name);
            }
            for alias in p.aliases.iter().chain([&p.name.to_ascii_uppercase().as_str()]) {
                assert_eq!(find_preset(alias).map(|f| f.name), Some(p.name));
            }
        }
        // `llada2.1` takes any settings back to the official generate defaults (length and block kept).
        let mut d = DecodeSettings::official(64);
        d.block_length = 8;
        d.apply_preset("sglang-indel").unwrap();
        d.apply_preset("official").unwrap();
        assert_eq!(d, DecodeSettings { block_length: 8, ..DecodeSettings::official(64) });
        let e = DecodeSettings::official(8).apply_preset("fast").unwrap_err().to_string();
        assert!(e.contains("known presets: Q, S, ") && PRESETS.iter().all(|p| e.contains(p.name)), "{e}");
    }

    #[test]
    fn presets_set_what_their_sources_say() {
        let mut s = DecodeSettings::official(64);
        s.apply_preset("Q").unwrap();
        assert_eq!((s.threshold, s.editing, s.max_post_steps), (0.7, Editing::Threshold(0.5), 16));
        s.apply_preset("S").unwrap();
        assert_eq!((s.threshold, s.editing), (0.5, Editing::Threshold(0.0)));
        s.apply_preset("llada2.0").unwrap();
        assert_eq!((s.threshold, s.editing, s.fallback_steps, s.eos_early_stop), (0.95, Editing::Off, Some(32), true));
        s.apply_preset("diffusers").unwrap();
        assert_eq!(s.edit_timing, EditTiming::AfterMasks);
        assert!(s.eos_early_stop && s.fallback_steps.is_none());
        assert!(s.apply_preset("fast").unwrap_err().to_string().contains("known presets: Q, S, "));
        s.apply_preset("llada2.2").unwrap();
        assert_eq!((s.threshold, s.editing, s.max_post_steps), (0.5, Editing::Threshold(0.0), 16));
        assert_eq!((s.edit_ops, s.schedule_steps, s.max_steps_per_block), (EditOps::Levenshtein, Some(32), Some(1000)));
        assert_eq!((s.post_counter, s.antiloop, s.final_forbid, s.cap_action), (PostCounter::Reset, AntiLoop::Random, FinalForbid::Edits, CapAction::Error));
        assert!(s.eos_early_stop && !s.mask_fallback);
        s.apply_preset("sglang-indel").unwrap();
        assert_eq!((s.edit_ops, s.schedule_steps, s.num_to_transfer), (EditOps::Levenshtein, None, 1));
        assert_eq!((s.post_counter, s.final_trigger, s.final_forbid), (PostCounter::Cumulative, FinalTrigger::Sglang, FinalForbid::EditsAndMask));
        assert_eq!((s.antiloop, s.max_steps_per_block, s.cap_action), (AntiLoop::Lowest, None, CapAction::Final));
        assert!(s.mask_fallback);
        assert_eq!(s.step_cap(), 32 + 16 + 1);
        // Every 2.1 preset turns Levenshtein editing back off.
        s.apply_preset("S").unwrap();
        assert_eq!((s.edit_ops, s.schedule_steps, s.antiloop), (EditOps::Substitute, None, AntiLoop::Random));
    }

    #[test]
    fn the_llada2_2_schedule_spreads_the_generated_slots_and_may_give_zero() {
        let mut s = DecodeSettings::official(8);
        s.schedule_steps = Some(4);
        assert_eq!((0..5).map(|t| s.schedule_count(t, 10)).collect::<Vec<_>>(), vec![Some(3), Some(3), Some(2), Some(2), None]);
        assert_eq!((0..4).map(|t| s.schedule_count(t, 2)).collect::<Vec<_>>(), vec![Some(1), Some(1), Some(0), Some(0)]);
        s.schedule_steps = None;
        assert_eq!(s.schedule_count(0, 10), None);
    }

    #[test]
    fn edit_threshold_zero_is_not_off() {
        let mut s = DecodeSettings::official(8);
        s.set("edit_threshold", "0").unwrap();
        assert_eq!(s.edit_threshold(), Some(0.0));
        s.set("edit_threshold", "off").unwrap();
        assert_eq!(s.edit_threshold(), None);
        assert_eq!(s.get("edit_threshold").unwrap(), "off");
    }

    #[test]
    fn bad_values_are_rejected_and_change_nothing() {
        let mut s = DecodeSettings::official(8);
        let before = s.clone();
        for (name, value, says) in [
            ("threshold", "1.5", "must be in [0, 1]"),
            ("threshold", "high", "expected a number"),
            ("gen_length", "0", "from 1 to 1048576"),
            ("gen_length", "9223372036854775807", "from 1 to 1048576"),
            ("block_length", "9223372036854775807", "from 1 to 1048576"),
            ("top_p", "0", "(0, 1]"),
            ("attention", "full", "block-causal or hf-additive"),
            ("edit_ops", "indel", "substitute or levenshtein"),
            ("antiloop", "sometimes", "random or lowest or off"),
            ("max_steps_per_block", "0", "at least 1"),
            ("speed", "1", "known settings"),
        ] {
            let e = s.set(name, value).unwrap_err().to_string();
            assert!(e.contains(says), "{name}={value}: {e}");
        }
        assert_eq!(s, before);
    }

    #[test]
    fn every_setting_round_trips_through_get_and_set() {
        let mut s = DecodeSettings::official(8);
        for (name, _) in SETTINGS {
            let v = s.get(name).unwrap();
            s.set(name, &v).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert_eq!(s, DecodeSettings::official(8));
    }

    #[test]
    fn llada2_0_schedule_spreads_the_block_over_steps() {
        let mut s = DecodeSettings::official(8);
        s.block_length = 10;
        s.fallback_steps = Some(4);
        let counts: Vec<i64> = (0..6).map(|t| s.fallback_count(t)).collect();
        assert_eq!(counts, vec![3, 3, 2, 2, 1, 1]);
    }
}
