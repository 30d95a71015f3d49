//! Evaluation on the held-out split of the task suite ([`crate::tasks`]): accuracy, tokens per forward (TPF),
//! forwards and edits per instance, per task and over all tasks.
//!
//! Instances are decoded in batches with [`BatchDecoder`] (each row exactly as decoded alone); multi-block
//! editing is not available in batches, so with `mbe_window > 0` every instance is decoded alone.
//!
//! The ceiling TPF is what a model confident above the threshold on every position would reach on the same
//! rows: every block it decodes costs one forward that unmasks the whole block plus, when editing is on (and
//! `max_post_steps > 0`), one forward that confirms the fixed point. Per task it is
//! sum tokens / sum (forwards per block x blocks decoded).

use std::time::Instant;

use serde::{Serialize, Serializer};

use crate::decode::{BatchDecoder, DecodeSettings, Decoder, Denoiser, Stats};
use crate::error::{Error, Result};
use crate::tasks::{instances, response_text, Example, Task, HELD_OUT_SEED};
use crate::tokenizer::Tokenizer;

/// Rows per batched decode when the caller has no preference.
pub const DEFAULT_BATCH: usize = 64;
/// Wrong answers kept per task in a report.
pub const MAX_FAILURES: usize = 3;

/// What to evaluate: the first `n` held-out instances of each task (with `hard`, the first `n` of the hard
/// level: answers of at least [`HARD_ANSWER`] characters), decoded under `settings`, `batch` rows at a time.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub tasks: Vec<Task>,
    pub n: usize,
    pub settings: DecodeSettings,
    pub batch: usize,
    pub hard: bool,
}

/// The shortest answer of the hard level (letters and digits strings of 9-10 characters; `expand` answers as
/// long; `add` has none).
pub const HARD_ANSWER: usize = 9;

impl EvalOptions {
    /// Checks the options (tasks, n, batch, settings); the error names the field.
    pub fn validate(&self) -> Result<()> {
        if self.tasks.is_empty() {
            return Err(Error::invalid("tasks", "", "give at least one task"));
        }
        if self.n == 0 {
            return Err(Error::invalid("n", 0, "must be at least 1 instance per task"));
        }
        if self.batch == 0 {
            return Err(Error::invalid("batch", 0, "must be at least 1 row"));
        }
        if self.hard && self.tasks.contains(&Task::Add) {
            return Err(Error::invalid("tasks", "add", "add has no hard level (its answers have at most 4 digits); leave it out with --hard"));
        }
        self.settings.validate()
    }
}

/// The decoding settings an evaluation ran under (the parts that change its numbers).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SettingsSummary {
    /// The preset the settings started from; the engine does not know it, the caller fills it in.
    pub preset: Option<String>,
    pub threshold: f64,
    /// tau_edit, or `"off"`.
    #[serde(serialize_with = "number_or_off")]
    pub edit_threshold: Option<f64>,
    pub max_post_steps: i64,
    pub gen_length: i64,
    pub block_length: i64,
    pub mbe_window: i64,
    pub eos_early_stop: bool,
}

impl SettingsSummary {
    pub fn of(s: &DecodeSettings) -> SettingsSummary {
        SettingsSummary {
            preset: None,
            threshold: s.threshold,
            edit_threshold: s.edit_threshold(),
            max_post_steps: s.max_post_steps,
            gen_length: s.gen_length,
            block_length: s.block_length,
            mbe_window: s.mbe_window,
            eos_early_stop: s.eos_early_stop,
        }
    }
}

fn number_or_off<S: Serializer>(v: &Option<f64>, s: S) -> std::result::Result<S::Ok, S::Error> {
    match v {
        Some(t) => s.serialize_f64(*t),
        None => s.serialize_str("off"),
    }
}

/// One wrong answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Failure {
    /// The user text of the instance.
    pub text: String,
    /// The decoded response (before the first EOS).
    pub response: String,
    /// The accepted answers, joined by ` or `.
    pub expected: String,
}

