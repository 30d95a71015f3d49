//! Loading a checkpoint folder: every way it can be broken is a clear error naming the file and the tensor or
//! field (with expected and found shapes where they apply), and a repaired folder loads again.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use dllm_engine::checkpoint::SaveOptions;
use dllm_engine::{load, Config, DType, Error, Loaded, Role, Tokenizer};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Value};
use tch::Device;
use tempfile::TempDir;

const WEIGHTS: &str = "model.safetensors";
const INDEX: &str = "model.safetensors.index.json";
const CONFIG: &str = "config.json";

// ---------------------------------------------------------------------------------------------- helpers

/// A tensor as stored in a safetensors file: name, dtype, shape, bytes.
type RawTensor = (String, Dtype, Vec<usize>, Vec<u8>);

fn load_dir(dir: &Path) -> dllm_engine::Result<Loaded> {
    load(dir, Device::Cpu, Some(DType::F32))
}

fn sharded() -> SaveOptions {
    SaveOptions { shard_bytes: Some(40_000), ..f32_opts() }
}

fn fused() -> SaveOptions {
    SaveOptions { fused_experts: true, ..f32_opts() }
}

/// A folder holding a valid micro checkpoint saved with `opts`.
fn saved(opts: SaveOptions) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    save(&spiky_model(&micro(), 1), dir.path(), opts);
    dir
}

fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).map(|p| (p.clone(), std::fs::read(p).unwrap())).collect()
}

fn restore(dir: &Path, files: &[(PathBuf, Vec<u8>)]) {
    for entry in std::fs::read_dir(dir).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    for (path, bytes) in files {
        std::fs::write(path, bytes).unwrap();
    }
}

/// Saves a valid checkpoint with `opts`, applies `damage` to its folder and loads it, which must fail; then
/// puts the saved files back and loads again, which must succeed. Returns the folder and the error.
fn damaged(opts: SaveOptions, damage: impl FnOnce(&Path)) -> (TempDir, Error) {
    let dir = saved(opts);
    let original = snapshot(dir.path());
    damage(dir.path());
    let err = load_dir(dir.path()).expect_err("the damaged checkpoint loaded");
    restore(dir.path(), &original);
    if let Err(e) = load_dir(dir.path()) {
        panic!("the repaired checkpoint does not load: {e}");
    }
    (dir, err)
}

/// Asserts the error's message contains every one of `parts`.
fn assert_mentions(err: &Error, parts: &[&str]) {
    let text = err.to_string();
    for part in parts {
        assert!(text.contains(part), "{part:?} is not in the message: {text}");
    }
}

fn read_tensors(path: &Path) -> Vec<RawTensor> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors().into_iter().map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec())).collect()
}

fn write_tensors(path: &Path, tensors: &[RawTensor]) {
    let views: Vec<(String, TensorView)> =
        tensors.iter().map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// Rewrites the single weights file of `dir` through `edit`.
fn edit_weights(dir: &Path, edit: impl FnOnce(&mut Vec<RawTensor>)) {
    let path = dir.join(WEIGHTS);
    let mut tensors = read_tensors(&path);
    edit(&mut tensors);
    write_tensors(&path, &tensors);
}

fn remove_tensor(tensors: &mut Vec<RawTensor>, name: &str) {
    let before = tensors.len();
    tensors.retain(|t| t.0 != name);
    assert_eq!(tensors.len(), before - 1, "no tensor {name} to remove");
}

fn f32_tensor(name: &str, shape: &[usize]) -> RawTensor {
    (name.into(), Dtype::F32, shape.to_vec(), vec![0; 4 * shape.iter().product::<usize>()])
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    edit_json(&dir.join(CONFIG), |v| edit(v.as_object_mut().unwrap()));
}

/// The shard files of a sharded checkpoint, sorted, and the shard holding `tensor`.
fn shards(dir: &Path, tensor: &str) -> (Vec<String>, String) {
    let index: Value = serde_json::from_slice(&std::fs::read(dir.join(INDEX)).unwrap()).unwrap();
    let map = index["weight_map"].as_object().unwrap();
    let mut files: Vec<String> = map.values().map(|f| f.as_str().unwrap().to_string()).collect();
    files.sort();
    files.dedup();
    (files, map[tensor].as_str().unwrap().to_string())
}

fn file_name(path: &Path) -> &str {
    path.file_name().unwrap().to_str().unwrap()
}

// ---------------------------------------------------------------------------------------------- tensors

#[test]
fn missing_tensor_names_file_tensor_and_expected_shape() {
    let (_dir, err) = damaged(f32_opts(), |d| edit_weights(d, |t| remove_tensor(t, "model.norm.weight")));
    match &err {
        Error::MissingTensor { file, tensor, shape } => {
            assert_eq!(file_name(file), WEIGHTS);
            assert_eq!(tensor, "model.norm.weight");
            assert_eq!(shape.as_deref(), Some(&[32i64][..]));
        }
        other => panic!("expected MissingTensor, got {other:?}"),
    }
    assert_mentions(&err, &[WEIGHTS, "`model.norm.weight` is missing", "[32]"]);
}

#[test]
fn extra_tensor_is_rejected_by_name() {
    let extra = "model.layers.0.mlp.bonus.weight";
    let (_dir, err) = damaged(f32_opts(), |d| edit_weights(d, |t| t.push(f32_tensor(extra, &[4]))));
    match &err {
        Error::ExtraTensor { file, tensor } => {
            assert_eq!(file_name(file), WEIGHTS);
            assert_eq!(tensor, extra);
        }
        other => panic!("expected ExtraTensor, got {other:?}"),
    }
    assert_mentions(&err, &[WEIGHTS, extra, "unexpected tensor"]);
}

#[test]
fn tensor_of_wrong_shape_names_expected_and_found_shapes() {
    let name = "model.layers.1.attention.query_key_value.weight";
    let (_dir, err) = damaged(f32_opts(), |d| {
        edit_weights(d, |t| {
            remove_tensor(t, name);
            t.push(f32_tensor(name, &[32, 64])); // transposed: [(nH + 2*nKV) * head_dim, H] is [64, 32]
        })
    });
    match &err {
        Error::ShapeMismatch { file, tensor, expected, found } => {
            assert_eq!(file_name(file), WEIGHTS);
            assert_eq!(tensor, name);
            assert_eq!(expected, &[64, 32]);
            assert_eq!(found, &[32, 64]);
        }
        other => panic!("expected ShapeMismatch, got {other:?}"),
    }
    assert_mentions(&err, &[WEIGHTS, name, "shape [32, 64], expected [64, 32]"]);
}

#[test]
fn config_of_another_width_fails_on_the_first_tensor_with_both_shapes() {
    let (_dir, err) = damaged(f32_opts(), |d| edit_config(d, |c| drop(c.insert("hidden_size".into(), json!(64)))));
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err:?}");
    assert_mentions(&err, &[WEIGHTS, "model.word_embeddings.weight", "shape [128, 32], expected [128, 64]"]);
}

