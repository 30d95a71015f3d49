//! The kernel's outputs as a person sees them in JupyterLab, in headless Chromium: tests/kernel/browser_check.py
//! executes a notebook with charts and tables through the `dllm` kernel (installed into a temporary prefix),
//! opens it from its file (untrusted, as a shared or downloaded notebook is) and checks that the charts are drawn
//! images and the tables tables. The screenshot is kept in target/browser-check/.
//!
//! Needs tests/requirements.txt (jupyterlab, selenium, nbclient) and Debian's chromium and chromium-driver:
//! `make test` sets up both.

mod common;

#[test]
fn charts_and_tables_show_in_an_untrusted_notebook_in_jupyterlab() {
    let prefix = common::kernelspec();
    let out_dir = common::root().join("target/browser-check");
    std::fs::create_dir_all(&out_dir).expect("target/browser-check");
    let (out, text) = common::run_script(prefix.path(), "browser_check.py", &[out_dir.as_os_str()]);
    assert!(out.status.success(), "browser check failed ({} if a package is missing):\n{text}", common::HINT);
    assert!(text.contains("3 charts drawn as images"), "{text}");
}
