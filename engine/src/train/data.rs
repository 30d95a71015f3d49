//! Training data from a JSONL file (`dllm train --data`): conversations or prompt/response pairs, rendered
//! through the model's chat template, with only the assistant turns supervised.
//!
//! Each line is one JSON object (blank lines are skipped):
//! - `{"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}`: every assistant turn
//!   is one example, whose prompt is the conversation before it rendered with the generation prompt;
//! - `{"prompt": "...", "response": "..."}`: one user turn and its answer.
//!
//! An example's response is its text's tokens and EOS; its canvas is prompt + response padded with EOS to whole
//! blocks, one example per canvas (no packing of several examples into one canvas). The whole file is checked
//! before a run starts and every bad line is reported with its number. The held-out split takes a share of the
//! lines by a seeded shuffle, so all turns of one conversation fall on the same side.

use std::path::{Path, PathBuf};

use crate::decode::Rng;
use crate::error::{Error, Result};
use crate::tokenizer::{Role, Tokenizer};

/// One supervised assistant turn.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// 1-based line of the file.
    pub line: usize,
    pub prompt: Vec<i64>,
    /// The answer's tokens and EOS.
    pub response: Vec<i64>,
    /// The answer as written (what a decode is compared with).
    pub answer: String,
}

/// The examples of a file, split.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub file: PathBuf,
    /// FNV-1a of the file's bytes: a resumed run checks that its data did not change.
    pub digest: String,
    pub train: Vec<Example>,
    pub held_out: Vec<Example>,
}

/// How a file is read.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DataOptions {
    /// Share of the lines held out (0 keeps none).
    pub held_out: f64,
    /// The most response tokens (EOS included) an example may have.
    pub max_response: usize,
    /// The most canvas positions (prompt + response, padded to blocks) an example may take; 0 means the
    /// model's `max_position_embeddings`.
    pub max_positions: usize,
    pub block: i64,
    pub seed: u64,
}

/// Reads, renders and splits `file` for `tok`.
pub fn load(file: &Path, tok: &Tokenizer, opts: DataOptions) -> Result<Dataset> {
    if !(0.0..1.0).contains(&opts.held_out) {
        return Err(Error::invalid("held-out share", opts.held_out, "must be at least 0 and below 1"));
    }
    let bytes = std::fs::read(file).map_err(|e| Error::io(file, e))?;
    let text = std::str::from_utf8(&bytes).map_err(|e| Error::invalid("training data", file.display(), format!("not UTF-8 text ({e})")))?;
    let (mut lines, mut errors) = (Vec::new(), Vec::new());
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        match parse_line(line, i + 1, tok, &opts) {
            Ok(examples) => lines.push(examples),
            Err(e) => errors.push(format!("line {}: {e}", i + 1)),
        }
    }
    if !errors.is_empty() {
        return Err(Error::Data { file: file.to_path_buf(), errors });
    }
    if lines.is_empty() {
        return Err(Error::invalid("training data", file.display(), "no examples: expected one JSON object per line"));
    }
    // A seeded shuffle of the lines; the first `held` of them are held out.
    let mut order: Vec<usize> = (0..lines.len()).collect();
    let mut rng = Rng::new(opts.seed ^ 0x5EED_DA7A);
    for i in (1..order.len()).rev() {
        order.swap(i, (rng.uniform() * (i + 1) as f64) as usize % (i + 1));
    }
    let held = ((lines.len() as f64 * opts.held_out).round() as usize).min(lines.len() - 1);
    let mut is_held = vec![false; lines.len()];
    for &i in &order[..held] {
        is_held[i] = true;
    }
    let (mut train, mut held_out) = (Vec::new(), Vec::new());
    for (examples, held) in lines.into_iter().zip(is_held) {
        if held { &mut held_out } else { &mut train }.extend(examples);
    }
    Ok(Dataset { file: file.to_path_buf(), digest: digest(&bytes), train, held_out })
}

