#!/usr/bin/env bash
# Puts libtorch 2.11.0 (the version tch 0.24 is built against) where the build expects it:
# `.libtorch` in the repository root, a link to a `torch/` folder that holds include/ and lib/.
#
# Order of preference:
#   1. $DLLM_LIBTORCH, if set (any folder with include/ and lib/libtorch_cpu.so);
#   2. an installed PyTorch 2.11.0 that python3 can import (the GPU machines have one);
#   3. a per-user cache, filled once from the PyPI wheel with the three wheels libtorch needs on CPU
#      (measured in docs/ARCHITECTURE.md: 543 MB download, 1.2 GB on disk, no Python import needed).
# Idempotent: does nothing when `.libtorch` already points at a usable folder.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.11.0
usable() { [ -f "$1/lib/libtorch_cpu.so" ] && [ -d "$1/include" ]; }

if [ -L .libtorch ] && usable .libtorch; then exit 0; fi

target=""
if [ -n "${DLLM_LIBTORCH:-}" ]; then
  usable "$DLLM_LIBTORCH" || { echo "DLLM_LIBTORCH=$DLLM_LIBTORCH has no lib/libtorch_cpu.so or include/" >&2; exit 1; }
  target="$DLLM_LIBTORCH"
fi

if [ -z "$target" ] && command -v python3 >/dev/null; then
  found=$(python3 - <<'PY' 2>/dev/null || true
import importlib.util, os
spec = importlib.util.find_spec("torch")
if spec and spec.origin:
    d = os.path.dirname(spec.origin)
    v = open(os.path.join(d, "version.py")).read() if os.path.exists(os.path.join(d, "version.py")) else ""
    if "__version__ = '2.11.0" in v:
        print(d)
PY
)
  if [ -n "$found" ] && usable "$found"; then target="$found"; fi
fi

if [ -z "$target" ]; then
  cache="${XDG_CACHE_HOME:-$HOME/.cache}/dllm/libtorch-$TORCH_VERSION"
  if ! usable "$cache/torch"; then
    echo "Installing libtorch $TORCH_VERSION from the PyPI wheel into $cache (once per user, ~543 MB)..." >&2
    tmp="$cache.partial.$$"
    rm -rf "$tmp"
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$tmp" \
      "torch==$TORCH_VERSION" nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85
    rm -rf "$cache"
    mv "$tmp" "$cache"
  fi
  target="$cache/torch"
fi

ln -sfn "$target" .libtorch
echo "libtorch: .libtorch -> $target" >&2
