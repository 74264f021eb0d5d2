"""Training: minimise the NELBO with AdamW, in mixed precision, on one device or many.

The objective (chapter 4, mdlm_course/diffusion.py), estimated on each batch of B windows x_0 of L tokens:
    loss = 1/(B L) sum_b  w(t_b) sum_{i: x_t^i = MASK} -log p_theta(x_0^i | x_t)        t_b stratified in [0, 1]
One optimizer step, with G micro-batches of gradient accumulation (and P processes under DDP):
    g        = 1/G sum_{k=1..G} grad loss_k            (DDP also averages g over the P processes)
    g       <- g * min(1, clip / ||g||)                 global-norm clipping
    theta   <- AdamW(theta, g, lr(step))                no weight decay on norms, embeddings and biases
    lr(s)    = lr_max (s + 1) / warmup                                             s <  warmup
             = lr_min + (lr_max - lr_min) (1 + cos(pi (s - warmup) / (S - warmup))) / 2     s >= warmup
    ema     <- d ema + (1 - d) theta,  d = min(ema_decay, (1 + s) / (10 + s))    (optional)
Tokens per step = B L G P. Model FLOPs per token (forward + backward) ~ 6 N + 12 n_layer L d_model,
N = the weights of the per-token matrix multiplications; MFU = FLOPs/token * tokens/s / peak FLOPs/s.

Validation is deterministic: n fixed windows of the validation split, each scored at k fixed times, row r
(of the n k rows) at t_r = (r + 0.5) / (n k), with one fixed mask draw per row, so two evaluations of the
same weights give the same number:
    val NELBO (nats/token)   = sum_r w(t_r) sum_{masked j} -log p(x_0^rj | x_t^r)  /  (n k L)
    bits per byte            = (the same sum, in nats) / ln 2 / (UTF-8 bytes that the n k rows decode to)
Most of its variance comes from the rows at small t (few masked tokens, weight 1/t); it shrinks roughly
like log(n k) / (n k), hence k > 1 times per window.

Precision (mdlm_course/device.py): bf16 autocast on CUDA when supported, else fp16 with a GradScaler;
float32 on CPUs without bf16 matrix units. Only the model's forward runs under autocast; the log-softmax,
the loss and the optimizer are float32.
"""
from __future__ import annotations

import copy
import hashlib
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from .checkpoint import (CheckpointError, list_checkpoints, load_checkpoint, load_model_state, save_checkpoint,
                         unwrap)
from .data import CACHE_DIR, DataError, TokenData, check_long_enough, fixed_windows, random_windows
from .device import autocast, autocast_dtype, get_device
from .diffusion import get_schedule, masked_nll, nelbo, q_sample
from .model import from_preset

