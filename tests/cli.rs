//! The `dllm` binary end to end: random checkpoints, `forward --json` against the NumPy reference, summaries,
//! and clear errors with a non-zero exit status.

use std::path::Path;
use std::process::{Command, Output};

fn dllm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dllm")).args(args).output().expect("run dllm")
}

fn ok(args: &[&str]) -> String {
    let out = dllm(args);
    assert!(out.status.success(), "dllm {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn fails(args: &[&str]) -> String {
    let out = dllm(args);
    assert!(!out.status.success(), "dllm {args:?} should fail");
    String::from_utf8(out.stderr).unwrap()
}

fn python() -> String {
    std::env::var("DLLM_PYTHON").unwrap_or_else(|_| format!("{}/.venv/bin/python", env!("CARGO_MANIFEST_DIR")))
}

#[test]
fn forward_json_matches_the_numpy_reference_top_k() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    ok(&["init-model", "--shape", "micro", "--seed", "3", "--std", "0.3", "--spread", "--out", d]);
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(dir.path().join(f).exists(), "{f}");
    }
    let ids = "5,17,99,3,42,8,0";
    let out: serde_json::Value = serde_json::from_str(&ok(&["forward", "--model", d, "--ids", ids, "--block-length", "4", "--top-k", "3", "--json"])).unwrap();
    let positions = out["positions"].as_array().unwrap();
    assert_eq!(positions.len(), 7);

    let ref_out = dir.path().join("ref.json");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/llada2_ref.py");
    let st = Command::new(python())
        .args([script.to_str().unwrap(), "--model", d, "--ids", ids, "--block-length", "4", "--out", ref_out.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success());
    let logits: Vec<Vec<f64>> = serde_json::from_value(serde_json::from_slice::<serde_json::Value>(&std::fs::read(ref_out).unwrap()).unwrap()["logits"].clone()).unwrap();
    for (pos, row) in positions.iter().enumerate() {
        assert_eq!(row["pos"], pos);
        let max = logits[pos].iter().cloned().fold(f64::MIN, f64::max);
        let z: f64 = logits[pos].iter().map(|l| (l - max).exp()).sum();
        let mut want: Vec<(usize, f64)> = logits[pos].iter().map(|l| (l - max).exp() / z).enumerate().collect();
        want.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap());
        let top = row["top"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        for (k, entry) in top.iter().enumerate() {
            assert_eq!(entry[0].as_u64().unwrap() as usize, want[k].0, "position {pos} rank {k}");
            assert!((entry[1].as_f64().unwrap() - want[k].1).abs() < 1e-5, "position {pos} rank {k}");
        }
    }
}

#[test]
fn block_routed_checkpoint_summary_shows_routing_and_edit_ids() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    ok(&["init-model", "--shape", "micro-2.2", "--seed", "1", "--out", d]);
    let s: serde_json::Value = serde_json::from_str(&ok(&["info", "--json", "--device", "cpu", "--model", d])).unwrap();
    assert_eq!(s["routing"], serde_json::json!({"kind": "block", "expert_capacity": 4, "block_size": 4}));
    assert_eq!((s["delete_id"].as_i64(), s["split_id"].as_i64()), (Some(126), Some(127)));
    let text = ok(&["info", "--device", "cpu", "--model", d]);
    assert!(text.contains("routing    block: a pool of 4 of 8 experts per 4 positions"), "{text}");
    assert!(text.contains("delete 126 split 127"), "{text}");
    // A 2.1 checkpoint reports group-limited routing and no edit ids.
    let s: serde_json::Value = serde_json::from_str(&ok(&["info", "--json", "--device", "cpu"])).unwrap();
    assert_eq!(s["routing"]["kind"], "group");
    assert!(s["delete_id"].is_null());
}

