//! Likelihood estimators: the one-forward vectorised terms equal a per-block loop, the one-token case is the
//! exact log-probability, estimates are deterministic per seed and unbiased (they agree with the exact ELBO,
//! enumerated over all masks, within a few standard errors), and gradients flow.

mod common;

use dllm_engine::likelihood::{self, block_terms, block_terms_loop, plan, Estimator, NoisePlan};
use dllm_engine::shapes::{shape, random_model};
use dllm_engine::{BlockMask, DType, KvCache, Model};
use tch::{Device, Kind, Tensor};

// The compact tokenizer's specials.
const EOS: i64 = 0;
const MASK: i64 = 1;
const BLOCK: i64 = 4;

fn micro() -> Model {
    tch::set_num_threads(1);
    random_model(&shape("micro").unwrap(), 7, Device::Cpu, DType::F32).unwrap()
}

/// Spread-out logits, so estimators that differ in their noise give visibly different values.
fn spiky() -> Model {
    tch::set_num_threads(1);
    common::spiky_model(&common::micro(), 11)
}

fn rows(t: &Tensor) -> Vec<Vec<f64>> {
    Vec::<Vec<f64>>::try_from(&t.to_kind(Kind::Double)).unwrap()
}

/// Prompt of 6 tokens (ends mid-block), response of 9 (blocks 1..=3, the last padded with EOS).
fn example() -> (Vec<i64>, Vec<i64>) {
    let prompt = vec![5, 40, 41, 42, 43, 6];
    let response = vec![50, 51, 52, 53, 54, 55, 56, 57, EOS];
    (prompt, response)
}

#[test]
fn vectorised_terms_equal_the_per_block_loop() {
    let model = spiky();
    let (prompt, response) = example();
    let p = plan(&Estimator::Stratified { levels: 4, antithetic: true }, prompt.len(), response.len(), 3).unwrap();
    let fast = rows(&tch::no_grad(|| block_terms(&model, &prompt, &response, MASK, EOS, BLOCK, &p.masks).unwrap()));
    let slow = rows(&block_terms_loop(&model, &prompt, &response, MASK, EOS, BLOCK, &p.masks).unwrap());
    assert_eq!(fast.len(), 8, "4 levels and their complements");
    assert_eq!(fast[0].len(), 3, "the response spans blocks 1, 2 and 3");
    for (m, (f, s)) in fast.iter().zip(&slow).enumerate() {
        for (b, (x, y)) in f.iter().zip(s).enumerate() {
            assert!((x - y).abs() < 1e-5, "mask {m} block {b}: {x} vs {y}");
        }
    }
    assert!(fast.iter().flatten().any(|&x| x < -0.1), "some terms score masked tokens");
    // likelihood() combines the same terms with the plan's weights.
    let est = Estimator::Stratified { levels: 4, antithetic: true };
    let r = likelihood::likelihood(&model, &prompt, &response, MASK, EOS, BLOCK, &est, 3).unwrap();
    let want: f64 = slow.iter().zip(&p.weights).map(|(row, w)| w * row.iter().sum::<f64>()).sum();
    assert!((r.value - want).abs() < 1e-4, "{} vs {want}", r.value);
    assert!((r.per_block.iter().sum::<f64>() - r.value).abs() < 1e-9);
    assert_eq!((r.samples, r.rows, r.forwards, r.per_block.len()), (4, 8, 1, 3));
}

#[test]
fn one_token_at_t1_is_the_exact_log_probability() {
    let model = spiky();
    let prompt = vec![5, 40, 41, 42, 43, 6];
    let y = 60;
    // The canvas: prompt, y, EOS padding to 8; y masked, one plain block-causal forward.
    let canvas = vec![5, 40, 41, 42, 43, 6, MASK, EOS];
    let ids = Tensor::from_slice(&canvas).view([1, -1]);
    let logits = model.forward(&ids, &mut KvCache::new(), 0, BlockMask::block_causal(BLOCK)).unwrap();
    let exact = logits.get(0).get(6).log_softmax(-1, Kind::Double).double_value(&[y]);
    let at1 = Estimator::Vectorised { levels: vec![1.0], weights: vec![1.0], antithetic: false };
    for est in [at1, Estimator::MeanField { prompt_mask: 0.0 }] {
        let r = likelihood::likelihood(&model, &prompt, &[y], MASK, EOS, BLOCK, &est, 1).unwrap();
        assert!((r.value - exact).abs() < 1e-5, "{est:?}: {} vs {exact}", r.value);
        assert_eq!((r.samples, r.forwards, r.stderr), (1, 1, 0.0));
    }
}

