//! THE command table: name, aliases, typed arguments, one-line summary, long help with examples, handler; the
//! handlers live beside it, a file per idea. `help`, completion and docs/commands.md are generated from it, so the
//! terminal and the kernel cannot drift.

use std::path::PathBuf;

use dllm_engine::decode::Denoiser;

mod branches;
mod breaks;
mod canvas;
mod files;
mod settings;
mod stepping;

use branches::{branches, diff, drop, fork, rewind, switch};
use breaks::{breaks, brk, delete, watch};
pub use breaks::BREAK_EVENTS;
use canvas::{block, canvas, chart, delta, gamma, poke, remask, stats, topk, trace};
use files::{export, open, save, source};
use settings::{preset, set, settings, sweep};
pub(crate) use settings::{apply_preset, set_setting};
use stepping::{chat, cont, prompt, prompt_ids, run, step};
pub(crate) use stepping::steps;

use crate::grammar::{self, int, key, many, one, opt, rest, sub, Kind, Syntax};
use crate::parse::Args;
use crate::session::{CmdResult, CommandError, ModelSource, Session};
use crate::value::{Cell, Table, Value};

pub struct Command {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    /// Its arguments, typed: parsing, checks, usage, hints and completion come from here.
    pub syntax: Syntax,
    pub summary: &'static str,
    pub help: &'static str,
    /// Waits for the background model load before running.
    pub needs_model: bool,
    pub run: fn(&mut Session, &Args) -> CmdResult,
}

macro_rules! cmd {
    ($name:expr, [$($alias:expr),*], $syntax:expr, $summary:expr, $help:expr, $needs:expr, $run:expr) => {
        Command { name: $name, aliases: &[$($alias),*], syntax: $syntax, summary: $summary, help: $help, needs_model: $needs, run: $run }
    };
}

impl Command {
    /// `step [N]`: the name and the arguments, from the grammar.
    pub fn usage(&self) -> String {
        let args = grammar::usage(&self.syntax);
        if args.is_empty() {
            self.name.to_string()
        } else {
            format!("{} {args}", self.name)
        }
    }

    /// What `help NAME` (and the kernel's inspect and help pages) show: usage, aliases, summary, help.
    pub fn help_text(&self) -> String {
        let aliases = if self.aliases.is_empty() { String::new() } else { format!("\naliases: {}", self.aliases.join(", ")) };
        let help = self.long_help();
        let help = if help.is_empty() { String::new() } else { format!("\n\n{help}") };
        format!("usage: {}{aliases}\n{}{help}", self.usage(), self.summary)
    }

    /// The help text, with the registries its arguments read listed from them (estimators, rewards).
    pub fn long_help(&self) -> String {
        let kinds = grammar::kinds(&self.syntax);
        let mut s = self.help.to_string();
        let mut list = |title: &str, rows: Vec<(&str, &str)>| {
            s += &format!("\n\n{title}:");
            for (syntax, about) in rows {
                s += &format!("\n  {syntax:<20} {about}");
            }
        };
        if kinds.contains(&Kind::Estimator) || kinds.contains(&Kind::RlValue) {
            list("Estimators", dllm_engine::estimator_specs::ESTIMATORS.iter().map(|k| (k.syntax, k.about)).collect());
        }
        if kinds.contains(&Kind::RlValue) {
            list("Rewards (rl set reward)", crate::reward_command::reward_kinds().iter().map(|k| (k.syntax, k.about)).collect());
        }
        s
    }
}

/// No arguments.
const NONE: Syntax = Syntax::Params(&[]);
/// Positions, step numbers and ids: whole numbers that fit the engine's counters.
const POS: Kind = int(0, i32::MAX as i64);
const COUNT: Kind = int(1, 1_000_000_000);

