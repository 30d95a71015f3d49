//! EBPO updates on the embedded model: the ratio under shared noise, trainable subsets, LoRA, rejection of
//! failed updates, and a fixed-seed run that raises the reward.

use dllm_engine::shapes::{shape, random_model, write_checkpoint};
use dllm_engine::rl::{held_out_reward, log_ratios, Reward, Rl, RlConfig, RlPrompt, Snapshot, Trainable};
use dllm_engine::tasks::Task;
use dllm_engine::{BlockMask, DType, KvCache, Loaded, Model};
use tch::{Device, Kind, Tensor};

fn builtin() -> Loaded {
    tch::set_num_threads(1);
    dllm_engine::load_builtin(Device::Cpu, None).unwrap()
}

/// RL on `order` rewarded for the canonical (ascending) answer: the embedded model picks it about half the time.
fn order_config(trainable: &str) -> RlConfig {
    RlConfig { tasks: vec![Task::Order], reward: Reward::parse("exact").unwrap(), trainable: Trainable::parse(trainable).unwrap(), ..RlConfig::default() }
}

fn bytes(params: &[(String, Tensor)]) -> Vec<Vec<u8>> {
    params
        .iter()
        .map(|(_, t)| {
            let t = t.detach().contiguous();
            let mut b = vec![0u8; t.numel() * 4];
            t.to_kind(Kind::Float).copy_data_u8(&mut b, t.numel());
            b
        })
        .collect()
}

fn logits(m: &Model, ids: &Tensor) -> Tensor {
    m.forward(ids, &mut KvCache::new(), 0, BlockMask::block_causal(4)).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn lora_starts_as_identity_merges_exactly_and_saves_merged() {
    let c = shape("micro").unwrap();
    let mut m = random_model(&c, 3, Device::Cpu, DType::F32).unwrap();
    let ids = Tensor::from_slice(&[5i64, 9, 17, 3, 8, 2, 11, 4]).view([1, 8]);
    let base = logits(&m, &ids);
    let planned = m.lora_parameters(4);
    m.attach_lora(4, 8.0, 1).unwrap();
    assert_eq!(m.lora().unwrap().num_parameters(), planned, "the memory check counts what attaching makes");
    assert_eq!(max_diff(&base, &logits(&m, &ids)), 0.0, "B = 0: attaching changes nothing");
    // Train-like change of every B.
    tch::no_grad(|| {
        for (_, t) in m.lora().unwrap().variables() {
            let mut t = t;
            let _ = t.g_add_(&(t.randn_like() * 0.05));
        }
    });
    let adapted = logits(&m, &ids);
    assert!(max_diff(&base, &adapted) > 1e-3, "trained adapters change the outputs");
    // A checkpoint of the adapted model holds the merged weights.
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(&m, dir.path(), dllm_engine::checkpoint::SaveOptions { dtype: DType::F32, fused_experts: false, shard_bytes: None }).unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), serde_json::to_string(&dllm_engine::shapes::tokenizer_spec(c.vocab_size).to_json()).unwrap()).unwrap();
    let reloaded = dllm_engine::load(dir.path(), Device::Cpu, None).unwrap();
    assert!(max_diff(&adapted, &logits(&reloaded.model, &ids)) < 1e-4);
    assert!(m.merge_lora());
    assert!(m.lora().is_none());
    assert!(max_diff(&adapted, &logits(&m, &ids)) < 1e-4, "merged = adapted");
}

#[test]
fn the_ratio_is_exactly_one_under_the_same_noise_and_parameters() {
    let mut l = builtin();
    let mut rl = Rl::new(&mut l.model, order_config("all")).unwrap();
    let (_, rollouts) = rl.rollouts(&l.model, &l.tokenizer, 0).unwrap();
    let same = rl.snapshot();
    let zero = log_ratios(&rl, &l.model, &l.tokenizer, &rollouts, &same, 7).unwrap();
    assert!(zero.iter().all(|&x| x == 0.0), "{zero:?}");
    // In an update theta_old is the policy before it: the first epoch sees rho = 1 exactly.
    let m = rl.update(&l.model, &l.tokenizer).unwrap();
    assert!(m.trained > 0, "the groups must disagree for this test to mean anything: {m:?}");
    assert_eq!(m.approx_kl, 0.0);
    assert_eq!(m.clip_fraction, 0.0);
    assert!(m.grad_norm > 0.0);
    let moved = log_ratios(&rl, &l.model, &l.tokenizer, &rollouts, &same, 7).unwrap();
    assert!(moved.iter().any(|&x| x.abs() > 1e-6), "after a step the policy differs from the snapshot: {moved:?}");
    // Restoring the snapshot brings the ratio back to exactly 1.
    rl.restore(&same).unwrap();
    assert!(log_ratios(&rl, &l.model, &l.tokenizer, &rollouts, &same, 7).unwrap().iter().all(|&x| x == 0.0));
}

