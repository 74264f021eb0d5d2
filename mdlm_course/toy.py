"""A toy distribution small enough to enumerate, and its exact denoisers: the course's proofs.

All V^L sequences of length L over V tokens (default 3^4 = 81), with random, peaked probabilities
p(x) = softmax(sharpness * z), z ~ N(0, 1). The [MASK] id is V, so models see V + 1 ids.

    oracle(xt, t)    exact posterior marginals p(x^i = v | the visible tokens of xt): the best
                     possible denoiser. For it the NELBO equals the exact NLL, H / L per token
                     (the any-order chain rule; tests/test_diffusion.py, notebook 04).
    unigram(xt, t)   context-blind marginals p(x^i = v): ignores every visible token.
    exact_bound(m)   the exact expectation of nelbo / discrete_elbo for a denoiser m that ignores t,
                     by enumerating every x_0 and every mask pattern and integrating over t by
                     Gauss-Legendre quadrature: no Monte Carlo error at all.

Any `model(xt, t) -> logits` with logits (B, L, V + 1) works with the package's nelbo() and the
sampler, so these stand in for a trained network wherever the math is to be checked exactly.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from .diffusion import Schedule, get_schedule


class ToyDistribution:
    """ToyDistribution(L=4, V=3, sharpness=2.5, seed=0): 81 sequences, mask_id=3, vocab_size=4."""

    def __init__(self, L: int = 4, V: int = 3, sharpness: float = 2.5, seed: int = 0):
        if V ** L > 100_000:
            raise ValueError(f"V**L = {V ** L} sequences is too many to enumerate; use a smaller L or V")
        self.L, self.V = L, V
        self.mask_id = V                    # ids 0..V-1 are tokens, V is [MASK]
        self.vocab_size = V + 1
        self.support = torch.tensor(list(itertools.product(range(V), repeat=L)))           # (N, L)
        z = torch.randn(len(self.support), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        self.probs = torch.softmax(sharpness * z, 0)                                        # (N,) float64
        self._onehot = torch.nn.functional.one_hot(self.support, V).double()                # (N, L, V)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n sequences x_0 ~ p, (n, L) ids."""
        idx = torch.multinomial(self.probs, n, replacement=True, generator=generator)
        return self.support[idx]

    def entropy(self) -> float:
        """H(p) = -sum_x p(x) log p(x), nats per sequence."""
        return float(-(self.probs * self.probs.log()).sum())

    def nll_per_token(self) -> float:
        """The exact NLL per token of x_0 ~ p: H / L. No model can do better in expectation."""
        return self.entropy() / self.L

    def marginal_entropy_per_token(self) -> float:
        """sum_i H(x^i) / L: what a model that ignores context (unigram) pays."""
        marg = torch.einsum("n,nlv->lv", self.probs, self._onehot)                          # (L, V)
        return float(-(marg * marg.log()).sum() / self.L)

    def _logits(self, weights: torch.Tensor, out_device) -> torch.Tensor:
        """Posterior weights over the support (B, N) -> per-position log-marginals (B, L, V + 1)."""
        marg = torch.einsum("bn,nlv->blv", weights, self._onehot)                            # (B, L, V)
        marg = marg / marg.sum(-1, keepdim=True)
        logits = marg.clamp_min(1e-300).log()
        mask_col = torch.full_like(logits[..., :1], -1e9)            # the MASK column: SUBS removes it anyway
        return torch.cat([logits, mask_col], dim=-1).float().to(out_device)

    def oracle(self, xt: torch.Tensor, t=None) -> torch.Tensor:
        """Exact denoiser: logits of p(x^i = v | visible tokens of xt), (B, L) -> (B, L, V + 1).

        p(x | visible) is proportional to p(x) on the sequences that agree with every visible token.
        """
        xt_cpu = xt.cpu()
        visible = xt_cpu != self.mask_id                                                     # (B, L)
        agrees = (self.support[None] == xt_cpu[:, None]) | ~visible[:, None]                # (B, N, L)
        weights = self.probs[None] * agrees.all(-1)                                          # (B, N)
        return self._logits(weights, xt.device)

    def unigram(self, xt: torch.Tensor, t=None) -> torch.Tensor:
        """Context-blind denoiser: logits of the marginal p(x^i = v), whatever xt shows."""
        weights = self.probs[None].expand(xt.shape[0], -1)                                   # (B, N)
        return self._logits(weights, xt.device)

    def exact_bound(self, model, schedule: Schedule | str | None = None, T: int | None = None,
                    n_quad: int = 64) -> float:
        """The exact expected value of nelbo (T=None) or discrete_elbo(T) for x_0 ~ p, nats/token.

        For every x_0 and every set M of masked positions, g(M) = sum_x0 p(x0) sum_{i in M}
        -log p_model(x0^i | x0 with M masked). A position is masked with prob a = 1 - alpha_t, so
            f(a) = sum_M a^|M| (1 - a)^(L - |M|) g(M)
            continuous:  integral_0^1 w(t) f(1 - alpha_t) dt / L       (Gauss-Legendre, n_quad nodes)
            T steps:     sum_k (alpha_s - alpha_t) / (1 - alpha_t) f(1 - alpha_t) / L,  t = k/T, s = t - 1/T
        `model` must ignore t (it is called once per (x0, M), with t=None).
        """
        schedule = get_schedule(schedule)
        subsets = torch.tensor(list(itertools.product([False, True], repeat=self.L)))       # (2^L, L)
        N, S = len(self.support), len(subsets)
        x0 = self.support[:, None].expand(N, S, self.L)                                      # (N, S, L)
        xt = torch.where(subsets[None], torch.full_like(x0, self.mask_id), x0)               # (N, S, L)
        logits = model(xt.reshape(N * S, self.L), None).double()                             # (N*S, L, V+1)
        logits[..., self.mask_id] = -math.inf
        log_p = logits.log_softmax(-1).gather(-1, x0.reshape(N * S, self.L, 1))[..., 0]      # (N*S, L)
        nll = -(log_p.reshape(N, S, self.L) * subsets[None]).sum(-1)                         # (N, S)
        g = (self.probs[:, None] * nll).sum(0)                                               # (S,)
        n_masked = subsets.sum(-1).double()                                                  # (S,)

        def f(a: torch.Tensor) -> torch.Tensor:                     # a (K,) -> expected masked NLL (K,)
            pr = a[:, None] ** n_masked * (1 - a[:, None]) ** (self.L - n_masked)           # (K, S)
            return pr @ g

        if T is None:
            nodes, w = np.polynomial.legendre.leggauss(n_quad)      # on [-1, 1]
            t = torch.tensor((nodes + 1) / 2, dtype=torch.float64)  # on (0, 1)
            integrand = schedule.weight(t) * f(1 - schedule.alpha(t))
            return float((torch.tensor(w / 2) * integrand).sum() / self.L)
        t = torch.arange(1, T + 1, dtype=torch.float64) / T
        alpha_t, alpha_s = schedule.alpha(t), schedule.alpha(t - 1 / T)
        return float(((alpha_s - alpha_t) / (1 - alpha_t) * f(1 - alpha_t)).sum() / self.L)
