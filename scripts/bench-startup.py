#!/usr/bin/env python3
"""Start-to-prompt time of the interactive REPL: spawns `dllm` in a pseudo-terminal 7 times and reports the
median time until the `dllm>` prompt appears (the model keeps loading in the background).
Usage: scripts/bench-startup.py [target/release/dllm]"""
import os, pty, select, statistics, sys, time
exe = sys.argv[1] if len(sys.argv) > 1 else "target/release/dllm"
times = []
for i in range(7):
    t0 = time.perf_counter()
    pid, fd = pty.fork()
    if pid == 0:
        os.environ["DLLM_HISTORY"] = ""
        os.execv(exe, [exe, "--device", "cpu"])
    buf = b""
    while b"dllm>" not in buf:
        r, _, _ = select.select([fd], [], [], 10)
        if not r: break
        buf += os.read(fd, 4096)
    times.append((time.perf_counter() - t0) * 1000)
    os.write(fd, b"\x04")
    os.waitpid(pid, 0)
print("start to prompt ms: median %.0f, all %s" % (statistics.median(times), [round(t) for t in times]))
