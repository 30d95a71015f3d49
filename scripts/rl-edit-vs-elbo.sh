#!/usr/bin/env bash
# Does EBPO with the edit-aware ratio (L-EBPO, `edit:N:R`) raise the held-out reward more than with the plain
# ELBO (`stratified:N:anti`, the RL default), on one task, on a LLaDA2.2 model? (docs/rl.md, "Edit-aware ratio vs
# plain ELBO".)
#
# Two arms, each a fresh `dllm` process from the same checkpoint: the same seed (so the same prompt stream),
# learning rate, rollout preset (`auto` = llada2.2, the Levenshtein decoder, on a model with edit ids), trainable
# set and number of updates; only `rl set estimator` differs. Each arm prints the greedy held-out reward on
# HELD instances before and after its updates; the summary table at the end compares the gains.
#
# Usage: scripts/rl-edit-vs-elbo.sh [MODEL] [TASK] [UPDATES]
#   MODEL    checkpoint folder or embedded model (default builtin:tiny-2.2)
#   TASK     a task of the suite (default rle: the length task whose mixed drafts DELETE / INSERT repair)
#   UPDATES  EBPO updates per arm (default 40)
# Environment: DLLM (binary, default target/release/dllm), DEVICE (default cpu), HELD (held-out instances, 200),
#   SEED (0), LR (1e-4), TRAINABLE (all), ELBO (stratified:4:anti), EDIT (edit:4:0.1), OUT (target/rl-edit-vs-elbo),
#   EXTRA (more `-c` commands for both arms, e.g. EXTRA='rl set batch 8').
# Logs: $OUT/<task>-<arm>.log (every command's output) and $OUT/<task>-summary.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-builtin:tiny-2.2}
TASK=${2:-rle}
UPDATES=${3:-40}
DLLM=${DLLM:-target/release/dllm}
DEVICE=${DEVICE:-cpu}
HELD=${HELD:-200}
SEED=${SEED:-0}
LR=${LR:-1e-4}
TRAINABLE=${TRAINABLE:-all}
ELBO=${ELBO:-stratified:4:anti}
EDIT=${EDIT:-edit:4:0.1}
OUT=${OUT:-target/rl-edit-vs-elbo}
case $MODEL in
  builtin:*) ;;
  *) [ -d "$MODEL" ] || { echo "no checkpoint folder at $MODEL (give one as the first argument)" >&2; exit 2; } ;;
esac
[ -x "$DLLM" ] || { echo "no dllm binary at $DLLM (cargo build --release, or set DLLM)" >&2; exit 2; }
mkdir -p "$OUT"
extra=()
if [ -n "${EXTRA:-}" ]; then extra=(-c "$EXTRA"); fi

# The held-out reward of the `rl eval` line "held-out reward (...): X".
reward_lines() { sed -n 's/^held-out reward (.*): \([-0-9.]*\)$/\1/p' "$1"; }

summary="$OUT/$TASK-summary.txt"
printf '%s\n' "model $MODEL, task $TASK, $UPDATES updates, seed $SEED, lr $LR, trainable $TRAINABLE, held-out $HELD" > "$summary"
printf '%-8s %-22s %8s %8s %8s %8s\n' arm estimator before after gain seconds >> "$summary"
for arm in elbo edit; do
  est=$ELBO
  [ "$arm" = edit ] && est=$EDIT
  log="$OUT/$TASK-$arm.log"
  echo "== $arm: estimator $est, $UPDATES updates on $TASK"
  start=$(date +%s)
  "$DLLM" --model "$MODEL" --device "$DEVICE" \
    -c "rl set tasks $TASK" -c "rl set seed $SEED" -c "rl set lr $LR" -c "rl set trainable $TRAINABLE" \
    -c "rl set estimator $est" "${extra[@]}" -c "rl show" \
    -c "rl eval $HELD" -c "rl update $UPDATES" -c "rl eval $HELD" > "$log" 2>&1 \
    || { echo "the $arm arm failed; its log:" >&2; tail -20 "$log" >&2; exit 1; }
  secs=$(( $(date +%s) - start ))
  mapfile -t r < <(reward_lines "$log")
  [ ${#r[@]} -eq 2 ] || { echo "expected two held-out rewards in $log, found ${#r[@]}" >&2; exit 1; }
  gain=$(awk -v a="${r[0]}" -v b="${r[1]}" 'BEGIN { printf "%+.3f", b - a }')
  printf '%-8s %-22s %8s %8s %8s %8s\n' "$arm" "$est" "${r[0]}" "${r[1]}" "$gain" "$secs" >> "$summary"
  grep -E "^held-out reward" "$log"
done
echo
cat "$summary"