VAL_SEED = 0   # the seed of the validation masks: fixed forever, so every run is measured alike


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or inf. The message names the step and the last good checkpoint."""


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------

@dataclass
class TrainConfig:
    # optimisation
    batch_size: int = 16            # sequences per micro-batch, per process
    grad_accum: int = 1             # micro-batches per optimizer step
    max_steps: int = 2000           # optimizer steps; the LR schedule spans exactly these
    lr: float = 1e-3                # peak learning rate, reached after warm-up
    min_lr: float = 1e-4            # the cosine decays to this at max_steps
    warmup_steps: int = 100         # linear warm-up from lr/warmup to lr
    weight_decay: float = 0.1       # AdamW decay for matrices; norms, embeddings and biases get none
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0          # max global gradient norm (0: no clipping)
    ema_decay: float = 0.0          # exponential moving average of the weights (0: off; 0.999 typical)
    # diffusion
    schedule: str = "loglinear"     # noise schedule (diffusion.SCHEDULES)
    antithetic: bool = True         # stratified t over the batch (lower-variance loss)
    # precision and speed
    dtype: str = "auto"             # "auto" | "bf16" | "fp16" | "fp32" (device.autocast_dtype)
    compile: bool = False           # torch.compile the model (minutes of compilation, then faster steps)
    fp16_init_scale: float = 2.0 ** 16   # GradScaler's first loss scale (fp16 only)
    device: str | None = None       # None: get_device() (cuda, mps, cpu)
    # bookkeeping
    eval_interval: int = 200        # steps between validations (also done at the end)
    eval_windows: int = 32          # fixed validation windows
    eval_t_per_window: int = 4      # times t at which each validation window is scored (less variance)
    log_interval: int = 10          # steps between loss read-outs (each one synchronises the GPU)
    ckpt_interval: int = 200        # steps between checkpoints when out_dir is given (0: only at the end)
    seed: int = 1337

    def __post_init__(self):
        for name in ("batch_size", "grad_accum", "max_steps", "eval_interval", "eval_windows", "eval_t_per_window",
                     "log_interval"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive int, got {value!r}")
        for name in ("warmup_steps", "ckpt_interval"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be an int >= 0, got {getattr(self, name)!r}")
        if not (self.lr > 0 and 0 <= self.min_lr <= self.lr):
            raise ValueError(f"need lr > 0 and 0 <= min_lr <= lr, got lr={self.lr}, min_lr={self.min_lr}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.dtype not in ("auto", "bf16", "fp16", "fp32"):
            raise ValueError(f"dtype must be auto, bf16, fp16 or fp32, got {self.dtype!r}")
        get_schedule(self.schedule)   # raises for an unknown name

    @classmethod
    def preset(cls, name: str, **overrides) -> "TrainConfig":
        """TrainConfig.preset("cpu", max_steps=500): the settings that go with ModelConfig.preset("cpu")."""
        return from_preset(TRAIN_PRESETS, "train", name, overrides)

    def to_dict(self) -> dict:
        return asdict(self)


TRAIN_PRESETS = {
    # tests and quick mode: 16 x 64 tokens per step, seconds on any CPU
    "tiny": TrainConfig(batch_size=16, max_steps=200, lr=3e-3, min_lr=3e-4, warmup_steps=20,
                        eval_interval=50, eval_windows=16, log_interval=1, ckpt_interval=50),
    # a laptop CPU: 16 x 256 = 4,096 tokens per step
    "cpu": TrainConfig(batch_size=16, max_steps=2000, lr=1e-3, min_lr=1e-4, warmup_steps=100,
                       eval_interval=200, eval_windows=32, log_interval=5, ckpt_interval=200),
    # one GPU: 64 x 512 = 32,768 tokens per step, compiled, EMA of the weights as in the MDLM paper
    "gpu": TrainConfig(batch_size=64, max_steps=10000, lr=1e-3, min_lr=1e-4, warmup_steps=500,
                       ema_decay=0.9999, compile=True, eval_interval=500, eval_windows=128,
                       log_interval=20, ckpt_interval=1000),
}

# Settings that may change when a run is resumed (train longer, log more often, another machine).
# Anything else (lr, batch size, seed, schedule, ...) must match, or the resumed curve would lie.
RESUMABLE_CHANGES = {"max_steps", "eval_interval", "log_interval", "ckpt_interval", "compile", "device", "dtype"}


# ---------------------------------------------------------------------------------------------
# Learning rate, optimizer, batches
# ---------------------------------------------------------------------------------------------

def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to min_lr at max_steps.  lr_at(0, cfg) = lr / warmup_steps"""
    c = config
    if step < c.warmup_steps:
        return c.lr * (step + 1) / c.warmup_steps
    if step >= c.max_steps:
        return c.min_lr
    progress = (step - c.warmup_steps) / max(1, c.max_steps - c.warmup_steps)   # 0 -> 1
    return c.min_lr + 0.5 * (c.lr - c.min_lr) * (1 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: matrices decay; 1-D tensors (norm gains, biases) and embeddings do not.

    Decay pulls a weight towards 0. For a norm gain (initialised at 1) that fights the model; for an
    embedding row it shrinks rare tokens that get few gradient updates. Tied weights appear once.
    """
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for p in model.parameters():   # parameters() yields a shared (tied) Parameter once
        if not p.requires_grad:
            continue
        (no_decay if p.dim() < 2 or id(p) in embeddings else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over param_groups(); the fused kernel (one launch for all tensors) on CUDA and CPU."""
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr,
                             betas=(config.beta1, config.beta2), fused=fused)


