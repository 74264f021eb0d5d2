"""The device rule, the precision rule, and the `doctor` command."""
import subprocess
import sys
import time

import pytest
import torch

from mdlm_course import device as dev
from mdlm_course.cli import main


def test_get_device_order(monkeypatch):
    monkeypatch.delenv("MDLM_COURSE_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dev.get_device().type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert dev.get_device().type == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert dev.get_device().type == "cpu"
    monkeypatch.setenv("MDLM_COURSE_DEVICE", "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dev.get_device().type == "cpu"  # the override wins


def test_autocast_dtype_rule(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert dev.autocast_dtype("cuda") is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert dev.autocast_dtype("cuda") is torch.float16          # older cards: fp16 + GradScaler
    monkeypatch.setattr(dev, "cpu_has_fast_bf16", lambda: False)
    assert dev.autocast_dtype("cpu") is None                     # plain float32
    monkeypatch.setattr(dev, "cpu_has_fast_bf16", lambda: True)
    assert dev.autocast_dtype("cpu") is torch.bfloat16           # AMX / AVX512-BF16
    assert dev.autocast_dtype("cpu", "fp32") is None
    assert dev.autocast_dtype("cpu", "fp16") is torch.float16
    with pytest.raises(ValueError, match="dtype must be"):
        dev.autocast_dtype("cpu", "float8")


def test_autocast_context_runs_on_cpu():
    a = torch.randn(4, 4)
    with dev.autocast("cpu", torch.bfloat16):
        assert (a @ a).dtype is torch.bfloat16
    with dev.autocast("cpu", None):
        assert (a @ a).dtype is torch.float32


def test_doctor_prints_ok_lines(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for name in ["torch", "numpy", "regex", "tqdm", "safetensors", "tiktoken", "device cpu", "bf16 supported"]:
        assert any(name in line and line.startswith("[OK]") for line in out.splitlines()), name
    for name in ["pygame-ce", "Pillow", "jupyterlab", "ipykernel"]:           # optional: [OK] or [--], never [FAIL]
        assert any(name in line and line[:4] in ("[OK]", "[--]") for line in out.splitlines()), name


def test_doctor_reports_a_missing_dependency(monkeypatch, capsys):
    from mdlm_course import cli
    monkeypatch.setattr(cli, "DEPENDENCIES", cli.DEPENDENCIES + [("no_such_module_xyz", "no-such", "test")])
    assert main(["doctor"]) == 1
    assert "[FAIL] no-such" in capsys.readouterr().out


def test_doctor_does_not_fail_for_a_missing_optional_package(monkeypatch, capsys):
    from mdlm_course import cli
    monkeypatch.setattr(cli, "OPTIONAL", cli.OPTIONAL + [("no_such_module_xyz", "no-such", "a test")])
    assert main(["doctor"]) == 0
    assert "[--]   no-such not installed: needed only for a test" in capsys.readouterr().out


def test_module_entry_point():
    r = subprocess.run([sys.executable, "-m", "mdlm_course", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "doctor" in r.stdout


def test_choose_preset_says_what_suits_the_device_and_why(monkeypatch):
    from mdlm_course.pipeline import choose_preset
    preset, why = choose_preset("cpu")
    assert preset == "cpu" and why.startswith("cpu:") and "4.3M" in why
    monkeypatch.setattr(dev, "cpu_has_fast_bf16", lambda: False)
    assert "float32" in choose_preset("cpu")[1]                 # no bf16 units: no emulated bf16


def _timed_step(seconds: dict):
    """A fake training step that takes seconds[None] in float32 and seconds[bf16] under bf16 autocast."""
    calls = []

    def step(dtype):
        calls.append(dtype)
        time.sleep(seconds[dtype])
    return step, calls


@pytest.mark.parametrize("fp32_s, bf16_s, expected", [
    (0.012, 0.006, torch.bfloat16),   # bf16 twice as fast: keep it
    (0.006, 0.012, None),             # bf16 slower (emulated, or a tiny model): float32
    (0.010, 0.0097, None),            # within the 10% margin: never risk a slower configuration
])
def test_faster_cpu_dtype_picks_the_measured_winner(fp32_s, bf16_s, expected):
    step, calls = _timed_step({None: fp32_s, torch.bfloat16: bf16_s})
    chosen, times = dev.faster_cpu_dtype(step, budget_s=0.1)
    assert chosen is expected
    assert times["fp32"] >= fp32_s and times["bf16"] >= bf16_s
    assert calls.count(None) == calls.count(torch.bfloat16) >= 4      # 2 warm-up + at least 2 timed each


def test_faster_cpu_dtype_measures_a_key_once_per_process(monkeypatch):
    monkeypatch.setattr(dev, "_MEASURED", {})
    step, calls = _timed_step({None: 0.004, torch.bfloat16: 0.001})
    first = dev.faster_cpu_dtype(step, key=("model", 16), budget_s=0.02)
    n = len(calls)
    again = dev.faster_cpu_dtype(step, key=("model", 16), budget_s=0.02)
    assert first[0] is again[0] is torch.bfloat16 and again[1] == {} and len(calls) == n   # not measured again
    dev.faster_cpu_dtype(step, key=("other model", 16), budget_s=0.02)
    assert len(calls) > n


def test_train_dtype_auto_probe_leaves_weights_grads_and_noise_alone(monkeypatch):
    """dtype="auto" on a CPU with bf16 units measures a step in each precision first; the run must not see it."""
    from mdlm_course.data import TokenData
    from mdlm_course.model import MDLM, ModelConfig
    from mdlm_course.train import TrainConfig, _choose_dtype
    monkeypatch.setattr(dev, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setattr(dev, "_MEASURED", {})
    torch.manual_seed(0)
    model = MDLM(ModelConfig(vocab_size=64, seq_len=16, n_layer=1, n_head=2, d_model=32)).train()
    ids = torch.randint(0, 63, (2_000,))
    data = TokenData(ids[:1_800], ids[1_800:])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    said = []
    chosen = _choose_dtype(model, TrainConfig(batch_size=4, device="cpu"), data, 63, torch.device("cpu"), said.append)
    assert chosen in (None, torch.bfloat16)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    assert len(said) == 1 and "float32" in said[0] and "bf16" in said[0] and "->" in said[0]
    fixed = _choose_dtype(model, TrainConfig(batch_size=4, device="cpu", dtype="fp32"), data, 63,
                          torch.device("cpu"), said.append)
    assert fixed is None and len(said) == 1       # an explicit dtype is never measured
