//! Quantized routed experts: weights kept in one byte per value, dequantized per expert just before its matmul.
//!
//! The routed experts hold about 95% of a LLaDA2.x model's weights, so they are what is quantized; the router,
//! norms, attention, dense and shared MLPs, embeddings and LM head stay in the run dtype.
//! - `int8`: symmetric, one f32 scale per output channel (row): `w ~= q * scale`, `q` in -127..=127,
//!   `scale = max|w_row| / 127`.
//! - `fp8`: e4m3 (`float8_e4m3fn`, largest 448) with one f32 scale per block of 128 x 128 weights (rows x
//!   columns, the last blocks short): `w ~= q * scale`, `scale = max|w_block| / 448` (the LLaDA2.2 report's
//!   per-block FP8; DeepSeek-V3's layout).
//!
//! An all-zero row or block gets scale 1, so zeros stay zeros and nothing divides by zero. Quantizing always
//! computes in f32 from whatever dtype the weights arrive in.
//!
//! On disk ([`crate::checkpoint`]) each expert's projection is two tensors: `...experts.{e}.{proj}.weight`
//! (I8 or F8_E4M3) and `...experts.{e}.{proj}.weight_scale` (F32, `[rows, 1]` for int8, `[ceil(rows/128),
//! ceil(cols/128)]` for fp8), and config.json names the format in `quantization_config` ([`Quantization::to_json`]).

use std::str::FromStr;

use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::fp8_matmul::ExpertMatmul;

/// Rows and columns of one fp8 scale block.
pub const FP8_BLOCK: i64 = 128;
/// The largest finite float8_e4m3fn value.
pub const FP8_MAX: f64 = 448.0;

/// How routed-expert weights are stored in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    /// int8 with a scale per output channel.
    Int8,
    /// float8 e4m3 with a scale per 128 x 128 block.
    Fp8,
}

impl Quantization {
    /// What `--quantize` and `load ... quantize=` give: absent, `none`, `off` or `full` is `None`.
    pub fn parse_option(s: Option<&str>) -> Result<Option<Quantization>> {
        let Some(s) = s else { return Ok(None) };
        match s.to_ascii_lowercase().as_str() {
            "none" | "off" | "full" => Ok(None),
            other => other.parse().map(Some).map_err(|_| Error::invalid("quantization", s, "expected none, int8 or fp8")),
        }
    }

    /// What the format is, in a line.
    pub fn about(self) -> &'static str {
        match self {
            Quantization::Int8 => "routed experts in int8, one scale per output channel",
            Quantization::Fp8 => "routed experts in float8 e4m3, one scale per 128 x 128 block",
        }
    }

    /// The element type of the quantized values.
    pub fn kind(self) -> Kind {
        match self {
            Quantization::Int8 => Kind::Int8,
            Quantization::Fp8 => Kind::Float8e4m3fn,
        }
    }

    /// The shape of the scales of one `[rows, cols]` weight.
    pub fn scale_shape(self, rows: i64, cols: i64) -> [i64; 2] {
        match self {
            Quantization::Int8 => [rows, 1],
            Quantization::Fp8 => [(rows + FP8_BLOCK - 1) / FP8_BLOCK, (cols + FP8_BLOCK - 1) / FP8_BLOCK],
        }
    }

    /// Bytes of `count` quantized `[rows, cols]` weights with their scales.
    pub fn bytes(self, count: i64, rows: i64, cols: i64) -> u64 {
        let [sr, sc] = self.scale_shape(rows, cols);
        (count as u64) * ((rows * cols) as u64 + 4 * (sr * sc) as u64)
    }

    /// config.json's `quantization_config` for a checkpoint saved in this format.
    pub fn to_json(self) -> serde_json::Value {
        let mut v = serde_json::json!({ "quant_method": "dllm", "format": self.to_string(), "modules": ["mlp.experts"] });
        if self == Quantization::Fp8 {
            v["fmt"] = "e4m3".into();
            v["weight_block_size"] = serde_json::json!([FP8_BLOCK, FP8_BLOCK]);
        }
        v
    }

    /// Reads `quantization_config` as [`Quantization::to_json`] writes it; another quantizer's layout is
    /// refused by name.
    pub fn from_json(v: &serde_json::Value) -> std::result::Result<Quantization, String> {
        let method = v.get("quant_method").and_then(|m| m.as_str()).unwrap_or("(none)");
        if method != "dllm" {
            return Err(format!(
                "quant_method {method:?} is not supported: dllm reads the checkpoints it quantized itself (quant_method \"dllm\"); \
                 load a bf16 or f32 checkpoint with --quantize int8|fp8 instead"
            ));
        }
        let format = v.get("format").and_then(|f| f.as_str()).unwrap_or("(none)");
        let q: Quantization = format.parse().map_err(|_| format!("format {format:?}: expected \"int8\" or \"fp8\""))?;
        if q == Quantization::Fp8 {
            let block = v.get("weight_block_size").cloned().unwrap_or(serde_json::Value::Null);
            if block != serde_json::json!([FP8_BLOCK, FP8_BLOCK]) {
                return Err(format!("weight_block_size {block}: dllm's fp8 uses [{FP8_BLOCK}, {FP8_BLOCK}]"));
            }
        }
        Ok(q)
    }
}

