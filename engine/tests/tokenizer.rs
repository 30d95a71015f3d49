//! The tokenizer: round trips, special tokens, how the mask/EOS/pad ids are resolved, the built-in chat template
//! and Jinja chat templates (the Ling one as Jinja agrees with the built-in; errors name file and line), and the
//! official LLaDA2 special ids.

mod common;

use std::path::Path;

use common::micro;
use dllm_engine::{shapes, ChatTemplate, Config, Error, Role, SpecialTokens, Tokenizer, TokenizerSpec};

const FILE: &str = "some/checkpoint/tokenizer.json";

fn spec_bytes(spec: &TokenizerSpec) -> Vec<u8> {
    serde_json::to_vec(&spec.to_json()).unwrap()
}

fn tokenizer_for(spec: &TokenizerSpec, config: &Config) -> dllm_engine::Result<Tokenizer> {
    Tokenizer::from_bytes(&spec_bytes(spec), Path::new(FILE), config)
}

/// The compact tokenizer of the micro preset, resolved against `config`.
fn compact(config: &Config) -> dllm_engine::Result<Tokenizer> {
    tokenizer_for(&TokenizerSpec::compact(config.vocab_size), config)
}

/// The micro config with no special ids set, so every id comes from the tokenizer.
fn bare_config() -> Config {
    Config { mask_token_id: None, eos_token_id: None, pad_token_id: None, ..micro() }
}

/// Id of `text` in the compact tokenizer, which must encode to exactly one token.
fn single_id(tok: &Tokenizer, text: &str) -> i64 {
    let ids = tok.encode(text).unwrap();
    assert_eq!(ids.len(), 1, "{text:?} encodes to {ids:?}");
    ids[0]
}

// ---------------------------------------------------------------------------------------------- text

#[test]
fn compact_tokenizer_round_trips_ascii_with_spaces_and_newlines() {
    let tok = compact(&micro()).unwrap();
    let text = "Hello, world!\n  two spaces,\ttab; digits 0123456789 & symbols ~{}[]\n\nend.";
    let ids = tok.encode(text).unwrap();
    assert_eq!(ids.len(), text.len(), "one token per character");
    assert_eq!(tok.decode(&ids), text);
}

#[test]
fn special_tokens_are_single_ids() {
    let tok = compact(&micro()).unwrap();
    for special in ["<|mask|>", "<|endoftext|>", "<role>HUMAN</role>", "<role>ASSISTANT</role>", "<|role_end|>"] {
        let id = single_id(&tok, special);
        assert_eq!(tok.token_text(id), special);
    }
    // Inside text too, and they decode back.
    let text = "a<|mask|><|mask|>b<|endoftext|>";
    let ids = tok.encode(text).unwrap();
    assert_eq!(ids.len(), 5);
    assert_eq!(&ids[1..3], &[tok.mask_id, tok.mask_id]);
    assert_eq!(ids[4], tok.eos_id);
    assert_eq!(tok.decode(&ids), text);
}

#[test]
fn token_text_of_the_mask_is_the_mask_token() {
    let tok = compact(&micro()).unwrap();
    assert_eq!(tok.token_text(tok.mask_id), "<|mask|>");
    assert_eq!(tok.token_text(single_id(&tok, "x")), "x");
}

// ---------------------------------------------------------------------------------------------- special ids

#[test]
fn mask_comes_from_the_mask_token_when_config_has_no_mask_token_id() {
    let tok = compact(&bare_config()).unwrap();
    assert_eq!(tok.mask_id, single_id(&tok, "<|mask|>"));
}

#[test]
fn mask_token_id_in_config_wins_over_the_mask_token() {
    let tok = compact(&Config { mask_token_id: Some(100), ..bare_config() }).unwrap();
    assert_eq!(tok.mask_id, 100);
}

#[test]
fn eos_comes_from_eos_token_id_else_the_endoftext_token() {
    let tok = compact(&bare_config()).unwrap();
    assert_eq!(tok.eos_id, single_id(&tok, "<|endoftext|>"));
    let tok = compact(&Config { eos_token_id: Some(3), ..bare_config() }).unwrap();
    assert_eq!(tok.eos_id, 3);
}

#[test]
fn pad_comes_from_pad_token_id_else_eos() {
    let tok = compact(&Config { eos_token_id: Some(3), ..bare_config() }).unwrap();
    assert_eq!(tok.pad_id, 3);
    let tok = compact(&Config { eos_token_id: Some(3), pad_token_id: Some(4), ..bare_config() }).unwrap();
    assert_eq!(tok.pad_id, 4);
}