#[test]
fn default_model_summary_names_the_embedded_model() {
    let s: serde_json::Value = serde_json::from_str(&ok(&["info", "--json", "--device", "cpu"])).unwrap();
    assert_eq!(s["embedded"], true);
    assert_eq!(s["model"], "builtin:tiny");
    assert!(s["parameters"].as_i64().unwrap() > 1_000_000);
    assert_eq!(s["dtype"], "f32");
    // `dllm` alone reads REPL commands from stdin when it is not a terminal; `info` labels the model.
    let mut child = Command::new(env!("CARGO_BIN_EXE_dllm"))
        .args(["--device", "cpu"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run dllm");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"info\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("builtin:tiny"), "{text}");
}

#[test]
fn bad_input_is_a_clear_error_with_nonzero_exit() {
    assert!(fails(&["init-model", "--shape", "huge", "--out", "/tmp/x"]).contains("known shapes: micro, tiny"));
    // The name older scripts used still works.
    assert!(fails(&["init-model", "--preset", "huge", "--out", "/tmp/x"]).contains("known shapes: micro, tiny"));
    assert!(fails(&["info", "--device", "tpu"]).contains("expected cpu, cuda or cuda:N"));
    assert!(fails(&["info", "--dtype", "int4"]).contains("expected f32, bf16 or f16"));
    let e = fails(&["info", "--model", "/nonexistent/dir"]);
    assert!(e.contains("/nonexistent/dir") && e.matches("not a checkpoint folder").count() == 1, "said once: {e}");
    assert!(fails(&["forward", "--ids", "1,2,x"]).contains("invalid value"));
    assert!(fails(&["forward", "--ids", "1,2,128"]).contains("ids must be in 0..128"));
    assert!(fails(&["forward", "--ids", "1,2", "--attention", "sideways"]).contains("block-causal or hf-additive"));
}

#[test]
fn decode_writes_the_documented_trace_and_flags_override_the_preset() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    ok(&["init-model", "--shape", "micro", "--seed", "5", "--std", "0.3", "--spread", "--out", d]);
    let trace = dir.path().join("trace.json");
    let out = ok(&[
        "decode", "--model", d, "--prompt-ids", "10,11,12", "--gen-length", "10", "--block-length", "4",
        "--preset", "S", "--threshold", "0.6", "--trace", trace.to_str().unwrap(), "--json",
    ]);
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    let t: serde_json::Value = serde_json::from_slice(&std::fs::read(&trace).unwrap()).unwrap();
    assert_eq!(t["prompt_ids"], serde_json::json!([10, 11, 12]));
    assert_eq!(t["settings"]["threshold"], 0.6, "the explicit flag wins over the preset");
    assert_eq!(t["settings"]["editing"]["threshold"], 0.0, "the rest comes from S");
    assert_eq!(t["output_ids"], summary["output_ids"]);
    let steps = t["steps"].as_array().unwrap();
    assert_eq!(steps.len() as u64, summary["forwards"].as_u64().unwrap());
    let mut last = (-1i64, -1i64);
    for s in steps {
        let (b, k) = (s["block"].as_i64().unwrap(), s["step"].as_i64().unwrap());
        assert!(b > last.0 && k == 0 || b == last.0 && k == last.1 + 1, "steps count forwards within a block");
        last = (b, k);
        for (field, width) in [("gamma", 3), ("delta", 4)] {
            let pos: Vec<i64> = s[field].as_array().unwrap().iter().map(|e| {
                assert_eq!(e.as_array().unwrap().len(), width);
                e[0].as_i64().unwrap()
            }).collect();
            assert!(pos.windows(2).all(|w| w[0] < w[1]), "{field} sorted by position");
            assert!(pos.iter().all(|&p| p >= 3), "positions are absolute; the prompt is 0..3");
        }
    }
    // `--trace -`: the same trace on stdout, the summary on stderr.
    let out = dllm(&[
        "decode", "--model", d, "--prompt-ids", "10,11,12", "--gen-length", "10", "--block-length", "4",
        "--preset", "S", "--threshold", "0.6", "--trace", "-",
    ]);
    assert!(out.status.success());
    let on_stdout: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is the trace alone");
    assert_eq!(on_stdout, t);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary_err: serde_json::Value = serde_json::from_str(stderr.lines().last().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert_eq!(summary_err["output_ids"], summary["output_ids"]);
    assert!(!Path::new("-").exists() && !dir.path().join("-").exists(), "no file named `-`");
}

#[test]
fn decode_rejects_bad_settings_clearly() {
    assert!(fails(&["decode", "--prompt-ids", "5", "--threshold", "1.5"]).contains("threshold"));
    assert!(fails(&["decode", "--prompt-ids", "5", "--preset", "warp"]).contains("possible values: Q, S, "));
    assert!(fails(&["decode", "--prompt-ids", "5", "--gen-length", "0"]).contains("gen_length"));
    assert!(fails(&["decode", "--prompt-ids", "5", "--set", "speed=2"]).contains("known settings"));
    assert!(fails(&["decode", "--prompt-ids", "5", "--gen-length", "9000"]).contains("positions"));
    assert!(fails(&["decode", "--gen-length", "4"]).contains("--prompt"));
}

#[test]
fn eval_prints_one_json_report_with_accuracy_and_tpf_first() {
    let out = ok(&["eval", "--tasks", "copy,order", "--n", "4", "--json", "--device", "cpu"]);
    assert_eq!(out.trim().lines().count(), 1, "exactly one JSON object: {out}");
    // Key order is checked on the text (serde_json::Value sorts keys).
    let tpf_second = out.strip_prefix("{\"accuracy\":").and_then(|rest| rest.split_once(',')).is_some_and(|(_, rest)| rest.starts_with("\"tpf\":"));
    assert!(tpf_second, "accuracy and tpf first: {out}");
    assert!(out.find("\"tasks\":") > out.find("\"settings\":"), "tasks after the other fields: {out}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    let tasks = r["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2);
    for (t, name) in tasks.iter().zip(["copy", "order"]) {
        assert_eq!((t["task"].as_str(), t["n"].as_u64()), (Some(name), Some(4)));
        assert!(t["tpf"].as_f64().unwrap() > 0.0 && t["steps"].as_f64().unwrap() >= 1.0, "{t}");
    }
    assert_eq!(tasks[0]["correct"], 4, "the embedded model copies: {out}");
    assert_eq!(r["settings"]["preset"], "Q");
    assert_eq!(r["settings"]["eos_early_stop"], true);
    assert!(r["accuracy"].as_f64().unwrap() <= 1.0);
    assert_eq!((r["routing"]["mode"].as_str(), r["routing"]["pool"].is_null()), (Some("token"), true), "builtin:tiny routes per token");
}

#[test]
fn eval_of_the_llada22_model_reports_edits_and_routes_per_block_or_per_token() {
    let run = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["eval", "--model", "builtin:tiny-2.2", "--preset", "llada2.2", "--tasks", "dedup", "--n", "8", "--json", "--device", "cpu"];
        args.extend_from_slice(extra);
        serde_json::from_str(&ok(&args)).unwrap()
    };
    let block = run(&[]);
    assert_eq!((block["routing"]["mode"].as_str(), block["routing"]["pool"].as_i64()), (Some("block"), Some(4)));
    let used = block["routing"]["experts_per_block_max"].as_array().unwrap();
    assert!(used.iter().all(|m| m.as_i64().unwrap() <= 4), "a block never leaves its pool: {block}");
    assert!(block["deletions"].as_f64().is_some() && block["insertions"].as_f64().is_some());
    let token = run(&["--routing", "token"]);
    assert_eq!(token["routing"]["mode"], "token");
    assert!(fails(&["eval", "--tasks", "copy", "--n", "2", "--routing", "token"]).contains("already routes every token"));
    assert!(fails(&["eval", "--tasks", "copy", "--n", "2", "--routing", "expert"]).contains("expected block or token"));
}

