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
        {"text": "preset sg", "matches": {"sglang", "sglang-indel"}},
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

    def test_progress_is_one_line_of_text(self) -> None:
        # jupyter console prints a progress display's text/plain as it comes and ignores the updates: one line,
        # not a canvas. Notebooks get the HTML.
        reply, outs = self.run_cell("chat copy abcdef\nrun")
        self.assertEqual(reply["content"]["status"], "ok")
        progress = [m for m in outs if m["msg_type"] in ("display_data", "update_display_data")
                    and m["content"]["transient"].get("display_id", "").startswith("dllm-progress")]
        self.assertTrue(progress, [m["msg_type"] for m in outs])
        first = progress[0]["content"]["data"]
        self.assertRegex(first["text/plain"], r"^… step \d+: block \d+, .*masks left")
        self.assertNotIn("\n", first["text/plain"])
        self.assertIn("<", first["text/html"])
        self.assertEqual(progress[-1]["content"]["data"]["text/plain"], "", "the display empties when the command ends")

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


class DllmKernelWire(unittest.TestCase):
    """Malformed traffic on the shell and control sockets (bad signatures, broken JSON, wrong content, unknown
    types, missing or extra frames, random bytes, a huge cell) is dropped or answered with an error reply; the
    kernel goes on serving a real client afterwards. Seeded (DLLM_WIRE_SEED), so a failure can be replayed."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.km, cls.kc = jupyter_client.manager.start_new_kernel(kernel_name=KERNEL_NAME)
        # The raw messages' own session: message ids are `session_pid_count`, so sharing the client's session id
        # would give a raw message the id of a later client request.
        cls.session = jupyter_client.session.Session(key=cls.km.session.key, signature_scheme=cls.km.session.signature_scheme)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.kc.stop_channels()
        cls.km.shutdown_kernel()

    def raw_socket(self, channel: str):
        import zmq

        info = self.km.get_connection_info()
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"{info['transport']}://{info['ip']}:{info[channel + '_port']}")
        return sock

    def frames(self, rng, msg_type: str, content) -> list[bytes]:
        """A signed message of `msg_type` whose content is `content` (any JSON value, or raw bytes)."""
        session = self.session
        header = session.pack(session.msg_header(msg_type))
        body = content if isinstance(content, bytes) else json.dumps(content).encode()
        parts = [header, b"{}", b"{}", body]
        return [b"<IDS|MSG>", session.sign(parts)] + parts

    def mutations(self, rng):
        """(what, frames, a reply is due) for one malformed message."""
        cases = []
        for msg_type, content in [
            ("execute_request", {"code": 123, "silent": False}),
            ("execute_request", {"silent": "yes"}),
            ("execute_request", ["not", "an", "object"]),
            ("execute_request", ["set threshold 0.1", False]),
            ("complete_request", {"code": "se", "cursor_pos": -5}),
            ("complete_request", {"code": "se", "cursor_pos": 10**30}),
            ("inspect_request", {"code": None, "cursor_pos": 0}),
            ("history_request", {"hist_access_type": 7}),
            ("is_complete_request", {}),
            ("comm_info_request", {"target_name": ["x"]}),
            ("kernel_info_request", {"extra": "field"}),
            ("frobnicate_request", {}),
        ]:
            cases.append((f"{msg_type} {json.dumps(content)[:40]}", self.frames(rng, msg_type, content), msg_type.endswith("_request")))
        good = self.frames(rng, "kernel_info_request", {})
        cases.append(("bad signature", good[:1] + [b"0" * 64] + good[2:], False))
        cases.append(("no signature frame", good[:1] + good[2:], False))
        cases.append(("no delimiter", good[1:], False))
        cases.append(("header only", good[:3], False))
        cases.append(("broken header JSON", self.frames_with_header(b"{not json"), False))
        cases.append(("content not JSON", self.frames(rng, "execute_request", b"\xff\xfe{"), True))
        cases.append(("extra buffers", good + [b"buffer"] * 3, True))
        for i in range(20):
            n = rng.randrange(1, 7)
            cases.append((f"random frames {i}", [rng.randbytes(rng.randrange(0, 200)) for _ in range(n)], False))
        big = "set threshold 0.9 # " + "x" * (1 << 20)
        cases.append(("a 1 MiB cell", self.frames(rng, "execute_request", {"code": big, "silent": False}), True))
        return cases

    def frames_with_header(self, header: bytes) -> list[bytes]:
        session = self.session
        parts = [header, b"{}", b"{}", b"{}"]
        return [b"<IDS|MSG>", session.sign(parts)] + parts

    def test_malformed_messages_never_stop_the_kernel(self) -> None:
        import random

        import zmq

        seed = int(os.environ.get("DLLM_WIRE_SEED", "7"))
        rng = random.Random(seed)
        for channel in ("shell", "control"):
            sock = self.raw_socket(channel)
            try:
                for what, frames, reply_due in self.mutations(rng):
                    sock.send_multipart(frames)
                    if reply_due and sock.poll(30_000, zmq.POLLIN):
                        reply = sock.recv_multipart()
                        self.assertIn(b"<IDS|MSG>", reply, f"{channel}: {what} (seed {seed})")
                        at = reply.index(b"<IDS|MSG>")
                        header, parent = json.loads(reply[at + 2]), json.loads(reply[at + 3])
                        self.assertTrue(header["msg_type"].endswith("_reply"), f"{channel}: {what}: {header}")
                        self.assertEqual(parent["msg_id"], json.loads(frames[2])["msg_id"], f"{channel}: the reply to {what}")
                    elif reply_due:
                        self.fail(f"{channel}: no reply to {what} (seed {seed})")
                    self.assertTrue(self.km.is_alive(), f"{channel}: the kernel died on {what} (seed {seed})")
            finally:
                sock.close()
        # A real client still gets served, with the session state the valid cells made.
        outs: list[dict] = []
        r = self.kc.execute_interactive("set threshold 0.8\nsettings", output_hook=outs.append, timeout=60)
        self.assertEqual(r["content"]["status"], "ok")
        text = [m for m in outs if m["msg_type"] == "execute_result"][0]["content"]["data"]["text/plain"]
        self.assertIn("0.8", text)
        self.assertEqual(self.kc.kernel_info(reply=True, timeout=30)["content"]["status"], "ok")


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