impl FromStr for Quantization {
    type Err = Error;
    fn from_str(s: &str) -> Result<Quantization> {
        match s.to_ascii_lowercase().as_str() {
            "int8" | "i8" => Ok(Quantization::Int8),
            "fp8" | "f8" | "e4m3" | "fp8-e4m3" => Ok(Quantization::Fp8),
            _ => Err(Error::invalid("quantization", s, "expected int8 or fp8")),
        }
    }
}

impl std::fmt::Display for Quantization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Quantization::Int8 => "int8",
            Quantization::Fp8 => "fp8",
        })
    }
}

/// Quantized weights `[.., rows, cols]` (one matrix, or one per expert) and their f32 scales.
#[derive(Debug)]
pub struct QTensor {
    pub format: Quantization,
    /// int8 or float8_e4m3fn, `[.., rows, cols]`.
    pub data: Tensor,
    /// f32, `[.., rows, 1]` (int8) or `[.., ceil(rows/128), ceil(cols/128)]` (fp8).
    pub scale: Tensor,
}

impl QTensor {
    /// Quantizes `w` (`[.., rows, cols]`, any float dtype), on `w`'s device.
    pub fn quantize(w: &Tensor, format: Quantization) -> QTensor {
        tch::no_grad(|| {
            let w = w.to_kind(Kind::Float);
            let size = w.size();
            let (rows, cols) = (size[size.len() - 2], size[size.len() - 1]);
            let (scale, max) = match format {
                Quantization::Int8 => (w.abs().amax(-1, true) / 127.0, 127.0),
                Quantization::Fp8 => (block_amax(&w, rows, cols) / FP8_MAX, FP8_MAX),
            };
            // An all-zero row or block: scale 1 (its values quantize to 0 either way).
            let scale = scale.where_self(&scale.gt(0.0), &scale.ones_like());
            let scaled = &w / expand(&scale, format, rows, cols);
            let data = match format {
                Quantization::Int8 => scaled.round().clamp(-max, max).to_kind(Kind::Int8),
                Quantization::Fp8 => scaled.clamp(-max, max).to_kind(Kind::Float8e4m3fn),
            };
            QTensor { format, data, scale }
        })
    }

    /// Checks the parts read from a checkpoint against the expected `[.., rows, cols]` shape.
    pub fn from_parts(format: Quantization, data: Tensor, scale: Tensor, name: &str) -> Result<QTensor> {
        let size = data.size();
        let (rows, cols) = (size[size.len() - 2], size[size.len() - 1]);
        let mut want = size[..size.len() - 2].to_vec();
        want.extend(format.scale_shape(rows, cols));
        if scale.size() != want || scale.kind() != Kind::Float || data.kind() != format.kind() {
            return Err(Error::invalid(
                "quantized weight",
                name,
                format!("{format} wants {:?} data and f32 scales {want:?}, found {:?} and {:?} {:?}", format.kind(), data.kind(), scale.kind(), scale.size()),
            ));
        }
        Ok(QTensor { format, data, scale })
    }

    /// The weights in `kind`: `q * scale`, computed in f32.
    pub fn dequantize(&self, kind: Kind) -> Tensor {
        let size = self.data.size();
        let (rows, cols) = (size[size.len() - 2], size[size.len() - 1]);
        (self.data.to_kind(Kind::Float) * expand(&self.scale, self.format, rows, cols)).to_kind(kind)
    }

