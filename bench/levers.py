"""The training levers of the MDLM, each measured on its own at equal compute, on the course corpus.

    python bench/levers.py                    # every lever, ~25 minutes on one core of a 2-core laptop
    python bench/levers.py --only baseline shift --steps 100

Protocol (the shipped checkpoint's recipe, scaled down): the Shakespeare train split, the shipped 4096-token
tokenizer, a backbone of 4 layers x 192 (windows of 128 tokens), batch 16, float32, one thread.
  stage 1  the AR twin (causal, next-token loss) for --ar-steps steps, with train() (--objective ar);
  stage 2  the MDLM from those weights for --steps steps, with the variant applied.
Every variant gets the same stage-1 weights (except the head counts, which need their own AR twin), the same
batches (data.get_batch: fixed by seed and step), the same validation windows and masks, and the same total
budget. "from scratch" spends the whole budget on MDLM steps.
Stage 2 is a plain loop over the package's pieces (optim.make_optimizer / lr_at, data.get_batch,
diffusion.nelbo with clipping at 1.0) so that one loop serves the variants that train() has no switch for:
  lr x 0.5 / x 2     peak learning rate 1e-3 / 4e-3 instead of 2e-3
  no warm-up         warm-up 0 instead of 20 steps (the AR weights are already trained: does it matter?)
  low-t curriculum   the first half of stage 2 draws t in (0, 0.3] only (few masks, much context), then (0, 1]
  time conditioning  adaLN from t (ModelConfig.time_conditioning; its layers start at zero, so step 0 is the
                     AR twin's function)
  output shift       ModelConfig.output_shift (DiffuLLaMA's): the logits at position i are read from
                     position i - 1, as in the AR twin
                     that the weights come from (position 0 keeps its own)
  heads 2 / 8        head width 96 / 24 instead of 48 (4 heads), with their own AR stage
  seed 2, seed 3     the baseline again with other seeds for stage 2 (its batches, masks, times, dropout): the
                     noise of this comparison; the output shift is repeated with the same seeds
Figures: validation NELBO in bits per byte (64 windows x 2 times, fixed masks; evaluate.py), and the masked
cross-entropy at t = 0.05 (evaluate.masked_ce_by_t: how much the model uses a 95%-visible context).
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch
import torch.nn as nn

from mdlm_course.checkpoint import CHECKPOINTS
from mdlm_course.config import ModelConfig, TrainConfig
from mdlm_course.data import DEFAULT_CORPUS, TokenData, get_batch, load_text
from mdlm_course.diffusion import get_schedule, nelbo
from mdlm_course.evaluate import evaluate, make_val_set, masked_ce_by_t
from mdlm_course.model import MDLM
from mdlm_course.optim import lr_at, make_optimizer
from mdlm_course.tokenizer import BPETokenizer
from mdlm_course.train import train

SMALL = dict(seq_len=128, n_layer=4, n_head=4, d_model=192, tie_embeddings=True, dropout=0.1)
VARIANTS = {   # name: (changes to the model, changes to stage 2's TrainConfig, stage-2 extras)
    "baseline": ({}, {}, {}),
    "lr x 0.5": ({}, {"lr": 1e-3, "min_lr": 1e-4}, {}),
    "lr x 2": ({}, {"lr": 4e-3, "min_lr": 4e-4}, {}),
    "no warm-up": ({}, {"warmup_steps": 0}, {}),
    "low-t curriculum": ({}, {}, {"curriculum": 0.3}),
    "time conditioning": ({"time_conditioning": True}, {}, {}),
    "output shift": ({"output_shift": True}, {}, {}),
    "heads 2 (width 96)": ({"n_head": 2}, {}, {}),
    "heads 8 (width 24)": ({"n_head": 8}, {}, {}),
    "seed 2": ({}, {"seed": 2}, {}),
    "output shift, seed 2": ({"output_shift": True}, {"seed": 2}, {}),
    "seed 3": ({}, {"seed": 3}, {}),
    "output shift, seed 3": ({"output_shift": True}, {"seed": 3}, {}),
    "from scratch": ({}, {}, {"scratch": True}),
}


def ar_stage(mc: ModelConfig, cfg: TrainConfig, data, tok) -> dict:
    """Stage 1: the AR twin's weights after cfg.max_steps steps of train(objective="ar")."""
    torch.manual_seed(0)
    r = train(MDLM(replace(mc, causal=True)), replace(cfg, objective="ar"), data, tokenizer=tok, progress=False)
    return {k: v.detach().clone() for k, v in r.model.state_dict().items()}


