"""The variance of the NELBO estimators: chapter 4's decomposition (notebook 04, section 8), checked exactly
on the toy, and chapter 5's log(N)/N for the fixed-grid validation estimate (evaluate.py).

One sample of the NELBO estimator has the loss l = w(t) sum_{i masked} -log p(x_0^i | x_t) / L, with
    Var(l) = E_t Var(l | t) + Var_t E(l | t)        (masks and data at a fixed t, plus which t).
A batch of B samples with i.i.d. times has variance Var(l) / B. Stratified (systematic) times
t_i = (u + i/B) mod 1 with one shared u keep the first term, E_t Var(l | t) / B, and replace the second by
Var_u of the batch's mean of m(t) = E(l | t), what is left from where u falls. So the variance ratio
stratified / i.i.d. is at least E_t Var(l | t) / Var(l), and equals
    (E_t Var(l | t) + B Var_u S_B(u)) / Var(l),    S_B(u) = (1/B) sum_i m(t_i(u)).
On the toy every term is exact: enumerate x_0 and the mask patterns, integrate over t by quadrature.
The Monte Carlo check uses times in [0.1, 1] rather than [T_MIN, 1]: near t = 0 the weight 1/t makes the
estimates so heavy-tailed that their variance cannot be measured in a test's time (notebook 04 shows it);
the decomposition holds for any range of t.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from mdlm_course.diffusion import EPS, forbid_mask, get_schedule, nelbo_terms, sample_t
from mdlm_course.toy import ToyDistribution

T_LOW, B, REPEATS = 0.1, 8, 12_000


def exact_terms(toy: ToyDistribution, schedule, t_min: float, B: int, n_quad: int = 128):
    """(E l, E_t Var(l | t), Var_t E(l | t), Var_u S_B(u)) for the oracle, t uniform on [t_min, 1]."""
    L = toy.L
    subsets = torch.tensor(list(itertools.product([False, True], repeat=L)))                  # (S, L) masked sets
    N, S = len(toy.support), len(subsets)
    x0 = toy.support[:, None].expand(N, S, L)                                                 # (N, S, L)
    xt = torch.where(subsets[None], torch.full_like(x0, toy.mask_id), x0)                     # (N, S, L)
    log_p = forbid_mask(toy.oracle(xt.reshape(N * S, L)).double(), toy.mask_id, torch.float64).log_softmax(-1)
    log_p = log_p.gather(-1, x0.reshape(N * S, L, 1))[..., 0].reshape(N, S, L)                 # (N, S, L)
    nll = -(log_p * subsets[None]).sum(-1)                                                    # (N, S)
    k = subsets.sum(-1).double()                                                              # (S,)
    g1, g2 = (toy.probs[:, None] * nll).sum(0), (toy.probs[:, None] * nll ** 2).sum(0)       # (S,)

    def moments(t):                                                 # t (K,) -> E(l | t), E(l^2 | t)
        a = 1 - schedule.alpha(t)                                   # mask rate
        pr = a[:, None] ** k * (1 - a[:, None]) ** (L - k)          # (K, S) probability of each masked set
        w = schedule.weight(t)
        return w * (pr @ g1) / L, w ** 2 * (pr @ g2) / L ** 2

    nodes, weights = np.polynomial.legendre.leggauss(n_quad)
    x = torch.tensor((nodes + 1) / 2, dtype=torch.float64)          # nodes on (0, 1)
    wq = torch.tensor(weights / 2, dtype=torch.float64)
    m1, m2 = moments(t_min + (1 - t_min) * x)
    mean = (wq * m1).sum()
    within, between = (wq * (m2 - m1 ** 2)).sum(), (wq * (m1 - mean) ** 2).sum()
    u = x / B                                                       # S_B is smooth on [0, 1/B), periodic beyond
    t_i = t_min + (1 - t_min) * ((u[:, None] + torch.arange(B) / B) % 1)                      # (K, B)
    s_b = moments(t_i.flatten())[0].view(len(u), B).mean(1)                                   # (K,)
    leftover = (wq * (s_b - mean) ** 2).sum()
    return float(mean), float(within), float(between), float(leftover)


def batch_estimates(toy, schedule, stratified: bool, seed: int) -> torch.Tensor:
    """REPEATS NELBO estimates of B samples each, times drawn by sample_t as nelbo draws them. -> (REPEATS,)"""
    g = torch.Generator().manual_seed(seed)
    t = torch.cat([sample_t(B, stratified=stratified, generator=g, t_min=T_LOW) for _ in range(REPEATS)])
    x0 = toy.sample(REPEATS * B, g)
    loss = torch.cat([nelbo_terms(toy.oracle, x, mask_id=toy.mask_id, schedule=schedule, t=tc, generator=g).loss
                      for x, tc in zip(x0.split(8192), t.split(8192))])
    return loss.double().view(REPEATS, B).mean(1)


def variance_and_se(est: torch.Tensor):
    """The sample variance and its standard error, sqrt((m4 - var^2) / n)."""
    d2 = (est - est.mean()) ** 2
    return float(d2.mean()), float(d2.std() / math.sqrt(len(est)))


@pytest.mark.parametrize("schedule_name", ["cosine", "loglinear"])
def test_stratified_variance_matches_the_decomposition(schedule_name):
    toy, schedule = ToyDistribution(L=8, V=2), get_schedule(schedule_name)
    mean, within, between, leftover = exact_terms(toy, schedule, T_LOW, B)
    assert 0 <= leftover < between / B                                             # stratifying helps here
    predicted = {True: within / B + leftover, False: (within + between) / B}
    for stratified in (True, False):
        est = batch_estimates(toy, schedule, stratified, seed=1 + stratified)
        var, se = variance_and_se(est)
        assert abs(float(est.mean()) - mean) < 5 * math.sqrt(var / REPEATS)      # the estimator is unbiased
        assert abs(var - predicted[stratified]) < 4 * se, (stratified, var, se, predicted)
        if schedule_name == "cosine":                                          # the test can tell them apart
            assert abs(predicted[True] - predicted[False]) > 8 * se


def test_stratification_leaves_the_within_t_term():
    """The ratio's floor E_t Var(l | t) / Var(l) is what stratifying cannot remove, whatever B."""
    toy, schedule = ToyDistribution(L=8, V=2), get_schedule("cosine")
    ratios = []
    for b in (2, 8, 32, 128):
        _, within, between, leftover = exact_terms(toy, schedule, T_LOW, b)
        ratios.append((within + b * leftover) / (within + between))
    floor = within / (within + between)
    assert all(r >= floor for r in ratios)
    assert ratios == sorted(ratios, reverse=True)                   # the leftover shrinks with B ...
    assert ratios[-1] - floor < 0.01 < ratios[0] - floor            # ... towards the floor


