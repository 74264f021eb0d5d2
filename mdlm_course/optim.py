"""The optimizer and its schedule (chapter 5): AdamW in two weight-decay groups, warm-up then cosine.

    lr(s)    = lr_max (s + 1) / warmup                                             s <  warmup
             = lr_min + (lr_max - lr_min) (1 + cos(pi (s - warmup) / (S - warmup))) / 2     s >= warmup
    theta   <- AdamW(theta, g, lr(s))         weight decay on matrices only: not on norm gains, biases, embeddings
train.py's loop sets lr(s) before each step and clips the gradient first.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .config import TrainConfig


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