    /// Entry `i` of the leading dimension (one expert), sharing storage.
    pub fn get(&self, i: i64) -> QTensor {
        QTensor { format: self.format, data: self.data.get(i), scale: self.scale.get(i) }
    }

    pub fn shallow_clone(&self) -> QTensor {
        QTensor { format: self.format, data: self.data.shallow_clone(), scale: self.scale.shallow_clone() }
    }

    /// The shape of the weights it stands for.
    pub fn size(&self) -> Vec<i64> {
        self.data.size()
    }

    /// Bytes held (values and scales).
    pub fn bytes(&self) -> usize {
        crate::model::tensor_bytes(&self.data) + crate::model::tensor_bytes(&self.scale)
    }
}

/// One projection of a layer's routed experts, `[E, rows, cols]`: in the run dtype, or quantized.
#[derive(Debug)]
pub(crate) enum ExpertWeights {
    Full(Tensor),
    Quantized(QTensor),
}

impl ExpertWeights {
    /// `x @ W_e^T` for expert `e`, in `x`'s dtype: a view of the full tensor, or the quantized expert
    /// dequantized just for this matmul (a fresh tensor, dropped after it), or fp8 along `fp8` ([`crate::fp8_matmul`]).
    pub(crate) fn linear(&self, e: i64, x: &Tensor, fp8: ExpertMatmul) -> Tensor {
        match self {
            ExpertWeights::Full(t) => x.linear(&t.get(e), None::<&Tensor>),
            ExpertWeights::Quantized(q) if q.format == Quantization::Fp8 => crate::fp8_matmul::linear(x, &q.get(e), fp8),
            ExpertWeights::Quantized(q) => x.linear(&q.get(e).dequantize(x.kind()), None::<&Tensor>),
        }
    }

    /// [`ExpertWeights::linear`] of one `x` against two projections of expert `e` (gate and up): fp8 on the
    /// fast paths quantizes `x` once for both.
    pub(crate) fn linear_pair(e: i64, x: &Tensor, [a, b]: [&ExpertWeights; 2], fp8: ExpertMatmul) -> [Tensor; 2] {
        match (a, b) {
            (ExpertWeights::Quantized(qa), ExpertWeights::Quantized(qb)) if qa.format == Quantization::Fp8 && qb.format == Quantization::Fp8 => {
                crate::fp8_matmul::linear_many(x, [&qa.get(e), &qb.get(e)], fp8)
            }
            _ => [a.linear(e, x, fp8), b.linear(e, x, fp8)],
        }
    }

    /// Expert `e`'s quantized weights, if it is held quantized.
    pub(crate) fn quantized(&self, e: i64) -> Option<QTensor> {
        match self {
            ExpertWeights::Full(_) => None,
            ExpertWeights::Quantized(q) => Some(q.get(e)),
        }
    }

    pub(crate) fn size(&self) -> Vec<i64> {
        match self {
            ExpertWeights::Full(t) => t.size(),
            ExpertWeights::Quantized(q) => q.size(),
        }
    }

    pub(crate) fn bytes(&self) -> usize {
        match self {
            ExpertWeights::Full(t) => crate::model::tensor_bytes(t),
            ExpertWeights::Quantized(q) => q.bytes(),
        }
    }
}

/// How far one model's next-token distributions are from another's over the same positions: the fidelity of
/// a quantized model against the full one.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Fidelity {
    pub positions: i64,
    /// The largest |p - q| over every position and token.
    pub max_abs_dp: f64,
    /// The share of positions whose most likely token is the same.
    pub top1_agreement: f64,
    /// KL(p || q) in nats, mean and largest over positions (p: the reference).
    pub kl_mean: f64,
    pub kl_max: f64,
}

