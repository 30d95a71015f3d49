//! The embedded model (engine/assets/tiny, trained by `dllm train --preset tiny`): fixed lower bounds on a fixed
//! held-out set, and the teaching claim of the ambiguous task (editing repairs parallel drafts).

use dllm_engine::decode::{DecodeSettings, Editing};
use dllm_engine::eval::{evaluate, EvalOptions, EvalReport};
use dllm_engine::tasks::{Task, BLOCK_LENGTH, GEN_LENGTH, TASKS};
use tch::Device;

fn settings(preset: &str) -> DecodeSettings {
    let mut s = DecodeSettings::official(GEN_LENGTH);
    s.block_length = BLOCK_LENGTH;
    s.apply_preset(preset).unwrap();
    s.eos_early_stop = true;
    s
}

fn eval(tasks: &[Task], n: usize, settings: DecodeSettings) -> EvalReport {
    let l = dllm_engine::load_builtin(Device::Cpu, None).unwrap();
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
