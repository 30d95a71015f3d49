//! How fp8 routed experts multiply: dequantized first (any device), or fp8 x fp8 on the tensor cores of an
//! H100/H200 (the fast path), or that fast path's arithmetic emulated in f32 (any device, to see its effect).
//!
//! The fast path is DeepSeek-V3's recipe, which torch's `_scaled_mm` runs through cuBLASLt on compute
//! capability 9.x: the activations `x` `[M, K]` are quantized to e4m3 with one f32 scale per 1 x 128 block of
//! each row (`x ~= q * scale`, `scale = max|block| / 448`), the weights are the checkpoint's e4m3 values with
//! their 128 x 128 block scales ([`crate::quant`]), and the product comes back in bf16:
//! `out[m, n] = sum_kb sa[m, kb] * sw[n / 128, kb] * sum_{k in kb} qa[m, k] * qw[n, k]`.
//! So the fast path adds one rounding the dequantize path does not have: the activations' to 3 mantissa bits.
//! [`Operands::reference`] computes the same sum in f32 from the same operands; it is what `emulated` runs and what the
//! fast path is checked against.
//!
//! `_scaled_mm` wants its operands laid out just so ([`Operands`]): `a` row-major `[M, K]`; `b` the weights
//! transposed, `[K, N]` column-major (a view); `scale_a` `[M, ceil(K/128)]` outer-dim-major (strides `(1, M)`);
//! `scale_b` the block scales transposed, `[ceil(K/128), ceil(N/128)]` (a view). Rows are padded with zeros to a
//! multiple of 16 (cuBLASLt's alignment), and cut off again.
//!
//! Whether the fast path runs is decided by a probe when the model is built ([`probe`]): on a CUDA device, one
//! expert's projections are multiplied both ways on random activations, and the fast path is kept only if it
//! agrees with [`Operands::reference`]. Everywhere else, and whenever the probe fails, the experts are dequantized; the
//! reason is kept for `info`.

use std::str::FromStr;

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::quant::{QTensor, Quantization, FP8_BLOCK, FP8_MAX};

/// The largest relative error (Frobenius) of the fast path against [`Operands::reference`] that the probe accepts: bf16
/// output rounding is 2^-9 relative per element; a wrong layout or scale is off by far more than a percent.
pub const PROBE_TOLERANCE: f64 = 1e-2;

/// How fp8 expert matmuls run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExpertMatmul {
    /// Dequantize the expert into the run dtype, then an ordinary matmul (any device; int8 always runs so).
    Dequantize,
    /// fp8 x fp8 on the tensor cores: torch `_scaled_mm`, activations quantized per 1 x 128 block.
    Scaled,
    /// The fast path's arithmetic (fp8 activations and all) in f32, on any device.
    Emulated,
}

/// What `--fp8-matmul` and `fp8_matmul=` ask for: a path, or `auto` (the fast path where its probe passes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fp8MatmulChoice {
    Auto,
    Exactly(ExpertMatmul),
}

impl FromStr for Fp8MatmulChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Fp8MatmulChoice> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "auto" => Fp8MatmulChoice::Auto,
            "dequantize" | "dequant" => Fp8MatmulChoice::Exactly(ExpertMatmul::Dequantize),
            "scaled" | "fast" => Fp8MatmulChoice::Exactly(ExpertMatmul::Scaled),
            "emulated" | "emulate" => Fp8MatmulChoice::Exactly(ExpertMatmul::Emulated),
            _ => return Err(Error::invalid("fp8 matmul", s, "expected auto, dequantize, scaled or emulated")),
        })
    }
}

impl std::fmt::Display for ExpertMatmul {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ExpertMatmul::Dequantize => "dequantize",
            ExpertMatmul::Scaled => "scaled",
            ExpertMatmul::Emulated => "emulated",
        })
    }
}

/// The path a model's fp8 experts take, and why (for `info`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MatmulPath {
    pub path: ExpertMatmul,
    pub why: String,
}

impl MatmulPath {
    pub fn dequantize(why: impl Into<String>) -> MatmulPath {
        MatmulPath { path: ExpertMatmul::Dequantize, why: why.into() }
    }
}

