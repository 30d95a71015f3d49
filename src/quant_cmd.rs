//! Quantized experts from the command line: `dllm quantize` (a quantized checkpoint, written once), what the
//! released shapes need in memory with each option (`dllm info --quantize`), and `dllm bench quantize` (memory,
//! fidelity and forward time of int8 / fp8 against the unquantized model, fp8 along each matmul path the device
//! has, in one run).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use dllm_engine::fp8_matmul::{ExpertMatmul, Fp8MatmulChoice};
use dllm_engine::quant::Fidelity;
use dllm_engine::{memory, shapes, BlockMask, Config, DType, KvCache, Model, Quantization};
use serde_json::json;
use tch::{Device, Kind, Tensor};

/// Cards to project onto, as nvidia-smi reports their memory (GiB).
const CARDS: [(&str, f64); 3] = [("24 GB (RTX 3090/4090)", 24.0), ("80 GB (H100)", 79.6), ("141 GB (H200)", 140.4)];
/// The released shapes the projection covers.
const SHAPES: [&str; 4] = ["llada2-mini", "llada2.2-mini", "llada2-flash", "llada2.2-flash"];
/// Room kept beside the weights: the CUDA context and libtorch's workspace.
const CONTEXT_BYTES: f64 = (1u64 << 30) as f64;

/// Bytes a decode of one 4096-position canvas needs on a card for `c` held in bf16 with `q` experts: the
/// weights, its KV cache, one 32-position block forward and the CUDA context.
fn decode_footprint(c: &Config) -> f64 {
    memory::weight_bytes(c, 2) as f64 + memory::cache_bytes(c, 1, 4096, 2) as f64 + memory::forward_bytes(c, 1, 32, 4096, 2, false) as f64 + CONTEXT_BYTES
}

/// Rows of the projection: for every released shape and option, GiB of weights and whether a 4096-token
/// decode fits each card.
pub fn projection() -> Result<Vec<serde_json::Value>> {
    let mut rows = Vec::new();
    for shape in SHAPES {
        for q in [None, Some(Quantization::Int8), Some(Quantization::Fp8)] {
            let c = Config { quantization: q, ..shapes::shape(shape)? };
            let need = decode_footprint(&c);
            let fits: serde_json::Map<String, serde_json::Value> = CARDS.iter().map(|(card, gib)| (card.to_string(), json!(need <= gib * (1u64 << 30) as f64))).collect();
            rows.push(json!({
                "shape": shape,
                "experts": q.map_or("bf16".to_string(), |q| q.to_string()),
                "weight_gib": memory::weight_bytes(&c, 2) as f64 / (1u64 << 30) as f64,
                "decode_gib": need / (1u64 << 30) as f64,
                "fits": fits,
            }));
        }
    }
    Ok(rows)
}

pub fn print_projection(rows: &[serde_json::Value]) {
    println!("\nprojected from the shapes (bf16 weights, routed experts as named; a decode of one 4096-token canvas adds its");
    println!("KV cache, one block forward and 1 GiB of CUDA context):");
    let cards: Vec<&str> = CARDS.iter().map(|c| c.0).collect();
    println!("  {:<15} {:<7} {:>11} {:>11}   {}", "shape", "experts", "weights GiB", "decode GiB", cards.join("   "));
    for r in rows {
        let fits: Vec<String> = cards.iter().map(|c| format!("{:<w$}", if r["fits"][*c] == true { "fits" } else { "-" }, w = c.len())).collect();
        println!(
            "  {:<15} {:<7} {:>11.1} {:>11.1}   {}",
            r["shape"].as_str().unwrap_or(""),
            r["experts"].as_str().unwrap_or(""),
            r["weight_gib"].as_f64().unwrap_or(0.0),
            r["decode_gib"].as_f64().unwrap_or(0.0),
            fits.join("   ")
        );
    }
}

#[derive(Args)]
pub struct QuantizeBench {
    /// A checkpoint folder; default: a random checkpoint of --shape written to a temporary folder.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Model shape of the random checkpoint.
    #[arg(long, alias = "preset", default_value = "mid")]
    shape: String,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The reference's dtype (the quantized models dequantize into it).
    #[arg(long, default_value = "bf16")]
    dtype: String,
    /// Sequences and their length: rows x length positions are compared.
    #[arg(long, default_value_t = 8)]
    rows: i64,
    #[arg(long, default_value_t = 512)]
    length: i64,
    /// Timed forwards of the rows x length input per model (after one warm-up).
    #[arg(long, default_value_t = 7)]
    iters: usize,
    #[arg(long)]
    json: bool,
}