impl Fidelity {
    /// Compares logits `[.., vocab]` of `reference` and `other` (any float type; computed in f64).
    pub fn of(reference: &Tensor, other: &Tensor) -> Fidelity {
        tch::no_grad(|| {
            let v = *reference.size().last().unwrap_or(&1);
            let (a, b) = (reference.to_kind(Kind::Double).reshape([-1, v]), other.to_kind(Kind::Double).reshape([-1, v]));
            let (la, lb) = (a.log_softmax(-1, Kind::Double), b.log_softmax(-1, Kind::Double));
            let (pa, pb) = (la.exp(), lb.exp());
            let kl = (&pa * (&la - &lb)).sum_dim_intlist(-1, false, Kind::Double);
            let agree = a.argmax(-1, false).eq_tensor(&b.argmax(-1, false)).to_kind(Kind::Double).mean(Kind::Double);
            Fidelity {
                positions: a.size()[0],
                max_abs_dp: (pa - pb).abs().max().double_value(&[]),
                top1_agreement: agree.double_value(&[]),
                kl_mean: kl.mean(Kind::Double).double_value(&[]),
                kl_max: kl.max().double_value(&[]),
            }
        })
    }
}

/// The largest |w| of every 128 x 128 block of `w` (`[.., rows, cols]`, f32): `[.., ceil(rows/128), ceil(cols/128)]`.
fn block_amax(w: &Tensor, rows: i64, cols: i64) -> Tensor {
    let (br, bc) = ((rows + FP8_BLOCK - 1) / FP8_BLOCK, (cols + FP8_BLOCK - 1) / FP8_BLOCK);
    let lead = &w.size()[..w.dim() - 2];
    let padded = w.abs().constant_pad_nd([0, bc * FP8_BLOCK - cols, 0, br * FP8_BLOCK - rows]);
    let mut shape = lead.to_vec();
    shape.extend([br, FP8_BLOCK, bc, FP8_BLOCK]);
    let n = shape.len() as i64;
    padded.view(shape.as_slice()).amax([n - 3, n - 1], false)
}

