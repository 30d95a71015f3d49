//! The kernel's outputs as a person sees them in JupyterLab, in headless Chromium: tests/kernel/browser_check.py
//! executes a notebook with charts and tables through the `dllm` kernel (installed into a temporary prefix),
//! opens it from its file (untrusted, as a shared or downloaded notebook is) and checks that the charts are drawn
//! images and the tables tables. The screenshot is kept in target/browser-check/.
//!
//! Needs a Python with tests/requirements.txt (jupyterlab, selenium, nbclient) and Debian's chromium and
//! chromium-driver: `make test` sets up both. Missing ones fail the test; they do not skip it.

use std::path::{Path, PathBuf};
use std::process::Command;

const HINT: &str = "run `make test` (it creates .venv from tests/requirements.txt and installs chromium) or set DLLM_PYTHON";

fn python() -> PathBuf {
    if let Ok(p) = std::env::var("DLLM_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(venv.exists(), "no Python with jupyterlab: {HINT}");
    venv
}

#[test]
fn charts_and_tables_show_in_an_untrusted_notebook_in_jupyterlab() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let prefix = tempfile::tempdir().expect("temp prefix");
    let install = Command::new(env!("CARGO_BIN_EXE_dllm-kernel"))
        .args(["kernel", "install", "--prefix"])
        .arg(prefix.path())
        .args(["--name", "dllm"])
        .output()
        .expect("run dllm-kernel kernel install");
    assert!(install.status.success(), "kernel install failed: {}", String::from_utf8_lossy(&install.stderr));
    let out_dir = root.join("target/browser-check");
    std::fs::create_dir_all(&out_dir).expect("target/browser-check");
    let out = Command::new(python())
        .current_dir(&root)
        .arg("tests/kernel/browser_check.py")
        .arg(&out_dir)
        .env("JUPYTER_PATH", prefix.path().join("share/jupyter"))
        .env("JUPYTER_DATA_DIR", prefix.path().join("data"))
        .env("JUPYTER_CONFIG_DIR", prefix.path().join("config"))
        .env("JUPYTER_RUNTIME_DIR", prefix.path().join("runtime"))
        .output()
        .expect("run tests/kernel/browser_check.py");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "browser check failed ({HINT} if a package is missing):\n{text}");
    assert!(text.contains("3 charts drawn as images"), "{text}");
}
