//! `dllm info`, `dllm init-model`, `dllm forward`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use dllm_engine::fp8_matmul::Fp8MatmulChoice;
use dllm_engine::quant::Fidelity;
use dllm_engine::{checkpoint::SaveOptions, shapes, BlockMask, DType, KvCache, Loaded, MaskKind, Quantization};
use serde_json::json;
use tch::{Kind, Tensor};

/// Where a model comes from and where it runs.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Checkpoint folder (config.json, model.safetensors[.index.json], tokenizer.json) or an embedded model
    /// (builtin:tiny, builtin:tiny-2.2); default: builtin:tiny.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// auto (CUDA when available, else CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// f32, bf16 or f16 (default: bf16 on CUDA, f32 on CPU).
    #[arg(long)]
    pub dtype: Option<String>,
    /// Hold the routed experts quantized: int8 (a scale per output channel) or fp8 (e4m3, a scale per
    /// 128 x 128 block); default: as the checkpoint stores them.
    #[arg(long)]
    pub quantize: Option<String>,
    /// How fp8 experts multiply: auto (the GPU's fp8 tensor cores where its probe passes, else dequantized),
    /// dequantize, scaled (the tensor cores, or an error) or emulated (their arithmetic in f32, any device).
    #[arg(long)]
    pub fp8_matmul: Option<String>,
}

impl Default for ModelArgs {
    fn default() -> Self {
        ModelArgs { model: None, device: "auto".into(), dtype: None, quantize: None, fp8_matmul: None }
    }
}

impl ModelArgs {
    pub fn load(&self) -> Result<Loaded> {
        let device = match self.device.as_str() {
            "auto" if dllm_engine::cuda_device_count() > 0 => tch::Device::Cuda(0),
            "auto" => tch::Device::Cpu,
            d => dllm_engine::parse_device(d)?,
        };
        let dtype = self.dtype.as_deref().map(str::parse::<DType>).transpose()?;
        let quantize = Quantization::parse_option(self.quantize.as_deref())?;
        let dir = self.model.clone().unwrap_or_else(|| PathBuf::from(dllm_engine::BUILTIN));
        let fp8 = self.fp8_matmul.as_deref().map(str::parse::<Fp8MatmulChoice>).transpose()?;
        let mut l = dllm_engine::load_with(&dir, device, dtype, quantize).with_context(|| format!("loading {}", dir.display()))?;
        if let Some(choice) = fp8 {
            l.model.set_fp8_matmul(choice).context("--fp8-matmul")?;
        }
        Ok(l)
    }
}

#[derive(Args, Default)]
pub struct InfoArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn summary(l: &Loaded) -> serde_json::Value {
    let m = &l.model;
    let c = m.config();
    let embedded = dllm_engine::is_builtin(&l.dir);
    json!({
        "model": l.dir.display().to_string(),
        "embedded": embedded,
        "parameters": m.num_parameters(),
        "device": format!("{:?}", m.device()).to_lowercase(),
        "dtype": m.dtype().to_string(),
        "weight_bytes": m.weight_bytes(),
        "weight_bytes_by_part": m.weight_bytes_by_part().into_iter().map(|(p, b)| (p.to_string(), json!(b))).collect::<serde_json::Map<_, _>>(),
        "quantization": m.quantization().map(|q| q.to_string()),
        "fp8_matmul": m.fp8_matmul(),
        "load_seconds": l.load_time.as_secs_f64(),
        "layers": c.num_hidden_layers,
        "hidden_size": c.hidden_size,
        "experts": c.num_experts,
        "experts_per_token": c.num_experts_per_tok,
        "vocab_size": c.vocab_size,
        "routing": routing_json(c),
        "delete_id": c.delete_token_id,
        "split_id": c.split_token_id,
        "mask_id": l.tokenizer.mask_id,
        "eos_id": l.tokenizer.eos_id,
        "cuda": dllm_engine::cuda_status(),
        "memory_budget": memory_budget(m).map(|b| json!({ "bytes": b.bytes, "source": b.source })),
    })
}

/// What a request may still allocate on the model's device (the figure memory refusals compare with).
fn memory_budget(m: &dllm_engine::Model) -> Option<dllm_engine::memory::Budget> {
    dllm_engine::memory::Budget::of(m.device(), || m.weight_bytes() as u64).ok().flatten()
}

/// How the MoE layers route: LLaDA2.2 block routing or the 2.1 group-limited top-k.
fn routing_json(c: &dllm_engine::Config) -> serde_json::Value {
    match c.block_routing() {
        Some((capacity, block_size)) => json!({"kind": "block", "expert_capacity": capacity, "block_size": block_size}),
        None if c.group_limited() => json!({"kind": "group", "n_group": c.n_group, "topk_group": c.topk_group}),
        None => json!({"kind": "top-k"}),
    }
}

