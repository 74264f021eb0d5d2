"""Execute notebooks top to bottom with nbclient.

    python notebooks/run.py --quick 01_tokenizer.ipynb     # what the tests do (MDLM_COURSE_QUICK=1)
    python notebooks/run.py --inplace notebooks/*.ipynb    # a real run; saves the outputs (make notebooks)

Each notebook runs with its own folder as the working directory, as in JupyterLab.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def run_notebook(path: str | Path, *, quick: bool, inplace: bool = False, timeout: int = 1800):
    """Run one notebook; raise nbclient's CellExecutionError (with the cell and traceback) on failure."""
    path = Path(path).resolve()
    nb = nbformat.read(path, as_version=4)
    env_before = {k: os.environ.get(k) for k in ("MDLM_COURSE_QUICK", "OMP_NUM_THREADS")}
    if quick:
        os.environ["MDLM_COURSE_QUICK"] = "1"
        # tiny tensors: one thread avoids oversubscription overheads (measured 5-7x on a busy 2-core box)
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    else:
        os.environ.pop("MDLM_COURSE_QUICK", None)
    try:
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}})
        client.execute()
    finally:
        for k, v in env_before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if inplace:
        nbformat.write(tidy_outputs(nb), path)
    return nb


def tidy_outputs(nb):
    """Merge consecutive stream outputs of a cell and keep what a terminal shows of each line (the text
    after its last carriage return), as Jupyter renders them: a progress bar leaves its last state, not
    hundreds of chunks."""
    for cell in nb.cells:
        merged = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and merged and merged[-1].get("output_type") == "stream" \
                    and merged[-1].get("name") == out.get("name"):
                merged[-1]["text"] += out["text"]
            else:
                merged.append(out)
        for out in merged:
            if out.get("output_type") == "stream":
                out["text"] = "\n".join(line.rsplit("\r", 1)[-1] for line in out["text"].split("\n"))
        if "outputs" in cell:
            cell["outputs"] = merged
    return nb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="+")
    ap.add_argument("--quick", action="store_true", help="set MDLM_COURSE_QUICK=1 (tiny configs)")
    ap.add_argument("--inplace", action="store_true", help="save the executed notebook over the input")
    args = ap.parse_args()
    for nb in args.notebooks:
        t0 = time.time()
        run_notebook(nb, quick=args.quick, inplace=args.inplace)
        print(f"{nb}: ok in {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
