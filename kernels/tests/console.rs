//! Two `jupyter console --existing` clients on one kernel (tests/kernel/console_check.py, pexpect): the second
//! attaches cleanly, both see one session, and a long command prints one compact progress line before its
//! result (the console ignores display updates). The console logs are kept in target/console-check/.
//!
//! Needs tests/requirements.txt (jupyter_console, pexpect): `make test` sets it up.

mod common;

#[test]
fn two_jupyter_consoles_share_one_kernel_cleanly() {
    let prefix = common::kernelspec();
    let out_dir = common::root().join("target/console-check");
    std::fs::create_dir_all(&out_dir).expect("target/console-check");
    let (out, text) = common::run_script(prefix.path(), "console_check.py", &[out_dir.as_os_str()]);
    assert!(out.status.success(), "console check failed ({} if a package is missing):\n{text}", common::HINT);
    assert!(text.contains("two consoles on one kernel"), "{text}");
}