#[test]
fn eval_rejects_unknown_tasks_and_settings() {
    assert!(fails(&["eval", "--tasks", "mul", "--n", "1"]).contains("known tasks"));
    assert!(fails(&["eval", "--n", "1", "--set", "speed=2"]).contains("known settings"));
    assert!(fails(&["eval", "--n", "0"]).contains("invalid n"));
}

#[test]
fn bench_likelihood_compares_the_vectorised_elbo_with_the_loop() {
    let out = ok(&["bench", "likelihood", "--shape", "micro", "--blocks", "2", "--levels", "2", "--iters", "1", "--json"]);
    let r: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    for key in ["vectorised_batched_ms", "vectorised_per_level_ms", "loop_ms", "speedup_batched"] {
        assert!(r[key].as_f64().unwrap() > 0.0, "{key}: {out}");
    }
    assert!(fails(&["bench", "likelihood", "--levels", "0"]).contains("must be positive"));
}

#[test]
fn bench_rl_times_the_phases_and_measures_memory_per_trainable_set() {
    let out = ok(&["bench", "rl", "--updates", "1", "--trainable", "lm-head,lora:2", "--memory", "micro", "--json"]);
    let r: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let timing = r["timing"].as_array().unwrap();
    assert_eq!(timing.len(), 2);
    for t in timing {
        let total = t["total_s"].as_f64().unwrap();
        let parts: f64 = ["rollout_s", "reward_s", "likelihood_s", "backward_s"].iter().map(|k| t[k].as_f64().unwrap()).sum();
        assert!(total > 0.0 && parts <= total * 1.001, "{t}");
    }
    let sets = r["memory"]["sets"].as_array().unwrap();
    assert_eq!(sets[1]["trainable"], "lora:2:4");
    assert!(sets[0]["update_peak_mb"].as_f64().unwrap() >= 0.0);
    assert!(fails(&["bench", "rl", "--trainable", "most"]).contains("unknown subset"));
}

