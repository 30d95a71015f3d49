//! The tokenizer: round trips, special tokens, how the mask/EOS/pad ids are resolved, the chat template, and the
//! official LLaDA2 special ids.

mod common;

use std::path::Path;

use common::micro;
use dllm_engine::{presets, Config, Error, Role, Tokenizer, TokenizerSpec};

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
    let config = presets::preset("llada2-mini").unwrap();
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
    let config = presets::preset("llada2-mini").unwrap();
    let tok = tokenizer_for(&presets::tokenizer_spec(config.vocab_size), &config).unwrap();
    assert_eq!((tok.mask_id, tok.eos_id, tok.pad_id), (156895, 156892, 156892));
}
