//! `dllm bench rl`: the time of an EBPO update by phase (rollout, reward, likelihood, backward) on the
//! embedded model, and the memory of an update by trainable set (all parameters vs LoRA) on a random model of a
//! named shape, measured in one run so the numbers compare as ratios.

use anyhow::{bail, Result};
use clap::Args;
use dllm_engine::rl::{Reward, Rl, RlConfig, Trainable, UpdateMetrics};
use dllm_engine::tasks::Task;
use dllm_engine::{shapes, DType, Tokenizer};
use serde_json::{json, Value};
use tch::Device;

#[derive(Args)]
pub struct RlBench {
    /// Timed updates per trainable set on the embedded model (after one warm-up update); 0 skips the timing.
    #[arg(long, default_value_t = 5)]
    updates: usize,
    /// Trainable sets to time, comma-separated (all, lm-head, layers:A-B, lora:R).
    #[arg(long, default_value = "all,lora:8")]
    trainable: String,
    /// Also measure the peak host memory of one update per trainable set on a random model of this shape
    /// (e.g. `mid`); LoRA is the point of this number.
    #[arg(long)]
    memory: Option<String>,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Internal: measure the memory of the one `--trainable` set in this process and print it as JSON (the
    /// parent runs one process per set so each peak is its own).
    #[arg(long, hide = true)]
    memory_only: Option<String>,
    #[arg(long)]
    json: bool,
}

fn mean(ms: &[UpdateMetrics], f: impl Fn(&UpdateMetrics) -> f64) -> f64 {
    ms.iter().map(f).sum::<f64>() / ms.len().max(1) as f64
}

pub fn rl(a: &RlBench) -> Result<()> {
    let device = dllm_engine::parse_device(&a.device)?;
    let sets = a.trainable.split(',').map(|t| Trainable::parse(t.trim())).collect::<Result<Vec<_>, _>>()?;
    if let Some(p) = &a.memory_only {
        println!("{}", memory_one(p, &sets[0], device)?);
        return Ok(());
    }
    let mut timing = Vec::new();
    for t in sets.iter().filter(|_| a.updates > 0) {
        // A fresh copy of the embedded model per set: every set starts from the same policy.
        let mut l = dllm_engine::load_builtin(device, None)?;
        let lr = if matches!(t, Trainable::Lora { .. }) { 1e-3 } else { 1e-4 };
        let c = RlConfig { tasks: vec![Task::Order], reward: Reward::parse("exact")?, trainable: t.clone(), lr, ..RlConfig::default() };
        let mut rl = Rl::new(&mut l.model, c)?;
        rl.update(&l.model, &l.tokenizer)?;
        let ms = (0..a.updates).map(|_| rl.update(&l.model, &l.tokenizer)).collect::<Result<Vec<_>, _>>()?;
        let total = mean(&ms, |m| m.time.total);
        timing.push(json!({
            "trainable": t.describe(), "trainable_parameters": rl.num_parameters(), "updates": a.updates,
            "rollouts": ms[0].rollouts, "mean_trained_rollouts": mean(&ms, |m| m.trained as f64),
            "total_s": total, "rollout_s": mean(&ms, |m| m.time.rollout), "reward_s": mean(&ms, |m| m.time.reward),
            "likelihood_s": mean(&ms, |m| m.time.likelihood), "backward_s": mean(&ms, |m| m.time.backward),
            "rewards": ms.iter().map(|m| m.reward_mean).collect::<Vec<_>>(),
        }));
    }
    let memory = match &a.memory {
        Some(p) => Some(memory(p, &sets, &a.device)?),
        None => None,
    };
    let out = json!({ "bench": "rl", "device": a.device, "threads": tch::get_num_threads(), "timing": timing, "memory": memory });
    if a.json {
        println!("{out}");
        return Ok(());
    }
    if a.updates > 0 {
        println!("EBPO update on the embedded model, task order, reward exact, 4 prompts x 8 rollouts ({} threads)", out["threads"]);
        for t in &timing {
            let f = |k: &str| t[k].as_f64().unwrap_or(0.0);
            println!(
                "  {:<10} {:>9} params: {:.2} s per update = rollout {:.2} + reward {:.3} + likelihood {:.2} + backward {:.2} ({:.1} of 32 rollouts trained)",
                t["trainable"].as_str().unwrap_or(""), t["trainable_parameters"], f("total_s"), f("rollout_s"), f("reward_s"), f("likelihood_s"), f("backward_s"), f("mean_trained_rollouts")
            );
        }
    }
    if let Some(Value::Array(rows)) = &out["memory"].get("sets").cloned() {
        println!("Peak host memory of one update on a random `{}` model ({} MB of weights):", out["memory"]["preset"].as_str().unwrap_or(""), out["memory"]["weight_mb"]);
        for r in rows {
            let gpu = r["gpu_update_mb"].as_f64().map(|g| format!(", +{g:.0} MB on the device")).unwrap_or_default();
            println!("  {:<10} +{:.0} MB host{gpu} over the resident model ({} trainable parameters)", r["trainable"].as_str().unwrap_or(""), r["update_peak_mb"].as_f64().unwrap_or(0.0), r["trainable_parameters"]);
        }
    }
    Ok(())
}

/// The memory of one update per trainable set on a random model of `preset`, each set in its own process.
fn memory(preset: &str, sets: &[Trainable], device: &str) -> Result<Value> {
    let exe = std::env::current_exe()?;
    let mut rows = Vec::new();
    for t in sets {
        let out = std::process::Command::new(&exe)
            .args(["bench", "rl", "--device", device, "--memory-only", preset, "--trainable", &t.describe()])
            .output()?;
        if !out.status.success() {
            bail!("memory bench of {}: {}", t.describe(), String::from_utf8_lossy(&out.stderr));
        }
        rows.push(serde_json::from_slice::<Value>(&out.stdout)?);
    }
    let weight_mb = rows.first().map(|r| r["weight_mb"].clone()).unwrap_or(Value::Null);
    Ok(json!({ "preset": preset, "weight_mb": weight_mb, "sets": rows }))
}

/// Peak host memory (and device memory in use, on CUDA) of one update of `t` on a random model of `preset`
/// (KL on, so every rollout is forwarded and backwarded whatever the rewards of a random model).
fn memory_one(preset: &str, t: &Trainable, device: Device) -> Result<Value> {
    let config = shapes::shape(preset)?;
    let spec = shapes::tokenizer_spec(config.vocab_size);
    let json = serde_json::to_string(&spec.to_json())?;
    let tok = Tokenizer::from_bytes(json.as_bytes(), std::path::Path::new("tokenizer.json"), &config)?;
    let dtype = if device == Device::Cpu { DType::F32 } else { DType::Bf16 };
    let mut model = shapes::random_model(&config, 0, device, dtype)?;
    let c = RlConfig { tasks: vec![Task::Copy], batch: 2, group: 4, reward: Reward::parse("regex .")?, kl: 0.01, trainable: t.clone(), ..RlConfig::default() };
    std::fs::write("/proc/self/clear_refs", "5")?;
    let before = crate::bench::proc_status_kib("VmRSS")? * 1024;
    let gpu_before = crate::bench::gpu_memory_used(device);
    let mut rl = Rl::new(&mut model, c)?;
    let m = rl.update(&model, &tok)?;
    let peak = crate::bench::proc_status_kib("VmHWM")? * 1024;
    let gpu_after = crate::bench::gpu_memory_used(device);
    Ok(json!({
        "trainable": t.describe(), "trainable_parameters": rl.num_parameters(), "dtype": dtype.to_string(),
        "weight_mb": model.weight_bytes() as f64 / 1e6,
        "update_peak_mb": (peak.saturating_sub(before)) as f64 / 1e6,
        // The caching allocator keeps what the update needed, so in-use after minus before approximates its peak.
        "gpu_update_mb": gpu_before.zip(gpu_after).map(|(b, a)| a.saturating_sub(b) as f64 / 1e6),
        "seconds": m.time.total, "rollouts": m.rollouts,
    }))
}