#[test]
fn output_commands_end_quietly_when_the_reader_goes_away() {
    // `dllm forward ... | head -c 100`: hundreds of kilobytes into a pipe that closes after 100 bytes. The
    // process ends like any Unix filter, without a panic about the failed write.
    let ids: Vec<String> = (0..300).map(|i| (10 + i % 90).to_string()).collect();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("'{}' forward --device cpu --ids {} --top-k 100 --json | head -c 100", env!("CARGO_BIN_EXE_dllm"), ids.join(",")))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked") && !stderr.contains("failed printing"), "{stderr}");
    assert_eq!(out.stdout.len(), 100);
}

/// `dllm ARGS` started in the background with its output discarded (the kill -9 tests).
fn spawn_quiet(args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_dllm"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn save_killed_at_any_moment_leaves_the_old_or_the_new_session() {
    // kill -9 at spread-out moments of a process that decodes and then saves over an existing session file:
    // FILE always opens, as the old session or the new one (written beside it, then renamed over it).
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.json");
    let f = file.to_str().unwrap();
    let cmd = format!("set gen_length 48; chat reverse abcdef; run; fork b; rewind 2; save {f}");
    let spawn = || spawn_quiet(&["--device", "cpu", "-c", &cmd]);
    // The kills spread over the time a whole run takes here (the debug binary under load is slow).
    let started = std::time::Instant::now();
    assert!(spawn().wait().unwrap().success());
    let whole = started.elapsed();
    ok(&["--device", "cpu", "-c", &format!("chat copy abc; run; save {f}")]);
    let mut kept_new = 0;
    // From half the time a run takes to after its end; on a loaded machine a run can take several times as long
    // as the one measured, so the kills go on later (up to 4x) until one has come after the save.
    for i in 5..=40u32 {
        if i > 12 && kept_new > 0 {
            break;
        }
        let mut child = spawn();
        std::thread::sleep(whole * i / 10);
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let now = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("kill {i}: {f} missing: {e}"));
        let out = ok(&["--device", "cpu", "-c", &format!("open {f}; branches")]);
        assert!(out.contains("main"), "kill {i}: {out}");
        let session: serde_json::Value = serde_json::from_str(&now).unwrap();
        if session["branches"].get("b").is_some() {
            kept_new += 1;
            ok(&["--device", "cpu", "-c", &format!("chat copy abc; run; save {f}")]); // back to the old one
        }
    }
    assert!(kept_new >= 1, "every kill came before the save: the test did not test it");
    let left: Vec<String> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert!(left.iter().all(|n| n == "s.json" || n.starts_with(".s.json.tmp")), "only hidden temporaries of killed saves beside FILE: {left:?}");
}

