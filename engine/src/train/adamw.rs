//! AdamW (decoupled weight decay) with global-norm gradient clipping and a warm-up + cosine schedule.
//!
//! Written out rather than taken from `tch::nn::Optimizer` because a resumable run must save and restore the
//! moment estimates, which tch's optimizer does not expose. The update is PyTorch's `torch.optim.AdamW`:
//! `p -= lr * wd * p; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; p -= lr * m_hat / (sqrt(v_hat) + eps)`.

use std::collections::HashMap;

use tch::{nn::VarStore, Kind, Tensor};

use crate::error::{Error, Result};

pub struct AdamW {
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
    /// Updates taken so far (bias correction uses it).
    pub step: i64,
    params: Vec<Param>,
}

struct Param {
    name: String,
    value: Tensor,
    m: Tensor,
    v: Tensor,
    /// Matrices decay; norms and biases (1-D) do not.
    decay: bool,
}

impl AdamW {
    /// Over every trainable variable of `vs` (sorted by name).
    pub fn new(vs: &VarStore, betas: (f64, f64), weight_decay: f64) -> AdamW {
        let vars: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        AdamW::over(vars, betas, weight_decay)
    }

    /// Over the given named parameters (for a subset of a model: RL's trainable set).
    pub fn over(mut vars: Vec<(String, Tensor)>, betas: (f64, f64), weight_decay: f64) -> AdamW {
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let params = vars
            .into_iter()
            .map(|(name, value)| Param { decay: value.dim() >= 2, m: value.zeros_like(), v: value.zeros_like(), name, value })
            .collect();
        AdamW { betas, eps: 1e-8, weight_decay, step: 0, params }
    }

    /// Number of parameters it updates.
    pub fn num_parameters(&self) -> i64 {
        self.params.iter().map(|p| p.value.numel() as i64).sum()
    }

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.value.zero_grad();
        }
    }

    /// Scales the gradients so their global L2 norm is at most `max`; returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max: f64) -> f64 {
        let grads: Vec<Tensor> = self.params.iter().map(|p| p.value.grad()).filter(Tensor::defined).collect();
        if grads.is_empty() {
            return 0.0;
        }
        let sq: Vec<Tensor> = grads.iter().map(|g| g.to_kind(Kind::Float).pow_tensor_scalar(2).sum(Kind::Float)).collect();
        let norm = Tensor::stack(&sq, 0).sum(Kind::Float).sqrt().double_value(&[]);
        if norm.is_finite() && norm > max {
            let scale = max / (norm + 1e-6);
            tch::no_grad(|| {
                for mut g in grads {
                    let _ = g.g_mul_scalar_(scale);
                }
            });
        }
        norm
    }

    /// One update at learning rate `lr`.
    pub fn update(&mut self, lr: f64) {
        self.step += 1;
        let (b1, b2) = self.betas;
        let c1 = 1.0 - b1.powi(self.step as i32);
        let c2 = 1.0 - b2.powi(self.step as i32);
        tch::no_grad(|| {
            for p in &mut self.params {
                let g = p.value.grad();
                if !g.defined() {
                    continue;
                }
                if p.decay && self.weight_decay > 0.0 {
                    let _ = p.value.g_mul_scalar_(1.0 - lr * self.weight_decay);
                }
                let _ = p.m.g_mul_scalar_(b1);
                let _ = p.m.g_add_(&(&g * (1.0 - b1)));
                let _ = p.v.g_mul_scalar_(b2);
                let _ = p.v.addcmul_(&g, &(&g * (1.0 - b2)));
                let denom = (&p.v / c2).sqrt() + self.eps;
                let _ = p.value.addcdiv_(&(&p.m * (-lr / c1)), &denom);
            }
        });
    }

    /// The moment estimates under `exp_avg.NAME` / `exp_avg_sq.NAME` (PyTorch's state names).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .flat_map(|p| [(format!("exp_avg.{}", p.name), p.m.shallow_clone()), (format!("exp_avg_sq.{}", p.name), p.v.shallow_clone())])
            .collect()
    }

    /// Restores what [`AdamW::state_tensors`] saved, after `step` updates. Every parameter must be present.
    pub fn load_state(&mut self, mut tensors: HashMap<String, Tensor>, step: i64) -> Result<()> {
        for p in &mut self.params {
            for (key, slot) in [(format!("exp_avg.{}", p.name), &mut p.m), (format!("exp_avg_sq.{}", p.name), &mut p.v)] {
                let t = tensors.remove(&key).ok_or_else(|| Error::invalid("optimizer state", &key, "missing from the training checkpoint"))?;
                if t.size() != slot.size() {
                    return Err(Error::invalid("optimizer state", &key, format!("shape {:?}, expected {:?}", t.size(), slot.size())));
                }
                *slot = t.to_kind(slot.kind()).to_device(slot.device());
            }
        }
        self.step = step;
        Ok(())
    }
}