/// Scales broadcast to the weights' `[.., rows, cols]`: int8's `[.., rows, 1]` broadcasts as it is; fp8's
/// blocks are repeated 128 times along both axes and cut to size.
fn expand(scale: &Tensor, format: Quantization, rows: i64, cols: i64) -> Tensor {
    match format {
        Quantization::Int8 => scale.shallow_clone(),
        Quantization::Fp8 => {
            let d = scale.dim() as i64;
            scale
                .repeat_interleave_self_int(FP8_BLOCK, Some(d - 2), None)
                .narrow(d - 2, 0, rows)
                .repeat_interleave_self_int(FP8_BLOCK, Some(d - 1), None)
                .narrow(d - 1, 0, cols)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn randn(shape: &[i64], seed: i64) -> Tensor {
        tch::manual_seed(seed);
        Tensor::randn(shape, (Kind::Float, Device::Cpu))
    }

    fn max_abs(t: &Tensor) -> f64 {
        t.abs().max().double_value(&[])
    }

    #[test]
    fn int8_hand_checked() {
        // Row 0: max 2.54 -> scale 0.02; 1.0 / 0.02 = 50; -2.54 -> -127; 0.062 -> 3.1 -> 3. Row 1 is all zero: scale 1, zeros.
        let w = Tensor::from_slice(&[1.0f32, -2.54, 0.062, 0.0, 0.0, 0.0]).view([2, 3]);
        let q = QTensor::quantize(&w, Quantization::Int8);
        assert_eq!(Vec::<i8>::try_from(&q.data.reshape([-1])).unwrap(), vec![50, -127, 3, 0, 0, 0]);
        let s = Vec::<f32>::try_from(&q.scale.reshape([-1])).unwrap();
        assert!((s[0] - 0.02).abs() < 1e-7 && s[1] == 1.0, "{s:?}");
        assert_eq!(q.scale.size(), vec![2, 1]);
        let back = Vec::<f32>::try_from(&q.dequantize(Kind::Float).reshape([-1])).unwrap();
        assert!((back[0] - 1.0).abs() < 1e-6 && (back[1] + 2.54).abs() < 1e-6 && (back[2] - 0.06).abs() < 1e-6, "{back:?}");
    }

    #[test]
    fn int8_error_is_at_most_half_a_step_per_row() {
        let w = randn(&[3, 40, 70], 1);
        let q = QTensor::quantize(&w, Quantization::Int8);
        assert_eq!((q.data.size(), q.scale.size()), (vec![3, 40, 70], vec![3, 40, 1]));
        let err = (q.dequantize(Kind::Float) - &w).abs();
        let bound = &q.scale * 0.5 + 1e-7;
        assert!(err.le_tensor(&bound).all().int64_value(&[]) == 1, "error above half a step");
        // Every row's largest value is exact in magnitude (it maps to +-127).
        let rowmax = w.abs().amax(-1, false);
        let back = q.dequantize(Kind::Float).abs().amax(-1, false);
        assert!(max_abs(&(rowmax - back)) < 1e-5);
    }

    #[test]
    fn fp8_blocks_cover_ragged_shapes() {
        // 200 x 300: blocks of 128 give a 2 x 3 grid, the last row and column of blocks short.
        let w = randn(&[200, 300], 2);
        // Make block (1, 2) much larger, to show that its scale is its own.
        let _ = w.narrow(0, 128, 72).narrow(1, 256, 44).g_mul_scalar_(1000.0);
        let q = QTensor::quantize(&w, Quantization::Fp8);
        assert_eq!((q.data.kind(), q.scale.size()), (Kind::Float8e4m3fn, vec![2, 3]));
        let s = Vec::<f32>::try_from(&q.scale.reshape([-1])).unwrap();
        let amax = |r: i64, rn: i64, c: i64, cn: i64| max_abs(&w.narrow(0, r, rn).narrow(1, c, cn)) as f32;
        assert!((s[0] - amax(0, 128, 0, 128) / 448.0).abs() < 1e-6, "{s:?}");
        assert!((s[5] - amax(128, 72, 256, 44) / 448.0).abs() < 1e-3, "{s:?}");
        assert!(s[5] > 100.0 * s[4], "the large block has its own scale: {s:?}");
        // e4m3 keeps 3 mantissa bits: relative error at most 2^-4 for normal values.
        let back = q.dequantize(Kind::Float);
        let small = w.abs().gt_tensor(&(expand(&q.scale, Quantization::Fp8, 200, 300) * 0.02));
        let rel = ((&back - &w).abs() / w.abs().clamp_min(1e-12)).masked_select(&small);
        assert!(max_abs(&rel) <= 1.0 / 16.0 + 1e-6, "relative error {}", max_abs(&rel));
    }

    #[test]
    fn per_expert_slices_match_the_whole() {
        let w = randn(&[4, 130, 129], 3);
        for f in [Quantization::Int8, Quantization::Fp8] {
            let q = QTensor::quantize(&w, f);
            let whole = q.dequantize(Kind::Float);
            for e in 0..4 {
                let one = QTensor::quantize(&w.get(e), f);
                assert!(one.data.to_kind(Kind::Float).equal(&q.get(e).data.to_kind(Kind::Float)), "{f} expert {e}");
                assert!(q.get(e).dequantize(Kind::Float).equal(&whole.get(e)), "{f} expert {e}");
            }
        }
    }

    #[test]
    fn zero_and_bf16_inputs() {
        for f in [Quantization::Int8, Quantization::Fp8] {
            let z = Tensor::zeros([3, 5], (Kind::BFloat16, Device::Cpu));
            let q = QTensor::quantize(&z, f);
            assert_eq!(max_abs(&q.dequantize(Kind::BFloat16)), 0.0, "{f}");
            assert!(q.scale.eq(1.0).all().int64_value(&[]) == 1, "{f}");
        }
    }

    #[test]
    fn names_and_config_round_trip() {
        for f in [Quantization::Int8, Quantization::Fp8] {
            assert_eq!(f.to_string().parse::<Quantization>().unwrap(), f);
            assert_eq!(Quantization::from_json(&f.to_json()).unwrap(), f);
        }
        assert_eq!(Quantization::parse_option(Some("none")).unwrap(), None);
        assert_eq!(Quantization::parse_option(None).unwrap(), None);
        assert!(Quantization::parse_option(Some("int4")).unwrap_err().to_string().contains("int8 or fp8"));
        let e = Quantization::from_json(&serde_json::json!({"quant_method": "fp8", "weight_block_size": [128, 128]})).unwrap_err();
        assert!(e.contains("\"fp8\" is not supported"), "{e}");
        assert_eq!(Quantization::Int8.bytes(2, 4, 8), 2 * (32 + 16));
        assert_eq!(Quantization::Fp8.bytes(1, 256, 129), 256 * 129 + 4 * 2 * 2);
    }
}
