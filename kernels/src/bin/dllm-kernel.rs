//! `dllm-kernel kernel ...`: the kernel alone, with the same command line as `dllm kernel ...` (see
//! `dllm_kernel::cli`), for testing the kernel before and apart from the main binary.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "dllm-kernel", about = "The dllm Jupyter kernel")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the kernel on a connection file, or install / uninstall its kernelspec.
    Kernel(dllm_kernel::cli::KernelArgs),
}

fn main() -> std::process::ExitCode {
    let Command::Kernel(args) = Cli::parse().command;
    match dllm_kernel::cli::main(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
