//! Session tests of the form "script in, JSON out": every command of the table, its errors, and the rule
//! that a failed command changes nothing.

use dllm_repl::{CommandError, ModelSource, Session};
use serde_json::Value as Json;

fn session() -> Session {
    let mut s = Session::new(ModelSource { dir: None, device: "cpu".into(), dtype: None, quantize: None, fp8_matmul: None });
    s.execute("set gen_length 16").unwrap();
    s.execute("set block_length 4").unwrap();
    s
}

/// Runs `line`, returns the values as JSON.
fn ok(s: &mut Session, line: &str) -> Vec<Json> {
    let v = s.execute(line).unwrap_or_else(|e| panic!("`{line}` failed: {e}"));
    v.iter().map(|v| serde_json::to_value(v).unwrap()).collect()
}

fn err(s: &mut Session, line: &str) -> String {
    match s.execute(line) {
        Ok(v) => panic!("`{line}` should fail, gave {v:?}"),
        Err(e) => e.to_string(),
    }
}

fn text(v: &[Json]) -> String {
    serde_json::to_string(v).unwrap()
}

fn state(s: &mut Session) -> String {
    text(&ok(s, "settings")) + &s.execute("trace").map(|v| format!("{v:?}")).unwrap_or_default() + &s.branch_names().join(",")
}

#[test]
fn every_command_in_the_table_is_exercised_here() {
    let src = include_str!("session.rs");
    for c in Session::commands() {
        assert!(src.contains(&format!("\"{}", c.name)), "command `{}` has no session test", c.name);
    }
}

#[test]
fn prompt_step_and_inspect() {
    let mut s = session();
    let v = ok(&mut s, "prompt-ids 10,11,12");
    assert_eq!(v[0]["type"], "message");
    assert_eq!(v[1]["type"], "canvas");
    assert_eq!(v[1]["cells"].as_array().unwrap().len(), 3 + 16);
    assert_eq!(v[1]["cells"][0]["kind"], "prompt");
    assert_eq!(v[1]["cells"][5]["kind"], "mask");
    let v = ok(&mut s, "step");
    assert_eq!(v[0]["type"], "table");
    assert_eq!(v[0]["rows"].as_array().unwrap().len(), 1);
    // Top-k at a position of the last forward's window (block 0), and a clear error outside it.
    let k = ok(&mut s, "topk 3 4");
    assert_eq!(k[0]["rows"].as_array().unwrap().len(), 4);
    let e = err(&mut s, "topk 17");
    assert!(e.contains("covered positions 0 to 3 only") && e.contains("`step` runs a forward"), "{e}");
    assert!(err(&mut s, "topk x").contains("usage: topk POS [K]"));
    let v = ok(&mut s, "step 3");
    assert_eq!(v[0]["rows"].as_array().unwrap().len(), 3);
    assert!(text(&v).contains("unmasked") || text(&v).contains("edited"), "the canvas marks the last step");
    let g = ok(&mut s, "gamma");
    assert!(g[0]["title"].as_str().unwrap().starts_with("Gamma at step 3"));
    assert!(!g[0]["rows"][0][2].as_str().unwrap().is_empty(), "token texts are filled in");
    ok(&mut s, "delta");
    let t = ok(&mut s, "trace");
    assert_eq!(t[0]["rows"].as_array().unwrap().len(), 4);
    assert!(ok(&mut s, "block")[0]["text"].as_str().unwrap().starts_with("block "));
    let st = ok(&mut s, "stats");
    assert_eq!(st[0]["data"]["forwards"], 4);
    let c = ok(&mut s, "chart");
    assert_eq!(c[0]["series"].as_array().unwrap().len(), 3);
    assert_eq!(c[1]["x_label"], "position");
    assert_eq!(c[1]["series"].as_array().unwrap().len(), 4, "one series per step so far");
    ok(&mut s, "canvas");
}

#[test]
fn prompts_raw_and_chat() {
    let mut s = session();
    let raw = ok(&mut s, "prompt hello");
    assert!(raw[0]["text"].as_str().unwrap().starts_with("prompt: 5 tokens"));
    let quoted = ok(&mut s, "prompt \"a; b\"");
    assert!(quoted[0]["text"].as_str().unwrap().starts_with("prompt: 4 tokens"), "the quotes are not part of the text");
    let chat = ok(&mut s, "chat hello");
    // <role>HUMAN</role> hello <|role_end|> <role>ASSISTANT</role>: 1 + 5 + 1 + 1 tokens
    assert!(chat[0]["text"].as_str().unwrap().starts_with("prompt: 8 tokens"), "{chat:?}");
    assert!(err(&mut s, "prompt").contains("usage: prompt TEXT"));
    assert!(err(&mut s, "prompt-ids 1,x").contains("comma-separated"));
    assert!(err(&mut s, "prompt-ids 1,99999").contains("ids must be in"));
}

#[test]
fn settings_presets_and_failed_commands_change_nothing() {
    let mut s = session();
    ok(&mut s, "prompt-ids 10,11");
    let before = state(&mut s);
    for (line, says) in [
        ("set threshold 2", "threshold"),
        ("set nosuch 1", "known settings"),
        ("set threshold", "usage: set NAME VALUE"),
        ("preset turbo", "unknown preset \"turbo\"; presets: Q, S"),
        ("rewind 9", "no such step"),
        ("switch nowhere", "no branch"),
        ("remask 1", "generated positions"),
        ("poke 0 A", "generated positions"),
        ("delete 7", "no breakpoint 7"),
        ("break sideways", "unknown event"),
        ("preset llada2.2", "no DELETE / SPLIT tokens"),
        ("set edit_ops levenshtein", "no DELETE / SPLIT tokens"),
    ] {
        assert!(err(&mut s, line).contains(says), "{line}");
        assert_eq!(state(&mut s), before, "`{line}` changed the session");
    }
    ok(&mut s, "preset Q");
    let st = ok(&mut s, "settings");
    assert!(text(&st).contains("\"threshold\",\"0.7\""), "{st:?}");
    ok(&mut s, "set edit_threshold off");
    assert!(text(&ok(&mut s, "settings")).contains("\"edit_threshold\",\"off\""));
    let p = ok(&mut s, "preset");
    assert!(text(&p).contains("llada2.0"));
    let m = ok(&mut s, "set block_length 8");
    assert!(m[0]["text"].as_str().unwrap().contains("from the next prompt"));
}

#[test]
fn the_lowconf_preset_unmasks_one_token_per_forward_and_never_edits() {
    let mut s = session();
    ok(&mut s, "set gen_length 16");
    ok(&mut s, "set block_length 8");
    ok(&mut s, "preset one-per-step");
    ok(&mut s, "chat sort 3814");
    ok(&mut s, "run");
    let st = &ok(&mut s, "stats")[0]["data"];
    assert_eq!(st["unmasked"], st["forwards"], "{st}");
    assert_eq!(st["edits"], 0, "{st}");
    let trace = ok(&mut s, "trace");
    assert!(trace[0]["reports"].as_array().unwrap().iter().all(|r| r["gamma"].as_array().unwrap().len() == 1), "one write a step");
}

