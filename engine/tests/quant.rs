//! Quantized routed experts (engine/src/quant.rs): loading a full checkpoint quantized (per-expert and fused
//! layouts), saving and reloading a quantized checkpoint bit for bit, the forward against the full model, the
//! memory it saves, what cannot be trained, and the clear errors of mismatched files.

mod common;

use std::path::Path;

use common::*;
use dllm_engine::quant::{Fidelity, QTensor};
use dllm_engine::trainable::{self, Trainable};
use dllm_engine::{load, load_with, shapes, BlockMask, DType, KvCache, Loaded, Quantization};
use safetensors::{Dtype, SafeTensors};
use tch::{Device, Kind, Tensor};

const FORMATS: [Quantization; 2] = [Quantization::Int8, Quantization::Fp8];

fn load_q(dir: &Path, q: Option<Quantization>) -> dllm_engine::Result<Loaded> {
    load_with(dir, Device::Cpu, Some(DType::F32), q)
}

fn logits(l: &Loaded, ids: &Tensor) -> Tensor {
    l.model.forward(ids, &mut KvCache::new(), 0, BlockMask::block_causal(8)).unwrap()
}

/// A `tiny`-shaped checkpoint of N(0, 0.02) weights (its experts are 128 x 128: one fp8 block each).
fn tiny_checkpoint(opts: dllm_engine::checkpoint::SaveOptions) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let model = shapes::random_model(&shapes::shape("tiny").unwrap(), 3, Device::Cpu, DType::F32).unwrap();
    save(&model, dir.path(), opts);
    dir
}

#[test]
fn quantized_forward_stays_close_to_the_full_model() {
    let dir = tiny_checkpoint(f32_opts());
    let full = load_q(dir.path(), None).unwrap();
    let ids = ids(full.model.config(), 4, 32, 1);
    let want = logits(&full, &ids);
    for q in FORMATS {
        let l = load_q(dir.path(), Some(q)).unwrap();
        assert_eq!(l.model.quantization(), Some(q));
        let f = Fidelity::of(&want, &logits(&l, &ids));
        assert_eq!(f.positions, 128);
        // Not identical (the experts did change), but close: fp8 keeps 3 mantissa bits, int8 about 7.
        assert!(f.max_abs_dp > 0.0, "{q}: {f:?}");
        let (kl, agree) = if q == Quantization::Int8 { (1e-4, 0.97) } else { (2e-3, 0.9) };
        assert!(f.kl_mean < kl && f.top1_agreement >= agree, "{q}: {f:?}");
    }
}

#[test]
fn experts_take_about_half_the_bytes_of_bf16() {
    let dir = tiny_checkpoint(f32_opts());
    let parts = |l: &Loaded| l.model.weight_bytes_by_part();
    let bf16 = load_with(dir.path(), Device::Cpu, Some(DType::Bf16), None).unwrap();
    let experts = |l: &Loaded| parts(l)[0].1 as f64;
    assert_eq!(parts(&bf16)[0].0, "routed experts");
    for q in FORMATS {
        let l = load_with(dir.path(), Device::Cpu, Some(DType::Bf16), Some(q)).unwrap();
        let ratio = experts(&l) / experts(&bf16);
        assert!((0.5..0.55).contains(&ratio), "{q}: experts at {ratio} of bf16");
        // Everything else is untouched, and the total is the sum of the parts.
        assert_eq!(parts(&l)[1..], parts(&bf16)[1..], "{q}");
        assert_eq!(l.model.weight_bytes(), parts(&l).iter().map(|p| p.1).sum::<usize>());
        assert_eq!(l.model.num_parameters(), bf16.model.num_parameters(), "{q}: quantized experts are still parameters");
        // The estimate a load is checked against agrees with what was allocated.
        let est = dllm_engine::memory::weight_bytes(l.model.config(), 2) as f64;
        assert!((est / l.model.weight_bytes() as f64 - 1.0).abs() < 0.01, "{q}: estimate {est} for {}", l.model.weight_bytes());
    }
}