#[test]
fn train_killed_at_any_moment_resumes_to_the_same_weights() {
    // kill -9 at spread-out moments of `dllm train`, resumed after each kill: OUT is absent or a complete
    // checkpoint, never a part of one, and the run ends with the weights of an uninterrupted one.
    let dir = tempfile::tempdir().unwrap();
    fn args(out: &std::path::Path) -> [&str; 12] {
        let out = out.to_str().unwrap();
        ["train", "--recipe", "smoke", "--steps", "12", "--checkpoint-every", "3", "--threads", "1", "--json", "--out", out]
    }
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let started = std::time::Instant::now();
    ok(&args(&a));
    let whole = started.elapsed();
    let mut kills_mid_run = 0;
    for i in 1..=6u32 {
        let mut child = spawn_quiet(&args(&b));
        std::thread::sleep(whole * i / 8);
        let _ = child.kill(); // SIGKILL
        kills_mid_run += usize::from(!child.wait().unwrap().success());
        // OUT appears whole at the first checkpoint: absent before it, a loadable checkpoint after it.
        if b.exists() {
            for f in ["config.json", "model.safetensors", "tokenizer.json"] {
                assert!(b.join(f).is_file(), "kill {i}: OUT without {f}");
            }
            ok(&["info", "--model", b.to_str().unwrap(), "--device", "cpu"]);
        }
    }
    assert!(kills_mid_run >= 3, "only {kills_mid_run} kills came before the run ended");
    let out = ok(&args(&b));
    // A run that starts over prints 12 step lines (the summary goes to stderr); one that resumes prints fewer.
    assert!(out.lines().count() < 12, "the last run started over instead of resuming: {out}");
    let weights = |d: &std::path::Path| std::fs::read(d.join("model.safetensors")).unwrap();
    assert!(weights(&a) == weights(&b), "a run killed and resumed ends with other weights than an uninterrupted one");
}

#[test]
fn rl_save_killed_at_any_moment_leaves_the_old_or_the_new_checkpoint() {
    // kill -9 at spread-out moments of `rl save DIR` over an existing checkpoint: DIR is always a complete,
    // loadable checkpoint (the old version or the new one, swapped in one atomic exchange), never missing.
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("policy");
    let t = target.to_str().unwrap();
    ok(&["--device", "cpu", "-c", &format!("rl save {t}")]);
    for i in 0..10u64 {
        let mut child = spawn_quiet(&["--device", "cpu", "-c", &format!("rl save {t}")]);
        std::thread::sleep(std::time::Duration::from_millis(100 + 70 * i));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        for f in ["config.json", "model.safetensors", "tokenizer.json"] {
            assert!(target.join(f).is_file(), "kill {i}: {f} missing");
        }
        ok(&["info", "--model", t, "--device", "cpu"]);
    }
    // A save that completes clears what the killed ones left beside DIR.
    ok(&["--device", "cpu", "-c", &format!("rl save {t}")]);
    let left: Vec<String> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(left, ["policy"], "temporaries left: {left:?}");
}

#[test]
fn train_data_errors_name_the_line_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.jsonl");
    std::fs::write(&data, "{\"prompt\": \"rot abc\", \"response\": \"bca\"}\n{\"prompt\": \"rot abc\"}\nnot json\n").unwrap();
    let out = dir.path().join("out");
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    let e = fails(&["train", "--data", d, "--out", o, "--steps", "2"]);
    assert!(e.contains("2 bad lines") && e.contains("line 2: expected") && e.contains("line 3: not JSON"), "{e}");
    assert!(!out.exists(), "nothing written for bad data");
    let e = fails(&["train", "--trainable", "lora:2", "--out", o]);
    assert!(e.contains("go with --data"), "{e}");
    let e = fails(&["train", "--data", d, "--out", o, "--trainable", "lora:x"]);
    assert!(e.contains("trainable"), "{e}");
    let e = fails(&["train", "--data", d, "--out", o, "--held-out", "1.5"]);
    assert!(e.contains("--held-out"), "{e}");
}

