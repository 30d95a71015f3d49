#!/usr/bin/env python3
"""Writes data/rot.jsonl: the fine-tuning example of docs/training.md, a task the embedded models were never
trained on, written as data rather than code. `rot WORD` answers WORD rotated left by one letter
(`rot abcde` -> `bcdea`). Most lines are prompt/response pairs; one in eight is a two-turn conversation
(a `copy` turn, then a `rot` turn) so the chat format is exercised too. Seeded: the file is reproducible.

With --replay, half the lines are instead instances of the five tasks builtin:tiny was trained on (copy,
reverse, sort, add twice, order; the lengths of engine/src/tasks.rs), the usual remedy for forgetting them
(data/rot-replay.jsonl; docs/training.md measures both files).

Usage: scripts/make-finetune-data.py [--replay] [LINES] > data/rot.jsonl
"""
import json
import random
import sys

rng = random.Random(20261206)
letters = "abcdefghijklmnopqrstuvwxyz"


def word():
    return "".join(rng.choice(letters) for _ in range(rng.randint(3, 8)))


def old_task():
    n = 9 + rng.randint(0, 1) if rng.randint(0, 7) == 0 else rng.randint(3, 8)
    s = "".join(rng.choice(letters) for _ in range(n))
    d = "".join(rng.choice("0123456789") for _ in range(n))
    task = rng.choice(["copy", "reverse", "sort", "add", "add", "order"])
    if task == "copy":
        return f"copy {s}", s
    if task == "reverse":
        return f"reverse {s}", s[::-1]
    if task == "sort":
        return f"sort {d}", "".join(sorted(d))
    if task == "order":
        return f"order {d}", "".join(sorted(d, reverse=rng.random() < 0.5))
    a, b = (rng.randrange(10 ** rng.randint(1, 3)) for _ in range(2))
    return f"{a}+{b}=", str(a + b)


args = [a for a in sys.argv[1:] if a != "--replay"]
replay = "--replay" in sys.argv[1:]
lines = int(args[0]) if args else 2000
for _ in range(lines):
    w = word()
    if replay and rng.random() < 0.5:
        prompt, response = old_task()
        print(json.dumps({"prompt": prompt, "response": response}))
    elif rng.random() < 0.125:
        c = word()
        turns = [
            {"role": "user", "content": f"copy {c}"},
            {"role": "assistant", "content": c},
            {"role": "user", "content": f"rot {w}"},
            {"role": "assistant", "content": w[1:] + w[0]},
        ]
        print(json.dumps({"messages": turns}))
    else:
        print(json.dumps({"prompt": f"rot {w}", "response": w[1:] + w[0]}))
