//! `dllm`: a REPL and Jupyter kernel for LLaDA2.x diffusion language models.
//!
//! `dllm` alone starts the REPL on the embedded default model (or `--model DIR`): interactive on a terminal,
//! otherwise it runs the commands on stdin; `dllm -c "cmd; cmd"` and `dllm run FILE` run commands and exit.
//! Subcommands write random checkpoints, run a forward pass for comparison with outside implementations, and
//! benchmark.

mod bench;
mod bench_likelihood;
mod bench_rl;
mod bench_train;
mod decode_cmd;
mod eval_cmd;
mod model_cmds;
mod quant_cmd;
mod train_cmd;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use dllm_repl::terminal;
use dllm_repl::ModelSource;

#[derive(Parser)]
#[command(name = "dllm", version, about = "A REPL and Jupyter kernel for LLaDA2.x diffusion language models")]
struct Cli {
    /// Run these REPL commands (separated by `;` outside double quotes) and exit.
    #[arg(short = 'c', long = "command", value_name = "COMMANDS")]
    commands: Vec<String>,
    /// Vi key bindings in the interactive REPL (default emacs; DLLM_EDIT_MODE=vi also works).
    #[arg(long)]
    vi: bool,
    #[command(flatten)]
    session: SessionArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

/// The REPL's model and output options (for `dllm`, `dllm -c` and `dllm run`).
#[derive(Args, Clone, Default)]
struct SessionArgs {
    /// Checkpoint folder (config.json, model.safetensors[.index.json], tokenizer.json) or an embedded model
    /// (builtin:tiny, builtin:tiny-2.2); default: builtin:tiny.
    #[arg(long)]
    model: Option<PathBuf>,
    /// auto (CUDA when available, else CPU), cpu, cuda or cuda:N.
    #[arg(long)]
    device: Option<String>,
    /// f32, bf16 or f16 (default: bf16 on CUDA, f32 on CPU).
    #[arg(long)]
    dtype: Option<String>,
    /// Hold the routed experts quantized: int8 or fp8 (default: as the checkpoint stores them).
    #[arg(long)]
    quantize: Option<String>,
    /// How fp8 experts multiply: auto (fp8 tensor cores where the GPU has them), dequantize, scaled or emulated.
    #[arg(long)]
    fp8_matmul: Option<String>,
    /// Print one JSON object per command: {"command", "ok", "result"} or {"command", "ok": false, "error"}.
    #[arg(long)]
    json: bool,
    /// Go on after a failing command (the exit status is still non-zero).
    #[arg(long)]
    keep_going: bool,
}

impl SessionArgs {
    /// These options, falling back to `outer`'s (`dllm --model X run FILE`).
    fn or(self, outer: &SessionArgs) -> SessionArgs {
        SessionArgs {
            model: self.model.or_else(|| outer.model.clone()),
            device: self.device.or_else(|| outer.device.clone()),
            dtype: self.dtype.or_else(|| outer.dtype.clone()),
            quantize: self.quantize.or_else(|| outer.quantize.clone()),
            fp8_matmul: self.fp8_matmul.or_else(|| outer.fp8_matmul.clone()),
            json: self.json || outer.json,
            keep_going: self.keep_going || outer.keep_going,
        }
    }

    fn source(&self) -> ModelSource {
        ModelSource { dir: self.model.clone(), device: self.device.clone().unwrap_or_else(|| "auto".into()), dtype: self.dtype.clone(), quantize: self.quantize.clone(), fp8_matmul: self.fp8_matmul.clone() }
    }