def batch_generator(seed: int, step: int, micro: int = 0, rank: int = 0) -> torch.Generator:
    """The generator that picks the windows of one micro-batch: a pure function of (seed, rank, step, micro).

    So the data order survives a resume without saving any state, and each DDP rank draws its own windows.
    """
    state = np.random.SeedSequence([seed, rank, step, micro]).generate_state(2)   # 2 x uint32
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def get_batch(data: TokenData, config: TrainConfig, seq_len: int, step: int, micro: int = 0,
              rank: int = 0) -> torch.Tensor:
    """The x_0 windows (B, L) of micro-batch `micro` of optimizer step `step` on process `rank`."""
    return random_windows(data.train_ids, config.batch_size, seq_len,
                          batch_generator(config.seed, step, micro, rank))            # (B, L)


# ---------------------------------------------------------------------------------------------
# Validation: fixed windows, fixed times, fixed masks
# ---------------------------------------------------------------------------------------------

@dataclass
class ValSet:
    """The fixed validation rows: n windows, each repeated at k times, with their masks (on the CPU)."""
    x0: torch.Tensor            # (n k, L) clean ids: window w is row w, w + n, w + 2n, ...
    t: torch.Tensor             # (n k,)   t_r = (r + 0.5) / (n k): window w gets k times spread over [0, 1]
    xt: torch.Tensor            # (n k, L) x0 masked at t_r, from the generator seeded with VAL_SEED
    n_bytes: int | None         # UTF-8 bytes the n k rows decode to (None without a tokenizer)
    schedule: object = field(repr=False, default=None)


def make_val_set(val_ids: torch.Tensor, seq_len: int, n: int, mask_id: int, schedule=None,
                 tokenizer=None, t_per_window: int = 1) -> ValSet:
    """The fixed validation batch: n windows from fixed_windows(), each at t_per_window stratified times,
    one fixed mask draw per row."""
    schedule = get_schedule(schedule)
    x0 = fixed_windows(val_ids, seq_len, n).repeat(t_per_window, 1)                     # (n k, L)
    rows = len(x0)
    t = (torch.arange(rows, dtype=torch.float32) + 0.5) / rows                          # (n k,)
    xt = q_sample(x0, t, mask_id, schedule, generator=torch.Generator().manual_seed(VAL_SEED))   # (n k, L)
    n_bytes = None if tokenizer is None else sum(len(tokenizer.decode_bytes(w)) for w in x0)
    return ValSet(x0, t, xt, n_bytes, schedule)


@torch.no_grad()
def evaluate(model, val: ValSet, mask_id: int, *, batch_size: int = 32, device=None,
             amp_dtype: torch.dtype | None = None) -> dict:
    """{"val_nelbo": nats per token, "val_bpb": bits per byte (None without byte counts)}; deterministic.

    Equals diffusion.nelbo_terms(model, x0, t=val.t, generator=seeded(VAL_SEED)).loss.mean() (tested):
    the same masks, the same weights w(t_i), summed instead of sampled.
    """
    device = torch.device(device) if device is not None else next(unwrap(model).parameters()).device
    was_training = model.training
    model.eval()
    total_nats = 0.0
    n, L = val.x0.shape
    for i in range(0, n, batch_size):
        x0, xt, t = (a[i:i + batch_size].to(device) for a in (val.x0, val.xt, val.t))
        with autocast(device, amp_dtype):
            logits = model(xt, t)                                                       # (b, L, V)
        nll = masked_nll(logits, xt, x0, mask_id).sum(-1)                               # (b,) nats, masked only
        total_nats += (val.schedule.weight(t) * nll).double().sum().item()
    model.train(was_training)
    nelbo_per_token = total_nats / (n * L)
    bpb = None if not val.n_bytes else total_nats / math.log(2) / val.n_bytes
    return {"val_nelbo": nelbo_per_token, "val_bpb": bpb}


# ---------------------------------------------------------------------------------------------
# FLOPs and MFU
# ---------------------------------------------------------------------------------------------

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
    import re

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


