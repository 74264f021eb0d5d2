"""The device rule, the precision rule, and the `doctor` command."""
import subprocess
import sys

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


def test_doctor_reports_a_missing_dependency(monkeypatch, capsys):
    from mdlm_course import cli
    monkeypatch.setattr(cli, "DEPENDENCIES", cli.DEPENDENCIES + [("no_such_module_xyz", "no-such", "test")])
    assert main(["doctor"]) == 1
    assert "[FAIL] no-such" in capsys.readouterr().out


def test_module_entry_point():
    r = subprocess.run([sys.executable, "-m", "mdlm_course", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "doctor" in r.stdout


def test_choose_preset_says_what_suits_the_device_and_why(monkeypatch):
    from mdlm_course.pipeline import choose_preset
    preset, why = choose_preset("cpu")
    assert preset == "cpu" and why.startswith("cpu:") and "4.3M" in why
    monkeypatch.setattr(dev, "cpu_has_fast_bf16", lambda: False)
    assert "float32" in choose_preset("cpu")[1]                 # no bf16 units: no emulated bf16