#[test]
fn per_expert_fused_and_in_memory_quantization_agree() {
    let per_expert = tiny_checkpoint(f32_opts());
    let fused = tiny_checkpoint(dllm_engine::checkpoint::SaveOptions { fused_experts: true, ..f32_opts() });
    let full = load_q(per_expert.path(), None).unwrap();
    let ids = ids(full.model.config(), 2, 16, 2);
    for q in FORMATS {
        let a = logits(&load_q(per_expert.path(), Some(q)).unwrap(), &ids);
        let b = logits(&load_q(fused.path(), Some(q)).unwrap(), &ids);
        assert!(a.equal(&b), "{q}: per-expert and fused layouts quantize alike");
        // The quantization of the whole fused tensor in memory gives the same values as one expert at a time.
        let w = &full.model.var_store().variables()["model.layers.1.mlp.experts.up_proj"];
        let whole = QTensor::quantize(w, q);
        let vars = load_q(per_expert.path(), Some(q)).unwrap().model.merged_variables();
        let got = vars.iter().find(|(n, _)| n == "model.layers.1.mlp.experts.up_proj").unwrap();
        assert!(got.1.to_kind(Kind::Float).equal(&whole.data.to_kind(Kind::Float)), "{q}");
    }
}

#[test]
fn a_quantized_checkpoint_saves_and_reloads_bit_for_bit() {
    let src = tiny_checkpoint(f32_opts());
    for q in FORMATS {
        for fused in [false, true] {
            let l = load_q(src.path(), Some(q)).unwrap();
            let out = tempfile::tempdir().unwrap();
            save(&l.model, out.path(), dllm_engine::checkpoint::SaveOptions { fused_experts: fused, ..f32_opts() });
            // The file holds int8 / fp8 values beside f32 scales, under the documented names.
            let bytes = std::fs::read(out.path().join("model.safetensors")).unwrap();
            let st = SafeTensors::deserialize(&bytes).unwrap();
            let (values, scales) = if fused {
                ("model.layers.1.mlp.experts.gate_proj", "model.layers.1.mlp.experts.gate_proj_scale")
            } else {
                ("model.layers.1.mlp.experts.3.gate_proj.weight", "model.layers.1.mlp.experts.3.gate_proj.weight_scale")
            };
            let want = if q == Quantization::Int8 { Dtype::I8 } else { Dtype::F8_E4M3 };
            assert_eq!(st.tensor(values).unwrap().dtype(), want, "{q} fused={fused}");
            assert_eq!(st.tensor(scales).unwrap().dtype(), Dtype::F32, "{q} fused={fused}");
            let want_scale: Vec<usize> = if q == Quantization::Int8 { vec![128, 1] } else { vec![1, 1] };
            assert_eq!(st.tensor(scales).unwrap().shape()[st.tensor(scales).unwrap().shape().len() - 2..], want_scale[..]);
            assert_eq!(st.tensor("model.layers.1.attention.dense.weight").unwrap().dtype(), Dtype::F32);
            let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("config.json")).unwrap()).unwrap();
            assert_eq!(cfg["quantization_config"]["format"], q.to_string());
            // Loading it needs no option, and asking for its own format is the same.
            let ids = ids(l.model.config(), 2, 16, 4);
            let before = logits(&l, &ids);
            for asked in [None, Some(q)] {
                let back = load_q(out.path(), asked).unwrap();
                assert_eq!(back.model.quantization(), Some(q));
                assert!(logits(&back, &ids).equal(&before), "{q} fused={fused}: reloaded logits differ");
            }
            // The experts (two thirds of tiny's weights) shrink from 4 bytes to about 1.
            let full_size = std::fs::metadata(src.path().join("model.safetensors")).unwrap().len() as f64;
            assert!((bytes.len() as f64) < 0.55 * full_size, "{q}: {} of {full_size}", bytes.len());
            // Asking for the other format is refused by name.
            let other = if q == Quantization::Int8 { Quantization::Fp8 } else { Quantization::Int8 };
            let e = load_q(out.path(), Some(other)).unwrap_err().to_string();
            assert!(e.contains(&format!("stores its routed experts in {q}")) && e.contains(&format!("quantize={q}")), "{e}");
        }
    }
}

