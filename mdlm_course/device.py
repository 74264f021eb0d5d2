"""Device and precision: one place decides where tensors live and which autocast dtype to use.

    get_device()          -> cuda, else mps, else cpu
    autocast_dtype(dev)   -> bfloat16 on CUDA with bf16 support, float16 on older CUDA (needs a
                             GradScaler), None (plain float32) elsewhere unless asked for
    autocast(dev, dtype)  -> torch.autocast(...) or nullcontext() when dtype is None
    faster_cpu_dtype(step) -> None or bfloat16, whichever runs `step` faster here, measured (dtype="auto"
                             on a CPU with bf16 units: bf16 wins for the cpu preset, loses for tiny ones)
    peak_flops(dev)       -> the card's dense bf16 peak FLOP/s (for MFU), None when unknown
    setup_distributed()   -> (rank, world_size, device, initialised_here): one process per device under
                             torchrun (nccl on GPUs, gloo on CPUs), else (0, 1, get_device(), False)
    rank_zero_first(fn)   -> fn() on process 0, a barrier, then fn() on the others (e.g. to fill a cache once)
"""
from __future__ import annotations

import os
import re
import time
from contextlib import nullcontext
from typing import Callable, TypeVar

import torch
import torch.distributed as dist

from .errors import MdlmError

R = TypeVar("R")


def available_devices() -> list[str]:
    """The device types that work here, e.g. ["cpu"] or ["cuda", "cpu"]."""
    found = ["cuda"] if torch.cuda.is_available() else []
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return found + ["cpu"]


def get_device(prefer: str | None = None) -> torch.device:
    """Pick cuda, then mps, then cpu. `prefer` (or $MDLM_COURSE_DEVICE) forces one, e.g. "cpu"."""
    prefer = prefer or os.environ.get("MDLM_COURSE_DEVICE")
    if prefer:
        here = available_devices()
        try:
            device = torch.device(prefer)
        except (RuntimeError, TypeError):
            raise MdlmError(f"unknown device {prefer!r}; the devices here are: {', '.join(here)}") from None
        if device.type not in here:
            raise MdlmError(f"device {prefer!r} is not available here (this torch build or machine has "
                             f"none); the devices here are: {', '.join(here)}")
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise MdlmError(f"device {prefer!r}: there are only {torch.cuda.device_count()} CUDA devices")
        return device
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

    auto: CUDA -> bf16 if supported else fp16; CPU -> bf16 only with fast bf16 hardware (train() then
    measures whether it is really faster for the model in hand: faster_cpu_dtype); else fp32.
    """
    device = torch.device(device)
    if dtype == "fp32":
        return None
    if dtype == "bf16":
        return torch.bfloat16
    if dtype == "fp16":
        return torch.float16
    if dtype != "auto":
        raise MdlmError(f"dtype must be auto, bf16, fp16 or fp32, got {dtype!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return None


# dtype="auto" on a CPU keeps bf16 only if it is at least this much faster than float32 (noise margin)
BF16_MIN_GAIN = 1.10


_MEASURED: dict[tuple, torch.dtype | None] = {}   # faster_cpu_dtype's answers, by key, for this process


def faster_cpu_dtype(step: Callable[[torch.dtype | None], object], key: tuple | None = None, budget_s: float = 0.5,
                     rounds: tuple[int, int] = (2, 20)) -> tuple[torch.dtype | None, dict]:
    """Time step(None) (float32) and step(torch.bfloat16) (bf16 autocast); return the faster dtype and the
    times ({} when `key`, with the thread count, was measured before in this process: the same answer again,
    so that two runs of one shape in one process use one precision).

    Two untimed calls of each first (one-off costs), then alternating timed calls: at least rounds[0], more
    while under budget_s (cheap steps get many), at most rounds[1]. The best time of each counts, the one
    least disturbed by other load. bf16 must beat float32 by BF16_MIN_GAIN, so that noise never picks a
    configuration slower than plain float32.
    """
    key = None if key is None else (*key, torch.get_num_threads())
    if key in _MEASURED:
        return _MEASURED[key], {}
    best = {None: float("inf"), torch.bfloat16: float("inf")}
    for dtype in (None, torch.bfloat16, None, torch.bfloat16):      # warm up the allocator and the caches
        step(dtype)
    start, done = time.perf_counter(), 0
    while done < rounds[0] or (done < rounds[1] and time.perf_counter() - start < budget_s):
        for dtype in ((None, torch.bfloat16) if done % 2 == 0 else (torch.bfloat16, None)):   # alternate the order
            t0 = time.perf_counter()
            step(dtype)
            best[dtype] = min(best[dtype], time.perf_counter() - t0)
        done += 1
    chosen = torch.bfloat16 if best[None] > BF16_MIN_GAIN * best[torch.bfloat16] else None
    if key is not None:
        _MEASURED[key] = chosen
    return chosen, {"fp32": best[None], "bf16": best[torch.bfloat16]}


def autocast(device: torch.device | str, dtype: torch.dtype | None):
    """A context manager: torch.autocast for `dtype`, or nullcontext() when dtype is None."""
    device = torch.device(device)
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def setup_distributed(device_name: str | None = None) -> tuple[int, int, torch.device, bool]:
    """(rank, world_size, device, initialised_here). torchrun sets WORLD_SIZE, RANK and LOCAL_RANK.

    One process per GPU (backend nccl), or per CPU socket/core group (backend gloo).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1, get_device(device_name), False
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (device_name or "cuda").startswith("cuda")
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    initialised_here = not dist.is_initialized()
    if initialised_here:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return rank, world_size, device, initialised_here