/// The activations quantized per 1 x 128 block of each row: e4m3 values `[M, K]` and f32 scales
/// `[M, ceil(K/128)]` (contiguous). An all-zero block gets scale 1.
pub fn quantize_rows(x: &Tensor) -> (Tensor, Tensor) {
    tch::no_grad(|| {
        let x = x.to_kind(Kind::Float);
        let (m, k) = (x.size()[0], x.size()[1]);
        let kb = (k + FP8_BLOCK - 1) / FP8_BLOCK;
        // Every kernel counts at the few rows an expert sees in a block step: pad only when K is ragged.
        let padded = if k % FP8_BLOCK == 0 { x } else { x.constant_pad_nd([0, kb * FP8_BLOCK - k]) };
        let blocks = padded.view([m, kb, FP8_BLOCK]);
        let scale = blocks.abs().amax(-1, false) / FP8_MAX;
        let scale = scale.where_self(&scale.gt(0.0), &scale.ones_like());
        let q = (blocks / scale.unsqueeze(-1)).clamp(-FP8_MAX, FP8_MAX).view([m, kb * FP8_BLOCK]);
        let q = if k % FP8_BLOCK == 0 { q } else { q.narrow(1, 0, k).contiguous() };
        (q.to_kind(Kind::Float8e4m3fn), scale)
    })
}

/// The four operands of `_scaled_mm` for `x @ w^T`, laid out as cuBLASLt's block-scaled fp8 GEMM wants them,
/// and the number of real rows (the rest is padding).
#[derive(Debug)]
pub struct Operands {
    pub a: Tensor,
    pub b: Tensor,
    pub scale_a: Tensor,
    pub scale_b: Tensor,
    pub rows: i64,
}

/// Rows are padded to a multiple of this.
const ROW_ALIGN: i64 = 16;

impl Operands {
    /// `x` `[M, K]` (any float dtype) against one expert's fp8 weights `w` (`[N, K]`, 128 x 128 block scales).
    pub fn new(x: &Tensor, w: &QTensor) -> Operands {
        debug_assert_eq!(w.format, Quantization::Fp8);
        let rows = x.size()[0];
        let padded = (rows + ROW_ALIGN - 1) / ROW_ALIGN * ROW_ALIGN;
        let x = if padded == rows { x.shallow_clone() } else { x.constant_pad_nd([0, 0, 0, padded - rows]) };
        let (a, scale) = quantize_rows(&x);
        Operands { a, b: w.data.tr(), scale_a: scale.tr().contiguous().tr(), scale_b: w.scale.tr(), rows }
    }

    /// The same activations against other fp8 weights (the gate and up projections read one `x`): the
    /// activations are quantized once.
    pub fn with_weights(&self, w: &QTensor) -> Operands {
        Operands { a: self.a.shallow_clone(), b: w.data.tr(), scale_a: self.scale_a.shallow_clone(), scale_b: w.scale.tr(), rows: self.rows }
    }

    /// `_scaled_mm` on the device: `[rows, N]` in bf16. An error (torch's) where the device or build has no
    /// block-scaled fp8 GEMM (every CPU, GPUs before compute capability 9.0, cuBLASLt before 12.9).
    pub fn scaled_mm(&self) -> Result<Tensor> {
        let out = self
            .a
            .f_internal_scaled_mm(&self.b, &self.scale_a, &self.scale_b, None::<Tensor>, None::<Tensor>, Kind::BFloat16, false)
            .map_err(|e| Error::invalid("fp8 matmul", "scaled", first_line(&e.to_string())))?;
        Ok(out.narrow(0, 0, self.rows))
    }

    /// What [`Operands::scaled_mm`] computes, in f32 from the same operands, rounded to bf16 at the end as the
    /// fast path's output is: `[rows, N]`.
    pub fn reference(&self) -> Tensor {
        tch::no_grad(|| {
            let k = self.a.size()[1];
            let sa = self.scale_a.repeat_interleave_self_int(FP8_BLOCK, Some(1), None).narrow(1, 0, k);
            let a = self.a.to_kind(Kind::Float) * sa;
            let w = QTensor { format: Quantization::Fp8, data: self.b.tr(), scale: self.scale_b.tr() };
            a.matmul(&w.dequantize(Kind::Float).tr()).to_kind(Kind::BFloat16).narrow(0, 0, self.rows)
        })
    }
}

/// `x @ w^T` with one expert's fp8 weights `w`, along `path`, in `x`'s dtype.
///
/// `_scaled_mm` has no backward, and the activations' rounding has no useful one: where `x` needs a gradient
/// (LoRA training on fp8 experts), the fast paths pass it straight through, as the dequantize path's, while the
/// values stay theirs.
pub fn linear(x: &Tensor, w: &QTensor, path: ExpertMatmul) -> Tensor {
    let [y] = linear_many(x, [w], path);
    y
}