    fn options(&self, vi: bool) -> terminal::Options {
        terminal::Options { json: self.json, keep_going: self.keep_going, vi }
    }
}

#[derive(Args)]
struct RunArgs {
    /// A script: one REPL command per line, `#` comments, a line ending in `\` continues on the next.
    file: PathBuf,
    #[command(flatten)]
    session: SessionArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Load a model and print its summary (parameters, device, dtype, memory).
    Info(model_cmds::InfoArgs),
    /// Write a random checkpoint in the official LLaDA2 layout (config.json, safetensors, tokenizer.json).
    InitModel(model_cmds::InitArgs),
    /// Write a checkpoint's routed experts quantized (int8 or fp8) as a new checkpoint, read back as it is.
    Quantize(quant_cmd::QuantizeArgs),
    /// Run one forward pass and print the top-k tokens and probabilities at every position.
    Forward(model_cmds::ForwardArgs),
    /// Decode a prompt to the end; --trace writes every step's Gamma and Delta as JSON.
    Decode(decode_cmd::DecodeArgs),
    /// Evaluate a model on the held-out split of the task suite (accuracy, TPF, steps, edits per task).
    Eval(eval_cmd::EvalArgs),
    /// Benchmarks (numbers for docs/performance.md).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Train a model on the synthetic task suite (M2T + T2T + MTF); resumable.
    Train(train_cmd::TrainArgs),
    /// Run a script of REPL commands and exit (non-zero status at the first failing command).
    Run(RunArgs),
    /// Jupyter kernel: run on a connection file, or install / uninstall the kernelspec.
    Kernel(dllm_kernel::cli::KernelArgs),
}

/// `dllm` without a subcommand: `-c`, the interactive REPL on a terminal, or the commands on stdin.
fn repl(cli: Cli) -> i32 {
    let (source, opts) = (cli.session.source(), cli.session.options(cli.vi));
    if !cli.commands.is_empty() {
        terminal::run_command_string(source, &cli.commands.join(";"), &opts)
    } else if std::io::stdin().is_terminal() && !opts.json {
        terminal::interactive(source, &opts)
    } else {
        terminal::run_stdin(source, &opts)
    }
}

fn main() -> ExitCode {
    // Before anything asks libtorch about CUDA (see dllm_engine::load_cuda_backend).
    let _ = dllm_engine::load_cuda_backend();
    let cli = Cli::parse();
    if !cli.commands.is_empty() && cli.command.is_some() {
        eprintln!("error: -c runs REPL commands; it does not go with a subcommand");
        return ExitCode::from(2);
    }
    if matches!(cli.command, Some(Command::Info(_) | Command::InitModel(_) | Command::Quantize(_) | Command::Forward(_) | Command::Decode(_) | Command::Eval(_) | Command::Bench(_) | Command::Train(_))) {
        // Output-only subcommands end quietly when their reader goes away (`dllm info | head -2`), like any
        // Unix filter, instead of panicking on the failed write. Not for the REPL and the kernel: they keep
        // running past closed pipes (a reward command that exits early must not take the session with it).
        #[cfg(unix)]
        // SAFETY: signal(2) only sets how the process reacts to SIGPIPE; no memory is involved.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match cli.command {
        None => return exit(repl(cli)),
        Some(Command::Run(a)) => {
            let s = a.session.or(&cli.session);
            return exit(terminal::run_script(s.source(), &a.file, &s.options(cli.vi)));
        }
        Some(Command::Info(a)) => model_cmds::info(&a),
        Some(Command::InitModel(a)) => model_cmds::init_model(&a),
        Some(Command::Quantize(a)) => quant_cmd::quantize(&a),
        Some(Command::Forward(a)) => model_cmds::forward(&a),
        Some(Command::Decode(a)) => decode_cmd::decode(&a),
        Some(Command::Eval(a)) => eval_cmd::eval(&a),
        Some(Command::Bench(b)) => bench::run(b),
        Some(Command::Train(a)) => train_cmd::train(&a),
        Some(Command::Kernel(a)) => dllm_kernel::cli::main(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Ends the REPL's process with `status` at once, without C++ static destructors: when a script fails before
/// the background load of the model has finished, the loading thread would otherwise meet libtorch being torn
/// down under it and print a panic on the way out.
fn exit(status: i32) -> ExitCode {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: _exit(2) ends the process; everything the REPL writes (output, history, saves) is done by now.
    unsafe { libc::_exit(status.clamp(0, 255)) }
}