/// One task's numbers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskReport {
    pub task: Task,
    pub n: usize,
    pub correct: usize,
    /// correct / n, a fraction in 0..=1.
    pub accuracy: f64,
    /// Sum of decoded tokens / sum of forwards.
    pub tpf: f64,
    /// Mean forwards per instance.
    pub steps: f64,
    /// Mean edits (Delta writes) per instance.
    pub edits: f64,
    /// Mean DELETE and SPLIT (INSERT) writes per instance (Levenshtein decoding; 0 otherwise).
    pub deletions: f64,
    pub insertions: f64,
    /// Sum of decoded tokens / sum of the forwards a confident model would need for the same blocks.
    pub ceiling_tpf: f64,
    /// Up to [`MAX_FAILURES`] wrong answers, in instance order.
    pub failures: Vec<Failure>,
}

/// An evaluation's numbers: totals first, then the settings, then each task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalReport {
    /// Correct answers / instances over all tasks, a fraction in 0..=1.
    pub accuracy: f64,
    /// Decoded tokens / forwards over all instances.
    pub tpf: f64,
    pub ceiling_tpf: f64,
    /// Mean forwards per instance.
    pub steps: f64,
    /// Mean edits per instance.
    pub edits: f64,
    /// Mean DELETE and SPLIT writes per instance.
    pub deletions: f64,
    pub insertions: f64,
    pub correct: usize,
    pub total: usize,
    /// Instances per task.
    pub n: usize,
    /// Wall-clock seconds of the decoding (tokenizing included, model loading not).
    pub seconds: f64,
    pub settings: SettingsSummary,
    pub tasks: Vec<TaskReport>,
}

/// Evaluates `model` on the first `opts.n` held-out instances of each task. Takes a [`crate::Model`] (or any
/// other [`Denoiser`]).
pub fn evaluate(model: &dyn Denoiser, tok: &Tokenizer, opts: &EvalOptions) -> Result<EvalReport> {
    let alone = opts.settings.mbe_window > 0;
    Ok(run(model, tok, opts, alone)?.0)
}

/// One decoded instance.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) output: Vec<i64>,
    stats: Stats,
    /// Blocks the decoder ran at least one forward on.
    blocks: i64,
}

impl Row {
    fn of(d: &Decoder) -> Row {
        let mut blocks: Vec<i64> = d.reports().map(|r| r.block).collect();
        blocks.dedup();
        Row { output: d.output(), stats: d.stats(), blocks: blocks.len() as i64 }
    }
}

/// One instance's outcome.
#[derive(Debug, Clone)]
struct Outcome {
    example: Example,
    response: String,
    correct: bool,
    row: Row,
}

/// The evaluation, decoding each instance alone or in batches; also returns every instance's outcome.
fn run(model: &dyn Denoiser, tok: &Tokenizer, opts: &EvalOptions, alone: bool) -> Result<(EvalReport, Vec<Outcome>)> {
    opts.validate()?;
    let t0 = Instant::now();
    let examples: Vec<Example> = opts.tasks.iter().flat_map(|&t| held_out(t, opts.n, opts.hard)).collect();
    let prompts = examples.iter().map(|ex| tok.encode(&ex.prompt())).collect::<Result<Vec<_>>>()?;
    let rows = if alone {
        prompts.iter().map(|p| decode_alone(model, tok, p, &opts.settings)).collect::<Result<Vec<_>>>()?
    } else {
        decode_batched(model, tok, &prompts, &opts.settings, opts.batch, None)?
    };
    let outcomes: Vec<Outcome> = examples
        .into_iter()
        .zip(rows)
        .map(|(example, row)| {
            let response = response_text(tok, &row.output);
            let correct = example.verify(&response);
            Outcome { example, response, correct, row }
        })
        .collect();
    let per_block = forwards_per_confident_block(&opts.settings);
    let mut tasks = Vec::new();
    for &task in &opts.tasks {
        let of_task: Vec<&Outcome> = outcomes.iter().filter(|o| o.example.task == task).collect();
        let t = Totals::of(&of_task, per_block);
        let failures = of_task
            .iter()
            .filter(|o| !o.correct)
            .take(MAX_FAILURES)
            .map(|o| Failure { text: o.example.text.clone(), response: o.response.clone(), expected: o.example.answers.join(" or ") })
            .collect();
        tasks.push(TaskReport {
            task,
            n: of_task.len(),
            correct: t.correct,
            accuracy: t.accuracy(),
            tpf: t.tpf(),
            steps: t.steps(),
            edits: t.edits(),
            deletions: ratio(t.deletions as f64, t.count as f64),
            insertions: ratio(t.insertions as f64, t.count as f64),
            ceiling_tpf: t.ceiling_tpf(),
            failures,
        });
    }
    let all = Totals::of(&outcomes.iter().collect::<Vec<_>>(), per_block);
    let report = EvalReport {
        accuracy: all.accuracy(),
        tpf: all.tpf(),
        ceiling_tpf: all.ceiling_tpf(),
        steps: all.steps(),
        edits: all.edits(),
        deletions: ratio(all.deletions as f64, all.count as f64),
        insertions: ratio(all.insertions as f64, all.count as f64),
        correct: all.correct,
        total: all.count,
        n: opts.n,
        seconds: t0.elapsed().as_secs_f64(),
        settings: SettingsSummary::of(&opts.settings),
        tasks,
    };
    Ok((report, outcomes))
}

