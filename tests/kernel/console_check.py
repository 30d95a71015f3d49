"""Two `jupyter console --existing` clients on one dllm kernel, as two people (or a notebook and a terminal) share a
session: the second client must attach cleanly (no "Duplicate Signature" from jupyter_client, no traceback), both
see the one session's state, and a long command prints one compact progress line in the console (which ignores
display updates) before its result.

Usage: python tests/kernel/console_check.py LOG_DIR  (kernels/tests/console.rs runs it, with JUPYTER_PATH at a
temporary prefix holding the `dllm` kernelspec). Needs jupyter_console and pexpect (tests/requirements.txt).
"""

import os
import subprocess
import sys
import tempfile
import time

try:
    import pexpect
    import jupyter_console  # noqa: F401
except ImportError as e:
    print(f"missing Python package: {e.name}; run `make test` (it installs tests/requirements.txt into .venv)")
    sys.exit(3)

PROMPT = r"In \[\d+\]: "


def console(conn, log_dir, name):
    # image_handler=None: charts print as text here instead of opening an image viewer.
    c = pexpect.spawn(sys.executable, ["-m", "jupyter_console", "--existing", conn, "--simple-prompt",
                                       "--ZMQTerminalInteractiveShell.image_handler=None"], encoding="utf-8", timeout=120,
                      dimensions=(50, 200))
    c.logfile_read = open(os.path.join(log_dir, f"console-{name}.log"), "w")
    c.expect(PROMPT)
    return c


def run(c, line):
    c.sendline(line)
    c.expect(PROMPT)
    return c.before


def main(log_dir):
    runtime = tempfile.mkdtemp()
    conn = os.path.join(runtime, "kernel-dllm-check.json")
    # `jupyter kernel` (jupyter_client's KernelApp) starts the kernel and writes its connection file.
    launcher = os.path.join(os.path.dirname(sys.executable), "jupyter-kernel")
    kernel = subprocess.Popen([launcher, "--kernel=dllm", f"--KernelManager.connection_file={conn}"],
                              stdout=open(os.path.join(log_dir, "kernel.log"), "w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while not os.path.exists(conn) and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(1)
        a = console(conn, log_dir, "a")
        b = console(conn, log_dir, "b")
        out_a = run(a, "chat sort 52817") + run(a, "run")
        progress = [l for l in out_a.splitlines() if l.startswith("… step")]
        assert len(progress) == 1, f"one compact progress line in the console, got {progress}"
        assert "output: \"12578<|endoftext|>\"" in out_a, out_a[-600:]
        # The second client sees the first one's decode: one session behind both.
        out_b = run(b, "stats")
        assert "forwards" in out_b and "tpf" in out_b, out_b
        out_b += run(b, "chart")
        assert "Decoding, step by step" in out_b and "Confidence of each step's writes" in out_b, out_b
        out_a += run(a, "branches")
        for name, text in (("a", out_a), ("b", out_b)):
            for bad in ("Duplicate Signature", "Traceback", "Exception"):
                assert bad not in text, f"console {name} printed {bad!r}:\n{text}"
        print(f"two consoles on one kernel: 1 progress line, shared state, no errors (logs in {log_dir})")
        for c in (a, b):
            c.sendcontrol("d")
            c.close(force=True)
        return 0
    finally:
        kernel.terminate()
        kernel.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
