//! Memory estimates, checked before the work allocates: a request that cannot fit is refused with its
//! estimate and what the device has ("needs about 38.2 GB; 19.1 GB free"), instead of an abort or the kernel's
//! OOM killer half-way through.
//!
//! Estimates count the large tensors of a forward from the shapes alone ([`forward_bytes`]), a decoder's KV
//! cache ([`cache_bytes`]) and LoRA adapters with their training state. They aim at the right order of
//! magnitude, not the byte: the check refuses only what clearly cannot fit. What "free" means depends on the
//! device ([`Budget::of`]):
//! - CPU: the smallest of MemAvailable (/proc/meminfo), the cgroup's `memory.max - memory.current`, and the
//!   address-space limit (`ulimit -v`) minus what the process has mapped.
//! - CUDA: the card's total memory minus the weights (read through the CUDA runtime that libtorch loaded). The
//!   free figure the runtime reports would not count what libtorch's caching allocator holds but could reuse,
//!   so only requests larger than the card are refused there.

use tch::Device;

use crate::config::Config;
use crate::error::{Error, Result};

/// What a device can give to a new request, and where that figure came from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    pub bytes: u64,
    pub source: &'static str,
}

impl Budget {
    /// The budget of `device` for a model whose weights take `weights()` bytes (asked only where it counts: on
    /// a GPU and under `DLLM_MEMORY_LIMIT`), capped by `DLLM_MEMORY_LIMIT` when it is set; `None` when there
    /// is no figure.
    pub fn of(device: Device, weights: impl FnOnce() -> u64) -> Result<Option<Budget>> {
        let limit = limit_from_env()?;
        let weights = if device.is_cuda() || limit.is_some() { weights() } else { 0 };
        let found = match device {
            Device::Cpu => cpu_budget(),
            // A total below the weights is no figure at all (another runtime answered): no check rather than
            // refusing everything.
            Device::Cuda(i) => cuda_total(i).filter(|&t| t > weights).map(|t| Budget { bytes: t - weights, source: "free on the GPU after the weights" }),
            _ => None,
        };
        let Some(limit) = limit else { return Ok(found) };
        let capped = Budget { bytes: limit.saturating_sub(weights), source: "left under DLLM_MEMORY_LIMIT after the weights" };
        Ok(Some(found.filter(|f| f.bytes < capped.bytes).unwrap_or(capped)))
    }
}

/// `DLLM_MEMORY_LIMIT`: the most memory (weights included) a process should use, for sharing a machine:
/// `8GB`, `512MB`, `1.5GiB`, or bytes.
fn limit_from_env() -> Result<Option<u64>> {
    match std::env::var("DLLM_MEMORY_LIMIT") {
        Ok(v) => parse_bytes(&v).map(Some).ok_or_else(|| Error::invalid("DLLM_MEMORY_LIMIT", &v, "expected an amount like 8GB, 512MB, 1.5GiB or a number of bytes")),
        Err(_) => Ok(None),
    }
}

fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024f64.powi(2),
        "gib" => 1024f64.powi(3),
        "tib" => 1024f64.powi(4),
        _ => return None,
    };
    let x = num.parse::<f64>().ok()? * scale;
    (x.is_finite() && x >= 0.0 && x < 1.8e19).then_some(x as u64)
}

/// Refuses `what` when `needed` bytes exceed `budget`; `hint` says how to ask for less.
pub fn check(what: impl Into<String>, needed: u64, budget: Option<Budget>, hint: &str) -> Result<()> {
    match budget {
        Some(b) if needed > b.bytes => Err(Error::OutOfMemory { what: what.into(), needed, free: b.bytes, budget: b.source, hint: hint.to_string() }),
        _ => Ok(()),
    }
}

/// Bytes as people read them: `38.2 GB`, `512.0 MB`.
pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    match b {
        b if b >= 1e12 => format!("{:.1} TB", b / 1e12),
        b if b >= 1e9 => format!("{:.1} GB", b / 1e9),
        b if b >= 1e6 => format!("{:.1} MB", b / 1e6),
        b => format!("{:.0} kB", b / 1e3),
    }
}