fn routing_text(c: &dllm_engine::Config) -> String {
    match c.block_routing() {
        Some((capacity, block_size)) => {
            format!("block: a pool of {capacity} of {} experts per {block_size} positions (LLaDA2.2)", c.num_experts)
        }
        None if c.group_limited() => format!("group-limited: top-{} of {} expert groups", c.topk_group, c.n_group),
        None => "top-k over all experts".into(),
    }
}

pub fn info(a: &InfoArgs) -> Result<()> {
    let l = a.model.load()?;
    let mut s = summary(&l);
    // Asking about quantization also shows what the released shapes need with each option.
    let projection = a.model.quantize.is_some().then(crate::quant_cmd::projection).transpose()?;
    if a.json {
        if let Some(p) = &projection {
            s["projection"] = json!(p);
        }
        println!("{s}");
        return Ok(());
    }
    let m = &l.model;
    let c = m.config();
    let what = dllm_engine::BUILTINS.iter().find(|b| Some(b.0) == s["model"].as_str()).map(|b| b.1);
    let label = what.map(|w| format!(" (embedded: {w})")).unwrap_or_default();
    println!("model      {}{label}", l.dir.display());
    println!(
        "shape      {} layers ({} dense), hidden {}, {} heads / {} KV x {}, {} experts top-{} (+{} shared), vocab {}",
        c.num_hidden_layers,
        c.first_k_dense_replace,
        c.hidden_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
        c.num_experts,
        c.num_experts_per_tok,
        c.num_shared_experts,
        c.vocab_size
    );
    if c.has_moe() {
        println!("routing    {}", routing_text(c));
    }
    println!("parameters {} ({:.1} MiB of weights)", m.num_parameters(), m.weight_bytes() as f64 / (1 << 20) as f64);
    let parts: Vec<String> = m.weight_bytes_by_part().into_iter().filter(|p| p.1 > 0).map(|(p, b)| format!("{p} {:.2}", b as f64 / (1 << 20) as f64)).collect();
    println!("weights    MiB: {}", parts.join(", "));
    if let Some(q) = m.quantization() {
        println!("quantized  {}", q.about());
    }
    if let Some(p) = m.fp8_matmul() {
        println!("fp8 matmul {}: {}", p.path, p.why);
    }
    println!("placed on  {:?}, {}; loaded in {:.2} s", m.device(), m.dtype(), l.load_time.as_secs_f64());
    if let Some(b) = memory_budget(m) {
        println!("memory     {} {} (larger requests are refused with an estimate)", dllm_engine::memory::human(b.bytes), b.source);
    }
    let edits = match (c.delete_token_id, c.split_token_id) {
        (Some(d), Some(s)) => format!(" delete {d} split {s}"),
        _ => String::new(),
    };
    println!("tokens     mask {} eos {} pad {}{edits}", l.tokenizer.mask_id, l.tokenizer.eos_id, l.tokenizer.pad_id);
    if let Some(p) = projection {
        crate::quant_cmd::print_projection(&p);
    }
    Ok(())
}

#[derive(Args)]
pub struct InitArgs {
    /// Model shape: micro, tiny, mid, llada2-mini, llada2-flash (LLaDA2.1 routing); micro-2.2, tiny-2.2,
    /// llada2.2-mini, llada2.2-flash (LLaDA2.2 block routing and edit tokens).
    #[arg(long, alias = "preset")]
    pub shape: String,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Standard deviation of the N(0, std) weight matrices.
    #[arg(long, default_value_t = 0.02)]
    pub std: f64,
    /// Also randomise norm weights and (expert) biases, so every tensor matters (for cross-checks).
    #[arg(long)]
    pub spread: bool,
    /// Output folder (created).
    #[arg(long)]
    pub out: PathBuf,
    /// On-disk dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Store routed experts fused ([E, I, H], the dFactory layout) instead of one tensor per expert.
    #[arg(long)]
    pub fused_experts: bool,
    /// Split the weights into shards of at most this many MiB, with model.safetensors.index.json.
    #[arg(long)]
    pub shard_mib: Option<f64>,
}

pub fn init_model(a: &InitArgs) -> Result<()> {
    let config = shapes::shape(&a.shape)?;
    let opts = SaveOptions {
        dtype: a.dtype.parse()?,
        fused_experts: a.fused_experts,
        shard_bytes: a.shard_mib.map(|m| (m * (1u64 << 20) as f64) as usize),
    };
    let init = dllm_engine::RandomInit::new(a.seed, a.std, tch::Device::Cpu, DType::F32).spread(a.spread);
    shapes::write_random_checkpoint(&config, init, &a.out, opts)?;
    println!("wrote a random {} checkpoint (seed {}) to {}", a.shape, a.seed, a.out.display());
    Ok(())
}

