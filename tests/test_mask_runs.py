"""Chapter 6's claim about semi-autoregressive blocks: under MDLM's independent per-token masks, long runs
of masks are atypical. At mask rate 0.5 the longest run of masks in 256 positions is about 7 (mean 7.3),
and a run of 64 or more has probability about 5e-18, while any single pattern of 64 masks has 2^-64.

P(longest run >= k) is exact by a small dynamic programme over the length of the current run; the Monte
Carlo check draws the masks with the package's own q_sample.
"""
from __future__ import annotations

import math

import pytest
import torch

from mdlm_course.diffusion import EPS, q_sample


def p_run_at_least(n: int, k: int, a: float) -> float:
    """P(some run of >= k masks among n positions masked independently with probability a)."""
    state = [1.0] + [0.0] * (k - 1)                 # state[j]: no run of k yet, current run has length j
    hit = 0.0
    for _ in range(n):
        hit += state[k - 1] * a                     # a run of k - 1 grows to k: absorbed
        state = [sum(state) * (1 - a)] + [s * a for s in state[:-1]]
    return hit


def longest_run(masked: torch.Tensor) -> torch.Tensor:
    """(B, L) bool -> (B,) length of the longest run of True."""
    run = torch.zeros(masked.shape[0], dtype=torch.long)
    best = torch.zeros_like(run)
    for col in masked.T:
        run = (run + 1) * col
        best = torch.maximum(best, run)
    return best


def test_long_runs_of_masks_are_atypical():
    n, a = 256, 0.5
    p64 = p_run_at_least(n, 64, a)
    assert p64 == pytest.approx((n - 64) * a ** 65 + a ** 64, rel=0.01)   # one start, or a clean one before
    assert 4e-18 < p64 < 6e-18                                                         # "about 5e-18"
    mean_longest = sum(p_run_at_least(n, k, a) for k in range(1, n + 1))             # E[X] = sum_k P(X >= k)
    assert 7.2 < mean_longest < 7.4                                                    # "about 7 (mean 7.3)"
    # the same law from the package's forward process at mask rate 0.5 (log-linear: 1 - alpha_t = (1 - eps) t)
    x0 = torch.zeros(20_000, n, dtype=torch.long)
    xt = q_sample(x0, a / (1 - EPS), 1, generator=torch.Generator().manual_seed(0))
    runs = longest_run(xt == 1).double()
    assert abs(runs.mean().item() - mean_longest) < 4 * runs.std().item() / math.sqrt(len(runs))
    assert runs.max().item() < 40                                                      # nothing near 64 in 20,000