/// The large tensors of one forward of `rows` sequences, `queries` positions computed against `keys`
/// positions (`keys` includes the queries), with activations of element size `elem`:
/// - the logits in f32 and the log-softmax beside them;
/// - one layer's transients: queries/keys/values, the attention scores `[rows, heads, queries, keys]`, the
///   feed-forward's intermediate (dense, or `top_k` routed experts plus the shared ones);
/// - with `grad`, those transients are kept for the backward pass in every layer.
pub fn forward_bytes(c: &Config, rows: i64, queries: i64, keys: i64, elem: i64, grad: bool) -> u64 {
    // In f64: the products of extreme requests overflow any integer, and `as u64` saturates.
    let u = |x: i64| x.max(0) as f64;
    let (r, q, k) = (u(rows), u(queries), u(keys));
    let tokens = r * q;
    let logits = tokens * u(c.vocab_size) * 4.0 * 2.0;
    let attention = tokens * (u(c.num_attention_heads) * u(c.head_dim) * 2.0 + u(c.hidden_size) * 4.0) + r * u(c.num_attention_heads) * q * k;
    let moe = (u(c.num_experts_per_tok) + u(c.num_shared_experts)) * u(c.moe_intermediate_size);
    let ffn = tokens * 3.0 * moe.max(u(c.intermediate_size));
    let layers = if grad { u(c.num_hidden_layers) } else { 1.0 };
    (logits + (attention + ffn) * u(elem) * layers) as u64
}

/// The weights of a model of `c` with elements of `elem` bytes, from the shapes; routed experts quantized as
/// `c.quantization` says (one byte each, plus their scales).
pub fn weight_bytes(c: &Config, elem: i64) -> u64 {
    // In f64 from the clamped sizes, like forward_bytes: a config's extreme sizes must not overflow here.
    let u = |x: i64| x.max(0) as f64;
    let layers = u(c.num_hidden_layers);
    let moe_layers = if c.has_moe() { (layers - u(c.first_k_dense_replace)).max(0.0) } else { 0.0 };
    let (h, d, e, i) = (u(c.hidden_size), u(c.head_dim), u(c.num_experts), u(c.moe_intermediate_size));
    let attention = (2.0 * u(c.num_attention_heads) + 2.0 * u(c.num_key_value_heads)) * d * h + 2.0 * h;
    let dense = (layers - moe_layers) * 3.0 * h * u(c.intermediate_size);
    let router_shared = moe_layers * (e * h + u(c.num_shared_experts) * 3.0 * h * i);
    let embeddings = u(c.vocab_size) * h * if c.tie_word_embeddings { 1.0 } else { 2.0 };
    let rest = layers * attention + dense + router_shared + embeddings + h;
    let experts = match c.quantization {
        // gate and up are [I, H], down is [H, I]: the same count of values, scales shaped by their rows.
        Some(q) if i * h > 0.0 => {
            let per = |rows, cols| q.bytes(1, rows, cols) as f64;
            moe_layers * e * (2.0 * per(c.moe_intermediate_size, c.hidden_size) + per(c.hidden_size, c.moe_intermediate_size))
        }
        _ => moe_layers * e * 3.0 * h * i * elem as f64,
    };
    (rest * elem as f64 + experts) as u64
}

/// A KV cache of `rows` sequences of `len` positions.
pub fn cache_bytes(c: &Config, rows: i64, len: i64, elem: i64) -> u64 {
    [rows, len, c.num_key_value_heads, c.head_dim, 2, elem, c.num_hidden_layers].iter().map(|&x| x.max(0) as f64).product::<f64>() as u64
}

/// Whether operations record gradients now (outside `tch::no_grad`): a scratch tensor that requires a
/// gradient passes the flag on only when they do.
pub fn grad_enabled() -> bool {
    (tch::Tensor::zeros([1], (tch::Kind::Float, Device::Cpu)).set_requires_grad(true) * 1.0).requires_grad()
}

fn cpu_budget() -> Option<Budget> {
    let mut best: Option<Budget> = None;
    let mut consider = |bytes: Option<u64>, source: &'static str| {
        if let Some(bytes) = bytes {
            if best.is_none_or(|b| bytes < b.bytes) {
                best = Some(Budget { bytes, source });
            }
        }
    };
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    consider(meminfo.as_deref().and_then(|m| kib_field(m, "MemAvailable:")), "free (MemAvailable)");
    let cgroup = |f: &str| std::fs::read_to_string(format!("/sys/fs/cgroup/{f}")).ok().and_then(|s| s.trim().parse::<u64>().ok());
    if let (Some(max), Some(cur)) = (cgroup("memory.max"), cgroup("memory.current")) {
        consider(Some(max.saturating_sub(cur)), "free in the cgroup (memory.max)");
    }
    consider(address_space_left(), "left under the address-space limit (ulimit -v)");
    best
}

/// `RLIMIT_AS` minus the process's mapped size (VmSize), when a limit is set.
fn address_space_left() -> Option<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit struct that we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut lim) } != 0 || lim.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    Some((lim.rlim_cur as u64).saturating_sub(kib_field(&status, "VmSize:")?))
}

