//! The Python conformance suite (tests/kernel/test_kernel.py: jupyter_kernel_test 0.7.0 through
//! jupyter_client) against this crate's `dllm-kernel` binary, so `cargo test` (and `make test`) runs it.
//!
//! Needs a Python with tests/requirements.txt installed: `DLLM_PYTHON`, else the project's `.venv` (both set
//! up by `make test`).

use std::process::Command;

mod common;

#[test]
fn jupyter_kernel_test_suite() {
    let out = Command::new(common::python())
        .current_dir(common::root())
        .args(["-m", "pytest", "tests/kernel", "-q", "-p", "no:cacheprovider"])
        .env("DLLM_KERNEL_EXE", env!("CARGO_BIN_EXE_dllm-kernel"))
        .output()
        .expect("run pytest");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "tests/kernel failed:\n{text}");
    let summary = text.lines().rev().find(|l| l.contains("passed")).unwrap_or_default();
    eprintln!("tests/kernel: {summary}");
}
