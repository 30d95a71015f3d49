#!/usr/bin/env python3
"""Jupyter kernel latency: start to ready with the embedded model, and the round trip of a trivial execute
(request to idle) over loopback, median of 200. Needs jupyter_client (the project's .venv has it).
Usage: .venv/bin/python scripts/bench-kernel.py [target/release/dllm]"""
import os, statistics, subprocess, sys, tempfile, time

exe = sys.argv[1] if len(sys.argv) > 1 else "target/release/dllm"
prefix = tempfile.mkdtemp()
subprocess.run([exe, "kernel", "install", "--prefix", prefix, "--name", "dllm-bench"], check=True, capture_output=True)
os.environ["JUPYTER_PATH"] = os.path.join(prefix, "share", "jupyter")
from jupyter_client import KernelManager  # noqa: E402 (after JUPYTER_PATH)

t0 = time.perf_counter()
km = KernelManager(kernel_name="dllm-bench")
km.start_kernel()
kc = km.client()
kc.start_channels()
kc.wait_for_ready(timeout=60)
kc.execute_interactive("settings", timeout=60, output_hook=lambda m: None)  # the first command that needs nothing but the session
ready = time.perf_counter() - t0
kc.execute_interactive("info", timeout=60, output_hook=lambda m: None)  # waits for the background model load
model_ready = time.perf_counter() - t0
rtt = []
for _ in range(200):
    t = time.perf_counter()
    kc.execute_interactive("# nothing", timeout=10, output_hook=lambda m: None)
    rtt.append((time.perf_counter() - t) * 1000)
print(f"start to ready: {ready:.2f} s; model resident: {model_ready:.2f} s; "
      f"trivial execute round trip: median {statistics.median(rtt):.2f} ms, p90 {sorted(rtt)[179]:.2f} ms")
kc.stop_channels()
km.shutdown_kernel(now=False)
