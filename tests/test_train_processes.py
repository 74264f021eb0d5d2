"""Training across processes: SIGKILL mid-run then resume, DDP with 2 CPU processes (gloo), the
`train` command line, and bench/gpu_check.py on a machine without a GPU.

These start Python subprocesses (a few seconds each for `import torch`), so they are kept few and tiny.
"""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from mdlm_course.checkpoint import list_checkpoints, load_checkpoint, read_meta
from mdlm_course.cli import main as cli_main
from mdlm_course.data import DEFAULT_CORPUS, TokenData
from mdlm_course.model import MDLM, ModelConfig
from mdlm_course.tokenizer import BPETokenizer
from mdlm_course.train import TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent
TEXT = DEFAULT_CORPUS.read_text(encoding="utf-8")[:40_000]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}

# The run the killed child and the resuming parent share: same model, same config.
CHILD = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from mdlm_course.data import DEFAULT_CORPUS, TokenData
    from mdlm_course.model import MDLM, ModelConfig
    from mdlm_course.tokenizer import BPETokenizer
    from mdlm_course.train import TrainConfig, train
    tok = BPETokenizer([])
    data = TokenData.from_text(DEFAULT_CORPUS.read_text(encoding="utf-8")[:40_000], tok, cache_dir=None)
    torch.manual_seed(0)
    model = MDLM(ModelConfig(vocab_size=257, seq_len=32, n_layer=1, n_head=2, d_model=32))
    cfg = TrainConfig(batch_size=4, max_steps=int(sys.argv[2]), warmup_steps=2, eval_interval=1, eval_windows=4,
                      log_interval=1, ckpt_interval=1, device="cpu")
    train(model, cfg, data, tokenizer=tok, out_dir=sys.argv[1], resume=True, progress=False)
""")

pytestmark = pytest.mark.slow   # subprocesses / notebooks: `pytest -m "not slow"` skips them


def test_sigkill_mid_run_then_resume(tmp_path):
    """Kill -9 a run that writes a checkpoint every step; every checkpoint left is whole, and resuming
    continues the step count and the loss history without a gap."""
    run = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(run), "100000"], env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and child.poll() is None:
            ckpts = list_checkpoints(run)
            if ckpts and int(ckpts[-1].name.split("-")[1]) >= 3:
                break
            time.sleep(0.05)
        assert child.poll() is None, child.stderr.read().decode()[-2000:]
        time.sleep(0.137)   # land somewhere in the middle of a step or a checkpoint write
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    ckpts = list_checkpoints(run)
    assert ckpts
    for p in ckpts:
        read_meta(p, verify=True)   # whole: sizes and sha256 match the manifest
        load_checkpoint(p)
    killed_at = load_checkpoint(run).step
    assert killed_at >= 3

    # Resume in this process, 3 steps more: the step count and the history continue.
    tok = BPETokenizer([])
    data = TokenData.from_text(TEXT, tok, cache_dir=None)
    model = MDLM(ModelConfig(vocab_size=257, seq_len=32, n_layer=1, n_head=2, d_model=32))
    cfg = TrainConfig(batch_size=4, max_steps=100000, warmup_steps=2, eval_interval=1, eval_windows=4,
                      log_interval=1, ckpt_interval=1, device="cpu")
    r = train(model, cfg, data, tokenizer=tok, out_dir=run, resume=True, stop_at=killed_at + 3, progress=False)
    assert r.step == killed_at + 3
    assert r.history["step"] == list(range(1, killed_at + 4))
    assert load_checkpoint(run).step == killed_at + 3


def _small_text(tmp_path) -> Path:
    path = tmp_path / "small.txt"
    path.write_text(DEFAULT_CORPUS.read_text(encoding="utf-8")[:60_000], encoding="utf-8")
    return path


def test_ddp_two_cpu_processes_gloo(tmp_path):
    """torchrun --nproc_per_node=2: DDP on gloo trains, only process 0 logs and writes one checkpoint."""
    text, run = _small_text(tmp_path), tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "mdlm_course", "train", "--preset", "tiny", "--data", str(text), "--steps", "3",
           "--batch-size", "4", "--out", str(run), "--cache-dir", str(tmp_path / "cache")]
    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("checkpoints ->") == 1 and "on 2 processes" in out.stdout   # rank 0 only
    assert [p.name for p in list_checkpoints(run)] == ["step-000003"]
    meta = load_checkpoint(run).meta
    assert meta["history"]["step"] == [1, 2, 3] and meta["metrics"]["val_nelbo"] > 0
    assert not [p for p in run.iterdir() if p.name.startswith(".")]   # no leftovers from a second writer


def test_cli_train_then_resume(tmp_path, capsys):
    text, run, cache = _small_text(tmp_path), tmp_path / "run", tmp_path / "cache"
    args = ["train", "--preset", "tiny", "--data", str(text), "--out", str(run), "--cache-dir", str(cache),
            "--batch-size", "4"]
    assert cli_main(args + ["--steps", "3"]) == 0
    out = capsys.readouterr().out
    assert f"checkpoints -> {run}" in out and "step-000003" in out
    assert len(list(cache.glob("tokenizer-512-*.json"))) == 1   # trained once, cached
    assert cli_main(args + ["--steps", "5", "--resume"]) == 0
    assert f"resuming from {run / 'step-000003'} at step 3" in capsys.readouterr().out
    assert load_checkpoint(run).step == 5
    assert cli_main(["train", "--data", str(tmp_path / "missing.txt"), "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and err.count("\n") == 1


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_gpu_check_says_clearly_that_it_needs_a_gpu(capsys):
    assert _gpu_check().main([]) == 2
    err = capsys.readouterr().err
    assert "no CUDA GPU" in err and err.count("\n") == 1


def test_gpu_check_smoke_runs_every_variant_on_cpu(capsys):
    """--smoke: the same code paths (bf16 and fp16 + GradScaler) with a tiny model on the CPU."""
    assert _gpu_check().main(["--smoke"]) == 0
    out = capsys.readouterr().out
    assert "bf16" in out and "fp16" in out and "loss falls" in out
