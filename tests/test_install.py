"""A plain (non-editable) install works away from the clone: nothing is read from or written into the
source tree; the corpus, the cache and the checkpoints come from MDLM_COURSE_HOME or the current folder."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mdlm_course.checkpoint import save_checkpoint
from mdlm_course.model import MDLM, ModelConfig
from mdlm_course.tokenizer import BPETokenizer

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow   # pip and subprocesses


def test_plain_install_loads_a_checkpoint_by_path_outside_the_clone(tmp_path):
    src, site = tmp_path / "src", tmp_path / "site"           # build from a copy: pip writes build/ next to it
    shutil.copytree(ROOT / "mdlm_course", src / "mdlm_course", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "requirements-core.txt", "requirements-dev.txt", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(site), str(src)], check=True, cwd=tmp_path, capture_output=True)
    ckpt = save_checkpoint(tmp_path / "run", model=MDLM(ModelConfig.preset("tiny", vocab_size=257)), step=7,
                           tokenizer=BPETokenizer([]))
    work = tmp_path / "elsewhere"
    work.mkdir()
    code = ("import sys, mdlm_course; from mdlm_course.config import COURSE_HOME; "
            "from mdlm_course.checkpoint import load_pretrained; m, tok, meta = load_pretrained(sys.argv[1]); "
            "print(mdlm_course.__file__); print(COURSE_HOME); print(meta['step'], tok.vocab_size)")
    env = {k: v for k, v in os.environ.items() if k != "MDLM_COURSE_HOME"}
    env["PYTHONPATH"] = str(site)
    out = subprocess.run([sys.executable, "-c", code, str(ckpt)], cwd=work, env=env, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[0].startswith(str(site))                            # the installed copy, not the clone
    assert out[1] == str(work)                                      # no clone around: the current folder
    assert out[2] == "7 257"
    env["MDLM_COURSE_HOME"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-c", code, str(ckpt)], cwd=work, env=env, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[1] == str(tmp_path)                                  # the environment variable wins
