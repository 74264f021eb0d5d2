"""Masked (absorbing-state) diffusion: noise schedules, the forward process and its NELBO.

Noise schedule: alpha_t is the probability that a token is still clean at time t in [0, 1],
decreasing from alpha_0 ~ 1 to alpha_1 ~ 0. The NELBO weight of a masked position is
    w(t) = -alpha'_t / (1 - alpha_t)
    log-linear:  alpha_t = 1 - (1 - eps) t          ->  w(t) = (1 - eps) / ((1 - eps) t + eps)  ~ 1/t
    cosine:      alpha_t = eps + (1 - eps) cos(pi t / 2)   (so alpha_1 = eps, never exactly 0)
Forward process, for each position independently:
    q(x_t | x_0) = alpha_t * onehot(x_0) + (1 - alpha_t) * onehot(MASK)
"""
from __future__ import annotations

import math

import torch

EPS = 1e-3  # keeps alpha_t away from 0 and 1 so the weight stays finite


class Schedule:
    """A noise schedule: alpha(t), its derivative dalpha(t), and the NELBO weight(t)."""

    name = "base"

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def dalpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """-alpha'_t / (1 - alpha_t): the factor in front of the masked cross-entropy."""
        return -self.dalpha(t) / (1 - self.alpha(t))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps})"


class LogLinearSchedule(Schedule):
    """alpha_t = 1 - (1 - eps) t: the expected fraction of masked tokens grows linearly in t."""

    name = "loglinear"

    def __init__(self, eps: float = EPS):
        self.eps = eps

    def alpha(self, t):
        return 1 - (1 - self.eps) * t

    def dalpha(self, t):
        return torch.full_like(torch.as_tensor(t, dtype=torch.get_default_dtype()), -(1 - self.eps))


class CosineSchedule(Schedule):
    """alpha_t = eps + (1 - eps) cos(pi t / 2): slow masking at first, fast at the end."""

    name = "cosine"

    def __init__(self, eps: float = EPS):
        self.eps = eps

    def alpha(self, t):
        return self.eps + (1 - self.eps) * torch.cos(math.pi / 2 * torch.as_tensor(t))

    def dalpha(self, t):
        return -(1 - self.eps) * math.pi / 2 * torch.sin(math.pi / 2 * torch.as_tensor(t))


SCHEDULES = {"loglinear": LogLinearSchedule, "cosine": CosineSchedule}


def get_schedule(schedule: Schedule | str | None = None) -> Schedule:
    """None -> log-linear (the default); a name from SCHEDULES; or a Schedule passed through."""
    if schedule is None:
        return LogLinearSchedule()
    if isinstance(schedule, str):
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; choose from {sorted(SCHEDULES)}")
        return SCHEDULES[schedule]()
    return schedule