#[test]
fn unsupported_dtype_names_tensor_and_dtype() {
    let name = "model.norm.weight";
    let (_dir, err) = damaged(f32_opts(), |d| {
        edit_weights(d, |t| {
            remove_tensor(t, name);
            t.push((name.into(), Dtype::I64, vec![32], vec![0; 8 * 32]));
        })
    });
    match &err {
        Error::UnsupportedDtype { file, tensor, dtype } => {
            assert_eq!(file_name(file), WEIGHTS);
            assert_eq!(tensor, name);
            assert_eq!(dtype, "I64");
        }
        other => panic!("expected UnsupportedDtype, got {other:?}"),
    }
    assert_mentions(&err, &[WEIGHTS, name, "I64", "F32, F16 or BF16"]);
}

// ---------------------------------------------------------------------------------------------- experts

#[test]
fn fused_and_per_expert_layouts_together_are_rejected() {
    let fused_name = "model.layers.1.mlp.experts.gate_proj";
    let (_dir, err) = damaged(f32_opts(), |d| edit_weights(d, |t| t.push(f32_tensor(fused_name, &[8, 16, 32]))));
    assert!(matches!(err, Error::Index { .. }), "{err:?}");
    assert_mentions(&err, &[WEIGHTS, fused_name, "model.layers.1.mlp.experts.0.gate_proj.weight", "keep one layout"]);
}

#[test]
fn one_missing_expert_is_named_with_its_shape() {
    let name = "model.layers.2.mlp.experts.3.up_proj.weight";
    let (_dir, err) = damaged(f32_opts(), |d| edit_weights(d, |t| remove_tensor(t, name)));
    match &err {
        Error::MissingTensor { tensor, shape, .. } => {
            assert_eq!(tensor, name);
            assert_eq!(shape.as_deref(), Some(&[16i64, 32][..]));
        }
        other => panic!("expected MissingTensor, got {other:?}"),
    }
    assert_mentions(&err, &[WEIGHTS, name, "[16, 32]"]);
}

#[test]
fn missing_fused_experts_name_both_layouts() {
    let fused_name = "model.layers.2.mlp.experts.down_proj";
    let (_dir, err) = damaged(fused(), |d| edit_weights(d, |t| remove_tensor(t, fused_name)));
    assert!(matches!(err, Error::MissingTensor { .. }), "{err:?}");
    assert_mentions(&err, &[WEIGHTS, fused_name, "model.layers.2.mlp.experts.0.down_proj.weight", "[32, 16]", "[8, 32, 16]"]);
}

// ---------------------------------------------------------------------------------------------- damaged files

/// Asserts `err` is a CorruptFile error about the weights file whose message contains `what`.
fn assert_corrupt(err: &Error, what: &str) {
    match err {
        Error::CorruptFile { file, .. } => assert_eq!(file_name(file), WEIGHTS),
        other => panic!("expected CorruptFile, got {other:?}"),
    }
    assert_mentions(err, &[WEIGHTS, "not a valid safetensors file", what]);
}

