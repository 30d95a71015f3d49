//! What the commands that change or score the resident weights share (`rl`, `train`, `likelihood`): messages
//! and usage errors, dropping stale caches after a weight change, saving the model as a checkpoint, and
//! `redecode` (a fresh decode of a branch's prompt under the current weights).

use std::path::Path;
use std::sync::atomic::Ordering;

use dllm_engine::decode::Decoder;
use dllm_engine::Loaded;

use crate::parse::Args;
use crate::session::{CmdResult, CommandError, Session};
use crate::value::Value;

pub(crate) fn msg(text: impl Into<String>) -> Value {
    Value::Message { text: text.into() }
}

pub(crate) use crate::commands::usage;

/// After the weights changed, every branch's cached blocks are stale.
pub(crate) fn clear_caches(s: &mut Session) {
    for d in s.branches.values_mut() {
        d.clear_cache();
    }
}

/// Writes the resident model (LoRA merged; the adapters alone too, in `dir/lora`) and its tokenizer into `dir`
/// as a loadable checkpoint: into a
/// temporary sibling folder first, then put in place atomically (`checkpoint::install_dir`), so `dir` is
/// either the old checkpoint or the complete new one. An existing `dir` that is not a checkpoint folder (no
/// config.json) and not empty is refused: a save never destroys what it did not write.
pub(crate) fn save_policy(l: &Loaded, dir: &Path) -> Result<(), CommandError> {
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return Err(CommandError::Failed(format!("cannot save into {}: the folder {} does not exist", dir.display(), parent.display())));
    }
    if dir.exists() {
        let empty = std::fs::read_dir(dir).map(|mut d| d.next().is_none()).unwrap_or(false);
        if !dir.is_dir() || !(empty || dir.join("config.json").is_file()) {
            return Err(CommandError::Failed(format!(
                "{} exists and is not a checkpoint folder (no config.json): nothing was written; save into a new folder, or remove it first",
                dir.display()
            )));
        }
    }
    let tmp = dllm_engine::checkpoint::temp_sibling(dir)?;
    let write = || -> Result<(), CommandError> {
        let opts = dllm_engine::checkpoint::SaveOptions { dtype: l.model.dtype(), fused_experts: false, shard_bytes: None };
        dllm_engine::shapes::write_checkpoint(&l.model, &tmp, opts)?;
        let tok = l.tokenizer.to_json_text()?;
        std::fs::write(tmp.join("tokenizer.json"), tok).map_err(|e| CommandError::Failed(format!("{}: {e}", tmp.display())))?;
        if let Some(ad) = l.model.lora() {
            dllm_engine::lora::write_adapters(ad, &tmp, serde_json::json!({ "base": l.dir }))?;
        }
        // The checkpoint's chat template travels with the policy, so prompts render the same after a reload.
        for name in ["chat_template.jinja", "tokenizer_config.json"] {
            let from = l.dir.join(name);
            if from.is_file() {
                std::fs::copy(&from, tmp.join(name)).map_err(|e| CommandError::Failed(format!("{}: {e}", from.display())))?;
            }
        }
        Ok(dllm_engine::checkpoint::install_dir(&tmp, dir)?)
    };
    let r = write();
    if r.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    r
}

/// A copy of `model` with its routed experts quantized as `format`, its fp8 experts multiplying as `fp8_matmul`
/// says (`auto` when absent); `fp8_matmul` with int8 is a usage error.
pub(crate) fn quantized_copy(model: &dllm_engine::Model, format: dllm_engine::Quantization, fp8_matmul: Option<&str>) -> Result<dllm_engine::Model, CommandError> {
    let choice = match fp8_matmul {
        None => None,
        Some(_) if format != dllm_engine::Quantization::Fp8 => return Err(CommandError::Failed(format!("fp8_matmul= goes with fp8, not {format}"))),
        Some(c) => Some(c.parse::<dllm_engine::fp8_matmul::Fp8MatmulChoice>()?),
    };
    let mut copy = model.quantized(format)?;
    if let Some(c) = choice {
        copy.set_fp8_matmul(c)?;
    }
    Ok(copy)
}

/// `redecode NAME`: a fresh decode of the current branch's prompt on a new branch, run to the end.
pub(crate) fn redecode(s: &mut Session, a: &Args) -> CmdResult {
    let name = a.text("NAME").unwrap_or_default().to_string();
    let quantize = dllm_engine::Quantization::parse_option(a.text("int8|fp8")).map_err(|e| usage("redecode", e.to_string()))?;
    let fp8_matmul = a.text("auto|dequantize|scaled|emulated");
    if s.branches.contains_key(&name) {
        return Err(CommandError::Failed(format!("branch `{name}` exists; pick another name")));
    }
    let prompt = s.decoder()?.canvas()[..s.decoder()?.prompt_len() as usize].to_vec();
    let settings = s.decoder()?.settings.clone();
    let from = s.current.clone();
    let flag = s.interrupt_flag();
    let l = s.ready()?;
    let copy = match quantize {
        Some(q) => Some(quantized_copy(&l.model, q, fp8_matmul)?),
        None if fp8_matmul.is_some() => return Err(usage("redecode", "fp8_matmul= goes with quantize=fp8")),
        None => None,
    };
    let model = copy.as_ref().unwrap_or(&l.model);
    let mut d = Decoder::new(&prompt, settings, l.tokenizer.mask_id, l.tokenizer.eos_id, model)?;
    while d.step(model)?.is_some() {
        if flag.load(Ordering::SeqCst) {
            return Err(CommandError::Interrupted);
        }
    }
    let out = l.tokenizer.decode(&d.output());
    let st = d.stats();
    // Cached blocks of a quantized copy would mix into later steps under the resident model.
    if copy.is_some() {
        d.clear_cache();
    }
    s.branches.insert(name.clone(), d);
    s.current = name.clone();
    let path = copy.as_ref().and_then(|m| m.fp8_matmul()).map(|p| format!(" ({} path)", p.path));
    let with = quantize.map(|q| format!(" with {q} routed experts{} (stepping it further uses the resident model)", path.unwrap_or_default())).unwrap_or_default();
    Ok(vec![msg(format!("decoded `{from}`'s prompt afresh on `{name}` (now current){with}: {out:?}, {} forwards, TPF {:.2}; `diff {from} {name}` compares", st.forwards, st.tpf))])
}