pub static TABLE: &[Command] = &[
    cmd!("help", ["?"], Syntax::Params(&[opt("COMMAND", Kind::Command)]), "List the commands, or explain one",
        "Without an argument, lists every command with its summary. With one, shows its usage, aliases and\nexamples.\n\nExamples:\n  help\n  help step", false, help),
    cmd!("load", [], Syntax::Params(&[opt("PATH|builtin|builtin:NAME|random:SHAPE", Kind::Model), key("device", "D", Kind::Device), key("dtype", "T", Kind::Dtype), key("quantize", "int8|fp8", Kind::Quantization), key("fp8_matmul", "auto|dequantize|scaled|emulated", Kind::Fp8Matmul)]), "Load a model (replaces the resident one)",
        "Loads a checkpoint folder (config.json, model.safetensors[.index.json], tokenizer.json) or an\nembedded model (`builtin` = builtin:tiny, LLaDA2.1; builtin:tiny-2.2, LLaDA2.2), on `device`\n(auto, cpu, cuda, cuda:N) in `dtype` (f32, bf16, f16). `random:SHAPE[:SEED]` builds a seeded\nrandom model of a named shape in memory (micro, tiny, mid, llada2-mini, ... as `dllm init-model --shape`):\nits outputs are noise, its shapes, memory and speed are real. `quantize=int8|fp8` holds the routed\nexperts quantized (docs/quantization.md); `fp8_matmul=` chooses how fp8 experts multiply: `auto` (fp8\ntensor cores where the device has them, else dequantized), `dequantize`, `scaled` (the tensor cores, or\nan error) or `emulated` (the tensor cores' arithmetic in f32, on any device). Branches are dropped:\ntheir tokens belong to the old vocabulary. If loading fails, the old model stays.\n\nExamples:\n  load builtin\n  load builtin:tiny-2.2\n  load random:mid quantize=int8\n  load /models/llada2-mini device=cuda dtype=bf16 quantize=fp8\n  load random:mid quantize=fp8 fp8_matmul=emulated", false, load),
    cmd!("info", ["model"], NONE, "Show the model's summary: shape, parameters, device, memory",
        "Shows the resident model's shape, parameter count, device, dtype, weight memory and special ids.", true, info),
    cmd!("prompt", [], Syntax::Params(&[rest("TEXT", Kind::Text)]), "Set a raw prompt and start a fresh decode on this branch",
        "Tokenizes TEXT as is (no template) and starts a new decode with the current settings.\n\nExample:\n  prompt The capital of France is", true, prompt),
    cmd!("chat", [], Syntax::Params(&[rest("TEXT", Kind::Text)]), "Set a prompt through the chat template and start a fresh decode",
        "Wraps TEXT as a user turn plus the generation prompt, in the checkpoint's chat template (chat_template.jinja\nor tokenizer_config.json), else the built-in Ling one (a HUMAN turn and the ASSISTANT tag).\n\nExample:\n  chat Sort the digits 4 1 3", true, chat),
    cmd!("prompt-ids", [], Syntax::Params(&[rest("ID,ID,...", Kind::Ids)]), "Set the prompt as token ids and start a fresh decode",
        "Example:\n  prompt-ids 12,40,7", true, prompt_ids),
    cmd!("settings", ["show"], NONE, "Show every decoding setting",
        "Lists each setting with its value and meaning. `set` changes one.", false, settings),
    cmd!("set", [], Syntax::Params(&[one("NAME", Kind::Setting), one("VALUE", Kind::SettingValue)]), "Change a decoding setting (applies from the next step)",
        "Changes a setting for this branch (from its next step) and for later decodes. `settings` lists\nthem. `off` disables optional ones.\n\nExamples:\n  set threshold 0.8\n  set edit_threshold off\n  set temperature 0.7", false, set),
    cmd!("preset", [], Syntax::Params(&[opt("NAME", Kind::Preset)]), "Apply a named decoding preset (alone: list them with their settings)",
        "Applies a preset's thresholds and rules to this branch (from its next step) and to later decodes.\nWithout a name, lists the presets with their sources. Loading a model with DELETE / SPLIT tokens\n(LLaDA2.2) applies llada2.2 unless a preset or setting was chosen; Levenshtein presets are refused\nfor models without them.\n\nExamples:\n  preset S\n  preset", false, preset),
    cmd!("step", ["s"], Syntax::Params(&[opt("N", COUNT)]), "Run N forward passes (default 1) and show Gamma and Delta",
        "Each step is one forward pass: Gamma (mask -> token) and Delta (token -> token) are listed and the\ncanvas is shown. Stops early when the decode finishes. An interrupt (Ctrl-C in the terminal, the\nInterrupt button in Jupyter) stops it between steps.\n\nExamples:\n  step\n  step 5", true, step),
    cmd!("run", ["r"], NONE, "Decode to the end",
        "Steps until the decode finishes (breakpoints are ignored; use `continue` to stop at them).", true, run),
    cmd!("continue", ["c"], NONE, "Step until a breakpoint fires or the decode ends",
        "Example:\n  break edit\n  continue", true, cont),
    cmd!("break", ["b"], Syntax::Subs { what: "event", subs: BREAK_EVENTS, default: None, otherwise: &[] }, "Add a breakpoint on a decoder event",
        "Events: edit (Delta non-empty), fallback, block-end, eos, token ID, text TEXT, oscillation K\n(a position written more than K times), low-confidence X, step N, revised (multi-block editing).\nLevenshtein steps (LLaDA2.2): delete (a slot deleted), insert (SPLIT opened a mask), truncate\n(tokens cut off the block's tail), antiloop (the anti-loop rule redrew a write).\n\nExamples:\n  break edit\n  break text Paris\n  break low-confidence 0.3\n  break delete", false, brk),
    cmd!("breaks", [], NONE, "List breakpoints", "Lists breakpoints with their ids.", false, breaks),
    cmd!("delete", [], Syntax::Subs { what: "breakpoint", subs: &[sub("all", &[], &[])], default: None, otherwise: &[one("ID", int(0, u32::MAX as i64))] }, "Delete a breakpoint", "Examples:\n  delete 2\n  delete all", false, delete),
    cmd!("watch", [], Syntax::Subs { what: "position", subs: &[sub("off", &[], &[])], default: None, otherwise: &[many("POS", POS)] }, "Show these positions after every step (watch off: clear)",
        "Watched positions are listed with their token and probability after each `step`.\n\nExamples:\n  watch 12 13\n  watch off", false, watch),
    cmd!("rewind", ["back"], Syntax::Params(&[one("STEP", int(0, u32::MAX as i64))]), "Go back to the state before forward STEP",
        "Restores the canvas, block, counters and generator exactly; finished blocks stay cached.\n\nExample:\n  rewind 3", true, rewind),
    cmd!("fork", [], Syntax::Params(&[one("NAME", Kind::Name)]), "Copy this branch to a new branch and switch to it",
        "The copy is independent: change settings there and compare with `diff`.\n\nExample:\n  fork q-mode\n  preset Q", true, fork),
    cmd!("switch", ["checkout"], Syntax::Params(&[one("NAME", Kind::Branch)]), "Switch to another branch", "Example:\n  switch main", false, switch),
    cmd!("branches", [], NONE, "List branches with their progress and the memory they hold", "Each branch holds its KV cache and its last forward's distributions on the model's device; the title sums\nthem. `drop NAME` frees a branch.", false, branches),
    cmd!("drop", [], Syntax::Params(&[many("NAME", Kind::Branch)]), "Delete branches (not the current one)",
        "Frees the branches' decoders and caches: a session that forks a lot grows with its branches. The\ncurrent branch stays (`switch` away first); nothing is dropped if a name is wrong.\n\nExample:\n  drop q-mode after", false, drop),
    cmd!("diff", [], Syntax::Params(&[one("A", Kind::Branch), one("B", Kind::Branch)]), "Compare two branches step by step",
        "A step-aligned table of |Gamma| and |Delta| per step, the first step where they diverge, their TPF\nand final texts.\n\nExample:\n  diff main q-mode", true, diff),
    cmd!("canvas", ["show-canvas"], Syntax::Params(&[opt("all", Kind::OneOf(&["all"]))]), "Show the canvas (prompt, tokens, masks; last step's changes)",
        "A canvas of more than 8 blocks is folded: the current block, its neighbours and the blocks the last step\nchanged are shown, the rest collapsed into a line (in Jupyter, a click opens them). `canvas all` shows every\nblock.\n\nExamples:\n  canvas\n  canvas all", true, canvas),
    cmd!("gamma", [], NONE, "Show the last step's unmask set Gamma_t", "", true, gamma),
    cmd!("delta", [], NONE, "Show the last step's edit set Delta_t", "", true, delta),
    cmd!("topk", [], Syntax::Params(&[one("POS", POS), opt("K", int(1, 1_000_000))]), "Top-K candidates at a position under the last forward",
        "Uses the last forward's distribution (no new forward); also shows the probability of the token now\nat POS. A LLaDA2.2 model's edit operations are named DELETE and SPLIT.\n\nExample:\n  topk 14 5", true, topk),
    cmd!("trace", [], NONE, "List every step so far", "", true, trace),
    cmd!("block", [], NONE, "Show the current block and its counters", "", true, block),
    cmd!("stats", [], NONE, "Forwards, tokens, TPF, edits, fallbacks, time",
        "Levenshtein decodes (LLaDA2.2) add deletions, insertions, truncated tokens and anti-loop redraws.", true, stats),
    cmd!("chart", [], NONE, "Charts: masks left, |Gamma|, |Delta| per step; confidence by position and step",
        "Two charts: masks left in the block, |Gamma| and |Delta| per step; and, for the last 8 steps, the\nprobability of every token each step wrote, by position.", true, chart),
    cmd!("poke", ["set-token"], Syntax::Params(&[one("POS", POS), one("TOKEN", Kind::Token)]), "Set a generated position by hand (TOKEN: text, or #ID)",
        "Journalled (rewind undoes it). Positions in cached blocks drop the cache from their block on.\n\nExamples:\n  poke 14 x\n  poke 14 #57", true, poke),
    cmd!("remask", [], Syntax::Params(&[many("POS", POS)]), "Turn positions of the current block back into masks", "Example:\n  remask 12 13", true, remask),
    cmd!("export", [], Syntax::Params(&[one("FILE", Kind::Path)]), "Write the current branch's trace as JSON (docs/decoding.md)", "Writes atomically. An existing FILE is replaced only if it is a trace written by `export`; any other\nfile or folder is refused and left as it was.\n\nExample:\n  export trace.json", true, export),
    cmd!("save", [], Syntax::Params(&[one("FILE", Kind::Path)]), "Save the session (settings, branches, breakpoints) as JSON", "Writes atomically. An existing FILE is replaced only if it is a session written by `save`; any\nother file or folder is refused and left as it was.\n\nExample:\n  save session.json", true, save),
    cmd!("open", [], Syntax::Params(&[one("FILE", Kind::Path)]), "Reopen a saved session", "Example:\n  open session.json", true, open),
    cmd!("source", ["script"], Syntax::Params(&[one("FILE", Kind::Path)]), "Run the commands in a file (one per line, # comments)",
        "Stops at the first failing command.\n\nExample:\n  source demo.dllm", false, source),
    cmd!("sweep", [], Syntax::Params(&[one("NAME", Kind::Setting), many("VALUE", Kind::SettingValue)]), "Decode the prompt once per value of a setting; tabulate TPF, steps, edits",
        "Each run starts fresh from the current prompt and settings with NAME set to one value.\n\nExample:\n  sweep threshold 0.5 0.7 0.9", true, sweep),
    cmd!("likelihood", ["elbo"], crate::likelihood_cmd::SYNTAX, "ELBO estimates of log p(response | prompt), one row per estimator",
        "Scores the current branch's decoded response (through its EOS), or the pair after `--` (the prompt\ngoes through the chat template, the response gets an EOS). The estimators are listed below\n(the default is stratified:4); `edit` (LLaDA2.2 models) adds a table splitting it into M2T, keep,\nsubstitute, delete and insert parts. Each row: value, standard error, per-block terms.\nrepeat=R re-estimates with R seeds and shows the spread across them.\n\nExamples:\n  likelihood\n  likelihood stratified:4 mc:4 mean-field repeat=20\n  likelihood midpoint:8 gauss:8 -- sort 3814 => 1348\n  likelihood stratified:4 edit:4:0.2", true, crate::likelihood_cmd::likelihood_cmd),
    cmd!("rl", [], crate::rl_cmd::SYNTAX, "EBPO: configure and run RL updates on the resident model",
        "rl show              the RL settings (rl set NAME VALUE changes one)\nrl prompt TEXT => A   train on given prompts (with a reference answer) instead of the task suite\nrl snapshot [NAME]    keep a copy of the trainable parameters (default name `before`)\nrl update [N]         N updates: rollouts, rewards, clipped surrogate, AdamW (live progress)\nrl stats              every update's reward, loss, clip fraction, KL, gradient norm, time\nrl eval [N]           greedy held-out reward on N instances per task (or the given prompts)\nrl restore [NAME]     put a snapshot back\nrl save DIR           write the policy as a checkpoint (LoRA merged); `load DIR` reads it. DIR must be\n                      new, empty or a checkpoint, which is replaced atomically\nrl merge              fold LoRA adapters into the weights\nrl reset              drop the run (weights stay)\nA failing update (reward command error, non-finite loss) changes nothing. docs/rl.md has the\ndefaults and the measured demo.\n\nExample:\n  rl set tasks order\n  rl set reward exact\n  rl snapshot\n  rl update 20\n  rl eval", true, crate::rl_cmd::rl_cmd),
    cmd!("train", ["finetune"], crate::finetune::SYNTAX, "Fine-tune the resident model on a JSONL file (M2T + T2T), a few steps at a time",
        "train data FILE      read a JSONL file: {\"messages\": [...]} or {\"prompt\", \"response\"} per line, through\n                     the model's chat template; only assistant turns are supervised\ntrain show           the settings (train set NAME VALUE: trainable all|lora:R|layers:A-B, lr, batch,\n                     held_out, max_response, seed)\ntrain N              N steps (live progress; interruptible between steps, the model kept)\ntrain eval [N]       held-out losses and exact answers of N greedy decodes (default 100)\ntrain save DIR       write the model as a checkpoint (LoRA merged, adapters alone in DIR/lora)\ntrain reset          drop the run (weights stay)\nBranches decode with the new weights after `train N`: `redecode` + `diff` show what changed.\n`dllm train --data` runs the same objective from the command line (docs/training.md).\n\nExample:\n  train data data/rot.jsonl\n  train set trainable lora:8\n  train 100\n  train eval", true, crate::finetune::train_cmd),
    cmd!("redecode", [], Syntax::Params(&[one("NAME", Kind::Name), key("quantize", "int8|fp8", Kind::Quantization), key("fp8_matmul", "auto|dequantize|scaled|emulated", Kind::Fp8Matmul)]), "Decode this branch's prompt afresh on a new branch (e.g. after `rl update`)",
        "Starts a new branch NAME from the current branch's prompt and settings under the current weights\nand runs it to the end; `diff` then compares it with the branch decoded before.\nWith quantize=, the decode runs on a copy of the model with int8 or fp8 routed experts (dropped\nafterwards; stepping NAME further uses the resident model): `diff` shows how quantization changes\nGamma_t and Delta_t. With quantize=fp8, fp8_matmul= chooses how its experts multiply (as `load`):\n`emulated` shows on any device what the GPU's fp8 tensor cores change.\n\nExamples:\n  redecode after\n  diff main after\n  redecode q8 quantize=int8\n  diff main q8\n  redecode tc quantize=fp8 fp8_matmul=emulated", true, crate::research::redecode),
    cmd!("fidelity", [], Syntax::Params(&[one("int8|fp8", Kind::OneOf(&["int8", "fp8"])), key("fp8_matmul", "auto|dequantize|scaled|emulated", Kind::Fp8Matmul)]), "How int8 or fp8 routed experts change the next-token distributions on this canvas",
        "Runs this branch's canvas through the resident model and through a copy with quantized routed\nexperts (one forward each): the largest |dp|, top-1 agreement and KL, and the positions whose most\nlikely token changes. `redecode NAME quantize=...` shows the effect on a whole decode.\nWith fp8, fp8_matmul= chooses how the copy's experts multiply (as `load`).\n\nExamples:\n  fidelity fp8\n  fidelity fp8 fp8_matmul=emulated", true, crate::fidelity::fidelity),
];