fn rewrite_file(path: &Path, edit: impl FnOnce(Vec<u8>) -> Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    std::fs::write(path, edit(bytes)).unwrap();
}

#[test]
fn file_cut_in_the_data_is_reported_as_truncated() {
    let (_dir, err) = damaged(f32_opts(), |d| {
        rewrite_file(&d.join(WEIGHTS), |mut b| {
            b.truncate(b.len() / 2);
            b
        })
    });
    assert_corrupt(&err, "truncated");
}

#[test]
fn file_cut_in_the_header_is_reported_as_truncated() {
    let (_dir, err) = damaged(f32_opts(), |d| rewrite_file(&d.join(WEIGHTS), |b| b[..100].to_vec()));
    assert_corrupt(&err, "header length exceeds the file size");
}

#[test]
fn file_with_bytes_appended_is_rejected() {
    let (_dir, err) = damaged(f32_opts(), |d| {
        rewrite_file(&d.join(WEIGHTS), |mut b| {
            b.extend_from_slice(&[0; 16]);
            b
        })
    });
    assert_corrupt(&err, "does not match");
}

#[test]
fn garbage_file_is_not_a_valid_safetensors_file() {
    let (_dir, err) = damaged(f32_opts(), |d| std::fs::write(d.join(WEIGHTS), b"this is not a safetensors file\n").unwrap());
    assert_corrupt(&err, "header");
}

#[test]
fn header_that_is_not_json_is_reported_as_such() {
    let (_dir, err) = damaged(f32_opts(), |d| {
        let header = b"{not json at all";
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        std::fs::write(d.join(WEIGHTS), bytes).unwrap();
    });
    assert_corrupt(&err, "invalid JSON in header");
}

#[test]
fn file_shorter_than_the_header_length_is_reported_with_its_size() {
    let (_dir, err) = damaged(f32_opts(), |d| std::fs::write(d.join(WEIGHTS), [1u8, 2, 3]).unwrap());
    assert_corrupt(&err, "only 3 bytes");
}

#[test]
fn empty_file_is_reported_with_its_size() {
    let (_dir, err) = damaged(f32_opts(), |d| std::fs::write(d.join(WEIGHTS), []).unwrap());
    assert_corrupt(&err, "only 0 bytes");
}

// ---------------------------------------------------------------------------------------------- sharded

#[test]
fn sharded_checkpoint_saves_and_loads() {
    let dir = saved(sharded());
    let (files, _) = shards(dir.path(), "model.norm.weight");
    assert!(files.len() >= 3, "{files:?}");
    assert!(!dir.path().join(WEIGHTS).exists());
    load_dir(dir.path()).unwrap();
}

#[test]
fn index_listing_a_missing_shard_names_index_and_shard() {
    let mut missing = String::new();
    let (_dir, err) = damaged(sharded(), |d| {
        missing = shards(d, "model.norm.weight").0[1].clone();
        std::fs::remove_file(d.join(&missing)).unwrap();
    });
    match &err {
        Error::Index { file, .. } => assert_eq!(file_name(file), INDEX),
        other => panic!("expected Index, got {other:?}"),
    }
    assert_mentions(&err, &[INDEX, &missing, "does not exist"]);
}

#[test]
fn index_pointing_a_tensor_to_the_wrong_shard_names_both_shards() {
    let name = "model.norm.weight";
    let (mut wrong, mut right) = (String::new(), String::new());
    let (_dir, err) = damaged(sharded(), |d| {
        let (files, holder) = shards(d, name);
        wrong = files.iter().find(|f| **f != holder).unwrap().clone();
        right = holder;
        let wrong = wrong.clone();
        edit_json(&d.join(INDEX), |v| v["weight_map"][name] = json!(wrong));
    });
    match &err {
        Error::Index { file, .. } => assert_eq!(file_name(file), INDEX),
        other => panic!("expected Index, got {other:?}"),
    }
    assert_mentions(&err, &[INDEX, name, &wrong, &right]);
}

#[test]
fn index_listing_a_tensor_no_shard_holds_is_rejected() {
    let name = "model.layers.0.mlp.bonus.weight";
    let (_dir, err) = damaged(sharded(), |d| {
        let (files, _) = shards(d, "model.norm.weight");
        edit_json(&d.join(INDEX), |v| v["weight_map"][name] = json!(files[0]));
    });
    assert!(matches!(err, Error::Index { .. }), "{err:?}");
    assert_mentions(&err, &[INDEX, name, "no such tensor"]);
}

#[test]
fn shard_tensor_the_index_does_not_list_is_rejected() {
    let name = "model.norm.weight";
    let (_dir, err) = damaged(sharded(), |d| edit_json(&d.join(INDEX), |v| {
        v["weight_map"].as_object_mut().unwrap().remove(name);
    }));
    assert!(matches!(err, Error::Index { .. }), "{err:?}");
    assert_mentions(&err, &[INDEX, name, "does not list"]);
}

