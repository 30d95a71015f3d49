//! LoRA adapters on the attention and feed-forward projections: `W x` becomes `W x + s B (A x)` with `A`
//! `[r, in]`, `B` `[out, r]`, `s = alpha / r`. Covered: the fused query/key/value and the output (`dense`)
//! projection of every attention; gate/up/down of the dense MLPs, of the shared experts and of every routed
//! expert (fused `[E, r, in]` / `[E, out, r]`, one pair per expert). The router, norms, embeddings and head are
//! not adapted.
//!
//! `B` starts at zero, so attaching adapters leaves the model's outputs unchanged; `A` starts at
//! `N(0, 1/in)` from the given seed. Adapters live in f32 in their own VarStore whatever the model's dtype (the
//! low-rank path runs in f32 and is cast back), under names next to their base weight:
//! `model.layers.3.attention.query_key_value.lora_A`. [`crate::Model::merge_lora`] folds them into the
//! weights (`W += s B A`) and drops them; [`crate::Model::merged_variables`] gives that sum without changing
//! the model (what checkpoints written of an adapted model hold).

use tch::{nn, Device, Kind, Tensor};

use crate::error::{Error, Result};

/// One adapted projection: `a` `[.., r, in]`, `b` `[.., out, r]` (a leading expert dimension when fused).
#[derive(Debug)]
pub(crate) struct Lora {
    pub(crate) a: Tensor,
    pub(crate) b: Tensor,
}

impl Lora {
    /// `s B (A x)`, computed in f32 and returned in `x`'s dtype.
    pub(crate) fn delta(&self, x: &Tensor, scale: f64) -> Tensor {
        (x.to_kind(Kind::Float).linear(&self.a, None::<&Tensor>).linear(&self.b, None::<&Tensor>) * scale).to_kind(x.kind())
    }

    /// The pair of expert `e` of a fused adapter.
    pub(crate) fn expert(&self, e: i64) -> Lora {
        Lora { a: self.a.get(e), b: self.b.get(e) }
    }

    /// `s B A`, the weight change this adapter stands for (`[out, in]`, or `[E, out, in]` fused).
    pub(crate) fn weight_delta(&self, scale: f64) -> Tensor {
        self.b.matmul(&self.a) * scale
    }
}

/// The adapters of a gate/up/down feed-forward (a dense MLP, the shared experts, or the fused routed experts).
#[derive(Debug)]
pub(crate) struct FfnLora {
    pub(crate) gate: Lora,
    pub(crate) up: Lora,
    pub(crate) down: Lora,
}

impl FfnLora {
    pub(crate) fn expert(&self, e: i64) -> FfnLora {
        FfnLora { gate: self.gate.expert(e), up: self.up.expert(e), down: self.down.expert(e) }
    }
}

/// One layer's adapters.
#[derive(Debug)]
pub(crate) struct LayerLora {
    pub(crate) qkv: Lora,
    pub(crate) dense: Lora,
    /// The dense MLP, or the fused routed experts of an MoE layer.
    pub(crate) ffn: FfnLora,
    pub(crate) shared: Option<FfnLora>,
}

/// Every layer's adapters, their rank and scale.
#[derive(Debug)]
pub struct Adapters {
    pub rank: i64,
    pub alpha: f64,
    vs: nn::VarStore,
    pub(crate) layers: Vec<LayerLora>,
}

impl Adapters {
    /// `alpha / rank`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// The adapter tensors by name (trainable, f32).
    pub fn variables(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    pub fn num_parameters(&self) -> i64 {
        self.vs.variables().values().map(|t| t.numel() as i64).sum()
    }
}

/// Writes `ad` alone into `dir/lora` (the folder a checkpoint keeps them in): `adapter.safetensors` (names as
/// [`Adapters::variables`]) and `adapter.json` with the rank, alpha and the fields of `meta` (an object), each
/// file atomically.
pub fn write_adapters(ad: &Adapters, dir: &std::path::Path, meta: serde_json::Value) -> Result<()> {
    let sub = dir.join("lora");
    std::fs::create_dir_all(&sub).map_err(|e| Error::io(&sub, e))?;
    let path = sub.join("adapter.safetensors");
    let tmp = sub.join(format!(".adapter.safetensors.tmp{}", std::process::id()));
    Tensor::write_safetensors(&ad.variables(), &tmp).map_err(|e| Error::io(&tmp, std::io::Error::other(e.to_string())))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    let mut json = serde_json::json!({ "rank": ad.rank, "alpha": ad.alpha });
    if let (Some(all), serde_json::Value::Object(extra)) = (json.as_object_mut(), meta) {
        all.extend(extra);
    }
    crate::checkpoint::write_atomic(&sub.join("adapter.json"), serde_json::to_string_pretty(&json).expect("json").as_bytes())
}

/// Builds adapters of `rank` for weights of the given shapes, registering them in a fresh VarStore.
pub(crate) struct Builder {
    vs: nn::VarStore,
    rank: i64,
    seed: u64,
    count: u64,
}

impl Builder {
    pub(crate) fn new(rank: i64, alpha: f64, seed: u64, device: Device) -> Result<Builder> {
        if rank < 1 {
            return Err(Error::invalid("lora rank", rank, "must be at least 1"));
        }
        if !(alpha.is_finite() && alpha > 0.0) {
            return Err(Error::invalid("lora alpha", alpha, "must be a positive number"));
        }
        Ok(Builder { vs: nn::VarStore::new(device), rank, seed, count: 0 })
    }

    /// The adapter of the weight `name` whose shape is `[out, in]` or `[E, out, in]`.
    pub(crate) fn lora(&mut self, name: &str, shape: &[i64]) -> Lora {
        let (lead, out, inp) = match shape {
            [o, i] => (vec![], *o, *i),
            [e, o, i] => (vec![*e], *o, *i),
            _ => unreachable!("projection weights are 2-D or fused 3-D"),
        };
        let dev = self.vs.device();
        let a_shape: Vec<i64> = lead.iter().copied().chain([self.rank, inp]).collect();
        let b_shape: Vec<i64> = lead.iter().copied().chain([out, self.rank]).collect();
        self.count += 1;
        let a = crate::weights::with_global_seed(self.seed.wrapping_add(self.count), || {
            Tensor::randn(a_shape.as_slice(), (Kind::Float, dev)) * (1.0 / (inp as f64).sqrt())
        });
        let b = Tensor::zeros(b_shape.as_slice(), (Kind::Float, dev));
        let mut p = self.vs.root();
        for part in name.split('.') {
            p = p / part;
        }
        Lora { a: p.add("lora_A", a, true), b: p.add("lora_B", b, true) }
    }

    pub(crate) fn finish(self, alpha: f64, layers: Vec<LayerLora>) -> Adapters {
        Adapters { rank: self.rank, alpha, vs: self.vs, layers }
    }
}