#[test]
fn mean_field_masks_the_whole_response_and_optionally_the_prompt() {
    let model = spiky();
    let (prompt, response) = example();
    let all = vec![vec![true; response.len()]];
    let terms = rows(&block_terms_loop(&model, &prompt, &response, MASK, EOS, BLOCK, &all).unwrap());
    let r = likelihood::likelihood(&model, &prompt, &response, MASK, EOS, BLOCK, &Estimator::MeanField { prompt_mask: 0.0 }, 1).unwrap();
    assert!((r.value - terms[0].iter().sum::<f64>()).abs() < 1e-4);
    let d1 = Estimator::MeanField { prompt_mask: likelihood::D1_PROMPT_MASK };
    let p = plan(&d1, prompt.len(), response.len(), 5).unwrap();
    assert!(p.prompt_mask.iter().any(|&m| m), "seed 5 masks part of the prompt");
    let masked = likelihood::likelihood(&model, &prompt, &response, MASK, EOS, BLOCK, &d1, 5).unwrap();
    assert!((masked.value - r.value).abs() > 1e-3, "a masked prompt changes the estimate");
}

#[test]
fn same_seed_same_value_other_seed_other_value() {
    let model = micro();
    let (prompt, response) = example();
    for est in [Estimator::default(), Estimator::MonteCarlo { samples: 3, antithetic: false }, Estimator::midpoint(3, true)] {
        let run = |seed| likelihood::likelihood(&model, &prompt, &response, MASK, EOS, BLOCK, &est, seed).unwrap();
        let (a, b, c) = (run(1), run(1), run(2));
        assert_eq!(a, b, "{est:?}");
        assert!(a.value != c.value, "{est:?}: seeds 1 and 2 give {}", a.value);
        assert!(a.value < 0.0 && a.stderr > 0.0);
    }
}

/// The exact ELBO of a short response: every mask M of the response, weighted by
/// integral_0^1 t^{|M|-1} (1-t)^{r-|M|} dt = (|M|-1)! (r-|M|)! / r!.
fn exact_elbo(model: &Model, prompt: &[i64], response: &[i64]) -> f64 {
    let r = response.len();
    let fact = |n: usize| (1..=n).map(|i| i as f64).product::<f64>();
    let masks: Vec<Vec<bool>> = (1u32..1 << r).map(|bits| (0..r).map(|i| bits >> i & 1 == 1).collect()).collect();
    let terms = rows(&tch::no_grad(|| block_terms(model, prompt, response, MASK, EOS, BLOCK, &masks).unwrap()));
    masks
        .iter()
        .zip(&terms)
        .map(|(m, row)| {
            let k = m.iter().filter(|&&x| x).count();
            fact(k - 1) * fact(r - k) / fact(r) * row.iter().sum::<f64>()
        })
        .sum()
}

/// The expected value of an estimator with deterministic levels `t_n` and weights `w_n`: every mask M of the
/// response drawn at level t_n with probability t_n^{|M|} (1 - t_n)^{r - |M|}.
fn expected_value(model: &Model, prompt: &[i64], response: &[i64], est: &Estimator) -> f64 {
    let Estimator::Vectorised { levels, weights, antithetic: false } = est else { panic!("explicit levels only") };
    let r = response.len();
    let masks: Vec<Vec<bool>> = (1u32..1 << r).map(|bits| (0..r).map(|i| bits >> i & 1 == 1).collect()).collect();
    let terms = rows(&tch::no_grad(|| block_terms(model, prompt, response, MASK, EOS, BLOCK, &masks).unwrap()));
    levels
        .iter()
        .zip(weights)
        .map(|(t, w)| {
            let each = masks.iter().zip(&terms).map(|(m, row)| {
                let k = m.iter().filter(|&&x| x).count() as i32;
                t.powi(k) * (1.0 - t).powi(r as i32 - k) * row.iter().sum::<f64>()
            });
            w * each.sum::<f64>()
        })
        .sum()
}

