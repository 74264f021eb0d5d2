"""Training: minimise the NELBO with AdamW, in mixed precision, on one device or many.

The objective (chapter 4, diffusion.py) on each batch of B windows x_0 of L tokens, t_b stratified in [0, 1]:
    loss = 1/(B L) sum_b  w(t_b) sum_{i: x_t^i = MASK} -log p_theta(x_0^i | x_t)
One optimizer step: G micro-batches (grad_accum) of B windows on each of P processes (DDP), B L G P tokens:
    g        = 1/G sum_{k=1..G} grad loss_k            (DDP also averages g over the P processes)
    g       <- g * min(1, clip / ||g||)                 global-norm clipping
    theta   <- AdamW(theta, g, lr(step))                no weight decay on norms, embeddings and biases
    lr(s)    = lr_max (s + 1) / warmup                                             s <  warmup
             = lr_min + (lr_max - lr_min) (1 + cos(pi (s - warmup) / (S - warmup))) / 2     s >= warmup
    ema     <- d ema + (1 - d) theta,  d = min(ema_decay, (1 + s) / (10 + s))    (optional)
MFU = FLOPs/token * tokens/s / peak FLOP/s, FLOPs/token ~ 6 N + 12 n_layer L d_model (model.flops_per_token).

The loop: _start (check everything, then restore a checkpoint or start afresh), _optimizer_step
(micro-batches under autocast, the fp16 scaler, clipping, AdamW, EMA), _Logger (reads the losses every
log_interval steps: one GPU sync, not one per step), _evaluate_and_save (evaluate.py: fixed windows,
times and masks). objective="ar" trains the AR twin (ar.py) with the same loop; init_from starts from
another run's weights (chapter 8's warm start) with a fresh optimizer.

Precision (device.py): bf16 autocast on CUDA when supported, else fp16 with a GradScaler; on a CPU, bf16
only where it measures faster than float32. Only the forward runs under autocast; the log-softmax, the
loss and the optimizer are float32.
"""
from __future__ import annotations

import copy
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

from .ar import ar_loss
from .checkpoint import (check_has_optimizer, check_not_in_checkpoint, check_resumable, check_writable, init_weights,
                         list_checkpoints, load_checkpoint, load_model_state, run_lock, save_checkpoint_safely)
