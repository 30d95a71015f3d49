"""The dllm Jupyter kernel through jupyter_client, as Jupyter front-ends drive it.

`KernelTests` is jupyter_kernel_test 0.7.0's conformance suite: each sample attribute it defines switches a test
on. The kernel's language is dllm commands (one per line), so the samples are dllm commands. Left out, on purpose:

- code_hello_world / code_stderr: no dllm command prints to stdout or stderr; commands return typed values that
  the kernel sends as execute_result / display_data (and the command table may not grow a print command for this).
- code_clear_output: no command clears a cell's output.

The kernel program: $DLLM_KERNEL_EXE, else target/{debug,release}/dllm-kernel (the crate's test binary, same
command line as `dllm kernel ...`). Its kernelspec is installed with `kernel install --prefix` into a temporary
folder put on JUPYTER_PATH, so the test also checks `kernel install` / `kernel uninstall`.

Run: python -m pytest tests/kernel   (or: python -m unittest discover -s tests/kernel)
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

import jupyter_client
import jupyter_kernel_test

ROOT = pathlib.Path(__file__).resolve().parents[2]
KERNEL_NAME = "dllm-test"
_prefix: str | None = None


def kernel_exe() -> str:
    env = os.environ.get("DLLM_KERNEL_EXE")
    if env:
        return env
    for profile in ("debug", "release"):
        p = ROOT / "target" / profile / "dllm-kernel"
        if p.exists():
            return str(p)
    raise RuntimeError("no kernel program: build it (cargo build -p dllm-kernel) or set DLLM_KERNEL_EXE")


def setUpModule() -> None:
    global _prefix
    _prefix = tempfile.mkdtemp(prefix="dllm-kernelspec-")
    subprocess.run(
        [kernel_exe(), "kernel", "install", "--prefix", _prefix, "--name", KERNEL_NAME, "--device", "cpu"],
        check=True,
        capture_output=True,
    )
    data = os.path.join(_prefix, "share", "jupyter")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [data, os.environ.get("JUPYTER_PATH")]))


def tearDownModule() -> None:
    if _prefix:
        subprocess.run([kernel_exe(), "kernel", "uninstall", "--prefix", _prefix, "--name", KERNEL_NAME], check=True, capture_output=True)
        assert not os.path.exists(os.path.join(_prefix, "share", "jupyter", "kernels", KERNEL_NAME))
        shutil.rmtree(_prefix, ignore_errors=True)


class DllmKernelTests(jupyter_kernel_test.KernelTests):
    kernel_name = KERNEL_NAME
    language_name = "dllm"
    file_extension = ".dllm"

    # Completion comes from the command table (names and aliases), then setting and preset names.
    completion_samples = [
        {"text": "ste", "matches": {"step"}},
        {"text": "set thr", "matches": {"threshold"}},
        {"text": "prompt-", "matches": {"prompt-ids"}},
        {"text": "preset ", "matches": {"Q", "S", "llada2.0", "sglang", "diffusers", "llada2.2", "sglang-indel"}},
    ]
    complete_code_samples = ["help", "step 3", "set threshold 0.8", "# a comment", "step?", ""]
    # A line ending in `\` continues on the next, as in the terminal REPL.
    incomplete_code_samples = ["prompt The capital of \\"]
    # Unknown commands and unclosed quotes cannot run; the kernel says so before they are sent.
    invalid_code_samples = ["stpe 3", 'prompt "unclosed']

    code_generate_error = "stpe"
    # `NAME?` pages a command's help (IPython's convention).
    code_page_something = "step?"
    code_inspect_sample = "step"

    # Each sample stands alone (its own prompt) except where noted: the tests share one kernel.
    code_execute_result = [
        {"code": "set threshold 0.8", "result": "threshold = 0.8"},
        {"code": "settings", "mime": "text/html"},
        {"code": "prompt The capital of France is\nstep\nstats", "mime": "application/vnd.dllm.value+json"},
        {"code": "prompt Sort the digits 4 1 3\nstep 2\nchart", "mime": "image/svg+xml"},
    ]
    code_history_pattern = "set threshold*"
    supported_history_operations = ("tail", "range", "search")

    # Every display_data of a sample must carry the mime type. The second sample charts the first one's decode.
    code_display_data = [
        {"code": "prompt The capital of France is\nstep 2\ncanvas", "mime": "text/html"},
        {"code": "chart\nstats", "mime": "image/svg+xml"},
    ]


class DllmIopubWelcomeTests(jupyter_kernel_test.IopubWelcomeTests):
    kernel_name = KERNEL_NAME
    support_iopub_welcome = True


class DllmKernelBehaviour(unittest.TestCase):
    """What the conformance suite does not cover: the kernelspec, rich outputs, interrupt keeping the model."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.km, cls.kc = jupyter_client.manager.start_new_kernel(kernel_name=KERNEL_NAME)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.kc.stop_channels()
        cls.km.shutdown_kernel()

    def run_cell(self, code: str, timeout: float = 60) -> tuple[dict, list[dict]]:
        outputs: list[dict] = []
        reply = self.kc.execute_interactive(code, output_hook=outputs.append, timeout=timeout)
        return reply, [m for m in outputs if m["msg_type"] != "status"]

    def test_kernelspec(self) -> None:
        spec = jupyter_client.kernelspec.KernelSpecManager().get_kernel_spec(KERNEL_NAME)
        self.assertTrue(os.path.isabs(spec.argv[0]))
        self.assertEqual(spec.argv[1], "kernel")
        self.assertEqual(spec.argv[-2:], ["--connection-file", "{connection_file}"])
        self.assertEqual(spec.interrupt_mode, "message")
        self.assertEqual(spec.language, "dllm")
        for size in (32, 64):
            with open(os.path.join(spec.resource_dir, f"logo-{size}x{size}.png"), "rb") as f:
                self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")

    def test_canvas_is_html_with_its_json_beside(self) -> None:
        reply, outs = self.run_cell("prompt The capital of France is\nstep\ncanvas")
        self.assertEqual(reply["content"]["status"], "ok")
        result = [m for m in outs if m["msg_type"] == "execute_result"][0]["content"]["data"]
        self.assertIn("<", result["text/html"])
        # JupyterLab would prefer an application/json tree over the HTML: the value's JSON has its own type.
        self.assertNotIn("application/json", result)
        self.assertEqual(result["application/vnd.dllm.value+json"]["type"], "canvas")
        self.assertIn("text/plain", result)

    def test_error_is_one_output_and_stops_the_cell(self) -> None:
        reply, outs = self.run_cell("set threshold 0.9\nstpe\nset threshold 0.1")
        self.assertEqual(reply["content"]["status"], "error")
        self.assertEqual(reply["content"]["ename"], "UnknownCommand")
        self.assertEqual([m["msg_type"] for m in outs], ["execute_input", "display_data", "error"])
        _, outs = self.run_cell("settings")
        html = [m for m in outs if m["msg_type"] == "execute_result"][0]["content"]["data"]["text/plain"]
        self.assertIn("0.9", html)  # the line after the error did not run

    def test_interrupt_stops_a_long_run_and_keeps_the_model(self) -> None:
        reply, _ = self.run_cell("set gen_length 2048\nset threshold 1.0\nprompt The capital of France is")
        self.assertEqual(reply["content"]["status"], "ok")
        msg_id = self.kc.execute("run")
        time.sleep(1.0)
        started = time.time()
        self.km.interrupt_kernel()  # interrupt_mode "message": an interrupt_request on the control channel
        reply = self.kc.get_shell_msg(timeout=30)
        self.assertEqual(reply["parent_header"]["msg_id"], msg_id)
        self.assertEqual(reply["content"]["status"], "error")
        self.assertEqual(reply["content"]["ename"], "Interrupted")
        self.assertLess(time.time() - started, 10)
        # Same kernel, same decode: it stopped between steps and goes on from there.
        reply, outs = self.run_cell("stats")
        self.assertEqual(reply["content"]["status"], "ok")
        data = [m for m in outs if m["msg_type"] == "execute_result"][0]["content"]["data"]["application/vnd.dllm.value+json"]
        self.assertGreater(data["data"]["forwards"], 0)
        self.assertTrue(self.km.is_alive())
        self.run_cell("set gen_length 32\nset threshold 0.95")

    def test_sigint_interrupts_too(self) -> None:
        self.run_cell("set gen_length 2048\nset threshold 1.0\nprompt The capital of France is")
        msg_id = self.kc.execute("run")
        time.sleep(1.0)
        os.kill(self.km.provisioner.process.pid, signal.SIGINT)
        reply = self.kc.get_shell_msg(timeout=30)
        self.assertEqual(reply["parent_header"]["msg_id"], msg_id)
        self.assertEqual(reply["content"]["ename"], "Interrupted")
        self.assertTrue(self.km.is_alive())
        reply, _ = self.run_cell("block")
        self.assertEqual(reply["content"]["status"], "ok")
        self.run_cell("set gen_length 32\nset threshold 0.95")


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for a reaper has exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class DllmKernelParent(unittest.TestCase):
    """A kernel whose parent dies (the notebook server, a console) shuts down, as ipykernel does."""

    def test_the_kernel_exits_when_jpy_parent_pid_is_gone(self) -> None:
        with tempfile.TemporaryDirectory() as d:
            cf, _ = jupyter_client.connect.write_connection_file(os.path.join(d, "kernel.json"), ip="127.0.0.1", key=b"k")
            # A shell is the kernel's parent and names itself in JPY_PARENT_PID, as Jupyter does.
            script = 'JPY_PARENT_PID=$$ "$0" kernel --connection-file "$1" --device cpu & echo $!; wait'
            sh = subprocess.Popen(["sh", "-c", script, kernel_exe(), cf], stdout=subprocess.PIPE, text=True)
            pid = int(sh.stdout.readline())
            time.sleep(2.0)
            self.assertTrue(alive(pid), "the kernel runs while its parent does")
            sh.kill()
            sh.wait()
            deadline = time.time() + 30
            while time.time() < deadline and alive(pid):
                time.sleep(0.2)
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
                self.fail("the kernel outlived its parent by 30 s")


if __name__ == "__main__":
    unittest.main()
