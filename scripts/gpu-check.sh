#!/usr/bin/env bash
# The one prepared run for the GPU machine (numbers recorded in docs/performance.md). Under 8 minutes.
#
# The GPU machine has PyTorch 2.11.0 (CUDA 13) but no Rust toolchain, so the release binary is built here
# and carried:
#   here:        make release            (or: cargo build --release)
#   device tool: run  command="bash scripts/gpu-check.sh"  carry=["target/release/dllm"]  timeout_s=540
# There, scripts/setup-libtorch.sh finds the installed PyTorch and links `.libtorch` to it; the binary's
# $ORIGIN-relative rpath finds it, and dllm dlopens libtorch_cuda.so at start-up.
#
# Dry run on a CPU machine (checks the script itself, small shapes): DRY_RUN=1 scripts/gpu-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
BIN=target/release/dllm
[ -x "$BIN" ] || { echo "gpu-check: no $BIN; build it here with 'make release' and carry it" >&2; exit 1; }

if [ -n "${DRY_RUN:-}" ]; then
  device=cpu; preset=micro; dtype=f32; prefix=64; block=8; iters=3; qshapes=tiny; qrows=1
else
  device=cuda; preset=llada2-mini; dtype=bf16; prefix=1024; block=32; iters=20; qshapes="tiny mid"; qrows=8
fi

echo "== libtorch"
./scripts/setup-libtorch.sh
ls -l .libtorch

echo "== device: $device (fails here if it is not available)"
"$BIN" info --device "$device" --json | tee "$OUT/info.json"
grep -q "\"device\":\"${device}" "$OUT/info.json"
# The budget memory refusals compare with (cudaMemGetInfo through the CUDA runtime libtorch loaded; null if not found).
python3 -c 'import json, sys; print("memory budget:", json.load(open(sys.argv[1])).get("memory_budget"))' "$OUT/info.json"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.csv"

echo "== same logits on $device as on cpu (random micro checkpoint, f32)"
ck=$(mktemp -d)
"$BIN" init-model --shape micro --seed 7 --std 0.3 --spread --out "$ck" >/dev/null
ids=5,17,99,3,42,8,0,11,64,2
"$BIN" forward --model "$ck" --ids $ids --block-length 4 --top-k 5 --device cpu --json >"$OUT/forward-cpu.json"
"$BIN" forward --model "$ck" --ids $ids --block-length 4 --top-k 5 --device "$device" --json >"$OUT/forward-dev.json"
python3 - "$OUT/forward-cpu.json" "$OUT/forward-dev.json" <<'PY'
import json, sys
a, b = (json.load(open(p))["positions"] for p in sys.argv[1:3])
worst = 0.0
for x, y in zip(a, b):
    assert [t[0] for t in x["top"]] == [t[0] for t in y["top"]], (x, y)
    worst = max(worst, max(abs(s[1] - t[1]) for s, t in zip(x["top"], y["top"])))
print(f"top-5 ids identical at {len(a)} positions; max |p_cpu - p_dev| = {worst:.2e}")
assert worst < 1e-4
PY

echo "== LLaDA2.2 block routing: same logits on $device as on cpu (random micro-2.2 checkpoint, f32)"
ck22=$(mktemp -d)
"$BIN" init-model --shape micro-2.2 --seed 7 --std 0.3 --spread --out "$ck22" >/dev/null
ids22=5,17,99,3,42,8,0,11
"$BIN" forward --model "$ck22" --ids $ids22 --block-length 4 --top-k 5 --device cpu --json >"$OUT/forward22-cpu.json"
"$BIN" forward --model "$ck22" --ids $ids22 --block-length 4 --top-k 5 --device "$device" --json >"$OUT/forward22-dev.json"
python3 - "$OUT/forward22-cpu.json" "$OUT/forward22-dev.json" <<'PY'
import json, sys
a, b = (json.load(open(p))["positions"] for p in sys.argv[1:3])
worst = max(abs(s[1] - t[1]) for x, y in zip(a, b) for s, t in zip(x["top"], y["top"]))
assert all([t[0] for t in x["top"]] == [t[0] for t in y["top"]] for x, y in zip(a, b)), "top-5 ids differ"
print(f"block-routed: top-5 ids identical at {len(a)} positions; max |p_cpu - p_dev| = {worst:.2e}")
assert worst < 1e-4
PY

echo "== LLaDA2.2 Levenshtein decode on $device (llada2.2 preset; trace with deletions / insertions)"
"$BIN" decode --model "$ck22" --device "$device" --prompt-ids 10,11,12 --gen-length 24 --block-length 4 \
  --preset llada2.2 --trace "$OUT/trace22.json" --json | tee "$OUT/decode22.json"

echo "== the embedded LLaDA2.2 model on $device: Levenshtein decoding of the length tasks (compare docs/training.md)"
"$BIN" eval --model builtin:tiny-2.2 --device "$device" --preset llada2.2 --tasks edit --n 50 --json > "$OUT/eval22.json"
python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print({t['task']: (t['accuracy'], t['deletions'], t['insertions']) for t in r['tasks']})" "$OUT/eval22.json"

echo "== $preset ($dtype): a $block-token block forward after a $prefix-token cached prefix"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$OUT/gpu-mem.csv" &
  smi=$!
fi
"$BIN" bench forward --shape "$preset" --device "$device" --dtype "$dtype" --prefix "$prefix" --block "$block" \
  --iters "$iters" --json | tee "$OUT/bench-forward.json"
