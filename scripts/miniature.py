#!/usr/bin/env python3
"""The paper in miniature: runs `dllm eval --json` on the held-out split under each decoding setting and
prints the markdown tables of docs/training.md (accuracy % / TPF per task, and the derived ratios).

    scripts/miniature.py --dllm target/release/dllm --model DIR [--control DIR] [--n 250] [--out results.json]

Without --model the embedded model is evaluated. Standard library only.
"""
import argparse
import json
import subprocess
import sys

SETTINGS = [
    ("Q (0.7 / 0.5)", ["--preset", "Q"]),
    ("S (0.5 / 0.0)", ["--preset", "S"]),
    ("S, editing off", ["--preset", "S", "--set", "edit_threshold=off"]),
    ("0.9, editing off (LLaDA2.0 style)", ["--preset", "Q", "--set", "threshold=0.9", "--set", "edit_threshold=off"]),
    ("S, tau_edit 1.0 (no edit, 2.1 loop)", ["--preset", "S", "--set", "edit_threshold=1.0"]),
    ("0.9, tau_edit 1.0 (no edit, 2.1 loop)", ["--preset", "Q", "--set", "threshold=0.9", "--set", "edit_threshold=1.0"]),
    ("S + MBE (window 1)", ["--preset", "S", "--set", "mbe_window=1"]),
    ("Q + MBE (window 1)", ["--preset", "Q", "--set", "mbe_window=1"]),
]
CONTROL = ["Q (0.7 / 0.5)", "S (0.5 / 0.0)", "S, editing off", "S, tau_edit 1.0 (no edit, 2.1 loop)"]
TASKS = ["copy", "reverse", "sort", "add", "order"]


def evaluate(dllm, model, args, n):
    cmd = [dllm, "eval", "--json", "--device", "cpu", "--n", str(n)] + args
    if model:
        cmd += ["--model", model]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def table(rows):
    lines = ["| setting (tau_mask / tau_edit) | " + " | ".join(TASKS) + " | all |", "|---" * (len(TASKS) + 2) + "|"]
    for name, r in rows:
        cells = {t["task"]: t for t in r["tasks"]}
        line = [f"{100 * cells[t]['accuracy']:.1f} / {cells[t]['tpf']:.2f}" for t in TASKS]
        lines.append(f"| {name} | " + " | ".join(line) + f" | {100 * r['accuracy']:.1f} / {r['tpf']:.2f} |")
    return "\n".join(lines)


def task(r, name):
    return next(t for t in r["tasks"] if t["task"] == name)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dllm", default="target/release/dllm")
    ap.add_argument("--model")
    ap.add_argument("--control")
    ap.add_argument("--n", type=int, default=250)
    ap.add_argument("--out")
    a = ap.parse_args()
    results = {"model": {}, "control": {}}
    for name, args in SETTINGS:
        print(f"model: {name}", file=sys.stderr)
        results["model"][name] = evaluate(a.dllm, a.model, args, a.n)
    if a.control:
        for name, args in SETTINGS:
            if name in CONTROL:
                print(f"control: {name}", file=sys.stderr)
                results["control"][name] = evaluate(a.dllm, a.control, args, a.n)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(results, f, indent=1)
    m = results["model"]
    print(f"### Model ({a.model or 'embedded'}), {a.n} held-out instances per task: accuracy % / TPF\n")
    print(table(list(m.items())))
    if results["control"]:
        print(f"\n### M2T-only control ({a.control})\n")
        print(table(list(results["control"].items())))
    q, s, s_off, llada20 = (task(m[k], "order") for k in [SETTINGS[0][0], SETTINGS[1][0], SETTINGS[2][0], SETTINGS[3][0]])
    print("\n### On the ambiguous task (order)\n")
    print(f"- S-mode TPF / Q-mode TPF: {s['tpf'] / q['tpf']:.2f} (goal >= 1.15)")
    in_loop = task(m["0.9, tau_edit 1.0 (no edit, 2.1 loop)"], "order")
    print(f"- S-mode TPF / 0.9 no-editing TPF: {s['tpf'] / llada20['tpf']:.2f} against the LLaDA2.0 loop (a block ends when "
          f"its masks are gone), {s['tpf'] / in_loop['tpf']:.2f} against the 2.1 loop with tau_edit 1.0 (goal >= 1.4)")
    print(f"- S-mode accuracy with editing minus without: {100 * (s['accuracy'] - s_off['accuracy']):+.1f} points (goal >= +25)")
    if results["control"]:
        c = results["control"]
        cs, cs_off = task(c[SETTINGS[1][0]], "order"), task(c[SETTINGS[2][0]], "order")
        print(f"- control, S mode, editing gain: {100 * (cs['accuracy'] - cs_off['accuracy']):+.1f} points")
    print("\n### Structural ceiling (Q mode): TPF / ceiling TPF\n")
    for t in TASKS:
        r = task(m[SETTINGS[0][0]], t)
        print(f"- {t}: {r['tpf']:.3f} / {r['ceiling_tpf']:.3f} (difference {r['tpf'] - r['ceiling_tpf']:+.3f})")


if __name__ == "__main__":
    main()