#[test]
fn a_long_canvas_is_folded_until_canvas_all() {
    let mut s = session();
    ok(&mut s, "set gen_length 64");
    ok(&mut s, "set block_length 4");
    ok(&mut s, "prompt-ids 10,11,12");
    let v = ok(&mut s, "step 2");
    let canvas = v.iter().find(|x| x["type"] == "canvas").unwrap();
    assert_eq!(canvas["fold"], true);
    assert_eq!(ok(&mut s, "canvas")[0]["fold"], true);
    assert_eq!(ok(&mut s, "canvas all")[0]["fold"], false);
    assert!(err(&mut s, "canvas some").contains("one of all"));
}

#[test]
fn unknown_commands_suggest_the_nearest() {
    let mut s = session();
    match s.execute("stpe 2") {
        Err(CommandError::Unknown { suggestions, .. }) => assert!(suggestions.contains(&"step".to_string())),
        other => panic!("{other:?}"),
    }
    assert!(err(&mut s, "frobnicate").contains("`help` lists the commands"));
    assert!(s.execute("  # a comment").unwrap().is_empty());
    assert!(s.execute("").unwrap().is_empty());
    let h = ok(&mut s, "help");
    assert_eq!(h[0]["rows"].as_array().unwrap().len(), Session::commands().len());
    assert!(ok(&mut s, "help step")[0]["text"].as_str().unwrap().contains("usage: step [N]"));
    assert!(err(&mut s, "help stpe").contains("did you mean `step`"));
    assert!(err(&mut s, "prompt \"unclosed").contains("unclosed double quote") || err(&mut s, "watch \"1").contains("unclosed"));
}

#[test]
fn run_continue_breakpoints_and_watches() {
    let mut s = session();
    ok(&mut s, "prompt-ids 10,11,12");
    assert!(err(&mut s, "continue").contains("no breakpoints"));
    ok(&mut s, "break step 2");
    ok(&mut s, "break text zzzzzz");
    let b = ok(&mut s, "breaks");
    assert_eq!(b[0]["rows"].as_array().unwrap().len(), 2);
    ok(&mut s, "watch 4 5");
    let v = ok(&mut s, "continue");
    assert_eq!(v[0]["text"], "3 steps");
    assert!(text(&v).contains("stopped at step 2: breakpoint 1 (step 2)"));
    assert!(text(&v).contains("Watches"));
    ok(&mut s, "delete 1");
    ok(&mut s, "watch off");
    let v = ok(&mut s, "run");
    assert!(text(&v).contains("the decode has finished"));
    assert!(text(&v).contains("output:"));
    ok(&mut s, "delete all");
    assert_eq!(ok(&mut s, "breaks")[0]["rows"].as_array().unwrap().len(), 0);
    for e in ["edit", "fallback", "block-end", "eos", "token 5", "oscillation 3", "low-confidence 0.2", "revised"] {
        ok(&mut s, &format!("break {e}"));
    }
    assert!(err(&mut s, "break token x").contains("must be a whole number"));
    // Out of range or not whole: refused with the range, never truncated.
    for (bad, says) in [("token 3.7", "from 0 to"), ("token -5", "from 0 to"), ("step 9e99", "from 0 to"), ("oscillation 0", "from 1 to"),
        ("low-confidence nan", "(0, 1]"), ("low-confidence 1.5", "(0, 1]"), ("low-confidence -0", "(0, 1]")] {
        let e = err(&mut s, &format!("break {bad}"));
        assert!(e.contains(says), "break {bad}: {e}");
    }
    assert_eq!(ok(&mut s, "breaks")[0]["rows"].as_array().unwrap().len(), 8, "the refused ones were not added");
}

#[test]
fn rewind_fork_switch_diff_and_hand_edits() {
    let mut s = session();
    ok(&mut s, "prompt-ids 10,11,12");
    ok(&mut s, "step 4");
    ok(&mut s, "rewind 2");
    assert_eq!(ok(&mut s, "stats")[0]["data"]["forwards"], 2);
    ok(&mut s, "fork other");
    assert!(err(&mut s, "fork other").contains("exists"));
    ok(&mut s, "set threshold 0.0");
    ok(&mut s, "run");
    ok(&mut s, "switch main");
    assert_eq!(ok(&mut s, "stats")[0]["data"]["forwards"], 2, "the fork ran, main did not");
    ok(&mut s, "run");
    let b = ok(&mut s, "branches");
    assert_eq!(b[0]["rows"].as_array().unwrap().len(), 2);
    // What each branch holds (its KV cache and last distributions), and the total `drop` would free.
    for row in b[0]["rows"].as_array().unwrap() {
        let held = row[5].as_str().unwrap();
        assert!(held.ends_with(" kB") && held != "0 kB", "{row:?}");
    }
    let title = b[0]["title"].as_str().unwrap().to_string();
    assert!(title.starts_with("Branches (holding ") && title.contains("of caches"), "{title}");
    let d = ok(&mut s, "diff main other");
    assert!(text(&d).contains("first diverging step") || text(&d).contains("identical"));
    assert!(err(&mut s, "diff main").contains("usage: diff A B"));
    // Dropping branches: never the current one, nothing at all when a name is wrong.
    assert!(err(&mut s, "drop main").contains("current branch"));
    assert!(err(&mut s, "drop other nowhere").contains("no branch `nowhere`"));
    assert_eq!(ok(&mut s, "branches")[0]["rows"].as_array().unwrap().len(), 2, "nothing was dropped");
    assert!(text(&ok(&mut s, "drop other")).contains("branches left: main"));
    let after = ok(&mut s, "branches")[0]["title"].as_str().unwrap().to_string();
    assert!(after != title, "dropping a branch frees what it held: {title} -> {after}");
    assert!(err(&mut s, "switch other").contains("no branch"));
    assert!(err(&mut s, "drop").contains("missing NAME"));
    // Hand edits on a fresh decode.
    ok(&mut s, "prompt-ids 10,11,12");
    ok(&mut s, "step");
    ok(&mut s, "poke 3 A");
    ok(&mut s, "poke 3 #9");
    assert!(err(&mut s, "poke 3 AB").contains("not one"));
    assert!(err(&mut s, "poke 3 \u{e9}").contains("not in the vocabulary"), "the embedded vocabulary is ASCII");
    ok(&mut s, "remask 3");
    let c = ok(&mut s, "canvas");
    assert_eq!(c[0]["cells"][3]["kind"], "mask");
}