pub fn find(name: &str) -> Option<&'static Command> {
    TABLE.iter().find(|c| c.name == name || c.aliases.contains(&name))
}

pub fn names() -> impl Iterator<Item = &'static str> {
    TABLE.iter().flat_map(|c| std::iter::once(c.name).chain(c.aliases.iter().copied()))
}

fn msg(text: impl Into<String>) -> Value {
    Value::Message { text: text.into() }
}

/// A usage error of command `c`: `m`, and its usage line from the table.
pub(crate) fn usage(c: &str, m: impl Into<String>) -> CommandError {
    CommandError::Usage { message: m.into(), usage: find(c).map_or_else(|| c.to_string(), Command::usage) }
}

/// A number the grammar has checked (its parameter is required, or the caller gives the default).
fn checked(a: &Args, name: &str) -> i64 {
    a.int(name).unwrap_or_else(|| panic!("the grammar checks {name}"))
}

/// The text of docs/commands.md.
pub fn markdown() -> String {
    let mut s = String::from("# Commands\n\nGenerated from the command table (`repl/src/commands/mod.rs`); a test fails when this file is stale.\nThe same commands work in the terminal REPL and in Jupyter cells.\n\nSyntax, the same everywhere (terminal, `-c`, scripts, stdin, cells): one command a line; `;` separates\ncommands on a line (`fork q ; preset Q ; run`; in the terminal a chain stops at the first failure);\ndouble quotes keep spaces and `;` in an argument (`\\\"` escapes a quote); a line starting with `#` is a\ncomment; a line ending in `\\` continues on the next.\n\n| command | aliases | summary |\n|---|---|---|\n");
    for c in TABLE {
        // A `|` inside a table cell must be escaped, code span or not.
        let cell = |t: &str| t.replace('|', "\\|");
        s += &format!("| `{}` | {} | {} |\n", cell(&c.usage()), c.aliases.iter().map(|a| format!("`{a}`")).collect::<Vec<_>>().join(" "), cell(c.summary));
    }
    for c in TABLE {
        s += &format!("\n## {}\n\n`{}`\n\n{}\n", c.name, c.usage(), c.summary);
        let help = c.long_help();
        if !help.is_empty() {
            s += &format!("\n```\n{help}\n```\n");
        }
    }
    s
}

