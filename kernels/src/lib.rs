//! dllm-kernel: the Jupyter kernel over the same `Session` as the terminal REPL.
//!
//! Three roles, as in xeus: the transport (`server`: the five sockets and their threads; `wire`: framing and
//! HMAC signatures; `connection`: the connection file), the protocol core (`worker`: dispatch, busy/idle,
//! execution counts, history; `publish`: IOPub and coalesced display updates; `messages`: the contents), and
//! the interpreter (`interpreter`: the trait; `session_interp`: dllm commands; `mock`: for protocol tests).
//! `install` writes the kernelspec; `cli` is the `kernel` subcommand (`dllm kernel ...`).

pub mod cli;
mod connection;
mod install;
pub mod interpreter;
mod messages;
pub mod mock;
mod publish;
mod server;
mod session_interp;
mod sigint;
pub mod wire;
mod worker;

use std::path::Path;

pub use connection::ConnectionInfo;
pub use install::{install, uninstall, InstallOptions, Prefix};
pub use server::{serve, Shutdown};
pub use session_interp::{notebook_metadata, SessionInterpreter};

/// Runs the dllm kernel on a connection file (what `dllm kernel --connection-file F` does) until the client
/// shuts it down. The embedded default model starts loading at once; SIGINT interrupts the running cell.
pub fn run(connection_file: &Path) -> anyhow::Result<()> {
    run_with(connection_file, dllm_repl::ModelSource::default())
}

/// `run` on a chosen model.
pub fn run_with(connection_file: &Path, model: dllm_repl::ModelSource) -> anyhow::Result<()> {
    // Before the session's loader asks libtorch about CUDA (docs/ARCHITECTURE.md, "Build"); idempotent.
    let _ = dllm_engine::load_cuda_backend();
    let conn = ConnectionInfo::load(connection_file)?;
    let interp = SessionInterpreter::new(model);
    sigint::route_to(interpreter::Interpreter::interrupter(&interp));
    serve(&conn, interp)?;
    Ok(())
}