#[test]
fn only_the_trainable_subset_changes() {
    for (subset, changed) in [("layers:1-2", "model.layers.1."), ("lm-head", "lm_head.weight")] {
        let mut l = builtin();
        let all: Vec<(String, Tensor)> = {
            let mut v: Vec<_> = l.model.var_store().variables().into_iter().collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let before = bytes(&all);
        let mut rl = Rl::new(&mut l.model, order_config(subset)).unwrap();
        assert!(rl.params().iter().all(|(n, _)| n.starts_with(changed)), "{subset}: {:?}", rl.params().iter().map(|p| &p.0).collect::<Vec<_>>());
        rl.update(&l.model, &l.tokenizer).unwrap();
        for ((name, _), (b, a)) in all.iter().zip(before.iter().zip(bytes(&all))) {
            if name.ends_with("expert_bias") {
                continue;
            }
            assert_eq!(name.starts_with(changed) && *b != a || !name.starts_with(changed) && *b == a, true, "{subset}: {name}");
        }
        dllm_engine::trainable::release(&l.model);
    }
}

#[test]
fn lora_updates_train_the_adapters_and_leave_the_base_weights() {
    let mut l = builtin();
    let base: Vec<(String, Tensor)> = l.model.var_store().variables().into_iter().collect();
    let before = bytes(&base);
    let mut c = order_config("lora:4");
    c.lr = 1e-3;
    let mut rl = Rl::new(&mut l.model, c).unwrap();
    assert!(rl.params().iter().all(|(n, _)| n.ends_with("lora_A") || n.ends_with("lora_B")));
    let adapters = bytes(rl.params());
    rl.update(&l.model, &l.tokenizer).unwrap();
    assert_eq!(before, bytes(&base), "base weights untouched");
    assert_ne!(adapters, bytes(rl.params()));
    // Back to full training with the adapters still attached: they are frozen, the base weights train.
    let mut c = order_config("all");
    c.lr = 1e-3;
    let mut full = Rl::new(&mut l.model, c).unwrap();
    let trained_adapters = l.model.lora().unwrap().variables();
    assert!(trained_adapters.iter().all(|(_, t)| !t.requires_grad()));
    let kept = bytes(&trained_adapters);
    full.update(&l.model, &l.tokenizer).unwrap();
    assert_eq!(kept, bytes(&trained_adapters));
    assert_ne!(before, bytes(&base));
}

#[test]
fn a_failing_reward_is_an_error_and_changes_nothing_and_a_custom_one_scores() {
    let mut l = builtin();
    let mut c = order_config("all");
    c.reward = Reward::from_fn("broken", |_: &RlPrompt, _: &str| Err(dllm_engine::Error::invalid("reward", "broken", "it always fails")));
    let mut rl = Rl::new(&mut l.model, c).unwrap();
    let before = bytes(rl.params());
    let e = rl.update(&l.model, &l.tokenizer).unwrap_err().to_string();
    assert!(e.contains("always fails"), "{e}");
    assert_eq!(before, bytes(rl.params()));
    assert!(rl.history.is_empty());
    // A reward that is one closure: every rollout of `order` gets 1, so no group has an advantage.
    let mut c = order_config("all");
    c.reward = Reward::from_fn("task-is-order", |p: &RlPrompt, _: &str| Ok(f64::from(u8::from(p.task == Some(Task::Order)))));
    let mut rl = Rl::new(&mut l.model, c).unwrap();
    let m = rl.update(&l.model, &l.tokenizer).unwrap();
    assert_eq!((m.reward_mean, m.trained), (1.0, 0));
    assert_eq!(rl.config().reward.describe(), "task-is-order");
}

#[test]
fn a_non_finite_loss_rejects_the_whole_update() {
    let mut l = builtin();
    let mut c = order_config("lm-head");
    // The first epoch's step with an absurd learning rate blows the head up; the second epoch's loss is not
    // finite. The update must leave the policy as it was before its first epoch.
    c.lr = 1e38;
    c.epochs = 2;
    let mut rl = Rl::new(&mut l.model, c).unwrap();
    let before = bytes(rl.params());
    let e = rl.update(&l.model, &l.tokenizer).unwrap_err().to_string();
    assert!(e.contains("non-finite") && e.contains("unchanged"), "{e}");
    assert_eq!(before, bytes(rl.params()));
    assert!(rl.history.is_empty());
}

#[test]
fn a_short_fixed_seed_run_raises_the_reward() {
    let mut l = builtin();
    let c = order_config("all");
    let (before, _) = held_out_reward(&l.model, &l.tokenizer, &c, 60, None).unwrap();
    let mut rl = Rl::new(&mut l.model, c.clone()).unwrap();
    let mut train = Vec::new();
    for _ in 0..8 {
        train.push(rl.update(&l.model, &l.tokenizer).unwrap().reward_mean);
    }
    let (after, _) = held_out_reward(&l.model, &l.tokenizer, &c, 60, None).unwrap();
    // Measured: 0.57 -> 0.82 after 6 updates, 0.97 after 20 (docs/rl.md). The margin leaves room for
    // libtorch versions that round differently.
    assert!(after >= before + 0.15, "held-out reward {before:.3} -> {after:.3}; training rewards {train:?}");
    let early = train[..3].iter().sum::<f64>() / 3.0;
    let late = train[5..].iter().sum::<f64>() / 3.0;
    assert!(late > early, "training reward {train:?}");
}

#[test]
fn restoring_a_snapshot_of_another_trainable_set_is_refused() {
    let mut l = builtin();
    let head = Rl::new(&mut l.model, order_config("lm-head")).unwrap();
    let snap: Snapshot = head.snapshot();
    let mut all = Rl::new(&mut l.model, order_config("all")).unwrap();
    let before = bytes(all.params());
    let e = all.restore(&snap).unwrap_err().to_string();
    assert!(e.contains("same `trainable`"), "{e}");
    assert_eq!(before, bytes(all.params()));
}

#[test]
fn settings_parse_and_bad_values_change_nothing() {
    use dllm_engine::likelihood::Estimator;
    use dllm_engine::rl::{advantages, RlPrompt};
    for spec in ["stratified:4", "stratified:8:anti", "midpoint:6", "mc:16:anti", "mean-field", "mean-field:0.3"] {
        assert_eq!(Estimator::parse(spec).unwrap().describe(), spec);
    }
    assert_eq!(Estimator::parse("d1").unwrap(), Estimator::MeanField { prompt_mask: 0.3 });
    assert!(Estimator::parse("stratified:0").unwrap_err().to_string().contains("whole number from 1 to"));
    let mut c = RlConfig::default();
    let before = c.clone();
    for (name, value, says) in [
        ("group", "1", "at least 2"),
        ("temperature", "0", "greedy"),
        ("eps_low", "1.5", "(0, 1)"),
        ("reward", "regex ([", "regex"),
        ("reward", "bogus", "expected one of: verifier, exact, similarity, regex PATTERN"),
        ("reward", "regex", "needs an argument"),
        ("reward", "exact 3", "takes no argument"),
        ("reward_timeout", "2", "command"),
        ("trainable", "layers:3-1", "empty"),
        ("estimator", "magic", "unknown estimator"),
        ("nope", "1", "known settings"),
    ] {
        let e = c.set(name, value).unwrap_err().to_string();
        assert!(e.contains(says), "{name} {value}: {e}");
        assert_eq!(c, before);
    }
    c.set("trainable", "lora:8").unwrap();
    assert_eq!(c.trainable, Trainable::Lora { rank: 8, alpha: 16.0 });
    let p = RlPrompt::parse("sort 3814 => 1348").unwrap();
    assert_eq!((p.task, p.answer.as_deref()), (Some(Task::Sort), Some("1348")));
    assert_eq!(RlPrompt::parse("12+7=").unwrap().task, Some(Task::Add));
    assert_eq!(RlPrompt::parse("hello there").unwrap().task, None);
    let scored = Reward::parse("verifier").unwrap().score(&[&RlPrompt::parse("hello").unwrap()], &["x".into()]).unwrap_err().to_string();
    assert!(scored.contains("not a task"), "{scored}");
    let a = advantages(&[1.0, 0.0, 0.0, 1.0]);
    assert!((a[0] - 0.5 / (1.0f64 / 3.0).sqrt()).abs() < 1e-3 && a[0] == -a[1], "{a:?}");
    assert_eq!(advantages(&[1.0, 1.0]), vec![0.0, 0.0]);
    assert_eq!(Reward::parse("regex ^1+$").unwrap().score(&[&p, &p], &["111".into(), "12".into()]).unwrap(), vec![1.0, 0.0]);
    // similarity: 1 - edit distance / the longer length, the best over the accepted answers.
    let sim = Reward::parse("similarity").unwrap();
    assert_eq!(sim.score(&[&p, &p, &p], &["1348".into(), "1438".into(), "".into()]).unwrap(), vec![1.0, 0.5, 0.0]);
    let two = RlPrompt { answers: vec!["abcd".into(), "xy".into()], ..RlPrompt::parse("q => abcd").unwrap() };
    assert!((sim.score(&[&two], &["xyz".into()]).unwrap()[0] - 2.0 / 3.0).abs() < 1e-12, "xy is one insertion from xyz");
    let none = sim.score(&[&RlPrompt::parse("hello").unwrap()], &["x".into()]).unwrap_err().to_string();
    assert!(none.contains("no reference answer"), "{none}");
}

#[test]
fn an_interrupted_update_is_not_applied_and_redoing_it_gives_the_same_weights() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let mut c = order_config("all");
    c.epochs = 2; // more pieces to stop between
    // Reference: two updates, uninterrupted.
    let mut l = builtin();
    let mut reference = Rl::new(&mut l.model, c.clone()).unwrap();
    reference.update(&l.model, &l.tokenizer).unwrap();
    reference.update(&l.model, &l.tokenizer).unwrap();
    let want = bytes(reference.params());

    let mut l = builtin();
    let mut rl = Rl::new(&mut l.model, c).unwrap();
    let flag = Arc::new(AtomicBool::new(false));
    rl.set_interrupt(flag.clone());
    rl.update(&l.model, &l.tokenizer).unwrap();
    let after_one = bytes(rl.params());
    // Interrupt update 2 at spread-out moments (after its rollouts, inside its epochs): each time nothing
    // changes, and the update can be run again.
    let mut interrupted = 0;
    for delay_ms in [0u64, 150, 400, 800] {
        flag.store(delay_ms == 0, Ordering::SeqCst);
        let setter = (delay_ms > 0).then(|| {
            let f = flag.clone();
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(delay_ms));
                f.store(true, Ordering::SeqCst);
            })
        });
        let r = rl.update(&l.model, &l.tokenizer);
        if let Some(t) = setter {
            t.join().unwrap();
        }
        match r {
            Err(dllm_engine::Error::Interrupted(why)) => {
                interrupted += 1;
                assert!(why.contains("update 2") && why.contains("not applied"), "{why}");
                if delay_ms == 0 {
                    assert!(why.starts_with("decoding the rollouts"), "stopped before the first decoding step: {why}");
                }
                assert_eq!(bytes(rl.params()), after_one, "an interrupted update changed the weights");
                assert_eq!(rl.history.len(), 1);
            }
            Ok(_) => break, // finished before the flag was set: update 2 is done
            Err(e) => panic!("{e}"),
        }
    }
    assert!(interrupted >= 1, "at least the immediate interrupt stops the update");
    // The held-out decodes of `rl eval` stop too.
    flag.store(true, Ordering::SeqCst);
    let e = held_out_reward(&l.model, &l.tokenizer, rl.config(), 50, Some(&flag)).unwrap_err();
    assert!(matches!(e, dllm_engine::Error::Interrupted(_)), "{e}");
    flag.store(false, Ordering::SeqCst);
    while rl.history.len() < 2 {
        rl.update(&l.model, &l.tokenizer).unwrap();
    }
    assert_eq!(bytes(rl.params()), want, "redone after interrupts, update 2 gives the uninterrupted weights");
}
