//! Where a model's tensors come from: a checkpoint on disk ([`crate::checkpoint::Checkpoint`]) or a seeded
//! random initialisation ([`RandomInit`]). The model asks for each tensor by official name and shape; the source
//! returns it placed (device and dtype) or an error naming the tensor.

use std::sync::{Mutex, MutexGuard};

use tch::{Device, Kind, Tensor};

use crate::device::DType;
use crate::error::Result;
use crate::quant::{QTensor, Quantization};

/// What a tensor is, which fixes its random initialisation and its dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A weight matrix or embedding: N(0, initializer_range).
    Matrix,
    /// A norm weight: ones.
    Norm,
    /// A linear bias: zeros.
    Bias,
    /// The router's expert bias: zeros, kept in fp32 and never trained by gradient.
    Buffer,
}

impl Role {
    /// The dtype a tensor of this role runs in.
    pub fn kind(self, dtype: DType) -> Kind {
        match self {
            Role::Buffer => Kind::Float,
            _ => dtype.kind(),
        }
    }
}

pub trait WeightSource {
    /// The tensor `name` with exactly `shape`, placed on the run device in `role.kind(dtype)`.
    fn tensor(&mut self, name: &str, shape: &[i64], role: Role) -> Result<Tensor>;

    /// The routed experts' projection `proj` under `prefix` (`model.layers.{i}.mlp.experts`) as one fused
    /// `[E, rows, cols]` tensor, from either the fused or the per-expert layout.
    fn experts(&mut self, prefix: &str, proj: &str, shape: [i64; 3]) -> Result<Tensor>;

    /// [`WeightSource::experts`] quantized as `format`. This default quantizes the full tensor, so its peak
    /// holds one projection in full; a checkpoint reads and quantizes one expert at a time instead, or reads
    /// weights it stores already quantized.
    fn experts_quantized(&mut self, prefix: &str, proj: &str, shape: [i64; 3], format: Quantization) -> Result<QTensor> {
        Ok(QTensor::quantize(&self.experts(prefix, proj, shape)?, format))
    }

    /// Called once the model has taken every tensor it needs: a source with tensors left over fails here.
    fn finish(&mut self) -> Result<()>;
}

/// Tensors held by name (another model's weights): each is handed out as it is, sharing its storage, after a
/// shape check.
pub struct Shared {
    pub tensors: std::collections::HashMap<String, Tensor>,
}

impl Shared {
    fn take(&mut self, name: &str, shape: &[i64]) -> Result<Tensor> {
        let t = self.tensors.remove(name).ok_or_else(|| crate::Error::invalid("weights", name, "no such tensor in the source model"))?;
        if t.size() != shape {
            return Err(crate::Error::invalid("weights", name, format!("shape {:?}, expected {shape:?}", t.size())));
        }
        Ok(t)
    }
}

impl WeightSource for Shared {
    fn tensor(&mut self, name: &str, shape: &[i64], _role: Role) -> Result<Tensor> {
        self.take(name, shape)
    }

    fn experts(&mut self, prefix: &str, proj: &str, shape: [i64; 3]) -> Result<Tensor> {
        self.take(&format!("{prefix}.{proj}"), &shape)
    }

    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

/// libtorch's default generator is process-global. Whoever seeds it and then draws holds this lock for the
/// whole seed-then-draw sequence, so concurrent users (parallel tests, background work) cannot interleave.
static GLOBAL_RNG: Mutex<()> = Mutex::new(());

fn lock_global_rng() -> MutexGuard<'static, ()> {
    GLOBAL_RNG.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Seeds libtorch's global generator and runs `f` with exclusive use of it. Not reentrant: `f` must not
/// create a [`RandomInit`] or call this again.
pub fn with_global_seed<T>(seed: u64, f: impl FnOnce() -> T) -> T {
    let _guard = lock_global_rng();
    tch::manual_seed(seed as i64);
    f()
}

/// Seeded random weights: N(0, std) matrices, unit norms, zero biases. Deterministic for a seed on a device:
/// it holds the global generator (see [`with_global_seed`]) from creation until it is dropped.
pub struct RandomInit {
    pub device: Device,
    pub dtype: DType,
    pub std: f64,
    /// Also randomise what a fresh model holds constant: norm weights ~ U[0.5, 1.5], biases and expert biases
    /// ~ U[-0.1, 0.1] (both signs). Cross-implementation tests use it so that every tensor matters.
    pub spread: bool,
    _rng: MutexGuard<'static, ()>,
}

impl RandomInit {
    /// Seeds libtorch's (process-global) generator; weights drawn next are a function of `seed` alone.
    pub fn new(seed: u64, std: f64, device: Device, dtype: DType) -> RandomInit {
        let rng = lock_global_rng();
        tch::manual_seed(seed as i64);
        RandomInit { device, dtype, std, spread: false, _rng: rng }
    }

    pub fn spread(mut self, on: bool) -> RandomInit {
        self.spread = on;
        self
    }

    fn draw(&self, shape: &[i64], role: Role) -> Tensor {
        let opts = (role.kind(self.dtype), self.device);
        match role {
            // Drawn in f32 then cast, so a bf16 and an f32 model from one seed hold the same values (rounded).
            Role::Matrix => (Tensor::randn(shape, (Kind::Float, self.device)) * self.std).to_kind(opts.0),
            Role::Norm if self.spread => (Tensor::rand(shape, (Kind::Float, self.device)) + 0.5).to_kind(opts.0),
            Role::Norm => Tensor::ones(shape, opts),
            Role::Bias | Role::Buffer if self.spread => ((Tensor::rand(shape, (Kind::Float, self.device)) - 0.5) * 0.2).to_kind(opts.0),
            Role::Bias | Role::Buffer => Tensor::zeros(shape, opts),
        }
    }
}

impl WeightSource for RandomInit {
    fn tensor(&mut self, _name: &str, shape: &[i64], role: Role) -> Result<Tensor> {
        Ok(self.draw(shape, role))
    }

    fn experts(&mut self, _prefix: &str, _proj: &str, shape: [i64; 3]) -> Result<Tensor> {
        Ok(self.draw(&shape, Role::Matrix))
    }

    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}
