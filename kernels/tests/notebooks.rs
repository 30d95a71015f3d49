//! The teaching notebooks (notebooks/*.ipynb) run top to bottom through this crate's kernel: the `dllm`
//! kernelspec is installed into a temporary prefix (`dllm-kernel kernel install --prefix P --name dllm`),
//! JUPYTER_PATH points at it, and tests/kernel/run_notebooks.py executes each notebook with nbclient. Any
//! cell with an error output fails the test.
//!
//! Needs a Python with tests/requirements.txt installed (nbclient, nbformat): `DLLM_PYTHON`, else the
//! project's `.venv` (both set up by `make test`). Missing ones fail the test; they do not skip it.

use std::path::{Path, PathBuf};

mod common;

/// The kernelspec a notebook names.
fn kernel_of(path: &Path) -> String {
    let nb: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    nb["metadata"]["kernelspec"]["name"].as_str().unwrap_or_default().to_string()
}

/// The notebooks for kernel `kernel`, sorted.
fn notebooks(kernel: &str) -> Vec<PathBuf> {
    let mut notebooks: Vec<PathBuf> = std::fs::read_dir(common::root().join("notebooks"))
        .expect("read notebooks/")
        .map(|e| e.expect("notebooks/ entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "ipynb") && kernel_of(p) == kernel)
        .collect();
    notebooks.sort();
    notebooks
}

#[test]
fn notebooks_run_top_to_bottom() {
    let notebooks = notebooks("dllm");
    assert!(notebooks.len() >= 4, "expected the teaching notebooks in notebooks/, found {notebooks:?}");
    let prefix = common::kernelspec();
    let args: Vec<&std::ffi::OsStr> = notebooks.iter().map(|p| p.as_os_str()).collect();
    let (out, text) = common::run_script(prefix.path(), "run_notebooks.py", &args);
    assert!(out.status.success(), "notebooks failed ({} if nbclient is missing):\n{text}", common::HINT);
    eprintln!("{text}");
}

#[test]
fn shipped_notebooks_carry_the_metadata_the_kernel_reports() {
    // What JupyterLab writes into a notebook after running it: if the shipped files differ, they open as
    // modified, and "download as" has no file extension for the script.
    let want = dllm_kernel::notebook_metadata();
    for path in notebooks("dllm") {
        let nb: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(nb["metadata"], want, "{}: metadata differs from dllm_kernel::notebook_metadata()", path.display());
    }
    // Every notebook is for the dllm kernel or for the Rust one.
    let all = std::fs::read_dir(common::root().join("notebooks")).unwrap().filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "ipynb")).count();
    assert_eq!(all, notebooks("dllm").len() + notebooks("dllm-rust").len());
}

/// The Rust API notebook (08) under evcxr through the `dllm-rust` kernelspec of scripts/setup-evcxr.sh,
/// installed into a temporary prefix (evcxr_jupyter itself is installed by `make test`). Every cell must run
/// and the rich outputs must be there: the canvas and tables as HTML, the chart as PNG.
#[test]
fn the_rust_api_notebook_runs_under_evcxr_with_rich_outputs() {
    let notebooks = notebooks("dllm-rust");
    assert_eq!(notebooks.len(), 1, "{notebooks:?}");
    let prefix = tempfile::tempdir().unwrap();
    let setup = std::process::Command::new("scripts/setup-evcxr.sh").current_dir(common::root()).arg("--prefix").arg(prefix.path()).output().unwrap();
    assert!(setup.status.success(), "scripts/setup-evcxr.sh: {}", String::from_utf8_lossy(&setup.stderr));
    let out = prefix.path().join("08-executed.ipynb");
    let (run, text) = common::run_script(prefix.path(), "run_notebooks.py", &[notebooks[0].as_os_str(), "--save".as_ref(), out.as_os_str()]);
    assert!(run.status.success(), "the Rust notebook failed:\n{text}");
    eprintln!("{text}");
    let nb: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let outputs: Vec<&serde_json::Value> = nb["cells"].as_array().unwrap().iter().flat_map(|c| c["outputs"].as_array().into_iter().flatten()).collect();
    // A saved notebook may keep multi-line text as a list of lines.
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::Array(lines) => lines.iter().filter_map(|l| l.as_str()).collect::<String>(),
        v => v.as_str().unwrap_or_default().to_string(),
    };
    let has = |mime: &str, needle: &str| outputs.iter().any(|o| text(&o["data"][mime]).contains(needle));
    assert!(has("text/html", "unmasked"), "a canvas");
    assert!(has("text/html", "<table"), "a table");
    assert!(outputs.iter().any(|o| text(&o["data"]["image/png"]).len() > 1000), "a chart as PNG");
    assert!(outputs.iter().any(|o| text(&o["text"]).contains("log p(1348)")), "the likelihoods");
}
