//! THE command table: name, aliases, usage, one-line summary, long help with examples, handler. `help`,
//! completion and docs/commands.md are generated from it, so the terminal and the kernel cannot drift.

use std::path::PathBuf;

use dllm_engine::decode::{DecodeSettings, Decoder, Denoiser, EditOps, Event, LevStep, StepReport, WriteKind, PRESETS, SETTINGS};
use dllm_engine::Role;

use crate::grammar::{self, int, key, many, one, opt, rest, sub, Kind, Sub, Syntax};
use crate::parse::Args;
use crate::session::{Breakpoint, CmdResult, CommandError, ModelSource, Session};
use crate::value::{Cell, Chart, Series, Steps, Table, Value};

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
    cmd!("load", [], Syntax::Params(&[opt("PATH|builtin|builtin:NAME|random:SHAPE", Kind::Model), key("device", "D", Kind::Device), key("dtype", "T", Kind::Dtype), key("quantize", "int8|fp8", Kind::Quantization)]), "Load a model (replaces the resident one)",
        "Loads a checkpoint folder (config.json, model.safetensors[.index.json], tokenizer.json) or an\nembedded model (`builtin` = builtin:tiny, LLaDA2.1; builtin:tiny-2.2, LLaDA2.2), on `device`\n(auto, cpu, cuda, cuda:N) in `dtype` (f32, bf16, f16). `random:SHAPE[:SEED]` builds a seeded\nrandom model of a named shape in memory (micro, tiny, mid, llada2-mini, ... as `dllm init-model --shape`):\nits outputs are noise, its shapes, memory and speed are real. `quantize=int8|fp8` holds the routed\nexperts quantized (docs/quantization.md). Branches are dropped: their tokens belong to the old\nvocabulary. If loading fails, the old model stays.\n\nExamples:\n  load builtin\n  load builtin:tiny-2.2\n  load random:mid quantize=int8\n  load /models/llada2-mini device=cuda dtype=bf16 quantize=fp8", false, load),
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
    cmd!("branches", [], NONE, "List branches with their progress", "", false, branches),
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
    cmd!("redecode", [], Syntax::Params(&[one("NAME", Kind::Name), key("quantize", "int8|fp8", Kind::Quantization)]), "Decode this branch's prompt afresh on a new branch (e.g. after `rl update`)",
        "Starts a new branch NAME from the current branch's prompt and settings under the current weights\nand runs it to the end; `diff` then compares it with the branch decoded before.\nWith quantize=, the decode runs on a copy of the model with int8 or fp8 routed experts (dropped\nafterwards; stepping NAME further uses the resident model): `diff` shows how quantization changes\nGamma_t and Delta_t.\n\nExamples:\n  redecode after\n  diff main after\n  redecode q8 quantize=int8\n  diff main q8", true, crate::research::redecode),
    cmd!("fidelity", [], Syntax::Params(&[one("int8|fp8", Kind::OneOf(&["int8", "fp8"]))]), "How int8 or fp8 routed experts change the next-token distributions on this canvas",
        "Runs this branch's canvas through the resident model and through a copy with quantized routed\nexperts (one forward each): the largest |dp|, top-1 agreement and KL, and the positions whose most\nlikely token changes. `redecode NAME quantize=...` shows the effect on a whole decode.\n\nExample:\n  fidelity fp8", true, crate::fidelity::fidelity),
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
    let mut s = String::from("# Commands\n\nGenerated from the command table (`repl/src/commands.rs`); a test fails when this file is stale.\nThe same commands work in the terminal REPL and in Jupyter cells.\n\nSyntax, the same everywhere (terminal, `-c`, scripts, stdin, cells): one command a line; `;` separates\ncommands on a line (`fork q ; preset Q ; run`; in the terminal a chain stops at the first failure);\ndouble quotes keep spaces and `;` in an argument (`\\\"` escapes a quote); a line starting with `#` is a\ncomment; a line ending in `\\` continues on the next.\n\n| command | aliases | summary |\n|---|---|---|\n");
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
    let mut src = ModelSource { dir: None, device: s.source.device.clone(), dtype: None, quantize: None };
    if let Some(d) = a.text("D") {
        src.device = d.into();
    }
    src.dtype = a.text("T").map(String::from);
    src.quantize = a.text("int8|fp8").map(String::from);
    src.dir = a.text("PATH|builtin|builtin:NAME|random:SHAPE").filter(|m| *m != "builtin").map(PathBuf::from);
    let note = s.replace_model(src)?;
    let mut out = info(s, a)?;
    out.extend(note.map(msg));
    Ok(out)
}

