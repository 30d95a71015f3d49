//! Turning a block's logits into candidate tokens `v` and their probabilities `p` (llada2.md section 2, step 4),
//! with a generator the decoder owns, so runs are reproducible independently of each other and of libtorch's
//! global generator.
//!
//! Greedy (temperature 0): v = argmax, p = softmax(logits)[v]. Otherwise logits / T -> top-k -> top-p ->
//! softmax -> one draw per position by inverse CDF with a uniform from [`Rng`]; p is the drawn token's
//! probability under that filtered distribution. SGLang's repetition penalty is applied first.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::settings::DecodeSettings;

/// SplitMix64: tiny, fast, and its whole state is one u64 that a trace can store and rewind restores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rng {
    pub state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed ^ 0x5DEE_CE66_D1CE_5EED }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The candidates of one forward for a span of positions.
pub struct Candidates {
    pub tokens: Vec<i64>,
    pub probs: Vec<f32>,
    /// The distribution the candidates were drawn from, `[L, V]` f32 on the model's device, kept for top-k
    /// queries without another forward.
    pub dist: Tensor,
}

/// `logits`: `[L, V]` f32 for consecutive canvas positions; `prev`: for each position the token at the
/// position before it at the step start (`None` for the first position of the span, which SGLang leaves alone).
pub fn select(logits: &Tensor, prev: &[Option<i64>], s: &DecodeSettings, rng: &mut Rng) -> Candidates {
    let (l, v) = (logits.size()[0], logits.size()[1]);
    let device = logits.device();
    let mut logits = logits.shallow_clone();
    if s.penalty_lambda > 0.0 {
        let rows: Vec<i64> = (0..l).filter(|&i| prev[i as usize].is_some()).collect();
        if !rows.is_empty() {
            let cols: Vec<i64> = rows.iter().map(|&i| prev[i as usize].expect("filtered")).collect();
            let penalty = Tensor::zeros([l, v], (Kind::Float, device)).index_put(
                &[Some(Tensor::from_slice(&rows).to_device(device)), Some(Tensor::from_slice(&cols).to_device(device))],
                &Tensor::from(-s.penalty_lambda as f32).to_device(device),
                false,
            );
            logits = logits + penalty;
        }
    }
    if s.temperature == 0.0 {
        let dist = logits.softmax(-1, Kind::Float);
        let (p, idx) = dist.max_dim(-1, false);
        return Candidates { tokens: ids(&idx), probs: probs(&p), dist };
    }
    let mut scaled = logits / s.temperature;
    if let Some(k) = s.top_k.filter(|&k| k < v) {
        let kth = scaled.topk(k, -1, true, true).0.narrow(-1, k - 1, 1);
        scaled = scaled.masked_fill(&scaled.lt_tensor(&kth), f64::NEG_INFINITY);
    }
    if let Some(p) = s.top_p.filter(|&p| p < 1.0) {
        let (sorted, order) = scaled.sort(-1, true);
        let cum = sorted.softmax(-1, Kind::Float).cumsum(-1, Kind::Float);
        // Drop a token when the mass before it already exceeds p (the first token always stays).
        let drop_sorted = (&cum - sorted.softmax(-1, Kind::Float)).gt(p);
        let drop = Tensor::zeros_like(&drop_sorted).scatter(-1, &order, &drop_sorted);
        scaled = scaled.masked_fill(&drop, f64::NEG_INFINITY);
    }
    let dist = scaled.softmax(-1, Kind::Float);
    let u: Vec<f32> = (0..l).map(|_| rng.uniform() as f32).collect();
    let u = Tensor::from_slice(&u).to_device(device).unsqueeze(1);
    let cdf = dist.cumsum(-1, Kind::Float);
    // First index whose CDF exceeds u; clamp guards against rounding at the top of the CDF.
    let idx = cdf.lt_tensor(&u).sum_dim_intlist(-1, false, Kind::Int64).clamp_max(v - 1);
    let p = dist.gather(-1, &idx.unsqueeze(1), false).squeeze_dim(1);
    Candidates { tokens: ids(&idx), probs: probs(&p), dist }
}

fn ids(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(&t.to_device(tch::Device::Cpu).contiguous()).expect("1-D int64 tensor")
}

fn probs(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(&t.to_device(tch::Device::Cpu).contiguous()).expect("1-D f32 tensor")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> DecodeSettings {
        DecodeSettings::official(8)
    }

    #[test]
    fn greedy_takes_argmax_and_its_softmax_probability() {
        let logits = Tensor::from_slice(&[0.0f32, 2.0, 1.0, 3.0, 0.0, 0.0]).view([2, 3]);
        let c = select(&logits, &[None, None], &settings(), &mut Rng::new(0));
        assert_eq!(c.tokens, vec![1, 0]);
        let e = |x: f32| x.exp();
        assert!((c.probs[0] - e(2.0) / (1.0 + e(2.0) + e(1.0))).abs() < 1e-6);
        assert!((c.probs[1] - e(3.0) / (e(3.0) + 2.0)).abs() < 1e-6);
    }

    #[test]
    fn penalty_lowers_the_previous_token_only_where_there_is_one() {
        let logits = Tensor::from_slice(&[0.0f32, 1.0, 0.9, 0.0, 1.0, 0.9]).view([2, 3]);
        let mut s = settings();
        s.penalty_lambda = 0.5;
        let c = select(&logits, &[Some(1), Some(1)], &s, &mut Rng::new(0));
        assert_eq!(c.tokens, vec![2, 2]);
        let c = select(&logits, &[None, Some(1)], &s, &mut Rng::new(0));
        assert_eq!(c.tokens, vec![1, 2]);
    }

    #[test]
    fn sampling_is_reproducible_from_the_seed_and_follows_the_distribution() {
        let mut s = settings();
        s.temperature = 1.0;
        let logits = Tensor::from_slice(&[0.0f32, (3.0f32).ln()]).view([1, 2]).repeat([4000, 1]);
        let prev = vec![None; 4000];
        let a = select(&logits, &prev, &s, &mut Rng::new(7));
        let b = select(&logits, &prev, &s, &mut Rng::new(7));
        assert_eq!(a.tokens, b.tokens);
        let ones = a.tokens.iter().filter(|&&t| t == 1).count() as f64 / 4000.0;
        assert!((ones - 0.75).abs() < 0.03, "{ones}");
        for (t, p) in a.tokens.iter().zip(&a.probs) {
            assert!((p - if *t == 1 { 0.75 } else { 0.25 }).abs() < 1e-5);
        }
    }

    #[test]
    fn top_k_and_top_p_cut_the_tail() {
        let mut s = settings();
        s.temperature = 1.0;
        let logits = Tensor::from_slice(&[3.0f32, 2.0, 1.0, 0.0]).view([1, 4]).repeat([500, 1]);
        let prev = vec![None; 500];
        s.top_k = Some(2);
        let c = select(&logits, &prev, &s, &mut Rng::new(1));
        assert!(c.tokens.iter().all(|&t| t < 2));
        s.top_k = None;
        s.top_p = Some(0.5); // p(0) = 0.64 > 0.5: only token 0 survives
        let c = select(&logits, &prev, &s, &mut Rng::new(1));
        assert!(c.tokens.iter().all(|&t| t == 0));
        assert!(c.probs.iter().all(|&p| (p - 1.0).abs() < 1e-6));
    }
}
