//! Where a model runs and in which precision: `cpu`, `cuda`, `cuda:N`; `f32`, `bf16`, `f16`.
//!
//! CUDA needs `libtorch_cuda.so` in the process. rustc links with `--as-needed`, which drops it, and on a
//! CPU-only libtorch install it cannot even be loaded (its cuDNN/cuBLAS dependencies are absent), so it is
//! not linked at all. Instead [`load_cuda_backend`] `dlopen`s it at run time, before the first CUDA query
//! (PyTorch caches its CUDA hooks on that query). One binary thus runs on CPU machines and on GPU machines.

use std::str::FromStr;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use tch::Kind;

use crate::error::{Error, Result};

/// The precision weights and activations run in. Logits are always returned in f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    Bf16,
    F16,
}

impl DType {
    pub fn kind(self) -> Kind {
        match self {
            DType::F32 => Kind::Float,
            DType::Bf16 => Kind::BFloat16,
            DType::F16 => Kind::Half,
        }
    }

    /// bf16 on CUDA, f32 on CPU (CPU half-precision matmuls are slow and inexact).
    pub fn default_for(device: tch::Device) -> DType {
        if device.is_cuda() {
            DType::Bf16
        } else {
            DType::F32
        }
    }

    pub fn size_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::Bf16 | DType::F16 => 2,
        }
    }
}

impl FromStr for DType {
    type Err = Error;
    fn from_str(s: &str) -> Result<DType> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" | "float" => Ok(DType::F32),
            "bf16" | "bfloat16" => Ok(DType::Bf16),
            "f16" | "float16" | "fp16" | "half" => Ok(DType::F16),
            _ => Err(Error::invalid("dtype", s, "expected f32, bf16 or f16")),
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::Bf16 => "bf16",
            DType::F16 => "f16",
        })
    }
}

/// Parses `cpu`, `cuda` (device 0) or `cuda:N`, and checks that the device exists.
pub fn parse_device(s: &str) -> Result<tch::Device> {
    let s = s.trim().to_ascii_lowercase();
    let index = match s.as_str() {
        "cpu" => return Ok(tch::Device::Cpu),
        "cuda" | "gpu" => 0,
        _ => match s.strip_prefix("cuda:") {
            Some(n) => n.parse::<usize>().map_err(|_| Error::invalid("device", &s, "expected cpu, cuda or cuda:N"))?,
            None => return Err(Error::invalid("device", &s, "expected cpu, cuda or cuda:N")),
        },
    };
    let available = cuda_device_count();
    if index >= available {
        let why = if available == 0 {
            format!("no CUDA device is available ({})", cuda_status())
        } else {
            format!("only {available} CUDA device(s)")
        };
        return Err(Error::invalid("device", &s, why));
    }
    Ok(tch::Device::Cuda(index))
}

/// Number of CUDA devices libtorch can use (0 on CPU-only machines). Loads the CUDA backend first.
pub fn cuda_device_count() -> usize {
    load_cuda_backend();
    tch::Cuda::device_count().max(0) as usize
}

/// A one-line account of the CUDA backend, for summaries and error messages.
pub fn cuda_status() -> String {
    match load_cuda_backend() {
        Ok(path) => format!("libtorch_cuda loaded from {path}"),
        Err(why) => format!("libtorch_cuda not loaded: {why}"),
    }
}

/// `dlopen`s libtorch_cuda.so once (RTLD_NOW | RTLD_GLOBAL). Call before any CUDA query; later calls return
/// the first outcome. Looks next to the libtorch_cpu.so this process already mapped, then on the search path.
pub fn load_cuda_backend() -> &'static std::result::Result<String, String> {
    static LOADED: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    LOADED.get_or_init(|| {
        let mut candidates = Vec::new();
        if let Some(dir) = mapped_library_dir("libtorch_cpu.so") {
            candidates.push(format!("{dir}/libtorch_cuda.so"));
        }
        candidates.push("libtorch_cuda.so".to_string());
        let mut last_error = String::from("not found");
        for c in &candidates {
            if c.contains('/') && !std::path::Path::new(c).exists() {
                continue;
            }
            let name = std::ffi::CString::new(c.as_str()).expect("no NUL in path");
            // SAFETY: dlopen with a valid C string; the handle is deliberately never closed.
            let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
            if !handle.is_null() {
                return Ok(c.clone());
            }
            // SAFETY: dlerror returns a thread-local C string or NULL.
            let err = unsafe { libc::dlerror() };
            if !err.is_null() {
                last_error = unsafe { std::ffi::CStr::from_ptr(err) }.to_string_lossy().into_owned();
            }
        }
        Err(last_error)
    })
}

/// The folder of a shared library this process has mapped, read from /proc/self/maps.
fn mapped_library_dir(file_name: &str) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.rsplit('/').next() == Some(file_name))
        .and_then(|p| p.rsplit_once('/').map(|(dir, _)| dir.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices_and_dtypes() {
        assert_eq!(parse_device("cpu").unwrap(), tch::Device::Cpu);
        assert_eq!(parse_device(" CPU ").unwrap(), tch::Device::Cpu);
        assert!(parse_device("tpu").unwrap_err().to_string().contains("expected cpu, cuda or cuda:N"));
        assert!(parse_device("cuda:x").is_err());
        assert!(parse_device("cuda:99").is_err());
        assert_eq!("bf16".parse::<DType>().unwrap(), DType::Bf16);
        assert_eq!("float32".parse::<DType>().unwrap(), DType::F32);
        assert!("int8".parse::<DType>().unwrap_err().to_string().contains("int8"));
        assert_eq!(DType::default_for(tch::Device::Cpu), DType::F32);
        assert_eq!(DType::default_for(tch::Device::Cuda(0)), DType::Bf16);
    }
}