#[test]
fn index_that_is_not_json_names_the_index() {
    let (_dir, err) = damaged(sharded(), |d| std::fs::write(d.join(INDEX), "{\"weight_map\": ").unwrap());
    assert!(matches!(err, Error::Index { .. }), "{err:?}");
    assert_mentions(&err, &[INDEX, "not a valid index"]);
}

#[test]
fn tensor_in_two_shards_is_rejected() {
    let name = "model.norm.weight";
    let (_dir, err) = damaged(sharded(), |d| {
        let (files, holder) = shards(d, name);
        let other = d.join(files.iter().find(|f| **f != holder).unwrap());
        let mut tensors = read_tensors(&other);
        tensors.push(f32_tensor(name, &[32]));
        write_tensors(&other, &tensors);
    });
    assert!(matches!(err, Error::Index { .. }), "{err:?}");
    assert_mentions(&err, &[name, "also appears in"]);
}

// ---------------------------------------------------------------------------------------------- folder

#[test]
fn folder_without_weights_says_which_files_it_looked_for() {
    let (_dir, err) = damaged(f32_opts(), |d| std::fs::remove_file(d.join(WEIGHTS)).unwrap());
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert_mentions(&err, &[WEIGHTS, INDEX]);
}

#[test]
fn folder_without_tokenizer_names_tokenizer_json() {
    let (_dir, err) = damaged(f32_opts(), |d| std::fs::remove_file(d.join("tokenizer.json")).unwrap());
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert_mentions(&err, &["tokenizer.json"]);
}

#[test]
fn folder_without_config_names_config_json() {
    let (_dir, err) = damaged(f32_opts(), |d| std::fs::remove_file(d.join(CONFIG)).unwrap());
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert_mentions(&err, &[CONFIG]);
}

#[test]
fn a_file_or_a_missing_path_is_not_a_checkpoint_folder() {
    let dir = saved(f32_opts());
    for path in [dir.path().join(WEIGHTS), dir.path().join("nowhere")] {
        let err = load_dir(&path).unwrap_err();
        match &err {
            Error::Io { path: p, .. } => assert_eq!(p, &path),
            other => panic!("expected Io, got {other:?}"),
        }
        assert_mentions(&err, &[&path.display().to_string(), "not a checkpoint folder"]);
    }
}

#[test]
fn a_failed_load_does_not_affect_loading_another_folder() {
    let model = spiky_model(&micro(), 3);
    let (good, bad) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    save(&model, good.path(), f32_opts());
    save(&model, bad.path(), f32_opts());
    edit_weights(bad.path(), |t| remove_tensor(t, "model.layers.2.mlp.gate.expert_bias"));
    load_dir(bad.path()).unwrap_err();
    let loaded = load_dir(good.path()).unwrap();
    let want = model.var_store().variables();
    let got = loaded.model.var_store().variables();
    assert_eq!(got.len(), want.len());
    for (name, t) in &want {
        assert_eq!(max_abs_diff(&got[name], t), 0.0, "{name}");
    }
    load_dir(bad.path()).unwrap_err(); // and the broken one still fails the same way
}

// ---------------------------------------------------------------------------------------------- config.json

/// Asserts `err` is a Config error about the folder's config.json and `field`, mentioning `parts`.
fn assert_config_error(err: &Error, field: &str, parts: &[&str]) {
    match err {
        Error::Config { file, field: f, .. } => {
            assert_eq!(file.as_deref().map(file_name), Some(CONFIG));
            assert_eq!(f, field);
        }
        other => panic!("expected Config, got {other:?}"),
    }
    assert_mentions(err, &[CONFIG, &format!("field `{field}`")]);
    assert_mentions(err, parts);
}

