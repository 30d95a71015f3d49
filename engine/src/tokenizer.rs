//! The tokenizer (`tokenizer.json`, Hugging Face tokenizers) and the Ling chat template.
//!
//! Special ids are looked up, never hard-coded: the mask is `mask_token_id` from config.json if present, else
//! the `<|mask|>` token; EOS is `eos_token_id`, else `<|endoftext|>`; pad is `pad_token_id`, else EOS.
//!
//! Chat template (Ling 2.0 style, role tags are plain text): `<role>SYSTEM</role>{system}<|role_end|>`
//! (optional), `<role>HUMAN</role>{user}<|role_end|>`, and the generation prompt `<role>ASSISTANT</role>`. This
//! built-in one ([`Tokenizer::chat_prompt`]) serves checkpoints without a template of their own and the task suite,
//! whose model was trained on it; [`Tokenizer::chat`] prefers the checkpoint's ([`ChatTemplate`]).

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::chat_template::{ChatTemplate, SpecialTokens};
use crate::config::Config;
use crate::error::{Error, Result};

pub const MASK_TOKEN: &str = "<|mask|>";
pub const EOS_TOKEN: &str = "<|endoftext|>";
pub const ROLE_END_TOKEN: &str = "<|role_end|>";
const BOS_TOKEN: &str = "<|startoftext|>";
/// LLaDA2.2 edit tokens of generated tokenizers (the real checkpoint's names for 156930/156931 are unknown).
pub const DELETE_TOKEN: &str = "<|delete|>";
pub const SPLIT_TOKEN: &str = "<|split|>";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    Human,
    Assistant,
}

impl Role {
    fn tag(self) -> &'static str {
        match self {
            Role::System => "<role>SYSTEM</role>",
            Role::Human => "<role>HUMAN</role>",
            Role::Assistant => "<role>ASSISTANT</role>",
        }
    }
}

#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    file: PathBuf,
    pub mask_id: i64,
    pub eos_id: i64,
    pub pad_id: i64,
    /// The checkpoint's own chat template, if it has one.
    chat_template: Option<ChatTemplate>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("file", &self.file)
            .field("vocab", &self.vocab_size())
            .field("mask_id", &self.mask_id)
            .field("eos_id", &self.eos_id)
            .field("chat_template", &self.chat_template.as_ref().map(ChatTemplate::file))
            .finish()
    }
}

impl Tokenizer {
    /// Loads `path` and resolves the special ids against `config`.
    pub fn from_file(path: &Path, config: &Config) -> Result<Tokenizer> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Tokenizer::from_bytes(&bytes, path, config)
    }

    /// Parses tokenizer.json text; `path` names it in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path, config: &Config) -> Result<Tokenizer> {
        let bad = |message: String| Error::Tokenizer { file: path.to_path_buf(), message };
        // JSON first: the tokenizers crate panics on some malformed files (a file cut inside its decoder), so
        // text that is not JSON is an error here, and a panic inside the crate becomes one too.
        serde_json::from_slice::<serde_json::Value>(bytes).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let inner = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(bytes))
            .map_err(|p| {
                let why = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
                bad(format!("cannot load (the tokenizers library failed on it: {why})"))
            })?
            .map_err(|e| bad(format!("cannot load: {e}")))?;
        let lookup = |name: &str| inner.token_to_id(name).map(i64::from);
        let mask_id = config
            .mask_token_id
            .or_else(|| lookup(MASK_TOKEN))
            .ok_or_else(|| bad(format!("no mask token: config.json has no mask_token_id and the vocabulary has no {MASK_TOKEN}")))?;
        let eos_id = config
            .eos_token_id
            .or_else(|| lookup(EOS_TOKEN))
            .ok_or_else(|| bad(format!("no EOS token: config.json has no eos_token_id and the vocabulary has no {EOS_TOKEN}")))?;
        let pad_id = config.pad_token_id.unwrap_or(eos_id);
        let tok = Tokenizer { inner, file: path.to_path_buf(), mask_id, eos_id, pad_id, chat_template: None };
        for (what, id) in [("mask", mask_id), ("EOS", eos_id), ("pad", pad_id)] {
            if id < 0 || id >= config.vocab_size {
                return Err(bad(format!("{what} id {id} is outside the model's vocabulary (vocab_size {})", config.vocab_size)));
            }
        }
        if (tok.vocab_size() as i64) > config.vocab_size {
            return Err(bad(format!(
                "{} tokens, more than the model's vocab_size {}",
                tok.vocab_size(),
                config.vocab_size
            )));
        }
        Ok(tok)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The tokenizer as tokenizer.json text (what [`Tokenizer::from_bytes`] reads back).
    pub fn to_json_text(&self) -> Result<String> {
        self.inner.to_string(true).map_err(|e| Error::Tokenizer { file: self.file.clone(), message: format!("cannot serialise: {e}") })
    }

    /// Token ids of `text` (no BOS/EOS added, as the official tokenizer).
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer { file: self.file.clone(), message: format!("cannot encode {text:?}: {e}") })?;
        Ok(enc.get_ids().iter().map(|&i| i as i64).collect())
    }

    /// Text of `ids`, special tokens included (a debugger shows everything).
    pub fn decode(&self, ids: &[i64]) -> String {
        let ids: Vec<u32> = ids.iter().map(|&i| i.max(0) as u32).collect();
        self.inner.decode(&ids, false).unwrap_or_default()
    }

    /// The text of one token, for display (`<|mask|>` for the mask).
    pub fn token_text(&self, id: i64) -> String {
        if id < 0 {
            return format!("<invalid {id}>");
        }
        match self.inner.id_to_token(id as u32) {
            Some(t) if self.inner.get_added_vocabulary().is_special_token(&t) => t,
            Some(_) => self.decode(&[id]),
            None => format!("<unk {id}>"),
        }
    }

    /// This tokenizer rendering chats with `template` (`None`: the built-in Ling template).
    pub fn with_chat_template(self, template: Option<ChatTemplate>) -> Tokenizer {
        Tokenizer { chat_template: template, ..self }
    }

    /// The checkpoint's own chat template, if it has one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// The special-token strings a chat template sees when tokenizer_config.json does not name them: EOS is the
    /// resolved EOS id's text, BOS the `<|startoftext|>` token if the vocabulary has it.
    pub fn special_tokens(&self) -> SpecialTokens {
        SpecialTokens {
            bos: self.inner.token_to_id(BOS_TOKEN).map(|_| BOS_TOKEN.to_string()),
            eos: Some(self.token_text(self.eos_id)),
        }
    }

    /// The chat prompt for `messages` in the checkpoint's own template, or the built-in Ling one
    /// ([`Tokenizer::chat_prompt`]) when it has none; ends with the assistant opening when `add_generation_prompt`.
    pub fn chat(&self, messages: &[(Role, &str)], add_generation_prompt: bool) -> Result<String> {
        match &self.chat_template {
            Some(t) => t.render(messages, add_generation_prompt),
            None => Ok(Tokenizer::chat_prompt(messages, add_generation_prompt)),
        }
    }

    /// The built-in Ling chat prompt for `messages`, ending with the assistant tag when `generation_prompt`.
    pub fn chat_prompt(messages: &[(Role, &str)], generation_prompt: bool) -> String {
        let mut s = String::new();
        for (role, text) in messages {
            s.push_str(role.tag());
            s.push_str(text);
            s.push_str(ROLE_END_TOKEN);
        }
        if generation_prompt {
            s.push_str(Role::Assistant.tag());
        }
        s
    }
}

