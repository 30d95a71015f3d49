//! The Rust API (`repl/src/api.rs`) is the commands' implementation: typed calls and command lines give the same
//! decode; and its values display in evcxr as the dllm kernel shows them (`repl/src/notebook.rs`).

use dllm_repl::notebook::{evcxr_content, Values};
use dllm_repl::value::Value;
use dllm_repl::Session;

#[test]
fn typed_calls_and_command_lines_decode_alike() {
    let mut s = Session::open("builtin", "cpu").unwrap();
    s.preset("S").unwrap();
    let canvas = s.chat("sort 3814").unwrap();
    assert!(canvas.cells.iter().any(|c| c.kind.is_mask()));
    s.fork("by-command").unwrap();
    s.switch("main").unwrap();
    let typed = s.step(3).unwrap();
    assert_eq!(typed.reports.len(), 3);
    s.switch("by-command").unwrap();
    let lines = s.run("step 3").unwrap();
    let Value::Steps(by_command) = &lines[0] else { panic!("{lines:?}") };
    // The same reports but for their times.
    let untimed = |r: &[dllm_engine::decode::StepReport]| {
        let mut v = serde_json::to_value(r).unwrap();
        v.as_array_mut().unwrap().iter_mut().for_each(|r| {
            let r = r.as_object_mut().unwrap();
            r.remove("forward_ms");
            r.remove("total_ms");
        });
        v
    };
    assert_eq!(untimed(&typed.reports), untimed(&by_command.reports));
    // To the end on both: the same text.
    s.finish().unwrap();
    let a = s.output().unwrap();
    s.switch("main").unwrap();
    s.run("run").unwrap();
    assert_eq!(s.output().unwrap(), a);
    assert_eq!(s.current_branch(), "main");
    // Errors are the commands' errors, and change nothing.
    assert!(s.fork("main").unwrap_err().to_string().contains("exists"));
    assert!(s.set("threshold", "2").is_err());
    assert!(s.preset("turbo").unwrap_err().to_string().contains("turbo"));
    assert!(s.run("step 2\nfrobnicate").unwrap_err().to_string().contains("unknown command"));
    // A likelihood through the API equals the command's.
    let typed = s.likelihood("sort 3814", "1348", "midpoint:4", 3).unwrap();
    let line = s.run("likelihood midpoint:4 seed=3 -- sort 3814 => 1348").unwrap();
    let Value::Table(t) = &line[0] else { panic!() };
    assert_eq!(serde_json::to_value(&t.rows[0][1]).unwrap().as_f64().unwrap(), typed.value);
    assert!(Session::open("/nonexistent", "cpu").err().unwrap().to_string().contains("/nonexistent"));
}

/// The content blocks of evcxr's display protocol: (MIME type, content).
fn blocks(s: &str) -> Vec<(String, String)> {
    s.split("EVCXR_BEGIN_CONTENT ")
        .skip(1)
        .map(|b| {
            let (mime, rest) = b.split_once('\n').unwrap();
            (mime.to_string(), rest.split("\nEVCXR_END_CONTENT").next().unwrap().to_string())
        })
        .collect()
}

#[test]
fn notebook_display_is_the_kernels_rendering() {
    let mut s = Session::open("builtin", "cpu").unwrap();
    s.chat("copy ab").unwrap();
    s.step(2).unwrap();
    let canvas = Value::Canvas(s.canvas().unwrap());
    let b = blocks(&evcxr_content(std::slice::from_ref(&canvas)));
    let mimes: Vec<&str> = b.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(mimes, ["text/plain", "text/html"]);
    let kernel = dllm_repl::render::output(std::slice::from_ref(&canvas));
    assert_eq!(b[1].1, kernel.iter().find(|(m, _)| *m == "text/html").unwrap().1.as_str().unwrap().trim_end());
    // One chart: its PNG and SVG, as the kernel sends a chart.
    let chart = s.run("chart").unwrap();
    let b = blocks(&evcxr_content(&chart[..1]));
    assert!(b.iter().any(|(m, c)| m == "image/png" && c.len() > 1000), "{:?}", b.iter().map(|x| &x.0).collect::<Vec<_>>());
    assert!(b.iter().any(|(m, c)| m == "image/svg+xml" && c.starts_with("<svg")));
    // Several values with charts: one HTML of them all.
    let all = Values(s.run("stats\nchart").unwrap().0);
    let b = blocks(&evcxr_content(&all));
    assert_eq!(b.iter().filter(|(m, _)| m == "text/html").count(), 1);
    assert!(b[1].1.contains("<svg") && b[1].1.contains("<table"));
}
