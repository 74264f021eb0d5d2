"""Device and precision: one place decides where tensors live and which autocast dtype to use.

    get_device()          -> cuda, else mps, else cpu
    autocast_dtype(dev)   -> bfloat16 on CUDA with bf16 support, float16 on older CUDA (needs a
                             GradScaler), None (plain float32) elsewhere unless asked for
    autocast(dev, dtype)  -> torch.autocast(...) or nullcontext() when dtype is None
"""
from __future__ import annotations

import os
from contextlib import nullcontext

import torch


def get_device(prefer: str | None = None) -> torch.device:
    """Pick cuda, then mps, then cpu. `prefer` (or $MDLM_COURSE_DEVICE) forces one, e.g. "cpu"."""
    prefer = prefer or os.environ.get("MDLM_COURSE_DEVICE")
    if prefer:
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def bf16_supported(device: torch.device | str) -> bool:
    """Whether bf16 autocast runs natively on `device`."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return True  # supported everywhere; only fast with AMX / avx512_bf16, see cpu_has_fast_bf16
    return device.type == "mps"


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has bf16 matrix instructions (Intel AMX or AVX512-BF16)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def autocast_dtype(device: torch.device | str, dtype: str = "auto") -> torch.dtype | None:
    """The autocast dtype for `device`: "auto", "bf16", "fp16" or "fp32" (None = no autocast).

    auto: CUDA -> bf16 if supported else fp16; CPU -> bf16 only with fast bf16 hardware; else fp32.
    """
    device = torch.device(device)
    if dtype == "fp32":
        return None
    if dtype == "bf16":
        return torch.bfloat16
    if dtype == "fp16":
        return torch.float16
    if dtype != "auto":
        raise ValueError(f"dtype must be auto, bf16, fp16 or fp32, got {dtype!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return None


def autocast(device: torch.device | str, dtype: torch.dtype | None):
    """A context manager: torch.autocast for `dtype`, or nullcontext() when dtype is None."""
    device = torch.device(device)
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
