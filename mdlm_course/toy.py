"""A toy distribution small enough to enumerate, and its exact denoisers: the course's proofs.

All V^L sequences of length L over V tokens (default 3^4 = 81), with random, peaked probabilities
p(x) = softmax(sharpness * z), z ~ N(0, 1). The [MASK] id is V, so models see V + 1 ids.

    oracle(xt, t)    exact posterior marginals p(x^i = v | the visible tokens of xt): the best
                     possible denoiser. For it the NELBO plus the prior term equals the exact
                     NLL, H / L per token, up to O(eps^2) (the any-order chain rule;
                     tests/test_diffusion.py, tests/test_math_claims.py, notebook 04).
    unigram(xt, t)   context-blind marginals p(x^i = v): ignores every visible token.
    exact_bound(m)   the exact expectation of nelbo / discrete_elbo for a denoiser m that ignores t,
                     by enumerating every x_0 and every mask pattern and integrating over t by
                     Gauss-Legendre quadrature: no Monte Carlo error at all.

Helpers shared by notebook 06 and tests/test_sampling.py: `law` and `tv` (empirical law of samples and
total-variation distance), `zipf_staircase`, `race_step` and `race_ancestral` (the float32 race that
truncates a categorical's tail, chapter 6).

Any `model(xt, t) -> logits` with logits (B, L, V + 1) works with the package's nelbo() and the
sampler, so these stand in for a trained network wherever the math is to be checked exactly.
"""
from __future__ import annotations

import itertools

import numpy as np
import torch

from .diffusion import Schedule, forbid_mask, get_schedule
from .errors import MdlmError


