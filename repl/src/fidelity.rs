//! `fidelity int8|fp8`: how a quantized copy of the resident model ([`dllm_engine::quant`]) changes the next-token
//! distributions on this branch's canvas, as numbers and as the positions whose most likely token changes.

use dllm_engine::quant::Fidelity;
use dllm_engine::{BlockMask, KvCache, Quantization};
use tch::Kind;

use crate::parse::Args;
use crate::research::usage;
use crate::session::{CmdResult, CommandError, Session};
use crate::value::{Cell, Table, Value};

const USAGE: &str = "fidelity int8|fp8";
/// Positions listed whose most likely token differs.
const MAX_LISTED: usize = 12;

pub(crate) fn fidelity(s: &mut Session, a: &Args) -> CmdResult {
    let format: Quantization = a.get(0).ok_or_else(|| usage("missing the format", USAGE))?.parse().map_err(|e: dllm_engine::Error| usage(e.to_string(), USAGE))?;
    if a.words.len() > 1 {
        return Err(usage(format!("unexpected `{}`", a.words[1]), USAGE));
    }
    let (canvas, block) = {
        let d = s.decoder()?;
        (d.canvas().to_vec(), d.settings.block_length)
    };
    let branch = s.current.clone();
    let l = s.ready()?;
    let copy = l.model.quantized(format)?;
    let ids = tch::Tensor::from_slice(&canvas).view([1, -1]);
    let mask = BlockMask::block_causal(block);
    let full = l.model.forward(&ids, &mut KvCache::new(), 0, mask)?;
    let quant = copy.forward(&ids, &mut KvCache::new(), 0, mask)?;
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
    for &p in differs.iter().take(MAX_LISTED) {
        let (a, b) = (top_f.int64_value(&[p]), top_q.int64_value(&[p]));
        let (pa, pb) = (pf.double_value(&[p, a]), pq.double_value(&[p, b]));
        rows.push(vec![format!("position {p}").into(), format!("{} {pa:.3} -> {} {pb:.3}", tok(a), tok(b)).into()]);
    }
    if differs.len() > MAX_LISTED {
        rows.push(vec!["...".into(), format!("{} more positions differ", differs.len() - MAX_LISTED).into()]);
    }
    let title = format!("{format} experts against the resident model on `{branch}`'s canvas (one forward, blocks of {block})");
    Ok(vec![Value::Table(Table { title, columns: vec!["".into(), "".into()], rows })])
}