fn help(_: &mut Session, a: &Args) -> CmdResult {
    if let Some(name) = a.text("COMMAND") {
        let c = find(name).ok_or_else(|| CommandError::Unknown { name: name.into(), suggestions: crate::parse::nearest(name, names()) })?;
        return Ok(vec![msg(c.help_text())]);
    }
    let rows = TABLE.iter().map(|c| vec![Cell::from(c.usage()), Cell::from(c.summary)]).collect();
    Ok(vec![Value::Table(Table { title: "Commands (`help NAME` for details)".into(), columns: vec!["usage".into(), "what it does".into()], rows })])
}

fn load(s: &mut Session, a: &Args) -> CmdResult {
    let mut src = ModelSource { dir: None, device: s.source.device.clone(), dtype: None, quantize: None, fp8_matmul: None };
    if let Some(d) = a.text("D") {
        src.device = d.into();
    }
    src.dtype = a.text("T").map(String::from);
    src.quantize = a.text("int8|fp8").map(String::from);
    src.fp8_matmul = a.text("auto|dequantize|scaled|emulated").map(String::from);
    src.dir = a.text("PATH|builtin|builtin:NAME|random:SHAPE").filter(|m| *m != "builtin").map(PathBuf::from);
    let note = s.replace_model(src)?;
    let mut out = info(s, a)?;
    out.extend(note.map(msg));
    Ok(out)
}

