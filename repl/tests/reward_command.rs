//! The external-command reward (`reward command CMD`), which the session registers in the engine's reward
//! registry: failures and timeouts are errors that change nothing, background processes end with it, and the
//! command sees the rollout as JSON.

use dllm_engine::rl::{Reward, Rl, RlConfig, Trainable};
use dllm_engine::tasks::Task;
use tch::{Device, Kind, Tensor};

fn order_config() -> RlConfig {
    RlConfig { tasks: vec![Task::Order], reward: Reward::parse("exact").unwrap(), trainable: Trainable::All, ..RlConfig::default() }
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

#[test]
fn a_failing_or_slow_reward_command_is_an_error_and_changes_nothing() {
    // The engine knows no command reward until the session registers it (this test is its process's only one).
    assert!(Reward::parse("command echo 1").unwrap_err().to_string().contains("expected one of"));
    dllm_engine::rl::register(&dllm_repl::reward_command::COMMAND);
    assert_eq!(Reward::parse("command echo 1").unwrap().describe(), "command echo 1 (timeout 10 s)");
    tch::set_num_threads(1);
    let mut l = dllm_engine::load_builtin(Device::Cpu, None).unwrap();
    for (cmd, timeout, expect) in [
        ("exit 3", None, "exited"),
        ("echo hello", None, "expected one number"),
        ("sleep 5; echo 1", Some("0.2"), "timeout"),
    ] {
        let mut c = order_config();
        c.set("reward", &format!("command {cmd}")).unwrap();
        if let Some(t) = timeout {
            c.set("reward_timeout", t).unwrap();
        }
        let mut rl = Rl::new(&mut l.model, c).unwrap();
        let before = bytes(rl.params());
        let e = rl.update(&l.model, &l.tokenizer).unwrap_err().to_string();
        assert!(e.contains(expect) && e.contains(cmd), "{cmd}: {e}");
        assert_eq!(before, bytes(rl.params()), "{cmd}");
        assert!(rl.history.is_empty());
    }
    // What a command leaves running in the background ends with it: it neither holds the reward's stdout open
    // nor outlives the timeout (both hung before).
    for (cmd, timeout, ok) in [("sleep 30 & echo 1", None, true), ("(sleep 30; echo 1) & sleep 30", Some("0.3"), false)] {
        let mut c = order_config();
        c.set("reward", &format!("command {cmd}")).unwrap();
        if let Some(t) = timeout {
            c.set("reward_timeout", t).unwrap();
        }
        let mut rl = Rl::new(&mut l.model, c).unwrap();
        let started = std::time::Instant::now();
        let r = rl.update(&l.model, &l.tokenizer);
        assert_eq!(r.is_ok(), ok, "{cmd}: {:?}", r.err());
        assert!(started.elapsed().as_secs() < 25, "{cmd}: took {:?}, so a background process held it up", started.elapsed());
    }
    // The command sees the rollout as JSON and its number is the reward.
    let mut c = order_config();
    c.set("reward", r#"command grep -q '"task":"order"' && echo 1 || echo 0"#).unwrap();
    let mut rl = Rl::new(&mut l.model, c).unwrap();
    let m = rl.update(&l.model, &l.tokenizer).unwrap();
    assert_eq!((m.reward_mean, m.trained), (1.0, 0));
}