fn info(s: &mut Session, _: &Args) -> CmdResult {
    let l = s.model()?;
    let (m, c) = (&l.model, l.model.config());
    let rows: Vec<Vec<Cell>> = vec![
        vec!["model".into(), l.dir.display().to_string().into()],
        vec!["shape".into(), format!("{} layers, hidden {}, {} experts top-{}, vocab {}", c.num_hidden_layers, c.hidden_size, c.num_experts, c.num_experts_per_tok, c.vocab_size).into()],
        vec!["parameters".into(), m.num_parameters().into()],
        vec!["device".into(), format!("{:?}", m.device()).to_lowercase().into()],
        vec!["dtype".into(), m.dtype().to_string().into()],
        vec!["weight MiB".into(), (m.weight_bytes() as f64 / (1 << 20) as f64).into()],
        vec!["by part (MiB)".into(), m.weight_bytes_by_part().into_iter().filter(|p| p.1 > 0).map(|(p, b)| format!("{p} {:.2}", b as f64 / (1 << 20) as f64)).collect::<Vec<_>>().join(", ").into()],
        vec!["routed experts".into(), m.quantization().map_or_else(|| format!("{} (not quantized)", m.dtype()), |q| format!("{q} (quantized)")).into()],
        vec!["mask / eos id".into(), format!("{} / {}", l.tokenizer.mask_id, l.tokenizer.eos_id).into()],
        vec!["DELETE / SPLIT id".into(), m.edit_tokens().map(|(d, s)| format!("{d} / {s} (LLaDA2.2 Levenshtein editing)")).unwrap_or_else(|| "none (substitution only)".into()).into()],
        vec!["load seconds".into(), l.load_time.as_secs_f64().into()],
    ];
    Ok(vec![Value::Table(Table { title: "Model".into(), columns: vec!["".into(), "".into()], rows })])
}

fn start(s: &mut Session, ids: Vec<i64>) -> CmdResult {
    let n = ids.len();
    let canvas = s.prompt_ids(&ids)?;
    let d = s.decoder()?;
    let text = format!(
        "prompt: {n} tokens; decoding {} tokens in blocks of {} from block {} on branch `{}`",
        d.settings.gen_length,
        d.settings.block_length,
        d.cursor().block,
        s.current
    );
    Ok(vec![msg(text), Value::Canvas(canvas)])
}

/// The TEXT of `prompt`/`chat`: the rest of the line as typed, or the one quoted word without its quotes.
fn text_arg<'a>(a: &'a Args) -> &'a str {
    a.text("TEXT").unwrap_or_default()
}

fn prompt(s: &mut Session, a: &Args) -> CmdResult {
    let ids = s.tokenizer()?.encode(text_arg(a))?;
    start(s, ids)
}

fn chat(s: &mut Session, a: &Args) -> CmdResult {
    let tok = s.tokenizer()?;
    let ids = tok.encode(&tok.chat(&[(Role::Human, text_arg(a))], true)?)?;
    start(s, ids)
}

fn prompt_ids(s: &mut Session, a: &Args) -> CmdResult {
    let text = a.text("ID,ID,...").unwrap_or_default();
    let ids: Result<Vec<i64>, _> = text.split(',').map(|t| t.trim().parse::<i64>()).collect();
    let ids = ids.map_err(|_| usage("prompt-ids", format!("expected comma-separated integers, got {text:?}")))?;
    start(s, ids)
}

fn settings_table(st: &DecodeSettings) -> Value {
    let rows = SETTINGS.iter().map(|(n, h)| vec![Cell::from(*n), Cell::from(st.get(n).unwrap_or_default()), Cell::from(*h)]).collect();
    Value::Table(Table { title: "Decoding settings".into(), columns: vec!["setting".into(), "value".into(), "meaning".into()], rows })
}

fn settings(s: &mut Session, _: &Args) -> CmdResult {
    let st = s.decoder().map(|d| d.settings.clone()).unwrap_or_else(|_| s.settings.clone());
    Ok(vec![settings_table(&st)])
}

/// Applies `change` to the session's settings and to the current branch's (checked first on copies).
fn change_settings(s: &mut Session, change: impl Fn(&mut DecodeSettings) -> dllm_engine::Result<()>) -> Result<(), CommandError> {
    let mut next = s.settings.clone();
    change(&mut next)?;
    check_with_model(s, &next)?;
    let branch = match s.decoder() {
        Ok(d) => {
            let mut b = d.settings.clone();
            change(&mut b)?;
            if b.block_length != d.settings.block_length || b.gen_length != d.settings.gen_length {
                // The canvas layout is fixed: such settings apply from the next prompt.
                b.block_length = d.settings.block_length;
                b.gen_length = d.settings.gen_length;
            }
            Some(b)
        }
        Err(_) => None,
    };
    s.settings = next;
    if let (Some(b), Ok(d)) = (branch, s.decoder_mut()) {
        d.settings = b;
    }
    Ok(())
}

/// Refuses Levenshtein editing for a resident model without DELETE / SPLIT ids now rather than at the next
/// step, with the engine's own error: its check runs on a throwaway one-token decoder (no forward). A model
/// still loading is checked at its first step instead.
fn check_with_model(s: &Session, st: &DecodeSettings) -> Result<(), CommandError> {
    let Ok(l) = s.ready() else { return Ok(()) };
    if st.edit_ops == EditOps::Levenshtein && l.model.edit_tokens().is_none() {
        Decoder::new(&[l.tokenizer.eos_id], st.clone(), l.tokenizer.mask_id, l.tokenizer.eos_id, &l.model)?;
    }
    Ok(())
}

