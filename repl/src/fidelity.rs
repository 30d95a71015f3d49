//! `fidelity int8|fp8`: how a quantized copy of the resident model ([`dllm_engine::quant`]) changes the next-token
//! distributions on this branch's canvas (as numbers, and the positions whose most likely token changes) and
//! what the next step would do under each: its Gamma_t and Delta_t, side by side.

use dllm_engine::quant::Fidelity;
use dllm_engine::{BlockMask, KvCache, Quantization};
use tch::Kind;

use crate::parse::Args;
use crate::research::usage;
use crate::session::{CmdResult, CommandError, Session};
use crate::value::{Cell, Table, Value};

/// Positions listed whose most likely token differs.
const MAX_LISTED: usize = 12;

pub(crate) fn fidelity(s: &mut Session, a: &Args) -> CmdResult {
    let format: Quantization = a.text("int8|fp8").unwrap_or_default().parse().map_err(|e: dllm_engine::Error| usage("fidelity", e.to_string()))?;
    let (canvas, block, mut next_full, mut next_quant) = {
        let d = s.decoder()?;
        let mut quant = d.fork();
        // The cached blocks were computed by the resident model: the copy recomputes them under its own weights.
        quant.clear_cache();
        (d.canvas().to_vec(), d.settings.block_length, (!d.is_finished()).then(|| d.fork()), (!d.is_finished()).then_some(quant))
    };
    let branch = s.current.clone();
    let l = s.ready()?;
    let copy = crate::research::quantized_copy(&l.model, format, a.text("auto|dequantize|scaled|emulated"))?;
    let ids = tch::Tensor::from_slice(&canvas).view([1, -1]);
    let mask = BlockMask::block_causal(block);
    let full = l.model.forward(&ids, &mut KvCache::new(), 0, mask)?;
    let quant = copy.forward(&ids, &mut KvCache::new(), 0, mask)?;
    let steps = match (next_full.as_mut(), next_quant.as_mut()) {
        (Some(a), Some(b)) => Some((a.step(&l.model)?, b.step(&copy)?)),
        _ => None,
    };
    let path = copy.fp8_matmul().map(|p| format!("{}: {}", p.path, p.why));
    drop(copy);
    let f = Fidelity::of(&full, &quant);
    let (pf, pq) = (full.get(0).softmax(-1, Kind::Float), quant.get(0).softmax(-1, Kind::Float));
    let (top_f, top_q) = (pf.argmax(-1, false), pq.argmax(-1, false));
    let differs = Vec::<i64>::try_from(top_f.ne_tensor(&top_q).nonzero().view([-1])).map_err(|e| CommandError::Failed(e.to_string()))?;
    let tok = |id: i64| format!("{:?}", l.tokenizer.token_text(id));
    let mut rows: Vec<Vec<Cell>> = vec![
        vec!["positions".into(), f.positions.into()],
        vec!["largest |dp|".into(), f.max_abs_dp.into()],
        vec!["top-1 agreement".into(), format!("{:.2}%", 100.0 * f.top1_agreement).into()],
        vec!["KL mean (nats)".into(), f.kl_mean.into()],
        vec!["KL max (nats)".into(), f.kl_max.into()],
    ];
    if let Some(p) = path {
        rows.push(vec!["fp8 matmul".into(), p.into()]);
    }
    for &p in differs.iter().take(MAX_LISTED) {
        let (a, b) = (top_f.int64_value(&[p]), top_q.int64_value(&[p]));
        let (pa, pb) = (pf.double_value(&[p, a]), pq.double_value(&[p, b]));
        rows.push(vec![format!("position {p}").into(), format!("{} {pa:.3} -> {} {pb:.3}", tok(a), tok(b)).into()]);
    }
    if differs.len() > MAX_LISTED {
        rows.push(vec!["...".into(), format!("{} more positions differ", differs.len() - MAX_LISTED).into()]);
    }
    match steps {
        Some((Some(a), Some(b))) => {
            // Writes compared as (position, token, kind): probabilities always move a little.
            let writes = |r: &dllm_engine::decode::StepReport| -> Vec<(&'static str, i64, i64, dllm_engine::decode::WriteKind)> {
                let g = r.gamma.iter().map(|u| ("Gamma", u.pos, u.token, u.kind));
                g.chain(r.delta.iter().map(|e| ("Delta", e.pos, e.new, e.kind))).collect()
            };
            let (wa, wb) = (writes(&a), writes(&b));
            let only = |x: &[(&str, i64, i64, dllm_engine::decode::WriteKind)], y: &[(&str, i64, i64, dllm_engine::decode::WriteKind)]| -> Vec<String> {
                x.iter().filter(|w| !y.contains(w)).map(|&(set, pos, t, k)| format!("{set} {pos}:{}", what(t, k, &tok))).collect()
            };
            let (oa, ob) = (only(&wa, &wb), only(&wb, &wa));
            let verdict = if oa.is_empty() && ob.is_empty() {
                "the same writes under both (only their probabilities move)".to_string()
            } else {
                let side = |v: &[String], who: &str| if v.is_empty() { None } else { Some(format!("{} only under {who}", v.join(", "))) };
                [side(&oa, "the resident model"), side(&ob, &format.to_string())].into_iter().flatten().collect::<Vec<_>>().join("; ")
            };
            rows.push(vec!["next step".into(), verdict.into()]);
            for (label, r) in [("resident".to_string(), &a), (format.to_string(), &b)] {
                let gamma: Vec<String> = r.gamma.iter().map(|u| write(u.pos, u.token, u.kind, u.p, &tok)).collect();
                let delta: Vec<String> = r.delta.iter().map(|e| write(e.pos, e.new, e.kind, e.p, &tok)).collect();
                rows.push(vec![format!("  Gamma ({label})").into(), or_none(&gamma).into()]);
                rows.push(vec![format!("  Delta ({label})").into(), or_none(&delta).into()]);
            }
        }
        _ => rows.push(vec!["next step".into(), "none: the decode has finished".into()]),
    }
    let title = format!("{format} experts against the resident model on `{branch}`'s canvas (one forward, blocks of {block})");
    Ok(vec![Value::Table(Table { title, columns: vec!["".into(), "".into()], rows })])
}

/// What a write puts at its slot: the token's text, or DELETE / SPLIT by name.
fn what(token: i64, kind: dllm_engine::decode::WriteKind, tok: &impl Fn(i64) -> String) -> String {
    use dllm_engine::decode::WriteKind;
    match kind {
        WriteKind::Token => tok(token),
        WriteKind::Delete => "DELETE".into(),
        WriteKind::Split => "SPLIT".into(),
    }
}

/// One write of a step with its probability: `pos:"tok" p`.
fn write(pos: i64, token: i64, kind: dllm_engine::decode::WriteKind, p: f32, tok: &impl Fn(i64) -> String) -> String {
    format!("{pos}:{} {p:.3}", what(token, kind, tok))
}

fn or_none(v: &[String]) -> String {
    if v.is_empty() {
        "(none)".into()
    } else {
        v.join("  ")
    }
}