/// [`linear`] of one `x` against several fp8 weights (an expert's gate and up projections): on the fast
/// paths `x` is quantized once.
pub fn linear_many<const N: usize>(x: &Tensor, ws: [&QTensor; N], path: ExpertMatmul) -> [Tensor; N] {
    let dequantized = |w: &QTensor| x.linear(&w.dequantize(x.kind()), None::<&Tensor>);
    if path == ExpertMatmul::Dequantize {
        return ws.map(dequantized);
    }
    let mut ops: Option<Operands> = None;
    ws.map(|w| {
        let o = match &ops {
            Some(first) => first.with_weights(w),
            None => Operands::new(x, w),
        };
        let y = match path {
            ExpertMatmul::Scaled => match o.scaled_mm() {
                Ok(y) => y.to_kind(x.kind()),
                // The probe at build time ran this very call on this device; failing now is a bug, not an input.
                Err(e) => panic!("the fp8 fast path failed after its probe passed: {e}"),
            },
            _ => o.reference().to_kind(x.kind()),
        };
        ops.get_or_insert(o);
        if x.requires_grad() {
            let d = dequantized(w);
            return y.detach() + (&d - d.detach());
        }
        y
    })
}

/// `a`'s distance from `b`, relative: `||a - b|| / ||b||` (f64).
fn relative(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
    (a - &b).norm().double_value(&[]) / b.norm().double_value(&[]).max(f64::MIN_POSITIVE)
}

/// Runs the fast path on `weights` (fp8 experts of one or more projections, `[N, K]` each) and random
/// activations on `device`, against [`Operands::reference`]: the path to take and why.
pub fn probe(weights: &[QTensor], device: Device) -> MatmulPath {
    if !device.is_cuda() {
        let on = format!("{device:?}").to_lowercase();
        return MatmulPath::dequantize(format!("the fp8 fast path needs a CUDA GPU of compute capability 9.x (H100/H200); this model is on {on}"));
    }
    if weights.is_empty() {
        return MatmulPath::dequantize("the model has no routed experts to multiply");
    }
    let mut worst = (0.0f64, 0.0f64);
    for w in weights {
        let (n, k) = (w.data.size()[0], w.data.size()[1]);
        if n % 16 != 0 || k % 16 != 0 {
            return MatmulPath::dequantize(format!("the fp8 fast path needs expert sizes divisible by 16, not [{n}, {k}]"));
        }
        // 37 rows: not a multiple of the padding, and more than one tile.
        let x = crate::with_global_seed(11, || Tensor::randn([37, k], (Kind::BFloat16, device)));
        let ops = Operands::new(&x, w);
        let fast = match ops.scaled_mm() {
            Ok(y) => y,
            Err(e) => return MatmulPath::dequantize(format!("torch's _scaled_mm refused the fp8 fast path here: {e}")),
        };
        let err = relative(&fast, &ops.reference());
        if !(err <= PROBE_TOLERANCE) {
            return MatmulPath::dequantize(format!(
                "the fp8 fast path was off by {err:.2e} (relative) from its f32 reference on [{n}, {k}], above {PROBE_TOLERANCE:.0e}"
            ));
        }
        let dequantized = x.linear(&w.dequantize(Kind::BFloat16), None::<&Tensor>);
        worst = (worst.0.max(err), worst.1.max(relative(&fast, &dequantized)));
    }
    MatmulPath {
        path: ExpertMatmul::Scaled,
        why: format!(
            "torch _scaled_mm, 1x128 fp8 activations x 128x128 fp8 weights: {:.1e} from its f32 reference, {:.1e} from the dequantize path (relative)",
            worst.0, worst.1
        ),
    }
}

