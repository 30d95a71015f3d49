#!/usr/bin/env bash
# The CPU benchmarks whose numbers docs/performance.md records (release build; run on a quiet machine).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/dllm
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for p in tiny mid; do "$BIN" bench forward --shape "$p" --prefix 256 --block 32 --json; done
"$BIN" init-model --shape mid --out "$tmp/mid" >/dev/null
"$BIN" bench load --model "$tmp/mid" --json
"$BIN" bench decode --json
"$BIN" bench session --json
python3 scripts/bench-startup.py "$BIN"
.venv/bin/python scripts/bench-kernel.py "$BIN"