#[test]
fn save_open_export_source_and_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let p = |f: &str| dir.path().join(f).display().to_string();
    let mut s = session();
    ok(&mut s, "prompt-ids 10,11,12");
    ok(&mut s, "step 3");
    ok(&mut s, "fork b");
    ok(&mut s, "break eos");
    ok(&mut s, &format!("save {}", p("s.json")));
    ok(&mut s, &format!("export {}", p("t.json")));
    let t: Json = serde_json::from_str(&std::fs::read_to_string(p("t.json")).unwrap()).unwrap();
    assert_eq!(t["steps"].as_array().unwrap().len(), 3);
    let mut r = session();
    ok(&mut r, &format!("open {}", p("s.json")));
    assert_eq!(r.branch_names(), vec!["b", "main"]);
    assert_eq!(ok(&mut r, "stats")[0]["data"]["forwards"], 3);
    assert_eq!(ok(&mut r, "breaks")[0]["rows"].as_array().unwrap().len(), 1);
    // Both continue identically.
    let (a, b) = (text(&ok(&mut s, "run")), text(&ok(&mut r, "run")));
    assert_eq!(a.split("output:").nth(1), b.split("output:").nth(1));
    std::fs::write(p("bad.json"), "{\"dllm_session\": 99}").unwrap();
    assert!(err(&mut r, &format!("open {}", p("bad.json"))).contains("bad.json"));
    // Saving again over its own file replaces it; a file it did not write is refused and kept.
    ok(&mut s, &format!("save {}", p("s.json")));
    ok(&mut s, &format!("export {}", p("t.json")));
    std::fs::write(p("notes.txt"), "my notes").unwrap();
    for cmd in ["save", "export"] {
        let e = err(&mut s, &format!("{cmd} {}", p("notes.txt")));
        assert!(e.contains("not a file this command wrote"), "{cmd}: {e}");
        assert!(err(&mut s, &format!("{cmd} {}", dir.path().display())).contains("nothing was written"), "{cmd} onto a folder");
    }
    assert_eq!(std::fs::read_to_string(p("notes.txt")).unwrap(), "my notes");
    assert!(err(&mut r, &format!("open {}", p("missing.json"))).contains("missing.json"));
    // Scripts.
    std::fs::write(p("script.dllm"), "# demo\nprompt-ids 10,11\nstep 2\nstats\n").unwrap();
    let v = ok(&mut r, &format!("source {}", p("script.dllm")));
    assert!(text(&v).contains("\"forwards\":2"));
    std::fs::write(p("self.dllm"), format!("script {}\n", p("self.dllm"))).unwrap();
    assert!(err(&mut r, &format!("source {}", p("self.dllm"))).contains("cannot `source` other scripts"), "the alias cannot recurse");
    std::fs::write(p("bad.dllm"), "step\nnonsense\n").unwrap();
    let e = err(&mut r, &format!("source {}", p("bad.dllm")));
    assert!(e.contains("bad.dllm:2: `nonsense`"), "a script's failing line is quoted: {e}");
    // A file that is not a script: its first line is not repeated in the error (it may be a secret).
    std::fs::write(p("key.txt"), "hunter2 is my password
").unwrap();
    let e = err(&mut r, &format!("source {}", p("key.txt")));
    assert!(e.contains("key.txt:1: not a dllm command") && !e.contains("hunter2"), "{e}");
    // Sweep.
    let v = ok(&mut r, "sweep threshold 0.1 0.9");
    assert_eq!(v[0]["rows"].as_array().unwrap().len(), 2);
    assert!(err(&mut r, "sweep threshold").contains("missing VALUE"));
    assert!(err(&mut r, "sweep threshold 7").contains("threshold"));
}

#[test]
fn load_and_info() {
    let mut s = session();
    let i = ok(&mut s, "info");
    assert!(text(&i).contains("builtin:tiny"));
    assert!(err(&mut s, "load /nonexistent/model").contains("/nonexistent/model"));
    assert!(text(&ok(&mut s, "info")).contains("builtin:tiny"), "a failed load keeps the old model");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let cfg = dllm_engine::shapes::shape("micro").unwrap();
    let init = dllm_engine::RandomInit::new(1, 0.02, tch::Device::Cpu, dllm_engine::DType::F32);
    dllm_engine::shapes::write_random_checkpoint(&cfg, init, dir.path(), dllm_engine::checkpoint::SaveOptions {
        dtype: dllm_engine::DType::F32, fused_experts: false, shard_bytes: None }).unwrap();
    let v = ok(&mut s, &format!("load {d} device=cpu"));
    assert!(text(&v).contains(d));
    assert!(err(&mut s, "canvas").contains("no decode yet"), "branches are dropped with the old model");
    // The embedded LLaDA2.2 model: loading it switches to the Levenshtein decoder; an unknown name lists them.
    let v = ok(&mut s, "load builtin:tiny-2.2");
    assert!(text(&v).contains("builtin:tiny-2.2") && text(&v).contains("llada2.2"), "{}", text(&v));
    assert!(text(&ok(&mut s, "settings")).contains("levenshtein"));
    let e = err(&mut s, "load builtin:huge");
    assert!(e.contains("builtin:huge") && e.contains("builtin:tiny, builtin:tiny-2.2"), "{e}");
    assert!(text(&ok(&mut s, "info")).contains("builtin:tiny-2.2"), "a failed load keeps the old model");
}

#[test]
fn docs_commands_md_is_generated_from_the_table() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/commands.md");
    let want = dllm_repl::commands_markdown();
    if std::env::var("DLLM_UPDATE_DOCS").is_ok() {
        std::fs::write(path, &want).unwrap();
    }
    let have = std::fs::read_to_string(path).unwrap_or_default();
    assert!(have == want, "docs/commands.md is stale: run `DLLM_UPDATE_DOCS=1 cargo test -p dllm-repl --test session docs`");
}

#[test]
fn long_commands_report_progress_after_every_step() {
    let mut s = session();
    ok(&mut s, "prompt-ids 10,11,12");
    let mut calls = Vec::new();
    let v = s.execute_with_progress("step 3", &mut |values| calls.push(serde_json::to_value(values).unwrap())).unwrap();
    assert_eq!(serde_json::to_value(&v[0]).unwrap()["type"], "table");
    assert_eq!(calls.len(), 3);
    assert!(calls[2][0]["text"].as_str().unwrap().starts_with("step 2: block "));
    assert_eq!(calls[2][1]["type"], "canvas");
    let mut n = 0;
    s.execute_with_progress("settings", &mut |_| n += 1).unwrap();
    assert_eq!(n, 0, "commands that do not step report nothing");
}

#[test]
fn likelihood_of_the_canvas_and_of_a_pair_with_several_estimators() {
    let mut s = session();
    ok(&mut s, "set block_length 8");
    ok(&mut s, "chat sort 3814");
    let e = err(&mut s, "likelihood");
    assert!(e.contains("run") && e.contains("masks"), "{e}");
    ok(&mut s, "run");
    let v = ok(&mut s, "likelihood");
    assert_eq!(v[0]["rows"].as_array().unwrap().len(), 1);
    assert!(v[0]["rows"][0][1].as_f64().unwrap() < 0.0, "{v:?}");
    let v = ok(&mut s, "elbo stratified:4 mc:4:anti mean-field repeat=3 seed=5 -- sort 3814 => 1348");
    let rows = v[0]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[2][2].as_f64(), Some(0.0), "mean-field has no noise: no spread over seeds");
    assert!(v[0]["title"].as_str().unwrap().contains("3 seeds"));
    // The trained model finds the right answer far likelier than a wrong one.
    let good = ok(&mut s, "likelihood midpoint:8 -- sort 3814 => 1348")[0]["rows"][0][1].as_f64().unwrap();
    let bad = ok(&mut s, "likelihood midpoint:8 -- sort 3814 => 8431")[0]["rows"][0][1].as_f64().unwrap();
    assert!(good > bad + 3.0, "{good} vs {bad}");
    let before = state(&mut s);
    for (line, says) in [
        ("likelihood magic", "unknown estimator"),
        ("likelihood repeat=0", "repeat"),
        ("likelihood -- sort 3814", "=>"),
        ("likelihood stratified:0", "from 1 to 4096"),
        ("likelihood mc:1000000000", "from 1 to 4096"),
        ("likelihood repeat=1000000000 -- a => b", "from 1 to 4096"),
    ] {
        let e = err(&mut s, line);
        assert!(e.contains(says), "{line}: {e}");
    }
    assert_eq!(before, state(&mut s));
}

