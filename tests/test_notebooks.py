"""Every notebook runs top to bottom in quick mode (MDLM_COURSE_QUICK=1), as CI does."""
import sys
from pathlib import Path

import pytest

NB_DIR = Path(__file__).resolve().parent.parent / "notebooks"
sys.path.insert(0, str(NB_DIR))
from run import run_notebook  # noqa: E402

NOTEBOOKS = sorted(NB_DIR.glob("[0-9][0-9]_*.ipynb"))

pytestmark = pytest.mark.slow   # subprocesses / notebooks: `pytest -m "not slow"` skips them


def test_notebooks_exist():
    assert NOTEBOOKS, "no notebooks found"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_quick_mode(path):
    run_notebook(path, quick=True, timeout=600)
