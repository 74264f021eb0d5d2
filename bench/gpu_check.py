"""GPU check (make gpu-check): train the gpu preset four ways on one CUDA GPU, in under 5 minutes.

    python bench/gpu_check.py                 # on a CUDA machine
    python bench/gpu_check.py --smoke         # the same code paths with a tiny model, CPU allowed (tests use it)

Variants: bf16 autocast, and fp16 autocast + GradScaler, each eager and torch.compile'd. For each it
checks that the loss falls and prints tokens/s and MFU against the card's dense bf16 peak
(mdlm_course.device.PEAK_BF16_TFLOPS; override with MDLM_PEAK_TFLOPS=...).
Target on one H100: >= 1.0M tokens/s and >= 40% MFU for the best variant.

Data: synthetic, so that nothing has to be encoded on the GPU box. A vocabulary of 8,191 ids (plus
[MASK]) and 4,096 random "phrases" of 8 ids; the stream is phrases drawn at random and concatenated.
It has structure to learn (Zipf-like id frequencies; within a phrase every id is predictable), so
the loss must fall fast from ln(8191) = 9.0 nats (we ask for 0.5 nats between the first and last steps; 0.1 in the smoke test).
tokens/s are the median over the logging intervals after the first two (which hold compilation and
warm-up).
Exit status: 0 when every variant's loss fell and stayed finite, 1 otherwise, 2 without a CUDA GPU.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mdlm_course.data import TokenData
from mdlm_course.model import MDLM, ModelConfig
from mdlm_course.device import peak_flops
from mdlm_course.model import flops_per_token
from mdlm_course.train import TrainConfig, TrainingDiverged, train

TARGET_TOKENS_PER_S = 1.0e6
TARGET_MFU = 0.40
TIME_BUDGET_S = 270   # stop starting new variants after this, to stay under 5 minutes


def phrase_tokens(n_tokens: int, vocab_size: int, *, n_phrases: int = 4096, phrase_len: int = 8,
                  seed: int = 0) -> np.ndarray:
    """A learnable synthetic stream: random phrases of `phrase_len` ids, concatenated in random order.

    The ids of the phrases follow a Zipf-like law (p ~ 1/(rank + 10)), so even the unigram is worth
    learning; ids are in [0, vocab_size - 1): the last id is left for [MASK].
    """
    rng = np.random.default_rng(seed)
    zipf = 1.0 / (np.arange(vocab_size - 1) + 10.0)                   # frequent and rare ids, as in text
    phrases = rng.choice(vocab_size - 1, size=(n_phrases, phrase_len), p=zipf / zipf.sum())
    order = rng.integers(0, n_phrases, size=n_tokens // phrase_len + 1)
    return phrases[order].reshape(-1)[:n_tokens]


def run_variant(model_config, base: TrainConfig, data: TokenData, dtype: str, compile: bool, device,
                batch_size: int | None = None, min_drop: float = 0.5) -> dict:
    """Train a fresh model (same seed) with one precision / compile setting; tokens/s and the loss drop."""
    torch.manual_seed(0)
    model = MDLM(model_config)
    cfg = TrainConfig(**{**base.to_dict(), "dtype": dtype, "compile": compile, "device": str(device),
                         "batch_size": batch_size or base.batch_size})
    t0 = time.perf_counter()
    try:
        result = train(model, cfg, data, progress=False, mask_id=model_config.vocab_size - 1)
    except TrainingDiverged as e:
        return {"dtype": dtype, "compile": compile, "batch_size": cfg.batch_size, "error": str(e),
                "seconds": time.perf_counter() - t0}
    h = result.history
    # one tokens/s value per logging interval (repeated for each step in it); skip the first two intervals
    per_interval = h["tokens_per_s"][::cfg.log_interval]
    steady = per_interval[2:] or per_interval[-1:]
    n = max(1, min(10, len(h["loss"]) // 5))
    first, last = float(np.mean(h["loss"][:n])), float(np.mean(h["loss"][-n:]))
    return {"dtype": dtype, "compile": compile, "batch_size": cfg.batch_size, "tokens_per_s": statistics.median(steady),
            "loss_first": first, "loss_last": last, "falls": last < first - min_drop,
            "seconds": time.perf_counter() - t0, "model": result.model}


def profile_steps(model_config, base: TrainConfig, data: TokenData, device, path: str, steps: int = 5,
                  compile: bool = False) -> None:
    """torch.profiler over a few bf16 steps: where the time goes, kernel by kernel, written to `path`."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    cfg = TrainConfig(**{**base.to_dict(), "dtype": "bf16", "compile": compile, "device": str(device),
                         "max_steps": 3, "log_interval": 1, "eval_windows": 1})
    # warm-up: allocator, cuBLAS, compiling
    model = train(MDLM(model_config), cfg, data, progress=False, mask_id=model_config.vocab_size - 1).model
    cfg = TrainConfig(**{**cfg.to_dict(), "max_steps": steps})
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        train(model, cfg, data, progress=False, mask_id=model_config.vocab_size - 1)
    wall = time.perf_counter() - t0
    kind = "compiled" if compile else "eager"
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=40, max_name_column_width=90)
    Path(path).write_text(f"{steps} {kind} bf16 steps (after a warm-up run), {wall:.2f} s wall under the "
                          f"profiler (evaluation included)\n{table}\n")
    print(f"profile of {steps} {kind} bf16 steps written to {path} ({wall:.2f} s wall); the top rows:")
    print("\n".join(line[:100] for line in table.splitlines()[:16]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny model, few steps, CPU allowed (a test of this script)")
    ap.add_argument("--steps", type=int, help="optimizer steps per variant (default 150; smoke 30)")
    ap.add_argument("--batch-size", type=int, help="sequences per step (default: the gpu preset's 64)")
    ap.add_argument("--also-batch", type=int, nargs="*", default=[],
                    help="extra bf16 + compile runs with these batch sizes (if the time budget allows)")
    ap.add_argument("--profile", help="after the variants, profile 5 eager bf16 steps and 5 compiled ones; write "
                                      "the tables to this file and to its .compiled twin")
    args = ap.parse_args(argv)

    if not args.smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU found (torch.cuda.is_available() is False); run `make gpu-check` on a "
              "machine with an NVIDIA GPU and a CUDA build of torch, or `--smoke` to test this script on a CPU",
              file=sys.stderr)
        return 2
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if args.smoke:
        model_config = ModelConfig.preset("tiny", n_layer=1, d_model=32, seq_len=32)
        base = TrainConfig.preset("tiny", max_steps=args.steps or 30, batch_size=args.batch_size or 8,
                                  warmup_steps=2, log_interval=1, eval_interval=10**9, eval_windows=2, lr=1e-2)
        variants = [("bf16", False, None), ("fp16", False, None)]   # compiling takes minutes on a CPU
        min_drop = 0.1    # a code-path test: 30 tiny steps; how far the loss falls depends on the RNG stream
        n_tokens, n_phrases = 100_000, 32
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        model_config = ModelConfig.preset("gpu")
        base = TrainConfig.preset("gpu", max_steps=args.steps or 150, batch_size=args.batch_size or 64,
                                  warmup_steps=20, log_interval=10, eval_interval=10**9, eval_windows=16,
                                  ema_decay=0.0, lr=2e-3)
        variants = [("bf16", False, None), ("bf16", True, None), ("fp16", False, None), ("fp16", True, None)]
        variants += [("bf16", True, b) for b in args.also_batch]
        min_drop = 0.5
        n_tokens, n_phrases = 20_000_000, 4096
    ids = phrase_tokens(n_tokens, model_config.vocab_size, n_phrases=n_phrases)
    data = TokenData(ids[: int(0.95 * n_tokens)].astype(np.int64), ids[int(0.95 * n_tokens):].astype(np.int64))

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke test)"
    peak = peak_flops(device) if device.type == "cuda" else None
    fpt = flops_per_token(MDLM(model_config), model_config.seq_len)
    print(f"gpu_check on {name}, torch {torch.__version__}; model: {model_config.n_layer} x {model_config.d_model}, "
          f"vocab {model_config.vocab_size}, T={model_config.seq_len}; {base.batch_size} x {model_config.seq_len} "
          f"tokens per step, {base.max_steps} steps per variant; {fpt / 1e6:.3g} MFLOP per token (6N + 12 n_layer T d)")
    print(f"peak bf16: {peak / 1e12:.0f} TFLOP/s" if peak else "peak bf16: unknown for this device (set "
          "MDLM_PEAK_TFLOPS=... for an MFU figure)")
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        variants = [v for v in variants if v[0] == "fp16"]
        print("this GPU has no bf16: running the fp16 + GradScaler variants only")

    t_start, rows, ok = time.perf_counter(), [], True
    for dtype, compile, batch in variants:
        if time.perf_counter() - t_start > TIME_BUDGET_S:
            print(f"  skipped {dtype} compile={compile} batch={batch or base.batch_size}: "
                  f"the {TIME_BUDGET_S} s budget is spent")
            continue
        r = run_variant(model_config, base, data, dtype, compile, device, batch, min_drop=min_drop)
        rows.append(r)
        label = (f"{dtype}{' + GradScaler' if dtype == 'fp16' else ''}, {'compiled' if compile else 'eager'}"
                 + (f", batch {batch}" if batch else ""))
        if "error" in r:
            ok = False
            print(f"  [FAIL] {label}: {r['error']}")
            continue
        mfu = fpt * r["tokens_per_s"] / peak if peak else None
        r["mfu"] = mfu
        ok &= r["falls"]
        status = "OK" if r["falls"] else "FAIL"
        print(f"  [{status}] {label:<30} loss falls {r['loss_first']:.2f} -> {r['loss_last']:.2f}"
              f"   {r['tokens_per_s']:>12,.0f} tokens/s" + (f"   MFU {100 * mfu:5.1f}%" if mfu is not None else "")
              + f"   ({r['seconds']:.0f} s{' incl. compile' if compile else ''})")
    good = [r for r in rows if "error" not in r]
    if good and not args.smoke:
        best = max(good, key=lambda r: r["tokens_per_s"])
        tps_ok = best["tokens_per_s"] >= TARGET_TOKENS_PER_S
        print(f"best: {best['dtype']} compile={best['compile']} batch={best['batch_size']}: "
              f"{best['tokens_per_s']:,.0f} tokens/s "
              f"[{'target met' if tps_ok else 'below target'}: {TARGET_TOKENS_PER_S:,.0f} on one H100]")
        if best.get("mfu") is not None:
            verdict = "target met" if best["mfu"] >= TARGET_MFU else "below target"
            print(f"      MFU {100 * best['mfu']:.1f}% [{verdict}:"
                  f" {100 * TARGET_MFU:.0f}% on one H100]")
    if args.profile:
        profile_steps(model_config, base, data, device, args.profile)
        if not args.smoke:   # and the compiled step, next to it: profile.txt -> profile.compiled.txt
            stem, dot, ext = args.profile.rpartition(".")
            compiled_path = f"{stem}.compiled.{ext}" if dot else f"{args.profile}.compiled"
            profile_steps(model_config, base, data, device, compiled_path, compile=True)
    print(f"total {time.perf_counter() - t_start:.0f} s; {'all variants trained' if ok else 'SOME VARIANTS FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