/// Forwards `ids` through `m` once to warm up, then `iters` times; the logits and the median seconds.
fn timed(m: &Model, ids: &Tensor, iters: usize) -> Result<(Tensor, f64)> {
    let mask = BlockMask::block_causal(32);
    let logits = m.forward(ids, &mut KvCache::new(), 0, mask)?;
    let mut times = Vec::new();
    for _ in 0..iters.max(1) {
        let t = Instant::now();
        drop(m.forward(ids, &mut KvCache::new(), 0, mask)?);
        if let Device::Cuda(i) = m.device() {
            tch::Cuda::synchronize(i as i64);
        }
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok((logits, times[times.len() / 2]))
}

/// Resident memory of loading `dir` with `quantize`, measured in a child process (`dllm bench load`) so that
/// each figure is a fresh process's.
fn load_memory(dir: &std::path::Path, device: &str, dtype: &str, quantize: Option<Quantization>) -> Result<serde_json::Value> {
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["bench", "load", "--json", "--device", device, "--dtype", dtype, "--model"]).arg(dir);
    if let Some(q) = quantize {
        cmd.args(["--quantize", &q.to_string()]);
    }
    let out = cmd.output().context("running dllm bench load")?;
    anyhow::ensure!(out.status.success(), "dllm bench load failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Resident memory a `bench load` report's load added.
fn grown(load: &serde_json::Value) -> f64 {
    let get = |k: &str| load[k].as_f64().unwrap_or(f64::NAN);
    get("rss_after_bytes") - get("rss_before_bytes")
}

pub fn bench(a: &QuantizeBench) -> Result<()> {
    let device = dllm_engine::parse_device(&a.device)?;
    let dtype: DType = a.dtype.parse()?;
    let tmp = tempfile::tempdir()?;
    let dir = match &a.model {
        Some(d) => d.clone(),
        None => {
            let config = shapes::shape(&a.shape)?;
            let init = dllm_engine::RandomInit::new(0, 0.02, Device::Cpu, DType::F32);
            let opts = dllm_engine::checkpoint::SaveOptions { dtype, fused_experts: false, shard_bytes: None };
            shapes::write_random_checkpoint(&config, init, tmp.path(), opts)?;
            tmp.path().to_path_buf()
        }
    };
    let full = dllm_engine::load(&dir, device, Some(dtype))?;
    let vocab = full.model.config().vocab_size;
    let ids = dllm_engine::with_global_seed(7, || Tensor::randint(vocab, [a.rows, a.length], (Kind::Int64, device)));
    let (reference, full_s) = timed(&full.model, &ids, a.iters)?;
    let experts_full = full.model.weight_bytes_by_part()[0].1 as f64;
    let mut results = vec![json!({
        "experts": dtype.to_string(),
        "forward_seconds": full_s,
        "experts_bytes": experts_full,
        "weight_bytes": full.model.weight_bytes(),
        "load": load_memory(&dir, &a.device, &a.dtype, None)?,
    })];
    let mut fast_path = None;
    for q in [Quantization::Int8, Quantization::Fp8] {
        let mut m = full.model.quantized(q)?;
        let experts = m.weight_bytes_by_part()[0].1 as f64;
        let load = load_memory(&dir, &a.device, &a.dtype, Some(q))?;
        // fp8 along each path this device has: dequantized, the fast path's arithmetic emulated, and the fast
        // path itself where its probe passed; each also against the dequantize path.
        let paths = match m.fp8_matmul() {
            Some(p) => {
                fast_path = Some(p.clone());
                let mut v = vec![ExpertMatmul::Dequantize, ExpertMatmul::Emulated];
                v.extend((p.path == ExpertMatmul::Scaled).then_some(ExpertMatmul::Scaled));
                v.into_iter().map(Some).collect()
            }
            _ => vec![None],
        };
        let (mut dequantized, mut emulated) = (None, None);
        for path in paths {
            if let Some(p) = path {
                m.set_fp8_matmul(Fp8MatmulChoice::Exactly(p))?;
            }
            let (logits, secs) = timed(&m, &ids, a.iters)?;
            let against_dequantize = dequantized.as_ref().map(|d| Fidelity::of(d, &logits));
            // The fast path against its own arithmetic in f32: only accumulation order and rounding differ.
            let against_emulated = (path == Some(ExpertMatmul::Scaled)).then(|| emulated.as_ref().map(|e| Fidelity::of(e, &logits))).flatten();
            results.push(json!({
                "experts": q.to_string(),
                "fp8_matmul": path,
                "forward_seconds": secs,
                "forward_over_full": secs / full_s,
                "experts_bytes": experts,
                "experts_over_full": experts / experts_full,
                "weight_bytes": experts + (full.model.weight_bytes() as f64 - experts_full),
                // What loading added to the process (after - before), the quantized load over the full one.
                "resident_over_full": grown(&load) / grown(&results[0]["load"]),
                "load": load,
                "fidelity": Fidelity::of(&reference, &logits),
                "against_dequantize": against_dequantize,
                "against_emulated": against_emulated,
            }));
            match path {
                Some(ExpertMatmul::Dequantize) => dequantized = Some(logits),
                Some(ExpertMatmul::Emulated) => emulated = Some(logits),
                _ => {}
            }
        }
    }
    let out = json!({
        "bench": "quantize",
        "model": a.model.as_ref().map_or(format!("random {}", a.shape), |d| d.display().to_string()),
        "device": format!("{device:?}").to_lowercase(),
        "dtype": dtype.to_string(),
        "threads": tch::get_num_threads(),
        "positions": a.rows * a.length,
        // The fp8 fast path's probe on this device: taken, or why not.
        "fp8_fast_path": fast_path,
        "results": results,
    });
    if a.json {
        println!("{out}");
    } else {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}

#[derive(Args)]
pub struct QuantizeArgs {
    /// The checkpoint folder to quantize (bf16 or f32, the official layout), or builtin:NAME.
    #[arg(long)]
    model: PathBuf,
    /// int8 (a scale per output channel) or fp8 (e4m3, a scale per 128 x 128 block).
    #[arg(long = "to")]
    format: String,
    /// The new checkpoint folder (must not exist, or be empty).
    #[arg(long)]
    out: PathBuf,
    /// dtype of everything that is not a routed expert (router, attention, norms, embeddings, head).
    #[arg(long, default_value = "bf16")]
    dtype: String,
    /// Shards of at most this many MiB (with model.safetensors.index.json); 0 writes one file.
    #[arg(long, default_value_t = 4096)]
    shard_mib: u64,
}

/// `dllm quantize`: reads a checkpoint one expert at a time into its quantized form (on the CPU) and writes it
/// as a quantized checkpoint, so a large model is quantized once and later loads read it as it is.
pub fn quantize(a: &QuantizeArgs) -> Result<()> {
    let format: Quantization = a.format.parse()?;
    let dtype: DType = a.dtype.parse()?;
    if a.out.exists() && std::fs::read_dir(&a.out).map(|mut d| d.next().is_some()).unwrap_or(true) {
        anyhow::bail!("--out {} exists and is not empty: nothing was written; choose a new folder", a.out.display());
    }
    let l = dllm_engine::load_with(&a.model, Device::Cpu, Some(dtype), Some(format)).with_context(|| format!("loading {}", a.model.display()))?;
    let tmp = dllm_engine::checkpoint::temp_sibling(&a.out)?;
    let write = || -> Result<()> {
        let shard_bytes = (a.shard_mib > 0).then(|| (a.shard_mib << 20) as usize);
        let opts = dllm_engine::checkpoint::SaveOptions { dtype, fused_experts: false, shard_bytes };
        shapes::write_checkpoint(&l.model, &tmp, opts)?;
        std::fs::write(tmp.join("tokenizer.json"), l.tokenizer.to_json_text()?)?;
        for name in ["chat_template.jinja", "tokenizer_config.json"] {
            let from = l.dir.join(name);
            if from.is_file() {
                std::fs::copy(&from, tmp.join(name)).with_context(|| format!("copying {}", from.display()))?;
            }
        }
        Ok(dllm_engine::checkpoint::install_dir(&tmp, &a.out)?)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let parts = l.model.weight_bytes_by_part();
    println!(
        "wrote {} with {format} routed experts ({:.1} MiB of {:.1} MiB of weights; the rest in {dtype}); load it as it is: dllm --model {}",
        a.out.display(),
        parts[0].1 as f64 / (1 << 20) as f64,
        l.model.weight_bytes() as f64 / (1 << 20) as f64,
        a.out.display()
    );
    Ok(())
}