def flops_per_token(model: nn.Module, seq_len: int | None = None) -> float:
    """Training FLOPs per token: 6 N + 12 n_layer L d_model.

    A matrix multiply with N weights costs 2N FLOPs per token forward and 4N backward (gradients for the
    input and for the weights): 6N. Attention's q k^T and (softmax) v each cost 2 L d per token and layer
    forward, three times that with the backward: 12 L d. Embedding look-ups, norms and softmax are ignored.
    N counts the per-token nn.Linear weights (attention, MLP, the output head) but not the embedding.
    """
    raw = unwrap(model)
    cfg = raw.config
    seq_len = seq_len or cfg.seq_len
    n = sum(m.weight.numel() for name, m in raw.named_modules()
            if isinstance(m, nn.Linear) and "modulation" not in name and not name.startswith("time_mlp"))
    return 6.0 * n + 12.0 * cfg.n_layer * seq_len * cfg.d_model


# ---------------------------------------------------------------------------------------------
# Distributed data parallel (torchrun)
# ---------------------------------------------------------------------------------------------

def setup_distributed(device_name: str | None = None) -> tuple[int, int, torch.device, bool]:
    """(rank, world_size, device, initialised_here). torchrun sets WORLD_SIZE, RANK and LOCAL_RANK.

    One process per GPU (backend nccl), or per CPU socket/core group (backend gloo).
    """
    import torch.distributed as dist

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


def _all_average(x: torch.Tensor, world_size: int) -> torch.Tensor:
    if world_size > 1:
        import torch.distributed as dist

        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= world_size
    return x


# ---------------------------------------------------------------------------------------------
# The training loop
# ---------------------------------------------------------------------------------------------

@dataclass
class TrainResult:
    model: nn.Module                 # the trained, uncompiled module (raw weights; EMA ones in ema_model)
    history: dict                    # lists: step, loss, lr, grad_norm, tokens_per_s, val_step, val_nelbo, val_bpb
    step: int                        # optimizer steps done, in total (a resumed run counts the earlier ones)
    checkpoint: Path | None = None   # the last checkpoint written, if any
    ema_model: nn.Module | None = None
    val: dict | None = None          # the last validation metrics


def new_history() -> dict:
    return {"step": [], "loss": [], "lr": [], "grad_norm": [], "tokens_per_s": [],
            "val_step": [], "val_nelbo": [], "val_bpb": []}