#[test]
fn rl_updates_snapshot_restore_redecode_and_save() {
    let mut s = session();
    ok(&mut s, "set block_length 8");
    ok(&mut s, "rl set tasks order");
    ok(&mut s, "rl set reward exact");
    ok(&mut s, "rl set batch 2");
    ok(&mut s, "rl set group 4");
    assert!(text(&ok(&mut s, "rl show")).contains("not started"));
    ok(&mut s, "chat order 3814");
    ok(&mut s, "run");
    ok(&mut s, "rl snapshot");
    let mut seen = Vec::new();
    let v = s.execute_with_progress("rl update 2", &mut |values| seen.push(serde_json::to_value(values).unwrap())).unwrap();
    assert_eq!(seen.len(), 2, "one progress line per update");
    assert!(seen[1][0]["text"].as_str().unwrap().starts_with("update 2: reward"));
    let table = serde_json::to_value(&v[0]).unwrap();
    assert_eq!(table["rows"].as_array().unwrap().len(), 2);
    let stats = ok(&mut s, "rl stats");
    assert_eq!(stats[1]["type"], "chart");
    ok(&mut s, "redecode after");
    assert!(s.branch_names().contains(&"after".to_string()));
    ok(&mut s, "diff main after");
    let e = err(&mut s, "redecode after");
    assert!(e.contains("exists"), "{e}");
    // Restore, and the fresh decode is the one from before the updates again.
    ok(&mut s, "switch main");
    ok(&mut s, "rl restore");
    ok(&mut s, "redecode again");
    let out = |s: &mut Session, b: &str| {
        ok(s, &format!("switch {b}"));
        text(&ok(s, "canvas"))
    };
    assert_eq!(out(&mut s, "main"), out(&mut s, "again"));
    let e = err(&mut s, "rl restore nope");
    assert!(e.contains("no snapshot `nope`"), "{e}");
    // A failing reward command: an error, and the policy (so the next fresh decode) is unchanged.
    ok(&mut s, "rl set reward command exit 4");
    let e = err(&mut s, "rl update");
    assert!(e.contains("exit") && e.contains("not applied"), "{e}");
    ok(&mut s, "rl set reward exact");
    let ev = ok(&mut s, "rl eval 10");
    assert!(ev[0]["text"].as_str().unwrap().contains("held-out reward"));
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("policy");
    ok(&mut s, &format!("rl save {}", saved.display()));
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(saved.join(f).exists(), "{f}");
    }
    ok(&mut s, &format!("load {}", saved.display()));
    assert!(text(&ok(&mut s, "rl show")).contains("not started"), "a new model ends the RL run");
    let before = state(&mut s);
    for (line, says) in [
        ("rl set group 1", "at least 2"),
        ("rl set nope 1", "known settings"),
        ("rl frobnicate", "unknown rl subcommand"),
        ("rl update x", "whole number from 1 to 1000000000"),
        ("rl merge", "no LoRA"),
        ("rl save /nonexistent/dir/x", "does not exist"),
        ("rl set reward_timeout 3", "command"),
        // Sizes are refused at the boundary, naming the limit, before anything is allocated.
        ("rl set epochs 1000000", "from 1 to 100"),
        ("rl set batch 100000", "at most 4096 rollouts"),
        ("rl set gen_length 9223372036854775807", "from 1 to 1048576"),
        ("rl set trainable lora:100000000", "from 1 to 4096"),
        ("rl set estimator stratified:1000000000", "from 1 to 4096"),
        ("rl set group 100000000", "at most 4096 rollouts"),
        ("rl eval 100000000", "from 1 to 1000"),
        ("set gen_length 9223372036854775807", "from 1 to 1048576"),
        ("set block_length 9223372036854775807", "from 1 to 1048576"),
    ] {
        let e = err(&mut s, line);
        assert!(e.contains(says), "{line}: {e}");
    }
    assert_eq!(before, state(&mut s));
    // A first update that fails takes back the run it started, and the adapters it replaced (fuzz seed 9).
    ok(&mut s, "rl set trainable lora:3");
    ok(&mut s, "rl snapshot");
    ok(&mut s, "rl reset");
    ok(&mut s, "rl set trainable lora:2");
    ok(&mut s, "rl prompt hello there");
    let shown = text(&ok(&mut s, "rl show"));
    assert!(shown.contains("rank 3") && shown.contains("not started"), "{shown}");
    let e = err(&mut s, "rl update 1");
    assert!(e.contains("has no reference answer"), "{e}");
    assert_eq!(shown, text(&ok(&mut s, "rl show")), "the failed update left a run or other adapters");
    ok(&mut s, "rl prompts clear");
    ok(&mut s, "rl set trainable all");

    // A save never destroys what it did not write: a folder that is not a checkpoint is refused and kept.
    let thesis = dir.path().join("thesis");
    std::fs::create_dir(&thesis).unwrap();
    std::fs::write(thesis.join("thesis.txt"), "years of work").unwrap();
    let e = err(&mut s, &format!("rl save {}", thesis.display()));
    assert!(e.contains("not a checkpoint folder"), "{e}");
    assert_eq!(std::fs::read_to_string(thesis.join("thesis.txt")).unwrap(), "years of work");
    // Over a checkpoint: replaced whole, and the temporaries a killed save left beside it are cleared.
    let stale = dir.path().join(".policy.tmp999999999");
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(saved.join("extra.txt"), "old").unwrap();
    ok(&mut s, &format!("rl save {}", saved.display()));
    assert!(saved.join("model.safetensors").exists() && !saved.join("extra.txt").exists(), "the old version is gone");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert!(left.iter().all(|f| !f.starts_with(".policy.")), "{left:?}");
}

#[test]
fn rl_with_lora_on_given_prompts_then_merge() {
    let mut s = session();
    ok(&mut s, "set block_length 8");
    ok(&mut s, "rl prompt order 3814 => 1348");
    ok(&mut s, "rl prompt order 5521 => 1255");
    assert_eq!(ok(&mut s, "rl prompts")[0]["rows"].as_array().unwrap().len(), 2);
    for cmd in ["rl set reward exact", "rl set batch 2", "rl set group 4", "rl set trainable lora:2", "rl set lr 0.001"] {
        ok(&mut s, cmd);
    }
    ok(&mut s, "rl update 1");
    assert!(text(&ok(&mut s, "rl show")).contains("1 updates"));
    ok(&mut s, "rl merge");
    assert!(text(&ok(&mut s, "rl show")).contains("\"all\""));
    ok(&mut s, "rl prompts clear");
    ok(&mut s, "rl reset");
    let e = err(&mut s, "rl prompt");
    assert!(e.contains("missing TEXT"), "{e}");
}

/// DELETE / SPLIT ids of the test's LLaDA2.2-style checkpoint: reserved ids of the compact 128-token
/// vocabulary (specials are 0..8, characters 8..104), so no text the tests type maps to them.
const DEL: i64 = 120;
const SPLIT: i64 = 121;