/// `set NAME VALUE` ([`Session::set`]).
pub(crate) fn set_setting(s: &mut Session, name: &str, value: &str) -> Result<(), CommandError> {
    change_settings(s, |st| st.set(name, value))?;
    // Presets leave layout, seed and sampling alone, so setting those is not choosing decoding rules.
    if !matches!(name, "gen_length" | "block_length" | "seed" | "temperature" | "top_k" | "top_p" | "attention" | "mbe_window") {
        s.settings_chosen = true;
    }
    Ok(())
}

/// `preset NAME` ([`Session::preset`]).
pub(crate) fn apply_preset(s: &mut Session, name: &str) -> Result<(), CommandError> {
    change_settings(s, |st| st.apply_preset(name))?;
    s.settings_chosen = true;
    Ok(())
}

fn set(s: &mut Session, a: &Args) -> CmdResult {
    let (Some(name), Some(value)) = (a.text("NAME"), a.text("VALUE")) else { return Err(usage("set", "expected NAME VALUE")) };
    s.set(name, value)?;
    let layout = matches!(name, "block_length" | "gen_length") && s.decoder().is_ok();
    Ok(vec![msg(format!("{name} = {}{}", s.settings.get(name).unwrap_or_default(), if layout { " (from the next prompt: the canvas layout is fixed)" } else { "" }))])
}

fn preset(s: &mut Session, a: &Args) -> CmdResult {
    let Some(name) = a.text("NAME") else {
        let settings = |p: &dllm_engine::decode::Preset| p.settings.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ");
        let rows = PRESETS.iter().map(|p| vec![Cell::from(p.name), Cell::from(p.about), Cell::from(settings(p))]).collect();
        let columns = ["preset", "what it is", "settings it writes (after resetting the rules no preset keeps)"];
        return Ok(vec![Value::Table(Table { title: "Presets".into(), columns: columns.map(String::from).to_vec(), rows })]);
    };
    s.preset(name)?;
    Ok(vec![msg(format!("preset {name} applied"))])
}

/// A write's token for the steps table: LLaDA2.2's edit operations by name (their vocabulary texts are
/// placeholders in real checkpoints), other tokens as quoted text.
fn written(kind: WriteKind, text: &str) -> String {
    match kind {
        WriteKind::Delete => "DEL".into(),
        WriteKind::Split => "SPLIT".into(),
        WriteKind::Token => format!("{text:?}"),
    }
}

/// One Levenshtein step's facts in a cell: masks at the start (original + introduced) and the minimum it
/// had to unmask, the post counter, then what moved: deleted and split slots (step-start positions),
/// inserted masks (after the step), padding, cut positions, the final round and anti-loop redraws.
fn lev_facts(l: &LevStep, edit_ids: Option<(i64, i64)>) -> String {
    let list = |v: &[i64]| v.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    let mut f = vec![format!("masks {}+{} need {}", l.originals, l.introduced, l.need), format!("post {}", l.post)];
    if !l.deleted.is_empty() {
        f.push(format!("del {}", list(&l.deleted)));
    }
    if !l.split.is_empty() {
        f.push(format!("split {}", list(&l.split)));
    }
    if !l.inserted.is_empty() {
        f.push(format!("ins {}", list(&l.inserted)));
    }
    if l.pad > 0 {
        f.push(format!("pad {}", l.pad));
    }
    if !l.truncated.is_empty() {
        f.push(format!("cut {}", list(&l.truncated.iter().map(|t| t.0).collect::<Vec<_>>())));
    }
    if l.final_round {
        f.push("final".into());
    }
    for r in &l.antiloop {
        let name = |id: i64, text: &str| edit_op(id, edit_ids).map(String::from).unwrap_or_else(|| format!("{text:?}"));
        f.push(format!("redraw {}:{}→{}", r.pos, name(r.from, &r.from_text), name(r.to, &r.to_text)));
    }
    f.join(" · ")
}

/// The steps table titled `title` ([`steps`]).
fn steps_table(title: &str, reports: &[StepReport], edit_ids: Option<(i64, i64)>) -> Value {
    let mut s = steps(reports, edit_ids);
    s.table.title = title.into();
    Value::Steps(s)
}

