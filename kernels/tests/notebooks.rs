//! The teaching notebooks (notebooks/*.ipynb) run top to bottom through this crate's kernel: the `dllm`
//! kernelspec is installed into a temporary prefix (`dllm-kernel kernel install --prefix P --name dllm`),
//! JUPYTER_PATH points at it, and tests/kernel/run_notebooks.py executes each notebook with nbclient. Any
//! cell with an error output fails the test.
//!
//! Needs a Python with tests/requirements.txt installed (nbclient, nbformat): `DLLM_PYTHON`, else the
//! project's `.venv` (both set up by `make test`). Missing ones fail the test; they do not skip it.

use std::path::{Path, PathBuf};
use std::process::Command;

const HINT: &str = "run `make test` (it creates .venv from tests/requirements.txt) or set DLLM_PYTHON";

fn python() -> PathBuf {
    if let Ok(p) = std::env::var("DLLM_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(venv.exists(), "no Python with nbclient: {HINT}");
    venv
}

#[test]
fn notebooks_run_top_to_bottom() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut notebooks: Vec<PathBuf> = std::fs::read_dir(root.join("notebooks"))
        .expect("read notebooks/")
        .map(|e| e.expect("notebooks/ entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "ipynb"))
        .collect();
    notebooks.sort();
    assert!(notebooks.len() >= 4, "expected the teaching notebooks in notebooks/, found {notebooks:?}");

    let prefix = tempfile::tempdir().expect("temp prefix");
    let install = Command::new(env!("CARGO_BIN_EXE_dllm-kernel"))
        .args(["kernel", "install", "--prefix"])
        .arg(prefix.path())
        .args(["--name", "dllm"])
        .output()
        .expect("run dllm-kernel kernel install");
    assert!(install.status.success(), "kernel install failed: {}", String::from_utf8_lossy(&install.stderr));
    let jupyter_path = prefix.path().join("share/jupyter");
    assert!(jupyter_path.join("kernels/dllm/kernel.json").exists(), "no kernel.json under {}", jupyter_path.display());

    let py = python();
    let probe = Command::new(&py).args(["-c", "import nbclient, nbformat"]).output();
    match probe {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!("{} cannot import nbclient/nbformat ({}): {HINT}", py.display(), String::from_utf8_lossy(&o.stderr).trim()),
        Err(e) => panic!("cannot run {}: {e}: {HINT}", py.display()),
    }

    let out = Command::new(&py)
        .current_dir(&root)
        .arg("tests/kernel/run_notebooks.py")
        .args(&notebooks)
        .env("JUPYTER_PATH", &jupyter_path)
        // JUPYTER_PATH comes first in the kernelspec search; an empty user data dir (which also holds the
        // runtime dir with the connection files) keeps a user-installed `dllm` kernel from standing in.
        .env("JUPYTER_DATA_DIR", prefix.path().join("data"))
        .output()
        .expect("run tests/kernel/run_notebooks.py");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "notebooks failed:\n{text}");
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