/// Writes a random LLaDA2.2-style checkpoint into `dir`: the `micro` shape with DELETE / SPLIT ids, and their
/// lm_head rows scaled so the model predicts them often (a random model would almost never pick 2 ids of 128).
fn write_llada22(dir: &std::path::Path, scale: f64) {
    let mut cfg = dllm_engine::shapes::shape("micro").unwrap();
    cfg.delete_token_id = Some(DEL);
    cfg.split_token_id = Some(SPLIT);
    let model = dllm_engine::shapes::random_model(&cfg, 3, tch::Device::Cpu, dllm_engine::DType::F32).unwrap();
    tch::no_grad(|| {
        let vars = model.var_store().variables();
        let w = &vars["lm_head.weight"];
        for id in [DEL, SPLIT] {
            let mut row = w.get(id);
            row *= scale;
        }
    });
    let opts = dllm_engine::checkpoint::SaveOptions { dtype: dllm_engine::DType::F32, fused_experts: false, shard_bytes: None };
    dllm_engine::shapes::write_checkpoint(&model, dir, opts).unwrap();
    let tok = dllm_engine::shapes::tokenizer_spec(cfg.vocab_size).to_json();
    std::fs::write(dir.join("tokenizer.json"), serde_json::to_string(&tok).unwrap()).unwrap();
}

/// The value of type `t` in a command's output.
fn find<'a>(v: &'a [Json], t: &str) -> &'a Json {
    v.iter().find(|x| x["type"] == t).unwrap_or_else(|| panic!("no {t} in {v:?}"))
}

/// A canvas's ids and marks, without the last forward's probabilities (a rewind forgets that forward).
fn marks(canvas: &Json) -> Json {
    let cells: Vec<Json> = canvas["cells"].as_array().unwrap().iter().map(|c| serde_json::json!([c["id"], c["kind"], c["moved_from"]])).collect();
    serde_json::json!([cells, canvas["removed"]])
}

#[test]
fn levenshtein_steps_in_every_front_end() {
    let dir = tempfile::tempdir().unwrap();
    write_llada22(dir.path(), 5.0);
    let mut s = session();
    let v = ok(&mut s, &format!("load {} device=cpu", dir.path().display()));
    assert!(text(&v).contains("120 / 121 (LLaDA2.2"), "info names the edit ids: {v:?}");
    assert!(text(&v).contains("preset llada2.2 applied"), "{v:?}");
    assert!(text(&ok(&mut s, "settings")).contains("\"edit_ops\",\"levenshtein\""));
    ok(&mut s, "prompt-ids 10,11,12");

    // `break delete` stops on a step that deleted; its table names DEL and lists the step's facts, its JSON
    // carries the complete report, and the canvas strikes the deleted slot out where it stood.
    assert_eq!(ok(&mut s, "break delete")[0]["text"], "breakpoint 1: delete");
    let v = ok(&mut s, "continue");
    assert!(text(&v).contains("breakpoint 1 (delete)"), "{v:?}");
    let table = find(&v, "table");
    assert_eq!(table["columns"][8], "Levenshtein");
    let report = &table["reports"][0];
    let t = report["step"].as_i64().unwrap();
    let deleted = report["lev"]["deleted"].as_array().unwrap();
    assert!(!deleted.is_empty());
    assert!(table["rows"][0][3].as_str().unwrap().contains(&format!("{}:DEL", deleted[0])) || table["rows"][0][4].as_str().unwrap().contains("→DEL"));
    assert!(table["rows"][0][8].as_str().unwrap().contains(&format!("del {}", deleted[0])), "{table}");
    let after = find(&v, "canvas").clone();
    let g = text(&ok(&mut s, "gamma")) + &text(&ok(&mut s, "delta"));
    assert!(g.contains("\"DELETE\""), "gamma / delta name the operation: {g}");
    assert!(after["removed"].as_array().unwrap().iter().any(|r| r["why"] == "deleted" && r["pos"] == deleted[0]));
    let shown = dllm_repl::render::render_all(&s.execute("canvas").unwrap());
    assert!(shown.plain.contains("~~") && shown.plain.contains(" deleted"), "{}", shown.plain);
    assert!(shown.html.contains("<del title=\"deleted by DELETE this step"), "{}", shown.html);
    assert!(shown.ansi.contains("\x1b[2;9;31m"));

    // Rewind to before it restores the state before the step exactly (the same as stepping there afresh),
    // and stepping again redoes it exactly.
    let before = find(&ok(&mut s, &format!("rewind {t}")), "canvas").clone();
    ok(&mut s, "rewind 0");
    let fresh = find(&ok(&mut s, &format!("step {t}")), "canvas").clone();
    assert_eq!(marks(&before), marks(&fresh));
    assert_ne!(marks(&before), marks(&after));
    assert_eq!(find(&ok(&mut s, "step"), "canvas"), &after, "the step is redone exactly");

    // Fork and diff across Levenshtein steps.
    ok(&mut s, "fork strict");
    ok(&mut s, "set threshold 0.95");
    ok(&mut s, "step 4");
    ok(&mut s, "switch main");
    ok(&mut s, "step 4");
    let d = ok(&mut s, "diff main strict");
    assert_eq!(d[0]["rows"].as_array().unwrap().len() as i64, t + 5);
    assert!(d[2]["text"].as_str().unwrap().starts_with("first diverging step") || d[2]["text"] == "identical step for step");

    // DELETE / SPLIT are operations, not tokens: poke refuses them; topk names them.
    let pos = report["span"][0].as_i64().unwrap().max(3);
    assert!(err(&mut s, &format!("poke {pos} #{DEL}")).contains("DELETE edit operation"));
    assert!(err(&mut s, &format!("poke {pos} #{SPLIT}")).contains("SPLIT edit operation"));
    let window = find(&ok(&mut s, "step"), "table")["reports"][0]["span"][0].clone();
    let k = ok(&mut s, &format!("topk {window} 128"));
    let names: Vec<&str> = k[0]["rows"].as_array().unwrap().iter().map(|r| r[1].as_str().unwrap()).collect();
    assert!(names.contains(&"DELETE") && names.contains(&"SPLIT"), "{names:?}");
    assert!(!names.iter().any(|n| n.contains("reserved_120") || n.contains("reserved_121")));

    // remask works on a Levenshtein block and the next step runs from it.
    let block = ok(&mut s, "block")[0]["text"].as_str().unwrap().to_string();
    let from: i64 = block.split("(positions ").nth(1).unwrap().split(" to ").next().unwrap().parse().unwrap();
    ok(&mut s, &format!("remask {}", from.max(3)));
    ok(&mut s, "step");

    // An insertion is marked on the canvas.
    ok(&mut s, "delete all");
    ok(&mut s, "break insert");
    let v = ok(&mut s, "continue");
    assert!(text(&v).contains("breakpoint 2 (insert)"), "{v:?}");
    let table = find(&v, "table");
    assert!(table["rows"][0][3].as_str().unwrap().contains(":SPLIT") || table["rows"][0][4].as_str().unwrap().contains("→SPLIT"), "{table}");
    let lev = &table["reports"][0]["lev"];
    let shown = dllm_repl::render::render_all(&s.execute("canvas").unwrap());
    if !lev["inserted"].as_array().unwrap().is_empty() {
        assert!(shown.plain.contains("+_"), "{}", shown.plain);
        assert!(shown.html.contains("mask opened by SPLIT this step"));
    }
    if !lev["truncated"].as_array().unwrap().is_empty() {
        assert!(shown.plain.contains("✂ ~~"), "{}", shown.plain);
    }
    for (e, says) in [("truncate", "truncate"), ("antiloop", "antiloop"), ("split", "insert")] {
        assert!(ok(&mut s, &format!("break {e}"))[0]["text"].as_str().unwrap().ends_with(says));
    }

    // Run to the end: stats count the edits, export writes the Levenshtein trace.
    ok(&mut s, "run");
    let st = &ok(&mut s, "stats")[0]["data"];
    assert!(st["deletions"].as_i64().unwrap() > 0 && st["insertions"].as_i64().unwrap() > 0, "{st}");
    assert!(st.get("truncated").is_some() && st.get("antiloop").is_some());
    let path = dir.path().join("trace.json");
    ok(&mut s, &format!("export {}", path.display()));
    let trace: Json = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let steps = trace["steps"].as_array().unwrap();
    for step in steps {
        assert_eq!(step["tokens"].as_array().unwrap().len(), 4, "{step}");
        for key in ["deleted", "split", "truncated", "final", "antiloop"] {
            assert!(step.get(key).is_some(), "{key} missing in {step}");
        }
    }
    assert!(steps.iter().any(|x| !x["deleted"].as_array().unwrap().is_empty()));
    assert!(steps.iter().any(|x| x["final"] == true));

    // Back to a model without edit ids: a threshold was chosen above, so only edit_ops goes back.
    let v = ok(&mut s, "load builtin device=cpu");
    assert!(text(&v).contains("edit_ops set to substitute"), "{v:?}");
    let st = text(&ok(&mut s, "settings"));
    assert!(st.contains("\"edit_ops\",\"substitute\"") && st.contains("\"threshold\",\"0.95\""), "{st}");
    ok(&mut s, "prompt-ids 10,11,12");
}

