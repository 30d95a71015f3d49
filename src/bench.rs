//! `dllm bench`: forward latency, load time and peak memory. Numbers go to docs/performance.md with the
//! machine they ran on; compare runs only as ratios measured in one invocation (these machines are noisy).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use dllm_engine::{shapes, BlockMask, DType, KvCache};
use serde_json::json;
use tch::{Device, Kind, Tensor};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Latency of one block forward after a cached prefix, on a random model of a named shape.
    Forward(ForwardBench),
    /// Load time and peak host memory of loading a checkpoint folder.
    Load(LoadBench),
    /// The decoder: step() overhead over its forward, and cached versus no-cache decoding.
    Decode(DecodeBench),
    /// The session: a `step` command's cost over the decoder step it wraps (embedded model, CPU).
    Session(SessionBench),
    /// Training throughput of a recipe and the time split of a step.
    Train(crate::bench_train::TrainBench),
    /// The vectorised ELBO against the per-block loop (same noise).
    Likelihood(crate::bench_likelihood::LikelihoodBench),
    /// An EBPO update's time by phase (embedded model) and its memory by trainable set (random model).
    Rl(crate::bench_rl::RlBench),
    /// Quantized experts (int8, fp8) against the full model: resident memory, fidelity and forward time.
    Quantize(crate::quant_cmd::QuantizeBench),
}

#[derive(Args)]
pub struct SessionBench {
    /// Timed steps.
    #[arg(long, default_value_t = 40)]
    steps: usize,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct DecodeBench {
    /// Model shape (random weights).
    #[arg(long, alias = "preset", default_value = "tiny")]
    shape: String,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Blocks to generate.
    #[arg(long, default_value_t = 8)]
    blocks: i64,
    #[arg(long, default_value_t = 32)]
    block: i64,
    /// Decoding preset.
    #[arg(long, default_value = "S")]
    decode_preset: String,
    /// Rows of the batched run (the same prompt, as in RL rollouts).
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ForwardBench {
    /// Model shape (see `dllm init-model --help`).
    #[arg(long, alias = "preset", default_value = "tiny")]
    shape: String,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long)]
    dtype: Option<String>,
    /// Cached prefix length (a multiple of the block length).
    #[arg(long, default_value_t = 0)]
    prefix: i64,
    #[arg(long, default_value_t = 32)]
    block: i64,
    #[arg(long, default_value_t = 1)]
    batch: i64,
    /// Timed repetitions (after 2 warm-up runs).
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// MoE routing: preset (as the shape defines it), group (LLaDA2.1 group-limited), block (LLaDA2.2 block
    /// routing on the same shape), or both (same weights, one process, the block/group ratio printed).
    #[arg(long, default_value = "preset")]
    routing: String,
    /// Block routing's pool size (default: the shape's, else LLaDA2.2's share 48/256 of the experts, at least top-k).
    #[arg(long)]
    capacity: Option<i64>,
    /// Block routing's group length (default: the shape's, else 32).
    #[arg(long)]
    routing_block: Option<i64>,
    /// Hold the routed experts quantized: int8 or fp8.
    #[arg(long)]
    quantize: Option<String>,
    /// How fp8 experts multiply: auto, dequantize, scaled or emulated.
    #[arg(long)]
    fp8_matmul: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct LoadBench {
    #[arg(long)]
    model: PathBuf,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long)]
    dtype: Option<String>,
    /// Hold the routed experts quantized: int8 or fp8.
    #[arg(long)]
    quantize: Option<String>,
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Forward(a) => forward(&a),
        BenchCommand::Load(a) => load(&a),
        BenchCommand::Decode(a) => decode(&a),
        BenchCommand::Session(a) => session(&a),
        BenchCommand::Train(a) => crate::bench_train::train(&a),
        BenchCommand::Likelihood(a) => crate::bench_likelihood::likelihood(&a),
        BenchCommand::Rl(a) => crate::bench_rl::rl(&a),
        BenchCommand::Quantize(a) => crate::quant_cmd::bench(&a),
    }
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    v[v.len() / 2]
}