#[test]
fn output_only_subcommands_end_quietly_when_their_reader_goes_away() {
    // `dllm info | true`: the reader is gone before dllm's first write (it takes a tenth of a second to start),
    // which then meets a closed pipe; dllm must end quietly, like any Unix filter, not panic about it.
    let cmd = format!("'{}' info --device cpu | true", env!("CARGO_BIN_EXE_dllm"));
    for _ in 0..3 {
        let out = Command::new("sh").args(["-c", &cmd]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.is_empty(), "{stderr}");
    }
}

#[test]
fn training_all_of_a_model_that_leaves_no_room_is_refused_and_lora_fits() {
    // A random `mid` (107 M parameters, 428 MB in f32) under a 1 GB limit: training all of it needs three more
    // copies (gradients, two AdamW moments), refused with the estimate; LoRA adapters fit.
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("mid");
    ok(&["init-model", "--shape", "mid", "--out", m.to_str().unwrap()]);
    let run = |line: &str| {
        Command::new(env!("CARGO_BIN_EXE_dllm"))
            .args(["--device", "cpu", "--model", m.to_str().unwrap(), "-c", line])
            .env("DLLM_MEMORY_LIMIT", "1GB")
            .output()
            .unwrap()
    };
    let out = run("rl set trainable all; rl snapshot");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("training 106948096 parameters") && err.contains("needs about 1.3 GB"), "{err}");
    let out = run("rl set trainable lora:2; rl snapshot");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn quantize_writes_a_checkpoint_that_loads_as_it_is_and_info_projects_the_released_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q8");
    let o = out.to_str().unwrap();
    let msg = ok(&["quantize", "--model", "builtin:tiny-2.2", "--to", "int8", "--out", o, "--shard-mib", "0"]);
    assert!(msg.contains("with int8 routed experts"), "{msg}");
    let info: serde_json::Value = serde_json::from_str(&ok(&["info", "--model", o, "--device", "cpu", "--json"])).unwrap();
    assert_eq!(info["quantization"], "int8");
    assert!(info["weight_bytes_by_part"]["routed experts"].as_u64().unwrap() < 1_300_000, "{info}");
    // Same answers as quantizing at load time (the quantized file holds the same values).
    let ids = "10,11,12,13,1,1,1,1";
    let a = ok(&["forward", "--model", o, "--ids", ids, "--block-length", "8", "--json"]);
    let b = ok(&["forward", "--model", "builtin:tiny-2.2", "--quantize", "int8", "--ids", ids, "--block-length", "8", "--json"]);
    let top = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap()["positions"].clone();
    // The saved file keeps non-expert weights in bf16, so the probabilities differ slightly; the ranking not.
    let ids_of = |v: &serde_json::Value| v.as_array().unwrap().iter().map(|p| p["top"][0][0].clone()).collect::<Vec<_>>();
    assert_eq!(ids_of(&top(&a)), ids_of(&top(&b)));
    // Clear errors: an existing folder, another format than stored, an unknown format, --compare alone.
    assert!(fails(&["quantize", "--model", "builtin:tiny", "--to", "int8", "--out", o]).contains("exists and is not empty"));
    assert!(fails(&["info", "--model", o, "--quantize", "fp8"]).contains("stores its routed experts in int8"));
    assert!(fails(&["quantize", "--model", "builtin:tiny", "--to", "int4", "--out", dir.path().join("x").to_str().unwrap()]).contains("expected int8 or fp8"));
    assert!(fails(&["forward", "--ids", ids, "--compare"]).contains("add --quantize int8"));
    // --compare: the quantized model against the full one on the same ids.
    let c: serde_json::Value = serde_json::from_str(&ok(&["forward", "--ids", ids, "--block-length", "8", "--quantize", "fp8", "--compare", "--json"])).unwrap();
    let f = &c["fidelity"];
    assert_eq!(f["positions"], 8);
    assert!(f["kl_mean"].as_f64().unwrap() > 0.0 && f["kl_mean"].as_f64().unwrap() < 0.01, "{f}");
    // A random model of a preset's shape, by name.
    let r: serde_json::Value = serde_json::from_str(&ok(&["info", "--model", "random:micro:2", "--device", "cpu", "--quantize", "fp8", "--json"])).unwrap();
    assert_eq!((r["model"].as_str(), r["quantization"].as_str(), r["layers"].as_i64()), (Some("random:micro:2"), Some("fp8"), Some(3)));
    // The benchmark on a small shape: memory, fidelity and time of each format against the full model.
    let b: serde_json::Value = serde_json::from_str(&ok(&["bench", "quantize", "--shape", "micro", "--dtype", "f32", "--rows", "1", "--length", "16", "--iters", "1", "--json"])).unwrap();
    let results = b["results"].as_array().unwrap();
    // fp8 twice on a CPU: dequantized, and the GPU fast path's arithmetic emulated (its probe says why it is not taken).
    let rows: Vec<(&str, &str)> = results.iter().map(|r| (r["experts"].as_str().unwrap(), r["fp8_matmul"].as_str().unwrap_or("-"))).collect();
    assert_eq!(rows, [("f32", "-"), ("int8", "-"), ("fp8", "dequantize"), ("fp8", "emulated")]);
    for r in &results[1..] {
        assert!(r["experts_over_full"].as_f64().unwrap() < 0.4, "one byte against four: {r}");
        assert_eq!(r["fidelity"]["positions"], 16);
        assert!(r["load"]["quantize"] == r["experts"], "the child process loaded it quantized: {r}");
    }
    let emulated = &results[3]["against_dequantize"];
    assert!(emulated["max_abs_dp"].as_f64().unwrap() > 0.0 && emulated["kl_mean"].as_f64().unwrap() < 0.01, "{emulated}");
    assert_eq!(b["fp8_fast_path"]["path"], "dequantize");
    assert!(b["fp8_fast_path"]["why"].as_str().unwrap().contains("CUDA GPU"), "{b}");
    // --fp8-matmul: shown by info and forward, refused with the probe's reason where the device has no fast path.
    let e: serde_json::Value = serde_json::from_str(&ok(&["forward", "--ids", ids, "--block-length", "8", "--quantize", "fp8", "--fp8-matmul", "emulated", "--compare", "--json"])).unwrap();
    assert_eq!(e["fp8_matmul"]["path"], "emulated");
    assert!(e["fidelity"] != c["fidelity"], "the emulated fast path moves the distributions: {e}");
    assert!(fails(&["info", "--device", "cpu", "--quantize", "fp8", "--fp8-matmul", "scaled"]).contains("needs a CUDA GPU of compute capability 9.x"));
    assert!(fails(&["info", "--device", "cpu", "--fp8-matmul", "emulated"]).contains("not held in fp8"));
    assert!(fails(&["info", "--device", "cpu", "--quantize", "fp8", "--fp8-matmul", "turbo"]).contains("expected auto, dequantize, scaled or emulated"));
    // The projection: bf16 mini does not fit a 24 GB card, int8 mini does; fp8 flash fits one H200.
    let info: serde_json::Value = serde_json::from_str(&ok(&["info", "--device", "cpu", "--quantize", "none", "--json"])).unwrap();
    let rows = info["projection"].as_array().unwrap();
    let row = |shape: &str, experts: &str| rows.iter().find(|r| r["shape"] == shape && r["experts"] == experts).unwrap().clone();
    let card24 = "24 GB (RTX 3090/4090)";
    assert_eq!(row("llada2.2-mini", "bf16")["fits"][card24], false);
    assert_eq!(row("llada2.2-mini", "int8")["fits"][card24], true);
    assert_eq!(row("llada2.2-flash", "bf16")["fits"]["141 GB (H200)"], false);
    assert_eq!(row("llada2.2-flash", "fp8")["fits"]["141 GB (H200)"], true);
    let mini = row("llada2-mini", "bf16")["weight_gib"].as_f64().unwrap();
    assert!((29.0..32.0).contains(&mini), "llada2-mini in bf16: {mini} GiB");
}
