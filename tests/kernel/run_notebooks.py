"""Execute notebooks top to bottom through the dllm kernel; exit non-zero if any cell fails.

Usage: python tests/kernel/run_notebooks.py NOTEBOOK...   (kernels/tests/notebooks.rs runs it with
JUPYTER_PATH pointing at a temporary prefix where the `dllm` kernelspec is installed).
"""

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


def main(paths):
    failed = False
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        client = nbclient.NotebookClient(nb, kernel_name="dllm", timeout=300, allow_errors=True)
        try:
            client.execute()
        except Exception as e:  # kernel did not start, timeout, ...
            print(f"FAIL {path}: {type(e).__name__}: {e}")
            failed = True
            continue
        errs = list(errors(nb))
        if errs:
            failed = True
            print(f"FAIL {path}:")
            for e in errs:
                print(f"  {e}")
        else:
            print(f"ok   {path} ({len(nb.cells)} cells)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