from .config import TrainConfig, check_number
from .data import TokenData, check_splits, get_batch
from .device import all_average, autocast, autocast_dtype, faster_cpu_dtype, peak_flops, setup_distributed
from .diffusion import get_schedule, masked_nll, nelbo
from .errors import MdlmError
from .evaluate import METRIC, evaluate, make_val_set
from .model import flops_per_token, unwrap
from .optim import lr_at, make_optimizer, param_groups  # noqa: F401  (param_groups: re-exported)


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or inf. The message names the step and the last good checkpoint."""


@dataclass
class TrainResult:
    model: nn.Module                 # the trained, uncompiled module (raw weights; EMA ones in ema_model)
    history: dict                    # lists: step, loss, lr, grad_norm, tokens_per_s, val_step, val_nelbo, val_bpb
    step: int                        # optimizer steps done, in total (a resumed run counts the earlier ones)
    checkpoint: Path | None = None   # the last checkpoint written, if any
    ema_model: nn.Module | None = None
    val: dict | None = None          # the last validation metrics


def new_history(objective: str = "mdlm") -> dict:
    """Empty lists: step, loss, lr, grad_norm, tokens_per_s, val_step, val_nelbo (val_nll for "ar"), val_bpb."""
    return {"step": [], "loss": [], "lr": [], "grad_norm": [], "tokens_per_s": [],
            "val_step": [], METRIC[objective]: [], "val_bpb": []}


@dataclass
class _Run:
    """Everything the loop changes or reads at every step."""
    raw: nn.Module                   # the plain module (the one that is saved)
    fwd: nn.Module                   # what runs the steps: raw, compiled and/or wrapped by DDP
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema_model: nn.Module | None
    amp_dtype: torch.dtype | None
    loss_fn: object                  # loss_fn(x0) -> scalar loss of one micro-batch
    step: int
    history: dict
    checkpoint: Path | None = None
    data_source: dict | None = None  # the text file's path and sha256 (TokenData.source), saved in meta.json


def train(model: nn.Module, config: TrainConfig, data: TokenData, *, tokenizer=None, mask_id: int | None = None,
          out_dir: str | Path | None = None, resume: bool = False, stop_at: int | None = None,
          progress: bool = True) -> TrainResult:
    """Train `model` on `data` for config.max_steps optimizer steps (or until step `stop_at`).

    tokenizer (or, for data that has none, an explicit mask_id) says which id is [MASK].
    out_dir: write checkpoints there (only process 0 writes); resume=True continues the latest one in
    out_dir: weights, optimizer, step, LR schedule, RNG, data order and history, so the loss curve goes on
    where it stopped. Returns a TrainResult; raises TrainingDiverged when the loss becomes NaN or inf.
    """
    if mask_id is None:
        if tokenizer is None:
            raise MdlmError("train() needs tokenizer=... (or, for data without one, mask_id=...) to know "
                             "which id is [MASK]")
        mask_id = tokenizer.mask_id
    if out_dir is not None and not isinstance(out_dir, (str, os.PathLike)):
        raise MdlmError(f"out_dir must be a folder's path (str or Path) or None, got {type(out_dir).__name__}")
    rank, world_size, device, initialised_here = setup_distributed(config.device)
    try:
        if out_dir is not None:
            check_not_in_checkpoint(out_dir)
        with run_lock(out_dir) if out_dir is not None and rank == 0 else nullcontext():   # one training per folder
            run = _start(model, config, data, tokenizer, mask_id, out_dir, resume, stop_at, rank, device, world_size,
                         progress)
            return _loop(run, config, data, tokenizer, mask_id, out_dir, stop_at, rank, device, world_size, progress)
    finally:
        if initialised_here:
            dist.destroy_process_group()


def _check_inputs(raw, cfg, data, tokenizer, mask_id, out_dir, resume, stop_at) -> None:
    """Everything that can be checked before the first step: a bad input costs seconds, not a run."""
    if tokenizer is not None and tokenizer.vocab_size != raw.config.vocab_size:
        raise MdlmError(f"the model has vocab_size={raw.config.vocab_size} but the tokenizer has "
                         f"{tokenizer.vocab_size}; build it with ModelConfig.preset(..., vocab_size=tok.vocab_size)")
    if not 0 <= mask_id < raw.config.vocab_size:
        raise MdlmError(f"mask_id={mask_id} is outside the model's vocabulary of {raw.config.vocab_size}")
    if raw.config.causal != (cfg.objective == "ar"):
        raise MdlmError(f"objective={cfg.objective!r} needs a model with causal={cfg.objective == 'ar'}, got "
                         f"causal={raw.config.causal}")
    if stop_at is not None:
        check_number("train", "stop_at", stop_at, integer=True, lo=1)
    if resume and out_dir is None:
        raise MdlmError("resume=True needs out_dir (the run directory to resume from)")
    if out_dir is not None:
        if not resume and list_checkpoints(out_dir):
            raise MdlmError(f"{out_dir} already holds checkpoints (latest: {list_checkpoints(out_dir)[-1].name}); "
                             "pass resume=True (--resume) to continue that run, or choose another out_dir")
        check_writable(out_dir)
    check_splits(data, raw.config.seq_len, raw.config.vocab_size, mask_id)


def _say_notes(cfg: TrainConfig, data: TokenData, L: int, say) -> None:
    """Settings that work but are probably not what a small run wants: say so before the first step."""
    if cfg.max_steps < cfg.warmup_steps:
        say(f"note: {cfg.max_steps} steps are fewer than the {cfg.warmup_steps} warm-up steps, so the learning "
            f"rate never reaches its peak of {cfg.lr:g}")
    if cfg.eval_interval and len(data.val_ids) // L < cfg.eval_windows:
        say(f"note: the validation split holds {len(data.val_ids) // L} windows of {L} tokens, fewer than "
            f"eval_windows={cfg.eval_windows}; validation uses those (a noisier figure)")


def _start(model, cfg, data, tokenizer, mask_id, out_dir, resume, stop_at, rank, device, world_size,
           progress) -> _Run:
    """Check the inputs, build optimizer, scaler, EMA and loss; restore the latest checkpoint or start afresh."""
    raw = unwrap(model)
    _check_inputs(raw, cfg, data, tokenizer, mask_id, out_dir, resume, stop_at)
    say = tqdm.write if rank == 0 and progress else (lambda *a, **k: None)
    _say_notes(cfg, data, raw.config.seq_len, say)
    raw.to(device).train()
    amp_dtype = _choose_dtype(raw, cfg, data, mask_id, device, say)   # bf16, fp16 or None (= fp32)
    scaler = torch.amp.GradScaler(device.type, init_scale=cfg.fp16_init_scale, enabled=amp_dtype == torch.float16)
    torch.manual_seed(cfg.seed + rank)                              # the noise (t, masks) differs per process
    optimizer = make_optimizer(raw, cfg, device)
    ema_model = copy.deepcopy(raw).eval().requires_grad_(False) if cfg.ema_decay > 0 else None
    step, history = 0, new_history(cfg.objective)
    if resume and list_checkpoints(out_dir):
        ck = load_checkpoint(out_dir, "latest")
        check_resumable(ck, raw, cfg, tokenizer, data=getattr(data, "source", None))
        check_has_optimizer(ck.path, ck.meta)                       # an exported checkpoint cannot be resumed
        load_model_state(raw, ck.model_state, str(ck.path))
        optimizer.load_state_dict(ck.optimizer_state())
        if ema_model is not None and ck.ema_state() is not None:
            load_model_state(ema_model, ck.ema_state(), str(ck.path))
        if scaler.is_enabled() and ck.meta.get("grad_scaler"):
            scaler.load_state_dict(ck.meta["grad_scaler"])
        step, history = ck.step, ck.meta.get("history") or new_history(cfg.objective)
        if rank == 0:
            ck.restore_rng()                                        # the noise continues exactly
        else:                                                       # only process 0's RNG state is saved
            torch.manual_seed(cfg.seed + rank + 7919 * step)
        say(f"resuming from {ck.path} at step {step}")
    else:
        if resume:
            say(f"no checkpoint in {out_dir} yet: starting from step 0")
        if cfg.init_from is not None:
            init_weights(raw, cfg.init_from, tokenizer)
            if ema_model is not None:
                ema_model.load_state_dict(raw.state_dict())
            say(f"starting from the weights of {cfg.init_from}")
    fwd = torch.compile(raw) if cfg.compile else raw
    if world_size > 1:
        fwd = nn.parallel.DistributedDataParallel(fwd, device_ids=[device.index] if device.type == "cuda" else None)
    return _Run(raw, fwd, optimizer, scaler, ema_model, amp_dtype,
                _loss_fn(fwd, cfg, mask_id, device, amp_dtype), step, history,
                data_source=getattr(data, "source", None))


def _choose_dtype(raw, cfg, data, mask_id, device, say) -> torch.dtype | None:
    """device.autocast_dtype, except that "auto" on a CPU with bf16 units keeps bf16 only where a measured
    forward + backward of this model and batch runs faster than in float32 (device.faster_cpu_dtype)."""
    amp_dtype = autocast_dtype(device, cfg.dtype)
    if cfg.dtype != "auto" or device.type != "cpu" or amp_dtype is None:
        return amp_dtype
    x0 = get_batch(data, cfg, raw.config.seq_len, 0).to(device)       # (B, L)
    eager = replace(cfg, compile=False)

    def step(dtype):                                                # one forward + backward, weights untouched
        _loss_fn(raw, eager, mask_id, device, dtype)(x0).backward()
        raw.zero_grad(set_to_none=True)

    with torch.random.fork_rng(devices=[]):                         # the run's noise stays as it was
        amp_dtype, times = faster_cpu_dtype(step, key=(repr(raw.config), cfg.batch_size, cfg.objective))
    if times:
        say(f"dtype auto: a training step takes {1e3 * times['fp32']:.0f} ms in float32, {1e3 * times['bf16']:.0f} "
            f"ms under bf16 autocast here -> {'bf16' if amp_dtype is not None else 'float32'}")
    return amp_dtype


def _loss_fn(fwd, cfg, mask_id, device, amp_dtype):
    """loss(x0): the NELBO estimate (or, for the AR twin, the next-token NLL) of one micro-batch."""
    schedule = get_schedule(cfg.schedule)
    # compiled, the SUBS cross-entropy fuses into ~2 passes over the (B, L, V) logits instead of ~9
    nll_fn = torch.compile(masked_nll) if cfg.compile else masked_nll

    def denoiser(xt, t):                                            # model(xt, t) -> logits, under autocast
        with autocast(device, amp_dtype):
            return fwd(xt, t)                                       # (B, L, V); the losses cast to float32

    if cfg.objective == "ar":
        return lambda x0: ar_loss(denoiser, x0)
    return lambda x0: nelbo(denoiser, x0, mask_id=mask_id, schedule=schedule, stratified=cfg.stratified,
                            check_x0=False, nll_fn=nll_fn)         # the data were checked once, in _start


def _optimizer_step(run: _Run, cfg: TrainConfig, data: TokenData, rank: int, world_size: int, device):
    """One optimizer step over grad_accum micro-batches -> (mean loss, gradient norm), unsynchronised tensors."""
    lr = lr_at(run.step, cfg)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    loss_sum = torch.zeros((), device=device)
    for micro in range(cfg.grad_accum):
        x0 = get_batch(data, cfg, run.raw.config.seq_len, run.step, micro, rank).to(device, non_blocking=True)
        # DDP: average gradients across processes only on the last micro-batch
        sync = run.fwd.no_sync() if world_size > 1 and micro < cfg.grad_accum - 1 else nullcontext()
        with sync:
            loss = run.loss_fn(x0)
            run.scaler.scale(loss / cfg.grad_accum).backward()      # fp16: scaled up so small grads survive
        loss_sum += loss.detach()
    run.scaler.unscale_(run.optimizer)                              # back to true gradients before clipping
    params = [p for p in run.raw.parameters() if p.grad is not None]
    if cfg.grad_clip > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    else:
        grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
    run.scaler.step(run.optimizer)                                  # fp16: skipped if a gradient overflowed
    run.scaler.update()                                             # fp16: halve the scale on overflow, else grow
    run.optimizer.zero_grad(set_to_none=True)
    if run.ema_model is not None:
        d = min(cfg.ema_decay, (1 + run.step) / (10 + run.step))
        with torch.no_grad():
            for e, p in zip(run.ema_model.parameters(), run.raw.parameters()):
                e.lerp_(p.detach(), 1 - d)                          # e <- d e + (1 - d) p
    run.step += 1
    return lr, loss_sum / cfg.grad_accum, grad_norm.detach()


class _Logger:
    """Collects each step's (unread) loss; flush() reads them all at once (one GPU sync), checks for NaN,
    appends to the history and updates the progress bar."""

    def __init__(self, run: _Run, cfg: TrainConfig, tokens_per_step: int, mfu_per_token_s: float | None,
                 world_size: int, bar):
        self.run, self.cfg, self.world_size, self.bar = run, cfg, world_size, bar
        self.tokens_per_step, self.mfu_per_token_s = tokens_per_step, mfu_per_token_s
        self.pending: list[tuple[int, float, torch.Tensor, torch.Tensor]] = []
        self.restart_clock()

    def restart_clock(self) -> None:
        """Start timing afresh (after an evaluation: tokens/s leaves it out)."""
        self.t_mark, self.steps_since = time.perf_counter(), 0

    def add(self, step: int, lr: float, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        self.pending.append((step, lr, loss, grad_norm))
        self.steps_since += 1
        self.bar.update(1)

    def flush(self, val: dict | None) -> None:
        if not self.pending:
            return
        losses = all_average(torch.stack([p[2] for p in self.pending]), self.world_size).tolist()
        norms = torch.stack([p[3] for p in self.pending]).tolist()
        now = time.perf_counter()
        tok_s = self.tokens_per_step * self.steps_since / max(now - self.t_mark, 1e-9)
        history, scaler = self.run.history, self.run.scaler
        for (step, lr, _, _), loss, gn in zip(self.pending, losses, norms):
            if not math.isfinite(loss) or (not math.isfinite(gn) and not scaler.is_enabled()):
                good = self.run.checkpoint.name if self.run.checkpoint is not None else "none was written"
                raise TrainingDiverged(
                    f"training diverged at step {step}: loss = {loss}, grad norm = {gn}; no checkpoint was written "
                    f"after it (last good one: {good}). Lower lr (now {self.cfg.lr:g}) or raise warmup_steps, or "
                    "use dtype='bf16'/'fp32' instead of fp16")
            gn = gn if math.isfinite(gn) else None                  # fp16: an overflow step that GradScaler skipped
            for key, value in (("step", step), ("loss", loss), ("lr", lr), ("grad_norm", gn), ("tokens_per_s", tok_s)):
                history[key].append(value)
        self.pending.clear()
        self.restart_clock()
        postfix = {"loss": f"{losses[-1]:.3f}", "tok/s": f"{tok_s:,.0f}"}
        if self.mfu_per_token_s:
            postfix["MFU"] = f"{100 * self.mfu_per_token_s * tok_s:.3g}%"   # 2 digits even for tiny models
        if val is not None:
            postfix["val"] = f"{val[METRIC[self.cfg.objective]]:.3f}"
        self.bar.set_postfix(postfix, refresh=False)


def _loop(run, cfg, data, tokenizer, mask_id, out_dir, stop_at, rank, device, world_size, progress) -> TrainResult:
    """Step, log, and every eval_interval / ckpt_interval steps evaluate and save, up to the last step."""
    L = run.raw.config.seq_len
    is_main = rank == 0
    val_set = make_val_set(data.val_ids, L, cfg.eval_windows, mask_id, cfg.schedule, tokenizer,
                           cfg.eval_t_per_window, cfg.objective)
    peak = peak_flops(device) if device.type == "cuda" else None
    last = min(cfg.max_steps, stop_at) if stop_at is not None else cfg.max_steps
    if run.step >= last and is_main and progress:
        what = "--stop-at" if stop_at is not None and stop_at < cfg.max_steps else "--steps (max_steps)"
        tqdm.write(f"already at step {run.step}; pass a larger {what} to train further")
    bar = tqdm(total=cfg.max_steps, initial=run.step, unit="step", disable=not (progress and is_main),
               dynamic_ncols=True, mininterval=1.0)
    logger = _Logger(run, cfg, cfg.batch_size * L * cfg.grad_accum * world_size,
                     flops_per_token(run.raw, L) / (peak * world_size) if peak else None, world_size, bar)
    val = None
    while run.step < last:
        logger.add(run.step + 1, *_optimizer_step(run, cfg, data, rank, world_size, device))
        step, is_last = run.step, run.step == last
        want_ckpt = out_dir is not None and (is_last or (cfg.ckpt_interval and step % cfg.ckpt_interval == 0))
        want_eval = step % cfg.eval_interval == 0 or is_last or want_ckpt
        if step % cfg.log_interval == 0 or want_eval:
            logger.flush(val)
        if want_eval:
            if is_main:
                val = _evaluate_and_save(run, cfg, val_set, tokenizer, mask_id, device, out_dir if want_ckpt else None,
                                         progress)
            logger.restart_clock()                                  # tokens/s leaves out evaluation time
    logger.flush(val)
    bar.close()
    if out_dir is not None and is_main and progress and run.checkpoint is not None:
        tqdm.write(f"checkpoint: {run.checkpoint}")
    return TrainResult(model=run.raw, history=run.history, step=run.step, checkpoint=run.checkpoint,
                       ema_model=run.ema_model, val=val)


def _evaluate_and_save(run: _Run, cfg: TrainConfig, val_set, tokenizer, mask_id, device, out_dir, progress) -> dict:
    """Score the weights a checkpoint ships (EMA when on), append to the history, save when out_dir is given."""
    scored = run.ema_model if run.ema_model is not None else run.raw
    val = evaluate(scored, val_set, mask_id, batch_size=cfg.batch_size, device=device, amp_dtype=run.amp_dtype)
    metric = METRIC[cfg.objective]
    run.history["val_step"].append(run.step)
    run.history.setdefault(metric, []).append(val[metric])
    run.history["val_bpb"].append(val["val_bpb"])
    if progress:
        bpb = f", {val['val_bpb']:.3f} bits/byte" if val["val_bpb"] is not None else ""
        name = "NLL" if cfg.objective == "ar" else "NELBO"
        tqdm.write(f"step {run.step:>6}: train loss {run.history['loss'][-1]:.4f}, val {name} {val[metric]:.4f} "
                   f"nats/token{bpb}")
    if out_dir is not None:
        run.checkpoint = save_checkpoint_safely(out_dir, model=run.raw, step=run.step, train_config=cfg.to_dict(),
                                                tokenizer=tokenizer, optimizer=run.optimizer, scaler=run.scaler,
                                                ema_model=run.ema_model, metrics=val, history=run.history,
                                                data=run.data_source)
    return val