def _check_resume(ck, model, config: TrainConfig, tokenizer) -> None:
    """One-line CheckpointErrors when the run being resumed is not the one in the checkpoint."""
    saved, now = ck.meta["model_config"], unwrap(model).config.to_dict()
    diff = [k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
    if diff:
        k = diff[0]
        raise CheckpointError(f"cannot resume from {ck.path}: model config differs in {', '.join(diff)} "
                              f"(checkpoint {k}={saved.get(k)!r}, now {now.get(k)!r}); use the same model "
                              "settings or a new output directory")
    saved_t, now_t = ck.meta.get("train_config") or {}, config.to_dict()
    diff = [k for k in sorted(now_t) if k not in RESUMABLE_CHANGES and k in saved_t and saved_t[k] != now_t[k]]
    if diff:
        k = diff[0]
        raise CheckpointError(f"cannot resume from {ck.path}: train config differs in {', '.join(diff)} "
                              f"(checkpoint {k}={saved_t[k]!r}, now {now_t[k]!r}); only "
                              f"{', '.join(sorted(RESUMABLE_CHANGES))} may change on resume")
    saved_tok = ck.tokenizer()
    if tokenizer is not None and saved_tok is not None and (
            saved_tok.merges != tokenizer.merges or saved_tok.special_tokens != tokenizer.special_tokens):
        raise CheckpointError(f"cannot resume from {ck.path}: it was trained with a different tokenizer; "
                              "pass the checkpoint's tokenizer (load_checkpoint(path).tokenizer())")


def train(model: nn.Module, config: TrainConfig, data: TokenData, *, tokenizer=None, mask_id: int | None = None,
          out_dir: str | Path | None = None, resume: bool = False, stop_at: int | None = None,
          progress: bool = True) -> TrainResult:
    """Train `model` on `data` for config.max_steps optimizer steps (or until step `stop_at`).

    out_dir: write checkpoints there (only process 0 writes); resume=True continues the latest one in
    out_dir: weights, optimizer, step, LR schedule, RNG, data order and history, so the loss curve goes on
    where it stopped. Returns a TrainResult; raises TrainingDiverged when the loss becomes NaN or inf.
    """
    cfg = config
    # 1. Processes and device: one process per device under torchrun, else just this one.
    rank, world_size, device, initialised_here = setup_distributed(cfg.device)
    try:
        return _train(model, cfg, data, tokenizer=tokenizer, mask_id=mask_id, out_dir=out_dir, resume=resume,
                      stop_at=stop_at, progress=progress, rank=rank, world_size=world_size, device=device)
    finally:
        if initialised_here:
            import torch.distributed as dist

            dist.destroy_process_group()


def _train(model, cfg, data, *, tokenizer, mask_id, out_dir, resume, stop_at, progress, rank, world_size,
           device) -> TrainResult:
    is_main = rank == 0
    raw = unwrap(model)
    L = raw.config.seq_len
    if tokenizer is not None and tokenizer.vocab_size != raw.config.vocab_size:
        raise ValueError(f"the model has vocab_size={raw.config.vocab_size} but the tokenizer has "
                         f"{tokenizer.vocab_size}; build it with ModelConfig.preset(..., vocab_size=tok.vocab_size)")
    mask_id = mask_id if mask_id is not None else (tokenizer.mask_id if tokenizer is not None
                                                   else raw.config.vocab_size - 1)
    if resume and out_dir is None:
        raise ValueError("resume=True needs out_dir (the run directory to resume from)")
    if not resume and out_dir is not None and list_checkpoints(out_dir):
        raise ValueError(f"{out_dir} already holds checkpoints (latest: {list_checkpoints(out_dir)[-1].name}); "
                         "pass resume=True (--resume) to continue that run, or choose another out_dir")
    check_long_enough(len(data.train_ids), L, "the training split")
    check_long_enough(len(data.val_ids), L, "the validation split")
    for name, ids in (("training", data.train_ids), ("validation", data.val_ids)):
        if int(ids.max()) >= raw.config.vocab_size or (ids == mask_id).any():
            raise DataError(f"the {name} split holds token id {int(ids.max())} >= vocab_size="
                            f"{raw.config.vocab_size} or the mask id {mask_id}; encode it with the model's tokenizer")

    # 2. Precision: which dtype autocast uses, and a GradScaler only for fp16.
    amp_dtype = autocast_dtype(device, cfg.dtype)                   # bf16, fp16 or None (= fp32)
    scaler = torch.amp.GradScaler(device.type, init_scale=cfg.fp16_init_scale,
                                  enabled=amp_dtype == torch.float16)
    schedule = get_schedule(cfg.schedule)
    torch.manual_seed(cfg.seed + rank)                              # the noise (t, masks) differs per process

    # 3. Model, optimizer, EMA; then, when resuming, everything the checkpoint holds.
    raw.to(device).train()
    optimizer = make_optimizer(raw, cfg, device)
    ema_model = None
    if cfg.ema_decay > 0:
        ema_model = copy.deepcopy(raw).eval().requires_grad_(False)
    step, history = 0, new_history()
    if resume and list_checkpoints(out_dir):
        ck = load_checkpoint(out_dir, "latest")
        _check_resume(ck, raw, cfg, tokenizer)
        load_model_state(raw, ck.model_state, str(ck.path))
        if ck.optimizer_state() is not None:
            optimizer.load_state_dict(ck.optimizer_state())
        if ema_model is not None and ck.ema_state() is not None:
            load_model_state(ema_model, ck.ema_state(), str(ck.path))
        if scaler.is_enabled() and ck.meta.get("grad_scaler"):
            scaler.load_state_dict(ck.meta["grad_scaler"])
        step, history = ck.step, ck.meta.get("history") or new_history()
        if is_main:
            ck.restore_rng()                                        # the noise continues exactly
        else:                                                       # only process 0's RNG state is saved
            torch.manual_seed(cfg.seed + rank + 7919 * step)
        if is_main and progress:
            tqdm.write(f"resuming from {ck.path} at step {step}")
    elif resume and is_main and progress:
        tqdm.write(f"no checkpoint in {out_dir} yet: starting from step 0")

    # The module that runs the steps: compiled and/or wrapped by DDP. `raw` stays the plain one.
    fwd = torch.compile(raw) if cfg.compile else raw
    # compiled, the SUBS cross-entropy fuses into ~2 passes over the (B, L, V) logits instead of ~9
    nll_fn = torch.compile(masked_nll) if cfg.compile else masked_nll
    if world_size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        fwd = DDP(fwd, device_ids=[device.index] if device.type == "cuda" else None)

    def denoiser(xt, t):                                            # what nelbo calls: model(xt, t) -> logits
        with autocast(device, amp_dtype):
            return fwd(xt, t)                                       # (B, L, V); nelbo casts to float32

    # 4. Validation set, fixed for the whole run (and every run).
    val_set = make_val_set(data.val_ids, L, cfg.eval_windows, mask_id, schedule, tokenizer, cfg.eval_t_per_window)
    tokens_per_step = cfg.batch_size * L * cfg.grad_accum * world_size
    fpt = flops_per_token(raw, L)
    peak = peak_flops(device) if device.type == "cuda" else None
    last = min(cfg.max_steps, stop_at) if stop_at is not None else cfg.max_steps

    # 5. The loop: (evaluate, checkpoint), step, log.
    bar = tqdm(total=cfg.max_steps, initial=step, unit="step", disable=not (progress and is_main),
               dynamic_ncols=True, mininterval=1.0)
    pending: list[tuple[int, float, torch.Tensor, torch.Tensor]] = []   # (step, lr, loss, grad_norm) not yet read
    t_mark, steps_since, val, ckpt_path = time.perf_counter(), 0, None, None

    def flush():
        """Read the pending losses (one GPU sync), stop on NaN/inf, append to history, update the bar."""
        nonlocal t_mark, steps_since
        if not pending:
            return
        losses = _all_average(torch.stack([p[2] for p in pending]), world_size).tolist()
        norms = torch.stack([p[3] for p in pending]).tolist()
        now = time.perf_counter()
        tok_s = tokens_per_step * steps_since / max(now - t_mark, 1e-9)
        for (s, lr, _, _), loss, gn in zip(pending, losses, norms):
            if not math.isfinite(loss) or (not math.isfinite(gn) and not scaler.is_enabled()):
                good = ckpt_path.name if ckpt_path is not None else "none was written"
                raise TrainingDiverged(
                    f"training diverged at step {s}: loss = {loss}, grad norm = {gn}; no checkpoint was written "
                    f"after it (last good one: {good}). Lower lr (now {cfg.lr:g}) or raise warmup_steps, or "
                    "use dtype='bf16'/'fp32' instead of fp16")
            gn = gn if math.isfinite(gn) else None                  # fp16: an overflow step that GradScaler skipped
            for key, value in (("step", s), ("loss", loss), ("lr", lr), ("grad_norm", gn), ("tokens_per_s", tok_s)):
                history[key].append(value)
        pending.clear()
        t_mark, steps_since = now, 0
        postfix = {"loss": f"{losses[-1]:.3f}", "tok/s": f"{tok_s:,.0f}"}
        if peak:
            postfix["MFU"] = f"{100 * fpt * tok_s / (peak * world_size):.3g}%"   # 2 digits even for tiny models
        if val is not None:
            postfix["val"] = f"{val['val_nelbo']:.3f}"
        bar.set_postfix(postfix, refresh=False)

    while step < last:
        # one optimizer step = grad_accum micro-batches
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=device)
        for micro in range(cfg.grad_accum):
            x0 = get_batch(data, cfg, L, step, micro, rank).to(device, non_blocking=True)   # (B, L)
            # DDP: average gradients across processes only on the last micro-batch
            sync = fwd.no_sync() if world_size > 1 and micro < cfg.grad_accum - 1 else nullcontext()
            with sync:
                loss = nelbo(denoiser, x0, mask_id=mask_id, schedule=schedule, antithetic=cfg.antithetic,
                             check_x0=False, nll_fn=nll_fn)         # the data were checked once, above
                scaler.scale(loss / cfg.grad_accum).backward()      # fp16: scaled up so small grads survive
            loss_sum += loss.detach()
        scaler.unscale_(optimizer)                                  # back to true gradients before clipping
        if cfg.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.grad_clip)
        else:
            grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in raw.parameters()
                                                              if p.grad is not None]))
        scaler.step(optimizer)                                      # fp16: skipped if a gradient overflowed
        scaler.update()                                             # fp16: halve the scale on overflow, else grow
        optimizer.zero_grad(set_to_none=True)
        if ema_model is not None:
            d = min(cfg.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for e, p in zip(ema_model.parameters(), raw.parameters()):
                    e.lerp_(p.detach(), 1 - d)                     # e <- d e + (1 - d) p
        step += 1
        steps_since += 1
        pending.append((step, lr, loss_sum / cfg.grad_accum, grad_norm.detach()))
        bar.update(1)

        is_last = step == last
        want_ckpt = out_dir is not None and (is_last or (cfg.ckpt_interval and step % cfg.ckpt_interval == 0))
        if step % cfg.log_interval == 0 or is_last or want_ckpt or step % cfg.eval_interval == 0:
            flush()
        if step % cfg.eval_interval == 0 or is_last or want_ckpt:
            if is_main:
                scored = ema_model if ema_model is not None else raw          # the weights a checkpoint ships
                val = evaluate(scored, val_set, mask_id, batch_size=cfg.batch_size, device=device, amp_dtype=amp_dtype)
                history["val_step"].append(step)
                history["val_nelbo"].append(val["val_nelbo"])
                history["val_bpb"].append(val["val_bpb"])
                bpb = f", {val['val_bpb']:.3f} bits/byte" if val["val_bpb"] is not None else ""
                if progress:
                    tqdm.write(f"step {step:>6}: train loss {history['loss'][-1]:.4f}, "
                               f"val NELBO {val['val_nelbo']:.4f} nats/token{bpb}")
            if want_ckpt and is_main:
                ckpt_path = save_checkpoint(out_dir, model=raw, step=step, train_config=cfg.to_dict(),
                                            tokenizer=tokenizer, optimizer=optimizer, scaler=scaler,
                                            ema_model=ema_model, metrics=val, history=history)
            t_mark = time.perf_counter()                            # tokens/s leaves out evaluation time
    flush()
    bar.close()
    if out_dir is not None and is_main and progress and ckpt_path is not None:
        tqdm.write(f"checkpoint: {ckpt_path}")
    return TrainResult(model=raw, history=history, step=step, checkpoint=ckpt_path, ema_model=ema_model, val=val)


# ---------------------------------------------------------------------------------------------
# A tokenizer for a text, trained once and cached
# ---------------------------------------------------------------------------------------------

def prepare_tokenizer(train_text: str, vocab_size: int, cache_dir: str | Path | None = CACHE_DIR, *,
                      verbose: bool = True):
    """A byte-level BPE tokenizer trained on `train_text`: loaded from cache_dir when one was trained on the
    same text with the same vocab_size before, else trained (seconds to a minute for 5 MB) and cached there."""
    from .tokenizer import BPETokenizer

    key = hashlib.sha256(train_text.encode("utf-8")).hexdigest()[:16]
    path = Path(cache_dir) / f"tokenizer-{vocab_size}-{key}.json" if cache_dir is not None else None
    if path is not None and path.exists():
        return BPETokenizer.load(path)
    tok = BPETokenizer.train(train_text, vocab_size, verbose=verbose)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tok.save(path)
    return tok


# ---------------------------------------------------------------------------------------------
# Pictures
# ---------------------------------------------------------------------------------------------

def plot_history(history: dict, *, smooth: int = 20, ax=None):
    """Training loss per step (faint), its running mean over `smooth` steps, and the val NELBO points."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    steps, loss = np.asarray(history["step"]), np.asarray(history["loss"])
    ax.plot(steps, loss, color="tab:blue", alpha=0.3, lw=0.8, label="train loss (NELBO estimate)")
    if len(loss) >= smooth > 1:
        kernel = np.ones(smooth) / smooth
        ax.plot(steps[smooth - 1:], np.convolve(loss, kernel, mode="valid"), color="tab:blue",
                label=f"train, mean of {smooth} steps")
    if history.get("val_step"):
        ax.plot(history["val_step"], history["val_nelbo"], "o-", color="tab:red", label="val NELBO (fixed t, masks)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("nats / token")
    ax.grid(alpha=0.3)
    ax.legend()
    return ax