#[derive(Args)]
pub struct ForwardArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Comma-separated token ids, e.g. 1,2,3.
    #[arg(long, value_delimiter = ',', required = true)]
    pub ids: Vec<i64>,
    /// Block length of the block-causal attention mask.
    #[arg(long, default_value_t = 32)]
    pub block_length: i64,
    /// Number of top tokens per position.
    #[arg(long, default_value_t = 5)]
    pub top_k: i64,
    /// block-causal (default) or hf-additive (the HF remote code's generate).
    #[arg(long, default_value = "block-causal")]
    pub attention: String,
    /// With --quantize: also run the model unquantized on the same ids and print how far the quantized
    /// distributions are from it (largest |dp|, top-1 agreement, KL).
    #[arg(long)]
    pub compare: bool,
    /// Print one JSON object: {"positions": [{"pos": 0, "top": [[id, p], ...]}, ...]} (and "fidelity").
    #[arg(long)]
    pub json: bool,
}

pub fn forward(a: &ForwardArgs) -> Result<()> {
    let mut margs = a.model.clone();
    if margs.dtype.is_none() {
        margs.dtype = Some("f32".into()); // the comparison format is defined on an f32 run
    }
    let quantize = Quantization::parse_option(margs.quantize.as_deref())?;
    if a.compare && quantize.is_none() {
        bail!("--compare compares a quantized model with the full one: add --quantize int8 or --quantize fp8");
    }
    // Compared: the full model is loaded, and the quantized one is its copy with quantized experts.
    let (l, full) = match (a.compare, quantize) {
        (true, Some(q)) => {
            let full = ModelArgs { quantize: None, fp8_matmul: None, ..margs.clone() }.load()?;
            let mut quantized = full.model.quantized(q)?;
            if let Some(choice) = margs.fp8_matmul.as_deref().map(str::parse::<Fp8MatmulChoice>).transpose()? {
                quantized.set_fp8_matmul(choice).context("--fp8-matmul")?;
            }
            let l = Loaded { model: quantized, tokenizer: full.tokenizer.clone(), dir: full.dir.clone(), checkpoint_bytes: full.checkpoint_bytes, load_time: full.load_time };
            (l, Some(full))
        }
        _ => (margs.load()?, None),
    };
    let kind = match a.attention.as_str() {
        "block-causal" => MaskKind::BlockCausal,
        "hf-additive" => MaskKind::HfAdditive,
        other => bail!("unknown --attention {other:?}: expected block-causal or hf-additive"),
    };
    let vocab = l.model.config().vocab_size;
    if a.top_k < 1 || a.top_k > vocab {
        bail!("--top-k {} must be in 1..={vocab}", a.top_k);
    }
    let ids = Tensor::from_slice(&a.ids).view([1, -1]);
    let mask = BlockMask { block_length: a.block_length, kind, bidirectional_from: None };
    let logits = l.model.forward(&ids, &mut KvCache::new(), 0, mask)?;
    let fidelity = match &full {
        Some(f) => Some(Fidelity::of(&f.model.forward(&ids, &mut KvCache::new(), 0, mask)?, &logits)),
        None => None,
    };
    let probs = logits.softmax(-1, Kind::Float).get(0);
    let (p, idx) = probs.topk(a.top_k, -1, true, true);
    let mut positions = Vec::new();
    for pos in 0..a.ids.len() as i64 {
        let p = Vec::<f32>::try_from(&p.get(pos))?;
        let idx = Vec::<i64>::try_from(&idx.get(pos))?;
        positions.push((pos, idx.into_iter().zip(p).collect::<Vec<_>>()));
    }
    if a.json {
        let out: Vec<_> = positions.iter().map(|(pos, top)| json!({"pos": pos, "top": top.iter().map(|(i, p)| json!([i, p])).collect::<Vec<_>>()})).collect();
        let mut v = json!({ "positions": out });
        if let Some(f) = fidelity {
            v["fidelity"] = json!(f);
        }
        if let Some(p) = l.model.fp8_matmul() {
            v["fp8_matmul"] = json!(p);
        }
        println!("{v}");
    } else {
        for (pos, top) in positions {
            let cells: Vec<String> =
                top.iter().map(|(i, p)| format!("{:>8} {:<12} {:.4}", i, format!("{:?}", l.tokenizer.token_text(*i)), p)).collect();
            println!("{pos:>5}  {}", cells.join("  "));
        }
        if let (Some(f), Some(q)) = (fidelity, quantize) {
            println!(
                "{q} against the full model over {} positions: largest |dp| {:.2e}, top-1 agreement {:.1}%, KL mean {:.2e} max {:.2e} nats",
                f.positions,
                f.max_abs_dp,
                100.0 * f.top1_agreement,
                f.kl_mean,
                f.kl_max
            );
        }
    }
    Ok(())
}