fn forward(a: &ForwardBench) -> Result<()> {
    if a.prefix % a.block != 0 {
        bail!("--prefix {} must be a multiple of --block {}", a.prefix, a.block);
    }
    let device = dllm_engine::parse_device(&a.device)?;
    let dtype = a.dtype.as_deref().map(str::parse::<DType>).transpose()?.unwrap_or_else(|| DType::default_for(device));
    let mut base = shapes::shape(&a.shape)?;
    base.quantization = dllm_engine::Quantization::parse_option(a.quantize.as_deref())?;
    let out = match a.routing.as_str() {
        "preset" => forward_one(a, &base, device, dtype)?,
        "group" => forward_one(a, &routed(a, &base, false)?, device, dtype)?,
        "block" => forward_one(a, &routed(a, &base, true)?, device, dtype)?,
        "both" => {
            // Same weights (same seed and shapes) under both routings, alternated twice so that a noisy
            // neighbour slows both alike; each routing keeps its faster round.
            let (group, block) = (routed(a, &base, false)?, routed(a, &base, true)?);
            let mut rounds = Vec::new();
            for _ in 0..2 {
                rounds.push((forward_one(a, &group, device, dtype)?, forward_one(a, &block, device, dtype)?));
            }
            let best = |pick: &dyn Fn(&(serde_json::Value, serde_json::Value)) -> &serde_json::Value| {
                rounds.iter().map(pick).min_by(|x, y| x["block_forward_ms"].as_f64().partial_cmp(&y["block_forward_ms"].as_f64()).expect("finite")).expect("two rounds").clone()
            };
            let (g, b) = (best(&|r| &r.0), best(&|r| &r.1));
            let ratio = |k: &str| b[k].as_f64().unwrap_or(f64::NAN) / g[k].as_f64().unwrap_or(f64::NAN);
            json!({
                "bench": "forward-routing",
                "shape": a.shape,
                "threads": tch::get_num_threads(),
                "block_over_group_block_forward": ratio("block_forward_ms"),
                "block_over_group_no_cache_forward": ratio("no_cache_forward_ms"),
                "group": g,
                "block": b,
            })
        }
        other => bail!("unknown --routing {other:?}: expected preset, group, block or both"),
    };
    if a.json {
        println!("{out}");
    } else {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}

/// The shape with LLaDA2.2 block routing on (`block`) or off (2.1 group-limited routing, the shape's own
/// groups; a block-routed shape falls back to no expert groups).
fn routed(a: &ForwardBench, base: &dllm_engine::Config, block: bool) -> Result<dllm_engine::Config> {
    let mut raw: dllm_engine::RawConfig = serde_json::from_value(base.to_hf_json())?;
    if block {
        // LLaDA2.2's pool is 48 of 256 experts: the same share by default, never fewer than top-k.
        let share = (base.num_experts * 48 + 255) / 256;
        raw.expert_capacity = Some(a.capacity.unwrap_or_else(|| base.expert_capacity.unwrap_or(share).max(base.num_experts_per_tok)));
        raw.block_size = Some(a.routing_block.unwrap_or_else(|| base.block_size.unwrap_or(32)));
    } else {
        if base.block_routing().is_some() {
            raw.n_group = Some(1);
        }
        (raw.expert_capacity, raw.block_size, raw.delete_token_id, raw.split_token_id) = (None, None, None, None);
    }
    Ok(dllm_engine::Config::resolve(&raw)?)
}

fn forward_one(a: &ForwardBench, config: &dllm_engine::Config, device: Device, dtype: DType) -> Result<serde_json::Value> {
    let mem_before = gpu_memory_used(device);
    let t0 = Instant::now();
    let mut model = shapes::random_model(config, 0, device, dtype)?;
    if let Some(choice) = a.fp8_matmul.as_deref() {
        model.set_fp8_matmul(choice.parse()?).context("--fp8-matmul")?;
    }
    sync(device);
    let build_s = t0.elapsed().as_secs_f64();
    let mask = BlockMask::block_causal(a.block);
    let vocab = config.vocab_size;
    // Seeded so that both routings of `--routing both` see the same tokens.
    let ids = |len: i64, seed: u64| dllm_engine::with_global_seed(seed, || Tensor::randint(vocab, [a.batch, len], (Kind::Int64, device)));

    // The cached case: prefix committed once, then the block alone.
    let mut cache = KvCache::new();
    let t0 = Instant::now();
    if a.prefix > 0 {
        let _ = model.forward(&ids(a.prefix, 1), &mut cache, a.prefix, mask)?;
    }
    sync(device);
    let prefill_s = t0.elapsed().as_secs_f64();
    let block = ids(a.block, 2);
    let mut cached = Vec::new();
    for i in 0..a.iters + 2 {
        let t = Instant::now();
        let logits = model.forward(&block, &mut cache, 0, mask)?;
        sync(device);
        drop(logits);
        if i >= 2 {
            cached.push(t.elapsed().as_secs_f64());
        }
    }
    // The same logits without a cache: prefix and block recomputed every time (the reference decoder's cost).
    let full_ids = ids(a.prefix + a.block, 3);
    let mut full = Vec::new();
    for i in 0..a.iters.min(5) + 1 {
        let t = Instant::now();
        let logits = model.forward(&full_ids, &mut KvCache::new(), 0, mask)?;
        sync(device);
        drop(logits);
        if i >= 1 {
            full.push(t.elapsed().as_secs_f64());
        }
    }
    let mem_after = gpu_memory_used(device);
    let (cached, full) = (median(cached), median(full));
    let routing = match config.block_routing() {
        Some((c, b)) => format!("block (pool {c} of {} per {b} positions)", config.num_experts),
        None if config.group_limited() => format!("group (top-{} of {} groups)", config.topk_group, config.n_group),
        None => "top-k".into(),
    };
    Ok(json!({
        "bench": "forward",
        "shape": a.shape,
        "routing": routing,
        "device": format!("{device:?}").to_lowercase(),
        "dtype": dtype.to_string(),
        "quantize": config.quantization.map(|q| q.to_string()),
        "fp8_matmul": model.fp8_matmul(),
        "threads": tch::get_num_threads(),
        "parameters": model.num_parameters(),
        "weight_bytes": model.weight_bytes(),
        "build_seconds": build_s,
        "batch": a.batch,
        "prefix": a.prefix,
        "block": a.block,
        "prefill_ms": prefill_s * 1e3,
        "block_forward_ms": cached * 1e3,
        "no_cache_forward_ms": full * 1e3,
        "no_cache_over_cached": full / cached,
        "kv_cache_bytes": cache.bytes(),
        "gpu_memory_used_bytes": mem_after,
        "gpu_memory_before_bytes": mem_before,
    }))
}

fn load(a: &LoadBench) -> Result<()> {
    let device = dllm_engine::parse_device(&a.device)?;
    let dtype = a.dtype.as_deref().map(str::parse::<DType>).transpose()?;
    // Reset the peak-RSS counter so VmHWM below measures the load alone.
    std::fs::write("/proc/self/clear_refs", "5")?;
    let rss_before = proc_status_kib("VmRSS")? * 1024;
    let quantize = dllm_engine::Quantization::parse_option(a.quantize.as_deref())?;
    let loaded = dllm_engine::load_with(&a.model, device, dtype, quantize)?;
    let peak = proc_status_kib("VmHWM")? * 1024;
    let rss_after = proc_status_kib("VmRSS")? * 1024;
    let ckpt = loaded.checkpoint_bytes as u64;
    let out = json!({
        "bench": "load",
        "model": a.model.display().to_string(),
        "device": format!("{device:?}").to_lowercase(),
        "dtype": loaded.model.dtype().to_string(),
        "quantize": loaded.model.quantization().map(|q| q.to_string()),
        "checkpoint_bytes": ckpt,
        "weight_bytes": loaded.model.weight_bytes(),
        "load_seconds": loaded.load_time.as_secs_f64(),
        "rss_before_bytes": rss_before,
        "rss_after_bytes": rss_after,
        "peak_rss_bytes": peak,
        "peak_over_checkpoint": (peak - rss_before) as f64 / ckpt as f64,
        "resident_over_checkpoint": (rss_after.saturating_sub(rss_before)) as f64 / ckpt as f64,
    });
    if a.json {
        println!("{out}");
    } else {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}

pub(crate) fn proc_status_kib(field: &str) -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix(field).and_then(|r| r.strip_prefix(':')) {
            return Ok(rest.trim().trim_end_matches("kB").trim().parse()?);
        }
    }
    bail!("/proc/self/status has no {field}")
}