/// The steps table of `reports` (titled "Steps"); a `Levenshtein` column appears only when some step is a
/// Levenshtein step (LLaDA2.1 tables stay as they were). Its JSON also carries the complete reports.
pub(crate) fn steps(reports: &[StepReport], edit_ids: Option<(i64, i64)>) -> Steps {
    let lev = reports.iter().any(|r| r.lev.is_some());
    let rows = reports
        .iter()
        .map(|r| {
            let g: Vec<String> = r.gamma.iter().map(|u| format!("{}:{}", u.pos, written(u.kind, &u.text))).collect();
            let d: Vec<String> = r.delta.iter().map(|e| format!("{}:{:?}→{}", e.pos, e.old_text, written(e.kind, &e.new_text))).collect();
            let mut row = vec![
                r.step.into(),
                r.block.into(),
                r.block_step.into(),
                g.join(" ").into(),
                d.join(" ").into(),
                r.masks_left.into(),
                r.fallback.into(),
                r.tpf.into(),
            ];
            if lev {
                row.push(r.lev.as_ref().map(|l| lev_facts(l, edit_ids)).into());
            }
            row
        })
        .collect();
    let mut columns: Vec<String> =
        ["step", "block", "in block", "Gamma (pos:token)", "Delta (pos:old→new)", "masks left", "fallback", "TPF"].map(String::from).to_vec();
    if lev {
        columns.push("Levenshtein".into());
    }
    Steps { table: Table { title: "Steps".into(), columns, rows }, reports: reports.to_vec() }
}

/// "DELETE" / "SPLIT" when `id` is one of the model's edit operations (`edit_ids`): real checkpoints have only
/// placeholder texts for them.
fn edit_op(id: i64, edit_ids: Option<(i64, i64)>) -> Option<&'static str> {
    match edit_ids {
        Some((del, _)) if id == del => Some("DELETE"),
        Some((_, split)) if id == split => Some("SPLIT"),
        _ => None,
    }
}

/// The resident model's (DELETE, SPLIT) ids, if it has them.
fn edit_ids(s: &Session) -> Option<(i64, i64)> {
    s.ready().ok().and_then(|l| l.model.edit_tokens())
}

fn after_steps(s: &mut Session, reports: Vec<dllm_engine::decode::StepReport>, stop: Option<String>) -> CmdResult {
    let mut out = Vec::new();
    if !reports.is_empty() {
        out.push(steps_table("Steps", &reports, edit_ids(s)));
    }
    out.push(s.canvas_value("canvas")?);
    if !s.watches.is_empty() {
        let d = s.decoder()?;
        let rows: Vec<Vec<Cell>> = s
            .watches
            .clone()
            .into_iter()
            .filter(|&p| p >= 0 && (p as usize) < d.canvas().len())
            .map(|p| {
                let cur = d.top_k_at(p, 1).map(|(_, c)| c);
                vec![p.into(), d.canvas()[p as usize].into(), cur.into()]
            })
            .collect();
        out.push(Value::Table(Table { title: "Watches".into(), columns: vec!["pos".into(), "id".into(), "p".into()], rows }));
    }
    if let Some(stop) = stop {
        out.push(msg(stop));
    }
    Ok(out)
}

fn step(s: &mut Session, a: &Args) -> CmdResult {
    let n = a.int("N").unwrap_or(1);
    let (reports, stop) = s.advance(n as usize, false, a)?;
    after_steps(s, reports, stop)
}

fn run(s: &mut Session, a: &Args) -> CmdResult {
    let (reports, stop) = s.advance(usize::MAX, false, a)?;
    let d = s.decoder()?;
    let summary = format!("{} steps; {} tokens, TPF {:.2}", reports.len(), d.decoded_tokens(), d.tpf());
    let text = s.ready()?.tokenizer.decode(&s.decoder()?.output());
    let mut out = after_steps(s, Vec::new(), stop)?;
    out.push(msg(summary));
    out.push(msg(format!("output: {text:?}")));
    Ok(out)
}

fn cont(s: &mut Session, a: &Args) -> CmdResult {
    if s.breakpoints.is_empty() {
        return Err(CommandError::Failed("no breakpoints: add one with `break EVENT` (or use `run`)".into()));
    }
    let (reports, stop) = s.advance(usize::MAX, true, a)?;
    let last: Vec<_> = reports.last().cloned().into_iter().collect();
    let mut out = after_steps(s, last, stop)?;
    out.insert(0, msg(format!("{} steps", reports.len())));
    Ok(out)
}

/// The events `break` takes, each with its argument: the grammar checks them and completion offers them.
pub const BREAK_EVENTS: &[Sub] = &[
    sub("edit", &["delta"], &[]),
    sub("fallback", &[], &[]),
    sub("block-end", &["block"], &[]),
    sub("eos", &[], &[]),
    sub("token", &[], &[one("ID", int(0, i32::MAX as i64))]),
    sub("text", &[], &[rest("TEXT", Kind::Text)]),
    sub("oscillation", &[], &[one("K", int(1, u32::MAX as i64))]),
    sub("low-confidence", &[], &[one("X", Kind::Prob)]),
    sub("step", &[], &[one("N", int(0, u32::MAX as i64))]),
    sub("revised", &[], &[]),
    sub("delete", &[], &[]),
    sub("insert", &["split"], &[]),
    sub("truncate", &[], &[]),
    sub("antiloop", &[], &[]),
];

