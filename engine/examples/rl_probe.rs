use dllm_engine::rl::*;
use dllm_engine::tasks::Task;
fn main() {
    tch::set_num_threads(1);
    let args: Vec<String> = std::env::args().collect();
    let lr: f64 = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(1e-4);
    let trainable = args.get(2).cloned().unwrap_or("all".into());
    let updates: usize = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(10);
    let mut l = dllm_engine::load_builtin(tch::Device::Cpu, None).unwrap();
    let mut c = RlConfig::default();
    c.tasks = vec![Task::Order];
    c.reward = Reward::Exact;
    c.lr = lr;
    c.trainable = Trainable::parse(&trainable).unwrap();
    let (r0, _) = held_out_reward(&l.model, &l.tokenizer, &c, 100).unwrap();
    println!("held-out before {r0:.3}");
    let mut rl = Rl::new(&mut l.model, c.clone()).unwrap();
    for _ in 0..updates {
        let m = rl.update(&l.model, &l.tokenizer).unwrap();
        println!("u{} reward {:.3}±{:.3} clip {:.3} kl {:.5} loss {:.4} g {:.3} trained {} len {:.1} t {:.2}/{:.2}/{:.2}/{:.2}", m.update, m.reward_mean, m.reward_std, m.clip_fraction, m.approx_kl, m.loss, m.grad_norm, m.trained, m.mean_length, m.time.rollout, m.time.likelihood, m.time.backward, m.time.total);
    }
    let (r1, _) = held_out_reward(&l.model, &l.tokenizer, &c, 100).unwrap();
    println!("held-out after {r1:.3}");
}
