//! The embedded models (engine/assets/tiny and tiny-2.2, trained by `dllm train --preset tiny` / `tiny-2.2`):
//! fixed lower bounds on a fixed held-out set, the teaching claim of the ambiguous task (editing repairs parallel
//! drafts), and the LLaDA2.2 model's (DELETE and INSERT repair what substitution leaves, on `rle` and `order`).

use dllm_engine::decode::{DecodeSettings, Editing};
use dllm_engine::eval::{evaluate, EvalOptions, EvalReport};
use dllm_engine::tasks::{Task, ALL_TASKS, BLOCK_LENGTH, GEN_LENGTH, TASKS};
use tch::Device;

fn settings(preset: &str) -> DecodeSettings {
    let mut s = DecodeSettings::official(GEN_LENGTH);
    s.block_length = BLOCK_LENGTH;
    s.apply_preset(preset).unwrap();
    s.eos_early_stop = true;
    s
}

fn eval(tasks: &[Task], n: usize, settings: DecodeSettings) -> EvalReport {
    eval_on(dllm_engine::BUILTIN, tasks, n, settings)
}

fn eval_on(model: &str, tasks: &[Task], n: usize, settings: DecodeSettings) -> EvalReport {
    let l = dllm_engine::load_embedded(model, Device::Cpu, None).unwrap();
    evaluate(&l.model, &l.tokenizer, &EvalOptions { tasks: tasks.to_vec(), n, settings, batch: 64, hard: false }).unwrap()
}

fn accuracy(r: &EvalReport, task: &str) -> f64 {
    r.tasks.iter().find(|t| t.task.name() == task).unwrap().accuracy
}

#[test]
fn the_embedded_model_solves_the_held_out_tasks_in_q_mode() {
    tch::set_num_threads(1);
    let r = eval(&TASKS, 40, settings("Q"));
    // Bounds just under what the shipped model scores on these 40 instances (100% on all but order, 95%;
    // docs/training.md has the 250-instance numbers): a regression in the model, decoder or loader shows here.
    for (task, bound) in [("copy", 0.975), ("reverse", 0.975), ("sort", 0.975), ("add", 0.95), ("order", 0.875)] {
        assert!(accuracy(&r, task) >= bound, "{task}: {:.3} < {bound}\n{r:#?}", accuracy(&r, task));
    }
}

#[test]
fn editing_repairs_parallel_drafts_on_the_ambiguous_task() {
    tch::set_num_threads(1);
    let with = eval(&[Task::Order], 80, settings("S"));
    let mut off = settings("S");
    off.editing = Editing::Off;
    let without = eval(&[Task::Order], 80, off);
    // Measured on these 80 instances: 78.8% with editing, 35.0% without.
    let gain = with.accuracy - without.accuracy;
    assert!(gain >= 0.25, "S mode on `order`: {:.3} with editing, {:.3} without", with.accuracy, without.accuracy);
    assert!(with.tasks[0].edits > 0.0, "the gain comes from edits");
}

#[test]
fn the_llada22_model_decodes_the_held_out_tasks_with_levenshtein_edits() {
    tch::set_num_threads(1);
    let r = eval_on("builtin:tiny-2.2", &ALL_TASKS, 40, settings("llada2.2"));
    // Bounds just under what the shipped model scores on these 40 instances (100% on copy, reverse, sort, add
    // and expand, 77.5% order, 97.5% dedup, 87.5% rle; docs/training.md has the 250-instance numbers).
    let bounds = [
        ("copy", 0.975),
        ("reverse", 0.975),
        ("sort", 0.975),
        ("add", 0.95),
        ("order", 0.725),
        ("dedup", 0.95),
        ("expand", 0.975),
        ("rle", 0.825),
    ];
    for (task, bound) in bounds {
        assert!(accuracy(&r, task) >= bound, "{task}: {:.3} < {bound}\n{r:#?}", accuracy(&r, task));
    }
}

#[test]
fn delete_and_insert_repair_what_substitution_leaves() {
    tch::set_num_threads(1);
    // `rle` has two right answers one place apart after the first run of one letter (`o4r1x1m2`, `o4rxm2`): a
    // parallel draft that takes positions from both holds a letter twice or nowhere, which one DELETE or INSERT
    // repairs and substitution only by rewriting the rest. `order`'s mixed drafts are often one answer shifted by
    // a slot. (The model drafts `dedup` and `expand` right in length, so they show little: docs/training.md.)
    // Measured on these 250 instances, with DELETE / INSERT against substitution only: rle 85.6% against 72.8%
    // (the goal is +10 points), order 83.6% against 69.6%.
    for (task, gain) in [(Task::Rle, 0.10), (Task::Order, 0.08)] {
        let lev = eval_on("builtin:tiny-2.2", &[task], 250, settings("llada2.2"));
        let mut s = settings("llada2.2");
        s.set("edit_ops", "substitute").unwrap();
        let sub = eval_on("builtin:tiny-2.2", &[task], 250, s);
        assert!(lev.accuracy - sub.accuracy >= gain, "{task:?}: Levenshtein {:.3}, substitution {:.3}", lev.accuracy, sub.accuracy);
        assert!(lev.deletions > 0.3 && lev.insertions > 0.3, "{task:?}: the gain comes from DELETE and INSERT: {lev:#?}");
        assert_eq!((sub.deletions, sub.insertions), (0.0, 0.0));
    }
}
