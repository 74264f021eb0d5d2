"""Training throughput: tokens/s of mdlm_course.train for the tiny / cpu / gpu presets, against a plain
float32 eager loop on the same model measured in the same run.

    python bench/bench_train.py                       # every preset, every variant (minutes on a laptop)
    python bench/bench_train.py --presets cpu --no-compile
    python bench/bench_train.py --presets cpu --device cpu --no-1thread     # the CPU of a GPU machine

Rows, per preset (each a fresh model from the same seed, random token windows of the preset's length):
  reference        a plain loop: float32, eager, torch.optim.AdamW defaults (foreach), no clipping
  train fp32       mdlm_course.train: fused AdamW, gradient clipping, loss read-out, no autocast
  train dtype auto what TrainConfig's default picks here (on a CPU with bf16 units: measured, see
                   device.faster_cpu_dtype); it must never lose to the reference
  train bf16       the same under bf16 autocast (fast only with bf16 matrix units: AMX / AVX512-BF16 / GPU)
  train compile    fp32 + torch.compile (inductor; needs a C++ compiler on a CPU); compile time excluded
                   (and bf16 + compile where bf16 is fast)
  train 1 thread   fp32 (and fp32 + compile) with torch.set_num_threads(1)
tokens/s = the best measured step (after warm-up steps, which hold one-off costs such as compiling): on a
machine shared with other work the median mostly measures the neighbours; the best step is what the code
can do. Both the reference and the rows are measured that way. Everything is measured --repeats times (3),
and each row prints the median of its ratios to the reference measured in the same repeat.
The gpu preset on a CPU runs a couple of steps with a batch of 4 and fp32 rows only (it is slow there);
on CUDA every row runs in full.
Target: the cpu preset at >= 1.6x the reference on a CPU with AMX. Without AMX, bf16 autocast
is emulated and slower than float32, so dtype="auto" picks float32 (device.cpu_has_fast_bf16()).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from mdlm_course.data import TokenData
from mdlm_course.device import _MEASURED, cpu_has_fast_bf16, get_device
from mdlm_course.diffusion import nelbo
from mdlm_course.model import MDLM, ModelConfig
from mdlm_course.train import TrainConfig, get_batch, train

STEPS = {"tiny": (3, 20), "cpu": (2, 6), "gpu": (1, 2)}   # (warm-up, measured) steps on a CPU


def fake_data(vocab_size: int, n: int = 400_000) -> TokenData:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab_size - 1, (n,), generator=g)   # the last id is the mask
    return TokenData(ids[: int(0.95 * n)], ids[int(0.95 * n):])


def reference_tokens_per_s(model_config, cfg: TrainConfig, data, warmup: int, steps: int, device) -> float:
    """The plain float32 eager loop every row is compared against."""
    torch.manual_seed(0)
    model = MDLM(model_config).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    L, times = model_config.seq_len, []
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        x0 = get_batch(data, cfg, L, step).to(device)
        loss = nelbo(model, x0, mask_id=model_config.vocab_size - 1)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return cfg.batch_size * L / min(times[warmup:])


def train_tokens_per_s(model_config, cfg: TrainConfig, data, warmup: int, steps: int) -> float:
    torch.manual_seed(0)
    r = train(MDLM(model_config), replace_cfg(cfg, max_steps=warmup + steps), data, progress=False,
              mask_id=model_config.vocab_size - 1)
    return max(r.history["tokens_per_s"][warmup:])


def replace_cfg(cfg: TrainConfig, **kw) -> TrainConfig:
    return TrainConfig(**{**cfg.to_dict(), **kw})


def measure_rows(rows, reference, measure, repeats: int, threads: int) -> None:
    """Each repeat measures the reference, then every row; print each row's median tokens/s and the median of
    its per-repeat ratios to the reference of the same repeat (a slow spell of the machine hits both)."""
    ratios: dict[str, list[float]] = {label: [] for label, *_ in rows}
    speeds: dict[str, list[float]] = {label: [] for label in ["reference"] + list(ratios)}
    for r in range(repeats):
        ref = reference()
        speeds["reference"].append(ref)
        for label, c, w, n in rows:
            if label.endswith("1 thread"):   # one thread avoids OpenMP hand-offs; it wins on a busy machine
                torch.set_num_threads(1)
            try:
                tps = measure(c, w, n)
            except Exception as e:  # noqa: BLE001 - a failed variant (no compiler, say) is a row, not a crash
                print(f"  {label:<32} failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
                ratios.pop(label, None)
                continue
            finally:
                torch.set_num_threads(threads)
            if label in ratios:
                speeds[label].append(tps)
                ratios[label].append(tps / ref)
        print(f"  (repeat {r + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.2f}x" for k, v in ratios.items() if v) + ")",
              flush=True)
    print(f"  {'reference (fp32 eager loop)':<32} {statistics.median(speeds['reference']):>10,.0f} tokens/s   1.00x")
    for label, rs in ratios.items():
        spread = f"   (runs: {', '.join(f'{x:.2f}' for x in rs)})" if len(rs) > 1 else ""
        print(f"  {label:<32} {statistics.median(speeds[label]):>10,.0f} tokens/s   {statistics.median(rs):.2f}x"
              f"{spread}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "cpu", "gpu"])
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    ap.add_argument("--batch-size", type=int, help="override the presets' batch size")
    ap.add_argument("--no-1thread", action="store_true", help="skip the one-thread rows (slow on a big CPU)")
    ap.add_argument("--repeats", type=int, default=3, help="measure everything this many times; print medians")
    ap.add_argument("--only", nargs="+", help="only the rows whose label contains one of these words")
    ap.add_argument("--device", help="cpu / cuda / mps (default: get_device(), i.e. the best one here)")
    args = ap.parse_args()

    device = torch.device(args.device) if args.device else get_device()
    cpu = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, device {device}, {os.cpu_count()} CPU cores ({cpu}), "
          f"torch threads {torch.get_num_threads()}, bf16 matrix units (AMX/AVX512-BF16): {cpu_has_fast_bf16()}")
    try:
        print(f"load average before: {os.getloadavg()[0]:.2f}")
    except OSError:
        pass
    threads = torch.get_num_threads()
    for preset in args.presets:
        model_config = ModelConfig.preset(preset)
        warmup, steps = STEPS[preset] if device.type == "cpu" else (3, 20)
        cfg = TrainConfig.preset(preset, eval_interval=10**9, eval_windows=1, log_interval=1, ema_decay=0.0,
                                 compile=False, dtype="fp32", device=str(device), warmup_steps=1)
        # the gpu preset on a CPU: a batch of 4 windows instead of 64, fp32 rows only (bf16 is emulated and
        # compiling takes minutes there); bench/gpu_check.py measures it properly on a GPU
        gpu_on_cpu = preset == "gpu" and device.type == "cpu"
        if args.batch_size or gpu_on_cpu:
            cfg = replace_cfg(cfg, batch_size=args.batch_size or 4)
        data = fake_data(model_config.vocab_size)
        tokens = cfg.batch_size * model_config.seq_len
        print(f"\n{preset}: {MDLM(model_config).num_params() / 1e6:.2f}M parameters, {cfg.batch_size} x "
              f"{model_config.seq_len} = {tokens:,} tokens per step, {steps} measured steps after {warmup} warm-up")
        if gpu_on_cpu:
            print("  (on a CPU: batch 4, fp32 rows only; bench/gpu_check.py measures this preset on a GPU)")
        rows = [("train fp32", cfg, warmup, steps), ("train dtype auto", replace_cfg(cfg, dtype="auto"), warmup, steps)]
        # without bf16 matrix units bf16 is emulated, several times slower: measure fewer steps
        slow_bf16 = device.type == "cpu" and not cpu_has_fast_bf16()
        if not gpu_on_cpu:
            rows.append(("train bf16 autocast", replace_cfg(cfg, dtype="bf16"), 1 if slow_bf16 else warmup,
                         min(steps, 2) if slow_bf16 else steps))
        if not args.no_compile and not gpu_on_cpu:
            rows.append(("train fp32 + compile", replace_cfg(cfg, compile=True), warmup + 2, steps))
            if not slow_bf16:
                rows.append(("train bf16 + compile", replace_cfg(cfg, compile=True, dtype="bf16"), warmup + 2, steps))
        if not args.no_1thread:
            rows.append(("train fp32, 1 thread", cfg, warmup, steps))
            if not args.no_compile and not gpu_on_cpu:
                rows.append(("train fp32 + compile, 1 thread", replace_cfg(cfg, compile=True), warmup + 2, steps))
        rows = [r for r in rows if not (r[0].endswith("1 thread") and (device.type != "cpu" or threads == 1))
                and (not args.only or any(w in r[0] for w in args.only))]
        measure_rows(rows, lambda: reference_tokens_per_s(model_config, cfg, data, warmup, steps, device),
                     lambda c, w, n: train_tokens_per_s(model_config, c, data, w, n), args.repeats, threads)
        for (config, batch, _, n_threads), dtype in _MEASURED.items():
            if config == repr(model_config) and batch == cfg.batch_size:
                print(f"  dtype auto chose {'bf16' if dtype is not None else 'float32'} ({n_threads} threads)")
    try:
        print(f"\nload average after: {os.getloadavg()[0]:.2f} (other processes share these cores)")
    except OSError:
        pass


if __name__ == "__main__":
    main()