def all_average(x: torch.Tensor, world_size: int) -> torch.Tensor:
    """The mean of x over the processes (x itself when there is one)."""
    if world_size > 1:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= world_size
    return x


def rank_zero_first(fn: Callable[[], R]) -> R:
    """Run fn on process 0, then, after a barrier, on every other process; return its result everywhere.

    For work that fills a cache (train a tokenizer, encode the corpus): process 0 writes it once, the
    others then read it. With one process it is just fn().
    """
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    result = fn() if rank == 0 else None
    if distributed:
        dist.barrier()
        if rank != 0:
            result = fn()
    return result


# Dense bf16 tensor-core peak, FLOP/s, from the vendors' data sheets (no sparsity). Override with the
# environment variable MDLM_PEAK_TFLOPS=... for a card that is missing or clocked differently.
PEAK_BF16_TFLOPS = [
    (r"H100.*NVL", 835.0), (r"H100.*PCIe", 756.0), (r"\bGH200\b", 989.0), (r"\bH100\b", 989.0),
    (r"\bH200\b", 989.0), (r"\bH800\b", 989.0), (r"\bB200\b", 2250.0), (r"\bA100\b", 312.0),
    (r"\bA800\b", 312.0), (r"\bA10\b", 125.0), (r"\bL40S\b", 362.0), (r"\bL40\b", 181.0), (r"\bL4\b", 121.0),
    (r"RTX 4090", 165.2), (r"RTX 3090", 71.0), (r"RTX A6000", 154.8), (r"\bV100\b", 125.0), (r"\bT4\b", 65.0),
]


def peak_flops(device: torch.device | str | None = None, name: str | None = None) -> float | None:
    """The card's dense bf16 peak in FLOP/s (fp16 for V100/T4), or None when unknown (then no MFU)."""
    if os.environ.get("MDLM_PEAK_TFLOPS"):
        return float(os.environ["MDLM_PEAK_TFLOPS"]) * 1e12
    if name is None:
        device = torch.device(device) if device is not None else get_device()
        if device.type != "cuda":
            return None
        name = torch.cuda.get_device_name(device)
    for pattern, tflops in PEAK_BF16_TFLOPS:
        if re.search(pattern, name):
            return tflops * 1e12
    return None