def mdlm_stage(model: nn.Module, cfg: TrainConfig, data, mask_id: int, curriculum: float | None) -> None:
    """Stage 2: cfg.max_steps MDLM steps (a plain loop: AdamW, warm-up + cosine, clipping at 1.0)."""
    torch.manual_seed(cfg.seed)
    opt, schedule = make_optimizer(model, cfg, torch.device("cpu")), get_schedule(cfg.schedule)
    model.train()
    for step in range(cfg.max_steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        x0 = get_batch(data, cfg, model.config.seq_len, step)                      # (B, L)
        t = None
        if curriculum and step < cfg.max_steps // 2:                                # (B,) in (0, curriculum]
            t = curriculum * (1 - torch.rand(len(x0)))
        loss = nelbo(model, x0, mask_id=mask_id, schedule=schedule, t=t, check_x0=False)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", help="variants whose name starts with one of these")
    ap.add_argument("--ar-steps", type=int, default=200)
    ap.add_argument("--steps", type=int, default=200, help="MDLM steps after the AR stage")
    args = ap.parse_args()
    torch.set_num_threads(1)

    tok = BPETokenizer.load(CHECKPOINTS / "tokenizer_shakespeare_4096.json")
    data = TokenData.from_text(load_text(DEFAULT_CORPUS), tok)
    base = ModelConfig(vocab_size=tok.vocab_size, **SMALL)
    cfg = TrainConfig(batch_size=16, lr=2e-3, min_lr=2e-4, warmup_steps=20, eval_interval=10**9, eval_windows=4,
                      log_interval=10, dtype="fp32", device="cpu")
    val = make_val_set(data.val_ids, base.seq_len, 64, tok.mask_id, tokenizer=tok, t_per_window=2)
    print(f"{base.n_layer} x {base.d_model}, L = {base.seq_len}, batch {cfg.batch_size}: {args.ar_steps} AR steps, "
          f"then {args.steps} MDLM steps; validation: 64 windows x 2 times\n")
    print(f"{'variant':<22} {'val bits/byte':>13} {'CE t=0.05':>10} {'seconds':>8}")
    ar_weights: dict[int, dict] = {}
    for name, (model_kw, cfg_kw, extra) in VARIANTS.items():
        if args.only and not any(name.startswith(o) for o in args.only):
            continue
        t0 = time.perf_counter()
        mc = replace(base, **model_kw)
        model = MDLM(mc)
        steps = args.steps
        if extra.get("scratch"):
            steps += args.ar_steps
        else:
            if mc.n_head not in ar_weights:
                ar_weights[mc.n_head] = ar_stage(replace(mc, time_conditioning=False, output_shift=False),
                                                 replace(cfg, max_steps=args.ar_steps), data, tok)
            missing, unexpected = model.load_state_dict(ar_weights[mc.n_head], strict=False)
            assert not unexpected and all(("time" in k or "modulation" in k) for k in missing), missing
        mdlm_stage(model, replace(cfg, max_steps=steps, **cfg_kw), data, tok.mask_id, extra.get("curriculum"))
        bpb = evaluate(model, val, tok.mask_id, batch_size=32, device="cpu")["val_bpb"]
        ce = masked_ce_by_t(model, data.val_ids, mask_id=tok.mask_id, seq_len=mc.seq_len, ts=[0.05], windows=32)[0]
        print(f"{name:<22} {bpb:>13.3f} {ce:>10.2f} {time.perf_counter() - t0:>8.0f}", flush=True)


if __name__ == "__main__":
    main()