#[test]
fn a_chosen_preset_survives_loading_a_llada22_model() {
    let dir = tempfile::tempdir().unwrap();
    write_llada22(dir.path(), 5.0);
    let mut s = session();
    ok(&mut s, "preset Q");
    let v = ok(&mut s, &format!("load {} device=cpu", dir.path().display()));
    assert!(!text(&v).contains("llada2.2 applied"));
    assert!(text(&ok(&mut s, "settings")).contains("\"edit_ops\",\"substitute\""));
    ok(&mut s, "prompt-ids 10,11,12");
    let v = ok(&mut s, "step");
    assert!(find(&v, "table")["reports"][0].get("lev").is_none());
    assert_eq!(find(&v, "table")["columns"].as_array().unwrap().len(), 8, "no Levenshtein column for substitution steps");
    let st = &ok(&mut s, "stats")[0]["data"];
    assert!(st.get("deletions").is_none(), "Levenshtein counters stay out of a substitution decode: {st}");
    // A session started on the checkpoint (background load) says what it applied with its first command.
    let mut s = Session::new(ModelSource { dir: Some(dir.path().into()), device: "cpu".into(), dtype: None, quantize: None, fp8_matmul: None });
    ok(&mut s, "set gen_length 8");
    let v = ok(&mut s, "prompt-ids 10,11,12");
    assert!(v[0]["text"].as_str().unwrap().contains("preset llada2.2 applied"), "{v:?}");
    assert!(!text(&ok(&mut s, "step")).contains("llada2.2 applied"), "told once");
    // Nothing chosen: the automatic llada2.2 preset comes and goes with the model.
    let mut s = session();
    assert!(text(&ok(&mut s, &format!("load {} device=cpu", dir.path().display()))).contains("llada2.2 applied"));
    let v = ok(&mut s, "load builtin device=cpu");
    assert!(text(&v).contains("back to the default"), "{v:?}");
    let st = text(&ok(&mut s, "settings"));
    assert!(st.contains("\"edit_ops\",\"substitute\"") && st.contains("\"gen_length\",\"16\""), "layout kept: {st}");
}

#[test]
fn a_llada22_checkpoint_renders_chat_prompts_with_its_own_template() {
    let mut s = session();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let cfg = dllm_engine::shapes::shape("micro-2.2").unwrap();
    let init = dllm_engine::RandomInit::new(1, 0.02, tch::Device::Cpu, dllm_engine::DType::F32);
    dllm_engine::shapes::write_random_checkpoint(&cfg, init, dir.path(), dllm_engine::checkpoint::SaveOptions {
        dtype: dllm_engine::DType::F32, fused_experts: false, shard_bytes: None }).unwrap();
    // A template that renders "[hi]>" for `chat hi`: five characters, five tokens of the character vocabulary
    // (the Ling template would give <role>HUMAN</role> hi <|role_end|> <role>ASSISTANT</role> = 5 tokens too,
    // so the check reads the prompt's text).
    std::fs::write(dir.path().join("chat_template.jinja"), "{% for m in messages %}[{{ m['content'] | trim }}]{% endfor %}{% if add_generation_prompt %}>{% endif %}").unwrap();
    let v = ok(&mut s, &format!("load {d} device=cpu"));
    assert!(text(&v).contains("preset llada2.2 applied"), "{v:?}");
    ok(&mut s, "set block_length 4");
    ok(&mut s, "set gen_length 4");
    let chat = ok(&mut s, "chat \" hi \"");
    assert!(chat[0]["text"].as_str().unwrap().starts_with("prompt: 5 tokens"), "{chat:?}");
    let canvas = ok(&mut s, "canvas");
    let prompt: String = canvas[0]["cells"].as_array().unwrap().iter().filter(|c| c["kind"] == "prompt").map(|c| c["text"].as_str().unwrap()).collect();
    assert_eq!(prompt, "[hi]>", "the checkpoint's template (with its `trim`) rendered the prompt");
    // A broken template fails the load, naming the file and the line; the loaded model stays.
    std::fs::write(dir.path().join("chat_template.jinja"), "ok\n\n{% if x %}unclosed").unwrap();
    let e = err(&mut s, &format!("load {d} device=cpu"));
    assert!(e.contains("chat_template.jinja") && e.contains("line"), "{e}");
    assert!(text(&ok(&mut s, "info")).contains(d), "a failed load keeps the old model");
}

