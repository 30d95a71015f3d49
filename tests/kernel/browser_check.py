"""What a person sees in JupyterLab (headless Chromium through selenium): a notebook executed elsewhere and opened
from its file is untrusted, and JupyterLab then strips SVG from HTML and renders no image/svg+xml. The kernel sends
every chart as its own output with a PNG beside the SVG; this checks that the charts are drawn images there, that
tables are tables, and that no output shows a chart's text without its picture.

Usage: python tests/kernel/browser_check.py OUT_DIR  (kernels/tests/browser.rs runs it, with JUPYTER_PATH at a
temporary prefix holding the `dllm` kernelspec). Needs jupyterlab and selenium (tests/requirements.txt) and
Debian's chromium and chromium-driver (`make test` installs them).
"""

import os
import socket
import subprocess
import sys
import tempfile
import time

try:
    import nbclient
    import nbformat
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
except ImportError as e:
    print(f"missing Python package: {e.name}; run `make test` (it installs tests/requirements.txt into .venv)")
    sys.exit(3)

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CELLS = ["chat sort 52817\nrun", "chart", "stats", "rl prompt order 52817 => 87521\nrl set group 4\nrl update 2\nrl stats"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def executed_notebook(folder):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "dllm", "display_name": "dllm", "language": "dllm"}
    nb.cells = [nbformat.v4.new_code_cell(c) for c in CELLS]
    nbclient.NotebookClient(nb, kernel_name="dllm", timeout=300).execute()
    path = os.path.join(folder, "charts.ipynb")
    nbformat.write(nb, path)  # not signed: opened in JupyterLab, it is untrusted
    return nb, "charts.ipynb"


def main(out_dir):
    for f in (CHROMIUM, CHROMEDRIVER):
        if not os.path.exists(f):
            print(f"{f} is missing: `make test` installs Debian's chromium and chromium-driver")
            return 3
    folder = tempfile.mkdtemp()
    nb, name = executed_notebook(folder)
    kinds = [[o.get("data", {}).keys() for o in c.outputs] for c in nb.cells]
    charts_sent = sum(1 for c in kinds for keys in c if "image/png" in keys)
    assert charts_sent == 3, f"expected 3 chart outputs with image/png (2 from `chart`, 1 from `rl stats`), got {kinds}"
    port, token = free_port(), "dllm-browser-check"
    lab = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={folder}", f"--LabApp.workspaces_dir={tempfile.mkdtemp()}", "--allow-root"],
        stdout=open(os.path.join(out_dir, "jupyterlab.log"), "w"), stderr=subprocess.STDOUT)
    driver = None
    try:
        opts = Options()
        opts.binary_location = CHROMIUM
        for a in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", f"--user-data-dir={tempfile.mkdtemp()}", "--window-size=1400,3000"]:
            opts.add_argument(a)
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
        deadline = time.time() + 120
        url = f"http://127.0.0.1:{port}/lab/tree/{name}?token={token}"
        while True:  # the server takes a few seconds to start
            try:
                driver.get(url)
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(1)
        panel = ".jp-NotebookPanel:not(.lm-mod-hidden) "
        images = []
        while time.time() < deadline:
            images = driver.find_elements("css selector", panel + ".jp-OutputArea-output.jp-RenderedImage img")
            if len(images) >= 3 and all(driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", i) for i in images):
                break
            time.sleep(1)
        driver.save_screenshot(os.path.join(out_dir, "untrusted-charts.png"))
        widths = [driver.execute_script("return arguments[0].naturalWidth", i) for i in images]
        assert len(images) == 3 and all(w >= 600 for w in widths), f"charts drawn as images: {widths} (screenshot in {out_dir})"
        outputs = driver.find_elements("css selector", panel + ".jp-OutputArea-output")
        texts = [o.text for o in outputs]
        soup = [t for t in texts if "Decoding, step by step" in t or "Reward per update" in t]
        assert not soup, f"a chart shown as its bare text: {soup}"
        tables = driver.find_elements("css selector", panel + ".jp-OutputArea-output table")
        assert len(tables) >= 3, f"stats, the RL update and RL history as tables, found {len(tables)}"
        print(f"untrusted notebook: {len(images)} charts drawn as images {widths}, {len(tables)} tables; screenshot in {out_dir}")
        return 0
    finally:
        if driver is not None:
            driver.quit()
        lab.terminate()
        lab.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
