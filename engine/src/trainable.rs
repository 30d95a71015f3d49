//! Which parameters a run trains (RL updates and fine-tuning alike): the `Trainable` choices, selecting them
//! on a model (attaching LoRA adapters for `lora:R`), and freezing the rest.

use tch::Tensor;

use crate::error::{Error, Result};
use crate::model::Model;

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


/// The trainable tensors of `t` on `model` (attaching LoRA adapters when asked).
pub fn select(model: &mut Model, t: &Trainable) -> Result<Vec<(String, Tensor)>> {
    let mut vars: Vec<(String, Tensor)> = model.var_store().variables().into_iter().filter(|(n, _)| !n.ends_with("expert_bias")).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let layers = model.config().num_hidden_layers;
    if let Some(q) = model.quantization() {
        // Quantized experts are not parameters: `all` or a range over MoE layers would silently leave them out.
        let moe = |from: i64, to: i64| (from..to.min(layers)).any(|i| model.config().is_moe_layer(i));
        if matches!(t, Trainable::All) || matches!(t, Trainable::Layers { from, to } if moe(*from, *to)) {
            return Err(Error::invalid(
                "trainable",
                t.describe(),
                format!("the routed experts are held in {q} and cannot be trained; train lora:R (adapters over them) or lm-head, or load the model without quantize"),
            ));
        }
    }
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
pub fn freeze_except(model: &Model, params: &[(String, Tensor)]) {
    let keep: std::collections::HashSet<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
    let adapters = model.lora().map(|a| a.variables()).unwrap_or_default();
    for (name, t) in model.var_store().variables().into_iter().chain(adapters) {
        if !name.ends_with("expert_bias") {
            let _ = t.set_requires_grad(keep.contains(name.as_str()));
        }
    }
}

/// Refuses training `params` when their gradients and two AdamW moments (three more copies, f32 or the
/// parameters' dtype) cannot fit beside the model ([`crate::memory`]), before any of them is allocated.
pub fn check_training_memory(model: &Model, params: &[(String, Tensor)]) -> Result<()> {
    let bytes: u64 = params.iter().map(|(_, t)| (t.numel() * t.kind().elt_size_in_bytes()) as u64).sum();
    let n: usize = params.iter().map(|(_, t)| t.numel()).sum();
    model.check_memory(
        || format!("training {n} parameters (their gradients and two AdamW moments)"),
        bytes.saturating_mul(3),
        "train fewer parameters (lora:R, layers:A-B or lm-head)",
    )
}

/// Unfreezes every parameter of `model` (the end of a run on it); the expert bias stays a buffer.
pub fn release(model: &Model) {
    for (name, t) in model.var_store().variables() {
        if !name.ends_with("expert_bias") {
            let _ = t.set_requires_grad(true);
        }
    }
}
