//! Two `jupyter console --existing` clients on one kernel (tests/kernel/console_check.py, pexpect): the second
//! attaches cleanly, both see one session, and a long command prints one compact progress line before its
//! result (the console ignores display updates). The console logs are kept in target/console-check/.
//!
//! Needs a Python with tests/requirements.txt (jupyter_console, pexpect): `make test` sets it up. Missing ones
//! fail the test; they do not skip it.

use std::path::{Path, PathBuf};
use std::process::Command;

const HINT: &str = "run `make test` (it creates .venv from tests/requirements.txt) or set DLLM_PYTHON";

fn python() -> PathBuf {
    if let Ok(p) = std::env::var("DLLM_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(venv.exists(), "no Python with jupyter_console: {HINT}");
    venv
}

#[test]
fn two_jupyter_consoles_share_one_kernel_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let prefix = tempfile::tempdir().expect("temp prefix");
    let install = Command::new(env!("CARGO_BIN_EXE_dllm-kernel"))
        .args(["kernel", "install", "--prefix"])
        .arg(prefix.path())
        .args(["--name", "dllm"])
        .output()
        .expect("run dllm-kernel kernel install");
    assert!(install.status.success(), "kernel install failed: {}", String::from_utf8_lossy(&install.stderr));
    let out_dir = root.join("target/console-check");
    std::fs::create_dir_all(&out_dir).expect("target/console-check");
    let out = Command::new(python())
        .current_dir(&root)
        .arg("tests/kernel/console_check.py")
        .arg(&out_dir)
        .env("JUPYTER_PATH", prefix.path().join("share/jupyter"))
        .env("JUPYTER_DATA_DIR", prefix.path().join("data"))
        .env("JUPYTER_CONFIG_DIR", prefix.path().join("config"))
        .env("JUPYTER_RUNTIME_DIR", prefix.path().join("runtime"))
        .output()
        .expect("run tests/kernel/console_check.py");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "console check failed ({HINT} if a package is missing):\n{text}");
    assert!(text.contains("two consoles on one kernel"), "{text}");
}