/// A `NAME:   1234 kB` line of /proc's text files, in bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    line[name.len()..].trim().trim_end_matches("kB").trim().parse::<u64>().ok().map(|k| k * 1024)
}

/// The total memory of CUDA device `index`, from `cudaMemGetInfo` of the runtime libtorch loaded (looked up at
/// run time: a CPU build has no CUDA runtime, and then there is no figure).
fn cuda_total(index: usize) -> Option<u64> {
    type MemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> i32;
    type GetDevice = unsafe extern "C" fn(*mut i32) -> i32;
    type SetDevice = unsafe extern "C" fn(i32) -> i32;
    let sym = |name: &std::ffi::CStr| {
        // SAFETY: dlsym with RTLD_DEFAULT only reads the NUL-terminated name.
        let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
        (!p.is_null()).then_some(p)
    };
    let (info, get, set) = (sym(c"cudaMemGetInfo")?, sym(c"cudaGetDevice")?, sym(c"cudaSetDevice")?);
    // SAFETY: the pointers are the CUDA runtime's functions with these C signatures (cuda_runtime_api.h).
    unsafe {
        let (info, get, set): (MemGetInfo, GetDevice, SetDevice) = (std::mem::transmute(info), std::mem::transmute(get), std::mem::transmute(set));
        let mut was = 0i32;
        if get(&mut was) != 0 || set(index as i32) != 0 {
            return None;
        }
        let (mut free, mut total) = (0usize, 0usize);
        let ok = info(&mut free, &mut total) == 0;
        set(was);
        ok.then_some(total as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_read_as_people_write_them() {
        assert_eq!(parse_bytes("8GB"), Some(8_000_000_000));
        assert_eq!(parse_bytes(" 1.5 GiB"), Some(1_610_612_736));
        assert_eq!(parse_bytes("512mb"), Some(512_000_000));
        assert_eq!(parse_bytes("1000"), Some(1000));
        for bad in ["", "GB", "-1GB", "1e300", "8 parsecs", "nan", "1.2.3GB"] {
            assert_eq!(parse_bytes(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn proc_fields_read_as_bytes() {
        assert_eq!(kib_field("MemTotal:  100 kB\nMemAvailable:   2048 kB\n", "MemAvailable:"), Some(2048 * 1024));
        assert_eq!(kib_field("MemTotal: 1 kB\n", "MemAvailable:"), None);
    }

    #[test]
    fn a_cpu_budget_exists_and_is_below_the_machine() {
        let b = cpu_budget().expect("linux has /proc/meminfo");
        let total = kib_field(&std::fs::read_to_string("/proc/meminfo").unwrap(), "MemTotal:").unwrap();
        assert!(b.bytes > 0 && b.bytes <= total, "{b:?} of {total}");
    }

    #[test]
    fn refusals_name_the_estimate_the_budget_and_its_source() {
        let budget = Some(Budget { bytes: 19_100_000_000, source: "free (MemAvailable)" });
        let e = check("a forward of 8 rows", 38_200_000_000, budget, "use fewer rows").unwrap_err().to_string();
        assert_eq!(e, "a forward of 8 rows needs about 38.2 GB of memory; 19.1 GB free (MemAvailable): nothing was allocated; use fewer rows");
        assert!(check("x", 10, budget, "").is_ok());
        assert!(check("x", u64::MAX, None, "").is_ok(), "no figure, no refusal");
    }

    #[test]
    fn estimates_grow_with_the_shapes_and_saturate() {
        let c = crate::shapes::shape("mid").unwrap();
        let one = forward_bytes(&c, 1, 32, 64, 4, false);
        assert!(forward_bytes(&c, 2, 32, 64, 4, false) > one && forward_bytes(&c, 1, 32, 64, 4, true) > one);
        // The logits alone of 4096 rows x 4096 positions of a 157k vocabulary are 21 TB.
        let mut big = c.clone();
        big.vocab_size = 157_184;
        assert!(forward_bytes(&big, 4096, 4096, 4096, 2, false) > 10_000_000_000_000);
        assert_eq!(forward_bytes(&c, i64::MAX, i64::MAX, i64::MAX, 8, true), u64::MAX);
        assert_eq!(cache_bytes(&c, i64::MAX, i64::MAX, 4), u64::MAX);
    }

    #[test]
    fn grad_mode_is_read_not_changed() {
        assert!(grad_enabled());
        assert!(!tch::no_grad(grad_enabled));
        assert!(grad_enabled());
    }
}