#[test]
fn gauss_levels_are_unbiased_once_the_rule_is_exact_for_the_block_and_midpoint_is_not() {
    let model = spiky();
    // One block of 4 response tokens: the integrand is a polynomial of degree 3 in t, which the 2-point
    // Gauss-Legendre rule integrates exactly and the 2-point midpoint rule does not.
    let (prompt, response) = (vec![5, 40, 41, 6], vec![50, 51, 52, EOS]);
    let exact = exact_elbo(&model, &prompt, &response);
    let gauss = expected_value(&model, &prompt, &response, &Estimator::gauss(2, false));
    assert!((gauss - exact).abs() < 1e-9 * exact.abs().max(1.0), "gauss:2 expects {gauss}, the ELBO is {exact}");
    let midpoint = expected_value(&model, &prompt, &response, &Estimator::midpoint(2, false));
    assert!((midpoint - exact).abs() > 1e-3, "midpoint:2 expects {midpoint}: its quadrature error is a bias");
    assert!((expected_value(&model, &prompt, &response, &Estimator::gauss(1, false)) - exact).abs() > 1e-3, "one point is not exact for degree 3");
}

#[test]
fn estimators_agree_with_the_exact_elbo_within_their_standard_errors() {
    let model = spiky();
    // Prompt of 6, response of 4: blocks 1 and 2.
    let (prompt, response) = (vec![5, 40, 41, 42, 43, 6], vec![50, 51, 52, EOS]);
    let exact = exact_elbo(&model, &prompt, &response);
    let ests = [
        Estimator::Stratified { levels: 200, antithetic: false },
        Estimator::Stratified { levels: 100, antithetic: true },
        Estimator::MonteCarlo { samples: 200, antithetic: false },
        Estimator::MonteCarlo { samples: 100, antithetic: true },
        Estimator::gauss(100, false),
        Estimator::gauss(50, true),
    ];
    for est in ests {
        let r = likelihood::likelihood(&model, &prompt, &response, MASK, EOS, BLOCK, &est, 9).unwrap();
        assert!(r.stderr > 0.0 && r.stderr < 5.0, "{est:?}: stderr {}", r.stderr);
        assert!((r.value - exact).abs() < 4.0 * r.stderr, "{est:?}: {} +- {} vs exact {exact}", r.value, r.stderr);
        assert_eq!(r.per_block.len(), 2);
    }
}

#[test]
fn gradients_flow_through_block_terms() {
    let model = micro();
    let (prompt, response) = example();
    let p: NoisePlan = plan(&Estimator::default(), prompt.len(), response.len(), 4).unwrap();
    let terms = likelihood::plan_terms(&model, &prompt, &response, MASK, EOS, BLOCK, &p).unwrap();
    assert_eq!(terms.size(), [4, 3]);
    p.combine(&terms).backward();
    let vars = model.var_store().variables();
    let grad = vars["lm_head.weight"].grad();
    assert!(grad.defined(), "lm_head.weight has a gradient");
    assert!(grad.abs().sum(Kind::Float).double_value(&[]) > 0.0);
    let masks = vec![vec![true; response.len()]];
    block_terms(&model, &prompt, &response, MASK, EOS, BLOCK, &masks).unwrap().sum(Kind::Float).backward();
    assert!(vars["lm_head.weight"].grad().defined());
}

#[test]
fn invalid_inputs_name_the_field() {
    let model = micro();
    let (prompt, response) = example();
    let err = |est: Estimator, resp: &[i64]| likelihood::likelihood(&model, &prompt, resp, MASK, EOS, BLOCK, &est, 0).unwrap_err().to_string();
    let ok = Estimator::default();
    assert!(err(ok.clone(), &[]).contains("response"));
    assert!(err(Estimator::Vectorised { levels: vec![0.5, 1.0], weights: vec![1.0], antithetic: false }, &response).contains("weights"));
    assert!(err(Estimator::Vectorised { levels: vec![0.0], weights: vec![1.0], antithetic: false }, &response).contains("levels"));
    assert!(err(Estimator::Vectorised { levels: vec![1.5], weights: vec![1.0], antithetic: false }, &response).contains("levels"));
    assert!(err(Estimator::MonteCarlo { samples: 0, antithetic: false }, &response).contains("samples"));
    assert!(err(Estimator::Stratified { levels: 0, antithetic: false }, &response).contains("levels"));
    assert!(err(Estimator::MeanField { prompt_mask: 1.0 }, &response).contains("prompt_mask"));
    assert!(err(ok.clone(), &[50, 128]).contains("response"));
    assert!(err(ok.clone(), &[50, MASK]).contains("mask id"));
    let bad_prompt = likelihood::likelihood(&model, &[-1], &response, MASK, EOS, BLOCK, &ok, 0).unwrap_err().to_string();
    assert!(bad_prompt.contains("prompt"), "{bad_prompt}");
    let bad_mask = block_terms(&model, &prompt, &response, MASK, EOS, BLOCK, &[vec![true; 3]]).unwrap_err().to_string();
    assert!(bad_mask.contains("masks"), "{bad_mask}");
}

