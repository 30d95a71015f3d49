#!/usr/bin/env python3
"""Writes data/rot.jsonl: the fine-tuning example of docs/training.md, a task the embedded models were never
trained on, written as data rather than code. `rot WORD` answers WORD rotated left by one letter
(`rot abcde` -> `bcdea`). Most lines are prompt/response pairs; one in eight is a two-turn conversation
(a `copy` turn, then a `rot` turn) so the chat format is exercised too. Seeded: the file is reproducible.

Usage: scripts/make-finetune-data.py [LINES] > data/rot.jsonl
"""
import json
import random
import sys

rng = random.Random(20261206)
letters = "abcdefghijklmnopqrstuvwxyz"


def word():
    return "".join(rng.choice(letters) for _ in range(rng.randint(3, 8)))


lines = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
for _ in range(lines):
    w = word()
    if rng.random() < 0.125:
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