#[test]
fn mismatched_quantized_files_are_clear_errors() {
    let src = tiny_checkpoint(f32_opts());
    let l = load_q(src.path(), Some(Quantization::Int8)).unwrap();
    let out = tempfile::tempdir().unwrap();
    save(&l.model, out.path(), f32_opts());
    let config = out.path().join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&text).unwrap();
    // Int8 values under a config that says nothing about quantization.
    cfg.as_object_mut().unwrap().remove("quantization_config");
    std::fs::write(&config, cfg.to_string()).unwrap();
    let e = load_q(out.path(), None).unwrap_err().to_string();
    assert!(e.contains("is I8 where the model holds Float") && e.contains("quantization_config"), "{e}");
    // A quantization_config of another quantizer.
    cfg["quantization_config"] = serde_json::json!({"quant_method": "fp8", "weight_block_size": [128, 128]});
    std::fs::write(&config, cfg.to_string()).unwrap();
    let e = load_q(out.path(), None).unwrap_err().to_string();
    assert!(e.contains("quantization_config") && e.contains("\"fp8\" is not supported"), "{e}");
    // One expert's scales missing: the missing tensor is named.
    std::fs::write(&config, &text).unwrap();
    let file = out.path().join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let gone = "model.layers.2.mlp.experts.5.down_proj.weight_scale";
    let kept: Vec<(String, safetensors::tensor::TensorView)> = st.tensors().into_iter().filter(|(n, _)| n != gone).collect();
    std::fs::write(&file, safetensors::serialize(kept, None).unwrap()).unwrap();
    let e = load_q(out.path(), None).unwrap_err().to_string();
    assert!(e.contains(gone) && e.contains("missing"), "{e}");
    // A dense model has nothing to quantize.
    let dense = tempfile::tempdir().unwrap();
    let mut c = shapes::shape("micro").unwrap();
    c.first_k_dense_replace = c.num_hidden_layers;
    save(&shapes::random_model(&c, 1, Device::Cpu, DType::F32).unwrap(), dense.path(), f32_opts());
    assert!(load(dense.path(), Device::Cpu, None).is_ok());
    let e = load_q(dense.path(), Some(Quantization::Fp8)).unwrap_err().to_string();
    assert!(e.contains("no routed experts to quantize"), "{e}");
}

#[test]
fn quantized_experts_are_not_trained_but_lora_over_them_is() {
    let dir = tiny_checkpoint(f32_opts());
    let mut l = load_q(dir.path(), Some(Quantization::Int8)).unwrap();
    for t in ["all", "layers:0-2"] {
        let e = trainable::select(&mut l.model, &Trainable::parse(t).unwrap()).unwrap_err().to_string();
        assert!(e.contains("held in int8 and cannot be trained") && e.contains("lora:R"), "{t}: {e}");
    }
    // Layer 0 is dense: training it alone is fine, as is the head.
    assert!(trainable::select(&mut l.model, &Trainable::parse("layers:0").unwrap()).is_ok());
    assert!(trainable::select(&mut l.model, &Trainable::parse("lm-head").unwrap()).is_ok());
    // LoRA adapters over the quantized experts change the output; merging requantizes W + s B A.
    let ids = ids(l.model.config(), 2, 16, 5);
    let before = logits(&l, &ids);
    let params = trainable::select(&mut l.model, &Trainable::parse("lora:4").unwrap()).unwrap();
    tch::no_grad(|| {
        for (_, p) in &params {
            let _ = p.shallow_clone().g_add_(&(p.randn_like() * 0.05));
        }
    });
    let adapted = logits(&l, &ids);
    assert!(max_abs_diff(&adapted, &before) > 1e-3, "the adapters change the output");
    let merged_vars = l.model.merged_variables();
    assert!(l.model.merge_lora());
    let merged = logits(&l, &ids);
    let f = Fidelity::of(&adapted, &merged);
    assert!(f.kl_mean < 1e-4 && f.top1_agreement > 0.97, "merging requantizes closely: {f:?}");
    // merged_variables gave the same requantized experts that merging wrote.
    let now = l.model.merged_variables();
    let name = "model.layers.2.mlp.experts.down_proj";
    let (a, b) = (merged_vars.iter().find(|v| v.0 == name).unwrap(), now.iter().find(|v| v.0 == name).unwrap());
    assert!(a.1.to_kind(Kind::Float).equal(&b.1.to_kind(Kind::Float)));
}

#[test]
fn an_in_memory_quantized_copy_equals_loading_quantized_and_shares_the_rest() {
    let dir = tiny_checkpoint(f32_opts());
    let full = load_q(dir.path(), None).unwrap();
    let ids = ids(full.model.config(), 2, 16, 6);
    for q in FORMATS {
        let copy = full.model.quantized(q).unwrap();
        let loaded = load_q(dir.path(), Some(q)).unwrap();
        assert!(copy.forward(&ids, &mut KvCache::new(), 0, BlockMask::block_causal(8)).unwrap().equal(&logits(&loaded, &ids)), "{q}");
        // Only the experts are new: the attention weights are the full model's own storage.
        let name = "model.layers.1.attention.query_key_value.weight";
        assert_eq!(copy.var_store().variables()[name].data_ptr(), full.model.var_store().variables()[name].data_ptr());
        let e = copy.quantized(q).unwrap_err().to_string();
        assert!(e.contains("already in"), "{e}");
    }
}