def test_validation_variance_shrinks_like_log_n_over_n():
    """Chapter 5 / evaluate.py: the fixed-grid validation estimate, N = n k rows at t_r = (r + 0.5) / N,
    has variance c^2 (ln N + gamma + 2 ln 2 - 1) / (N L) when each masked token costs c (log-linear, w = 1/t).

    A model that outputs equal logits costs exactly c = ln(V - 1) per masked token under SUBS, so only the
    number of masked tokens per row is random: Var(row r) = w_r^2 c^2 L a_r (1 - a_r) / L^2, a_r = (1 - eps) t_r.
    """
    V, L, N, seeds = 9, 16, 64, 3000
    c = math.log(V - 1)

    def uniform_model(xt, t):
        return torch.zeros(*xt.shape, V)                                           # (B, L, V) equal logits

    t_r = (torch.arange(N, dtype=torch.float64) + 0.5) / N                         # (N,)
    a_r = (1 - EPS) * t_r
    exact = float((c ** 2 * L * a_r * (1 - a_r) / t_r ** 2).sum()) / (N * L) ** 2
    asymptotic = c ** 2 * (math.log(N) + 0.5772156649 + 2 * math.log(2) - 1) / (N * L)
    assert asymptotic == pytest.approx(exact, rel=0.01)                           # the two-line derivation
    assert exact > 2 * c ** 2 / (N * L)                                            # not 1/N: the log matters
    g = torch.Generator().manual_seed(0)
    x0 = torch.zeros(N * seeds, L, dtype=torch.long)
    loss = nelbo_terms(uniform_model, x0, mask_id=V - 1, t=t_r.float().repeat(seeds), generator=g).loss
    est = loss.double().view(seeds, N).mean(1)                                     # (seeds,) one estimate per mask seed
    var, se = variance_and_se(est)
    assert abs(var - exact) < 4 * se