fn first_line(s: &str) -> String {
    s.lines().find(|l| !l.trim().is_empty()).unwrap_or(s).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn randn(shape: &[i64], seed: i64) -> Tensor {
        crate::with_global_seed(seed as u64, || Tensor::randn(shape, (Kind::Float, Device::Cpu)))
    }

    #[test]
    fn rows_quantize_per_block_of_128() {
        // 2 rows x 200 columns: blocks [0, 128) and [128, 200); row 1's second block is 100x larger.
        let x = randn(&[2, 200], 1);
        let _ = x.get(1).narrow(0, 128, 72).g_mul_scalar_(100.0);
        let (q, s) = quantize_rows(&x);
        assert_eq!((q.size(), q.kind(), s.size()), (vec![2, 200], Kind::Float8e4m3fn, vec![2, 2]));
        let s = Vec::<Vec<f32>>::try_from(&s).unwrap();
        let amax = |r: i64, c: i64, n: i64| x.get(r).narrow(0, c, n).abs().max().double_value(&[]) as f32;
        for (r, row) in s.iter().enumerate() {
            assert!((row[0] - amax(r as i64, 0, 128) / 448.0).abs() < 1e-6 * row[0].max(1.0), "{s:?}");
            assert!((row[1] - amax(r as i64, 128, 72) / 448.0).abs() < 1e-6 * row[1].max(1.0), "{s:?}");
        }
        assert!(s[1][1] > 50.0 * s[1][0], "the large block has its own scale: {s:?}");
        // e4m3: at most 2^-4 relative error on values that are not tiny against their block.
        let back = q.to_kind(Kind::Float) * Tensor::from_slice2(&s).repeat_interleave_self_int(128, Some(1), None).narrow(1, 0, 200);
        let big = x.abs().gt(0.05);
        let rel = ((&back - &x).abs() / x.abs().clamp_min(1e-12)).masked_select(&big);
        assert!(rel.max().double_value(&[]) <= 1.0 / 16.0 + 1e-6);
        // A zero row stays zero, with scale 1.
        let (q0, s0) = quantize_rows(&Tensor::zeros([1, 130], (Kind::BFloat16, Device::Cpu)));
        assert_eq!(q0.to_kind(Kind::Float).abs().sum(Kind::Float).double_value(&[]), 0.0);
        assert!(s0.eq(1.0).all().int64_value(&[]) == 1);
    }

    /// The operands pass the layout checks torch's `_scaled_mm` makes before it picks the (1x128, 128x128)
    /// recipe (aten/src/ATen/native/cuda/ScaledBlas.cpp: `is_blockwise_1x128_scaling(a, scale_a)` and
    /// `is_blockwise_128x128_scaling(b.t(), scale_b.t())`), and torch's size checks.
    #[test]
    fn operands_have_the_layout_scaled_mm_checks() {
        let w = QTensor::quantize(&randn(&[256, 384], 2), Quantization::Fp8);
        for rows in [1i64, 16, 37] {
            let o = Operands::new(&randn(&[rows, 384], 3), &w);
            let m = (rows + 15) / 16 * 16;
            assert_eq!((o.a.size(), o.a.kind(), o.a.stride()), (vec![m, 384], Kind::Float8e4m3fn, vec![384, 1]));
            // mat2 [K, N] column-major.
            assert_eq!((o.b.size(), o.b.stride()), (vec![384, 256], vec![1, 384]));
            // 1x128: size (M, ceil(K/128)), strides (1, M).
            assert_eq!((o.scale_a.size(), o.scale_a.stride(), o.scale_a.kind()), (vec![m, 3], vec![1, m], Kind::Float));
            // 128x128 of b.t(): scale_b.t() is (ceil(N/128), ceil(K/128)) with strides (ceil(K/128), 1).
            let sbt = o.scale_b.tr();
            assert_eq!((sbt.size(), sbt.stride(), sbt.kind()), (vec![2, 3], vec![3, 1], Kind::Float));
            assert!(o.a.size()[1] % 16 == 0 && o.b.size()[0] % 16 == 0 && o.b.size()[1] % 16 == 0);
            assert_eq!(o.rows, rows);
            // The padding rows are zeros.
            if m > rows {
                assert_eq!(o.a.narrow(0, rows, m - rows).to_kind(Kind::Float).abs().sum(Kind::Float).double_value(&[]), 0.0);
            }
        }
    }

    #[test]
    fn reference_is_the_dequantize_path_up_to_fp8_activations() {
        // The reference multiplies the same fp8 weights; its only extra rounding is the activations' (3 mantissa
        // bits, 2^-4 relative at worst), so it sits a few percent from the dequantize
        // path, and exactly on it when the activations are representable in e4m3.
        let w = QTensor::quantize(&randn(&[256, 300], 4), Quantization::Fp8);
        let x = randn(&[37, 300], 5);
        let dequantized = x.linear(&w.dequantize(Kind::Float), None::<&Tensor>);
        let emulated = linear(&x, &w, ExpertMatmul::Emulated);
        assert_eq!(emulated.size(), vec![37, 256]);
        let err = relative(&emulated, &dequantized);
        assert!(err > 1e-4 && err < 4e-2, "relative error {err} (2.6e-2 when written)");
        // Activations that e4m3 holds exactly (small integers, a block maximum of 448 after scaling by 1).
        let exact = (randn(&[37, 300], 6) * 4.0).round().clamp(-8.0, 8.0);
        let _ = exact.narrow(1, 0, 1).fill_(448.0);
        let _ = exact.narrow(1, 128, 1).fill_(448.0);
        let _ = exact.narrow(1, 256, 1).fill_(448.0);
        let (q, s) = quantize_rows(&exact);
        assert!(s.eq(1.0).all().int64_value(&[]) == 1 && q.to_kind(Kind::Float).equal(&exact));
        let err = relative(&linear(&exact, &w, ExpertMatmul::Emulated), &exact.linear(&w.dequantize(Kind::Float), None::<&Tensor>));
        assert!(err < 4e-3, "only the bf16 output rounding remains: {err}");
    }

    #[test]
    fn gate_and_up_share_one_quantization_of_x() {
        let (g, u) = (QTensor::quantize(&randn(&[256, 384], 13), Quantization::Fp8), QTensor::quantize(&randn(&[256, 384], 14), Quantization::Fp8));
        let x = randn(&[21, 384], 15);
        for path in [ExpertMatmul::Dequantize, ExpertMatmul::Emulated] {
            let [a, b] = linear_many(&x, [&g, &u], path);
            assert!(a.equal(&linear(&x, &g, path)) && b.equal(&linear(&x, &u, path)), "{path}");
        }
        let o = Operands::new(&x, &g).with_weights(&u);
        let fresh = Operands::new(&x, &u);
        assert!(o.a.to_kind(Kind::Float).equal(&fresh.a.to_kind(Kind::Float)) && o.scale_a.equal(&fresh.scale_a));
        assert_eq!((o.scale_a.stride(), o.b.stride(), o.scale_b.size()), (fresh.scale_a.stride(), fresh.b.stride(), fresh.scale_b.size()));
    }

    #[test]
    fn gradients_pass_straight_through_the_fast_paths() {
        let w = QTensor::quantize(&randn(&[256, 256], 11), Quantization::Fp8);
        let x0 = randn(&[5, 256], 12);
        let grad = |path| {
            let x = x0.copy().set_requires_grad(true);
            let y = linear(&x, &w, path);
            y.sum(Kind::Float).backward();
            (y.detach(), x.grad())
        };
        let (yd, gd) = grad(ExpertMatmul::Dequantize);
        let (ye, ge) = grad(ExpertMatmul::Emulated);
        assert!(ye.equal(&linear(&x0, &w, ExpertMatmul::Emulated)), "the values are the emulated path's");
        assert!(!ye.equal(&yd));
        assert!(ge.equal(&gd), "the gradient is the dequantize path's");
        assert!(gd.abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }

    /// tch's binding takes the arguments in torch's order and `scale` multiplies: checked with the one recipe
    /// the CPU's `_scaled_mm` runs (one scale per tensor), against the same sum by hand.
    #[test]
    fn scaled_mm_binding_on_the_cpu_per_tensor() {
        let a = (randn(&[16, 32], 7) * 8.0).to_kind(Kind::Float8e4m3fn);
        let b = (randn(&[48, 32], 8) * 8.0).to_kind(Kind::Float8e4m3fn);
        let (sa, sb) = (Tensor::from(0.5f32), Tensor::from(0.25f32));
        let got = a.internal_scaled_mm(&b.tr(), &sa, &sb, None::<Tensor>, None::<Tensor>, Kind::Float, false);
        let want = (a.to_kind(Kind::Float) * 0.5).matmul(&(b.to_kind(Kind::Float) * 0.25).tr());
        assert_eq!(got.size(), vec![16, 48]);
        assert!(relative(&got, &want) < 1e-6);
    }

    #[test]
    fn the_cpu_refuses_block_scales_and_the_probe_keeps_dequantizing() {
        let w = QTensor::quantize(&randn(&[128, 256], 9), Quantization::Fp8);
        let e = Operands::new(&randn(&[4, 256], 10), &w).scaled_mm().unwrap_err().to_string();
        assert!(e.contains("fp8 matmul") && e.contains("scaled"), "{e}");
        let p = probe(&[w], Device::Cpu);
        assert_eq!(p.path, ExpertMatmul::Dequantize);
        assert!(p.why.contains("CUDA") && p.why.contains("cpu"), "{}", p.why);
    }

    #[test]
    fn choices_parse() {
        assert_eq!("auto".parse::<Fp8MatmulChoice>().unwrap(), Fp8MatmulChoice::Auto);
        assert_eq!("Scaled".parse::<Fp8MatmulChoice>().unwrap(), Fp8MatmulChoice::Exactly(ExpertMatmul::Scaled));
        assert_eq!("emulated".parse::<Fp8MatmulChoice>().unwrap(), Fp8MatmulChoice::Exactly(ExpertMatmul::Emulated));
        let e = "fastest".parse::<Fp8MatmulChoice>().unwrap_err().to_string();
        assert!(e.contains("fastest") && e.contains("auto, dequantize, scaled or emulated"), "{e}");
    }
}
