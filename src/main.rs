//! `dllm`: a REPL and Jupyter kernel for LLaDA2.x diffusion language models.
//!
//! `dllm` alone starts on the embedded default model; subcommands write random checkpoints, run a forward
//! pass for comparison with outside implementations, and benchmark.

mod bench;
mod decode_cmd;
mod model_cmds;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "dllm", version, about = "A REPL and Jupyter kernel for LLaDA2.x diffusion language models")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Load a model and print its summary (parameters, device, dtype, memory).
    Info(model_cmds::InfoArgs),
    /// Write a random checkpoint in the official LLaDA2 layout (config.json, safetensors, tokenizer.json).
    InitModel(model_cmds::InitArgs),
    /// Run one forward pass and print the top-k tokens and probabilities at every position.
    Forward(model_cmds::ForwardArgs),
    /// Decode a prompt to the end; --trace writes every step's Gamma and Delta as JSON.
    Decode(decode_cmd::DecodeArgs),
    /// Benchmarks (numbers for docs/performance.md).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn main() -> ExitCode {
    // Before anything asks libtorch about CUDA (see dllm_engine::load_cuda_backend).
    let _ = dllm_engine::load_cuda_backend();
    let cli = Cli::parse();
    let result = match cli.command {
        None => model_cmds::info(&model_cmds::InfoArgs::default()).map(|()| {
            println!("(The interactive REPL is not built yet: this build prints the model summary and exits.)");
        }),
        Some(Command::Info(a)) => model_cmds::info(&a),
        Some(Command::InitModel(a)) => model_cmds::init_model(&a),
        Some(Command::Forward(a)) => model_cmds::forward(&a),
        Some(Command::Decode(a)) => decode_cmd::decode(&a),
        Some(Command::Bench(b)) => bench::run(b),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
