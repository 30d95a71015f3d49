//! The `kernel` subcommand's arguments and entry point, shared by the `dllm` binary (`dllm kernel ...`) and
//! the crate's own `dllm-kernel` test binary, so both accept exactly the same command line:
//!
//! ```text
//! kernel --connection-file F [--model DIR] [--device D] [--dtype T]      what kernel.json runs
//! kernel install [--user|--sys-prefix|--prefix P] [--name N] [--display-name S] [--model DIR] [--device D] [--dtype T]
//! kernel uninstall [--user|--sys-prefix|--prefix P] [--name N]
//! ```

use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, Subcommand};

use crate::install::{install, uninstall, InstallOptions, Prefix};

#[derive(Args, Debug, Clone, Default)]
#[command(args_conflicts_with_subcommands = true)]
pub struct KernelArgs {
    #[command(subcommand)]
    pub action: Option<KernelAction>,
    /// The connection file Jupyter wrote (kernel.json passes `{connection_file}`).
    #[arg(long, value_name = "FILE")]
    pub connection_file: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// Which model the kernel's session loads.
#[derive(Args, Debug, Clone, Default)]
pub struct ModelArgs {
    /// Checkpoint folder; default: the embedded model.
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long)]
    pub device: Option<String>,
    /// f32, bf16 or f16.
    #[arg(long)]
    pub dtype: Option<String>,
    /// Routed experts quantized on load: int8 or fp8.
    #[arg(long)]
    pub quantize: Option<String>,
    /// How fp8 experts multiply: auto, dequantize, scaled or emulated.
    #[arg(long)]
    pub fp8_matmul: Option<String>,
}

impl ModelArgs {
    pub fn source(&self) -> dllm_repl::ModelSource {
        dllm_repl::ModelSource { dir: self.model.clone(), device: self.device.clone().unwrap_or_else(|| "auto".into()), dtype: self.dtype.clone(), quantize: self.quantize.clone(), fp8_matmul: self.fp8_matmul.clone() }
    }

    /// The same options as arguments for kernel.json (the folder made absolute).
    fn to_args(&self) -> anyhow::Result<Vec<String>> {
        let mut a = Vec::new();
        if let Some(m) = &self.model {
            let abs = std::fs::canonicalize(m).map_err(|e| anyhow::anyhow!("--model {}: {e}", m.display()))?;
            a.extend(["--model".to_string(), abs.to_string_lossy().into_owned()]);
        }
        if let Some(d) = &self.device {
            a.extend(["--device".to_string(), d.clone()]);
        }
        if let Some(t) = &self.dtype {
            a.extend(["--dtype".to_string(), t.clone()]);
        }
        if let Some(q) = &self.quantize {
            a.extend(["--quantize".to_string(), q.clone()]);
        }
        if let Some(p) = &self.fp8_matmul {
            a.extend(["--fp8-matmul".to_string(), p.clone()]);
        }
        Ok(a)
    }
}

#[derive(Subcommand, Debug, Clone)]
pub enum KernelAction {
    /// Install the kernelspec (kernel.json and logos) where Jupyter finds it.
    Install(InstallArgs),
    /// Remove an installed kernelspec.
    Uninstall(UninstallArgs),
}

#[derive(Args, Debug, Clone, Default)]
pub struct PrefixArgs {
    /// In the user's Jupyter data folder (the default).
    #[arg(long, conflicts_with_all = ["sys_prefix", "prefix"])]
    pub user: bool,
    /// In the active Python environment ($VIRTUAL_ENV or $CONDA_PREFIX).
    #[arg(long, conflicts_with = "prefix")]
    pub sys_prefix: bool,
    /// Under PREFIX/share/jupyter.
    #[arg(long, value_name = "PREFIX")]
    pub prefix: Option<PathBuf>,
}

impl PrefixArgs {
    fn prefix(&self) -> Prefix {
        match (&self.prefix, self.sys_prefix) {
            (Some(p), _) => Prefix::Path(p.clone()),
            (None, true) => Prefix::SysPrefix,
            _ => Prefix::User,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct InstallArgs {
    #[command(flatten)]
    pub prefix: PrefixArgs,
    /// Kernel name (`jupyter console --kernel NAME`).
    #[arg(long, default_value = "dllm")]
    pub name: String,
    /// Name shown in the launcher and the kernel picker.
    #[arg(long, default_value = "dllm (LLaDA2.x)")]
    pub display_name: String,
    /// Model options the kernel starts with.
    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(Args, Debug, Clone)]
pub struct UninstallArgs {
    #[command(flatten)]
    pub prefix: PrefixArgs,
    #[arg(long, default_value = "dllm")]
    pub name: String,
}

/// Runs `kernel ...`: serves a connection file, or installs / uninstalls the kernelspec (printing where).
pub fn main(args: KernelArgs) -> anyhow::Result<()> {
    match args.action {
        Some(KernelAction::Install(a)) => {
            let opts = InstallOptions {
                prefix: a.prefix.prefix(),
                name: a.name,
                display_name: a.display_name,
                exe: None,
                kernel_args: a.model.to_args()?,
            };
            let dir = install(&opts)?;
            println!("installed kernelspec {} in {}", opts.name, dir.display());
            Ok(())
        }
        Some(KernelAction::Uninstall(a)) => {
            let dir = uninstall(&a.name, &a.prefix.prefix())?;
            println!("removed {}", dir.display());
            Ok(())
        }
        None => match &args.connection_file {
            Some(f) => crate::run_with(f, args.model.source()),
            None => bail!("kernel: give --connection-file FILE (Jupyter does, from kernel.json), or `kernel install`"),
        },
    }
}
