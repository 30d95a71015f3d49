//! Chat templates from the checkpoint: `chat_template.jinja`, else the `chat_template` string of
//! tokenizer_config.json, compiled once at load and rendered the way Hugging Face transformers'
//! `apply_chat_template` renders them, so a checkpoint whose format differs from the built-in Ling one (LLaDA2.2
//! ships its own `chat_template.jinja`) is prompted in the format it was trained on.
//!
//! The engine is minijinja with the settings transformers uses (trim_blocks, lstrip_blocks, loop controls, no
//! autoescape), a `raise_exception` function, and minijinja-contrib's pycompat for the Python methods templates
//! call (`.strip()`, `.startswith()`, `.items()`, ...). The context is transformers': `messages` as
//! `{role, content}` with roles spelled "system", "user", "assistant"; `add_generation_prompt`; `bos_token` and
//! `eos_token` where known (left undefined otherwise, as transformers does); `tools` = none.
//!
//! Departures from transformers:
//! 1. no `strftime_now` (no template we load asks for the date);
//! 2. `tojson` is minijinja's, which escapes `<`, `>`, `&` and `'` as `\uXXXX`; only tool declarations use it,
//!    and none are passed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use minijinja::syntax::SyntaxConfig;
use minijinja::{AutoEscape, Environment, ErrorKind, Value};

use crate::error::{Error, Result};
use crate::tokenizer::Role;

/// The template file a checkpoint may carry; it wins over tokenizer_config.json's `chat_template`.
pub const TEMPLATE_FILE: &str = "chat_template.jinja";
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";

/// The special-token strings given to a template (`{{ bos_token }}`); a `None` one stays undefined.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos: Option<String>,
    pub eos: Option<String>,
}

/// A compiled chat template and the file it came from (named in every error).
#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    file: PathBuf,
    /// `chat_template` when the template is a string inside tokenizer_config.json (its line numbers then count
    /// within that string), empty for a template file.
    field: &'static str,
    special: SpecialTokens,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("file", &self.file).field("field", &self.field).finish()
    }
}

/// The name `env` knows the one template by.
const NAME: &str = "chat_template";

impl ChatTemplate {
    /// Compiles `source`, read from `file` (named in errors); a syntax error says which line.
    pub fn new(source: &str, file: &Path, special: SpecialTokens) -> Result<ChatTemplate> {
        ChatTemplate::compile(source.to_string(), file, "", special)
    }

    fn compile(source: String, file: &Path, field: &'static str, special: SpecialTokens) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        // As transformers' ImmutableSandboxedEnvironment: templates are written with these in mind.
        let syntax = SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build();
        env.set_syntax(syntax.expect("the default delimiters are valid"));
        // The output is a prompt, not HTML: a `<` in a message must reach the model as typed.
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> std::result::Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
        });
        let mut t = ChatTemplate { env, file: file.to_path_buf(), field, special };
        let added = t.env.add_template_owned(NAME, source);
        added.map_err(|e| t.error(e))?;
        Ok(t)
    }

    /// The checkpoint folder's own template: `chat_template.jinja`, else tokenizer_config.json's `chat_template`
    /// (a string, or a list of `{name, template}` of which the one named "default"); `None` when it has neither.
    /// `bos_token`/`eos_token` come from tokenizer_config.json when it names them, else from `fallback`.
    pub fn from_dir(dir: &Path, fallback: SpecialTokens) -> Result<Option<ChatTemplate>> {
        let config_path = dir.join(TOKENIZER_CONFIG_FILE);
        let config = match std::fs::read_to_string(&config_path) {
            Ok(text) => Some(serde_json::from_str::<serde_json::Value>(&text).map_err(|e| Error::Config {
                file: Some(config_path.clone()),
                field: String::new(),
                message: format!("not valid JSON: {e}"),
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(&config_path, e)),
        };
        let special = SpecialTokens {
            bos: config.as_ref().and_then(|c| token_string(&c["bos_token"])).or(fallback.bos),
            eos: config.as_ref().and_then(|c| token_string(&c["eos_token"])).or(fallback.eos),
        };
        let jinja_path = dir.join(TEMPLATE_FILE);
        match std::fs::read_to_string(&jinja_path) {
            Ok(source) => return ChatTemplate::compile(source, &jinja_path, "", special).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&jinja_path, e)),
        }
        let Some(config) = config else { return Ok(None) };
        let bad = |message: String| Error::Config { file: Some(config_path.clone()), field: "chat_template".into(), message };
        let source = match &config["chat_template"] {
            serde_json::Value::Null => return Ok(None),
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(named) => {
                let default = named.iter().find(|t| t["name"] == "default");
                let default = default.ok_or_else(|| bad("a list of templates with none named \"default\"".into()))?;
                default["template"].as_str().ok_or_else(|| bad("the \"default\" entry has no `template` string".into()))?.to_string()
            }
            other => return Err(bad(format!("expected a string or a list of {{name, template}}, found {other}"))),
        };
        ChatTemplate::compile(source, &config_path, "chat_template", special).map(Some)
    }

    /// The prompt for `messages`, ending with the template's assistant opening when `add_generation_prompt`.
    pub fn render(&self, messages: &[(Role, &str)], add_generation_prompt: bool) -> Result<String> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|(role, content)| {
                Value::from(BTreeMap::from([("role", Value::from(hf_role(*role))), ("content", Value::from(*content))]))
            })
            .collect();
        let mut ctx = BTreeMap::from([
            ("messages", Value::from(messages)),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
            // Templates test `{% if tools %}` / `tools is not none`: none, as transformers passes without tools.
            ("tools", Value::from(())),
        ]);
        if let Some(bos) = &self.special.bos {
            ctx.insert("bos_token", Value::from(bos.as_str()));
        }
        if let Some(eos) = &self.special.eos {
            ctx.insert("eos_token", Value::from(eos.as_str()));
        }
        let template = self.env.get_template(NAME).map_err(|e| self.error(e))?;
        template.render(Value::from(ctx)).map_err(|e| self.error(e))
    }

    /// The file the template was read from.
    pub fn file(&self) -> &Path {
        &self.file
    }

    fn error(&self, e: minijinja::Error) -> Error {
        let message = match e.detail() {
            Some(detail) => format!("{}: {detail}", e.kind()),
            None => e.kind().to_string(),
        };
        Error::Template { file: self.file.clone(), field: self.field.to_string(), line: e.line(), message }
    }
}

/// A role as transformers spells it (the Ling tags say HUMAN; chat templates say "user").
fn hf_role(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::Human => "user",
        Role::Assistant => "assistant",
    }
}

/// A special token in tokenizer_config.json: a string, or an AddedToken object with `content`.
fn token_string(v: &serde_json::Value) -> Option<String> {
    v.as_str().or_else(|| v["content"].as_str()).map(str::to_string)
}