/// Special tokens of a generated tokenizer: (id, text).
pub struct TokenizerSpec {
    pub vocab_size: i64,
    pub specials: Vec<(i64, String)>,
}

impl TokenizerSpec {
    /// Small vocabularies for test models: specials first, then printable ASCII, then reserved fillers.
    pub fn compact(vocab_size: i64) -> TokenizerSpec {
        let names = [EOS_TOKEN, MASK_TOKEN, "<|startoftext|>", ROLE_END_TOKEN, "<|unk|>", "<role>HUMAN</role>", "<role>ASSISTANT</role>", "<role>SYSTEM</role>"];
        TokenizerSpec { vocab_size, specials: names.iter().enumerate().map(|(i, n)| (i as i64, n.to_string())).collect() }
    }

    /// Adds the LLaDA2.2 edit tokens at the config's `delete_token_id` / `split_token_id`. Only block-routed
    /// presets call it, so the tokenizers of the other presets (and of the embedded model) are unchanged.
    pub fn with_edit_tokens(mut self, delete: i64, split: i64) -> TokenizerSpec {
        self.specials.push((delete, DELETE_TOKEN.into()));
        self.specials.push((split, SPLIT_TOKEN.into()));
        self
    }

    /// The official special ids of LLaDA2.x (157184-token vocabulary).
    pub fn llada2(vocab_size: i64) -> TokenizerSpec {
        TokenizerSpec {
            vocab_size,
            specials: vec![
                (0, "<|unk|>".into()),
                (156891, "<|startoftext|>".into()),
                (156892, EOS_TOKEN.into()),
                (156895, MASK_TOKEN.into()),
                (156900, ROLE_END_TOKEN.into()),
            ],
        }
    }

    /// A character-level `tokenizer.json` (BPE without merges over single characters, so every character is
    /// a token), with the specials as added special tokens and unused ids filled by `<|reserved_N|>`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut vocab = serde_json::Map::new();
        let taken: std::collections::HashSet<i64> = self.specials.iter().map(|(i, _)| *i).collect();
        let mut free = (0..self.vocab_size).filter(|i| !taken.contains(i));
        for c in (0x20u8..0x7f).map(char::from).chain(['\n', '\t']) {
            if let Some(id) = free.next() {
                vocab.insert(c.to_string(), json!(id));
            }
        }
        for id in free {
            vocab.insert(format!("<|reserved_{id}|>"), json!(id));
        }
        for (id, name) in &self.specials {
            vocab.insert(name.clone(), json!(id));
        }
        let added: Vec<_> = self
            .specials
            .iter()
            .map(|(id, name)| {
                json!({"id": id, "content": name, "single_word": false, "lstrip": false, "rstrip": false,
                       "normalized": false, "special": true})
            })
            .collect();
        json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": null,
            "post_processor": null,
            "decoder": {"type": "Fuse"},
            "model": {"type": "BPE", "dropout": null, "unk_token": "<|unk|>", "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": vocab, "merges": []}
        })
    }
}