#[test]
fn the_edit_likelihood_shows_its_parts_on_a_llada22_model_and_is_refused_elsewhere() {
    let mut s = session();
    // The embedded model is LLaDA2.1: no DELETE / SPLIT ids to score.
    let e = err(&mut s, "likelihood edit:4 -- sort 3814 => 1348");
    assert!(e.contains("delete_token_id") && e.contains("LLaDA2.2"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dllm_engine::shapes::shape("micro-2.2").unwrap();
    let init = dllm_engine::RandomInit::new(1, 0.02, tch::Device::Cpu, dllm_engine::DType::F32);
    dllm_engine::shapes::write_random_checkpoint(&cfg, init, dir.path(), dllm_engine::checkpoint::SaveOptions {
        dtype: dllm_engine::DType::F32, fused_experts: false, shard_bytes: None }).unwrap();
    ok(&mut s, &format!("load {} device=cpu", dir.path().to_str().unwrap()));
    ok(&mut s, "set block_length 4");
    let v = ok(&mut s, "likelihood stratified:4 edit:4:0.3 -- abc => abd");
    assert_eq!(v.len(), 2, "the estimates, then the edit estimator's parts: {v:?}");
    let value = v[0]["rows"][1][1].as_f64().unwrap();
    let parts = v[1]["rows"].as_array().unwrap();
    let names: Vec<&str> = parts.iter().map(|r| r[0].as_str().unwrap()).collect();
    assert_eq!(names, ["m2t", "keep", "substitute", "delete", "insert", "total"]);
    let sum: f64 = parts[..5].iter().map(|r| r[1].as_f64().unwrap()).sum();
    assert!((sum - value).abs() < 1e-6 && (parts[5][1].as_f64().unwrap() - value).abs() < 1e-9, "{sum} vs {value}");
    assert_eq!(parts[5][2].as_f64(), Some(16.0), "4 samples of 4 response slots (a, b, d, EOS)");
    // RL rollouts on this model decode with the Levenshtein decoder unless told otherwise.
    assert!(text(&ok(&mut s, "rl show")).contains("\"auto\""));
    ok(&mut s, "rl set estimator edit:2:0.2");
    assert!(text(&ok(&mut s, "rl show")).contains("edit:2:0.2"));
}

#[test]
fn a_run_interrupted_at_any_moment_goes_on_to_the_same_decode() {
    // An interrupt from another thread (Ctrl-C, the kernel's interrupt_request) at spread-out moments of `run`:
    // the decoder stops between steps, and running on gives exactly the uninterrupted decode.
    let setup = |s: &mut Session| {
        ok(s, "set gen_length 48");
        ok(s, "set threshold 0.9");
        ok(s, "prompt-ids 10,11,12");
    };
    // What must not depend on where the run was cut: every step's Gamma and Delta, the counts, the canvas.
    let outcome = |s: &mut Session| {
        let st = ok(s, "stats");
        let d = &st[0]["data"];
        let counts = ["forwards", "unmasked", "edits", "fallbacks", "tokens"].map(|k| d[k].clone());
        let canvas = ok(s, "canvas");
        let ids: Vec<Json> = canvas[0]["cells"].as_array().unwrap().iter().map(|c| c["id"].clone()).collect();
        let trace = ok(s, "trace");
        let steps: Vec<Json> = trace[0]["reports"].as_array().unwrap().iter().map(|r| Json::Array(vec![r["gamma"].clone(), r["delta"].clone()])).collect();
        (counts, ids, steps)
    };
    let mut reference = session();
    setup(&mut reference);
    ok(&mut reference, "run");
    let want = outcome(&mut reference);
    assert!(want.2.len() > 5, "a decode long enough to cut");
    let mut stopped = 0;
    for delay_ms in [0u64, 2, 10, 40, 120] {
        let mut s = session();
        setup(&mut s);
        let flag = s.interrupt_flag();
        let setter = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(delay_ms));
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let mut out = text(&ok(&mut s, "run"));
        setter.join().unwrap();
        if out.contains("interrupted") {
            stopped += 1;
        }
        for _ in 0..5 {
            if out.contains("the decode has finished") {
                break;
            }
            // The flag belongs to the command it arrived during; whatever is left runs now.
            s.interrupt_flag().store(false, std::sync::atomic::Ordering::SeqCst);
            out = text(&ok(&mut s, "run"));
        }
        assert!(out.contains("the decode has finished"), "{out}");
        assert_eq!(outcome(&mut s), want, "interrupted after {delay_ms} ms");
    }
    assert!(stopped >= 1, "at least one run was stopped part-way");
}

#[test]
fn train_fine_tunes_the_resident_model_between_decodes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("rot.jsonl");
    let words = ["abcd", "bcde", "cdef", "defg", "efgh", "fghi", "ghij", "hijk", "ijkl", "jklm"];
    let lines: String = (0..60)
        .map(|i| {
            let w = format!("{}{}", words[i % 10], &words[i / 10][..1]);
            format!("{{\"prompt\": \"rot {w}\", \"response\": \"{}{}\"}}\n", &w[1..], &w[..1])
        })
        .collect();
    std::fs::write(&data, lines).unwrap();
    let d = data.to_str().unwrap();
    let mut s = session();
    ok(&mut s, "chat rot abcde");
    ok(&mut s, "run");
    let before = state(&mut s);
    // Bad input changes nothing.
    for (line, says) in [
        ("train 5", "no data"),
        ("train data /nonexistent.jsonl", "nonexistent"),
        ("train set lr 0", "(0, 1]"),
        ("train set lr NaN", "(0, 1]"),
        ("train set trainable lora:0", "rank"),
        ("train set colour blue", "unknown setting"),
        ("train 0", "from 1 to 1000000"),
        ("train 99999999999", "from 1 to 1000000"),
        ("train frobnicate", "unknown train subcommand"),
    ] {
        let e = err(&mut s, line);
        assert!(e.contains(says), "{line}: {e}");
    }
    assert_eq!(before, state(&mut s));
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"prompt\": \"rot ab\", \"response\": \"ba\"}\n{\"prompt\": 5}\n").unwrap();
    let e = err(&mut s, &format!("train data {}", bad.display()));
    assert!(e.contains("line 2"), "{e}");

    let v = ok(&mut s, &format!("train data {d}"));
    assert!(text(&v).contains("54 examples for training, 6 held out"), "{}", text(&v));
    ok(&mut s, "train set trainable lora:4");
    ok(&mut s, "train set lr 0.003");
    let v = ok(&mut s, "train 6");
    assert!(text(&v).contains("6 fine-tuning steps") && text(&v).contains("held-out loss"), "{}", text(&v));
    let shown = text(&ok(&mut s, "train show"));
    assert!(shown.contains("step 6") && shown.contains("lora:4"), "{shown}");
    let v = ok(&mut s, "train eval 6");
    assert_eq!(v[0]["rows"][0][3], 6, "{}", text(&v));
    // RL and fine-tuning do not share the trainable set.
    assert!(err(&mut s, "rl update 1").contains("train reset"));
    // An interrupt stops `train N` between steps; the model is back and keeps the steps it finished.
    let flag = s.interrupt_flag();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let v = ok(&mut s, "train 100000");
    stopper.join().unwrap();
    let said = text(&v);
    let done: i64 = said.split("interrupted after ").nth(1).and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{said}"));
    assert!(done < 100000, "{said}");
    assert!(text(&ok(&mut s, "train show")).contains(&format!("step {}", 6 + done)));
    // The branch decodes with the new weights after a weight change.
    ok(&mut s, "redecode after");
    ok(&mut s, "diff main after");
    let out = dir.path().join("tuned");
    ok(&mut s, &format!("train save {}", out.display()));
    assert!(out.join("config.json").is_file() && out.join("lora/adapter.safetensors").is_file());
    ok(&mut s, "train reset");
    assert!(text(&ok(&mut s, "train show")).contains("not started"));
    ok(&mut s, &format!("load {}", out.display()));
}

