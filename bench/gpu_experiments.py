"""Speed experiments for the gpu preset on one CUDA GPU (not part of `make gpu-check`).

    python bench/gpu_experiments.py [OUT_DIR]

Each row trains the gpu preset (bf16 autocast, torch.compile) for 150 steps as bench/gpu_check.py does,
with one change to how it is compiled; then a profile of the compiled step. Rows, in order:
  default                 torch.compile(model), the package's setting
  coordinate descent      + torch._inductor.config.coordinate_descent_tuning (tunes pointwise/reduction kernels)
  reduce-overhead         mode="reduce-overhead": CUDA graphs, no launch gaps
  max-autotune            mode="max-autotune-no-cudagraphs": matmul tiles searched (minutes of compilation)
"""
from __future__ import annotations

import functools
import sys
import time

import numpy as np
import torch

from gpu_check import phrase_tokens, profile_steps, run_variant
from mdlm_course.data import TokenData
from mdlm_course.model import MDLM, ModelConfig
from mdlm_course.device import peak_flops
from mdlm_course.model import flops_per_token
from mdlm_course.train import TrainConfig

BUDGET_S = 170   # stop starting rows after this; max-autotune alone can take minutes


def main() -> None:
    out = sys.argv[1] if len(sys.argv) > 1 else "/tmp"
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    mc = ModelConfig.preset("gpu")
    base = TrainConfig.preset("gpu", max_steps=150, batch_size=64, warmup_steps=20, log_interval=10,
                              eval_interval=10**9, eval_windows=16, ema_decay=0.0, lr=2e-3)
    ids = phrase_tokens(20_000_000, mc.vocab_size)
    data = TokenData(ids[:19_000_000].astype(np.int64), ids[19_000_000:].astype(np.int64))
    fpt, peak = flops_per_token(MDLM(mc), mc.seq_len), peak_flops(device)
    real_compile = torch.compile
    import torch._inductor.config as inductor_config

    rows = [("default", {}, False), ("coordinate descent", {}, True),
            ("reduce-overhead", {"mode": "reduce-overhead"}, False),
            ("max-autotune", {"mode": "max-autotune-no-cudagraphs"}, False)]
    t_start = time.perf_counter()
    for label, kwargs, cdt in rows:
        if time.perf_counter() - t_start > BUDGET_S:
            print(f"  {label}: skipped (budget)")
            continue
        torch._dynamo.reset()
        inductor_config.coordinate_descent_tuning = cdt
        torch.compile = functools.partial(real_compile, **kwargs)
        try:
            r = run_variant(mc, base, data, "bf16", True, device)
        except Exception as e:  # noqa: BLE001 - an experiment that fails is a row
            print(f"  {label:<22} failed: {type(e).__name__}: {str(e).splitlines()[0][:150]}", flush=True)
            continue
        finally:
            torch.compile = real_compile
            inductor_config.coordinate_descent_tuning = False
        if "error" in r:
            print(f"  {label:<22} failed: {r['error']}", flush=True)
            continue
        print(f"  {label:<22} {r['tokens_per_s']:>12,.0f} tokens/s   MFU {100 * fpt * r['tokens_per_s'] / peak:5.1f}%"
              f"   loss {r['loss_first']:.2f} -> {r['loss_last']:.2f}   ({r['seconds']:.0f} s)", flush=True)
        if label == "default":
            profile_steps(mc, base, data, device, f"{out}/profile_compiled.txt", compile=True)


if __name__ == "__main__":
    main()
