//! What the tests that drive real Jupyter clients share: the project's Python (tests/requirements.txt, set up
//! by `make test`), a `dllm` kernelspec installed into a temporary prefix, and running a script of
//! tests/kernel/ against it with Jupyter's paths pointing only there (a user-installed `dllm` kernel cannot
//! stand in). A missing Python or package fails the test; it does not skip it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const HINT: &str = "run `make test` (it creates .venv from tests/requirements.txt and installs chromium) or set DLLM_PYTHON";

/// `DLLM_PYTHON`, else the project's `.venv`.
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("DLLM_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = root().join(".venv/bin/python");
    assert!(venv.exists(), "no project Python: {HINT}");
    venv
}

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A temporary prefix holding the `dllm` kernelspec of this crate's binary (`kernel install --prefix P`).
pub fn kernelspec() -> tempfile::TempDir {
    let prefix = tempfile::tempdir().expect("temp prefix");
    let install = Command::new(env!("CARGO_BIN_EXE_dllm-kernel"))
        .args(["kernel", "install", "--prefix"])
        .arg(prefix.path())
        .args(["--name", "dllm"])
        .output()
        .expect("run dllm-kernel kernel install");
    assert!(install.status.success(), "kernel install failed: {}", String::from_utf8_lossy(&install.stderr));
    assert!(prefix.path().join("share/jupyter/kernels/dllm/kernel.json").exists(), "no kernel.json under {}", prefix.path().display());
    prefix
}

/// Runs `tests/kernel/SCRIPT ARGS...` with the project's Python, Jupyter's paths inside `prefix`; returns the
/// output and its stdout + stderr as text.
pub fn run_script(prefix: &Path, script: &str, args: &[&std::ffi::OsStr]) -> (Output, String) {
    let out = Command::new(python())
        .current_dir(root())
        .arg(format!("tests/kernel/{script}"))
        .args(args)
        .env("JUPYTER_PATH", prefix.join("share/jupyter"))
        .env("JUPYTER_DATA_DIR", prefix.join("data"))
        .env("JUPYTER_CONFIG_DIR", prefix.join("config"))
        .env("JUPYTER_RUNTIME_DIR", prefix.join("runtime"))
        .output()
        .unwrap_or_else(|e| panic!("run tests/kernel/{script}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out, text)
}
