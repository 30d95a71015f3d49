//! Rich display in Rust notebooks (evcxr): a cell whose value is a [`Value`], a [`Canvas`], a [`Table`], a
//! [`Chart`], [`Steps`] or [`Values`] shows what the dllm kernel shows for it, rendered by the same code
//! ([`crate::render::outputs`]), with text/plain beside it.
//!
//! evcxr calls a value's `evcxr_display` method and reads what it prints: `EVCXR_BEGIN_CONTENT <mime>`, the
//! content, `EVCXR_END_CONTENT`, once per MIME type; a cell shows one output, so several values become one
//! (their HTML in a row, and a chart's PNG when the cell is one chart).

use std::fmt::Write as _;

use crate::render::outputs;
use crate::value::{Canvas, Chart, Steps, Table, Value};

/// Several values (what a command line gives): displayed together, and a `Vec<Value>` otherwise.
#[derive(Debug, Clone)]
pub struct Values(pub Vec<Value>);

impl std::ops::Deref for Values {
    type Target = Vec<Value>;
    fn deref(&self) -> &Vec<Value> {
        &self.0
    }
}

impl IntoIterator for Values {
    type Item = Value;
    type IntoIter = std::vec::IntoIter<Value>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// What `evcxr_display` prints for `values`: one output, each MIME type once.
pub fn evcxr_content(values: &[Value]) -> String {
    let outs = outputs(values);
    let mut s = String::new();
    let mut put = |mime: &str, data: &str| {
        let _ = write!(s, "EVCXR_BEGIN_CONTENT {mime}\n{}\nEVCXR_END_CONTENT\n", data.trim_end_matches('\n'));
    };
    match outs.as_slice() {
        [] => put("text/plain", ""),
        // One output (one chart, or values without charts): exactly what the dllm kernel sends.
        // (Its JSON stays out: evcxr passes every content on as a string.)
        [one] => {
            for (mime, data) in one.iter().filter(|(m, _)| *m != crate::render::VALUE_MIME) {
                put(mime, data.as_str().unwrap_or_default());
            }
        }
        // Charts among other values: one HTML of them all (the charts inline, as SVG).
        _ => {
            let b = crate::render::render_all(values);
            put("text/plain", &b.plain);
            put("text/html", &b.html);
        }
    }
    s
}

macro_rules! displays {
    ($($t:ty => $to:expr),* $(,)?) => {$(
        impl $t {
            /// Rich display in an evcxr notebook (see the module documentation).
            pub fn evcxr_display(&self) {
                let f: fn(&$t) -> Vec<Value> = $to;
                print!("{}", evcxr_content(&f(self)));
            }
        }
    )*};
}

displays! {
    Value => |v| vec![v.clone()],
    Values => |v| v.0.clone(),
    Canvas => |c| vec![Value::Canvas(c.clone())],
    Table => |t| vec![Value::Table(t.clone())],
    Chart => |c| vec![Value::Chart(c.clone())],
    Steps => |s| vec![Value::Steps(s.clone())],
}