fn config_error(edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Error {
    damaged(f32_opts(), |d| edit_config(d, edit)).1
}

#[test]
fn config_missing_a_required_field_names_it() {
    let err = config_error(|c| drop(c.remove("hidden_size")));
    assert_config_error(&err, "hidden_size", &["missing required field"]);
}

#[test]
fn config_field_of_the_wrong_type_names_it() {
    let err = config_error(|c| drop(c.insert("hidden_size".into(), json!("big"))));
    assert_config_error(&err, "hidden_size", &["invalid type", "\"big\""]);
}

#[test]
fn config_of_another_model_type_is_rejected() {
    let err = config_error(|c| drop(c.insert("model_type".into(), json!("llama"))));
    assert_config_error(&err, "model_type", &["llada2_moe", "llama"]);
}

#[test]
fn config_with_rope_scaling_is_rejected() {
    let err = config_error(|c| drop(c.insert("rope_scaling".into(), json!({"type": "linear", "factor": 2.0}))));
    assert_config_error(&err, "rope_scaling", &["only null", "linear"]);
}

#[test]
fn config_whose_kv_heads_do_not_divide_heads_is_rejected() {
    let err = config_error(|c| drop(c.insert("num_key_value_heads".into(), json!(3))));
    assert_config_error(&err, "num_key_value_heads", &["3 does not divide num_attention_heads 4"]);
}

#[test]
fn config_that_is_not_json_names_the_file() {
    let (_dir, err) = damaged(f32_opts(), |d| std::fs::write(d.join(CONFIG), "{\"hidden_size\": 32,").unwrap());
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
    assert_mentions(&err, &[CONFIG, "not valid JSON", "EOF"]);
    assert!(!err.to_string().contains("field"), "{err}");
}

#[test]
fn config_defaults_follow_the_official_class() {
    let cfg = Config::from_json(
        r#"{"model_type": "llada2_moe", "vocab_size": 128, "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 0, "first_k_dense_replace": 1,
            "intermediate_size": 64, "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
            "n_group": 2, "topk_group": 1, "eos_token_id": [5, 6], "rope_scaling": null}"#,
    )
    .unwrap();
    assert!(cfg.use_qk_norm);
    assert_eq!(cfg.partial_rotary_factor, 0.5);
    assert_eq!(cfg.head_dim, 8);
    assert_eq!(cfg.rotary_dim(), 4);
    assert_eq!(cfg.num_key_value_heads, 4);
    assert_eq!(cfg.eos_token_id, Some(5));
    assert_eq!(cfg.pad_token_id, None);
    assert_eq!(cfg.mask_token_id, None);
}

#[test]
fn checkpoint_whose_config_omits_defaulted_fields_loads_the_same_config() {
    let dir = saved(f32_opts());
    edit_config(dir.path(), |c| {
        for field in ["use_qk_norm", "partial_rotary_factor", "head_dim", "rope_scaling"] {
            c.remove(field);
        }
        c.insert("eos_token_id".into(), json!([0, 3]));
    });
    let loaded = load_dir(dir.path()).unwrap();
    assert_eq!(loaded.model.config(), &micro());
}

// ---------------------------------------------------------------------------------------------- chat template

/// The LLaDA2.1 Ling format as Jinja, with the user tag changed so output shows which template rendered it.
fn marked_ling() -> String {
    include_str!("../assets/templates/ling.jinja").replace("<role>HUMAN</role>", "<role>MARKED</role>")
}

const CHAT: [(Role, &str); 2] = [(Role::System, "s"), (Role::Human, "u")];

#[test]
fn checkpoint_without_a_template_chats_in_the_built_in_format() {
    let dir = saved(f32_opts());
    let tok = load_dir(dir.path()).unwrap().tokenizer;
    assert!(tok.chat_template().is_none());
    assert_eq!(tok.chat(&CHAT, true).unwrap(), Tokenizer::chat_prompt(&CHAT, true));
}

#[test]
fn checkpoint_chat_template_jinja_is_used() {
    let dir = saved(f32_opts());
    std::fs::write(dir.path().join("chat_template.jinja"), marked_ling()).unwrap();
    let tok = load_dir(dir.path()).unwrap().tokenizer;
    assert_eq!(tok.chat_template().unwrap().file(), dir.path().join("chat_template.jinja"));
    assert_eq!(tok.chat(&CHAT, true).unwrap(), "<role>SYSTEM</role>s<|role_end|><role>MARKED</role>u<|role_end|><role>ASSISTANT</role>");
    // The unmodified Ling template as the checkpoint's own renders exactly the built-in prompt.
    std::fs::write(dir.path().join("chat_template.jinja"), include_str!("../assets/templates/ling.jinja")).unwrap();
    let tok = load_dir(dir.path()).unwrap().tokenizer;
    assert_eq!(tok.chat(&CHAT, false).unwrap(), Tokenizer::chat_prompt(&CHAT, false));
}

#[test]
fn tokenizer_config_chat_template_is_used_and_the_jinja_file_wins() {
    let dir = saved(f32_opts());
    let config = json!({"chat_template": "{{ bos_token }}{% for m in messages %}[{{ m.role }}:{{ m.content }}]{% endfor %}{{ eos_token }}",
                        "bos_token": {"content": "<|startoftext|>", "special": true}, "eos_token": "<|endoftext|>"});
    std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
    let tok = load_dir(dir.path()).unwrap().tokenizer;
    assert_eq!(tok.chat(&CHAT, true).unwrap(), "<|startoftext|>[system:s][user:u]<|endoftext|>");

    // A list of named templates: the one named "default".
    let config = json!({"chat_template": [{"name": "tool_use", "template": "tools"}, {"name": "default", "template": "default"}]});
    std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
    assert_eq!(load_dir(dir.path()).unwrap().tokenizer.chat(&CHAT, true).unwrap(), "default");

    std::fs::write(dir.path().join("chat_template.jinja"), marked_ling()).unwrap();
    let tok = load_dir(dir.path()).unwrap().tokenizer;
    assert!(tok.chat(&CHAT, true).unwrap().contains("<role>MARKED</role>"));
}

