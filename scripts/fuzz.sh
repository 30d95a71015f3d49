#!/usr/bin/env bash
# A long fuzz campaign of the command language (docs/reliability.md): the standing fuzz of repl/tests/fuzz.rs
# run with many more lines, once per seed, one seed per core, in the release profile. Any abort, internal error
# or failing line that changed the session fails its seed; the log names the line (replay it with that seed).
#
# Usage: [DLLM_FUZZ_HEAVY=0] scripts/fuzz.sh [LINES_PER_SEED] [FIRST_SEED] [SEEDS]
#   DLLM_FUZZ_HEAVY=0 leaves out the seconds-long lines (rl update, rl eval) for many more lines per minute.
#   defaults: 200000 lines per seed, seeds 1..4 (docs/reliability.md has the measured speed)
# Logs: target/fuzz/seed-S.log; the summary is printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
LINES=${1:-200000}
FIRST=${2:-1}
SEEDS=${3:-4}
OUT=target/fuzz
mkdir -p "$OUT"
export OMP_NUM_THREADS=1
# Build the test binary once; the seeds then run it side by side.
cargo test --release -p dllm-repl --test fuzz --no-run
pids=()
for s in $(seq "$FIRST" $((FIRST + SEEDS - 1))); do
  DLLM_FUZZ_LINES=$LINES DLLM_FUZZ_SEED=$s cargo test --release -q -p dllm-repl --test fuzz -- --nocapture >"$OUT/seed-$s.log" 2>&1 &
  pids+=("$!:$s")
done
failed=0
for p in "${pids[@]}"; do
  log="$OUT/seed-${p#*:}.log"
  if wait "${p%%:*}"; then echo "seed ${p#*:}: clean; $(grep -h '^fuzz:' "$log")"; else echo "seed ${p#*:}: FAILED (see $log)"; failed=1; fi
done
exit $failed