"$BIN" bench forward --shape "$preset" --device "$device" --dtype "$dtype" --prefix "$prefix" --block "$block" \
  --batch 4 --iters "$iters" --json | tee "$OUT/bench-forward-batch4.json"
if [ -n "${DRY_RUN:-}" ]; then preset22=micro-2.2; else preset22=llada2.2-mini; fi
echo "== $preset22 ($dtype): block routing against group routing, same weights (ratio block / group)"
"$BIN" bench forward --shape "$preset22" --device "$device" --dtype "$dtype" --prefix "$prefix" --block "$block" \
  --iters "$iters" --routing both --json | tee "$OUT/bench-forward-routing.json"
if [ -n "${smi:-}" ]; then
  kill "$smi" 2>/dev/null || true
  echo "peak GPU memory used (nvidia-smi): $(sort -n "$OUT/gpu-mem.csv" | tail -1) MiB"
fi
echo "== quantized experts on $device: int8 / fp8 logits as on cpu (micro), then agreement with the full model"
for q in int8 fp8; do
  "$BIN" forward --model "$ck" --ids $ids --block-length 4 --top-k 5 --device cpu --quantize $q --json >"$OUT/forward-$q-cpu.json"
  "$BIN" forward --model "$ck" --ids $ids --block-length 4 --top-k 5 --device "$device" --quantize $q --compare --json >"$OUT/forward-$q-dev.json"
  python3 - "$OUT/forward-$q-cpu.json" "$OUT/forward-$q-dev.json" "$q" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
worst = max(abs(s[1] - t[1]) for x, y in zip(a["positions"], b["positions"]) for s, t in zip(x["top"], y["top"]))
print(f"{sys.argv[3]}: max |p_cpu - p_dev| = {worst:.2e}; against the full model on the device: {b['fidelity']}")
assert worst < 1e-3
PY
done
# tiny's experts hold one 128 x 128 scale block each; mid's down projection has two scale columns, an 8-byte
# stride cuBLASLt may refuse (then its probe says so, and tiny still checks the fast path).
for qshape in $qshapes; do
echo "== fp8 fast path on $device: torch _scaled_mm (1x128 fp8 activations x 128x128 fp8 weights) against the"
echo "   dequantize path and against its own arithmetic emulated in f32 (random $qshape, $dtype)"
"$BIN" bench quantize --shape "$qshape" --device "$device" --dtype "$dtype" --rows "$qrows" --length 512 --iters 3 --json \
  >"$OUT/bench-quantize-$qshape.json"
python3 - "$OUT/bench-quantize-$qshape.json" "$device" <<'PY'
import json, sys
b = json.load(open(sys.argv[1]))
print(b["model"], "fp8 fast path:", b["fp8_fast_path"])
for r in b["results"]:
    print(f'{r["experts"]:>5} {str(r.get("fp8_matmul") or ""):>10}: forward / full {r.get("forward_over_full", 1):.2f}, '
          f'top-1 vs full {r["fidelity"]["top1_agreement"] if r.get("fidelity") else 1:.3f}, '
          f'KL vs dequantize {(r.get("against_dequantize") or {}).get("kl_mean", "-")}, KL vs emulated {(r.get("against_emulated") or {}).get("kl_mean", "-")}')
scaled = [r for r in b["results"] if r.get("fp8_matmul") == "scaled"]
if scaled:
    s = scaled[0]
    # Closer to its own arithmetic than to the dequantize path (which skips the activations' fp8 rounding).
    assert s["against_emulated"]["kl_mean"] <= s["against_dequantize"]["kl_mean"], s
elif sys.argv[2] == "cuda":
    # Not fatal: the rest of the run still measures the dequantize path; the reason is what to fix next.
    print("FP8 FAST PATH NOT TAKEN on this GPU:", b["fp8_fast_path"]["why"])
PY
done
echo "== $preset ($dtype) with int8 and fp8 experts: block forward latency and memory (compare the bf16 line above)"
for q in int8 fp8; do
  "$BIN" bench forward --shape "$preset" --device "$device" --dtype "$dtype" --prefix "$prefix" --block "$block" \
    --iters "$iters" --quantize $q --json | tee "$OUT/bench-forward-$q.json"
done
python3 -c 'import json, sys; print("llada2-mini fp8 matmul:", json.load(open(sys.argv[1])).get("fp8_matmul"))' "$OUT/bench-forward-fp8.json"
echo "== $preset fp8 with its experts dequantized (the line above took the fast path where its probe passed)"
"$BIN" bench forward --shape "$preset" --device "$device" --dtype "$dtype" --prefix "$prefix" --block "$block" \
  --iters "$iters" --quantize fp8 --fp8-matmul dequantize --json | tee "$OUT/bench-forward-fp8-dequantize.json"
echo "== EBPO: update time by phase on the embedded model; memory of an update (all vs LoRA) on a random model"
if [ -n "${DRY_RUN:-}" ]; then rl_updates=1; rl_preset=micro; else rl_updates=3; rl_preset=mid; fi
"$BIN" bench rl --device "$device" --updates "$rl_updates" --memory "$rl_preset" --json | tee "$OUT/bench-rl.json"
if [ -n "${DRY_RUN:-}" ]; then flash=mid; else flash=llada2-flash; fi
echo "== $flash in fp8 on $device: does it load and run (about 99 GiB of weights on an H200)?"
"$BIN" bench forward --shape "$flash" --device "$device" --dtype "$dtype" --prefix "$prefix" --block "$block" \
  --iters 3 --quantize fp8 --json | tee "$OUT/bench-forward-flash-fp8.json"
echo "== gpu-check passed; outputs in $OUT"
