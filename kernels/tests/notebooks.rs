//! The teaching notebooks (notebooks/*.ipynb) run top to bottom through this crate's kernel: the `dllm`
//! kernelspec is installed into a temporary prefix (`dllm-kernel kernel install --prefix P --name dllm`),
//! JUPYTER_PATH points at it, and tests/kernel/run_notebooks.py executes each notebook with nbclient. Any
//! cell with an error output fails the test.
//!
//! Needs a Python with tests/requirements.txt installed (nbclient, nbformat): `DLLM_PYTHON`, else the
//! project's `.venv` (both set up by `make test`). Missing ones fail the test; they do not skip it.

use std::path::{Path, PathBuf};

mod common;

#[test]
fn notebooks_run_top_to_bottom() {
    let mut notebooks: Vec<PathBuf> = std::fs::read_dir(common::root().join("notebooks"))
        .expect("read notebooks/")
        .map(|e| e.expect("notebooks/ entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "ipynb"))
        .collect();
    notebooks.sort();
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
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../notebooks");
    for entry in std::fs::read_dir(&dir).expect("read notebooks/") {
        let path = entry.expect("notebooks/ entry").path();
        if path.extension().is_some_and(|x| x == "ipynb") {
            let nb: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            assert_eq!(nb["metadata"], want, "{}: metadata differs from dllm_kernel::notebook_metadata()", path.display());
        }
    }
}