/// The first `n` held-out instances of `task`, or of its hard level.
fn held_out(task: Task, n: usize, hard: bool) -> Vec<Example> {
    if !hard {
        return instances(task, HELD_OUT_SEED, n);
    }
    // About 1 in 8 instances is hard: draw enough of the same stream and keep those.
    let mut m = 16 * n;
    loop {
        let h: Vec<Example> = instances(task, HELD_OUT_SEED, m).into_iter().filter(|e| e.answers[0].len() >= HARD_ANSWER).take(n).collect();
        if h.len() == n || m > 1 << 22 {
            return h;
        }
        m *= 2;
    }
}

/// Forwards per block of a model confident above the threshold everywhere: one that unmasks the block, plus
/// one that confirms the fixed point when editing is on (with editing off, or no post steps allowed, a block
/// ends as soon as it has no mask).
fn forwards_per_confident_block(s: &DecodeSettings) -> i64 {
    if s.edit_threshold().is_some() && s.max_post_steps > 0 {
        2
    } else {
        1
    }
}

/// Sums over a set of outcomes.
struct Totals {
    count: usize,
    correct: usize,
    tokens: i64,
    forwards: i64,
    edits: i64,
    deletions: i64,
    insertions: i64,
    ceiling_forwards: i64,
}

impl Totals {
    fn of(outcomes: &[&Outcome], per_block: i64) -> Totals {
        let mut t = Totals { count: outcomes.len(), correct: 0, tokens: 0, forwards: 0, edits: 0, deletions: 0, insertions: 0, ceiling_forwards: 0 };
        for o in outcomes {
            t.correct += usize::from(o.correct);
            t.tokens += o.row.stats.tokens;
            t.forwards += o.row.stats.forwards;
            t.edits += o.row.stats.edits;
            t.deletions += o.row.stats.deletions as i64;
            t.insertions += o.row.stats.insertions as i64;
            t.ceiling_forwards += per_block * o.row.blocks;
        }
        t
    }

    fn accuracy(&self) -> f64 {
        ratio(self.correct as f64, self.count as f64)
    }
    fn tpf(&self) -> f64 {
        ratio(self.tokens as f64, self.forwards as f64)
    }
    fn ceiling_tpf(&self) -> f64 {
        ratio(self.tokens as f64, self.ceiling_forwards as f64)
    }
    fn steps(&self) -> f64 {
        ratio(self.forwards as f64, self.count as f64)
    }
    fn edits(&self) -> f64 {
        ratio(self.edits as f64, self.count as f64)
    }
}

/// a / b, or 0 when b is 0 (JSON has no NaN).
fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        0.0
    } else {
        a / b
    }
}

fn decode_alone(model: &dyn Denoiser, tok: &Tokenizer, prompt: &[i64], settings: &DecodeSettings) -> Result<Row> {
    let mut d = Decoder::new(prompt, settings.clone(), tok.mask_id, tok.eos_id, model)?;
    d.run(model)?;
    Ok(Row::of(&d))
}