#[test]
fn broken_chat_template_fails_the_load_naming_file_and_line() {
    let dir = saved(f32_opts());
    std::fs::write(dir.path().join("chat_template.jinja"), "{% for m in messages %}\n{{ m.content }}\n{% if m.role ").unwrap();
    let err = load_dir(dir.path()).unwrap_err();
    assert!(matches!(err, Error::Template { line: Some(3), .. }), "{err:?}");
    assert!(err.to_string().contains("chat_template.jinja, line 3:"), "{err}");

    // In tokenizer_config.json the line counts within the template string, and the field is named.
    std::fs::remove_file(dir.path().join("chat_template.jinja")).unwrap();
    std::fs::write(dir.path().join("tokenizer_config.json"), json!({"chat_template": "a\n{{ b"}).to_string()).unwrap();
    let err = load_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("tokenizer_config.json field `chat_template`, line 2:"), "{err}");

    std::fs::write(dir.path().join("tokenizer_config.json"), json!({"chat_template": [{"name": "tool_use", "template": "t"}]}).to_string()).unwrap();
    let err = load_dir(dir.path()).unwrap_err();
    assert!(matches!(&err, Error::Config { field, .. } if field == "chat_template"), "{err:?}");
    assert_mentions(&err, &["tokenizer_config.json", "none named \"default\""]);
}

#[test]
fn chat_template_that_raises_is_an_error_at_chat_time() {
    let dir = saved(f32_opts());
    let template = "{% if messages[0]['role'] != 'system' %}{{ raise_exception('no system role') }}{% endif %}ok";
    std::fs::write(dir.path().join("chat_template.jinja"), template).unwrap();
    let tok = load_dir(dir.path()).unwrap().tokenizer;
    assert_eq!(tok.chat(&CHAT, true).unwrap(), "ok");
    let err = tok.chat(&[(Role::Human, "u")], true).unwrap_err().to_string();
    assert!(err.contains("chat_template.jinja") && err.contains("no system role"), "{err}");
}

// ---------------------------------------------------------------------------------------------- config.json of LLaDA2.2