/// Linear warm-up to `peak` over `warmup` steps, then cosine decay to `peak * floor` at `total`.
pub fn learning_rate(step: i64, total: i64, warmup: i64, peak: f64, floor: f64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = (total - warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).clamp(0.0, 1.0);
    peak * (floor + (1.0 - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn, Device};

    #[test]
    fn matches_pytorch_adamw_on_a_hand_computed_step() {
        // One step from p = 1 with grad 0.5: m_hat = 0.5, v_hat = 0.25, update = lr * 0.5 / (0.5 + eps) ~ lr;
        // decoupled decay first: p = 1 - lr * wd.
        let vs = VarStore::new(Device::Cpu);
        let w = vs.root().var("w", &[2, 2], nn::Init::Const(1.0));
        let b = vs.root().var("b", &[2], nn::Init::Const(1.0));
        let mut opt = AdamW::new(&vs, (0.9, 0.95), 0.1);
        let loss = (&w * 0.5).sum(Kind::Float) / 4.0 * 4.0 + (&b * 0.5).sum(Kind::Float);
        loss.backward();
        opt.update(0.01);
        let wv = w.double_value(&[0, 0]);
        let bv = b.double_value(&[0]);
        assert!((wv - (1.0 - 0.01 * 0.1 - 0.01)).abs() < 1e-6, "{wv}");
        assert!((bv - (1.0 - 0.01)).abs() < 1e-6, "vectors do not decay: {bv}");
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let vs = VarStore::new(Device::Cpu);
        let w = vs.root().var("w", &[4], nn::Init::Const(1.0));
        let mut opt = AdamW::new(&vs, (0.9, 0.95), 0.0);
        (&w * 3.0).sum(Kind::Float).backward(); // grad 3 each: norm 6
        let norm = opt.clip_grad_norm(1.0);
        assert!((norm - 6.0).abs() < 1e-6);
        let after = w.grad().norm().double_value(&[]);
        assert!((after - 1.0).abs() < 1e-4, "{after}");
    }

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        assert!((learning_rate(0, 1000, 100, 1.0, 0.1) - 0.01).abs() < 1e-12);
        assert!((learning_rate(99, 1000, 100, 1.0, 0.1) - 1.0).abs() < 1e-12);
        assert!((learning_rate(1000, 1000, 100, 1.0, 0.1) - 0.1).abs() < 1e-12);
        let mid = learning_rate(550, 1000, 100, 1.0, 0.1);
        assert!((mid - 0.55).abs() < 1e-9, "{mid}");
    }

    #[test]
    fn state_round_trips() {
        let vs = VarStore::new(Device::Cpu);
        let w = vs.root().var("w", &[3], nn::Init::Const(1.0));
        let mut opt = AdamW::new(&vs, (0.9, 0.95), 0.0);
        w.sum(Kind::Float).backward();
        opt.update(0.1);
        let saved: HashMap<String, Tensor> = opt.state_tensors().into_iter().map(|(k, t)| (k, t.copy())).collect();
        let mut fresh = AdamW::new(&vs, (0.9, 0.95), 0.0);
        fresh.load_state(saved, 1).unwrap();
        assert_eq!(fresh.step, 1);
        assert!(fresh.state_tensors()[0].1.equal(&opt.state_tensors()[0].1));
        let e = fresh.load_state(HashMap::new(), 1).unwrap_err().to_string();
        assert!(e.contains("exp_avg.w"), "{e}");
    }
}