#[test]
fn tokenizer_without_a_mask_and_no_mask_token_id_names_file_and_what_is_missing() {
    let mut spec = TokenizerSpec::compact(128);
    spec.specials.retain(|(_, name)| name != "<|mask|>");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, spec_bytes(&spec)).unwrap();
    let err = Tokenizer::from_file(&path, &bare_config()).unwrap_err();
    match &err {
        Error::Tokenizer { file, .. } => assert_eq!(file, &path),
        other => panic!("expected Tokenizer, got {other:?}"),
    }
    let text = err.to_string();
    for part in [path.to_str().unwrap(), "no mask token", "mask_token_id", "<|mask|>"] {
        assert!(text.contains(part), "{part:?} is not in: {text}");
    }
}

#[test]
fn mask_id_outside_the_vocabulary_is_an_error() {
    let err = compact(&Config { mask_token_id: Some(500), ..bare_config() }).unwrap_err();
    assert!(matches!(err, Error::Tokenizer { .. }), "{err:?}");
    let text = err.to_string();
    for part in [FILE, "mask id 500", "vocab_size 128"] {
        assert!(text.contains(part), "{part:?} is not in: {text}");
    }
}

#[test]
fn unparsable_tokenizer_json_names_the_file() {
    let err = Tokenizer::from_bytes(b"{\"model\": 1}", Path::new(FILE), &micro()).unwrap_err();
    assert!(matches!(err, Error::Tokenizer { .. }), "{err:?}");
    assert!(err.to_string().contains(FILE), "{err}");
}

// ---------------------------------------------------------------------------------------------- chat

#[test]
fn chat_prompt_follows_the_ling_template() {
    let prompt = Tokenizer::chat_prompt(&[(Role::System, "s"), (Role::Human, "u")], true);
    assert_eq!(prompt, "<role>SYSTEM</role>s<|role_end|><role>HUMAN</role>u<|role_end|><role>ASSISTANT</role>");
    let no_generation = Tokenizer::chat_prompt(&[(Role::Human, "u")], false);
    assert_eq!(no_generation, "<role>HUMAN</role>u<|role_end|>");
}

#[test]
fn chat_prompt_role_tags_encode_as_single_tokens() {
    let tok = compact(&micro()).unwrap();
    let ids = tok.encode(&Tokenizer::chat_prompt(&[(Role::System, "s"), (Role::Human, "u")], true)).unwrap();
    let tags: Vec<i64> =
        ["<role>SYSTEM</role>", "s", "<|role_end|>", "<role>HUMAN</role>", "u", "<|role_end|>", "<role>ASSISTANT</role>"]
            .iter()
            .map(|t| single_id(&tok, t))
            .collect();
    assert_eq!(ids, tags);
}

// ---------------------------------------------------------------------------------------------- LLaDA2 ids

#[test]
fn llada2_spec_has_the_official_special_ids() {
    let config = shapes::shape("llada2-mini").unwrap();
    assert_eq!(config.vocab_size, 157184);
    // Resolve from the vocabulary alone, not from the preset's eos/pad ids.
    let config = Config { mask_token_id: None, eos_token_id: None, pad_token_id: None, ..config };
    let tok = tokenizer_for(&TokenizerSpec::llada2(157184), &config).unwrap();
    assert_eq!(tok.mask_id, 156895);
    assert_eq!(tok.eos_id, 156892);
    assert_eq!(tok.pad_id, 156892);
    assert_eq!(tok.token_text(tok.mask_id), "<|mask|>");
    assert_eq!(tok.token_text(156892), "<|endoftext|>");
    assert_eq!(tok.encode("<|mask|>").unwrap(), vec![156895]);
    assert_eq!(tok.vocab_size(), 157184);
}

#[test]
fn llada2_mini_preset_agrees_with_its_tokenizer() {
    let config = shapes::shape("llada2-mini").unwrap();
    let tok = tokenizer_for(&shapes::tokenizer_spec(config.vocab_size), &config).unwrap();
    assert_eq!((tok.mask_id, tok.eos_id, tok.pad_id), (156895, 156892, 156892));
}

// ---------------------------------------------------------------------------------------------- chat templates

/// The LLaDA2.1 Ling format written as Jinja (what a checkpoint's chat_template.jinja would hold).
const LING_JINJA: &str = include_str!("../assets/templates/ling.jinja");
const TEMPLATE_FILE: &str = "some/checkpoint/chat_template.jinja";

fn template(source: &str) -> dllm_engine::Result<ChatTemplate> {
    let special = SpecialTokens { bos: Some("<|startoftext|>".into()), eos: Some("<|endoftext|>".into()) };
    ChatTemplate::new(source, Path::new(TEMPLATE_FILE), special)
}

fn assert_template_error(err: &Error, line: Option<usize>, parts: &[&str]) {
    assert!(matches!(err, Error::Template { line: l, .. } if *l == line), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(TEMPLATE_FILE), "{text}");
    for part in parts {
        assert!(text.contains(part), "{text:?} lacks {part:?}");
    }
}