class ToyDistribution:
    """ToyDistribution(L=4, V=3, sharpness=2.5, seed=0): 81 sequences, mask_id=3, vocab_size=4."""

    def __init__(self, L: int = 4, V: int = 3, sharpness: float = 2.5, seed: int = 0):
        if V ** L > 100_000:
            raise MdlmError(f"V**L = {V ** L} sequences is too many to enumerate; use a smaller L or V")
        self.L, self.V = L, V
        self.mask_id = V                    # ids 0..V-1 are tokens, V is [MASK]
        self.vocab_size = V + 1
        self.support = torch.tensor(list(itertools.product(range(V), repeat=L)))           # (N, L)
        z = torch.randn(len(self.support), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        self.probs = torch.softmax(sharpness * z, 0)                                        # (N,) float64
        self.onehot = torch.nn.functional.one_hot(self.support, V).double()                # (N, L, V)

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
        marg = torch.einsum("n,nlv->lv", self.probs, self.onehot)                          # (L, V)
        return float(-(marg * marg.log()).sum() / self.L)

    def _logits(self, weights: torch.Tensor, out_device) -> torch.Tensor:
        """Posterior weights over the support (B, N) -> per-position log-marginals (B, L, V + 1)."""
        marg = torch.einsum("bn,nlv->blv", weights, self.onehot)                            # (B, L, V)
        marg = marg / marg.sum(-1, keepdim=True)
        logits = marg.clamp_min(1e-300).log()
        logits = torch.cat([logits, torch.zeros_like(logits[..., :1])], dim=-1)            # (B, L, V + 1)
        return forbid_mask(logits, self.mask_id).to(out_device)      # float32, MASK never predicted

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
        log_p = forbid_mask(logits, self.mask_id, torch.float64).log_softmax(-1)            # (N*S, L, V+1)
        log_p = log_p.gather(-1, x0.reshape(N * S, self.L, 1))[..., 0]                        # (N*S, L)
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

    def exact_prior_term(self, model, schedule: Schedule | str | None = None) -> float:
        """The exact expectation of diffusion.prior_term for x_0 ~ p, nats/token:
        alpha_1 sum_x0 p(x0) sum_i -log p_model(x0^i | all MASK) / L. For the oracle it is eps sum_i H(x^i) / L,
        and exact_bound(oracle) + exact_prior_term(oracle) equals H / L up to O(eps^2) (tests/test_math_claims.py)."""
        alpha_1 = float(get_schedule(schedule).alpha(torch.tensor(1.0, dtype=torch.float64)))
        all_mask = torch.full((1, self.L), self.mask_id)
        log_p = forbid_mask(model(all_mask, None).double(), self.mask_id, torch.float64).log_softmax(-1)[0]  # (L, V+1)
        nll = -log_p.gather(-1, self.support.T).T                                             # (N, L)
        return alpha_1 * float((self.probs[:, None] * nll).sum()) / self.L


# ---------------------------------------------------------------------------------------------
# Helpers for the sampler proofs (notebook 06 and tests/test_sampling.py use the same ones)
# ---------------------------------------------------------------------------------------------

def law(x: torch.Tensor, V: int) -> torch.Tensor:
    """Empirical law of samples x (n, L) over all V^L sequences, in ToyDistribution.support's order
    (itertools.product: index = sum_i x_i V^(L-1-i)).  -> (V^L,) float64, summing to 1.

    law(torch.tensor([[0, 1], [0, 1], [1, 0]]), V=2) -> [0, 2/3, 1/3, 0]
    """
    n, L = x.shape
    idx = (x * V ** torch.arange(L - 1, -1, -1, device=x.device)).sum(1)                     # (n,)
    return torch.bincount(idx.cpu(), minlength=V ** L).double() / n


def tv(p: torch.Tensor, q: torch.Tensor) -> float:
    """Total-variation distance between two laws on the same support: 0.5 sum |p - q|.

    tv(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0])) -> 0.5
    """
    return 0.5 * float((p - q).abs().sum())


def zipf_staircase(V: int = 50_000, n_bins: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """A long-tailed law over V tokens: Zipf, p(r) ~ 1/r, averaged over log-spaced rank bins, so that all
    tokens of a bin share one probability (a "staircase"; with the defaults 45 bins survive deduplication,
    the smallest probability is 1.75e-6 and the entropy 7.565 nats).

    -> (sizes (G,) int64: tokens per bin, p_bin (G,) float64: the probability of each token of the bin);
    the law over tokens is torch.repeat_interleave(p_bin, sizes), (V,).
    """
    zipf = 1 / torch.arange(1, V + 1, dtype=torch.float64)
    zipf = zipf / zipf.sum()                                                                # (V,)
    edges = torch.logspace(0, np.log10(V), n_bins, dtype=torch.float64).round().long() - 1
    edges = torch.cat([edges, torch.tensor([V])]).unique()                                  # (G + 1,)
    sizes = edges[1:] - edges[:-1]                                                          # (G,)
    mass = torch.stack([zipf[a:b].sum() for a, b in zip(edges[:-1].tolist(), edges[1:].tolist())])   # (G,)
    return sizes, mass / sizes


def race_step(sizes: torch.Tensor, p_bin: torch.Tensor, pi: float, *, rows: int, bits: int = 24,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """One reverse step as naive code writes it: ONE categorical draw over [the V tokens, with weight
    pi * p(x), and MASK, with weight 1 - pi] by an exponential race,
        winner = argmax_i w_i / E_i,   E_i = -log u_i,   u_i a float32 uniform (a multiple of 2^-bits),
    in float32, for `rows` positions.  -> (rows,) int64: the winner's bin, or len(sizes) for MASK.

    Simulated exactly without drawing V uniforms per row: inside a bin all weights are equal, so the
    bin's best token is the one with the largest u, and the largest of n uniforms on the grid
    {0, 1, ..., 2^bits - 1} / 2^bits is J / 2^bits with P(J <= j) = ((j + 1) / 2^bits)^n, that is
    J = ceil(2^bits U^(1/n)) - 1 with U ~ U(0, 1] (tests/test_sampling.py checks this against the race
    over every token).
    """
    U = 1 - torch.rand(rows, len(sizes), generator=generator, dtype=torch.float64)           # (R, G) in (0, 1]
    J = torch.ceil(2.0 ** bits * U ** (1 / sizes.double())) - 1                             # (R, G) best u per bin
    J_mask = torch.floor(torch.rand(rows, 1, generator=generator, dtype=torch.float64) * 2 ** bits)   # (R, 1)
    u = (torch.cat([J, J_mask], 1) * 2.0 ** -bits).float()                                  # (R, G + 1) float32
    w = torch.cat([pi * p_bin, torch.tensor([1 - pi], dtype=torch.float64)]).float()        # (G + 1,)
    return (w / -torch.log(u)).argmax(1)                                                     # (R,) the float32 race


def race_ancestral(sizes: torch.Tensor, p_bin: torch.Tensor, *, rows: int, steps: int, bits: int = 24,
                   generator: torch.Generator | None = None,
                   schedule: Schedule | str | None = None) -> torch.Tensor:
    """The T-step ancestral sampler of one position with race_step as its draw, for a context-free model
    whose prediction is the staircase law.  -> (rows,) int64: the bin each row's token came from.

    Step k goes from t = k/T to s = (k-1)/T with reveal probability pi = (alpha_s - alpha_t) / (1 - alpha_t)
    (pi = 1 at the last step); rows already revealed are left alone.
    """
    schedule = get_schedule(schedule)
    out = torch.full((rows,), -1, dtype=torch.long)                                         # (R,) -1: masked
    for k in range(steps, 0, -1):
        t, s = torch.tensor(k / steps, dtype=torch.float64), torch.tensor((k - 1) / steps, dtype=torch.float64)
        alpha_t, alpha_s = schedule.alpha(t), schedule.alpha(s)
        pi = 1.0 if k == 1 else float((alpha_s - alpha_t) / (1 - alpha_t))
        live = (out < 0).nonzero()[:, 0]                                                     # rows still masked
        winner = race_step(sizes, p_bin, pi, rows=len(live), bits=bits, generator=generator)
        hit = winner < len(sizes)
        out[live[hit]] = winner[hit]
    return out
