#!/usr/bin/env bash
# The Rust notebook kernel for dllm (docs/rust-api.md): evcxr's Jupyter kernel, installed once per user like
# libtorch, and a kernelspec `dllm-rust` ("Rust (dllm)") that runs it with what dllm needs:
#   LIBTORCH, LD_LIBRARY_PATH  this checkout's libtorch (the code evcxr builds loads libtorch at run time) and
#                              the toolchain's libstd (rerun after a toolchain update);
#   EVCXR_TMPDIR               .evcxr in this checkout: evcxr's build folder. A notebook in notebooks/ then
#                              depends on the crate with `:dep dllm-repl = { path = "../repl" }`, a path that
#                              reads the same from both folders; its `target` links to a per-user cache, so the
#                              dependencies are built once, not once per checkout.
#
# Usage: scripts/setup-evcxr.sh [--user | --prefix DIR]
#   alone: evcxr_jupyter and the build folder only (what `make test` needs before its tests);
#   --user: also the kernelspec in the user's Jupyter folder (~/.local/share/jupyter/kernels), for JupyterLab,
#           jupyter console and nbconvert (`make rust-kernel`);
#   --prefix DIR: the kernelspec in DIR/share/jupyter/kernels (the notebook test uses a temporary prefix).
set -euo pipefail
cd "$(dirname "$0")/.."

EVCXR_VERSION=0.22.0
dir=""
case "${1:-}" in
  --user) dir="${XDG_DATA_HOME:-$HOME/.local/share}/jupyter/kernels/dllm-rust" ;;
  --prefix) dir="${2:?--prefix needs a folder}/share/jupyter/kernels/dllm-rust" ;;
  "") ;;
  *) echo "usage: scripts/setup-evcxr.sh [--user | --prefix DIR]" >&2; exit 2 ;;
esac

# evcxr_jupyter, built from crates.io once (about 20 minutes on two cores).
bin="${CARGO_HOME:-$HOME/.cargo}/bin/evcxr_jupyter"
if ! { [ -x "$bin" ] && cargo install --list | grep -q "^evcxr_jupyter v$EVCXR_VERSION:"; }; then
  echo "installing evcxr_jupyter $EVCXR_VERSION (cargo install, once per user; about 20 minutes on two cores)" >&2
  cargo install evcxr_jupyter --version "$EVCXR_VERSION" --locked --quiet
fi

torch=$(readlink -f .libtorch)
[ -f "$torch/lib/libtorch_cpu.so" ] || { echo "no libtorch at .libtorch: run scripts/setup-libtorch.sh first" >&2; exit 1; }

# evcxr's build folder, with its target in a per-user cache.
cache="${XDG_CACHE_HOME:-$HOME/.cache}/dllm/evcxr-target"
mkdir -p .evcxr "$cache"
if [ ! -L .evcxr/target ]; then rm -rf .evcxr/target; ln -s "$cache" .evcxr/target; fi

[ -n "$dir" ] || exit 0
mkdir -p "$dir"
root=$(pwd)
# Rust's own shared libraries (evcxr links cells against libstd as a dylib): their relative runpath does not
# survive the link from .evcxr/target to the cache, so the loader is told where they are.
rustlib=$(rustc --print target-libdir)
cat > "$dir/kernel.json" <<EOF
{
  "argv": ["$bin", "--control_file", "{connection_file}"],
  "display_name": "Rust (dllm)",
  "language": "rust",
  "interrupt_mode": "message",
  "env": {
    "LIBTORCH": "$torch",
    "LD_LIBRARY_PATH": "$torch/lib:$rustlib",
    "EVCXR_TMPDIR": "$root/.evcxr"
  }
}
EOF
echo "kernelspec dllm-rust (\"Rust (dllm)\") in $dir" >&2