/// FNV-1a (64 bits) of `bytes`, in hex.
pub fn digest(bytes: &[u8]) -> String {
    let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    format!("{h:016x}")
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Message {
    role: String,
    content: String,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Line {
    Chat {
        messages: Vec<Message>,
    },
    Pair {
        prompt: String,
        response: String,
    },
}

fn parse_line(line: &str, number: usize, tok: &Tokenizer, opts: &DataOptions) -> std::result::Result<Vec<Example>, String> {
    let value: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not JSON ({e})"))?;
    let parsed: Line = serde_json::from_value(value).map_err(|_| {
        "expected {\"messages\": [{\"role\": ..., \"content\": ...}, ...]} or {\"prompt\": ..., \"response\": ...}".to_string()
    })?;
    let messages: Vec<(Role, String)> = match parsed {
        Line::Pair { prompt, response } => vec![(Role::Human, prompt), (Role::Assistant, response)],
        Line::Chat { messages } => messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| match m.role.as_str() {
                "system" => Ok((Role::System, m.content)),
                "user" | "human" => Ok((Role::Human, m.content)),
                "assistant" => Ok((Role::Assistant, m.content)),
                r => Err(format!("message {}: unknown role {r:?} (system, user or assistant)", i + 1)),
            })
            .collect::<std::result::Result<_, _>>()?,
    };
    let mut examples = Vec::new();
    for (i, (role, content)) in messages.iter().enumerate() {
        if *role != Role::Assistant {
            continue;
        }
        if content.is_empty() {
            return Err(format!("message {}: an empty assistant turn", i + 1));
        }
        let before: Vec<(Role, &str)> = messages[..i].iter().map(|(r, c)| (*r, c.as_str())).collect();
        if before.is_empty() {
            return Err(format!("message {}: an assistant turn needs a prompt before it", i + 1));
        }
        let rendered = tok.chat(&before, true).map_err(|e| e.to_string())?;
        let prompt = tok.encode(&rendered).map_err(|e| e.to_string())?;
        let mut response = tok.encode(content).map_err(|e| format!("message {}: {e}", i + 1))?;
        if response.contains(&tok.mask_id) {
            return Err(format!("message {}: the answer contains the mask token", i + 1));
        }
        response.push(tok.eos_id);
        if response.len() > opts.max_response {
            return Err(format!("message {}: the answer has {} tokens with EOS, above --max-response {}", i + 1, response.len(), opts.max_response));
        }
        let b = opts.block.max(1) as usize;
        let padded = (prompt.len() + response.len()).div_ceil(b) * b;
        if padded > opts.max_positions {
            return Err(format!("message {}: prompt and answer take {padded} positions, above the model's {}", i + 1, opts.max_positions));
        }
        examples.push(Example { line: number, prompt, response, answer: content.clone() });
    }
    if examples.is_empty() {
        return Err("no assistant turn to learn from".into());
    }
    Ok(examples)
}

/// Exact-match accuracy of greedy decodes of `examples` (the answer as written against the decoded text up to
/// EOS) under the model's usual preset (`llada2.2` on a model with edit tokens, `Q` otherwise) in blocks of
/// `block`.
pub fn accuracy(model: &crate::Model, tok: &Tokenizer, examples: &[&Example], block: i64) -> Result<f64> {
    if examples.is_empty() {
        return Err(Error::invalid("examples", "[]", "nothing to evaluate"));
    }
    let longest = examples.iter().map(|e| e.response.len() as i64).max().unwrap_or(1);
    let mut settings = crate::decode::DecodeSettings::official(longest);
    settings.block_length = block;
    let c = model.config();
    settings.apply_preset(if c.delete_token_id.is_some() && c.split_token_id.is_some() { "llada2.2" } else { "Q" })?;
    settings.temperature = 0.0;
    let prompts: Vec<Vec<i64>> = examples.iter().map(|e| e.prompt.clone()).collect();
    let rows = crate::eval::decode_batched(model, tok, &prompts, &settings, crate::eval::DEFAULT_BATCH, None)?;
    let right = rows.iter().zip(examples).filter(|(r, e)| crate::tasks::response_text(tok, &r.output) == e.answer).count();
    Ok(right as f64 / examples.len() as f64)
}

/// The clean canvas of `ex` (prompt + response padded with EOS to whole blocks) and its prompt length.
pub fn canvas(ex: &Example, eos: i64, block: i64) -> (Vec<i64>, usize) {
    let mut ids = ex.prompt.clone();
    ids.extend_from_slice(&ex.response);
    let len = (ids.len() as i64 + block - 1) / block * block;
    ids.resize(len as usize, eos);
    (ids, ex.prompt.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok() -> Tokenizer {
        crate::load_builtin(tch::Device::Cpu, None).unwrap().tokenizer
    }

    fn opts() -> DataOptions {
        DataOptions { held_out: 0.25, max_response: 32, max_positions: 256, block: 8, seed: 1 }
    }

    fn write(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn pairs_and_conversations_become_one_example_per_assistant_turn() {
        let t = tok();
        let f = write(concat!(
            "{\"prompt\": \"copy ab\", \"response\": \"ab\"}\n",
            "\n",
            "{\"messages\": [{\"role\": \"user\", \"content\": \"copy a\"}, {\"role\": \"assistant\", \"content\": \"a\"},",
            " {\"role\": \"user\", \"content\": \"sort ba\"}, {\"role\": \"assistant\", \"content\": \"ab\"}]}\n",
        ));
        let d = load(f.path(), &t, DataOptions { held_out: 0.0, ..opts() }).unwrap();
        assert!(d.held_out.is_empty());
        let lines: Vec<(usize, &str)> = d.train.iter().map(|e| (e.line, e.answer.as_str())).collect();
        assert_eq!(lines, [(1, "ab"), (3, "a"), (3, "ab")]);
        let ex = &d.train[0];
        assert_eq!(ex.prompt, t.encode(&t.chat(&[(Role::Human, "copy ab")], true).unwrap()).unwrap());
        assert_eq!(ex.response, [t.encode("ab").unwrap(), vec![t.eos_id]].concat());
        // The second turn's prompt holds the whole first exchange.
        let first = t.chat(&[(Role::Human, "copy a"), (Role::Assistant, "a"), (Role::Human, "sort ba")], true).unwrap();
        assert_eq!(d.train[2].prompt, t.encode(&first).unwrap());
        let (c, p) = canvas(ex, t.eos_id, 8);
        assert_eq!((c.len() % 8, p, &c[p..p + 3]), (0, ex.prompt.len(), &ex.response[..]));
    }

    #[test]
    fn every_bad_line_is_named() {
        let f = write(concat!(
            "{\"prompt\": \"copy ab\", \"response\": \"ab\"}\n",
            "{\"prompt\": \"copy ab\"\n",
            "{\"prompt\": \"copy ab\", \"answer\": \"ab\"}\n",
            "{\"messages\": [{\"role\": \"robot\", \"content\": \"x\"}]}\n",
            "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}\n",
            "{\"prompt\": \"copy\", \"response\": \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}\n",
            "[1, 2]\n",
        ));
        let e = load(f.path(), &tok(), opts()).unwrap_err().to_string();
        for want in ["line 2: not JSON", "line 3: expected", "line 4: message 1: unknown role \"robot\"", "line 5: no assistant turn", "line 6: message 2: the answer has 41 tokens", "line 7: expected"] {
            assert!(e.contains(want), "{want:?} missing in {e}");
        }
        assert!(!e.contains("line 1:"), "{e}");
        assert!(e.starts_with(&format!("{}: 6 bad lines", f.path().display())), "{e}");
    }

    #[test]
    fn the_split_is_seeded_and_keeps_a_conversation_together() {
        let t = tok();
        let text: String = (0..40).map(|i| format!("{{\"prompt\": \"copy {}\", \"response\": \"{}\"}}\n", i % 10, i % 10)).collect();
        let f = write(&text);
        let a = load(f.path(), &t, opts()).unwrap();
        assert_eq!((a.train.len(), a.held_out.len()), (30, 10));
        let b = load(f.path(), &t, opts()).unwrap();
        assert_eq!(a.held_out, b.held_out, "same seed, same split");
        let c = load(f.path(), &t, DataOptions { seed: 2, ..opts() }).unwrap();
        assert_ne!(a.held_out, c.held_out, "another seed, another split");
        assert!(a.held_out.iter().all(|h| a.train.iter().all(|x| x.line != h.line)));
        assert!(load(f.path(), &t, DataOptions { held_out: 1.0, ..opts() }).is_err());
    }
}