fn info(s: &mut Session, _: &Args) -> CmdResult {
    let l = s.model()?;
    let (m, c) = (&l.model, l.model.config());
    let mut rows: Vec<Vec<Cell>> = vec![
        vec!["model".into(), l.dir.display().to_string().into()],
        vec!["shape".into(), format!("{} layers, hidden {}, {} experts top-{}, vocab {}", c.num_hidden_layers, c.hidden_size, c.num_experts, c.num_experts_per_tok, c.vocab_size).into()],
        vec!["parameters".into(), m.num_parameters().into()],
        vec!["device".into(), format!("{:?}", m.device()).to_lowercase().into()],
        vec!["dtype".into(), m.dtype().to_string().into()],
        vec!["weight MiB".into(), (m.weight_bytes() as f64 / (1 << 20) as f64).into()],
        vec!["by part (MiB)".into(), m.weight_bytes_by_part().into_iter().filter(|p| p.1 > 0).map(|(p, b)| format!("{p} {:.2}", b as f64 / (1 << 20) as f64)).collect::<Vec<_>>().join(", ").into()],
        vec!["routed experts".into(), m.quantization().map_or_else(|| format!("{} (not quantized)", m.dtype()), |q| format!("{q} (quantized)")).into()],
    ];
    if let Some(p) = m.fp8_matmul() {
        rows.push(vec!["fp8 matmul".into(), format!("{}: {}", p.path, p.why).into()]);
    }
    rows.extend([
        vec!["mask / eos id".into(), format!("{} / {}", l.tokenizer.mask_id, l.tokenizer.eos_id).into()],
        vec!["DELETE / SPLIT id".into(), m.edit_tokens().map(|(d, s)| format!("{d} / {s} (LLaDA2.2 Levenshtein editing)")).unwrap_or_else(|| "none (substitution only)".into()).into()],
        vec!["load seconds".into(), l.load_time.as_secs_f64().into()],
    ]);
    Ok(vec![Value::Table(Table { title: "Model".into(), columns: vec!["".into(), "".into()], rows })])
}