/// The event of `break`'s words, as the grammar read them.
fn parse_event(a: &Args) -> Event {
    match a.sub.unwrap_or_default() {
        "edit" => Event::Edit,
        "fallback" => Event::Fallback,
        "block-end" => Event::BlockEnd,
        "eos" => Event::Eos,
        "token" => Event::Token { id: checked(a, "ID") },
        "text" => Event::Text { text: a.text("TEXT").unwrap_or_default().to_string() },
        "oscillation" => Event::Oscillation { k: checked(a, "K") as u32 },
        "low-confidence" => Event::LowConfidence { below: a.num("X").unwrap_or_else(|| panic!("the grammar checks X")) as f32 },
        "step" => Event::Step { n: checked(a, "N") },
        "revised" => Event::Revised,
        "delete" => Event::Delete,
        "insert" => Event::Insert,
        "truncate" => Event::Truncate,
        "antiloop" => Event::Antiloop,
        other => unreachable!("break event {other:?} is in BREAK_EVENTS but has no Event"),
    }
}

fn brk(s: &mut Session, a: &Args) -> CmdResult {
    let event = parse_event(a);
    if let Event::Text { text } = &event {
        if text.is_empty() {
            return Err(usage("break", "text needs TEXT"));
        }
    }
    let id = s.next_break_id;
    s.next_break_id += 1;
    let text = format!("breakpoint {id}: {}", event);
    s.breakpoints.push(Breakpoint { id, event });
    Ok(vec![msg(text)])
}

fn breaks(s: &mut Session, _: &Args) -> CmdResult {
    let rows = s.breakpoints.iter().map(|b| vec![b.id.into(), b.event.to_string().into()]).collect();
    Ok(vec![Value::Table(Table { title: "Breakpoints".into(), columns: vec!["id".into(), "event".into()], rows })])
}

fn delete(s: &mut Session, a: &Args) -> CmdResult {
    match a.sub {
        Some("all") => s.breakpoints.clear(),
        _ => {
            let id = checked(a, "ID") as usize;
            let before = s.breakpoints.len();
            s.breakpoints.retain(|b| b.id != id);
            if s.breakpoints.len() == before {
                return Err(CommandError::Failed(format!("no breakpoint {id}; `breaks` lists them")));
            }
        }
    }
    Ok(vec![msg("deleted")])
}

fn watch(s: &mut Session, a: &Args) -> CmdResult {
    if a.sub == Some("off") {
        s.watches.clear();
        return Ok(vec![msg("watches cleared")]);
    }
    s.watches.extend(a.ints("POS"));
    s.watches.sort();
    s.watches.dedup();
    Ok(vec![msg(format!("watching {:?}", s.watches))])
}

fn rewind(s: &mut Session, a: &Args) -> CmdResult {
    let t = checked(a, "STEP");
    s.rewind(t)?;
    Ok(vec![msg(format!("rewound to before step {t}")), s.canvas_value("canvas")?])
}

fn fork(s: &mut Session, a: &Args) -> CmdResult {
    let name = a.text("NAME").unwrap_or_default();
    let from = s.current.clone();
    s.fork(name)?;
    Ok(vec![msg(format!("forked `{from}` into `{name}` (now current)"))])
}

fn switch(s: &mut Session, a: &Args) -> CmdResult {
    let name = a.text("NAME").unwrap_or_default();
    s.switch(name)?;
    Ok(vec![msg(format!("on branch `{name}`"))])
}

fn branches(s: &mut Session, _: &Args) -> CmdResult {
    let rows = s
        .branches
        .iter()
        .map(|(n, d)| {
            let st = d.stats();
            vec![
                Cell::from(if *n == s.current { format!("* {n}") } else { n.clone() }),
                st.forwards.into(),
                d.cursor().block.into(),
                d.is_finished().into(),
                st.tpf.into(),
            ]
        })
        .collect();
    Ok(vec![Value::Table(Table { title: "Branches".into(), columns: ["branch", "steps", "block", "finished", "TPF"].map(String::from).to_vec(), rows })])
}