/// Decodes `prompts` `batch` rows at a time; rows of similar prompt length share a batch (they start on the
/// same block, so fewer rows wait). Results are in the order of `prompts`.
pub(crate) fn decode_batched(
    model: &dyn Denoiser,
    tok: &Tokenizer,
    prompts: &[Vec<i64>],
    settings: &DecodeSettings,
    batch: usize,
    interrupt: Option<&std::sync::atomic::AtomicBool>,
) -> Result<Vec<Row>> {
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    order.sort_by_key(|&i| prompts[i].len());
    let mut rows: Vec<Option<Row>> = vec![None; prompts.len()];
    for chunk in order.chunks(batch) {
        let group: Vec<Vec<i64>> = chunk.iter().map(|&i| prompts[i].clone()).collect();
        let mut b = BatchDecoder::new(&group, settings.clone(), tok.mask_id, tok.eos_id, model)?;
        b.run_until(model, interrupt)?;
        for (&i, d) in chunk.iter().zip(b.rows()) {
            rows[i] = Some(Row::of(d));
        }
    }
    Ok(rows.into_iter().map(|r| r.expect("every prompt decoded")).collect())
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::path::Path;

    use tch::{Device, Tensor};

    use super::*;
    use crate::model::{BlockMask, KvCache};
    use crate::shapes::{shape, random_model, tokenizer_spec};
    use crate::tasks::{BLOCK_LENGTH, GEN_LENGTH, TASKS};
    use crate::DType;

    fn tokenizer() -> Tokenizer {
        let cfg = shape("micro").unwrap();
        let json = serde_json::to_vec(&tokenizer_spec(cfg.vocab_size).to_json()).unwrap();
        Tokenizer::from_bytes(&json, Path::new("tokenizer.json"), &cfg).unwrap()
    }

    fn settings(preset: &str) -> DecodeSettings {
        let mut s = DecodeSettings::official(GEN_LENGTH);
        s.block_length = BLOCK_LENGTH;
        s.apply_preset(preset).unwrap();
        s.eos_early_stop = true;
        s
    }

    #[test]
    fn the_hard_level_is_the_long_answers_of_the_same_stream() {
        let h = held_out(Task::Copy, 20, true);
        assert_eq!(h.len(), 20);
        assert!(h.iter().all(|e| e.answers[0].len() >= HARD_ANSWER));
        assert_eq!(h, held_out(Task::Copy, 20, true), "deterministic");
        let all = instances(Task::Copy, HELD_OUT_SEED, 400);
        assert!(h.iter().all(|e| all.contains(e)), "drawn from the held-out stream");
        let mut o = opts(&[Task::Add], 2, DecodeSettings::official(GEN_LENGTH), 4);
        o.hard = true;
        assert!(o.validate().unwrap_err().to_string().contains("add has no hard level"));
    }

    fn opts(tasks: &[Task], n: usize, settings: DecodeSettings, batch: usize) -> EvalOptions {
        EvalOptions { tasks: tasks.to_vec(), n, settings, batch, hard: false }
    }

    /// A model that knows every held-out answer: it reads the user text from the canvas (mirrored from the
    /// ids it is given, as later forwards see only the current block) and puts probability ~1 on the answer's
    /// tokens, then EOS. `wrong` tasks get the user text's argument unchanged instead (wrong for `reverse`).
    struct Oracle {
        answers: HashMap<String, String>,
        wrong: Vec<Task>,
        tok: Tokenizer,
        canvases: RefCell<Vec<Vec<i64>>>,
    }

    impl Oracle {
        fn new(tasks: &[Task], n: usize, wrong: &[Task]) -> Oracle {
            let mut answers = HashMap::new();
            for &t in tasks {
                for ex in instances(t, HELD_OUT_SEED, n) {
                    let answer = if wrong.contains(&t) { ex.text.split_once(' ').unwrap().1.to_string() } else { ex.answers[0].clone() };
                    answers.insert(ex.text, answer);
                }
            }
            Oracle { answers, wrong: wrong.to_vec(), tok: tokenizer(), canvases: RefCell::new(Vec::new()) }
        }

        /// The token the oracle predicts at `pos` of a canvas (its known part).
        fn predict(&self, canvas: &[i64], pos: usize) -> i64 {
            let id = |s: &str| self.tok.encode(s).unwrap()[0];
            let (human, end, assistant) = (id("<role>HUMAN</role>"), id("<|role_end|>"), id("<role>ASSISTANT</role>"));
            let find = |t: i64| canvas.iter().position(|&c| c == t);
            let (Some(h), Some(e), Some(a)) = (find(human), find(end), find(assistant)) else { return canvas[pos] };
            if pos <= a {
                return canvas[pos];
            }
            let text = self.tok.decode(&canvas[h + 1..e]);
            let answer = self.tok.encode(&self.answers[&text]).unwrap();
            answer.get(pos - a - 1).copied().unwrap_or(self.tok.eos_id)
        }
    }

    impl Denoiser for Oracle {
        fn vocab_size(&self) -> i64 {
            128
        }
        fn max_positions(&self) -> i64 {
            4096
        }
        fn forward(&self, ids: &Tensor, start: i64, _cache: &mut KvCache, commit: i64, _mask: BlockMask) -> Result<Tensor> {
            let (b, len) = (ids.size()[0], ids.size()[1]);
            let mut canvases = self.canvases.borrow_mut();
            if start == 0 {
                *canvases = vec![Vec::new(); b as usize];
            }
            let mut logits = vec![0f32; (b * (len - commit) * 128) as usize];
            for r in 0..b {
                let row: Vec<i64> = Vec::try_from(&ids.get(r)).unwrap();
                let c = &mut canvases[r as usize];
                c.truncate(start as usize);
                c.extend(row);
                for i in commit..len {
                    let tok = self.predict(c, (start + i) as usize);
                    logits[((r * (len - commit) + i - commit) * 128 + tok) as usize] = 30.0;
                }
            }
            Ok(Tensor::from_slice(&logits).view([b, len - commit, 128]))
        }
    }

    #[test]
    fn batched_evaluation_equals_decoding_each_instance_alone() {
        let cfg = shape("micro").unwrap();
        let model = random_model(&cfg, 11, Device::Cpu, DType::F32).unwrap();
        let tok = tokenizer();
        for p in ["Q", "S"] {
            let o = opts(&[Task::Copy, Task::Add, Task::Order], 2, settings(p), 4);
            let (batched, rows) = run(&model, &tok, &o, false).unwrap();
            let (single, alone) = run(&model, &tok, &o, true).unwrap();
            assert_eq!(rows.len(), 6);
            for (i, (a, b)) in rows.iter().zip(&alone).enumerate() {
                assert_eq!(a.example, b.example);
                assert_eq!(a.row.output, b.row.output, "{p}: instance {i}");
                assert_eq!((a.correct, a.row.stats.forwards, a.row.stats.edits, a.row.blocks), (b.correct, b.row.stats.forwards, b.row.stats.edits, b.row.blocks), "{p}: instance {i}");
                assert_eq!((a.row.stats.tokens, a.row.stats.unmasked), (b.row.stats.tokens, b.row.stats.unmasked), "{p}: instance {i}");
            }
            if p == "S" {
                assert!(rows.iter().any(|o| o.row.stats.edits > 0), "S mode edits even on a random model");
            }
            assert_eq!(EvalReport { seconds: 0.0, ..batched }, EvalReport { seconds: 0.0, ..single }, "{p}");
        }
    }

    #[test]
    fn report_totals_are_consistent_with_the_instances() {
        let cfg = shape("micro").unwrap();
        let model = random_model(&cfg, 5, Device::Cpu, DType::F32).unwrap();
        let tok = tokenizer();
        let o = opts(&[Task::Reverse, Task::Sort], 3, settings("Q"), 64);
        let (r, outcomes) = run(&model, &tok, &o, false).unwrap();
        assert_eq!((r.n, r.total, r.tasks.len()), (3, 6, 2));
        let sum = |f: &dyn Fn(&Outcome) -> i64| outcomes.iter().map(f).sum::<i64>() as f64;
        let (tokens, forwards) = (sum(&|o| o.row.stats.tokens), sum(&|o| o.row.stats.forwards));
        assert!(forwards > 0.0);
        assert_eq!(r.correct, outcomes.iter().filter(|o| o.correct).count());
        assert_eq!(r.accuracy, r.correct as f64 / 6.0);
        assert_eq!(r.tpf, tokens / forwards);
        assert_eq!(r.steps, forwards / 6.0);
        assert_eq!(r.ceiling_tpf, tokens / sum(&|o| 2 * o.row.blocks));
        assert_eq!(r.tasks.iter().map(|t| t.correct).sum::<usize>(), r.correct);
        for t in &r.tasks {
            assert_eq!(t.n, 3);
            assert_eq!(t.accuracy, t.correct as f64 / 3.0);
            let mine: Vec<&Outcome> = outcomes.iter().filter(|o| o.example.task == t.task).collect();
            let s = |f: &dyn Fn(&Outcome) -> i64| mine.iter().map(|o| f(o)).sum::<i64>() as f64;
            assert_eq!(t.tpf, s(&|o| o.row.stats.tokens) / s(&|o| o.row.stats.forwards));
            assert_eq!(t.edits, s(&|o| o.row.stats.edits) / 3.0);
            assert_eq!(t.failures.len(), (3 - t.correct).min(MAX_FAILURES));
        }
        for o in &outcomes {
            assert!((1..=3).contains(&o.row.blocks), "a 16-token window after the prompt spans at most 3 blocks of 8: {}", o.row.blocks);
        }
    }

    #[test]
    fn json_puts_accuracy_and_tpf_first_and_tasks_after() {
        let tok = tokenizer();
        let oracle = Oracle::new(&[Task::Copy], 2, &[]);
        let mut s = settings("Q");
        s.set("edit_threshold", "off").unwrap();
        let mut r = evaluate(&oracle, &tok, &opts(&[Task::Copy], 2, s, 64)).unwrap();
        r.settings.preset = Some("Q".into());
        let text = serde_json::to_string(&r).unwrap();
        let pos = |k: &str| text.find(&format!("\"{k}\":")).unwrap_or_else(|| panic!("{k} in {text}"));
        assert!(text.starts_with("{\"accuracy\":"), "{text}");
        assert!(pos("accuracy") < pos("tpf") && pos("tpf") < pos("ceiling_tpf"), "{text}");
        assert!(pos("settings") < pos("tasks") && pos("seconds") < pos("tasks"), "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["settings"]["edit_threshold"], "off");
        assert_eq!(v["settings"]["preset"], "Q");
        assert_eq!(v["tasks"][0]["task"], "copy");
        assert_eq!(v["tasks"][0]["n"], 2);
    }

    #[test]
    fn an_oracle_is_counted_correct_and_reaches_the_ceiling() {
        let tok = tokenizer();
        let oracle = Oracle::new(&TASKS, 4, &[Task::Reverse]);
        let mut off = settings("Q");
        off.set("edit_threshold", "off").unwrap();
        let mut mbe = settings("S");
        mbe.set("mbe_window", "1").unwrap();
        for s in [settings("Q"), off, mbe] {
            let r = evaluate(&oracle, &tok, &opts(&TASKS, 4, s.clone(), 3)).unwrap();
            assert_eq!((r.total, r.correct), (20, 16), "{s:?}");
            assert_eq!(r.accuracy, 0.8);
            for t in &r.tasks {
                let wrong = oracle.wrong.contains(&t.task);
                assert_eq!(t.correct, if wrong { 0 } else { 4 }, "{:?}", t.task);
                assert_eq!(t.edits, 0.0);
                assert!((t.tpf - t.ceiling_tpf).abs() < 1e-12, "a confident model decodes at the ceiling: {t:?}");
                if wrong {
                    assert_eq!(t.failures.len(), MAX_FAILURES);
                    let f = &t.failures[0];
                    assert_eq!(format!("reverse {}", f.response), f.text);
                    assert_eq!(f.expected, f.response.chars().rev().collect::<String>());
                } else {
                    assert!(t.failures.is_empty());
                }
            }
            let per_block = if s.edit_threshold().is_some() { 2.0 } else { 1.0 };
            assert!(r.steps >= per_block && r.steps <= per_block * 3.0, "{}", r.steps);
        }
    }

    #[test]
    fn bad_options_name_the_field() {
        let tok = tokenizer();
        let oracle = Oracle::new(&[], 0, &[]);
        let err = |o: EvalOptions| evaluate(&oracle, &tok, &o).unwrap_err().to_string();
        assert!(err(opts(&[], 2, settings("Q"), 8)).contains("tasks"));
        assert!(err(opts(&[Task::Copy], 0, settings("Q"), 8)).contains("invalid n"));
        assert!(err(opts(&[Task::Copy], 2, settings("Q"), 0)).contains("invalid batch"));
    }
}
