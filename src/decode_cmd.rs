//! `dllm decode`: one full decode, optionally writing the step-by-step trace as JSON so any outside
//! implementation can be compared with ours (format in docs/decoding.md).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use dllm_engine::decode::{DecodeSettings, Decoder};
use dllm_engine::Role;
use serde_json::json;

use crate::model_cmds::ModelArgs;

#[derive(Args)]
pub struct DecodeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt text (tokenized as is; add --chat for the chat template).
    #[arg(long, conflicts_with = "prompt_ids")]
    pub prompt: Option<String>,
    /// Prompt as comma-separated token ids.
    #[arg(long, value_delimiter = ',')]
    pub prompt_ids: Option<Vec<i64>>,
    /// Wrap --prompt in the checkpoint's chat template (else the Ling one): a user turn + the generation prompt.
    #[arg(long)]
    pub chat: bool,
    #[arg(long, default_value_t = 32)]
    pub gen_length: i64,
    #[arg(long, default_value_t = 32)]
    pub block_length: i64,
    /// Start from a decoding preset; default: the official LLaDA2.1 generate defaults. Explicit flags override
    /// the preset.
    #[arg(long, value_parser = preset_values(), ignore_case = true)]
    pub preset: Option<String>,
    /// tau_mask.
    #[arg(long)]
    pub threshold: Option<f64>,
    /// tau_edit, or `off`.
    #[arg(long)]
    pub edit_threshold: Option<String>,
    #[arg(long)]
    pub max_post_steps: Option<i64>,
    /// Multi-block editing window in blocks (0 = off).
    #[arg(long)]
    pub mbe: Option<i64>,
    /// Any other setting, as NAME=VALUE (repeatable), e.g. --set temperature=0.7 --set attention=hf-additive.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub set: Vec<String>,
    /// Write the trace JSON here (`-`: to stdout, with the summary on stderr).
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Print one JSON summary object.
    #[arg(long)]
    pub json: bool,
}

pub fn decode(a: &DecodeArgs) -> Result<()> {
    let mut s = DecodeSettings::official(a.gen_length);
    s.block_length = a.block_length;
    if let Some(p) = &a.preset {
        s.apply_preset(p)?;
    }
    let mut explicit: Vec<(String, String)> = Vec::new();
    if let Some(t) = a.threshold {
        explicit.push(("threshold".into(), t.to_string()));
    }
    if let Some(t) = &a.edit_threshold {
        explicit.push(("edit_threshold".into(), t.clone()));
    }
    if let Some(m) = a.max_post_steps {
        explicit.push(("max_post_steps".into(), m.to_string()));
    }
    if let Some(w) = a.mbe {
        explicit.push(("mbe_window".into(), w.to_string()));
    }
    for kv in &a.set {
        let Some((k, v)) = kv.split_once('=') else { bail!("--set {kv:?}: expected NAME=VALUE") };
        explicit.push((k.trim().into(), v.trim().into()));
    }
    for (k, v) in &explicit {
        s.set(k, v).with_context(|| format!("setting {k}"))?;
    }
    let loaded = a.model.load()?;
    let tok = &loaded.tokenizer;
    let prompt = match (&a.prompt, &a.prompt_ids) {
        (Some(text), None) => {
            let text = if a.chat { tok.chat(&[(Role::Human, text)], true)? } else { text.clone() };
            tok.encode(&text)?
        }
        (None, Some(ids)) => ids.clone(),
        _ => bail!("give the prompt as --prompt TEXT or --prompt-ids 1,2,3"),
    };
    let model = &loaded.model;
    let mut d = Decoder::new(&prompt, s, tok.mask_id, tok.eos_id, model)?;
    let reports = d.run(model)?;
    let edits: usize = reports.iter().map(|r| r.delta.len()).sum();
    // `--trace -` puts the trace on stdout (and the summary on stderr); a file is written atomically.
    let trace_to_stdout = a.trace.as_deref().is_some_and(|p| p.as_os_str() == "-");
    if let Some(path) = &a.trace {
        let text = serde_json::to_string_pretty(&d.trace_json())?;
        if trace_to_stdout {
            println!("{text}");
        } else {
            dllm_engine::checkpoint::write_atomic(path, text.as_bytes()).with_context(|| format!("writing the trace to {}", path.display()))?;
        }
    }
    let output = d.output();
    let summary = json!({
        "output_ids": output,
        "output": tok.decode(&output),
        "forwards": d.cursor().forwards,
        "tokens": d.decoded_tokens(),
        "tpf": d.tpf(),
        "edits": edits,
        "blocks": d.num_blocks() - d.prompt_len() / d.settings.block_length,
        "deletions": d.stats().deletions,
        "insertions": d.stats().insertions,
        "truncated": d.stats().truncated,
    });
    if trace_to_stdout {
        eprintln!("{summary}");
    } else if a.json {
        println!("{summary}");
    } else {
        println!("{}", summary["output"].as_str().unwrap_or_default());
        let st = d.stats();
        let lev = if d.settings.edit_ops == dllm_engine::decode::EditOps::Levenshtein {
            format!(", {} deletions, {} insertions, {} truncated", st.deletions, st.insertions, st.truncated)
        } else {
            String::new()
        };
        eprintln!("{} tokens in {} forwards (TPF {:.2}), {} edits{lev}", summary["tokens"], summary["forwards"], d.tpf(), edits);
    }
    Ok(())
}

/// `--preset`'s values, from the one preset table (`dllm_engine::decode::PRESETS`): names, aliases and what each is.
pub fn preset_values() -> clap::builder::PossibleValuesParser {
    use clap::builder::PossibleValue;
    dllm_engine::decode::PRESETS.iter().map(|p| PossibleValue::new(p.name).aliases(p.aliases.iter().copied()).help(p.about)).collect::<Vec<_>>().into()
}