#[test]
fn random_models_of_a_preset_shape_load_by_name_and_quantize() {
    let a = load_q(Path::new("random:micro:3"), None).unwrap();
    assert_eq!(a.model.config(), &shapes::shape("micro").unwrap());
    assert_eq!(a.dir, Path::new("random:micro:3"));
    let ids = ids(a.model.config(), 1, 8, 1);
    // Seeded: the same name gives the same weights, another seed others.
    assert!(logits(&a, &ids).equal(&logits(&load_q(Path::new("random:micro:3"), None).unwrap(), &ids)));
    assert!(!logits(&a, &ids).equal(&logits(&load_q(Path::new("random:micro"), None).unwrap(), &ids)));
    let q = load_q(Path::new("random:micro:3"), Some(Quantization::Fp8)).unwrap();
    assert!(logits(&q, &ids).equal(&logits(&Loaded { model: a.model.quantized(Quantization::Fp8).unwrap(), ..load_q(Path::new("random:micro:3"), None).unwrap() }, &ids)));
    let e = load_q(Path::new("random:huge"), None).unwrap_err().to_string();
    assert!(e.contains("known shapes") && e.contains("mid"), "{e}");
    let e = load_q(Path::new("random:micro:x"), None).unwrap_err().to_string();
    assert!(e.contains("whole-number seed"), "{e}");
    // A shape far larger than memory is refused before anything is allocated.
    let e = load_q(Path::new("random:llada2-flash"), None).unwrap_err().to_string();
    assert!(e.contains("needs about") && e.contains("nothing was allocated"), "{e}");
}

/// fp8 experts along each matmul path (engine/src/fp8_matmul.rs): on a CPU the model dequantizes and says why;
/// `emulated` runs the fast path's arithmetic (fp8 activations) and stays close to the dequantize path, but
/// not identical; `scaled` is refused with the probe's reason and the model keeps its path; a model without
/// fp8 experts takes no path but `auto`.
#[test]
fn fp8_matmul_paths_on_the_cpu() {
    use dllm_engine::fp8_matmul::{ExpertMatmul, Fp8MatmulChoice};
    let dir = tiny_checkpoint(f32_opts());
    let mut l = load_q(dir.path(), Some(Quantization::Fp8)).unwrap();
    let p = l.model.fp8_matmul().unwrap().clone();
    assert_eq!(p.path, ExpertMatmul::Dequantize);
    assert!(p.why.contains("CUDA GPU") && p.why.contains("on cpu"), "{}", p.why);
    let ids = ids(l.model.config(), 4, 32, 2);
    let dequantized = logits(&l, &ids);

    l.model.set_fp8_matmul(Fp8MatmulChoice::Exactly(ExpertMatmul::Emulated)).unwrap();
    assert_eq!(l.model.fp8_matmul().unwrap().path, ExpertMatmul::Emulated);
    let f = Fidelity::of(&dequantized, &logits(&l, &ids));
    assert!(f.max_abs_dp > 0.0 && f.kl_mean < 2e-3 && f.top1_agreement >= 0.9, "{f:?}");

    let e = l.model.set_fp8_matmul(Fp8MatmulChoice::Exactly(ExpertMatmul::Scaled)).unwrap_err().to_string();
    assert!(e.contains("CUDA GPU") && e.contains("use dequantize, or emulated"), "{e}");
    assert_eq!(l.model.fp8_matmul().unwrap().path, ExpertMatmul::Emulated, "a refused choice changes nothing");

    l.model.set_fp8_matmul(Fp8MatmulChoice::Exactly(ExpertMatmul::Dequantize)).unwrap();
    assert!(logits(&l, &ids).equal(&dequantized), "back on the dequantize path, bit for bit");

    let mut int8 = load_q(dir.path(), Some(Quantization::Int8)).unwrap();
    let e = int8.model.set_fp8_matmul(Fp8MatmulChoice::Exactly(ExpertMatmul::Emulated)).unwrap_err().to_string();
    assert!(e.contains("not held in fp8"), "{e}");
    int8.model.set_fp8_matmul(Fp8MatmulChoice::Auto).unwrap();
    assert!(int8.model.fp8_matmul().is_none(), "no fp8 experts, no fp8 path");
}