fn drop(s: &mut Session, a: &Args) -> CmdResult {
    let names = a.texts("NAME");
    for n in &names {
        if !s.branches.contains_key(*n) {
            return Err(CommandError::Failed(format!("no branch `{n}` (nothing was dropped); `branches` lists them")));
        }
        if *n == s.current {
            return Err(CommandError::Failed(format!("`{n}` is the current branch (nothing was dropped); `switch` to another first")));
        }
    }
    for n in &names {
        s.branches.remove(*n);
    }
    let left = s.branch_names().join(", ");
    Ok(vec![msg(format!("dropped {}; branches left: {left}", names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")))])
}

fn diff(s: &mut Session, a: &Args) -> CmdResult {
    let (Some(x), Some(y)) = (a.text("A"), a.text("B")) else { return Err(usage("diff", "expected two branch names")) };
    let get = |n: &str| s.branches.get(n).ok_or_else(|| CommandError::Failed(format!("no branch `{n}`")));
    let (da, db) = (get(x)?, get(y)?);
    let (ra, rb): (Vec<_>, Vec<_>) = (da.reports().collect(), db.reports().collect());
    let key = |r: &dllm_engine::decode::StepReport| {
        (r.gamma.iter().map(|u| (u.pos, u.token)).collect::<Vec<_>>(), r.delta.iter().map(|e| (e.pos, e.new)).collect::<Vec<_>>())
    };
    let first = (0..ra.len().max(rb.len())).find(|&i| match (ra.get(i), rb.get(i)) {
        (Some(p), Some(q)) => key(p) != key(q),
        _ => true,
    });
    let n = ra.len().max(rb.len());
    let rows = (0..n)
        .map(|i| {
            let g = |r: Option<&&dllm_engine::decode::StepReport>| r.map(|r| r.gamma.len());
            let dl = |r: Option<&&dllm_engine::decode::StepReport>| r.map(|r| r.delta.len());
            vec![i.into(), g(ra.get(i)).into(), dl(ra.get(i)).into(), g(rb.get(i)).into(), dl(rb.get(i)).into(), Cell::from(if Some(i) == first { "← first difference" } else { "" })]
        })
        .collect();
    let tok = &s.ready()?.tokenizer;
    let (da, db) = (&s.branches[x], &s.branches[y]);
    let summary = vec![
        vec![Cell::from(x), da.stats().forwards.into(), da.tpf().into(), Cell::from(tok.decode(&da.output()))],
        vec![Cell::from(y), db.stats().forwards.into(), db.tpf().into(), Cell::from(tok.decode(&db.output()))],
    ];
    Ok(vec![
        Value::Table(Table { title: format!("{x} vs {y}, step by step"), columns: vec!["step".into(), format!("|Γ| {x}"), format!("|Δ| {x}"), format!("|Γ| {y}"), format!("|Δ| {y}"), "".into()], rows }),
        Value::Table(Table { title: "Summary".into(), columns: ["branch", "steps", "TPF", "text"].map(String::from).to_vec(), rows: summary }),
        msg(match first {
            Some(i) => format!("first diverging step: {i}"),
            None => "identical step for step".into(),
        }),
    ])
}

fn canvas(s: &mut Session, a: &Args) -> CmdResult {
    let mut v = s.canvas_value("canvas")?;
    if let Value::Canvas(c) = &mut v {
        c.fold = a.text("all").is_none();
    }
    Ok(vec![v])
}

fn last_report(s: &Session) -> Result<dllm_engine::decode::StepReport, CommandError> {
    let mut r = s.decoder()?.reports().last().cloned().ok_or_else(|| CommandError::Failed("no step yet: `step` runs one".into()))?;
    r.annotate(s.tokenizer()?);
    Ok(r)
}

/// A write's text in the gamma / delta tables: LLaDA2.2's edit operations by name.
fn op_name(kind: WriteKind, text: &str) -> String {
    match kind {
        WriteKind::Delete => "DELETE".into(),
        WriteKind::Split => "SPLIT".into(),
        WriteKind::Token => text.into(),
    }
}

fn gamma(s: &mut Session, _: &Args) -> CmdResult {
    let r = last_report(s)?;
    let rows = r.gamma.iter().map(|u| vec![u.pos.into(), u.token.into(), op_name(u.kind, &u.text).into(), u.p.into()]).collect();
    Ok(vec![Value::Table(Table { title: format!("Gamma at step {} (mask → token)", r.step), columns: ["pos", "id", "text", "p"].map(String::from).to_vec(), rows })])
}

fn delta(s: &mut Session, _: &Args) -> CmdResult {
    let r = last_report(s)?;
    let rows = r.delta.iter().map(|e| vec![e.pos.into(), e.old_text.clone().into(), op_name(e.kind, &e.new_text).into(), e.p.into()]).collect();
    Ok(vec![Value::Table(Table { title: format!("Delta at step {} (token → token)", r.step), columns: ["pos", "old", "new", "p"].map(String::from).to_vec(), rows })])
}

fn topk(s: &mut Session, a: &Args) -> CmdResult {
    let (pos, k) = (checked(a, "POS"), a.int("K").unwrap_or(5));
    let d = s.decoder()?;
    let Some((top, cur)) = d.top_k_at(pos, k) else {
        let why = match d.last_forward_span() {
            Some(r) => format!("the last forward covered positions {} to {} only", r.start, r.end - 1),
            None => "there was no forward since this decode started or was rewound".to_string(),
        };
        let b = d.settings.block_length;
        let block = d.cursor().block;
        return Err(CommandError::Failed(format!(
            "no distribution at position {pos}: {why}. `step` runs a forward of the current block (block {block}, positions {} to {})",
            block * b,
            (block + 1) * b - 1
        )));
    };
    let current = d.canvas()[pos as usize];
    let l = s.ready()?;
    let tok = &l.tokenizer;
    let edit = l.model.edit_tokens();
    let name = |t: i64| edit_op(t, edit).map(String::from).unwrap_or_else(|| tok.token_text(t));
    let rows = top.iter().map(|(t, p)| vec![(*t).into(), name(*t).into(), (*p).into()]).collect();
    Ok(vec![
        Value::Table(Table { title: format!("Top {k} at position {pos}"), columns: ["id", "text", "p"].map(String::from).to_vec(), rows }),
        msg(format!("now at {pos}: {:?} with p {cur:.4}", tok.token_text(current))),
    ])
}

fn trace(s: &mut Session, _: &Args) -> CmdResult {
    let tok = s.tokenizer()?;
    let reports: Vec<_> = s.decoder()?.reports().cloned().map(|mut r| { r.annotate(tok); r }).collect();
    Ok(vec![steps_table("Trace", &reports, edit_ids(s))])
}

fn block(s: &mut Session, _: &Args) -> CmdResult {
    let d = s.decoder()?;
    let c = d.cursor();
    let b = d.settings.block_length;
    let masks = d.canvas()[(c.block * b) as usize..((c.block + 1) * b) as usize].iter().filter(|&&t| t == d.mask_id()).count();
    Ok(vec![msg(format!(
        "block {} of {} (positions {} to {}): {} masks, {} steps in this block, {} post steps, {} cached positions{}",
        c.block,
        d.num_blocks(),
        c.block * b,
        (c.block + 1) * b - 1,
        masks,
        c.block_step,
        c.post_steps,
        d.cached_len(),
        if c.finished { "; finished" } else { "" }
    ))])
}

fn stats(s: &mut Session, _: &Args) -> CmdResult {
    let d = s.decoder()?;
    let st = d.stats();
    let mut data = serde_json::to_value(&st).unwrap_or_default();
    // The Levenshtein counters only mean something for a decode that can delete and insert: keep them out of
    // a LLaDA2.1 decode's stats unless they are non-zero.
    let lev = d.settings.edit_ops == EditOps::Levenshtein;
    if let Some(obj) = data.as_object_mut() {
        for (key, n) in [("deletions", st.deletions), ("insertions", st.insertions), ("truncated", st.truncated), ("antiloop", st.antiloop)] {
            if !lev && n == 0 {
                obj.remove(key);
            }
        }
    }
    Ok(vec![Value::Data { title: "stats".into(), data }])
}

fn chart(s: &mut Session, _: &Args) -> CmdResult {
    let reports: Vec<_> = s.decoder()?.reports().cloned().collect();
    let series = |name: &str, f: &dyn Fn(&dllm_engine::decode::StepReport) -> f64| Series {
        name: name.into(),
        points: reports.iter().map(|r| (r.step as f64, f(r))).collect(),
    };
    Ok(vec![Value::Chart(Chart {
        title: "Decoding, step by step".into(),
        x_label: "step".into(),
        y_label: "positions".into(),
        series: vec![
            series("masks left in block", &|r| r.masks_left as f64),
            series("|Gamma| (unmasked)", &|r| r.gamma.len() as f64),
            series("|Delta| (edited)", &|r| r.delta.len() as f64),
        ],
    }), confidence_chart(&reports)])
}

/// Confidence by position and step: for each of the last 8 steps, p of every token it wrote, by position.
fn confidence_chart(reports: &[dllm_engine::decode::StepReport]) -> Value {
    let from = reports.len().saturating_sub(8);
    let series = reports[from..]
        .iter()
        .map(|r| {
            let mut points: Vec<(f64, f64)> =
                r.gamma.iter().map(|u| (u.pos as f64, u.p as f64)).chain(r.delta.iter().map(|e| (e.pos as f64, e.p as f64))).collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            Series { name: format!("step {}", r.step), points }
        })
        .collect();
    Value::Chart(Chart { title: "Confidence of each step's writes".into(), x_label: "position".into(), y_label: "p".into(), series })
}

fn poke(s: &mut Session, a: &Args) -> CmdResult {
    let pos = checked(a, "POS");
    let spec = a.text("TOKEN").unwrap_or_default();
    let l = s.ready()?;
    let vocab = l.model.config().vocab_size;
    let id = match spec.strip_prefix('#') {
        Some(n) => n.parse::<i64>().map_err(|_| usage("poke", format!("#ID must be an integer, got {spec:?}")))?,
        None => {
            let ids = l.tokenizer.encode(spec)?;
            if ids.len() != 1 {
                return Err(CommandError::Failed(format!("{spec:?} is {} tokens, not one; use #ID", ids.len())));
            }
            if l.tokenizer.token_text(ids[0]) == "<|unk|>" && spec != "<|unk|>" {
                return Err(CommandError::Failed(format!("{spec:?} is not in the vocabulary; use #ID")));
            }
            ids[0]
        }
    };
    s.decoder_mut()?.set_tokens(&[(pos, id)], vocab)?;
    Ok(vec![msg(format!("position {pos} set to {id}")), s.canvas_value("canvas")?])
}

fn remask(s: &mut Session, a: &Args) -> CmdResult {
    let pos = a.ints("POS");
    s.decoder_mut()?.remask(&pos)?;
    Ok(vec![msg(format!("re-masked {pos:?}")), s.canvas_value("canvas")?])
}

/// Writes `text` to `path` atomically. An existing `path` is replaced only if it is a file this command wrote
/// before (JSON with the top-level key `marker`): a save never destroys what it did not write.
fn write_file(path: &str, text: &str, marker: &str) -> Result<(), CommandError> {
    let p = std::path::Path::new(path);
    if p.exists() {
        let ours = std::fs::read(p).ok().and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok()).is_some_and(|v| v.get(marker).is_some());
        if !p.is_file() || !ours {
            return Err(CommandError::Failed(format!(
                "{path} exists and is not a file this command wrote (JSON with `{marker}`): nothing was written; pick another name, or remove it first"
            )));
        }
    }
    dllm_engine::checkpoint::write_atomic(p, text.as_bytes()).map_err(|e| CommandError::Failed(e.to_string()))
}

fn export(s: &mut Session, a: &Args) -> CmdResult {
    let path = a.text("FILE").unwrap_or_default();
    let json = serde_json::to_string_pretty(&s.decoder()?.trace_json()).unwrap_or_default();
    write_file(path, &json, "steps")?;
    Ok(vec![msg(format!("trace written to {path}"))])
}

fn save(s: &mut Session, a: &Args) -> CmdResult {
    let path = a.text("FILE").unwrap_or_default();
    let json = crate::persist::to_json(s);
    write_file(path, &serde_json::to_string_pretty(&json).unwrap_or_default(), "dllm_session")?;
    Ok(vec![msg(format!("session saved to {path} ({} branches)", s.branches.len()))])
}

fn open(s: &mut Session, a: &Args) -> CmdResult {
    let path = a.text("FILE").unwrap_or_default();
    let text = std::fs::read_to_string(path).map_err(|e| CommandError::Failed(format!("{path}: {e}")))?;
    crate::persist::restore(s, &text).map_err(|e| CommandError::Failed(format!("{path}: {e}")))?;
    Ok(vec![msg(format!("session reopened from {path}: branches {}, on `{}`", s.branch_names().join(", "), s.current))])
}

fn source(s: &mut Session, a: &Args) -> CmdResult {
    let path = a.text("FILE").unwrap_or_default();
    let text = std::fs::read_to_string(path).map_err(|e| CommandError::Failed(format!("{path}: {e}")))?;
    let mut out = Vec::new();
    for (i, item) in crate::script::script_items(&text).into_iter().enumerate() {
        let (line, n) = (item.command.as_str(), item.line.unwrap_or(0));
        if s.interrupt_flag().load(std::sync::atomic::Ordering::SeqCst) {
            return Err(CommandError::Interrupted);
        }
        // By the command the word names, so the `script` alias cannot recurse either.
        if find(crate::parse::split_command(line).0).is_some_and(|c| c.name == "source") {
            return Err(CommandError::Failed(format!("{path}:{n}: scripts cannot `source` other scripts")));
        }
        match s.execute(line) {
            Ok(v) => out.extend(v),
            // The first line is not a command: most likely not a script at all, so its text is not repeated
            // (it could be anything, a key or a password).
            Err(CommandError::Unknown { .. }) if i == 0 => {
                return Err(CommandError::Failed(format!("{path}:{n}: not a dllm command; is {path} a script of dllm commands? Nothing ran")))
            }
            Err(e) => return Err(CommandError::Failed(format!("{path}:{n}: `{line}`: {e}"))),
        }
    }
    Ok(out)
}

fn sweep(s: &mut Session, a: &Args) -> CmdResult {
    let name = a.text("NAME").unwrap_or_default();
    let prompt = s.prompt.clone().ok_or_else(|| CommandError::Failed("no prompt: `prompt TEXT` first".into()))?;
    let base = s.settings.clone();
    let mut configs = Vec::new();
    for v in a.texts("VALUE") {
        let mut st = base.clone();
        st.set(name, v)?;
        configs.push((v.to_string(), st));
    }
    let flag = s.interrupt_flag();
    let l = s.ready()?;
    let mut rows = Vec::new();
    for (v, st) in configs {
        let mut d = Decoder::new(&prompt, st, l.tokenizer.mask_id, l.tokenizer.eos_id, &l.model)?;
        while d.step(&l.model)?.is_some() {
            if flag.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(CommandError::Interrupted);
            }
        }
        let st = d.stats();
        rows.push(vec![v.into(), st.forwards.into(), st.tpf.into(), st.edits.into(), st.fallbacks.into(), l.tokenizer.decode(&d.output()).into()]);
    }
    Ok(vec![Value::Table(Table {
        title: format!("sweep of {name}"),
        columns: [name, "steps", "TPF", "edits", "fallbacks", "output"].map(String::from).to_vec(),
        rows,
    })])
}