#[test]
fn quantized_experts_fidelity_redecode_and_load() {
    let mut s = session();
    ok(&mut s, "chat sort dcba");
    ok(&mut s, "step 2");
    let v = ok(&mut s, "fidelity fp8");
    let rows = v[0]["rows"].as_array().unwrap();
    assert!(v[0]["title"].as_str().unwrap().starts_with("fp8 experts against the resident model on `main`"), "{v:?}");
    let len = s.execute("canvas").map(|v| serde_json::to_value(&v[0]).unwrap()["cells"].as_array().unwrap().len()).unwrap();
    assert_eq!(rows[0][1], len as i64, "every canvas position is compared");
    let kl = rows[3][1].as_f64().unwrap();
    assert!(kl > 0.0 && kl < 0.01, "fp8 changes the distributions a little: KL {kl}");
    // Bad formats change nothing.
    let before = state(&mut s);
    assert!(err(&mut s, "fidelity int4").contains("one of int8, fp8"));
    assert!(err(&mut s, "fidelity").contains("usage: fidelity int8|fp8"));
    assert!(err(&mut s, "redecode q4 quantize=int4").contains("expected none, int8 or fp8"));
    assert_eq!(state(&mut s), before);
    // A decode on int8 experts, side by side with the full model's.
    assert!(text(&ok(&mut s, "redecode q8 quantize=int8")).contains("with int8 routed experts"));
    ok(&mut s, "switch main");
    ok(&mut s, "run");
    let d = text(&ok(&mut s, "diff main q8"));
    assert!(d.contains("q8"), "{d}");
    // Loading with quantized experts: info says so; a quantized model has no quantized copy to compare.
    let v = text(&ok(&mut s, "load builtin quantize=fp8"));
    assert!(v.contains("fp8 (quantized)") && v.contains("routed experts"), "{v}");
    ok(&mut s, "chat sort ba");
    assert!(err(&mut s, "fidelity int8").contains("already in fp8"));
    assert!(err(&mut s, "load builtin quantize=int4").contains("expected none, int8 or fp8"));
    assert!(text(&ok(&mut s, "info")).contains("fp8 (quantized)"), "a failed load keeps the resident model");
}

/// How fp8 experts multiply, in the session: `fidelity` and `redecode` take `fp8_matmul=` for their copy, `load`
/// for the resident model, and `info` shows the path and why; on a CPU the tensor cores' path is refused with
/// the reason and nothing changes.
#[test]
fn fp8_matmul_paths_in_the_session() {
    let mut s = session();
    ok(&mut s, "chat sort dcba");
    ok(&mut s, "step 2");
    let row = |v: &[serde_json::Value], name: &str| v[0]["rows"].as_array().unwrap().iter().find(|r| r[0] == name).map(|r| r[1].clone());
    let dequantized = ok(&mut s, "fidelity fp8");
    assert!(row(&dequantized, "fp8 matmul").unwrap().as_str().unwrap().starts_with("dequantize: the fp8 fast path needs a CUDA GPU"));
    let emulated = ok(&mut s, "fidelity fp8 fp8_matmul=emulated");
    assert!(row(&emulated, "fp8 matmul").unwrap().as_str().unwrap().starts_with("emulated"));
    let kl = |v: &[serde_json::Value]| row(v, "KL mean (nats)").unwrap().as_f64().unwrap();
    assert!(kl(&emulated) != kl(&dequantized) && kl(&emulated) < 0.01, "fp8 activations move the distributions a little more");
    let before = state(&mut s);
    assert!(err(&mut s, "fidelity fp8 fp8_matmul=scaled").contains("needs a CUDA GPU of compute capability 9.x"));
    assert!(err(&mut s, "fidelity int8 fp8_matmul=emulated").contains("goes with fp8, not int8"));
    assert!(err(&mut s, "redecode x fp8_matmul=emulated").contains("goes with quantize=fp8"));
    assert!(err(&mut s, "fidelity fp8 fp8_matmul=warp").contains("expected auto, dequantize, scaled or emulated"));
    assert_eq!(state(&mut s), before);
    assert!(text(&ok(&mut s, "redecode tc quantize=fp8 fp8_matmul=emulated")).contains("with fp8 routed experts (emulated path)"));
    let v = text(&ok(&mut s, "load builtin quantize=fp8 fp8_matmul=emulated"));
    assert!(v.contains("emulated: asked for"), "{v}");
    assert!(err(&mut s, "load builtin quantize=fp8 fp8_matmul=scaled").contains("needs a CUDA GPU"));
    assert!(text(&ok(&mut s, "info")).contains("emulated: asked for"), "a failed load keeps the resident model");
    assert!(err(&mut s, "load builtin fp8_matmul=emulated").contains("not held in fp8"));
}

#[test]
fn fidelity_shows_the_next_steps_writes_under_both_models() {
    // The notebook 10 example: on the embedded LLaDA2.2 model, the first digit of `order 9182736` has p 0.501
    // before the first step, just above the llada2.2 preset's threshold 0.5; int8 experts put it just below.
    let mut s = Session::new(ModelSource { dir: Some("builtin:tiny-2.2".into()), device: "cpu".into(), dtype: None, quantize: None, fp8_matmul: None });
    ok(&mut s, "set gen_length 24");
    ok(&mut s, "chat order 9182736");
    let row = |v: &[Json], name: &str| {
        let rows = v[0]["rows"].as_array().unwrap();
        rows.iter().find(|r| r[0] == name).unwrap_or_else(|| panic!("no row {name}: {v:?}"))[1].as_str().unwrap().to_string()
    };
    let v = ok(&mut s, "fidelity int8");
    assert_eq!(row(&v, "next step"), "Gamma 16:\"1\" only under the resident model");
    assert!(row(&v, "  Gamma (resident)").starts_with("16:\"1\" 0.501"), "{v:?}");
    assert!(row(&v, "  Gamma (int8)").starts_with("17:\"8\""), "{v:?}");
    let v = ok(&mut s, "fidelity fp8");
    assert_eq!(row(&v, "next step"), "the same writes under both (only their probabilities move)");
    // The decodes part at step 0 and end differently.
    ok(&mut s, "run");
    ok(&mut s, "redecode i8 quantize=int8");
    let d = text(&ok(&mut s, "diff main i8"));
    assert!(d.contains("first diverging step: 0") && d.contains("9876321") && d.contains("98763321"), "{d}");
    let v = ok(&mut s, "fidelity int8");
    assert_eq!(row(&v, "next step"), "none: the decode has finished");
}

#[test]
fn a_failed_first_lora_update_leaves_no_adapters_behind() {
    // Fuzz seed 101: on a model without adapters, a first `rl update` that fails (no reference answer) kept the
    // LoRA adapters its run had attached.
    let mut s = session();
    ok(&mut s, "rl set trainable lora:4");
    ok(&mut s, "rl prompt hello there");
    let shown = text(&ok(&mut s, "rl show"));
    assert!(!shown.contains("lora adapters"), "{shown}");
    let e = err(&mut s, "rl update 1");
    assert!(e.contains("hello there"), "{e}");
    assert_eq!(shown, text(&ok(&mut s, "rl show")), "the failed update left adapters attached");
}