#[test]
fn ling_jinja_renders_exactly_what_the_built_in_does() {
    let ling = template(LING_JINJA).unwrap();
    let conversations: &[&[(Role, &str)]] = &[
        &[(Role::System, "You are terse."), (Role::Human, "What is 2+2?")],
        &[(Role::Human, "hello")],
        &[(Role::Human, "first"), (Role::Assistant, "reply\nover two lines"), (Role::Human, "second")],
        &[(Role::Human, "")],
        &[(Role::System, ""), (Role::Human, "  spaces kept  \n")],
        &[(Role::Human, "héllo wörld, 你好, emoji 🙂, a <b>tag</b> & {{ braces }} {% kept %}")],
        &[],
    ];
    for messages in conversations {
        for generation in [true, false] {
            let rendered = ling.render(messages, generation).unwrap();
            assert_eq!(rendered, Tokenizer::chat_prompt(messages, generation), "{messages:?}, generation {generation}");
        }
    }
}

#[test]
fn tokenizer_without_a_template_chats_in_the_built_in_format() {
    let tok = compact(&micro()).unwrap();
    assert!(tok.chat_template().is_none());
    let messages = [(Role::System, "s"), (Role::Human, "u")];
    assert_eq!(tok.chat(&messages, true).unwrap(), Tokenizer::chat_prompt(&messages, true));
    // With a template attached, chat renders through it, and chat_prompt stays the built-in.
    let marked = LING_JINJA.replace("<role>HUMAN</role>", "<role>USER</role>");
    let tok = tok.with_chat_template(Some(template(&marked).unwrap()));
    assert_eq!(tok.chat(&messages, true).unwrap(), "<role>SYSTEM</role>s<|role_end|><role>USER</role>u<|role_end|><role>ASSISTANT</role>");
    assert!(Tokenizer::chat_prompt(&messages, true).contains("<role>HUMAN</role>"));
}

#[test]
fn template_context_is_the_one_transformers_passes() {
    // Booleans print as Python's (True/False), as in Jinja2.
    let t = template("{{ bos_token }}|{{ eos_token }}|{{ tools is none }}|{{ add_generation_prompt }}|{% for m in messages %}{{ m.role }}={{ m['content'] }};{% endfor %}").unwrap();
    let rendered = t.render(&[(Role::System, "s"), (Role::Human, "u"), (Role::Assistant, "a")], true).unwrap();
    assert_eq!(rendered, "<|startoftext|>|<|endoftext|>|True|True|system=s;user=u;assistant=a;");
    // Unknown special tokens stay undefined, which templates may test.
    let t = ChatTemplate::new("{{ bos_token is defined }}", Path::new(TEMPLATE_FILE), SpecialTokens::default()).unwrap();
    assert_eq!(t.render(&[], false).unwrap(), "False");
}

#[test]
fn template_calling_python_string_methods_renders() {
    let t = template(
        "{% for m in messages %}{{ m['content'].strip() }}|{{ m['role'].startswith('us') }}|{{ m['content'].upper() }}\n{% endfor %}",
    )
    .unwrap();
    assert_eq!(t.render(&[(Role::Human, "  hi ")], false).unwrap(), "hi|True|  HI \n");
}

#[test]
fn template_blocks_are_trimmed_as_transformers_does() {
    // trim_blocks and lstrip_blocks: a block tag on its own indented line leaves no whitespace behind.
    let t = template("{% for m in messages %}\n    {% if m.role == 'user' %}\n[{{ m.content }}]\n    {% endif %}\n{% endfor %}").unwrap();
    assert_eq!(t.render(&[(Role::Human, "a"), (Role::Human, "b")], false).unwrap(), "[a]\n[b]\n");
}

#[test]
fn template_syntax_error_names_the_file_and_line() {
    // A tag left open on line 3.
    let err = template("{% for m in messages %}\n{{ m.content }}\n{% if m.role == 'user' ").unwrap_err();
    assert_template_error(&err, Some(3), &[", line 3:", "syntax error"]);
    let err = template("one\ntwo\n{{ messages[0].content }}{% endfor %}").unwrap_err();
    assert_template_error(&err, Some(3), &[", line 3:", "endfor"]);
}

#[test]
fn template_raise_exception_is_an_error_with_its_message() {
    let t = template("{% if messages[0]['role'] != 'system' %}\n{{ raise_exception('no system role') }}\n{% endif %}ok").unwrap();
    assert_eq!(t.render(&[(Role::System, "s")], false).unwrap(), "ok");
    let err = t.render(&[(Role::Human, "u")], false).unwrap_err();
    assert_template_error(&err, Some(2), &["no system role"]);
}

#[test]
fn template_render_error_names_the_file() {
    // Attribute of an undefined value: an error in Jinja2 too.
    let t = template("line one\n{{ nothing.here }}").unwrap();
    let err = t.render(&[(Role::Human, "u")], true).unwrap_err();
    assert_template_error(&err, Some(2), &["undefined"]);
}