/// The config.json of a preset, edited, then resolved.
fn resolve_edited(preset: &str, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> dllm_engine::Result<Config> {
    let mut v = dllm_engine::shapes::shape(preset).unwrap().to_hf_json();
    edit(v.as_object_mut().unwrap());
    Config::from_json(&v.to_string())
}

fn field_error(r: dllm_engine::Result<Config>, field: &str, parts: &[&str]) {
    match r {
        Err(err @ Error::Config { .. }) => {
            assert!(matches!(&err, Error::Config { field: f, .. } if f == field), "{err:?}");
            assert_mentions(&err, parts);
        }
        other => panic!("expected a Config error about {field}, got {other:?}"),
    }
}

#[test]
fn block_routing_needs_both_capacity_and_block_size() {
    field_error(resolve_edited("micro-2.2", |c| drop(c.remove("block_size"))), "block_size", &["expert_capacity"]);
    field_error(resolve_edited("micro-2.2", |c| drop(c.remove("expert_capacity"))), "expert_capacity", &["block_size"]);
    field_error(resolve_edited("micro-2.2", |c| drop(c.insert("block_size".into(), json!(0)))), "block_size", &[">= 1", "0"]);
    // 1 <= num_experts_per_tok (2) <= expert_capacity <= num_experts (8).
    for cap in [1, 9] {
        field_error(resolve_edited("micro-2.2", |c| drop(c.insert("expert_capacity".into(), json!(cap)))), "expert_capacity", &[&cap.to_string(), "2..=8"]);
    }
    assert_eq!(resolve_edited("micro-2.2", |_| {}).unwrap().block_routing(), Some((4, 4)));
    assert_eq!(resolve_edited("micro", |_| {}).unwrap().block_routing(), None);
}

#[test]
fn block_routing_does_not_use_expert_groups() {
    // n_group 3 does not divide 8 experts: an error for group-limited routing, irrelevant to block routing.
    let three = |c: &mut serde_json::Map<String, Value>| drop(c.insert("n_group".into(), json!(3)));
    assert!(resolve_edited("micro-2.2", three).is_ok());
    field_error(resolve_edited("micro", three), "n_group", &["does not divide"]);
}

#[test]
fn rope_parameters_are_preferred_over_the_top_level_fields() {
    let cfg = resolve_edited("micro-2.2", |c| {
        c.insert("rope_theta".into(), json!(600000.0));
        c.insert("rope_parameters".into(), json!({"rope_type": "default", "rope_theta": 3e6, "partial_rotary_factor": 1.0}));
    })
    .unwrap();
    assert_eq!((cfg.rope_theta, cfg.partial_rotary_factor), (3e6, 1.0));
    // Only in rope_parameters (the top-level fields may be absent).
    let cfg = resolve_edited("micro", |c| {
        c.remove("rope_theta");
        c.remove("partial_rotary_factor");
        c.insert("rope_parameters".into(), json!({"rope_theta": 12345.0}));
    })
    .unwrap();
    assert_eq!((cfg.rope_theta, cfg.partial_rotary_factor), (12345.0, 0.5));
    let yarn = |c: &mut serde_json::Map<String, Value>| drop(c.insert("rope_parameters".into(), json!({"rope_type": "yarn", "factor": 4.0})));
    field_error(resolve_edited("micro-2.2", yarn), "rope_parameters.rope_type", &["default", "yarn"]);
}

#[test]
fn edit_ids_default_to_the_published_ones_only_for_block_routed_full_vocabularies() {
    let no_ids = |c: &mut serde_json::Map<String, Value>| {
        c.remove("delete_token_id");
        c.remove("split_token_id");
    };
    let ids = |c: Config| (c.delete_token_id, c.split_token_id);
    assert_eq!(ids(resolve_edited("llada2.2-mini", no_ids).unwrap()), (Some(156930), Some(156931)));
    assert_eq!(ids(resolve_edited("micro-2.2", no_ids).unwrap()), (None, None), "small vocabulary: no edit tokens");
    assert_eq!(ids(resolve_edited("llada2-mini", no_ids).unwrap()), (None, None), "2.1: no edit tokens");
    assert_eq!(ids(resolve_edited("micro-2.2", |_| {}).unwrap()), (Some(126), Some(127)), "read as given");
}

#[test]
fn edit_ids_are_validated_by_name() {
    let set = |field: &'static str, v: i64| move |c: &mut serde_json::Map<String, Value>| drop(c.insert(field.into(), json!(v)));
    field_error(resolve_edited("micro-2.2", set("split_token_id", 126)), "split_token_id", &["126", "delete_token_id"]);
    field_error(resolve_edited("micro-2.2", set("delete_token_id", 128)), "delete_token_id", &["128", "vocabulary 0..128"]);
    field_error(resolve_edited("micro-2.2", set("delete_token_id", -1)), "delete_token_id", &["-1"]);
    field_error(resolve_edited("micro-2.2", set("mask_token_id", 127)), "split_token_id", &["mask_token_id"]);
    // The compact tokenizer's EOS is id 0.
    field_error(resolve_edited("micro-2.2", set("delete_token_id", 0)), "delete_token_id", &["eos_token_id"]);
    field_error(resolve_edited("micro-2.2", |c| drop(c.remove("split_token_id"))), "split_token_id", &["missing"]);
}

#[test]
fn storage_dtype_quantisation_and_sliding_window_fields() {
    // `dtype` (transformers 5) and `torch_dtype` only name the storage type; a non-float one is refused.
    assert!(resolve_edited("micro-2.2", |c| drop(c.insert("dtype".into(), json!("bfloat16")))).is_ok());
    field_error(resolve_edited("micro-2.2", |c| drop(c.insert("dtype".into(), json!("int8")))), "dtype", &["int8"]);
    field_error(resolve_edited("micro", |c| drop(c.insert("torch_dtype".into(), json!("float8_e4m3fn")))), "torch_dtype", &["float8"]);
    let fp8 = |c: &mut serde_json::Map<String, Value>| drop(c.insert("quantization_config".into(), json!({"quant_method": "fp8"})));
    field_error(resolve_edited("micro-2.2", fp8), "quantization_config", &["not supported"]);
    // The official code never reads the sliding-window fields (llada2.md section 1): accepted, no window.
    let window = |c: &mut serde_json::Map<String, Value>| {
        c.insert("use_sliding_window".into(), json!(true));
        c.insert("sliding_window".into(), json!(2));
    };
    assert_eq!(resolve_edited("micro-2.2", window).unwrap(), dllm_engine::shapes::shape("micro-2.2").unwrap());
}

#[test]
fn block_routed_checkpoint_loads_with_its_routing_and_edit_tokens() {
    let cfg = dllm_engine::shapes::shape("micro-2.2").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let init = dllm_engine::RandomInit::new(1, 0.02, Device::Cpu, DType::F32);
    dllm_engine::shapes::write_random_checkpoint(&cfg, init, dir.path(), f32_opts()).unwrap();
    let written: Value = serde_json::from_slice(&std::fs::read(dir.path().join(CONFIG)).unwrap()).unwrap();
    assert_eq!((written["expert_capacity"].clone(), written["block_size"].clone(), written["dtype"].clone()), (json!(4), json!(4), json!("float32")));
    let loaded = load_dir(dir.path()).unwrap();
    assert_eq!(loaded.model.config(), &cfg);
    assert_eq!(loaded.tokenizer.token_text(126), "<|delete|>");
    assert_eq!(loaded.tokenizer.token_text(127), "<|split|>");
}

#[test]
fn numbers_that_would_make_nan_logits_are_config_errors() {
    for (field, value) in [("rope_theta", "-1e9"), ("rms_norm_eps", "0"), ("routed_scaling_factor", "-2.5"), ("partial_rotary_factor", "1.5")] {
        let mut v = serde_json::to_value(micro().to_hf_json()).unwrap();
        v[field] = serde_json::from_str(value).unwrap();
        let e = Config::from_json(&v.to_string()).unwrap_err().to_string();
        assert!(e.contains(field), "{field} = {value}: {e}");
    }
}

// ------------------------------------------------------------------------------------------------ fuzz

/// Seeded random damage to a checkpoint folder (`DLLM_CKPT_FUZZ=N` runs N damaged copies instead of 80): bytes
/// flipped in the header or the data of a weights file, a file cut at a random offset, a config value swapped
/// for an extreme, a tokenizer cut short. Loading must return, never panic or abort: an error (naming what was
/// wrong) or, where the damage changed only weights' values, a model.
#[test]
fn randomly_damaged_checkpoints_load_or_fail_cleanly() {
    let copies: usize = std::env::var("DLLM_CKPT_FUZZ").ok().and_then(|n| n.parse().ok()).unwrap_or(80);
    let mut state = 0x5DEE_CE66_D1CEu64;
    let mut below = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n.max(1) as u64) as usize
    };
    let sources = [saved(f32_opts()), saved(sharded()), saved(fused())];
    let extremes = ["-1", "0", "1e300", "-1e9", "NaN", "9223372036854775807", "\"x\"", "null", "[]", "{}", "true", "0.5"];
    let (mut loaded, mut refused) = (0, 0);
    for n in 0..copies {
        let src = &sources[below(sources.len())];
        let dir = tempfile::tempdir().unwrap();
        for (path, bytes) in snapshot(src.path()) {
            std::fs::write(dir.path().join(path.file_name().unwrap()), bytes).unwrap();
        }
        let files: Vec<PathBuf> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
        let file = &files[below(files.len())];
        let mut bytes = std::fs::read(file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let what = match below(3) {
            0 if name == CONFIG => {
                let mut v: Value = serde_json::from_slice(&bytes).unwrap();
                let keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
                let key = &keys[below(keys.len())];
                let x = extremes[below(extremes.len())];
                v[key] = serde_json::from_str(x).unwrap_or(Value::String(x.into()));
                bytes = serde_json::to_vec(&v).unwrap();
                format!("{name}: {key} = {x}")
            }
            1 => {
                let at = below(bytes.len());
                bytes.truncate(at);
                format!("{name} cut at {at}")
            }
            _ => {
                // Mostly the header (the first few hundred bytes of a safetensors file), sometimes anywhere.
                let span = if below(2) == 0 { bytes.len().min(512) } else { bytes.len() };
                let flips = 1 + below(8);
                for _ in 0..flips {
                    let i = below(span);
                    bytes[i] ^= 1 << below(8);
                }
                format!("{name}: {flips} bits flipped")
            }
        };
        std::fs::write(file, &bytes).unwrap();
        let result = std::panic::catch_unwind(|| load_dir(dir.path()).map(|_| ()));
        match result {
            Ok(Ok(())) => loaded += 1,
            Ok(Err(e)) => {
                let e = e.to_string();
                assert!(!e.trim().is_empty(), "copy {n} ({what}): an empty error");
                refused += 1;
            }
            Err(_) => panic!("copy {n} ({what}): loading panicked"),
        }
    }
    eprintln!("checkpoint fuzz: {copies} damaged copies, {refused} refused with an error, {loaded} loaded");
    assert!(refused > copies / 4, "most damage should be caught ({refused} of {copies})");
}