/// Device memory in use (total - free, as cudaMemGetInfo reports it), or None off CUDA.
pub(crate) fn gpu_memory_used(device: Device) -> Option<u64> {
    let Device::Cuda(_) = device else { return None };
    type MemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> i32;
    let name = std::ffi::CString::new("cudaMemGetInfo").expect("no NUL");
    // SAFETY: dlsym on the global scope; libtorch_cuda (loaded RTLD_GLOBAL) brings libcudart in.
    let sym = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    if sym.is_null() {
        return None;
    }
    // SAFETY: cudaMemGetInfo(size_t* free, size_t* total) -> cudaError_t.
    let f: MemGetInfo = unsafe { std::mem::transmute(sym) };
    let (mut free, mut total) = (0usize, 0usize);
    (unsafe { f(&mut free, &mut total) } == 0).then(|| (total - free) as u64)
}

fn decode(a: &DecodeBench) -> Result<()> {
    use dllm_engine::decode::{BatchDecoder, DecodeSettings, Decoder};
    let device = dllm_engine::parse_device(&a.device)?;
    let mut config = shapes::shape(&a.shape)?;
    let mut s = DecodeSettings::official(a.blocks * a.block);
    s.block_length = a.block;
    s.apply_preset(&a.decode_preset)?;
    if s.edit_ops == dllm_engine::decode::EditOps::Levenshtein && config.delete_token_id.is_none() {
        // A shape without edit tokens (a 2.1 shape): the last two ids play DELETE and SPLIT, so the same shape
        // measures both decoders.
        config.delete_token_id = Some(config.vocab_size - 2);
        config.split_token_id = Some(config.vocab_size - 1);
    }
    let model = shapes::random_model(&config, 0, device, DType::default_for(device))?;
    // A prompt of one block, then `blocks` generated blocks; mask 1 / EOS 0 as in the compact vocabulary.
    let prompt: Vec<i64> = (0..a.block).map(|i| 8 + i % (config.vocab_size - 8)).collect();
    let run = |cache: bool| -> Result<(f64, f64, f64, i64)> {
        let mut d = Decoder::new(&prompt, s.clone(), 1, 0, &model)?;
        d.set_cache_enabled(cache);
        let t = Instant::now();
        let reports = d.run(&model)?;
        sync(device);
        let wall = t.elapsed().as_secs_f64();
        let fwd: f64 = reports.iter().map(|r| r.forward_ms).sum::<f64>() / 1e3;
        let total: f64 = reports.iter().map(|r| r.total_ms).sum::<f64>() / 1e3;
        Ok((wall, fwd, total, d.cursor().forwards))
    };
    let _ = run(true)?; // warm-up
    let (cached_wall, cached_fwd, cached_total, forwards) = run(true)?;
    let (nocache_wall, _, _, nocache_forwards) = run(false)?;
    let prompts = vec![prompt.clone(); a.batch];
    let mut batch = BatchDecoder::new(&prompts, s.clone(), 1, 0, &model)?;
    let t = Instant::now();
    let batch_forwards = batch.run(&model)?;
    sync(device);
    let batch_wall = t.elapsed().as_secs_f64();
    let batch_tokens: i64 = batch.rows().iter().map(|d| d.decoded_tokens()).sum();
    let single_tokens = batch.rows()[0].decoded_tokens();
    let out = json!({
        "bench": "decode",
        "shape": a.shape,
        "decode_preset": a.decode_preset,
        "device": format!("{device:?}").to_lowercase(),
        "threads": tch::get_num_threads(),
        "blocks": a.blocks,
        "block": a.block,
        "forwards": forwards,
        "cached_seconds": cached_wall,
        "no_cache_seconds": nocache_wall,
        "no_cache_over_cached": nocache_wall / cached_wall,
        "same_forwards": forwards == nocache_forwards,
        "forward_seconds_in_steps": cached_fwd,
        "step_seconds": cached_total,
        "step_overhead_over_forward": (cached_total - cached_fwd) / cached_fwd,
        "ms_per_step": cached_total * 1e3 / forwards as f64,
        "levenshtein": s.edit_ops == dllm_engine::decode::EditOps::Levenshtein,
        "batch_rows": a.batch,
        "batch_forwards": batch_forwards,
        "batch_seconds": batch_wall,
        "batch_tokens_per_second": batch_tokens as f64 / batch_wall,
        "single_tokens_per_second": single_tokens as f64 / cached_wall,
    });
    if a.json {
        println!("{out}");
    } else {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}

fn session(a: &SessionBench) -> Result<()> {
    use dllm_engine::decode::Decoder;
    use dllm_repl::{ModelSource, Session};
    let t0 = Instant::now();
    let mut s = Session::new(ModelSource { dir: None, device: "cpu".into(), dtype: None, quantize: None, fp8_matmul: None });
    let session_new_ms = t0.elapsed().as_secs_f64() * 1e3;
    let gen = (a.steps as i64 + 8) * 8;
    let setup = [format!("set gen_length {gen}"), "set block_length 8".into(), "set threshold 1.0".into(), "prompt-ids 10,11,12".into()];
    for line in &setup {
        s.execute(line).map_err(|e| anyhow::anyhow!("{line}: {e}"))?;
    }
    let model_ready_ms = t0.elapsed().as_secs_f64() * 1e3;
    // The same decode driven directly: threshold 1.0 makes every step unmask exactly one token.
    let loaded = dllm_engine::load_builtin(Device::Cpu, None)?;
    let mut settings = dllm_engine::decode::DecodeSettings::official(gen);
    settings.block_length = 8;
    settings.threshold = 1.0;
    let mut d = Decoder::new(&[10, 11, 12], settings, loaded.tokenizer.mask_id, loaded.tokenizer.eos_id, &loaded.model)?;
    let (mut cmd, mut bare, mut render) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..a.steps {
        let t = Instant::now();
        let values = s.execute("step").map_err(|e| anyhow::anyhow!("step: {e}"))?;
        cmd.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let _ = dllm_repl::render::render_all(&values);
        render.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        d.step(&loaded.model)?;
        bare.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let (cmd, bare) = (median(cmd), median(bare));
    let out = json!({
        "bench": "session",
        "steps": a.steps,
        "session_new_ms": session_new_ms,
        "first_command_ready_ms": model_ready_ms,
        "step_command_ms": cmd,
        "decoder_step_ms": bare,
        "command_overhead_ms": cmd - bare,
        "render_all_ms": median(render),
    });
    if a.json {
        println!("{out}");
    } else {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}
