//! Branches: `rewind`, `fork`, `switch`, `branches`, `drop`, `diff`.


use super::{checked, msg, usage};
use crate::parse::Args;
use crate::session::{CmdResult, CommandError, Session};
use crate::value::{Cell, Table, Value};

pub(super) fn rewind(s: &mut Session, a: &Args) -> CmdResult {
    let t = checked(a, "STEP");
    s.rewind(t)?;
    Ok(vec![msg(format!("rewound to before step {t}")), s.canvas_value("canvas")?])
}

pub(super) fn fork(s: &mut Session, a: &Args) -> CmdResult {
    let name = a.text("NAME").unwrap_or_default();
    let from = s.current.clone();
    s.fork(name)?;
    Ok(vec![msg(format!("forked `{from}` into `{name}` (now current)"))])
}

pub(super) fn switch(s: &mut Session, a: &Args) -> CmdResult {
    let name = a.text("NAME").unwrap_or_default();
    s.switch(name)?;
    Ok(vec![msg(format!("on branch `{name}`"))])
}

pub(super) fn branches(s: &mut Session, _: &Args) -> CmdResult {
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
                dllm_engine::memory::human(d.tensor_bytes() as u64).into(),
            ]
        })
        .collect();
    // What the branches hold on the model's device (KV caches, last distributions): what `drop` would free.
    let held: usize = s.branches.values().map(|d| d.tensor_bytes()).sum();
    let title = format!("Branches (holding {} of caches; `drop NAME` frees a branch's)", dllm_engine::memory::human(held as u64));
    Ok(vec![Value::Table(Table { title, columns: ["branch", "steps", "block", "finished", "TPF", "memory"].map(String::from).to_vec(), rows })])
}

pub(super) fn drop(s: &mut Session, a: &Args) -> CmdResult {
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

pub(super) fn diff(s: &mut Session, a: &Args) -> CmdResult {
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
