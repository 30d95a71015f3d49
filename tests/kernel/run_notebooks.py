"""Execute notebooks top to bottom through the kernel each names (`dllm`, or `dllm-rust` for the Rust API);
exit non-zero if any cell fails. Prints each notebook's time and each cell's.

Usage: python tests/kernel/run_notebooks.py NOTEBOOK...   (kernels/tests/notebooks.rs runs it with
JUPYTER_PATH pointing at a temporary prefix where the kernelspec is installed).
"""

import os
import time

import sys

try:
    import nbclient
    import nbformat
except ImportError as e:  # the Rust test turns this into a failure that says to run `make test`
    print(f"missing Python package: {e.name}; run `make test` (it installs tests/requirements.txt into .venv)")
    sys.exit(3)


def errors(nb):
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                src = cell.source.splitlines()[0] if cell.source else ""
                yield f"cell {i} ({src!r}): {out.get('ename')}: {out.get('evalue')}"


def main(args):
    # `--save OUT` (after a single notebook): write the executed notebook there.
    save = None
    if "--save" in args:
        i = args.index("--save")
        save, args = args[i + 1], args[:i] + args[i + 2:]
    paths = args
    failed = False
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        name = nb.metadata.get("kernelspec", {}).get("name", "dllm")
        # The Rust kernel's first cell builds dllm (minutes on a cold cache).
        # The kernel starts in the notebook's folder, as JupyterLab starts it.
        resources = {"metadata": {"path": os.path.dirname(os.path.abspath(path))}}
        client = nbclient.NotebookClient(
            nb, kernel_name=name, timeout=1500 if name == "dllm-rust" else 300, allow_errors=True, record_timing=True, resources=resources
        )
        started = time.monotonic()
        try:
            client.execute()
        except Exception as e:  # kernel did not start, timeout, ...
            print(f"FAIL {path}: {type(e).__name__}: {e}")
            failed = True
            continue
        if save:
            nbformat.write(nb, save)
        errs = list(errors(nb))
        if errs:
            failed = True
            print(f"FAIL {path}:")
            for e in errs:
                print(f"  {e}")
        else:
            print(f"ok   {path} ({len(nb.cells)} cells, {time.monotonic() - started:.1f} s)")
        for i, cell in enumerate(nb.cells):
            t = cell.get("metadata", {}).get("execution", {})
            if "iopub.execute_input" in t and "shell.execute_reply" in t:
                from datetime import datetime
                d = datetime.fromisoformat(t["shell.execute_reply"].rstrip("Z")) - datetime.fromisoformat(t["iopub.execute_input"].rstrip("Z"))
                print(f"     cell {i}: {d.total_seconds():.2f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
