#!/usr/bin/env bash
# The EBPO demonstration of docs/rl.md, on the embedded model, CPU, one thread (reproducible numbers):
#   A. preference: on `order` (ascending and descending both right) reward only the canonical ascending answer
#      (`exact`); Q-mode rollouts; 30 updates of every parameter, lr 1e-4.
#   B. a weak setting: `order` decoded in S mode (parallel drafts mix the two answers); reward the task's verifier;
#      S-mode rollouts; 40 updates, lr 3e-4.
# Each run reports the greedy held-out reward before and after (250 instances), saves the policy under
# target/rl-demo/{A,B}, and `dllm eval` checks every task of the suite on the saved policy (Q and S mode).
# Usage: scripts/rl-demo.sh [A|B]...   (default: both; about 2-3 minutes each on one core)
set -euo pipefail
cd "$(dirname "$0")/.."
DLLM=${DLLM:-target/release/dllm}
export OMP_NUM_THREADS=1
OUT=target/rl-demo
mkdir -p "$OUT"
runs=("$@")
[ ${#runs[@]} -eq 0 ] && runs=(A B)
for run in "${runs[@]}"; do
  case "$run" in
    A) cfg=(-c "rl set tasks order" -c "rl set reward exact" -c "rl set preset Q" -c "rl set lr 1e-4" -c "rl set seed 0"); n=30 ;;
    B) cfg=(-c "rl set tasks order" -c "rl set reward verifier" -c "rl set preset S" -c "rl set lr 3e-4" -c "rl set seed 0"); n=40 ;;
    *) echo "unknown run $run (A or B)" >&2; exit 2 ;;
  esac
  echo "== run $run: $n updates"
  "$DLLM" --device cpu "${cfg[@]}" -c "rl eval 250" -c "rl update $n" -c "rl eval 250" -c "rl save $OUT/$run" \
    | grep -E "^held-out reward|^ +[0-9]+ +[0-9.]+ " | tee "$OUT/$run.log"
  for preset in Q S; do
    echo "-- dllm eval, preset $preset: embedded model, then the policy of run $run"
    "$DLLM" eval --device cpu --preset "$preset" --n 250 | grep -E "^(copy|reverse|sort|add|order|all) "
    "$DLLM" eval --device cpu --preset "$preset" --n 250 --model "$OUT/$run" | grep -E "^(copy|reverse|sort|add|order|all) "
  done
done