#[test]
fn what_the_checkpoint_fuzz_found_is_an_error() {
    // A tokenizer.json cut inside its decoder made the tokenizers crate panic.
    let (_d, e) = damaged(f32_opts(), |dir| {
        let t = std::fs::read(dir.join("tokenizer.json")).unwrap();
        std::fs::write(dir.join("tokenizer.json"), &t[..t.len() * 3 / 4]).unwrap();
    });
    assert!(e.to_string().contains("tokenizer.json") && e.to_string().contains("not valid JSON"), "{e}");
    // Sizes whose products overflow, a count that divides, and a model far larger than memory (refused with
    // its estimate before anything is allocated, where libtorch once tried 137 GB).
    for (field, v, says) in [
        ("num_hidden_layers", json!(i64::MAX), "field `num_hidden_layers`: 9223372036854775807 is larger than any model"),
        ("num_key_value_heads", json!(-2), "field `num_key_value_heads`: must be positive"),
        ("num_experts", json!(1i64 << 30), "parameters in f32 needs about 13.5 TB of memory"),
    ] {
        let (_d, e) = damaged(f32_opts(), |dir| edit_config(dir, |c| {
            c.insert(field.into(), v.clone());
        }));
        assert!(e.to_string().contains(says), "{field}: {e}");
    }
}
