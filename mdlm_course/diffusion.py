"""Masked (absorbing-state) diffusion: noise schedules, the forward process and its NELBO.

Noise schedule: alpha_t is the probability that a token is still clean at time t in [0, 1],
decreasing from alpha_0 = 1 to alpha_1 = eps ~ 0. The NELBO weight of a masked position is
    w(t) = -alpha'_t / (1 - alpha_t)
    log-linear:  alpha_t = 1 - (1 - eps) t                ->  w(t) = 1 / t
    cosine:      alpha_t = eps + (1 - eps) cos(pi t / 2)    ->  w(t) = (pi / 2) / tan(pi t / 4)
Both have alpha_0 = 1 and alpha_1 = eps (never exactly 0). The weights are written in closed form:
1 - alpha_t computed as 1 - cos(...) would round to 0 in float32 for small t and give 0/0.

Forward process, for each position independently (MASK is absorbing: a masked token stays masked):
    q(x_t | x_0)   = alpha_t * onehot(x_0) + (1 - alpha_t) * onehot(MASK)                 q_sample
    q(x_t | x_s)   = a token still clean at s is masked by t with prob 1 - alpha_t / alpha_s  q_step
    q(x_s | x_t, x_0), s < t, x_t = MASK:  x_0 with prob (alpha_s - alpha_t) / (1 - alpha_t),
                                           MASK otherwise                            unmask_probability

SUBS parameterisation (subs_log_probs): the denoiser never predicts MASK (its logit is pushed to
-1e9), and a position that is not masked in x_t is copied unchanged ("carry-over"). The loss needs
only -log p_theta(x_0 | x_t) per position (masked_nll): the cross-entropy where x_t = MASK, 0 elsewhere.

Continuous-time NELBO (Sahoo et al. 2024, eq. 10), per token position (nelbo):
    L = 1/L_seq E_{t ~ U(0,1)} E_{q(x_t|x_0)} [ w(t) * sum_{i: x_t^i = MASK} -log p_theta(x_0^i | x_t) ]
Discrete-time ELBO with T steps, t(k) = k/T, s = t - 1/T (discrete_elbo); it tends to L as T grows:
    L_T = 1/L_seq E_{k ~ U{1..T}} E_q [ T (alpha_s - alpha_t) / (1 - alpha_t) * sum_{i masked} -log p_theta(x_0^i | x_t) ]
Both functions return nats per token position (sum over all B*L positions / (B*L)), so exp(L)
bounds the per-token perplexity from above. The prior term at t = 1 (alpha_1 = eps, not 0) and the
reconstruction term at t = 0 (alpha_0 = 1, exactly zero) are left out, as in the paper. The Monte
Carlo estimate draws t from [T_MIN, 1] rather than [0, 1]: near t = 0 almost nothing is masked but
the weight 1/t is huge, so cutting that sliver lowers the variance at a bias of order T_MIN.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch

EPS = 1e-3  # alpha_1 = EPS: even at t = 1 a token survives with probability 1e-3
T_MIN = 1e-3  # sampled times lie in [T_MIN, 1]: caps the weight (1/t <= 1000) at a bias of order T_MIN
NEG_INF = -1e9  # "log 0" in SUBS log-probs: exp() of it is exactly 0 in float32, yet 0 * it is 0, not nan


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


def _as_float(t) -> torch.Tensor:
    """t as a floating tensor; float64 stays float64 (tests compare against finite differences)."""
    t = torch.as_tensor(t)
    return t if t.is_floating_point() else t.to(torch.get_default_dtype())


class LogLinearSchedule(Schedule):
    """alpha_t = 1 - (1 - eps) t: the expected fraction of masked tokens grows linearly in t."""

    name = "loglinear"

    def __init__(self, eps: float = EPS):
        self.eps = eps

    def alpha(self, t):
        return 1 - (1 - self.eps) * _as_float(t)

    def dalpha(self, t):
        return torch.full_like(_as_float(t), -(1 - self.eps))

    def weight(self, t):
        """-alpha'_t / (1 - alpha_t) = (1 - eps) / ((1 - eps) t) = 1 / t."""
        return 1 / _as_float(t)


class CosineSchedule(Schedule):
    """alpha_t = eps + (1 - eps) cos(pi t / 2): slow masking at first, fast at the end."""

    name = "cosine"

    def __init__(self, eps: float = EPS):
        self.eps = eps

    def alpha(self, t):
        return self.eps + (1 - self.eps) * torch.cos(math.pi / 2 * _as_float(t))

    def dalpha(self, t):
        return -(1 - self.eps) * math.pi / 2 * torch.sin(math.pi / 2 * _as_float(t))

    def weight(self, t):
        """-alpha'_t / (1 - alpha_t) = (pi/2) sin(pi t/2) / (1 - cos(pi t/2)) = (pi/2) / tan(pi t/4)."""
        return math.pi / 2 / torch.tan(math.pi / 4 * _as_float(t))


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


# ---------------------------------------------------------------------------------------------
# The forward process
# ---------------------------------------------------------------------------------------------

def _rand(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    """Uniforms in [0, 1) drawn on the generator's device (a CPU generator works for CUDA data)."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def _check_tokens(x: torch.Tensor, name: str) -> None:
    if x.dim() != 2 or x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"{name} must be integer token ids of shape (B, L), got {tuple(x.shape)} {x.dtype}")


def _per_row(t, B: int, device) -> torch.Tensor:
    """t as a float tensor of shape (B,): a float or a 0-d tensor is broadcast."""
    t = _as_float(t).to(device)
    if t.dim() == 0:
        t = t.expand(B)
    if t.shape != (B,):
        raise ValueError(f"t must be a float or have shape (B,) = ({B},), got {tuple(t.shape)}")
    return t


def q_sample(x0: torch.Tensor, t, mask_id: int, schedule: Schedule | str | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw x_t ~ q(x_t | x_0): mask each position independently with probability 1 - alpha_t.

    x0 (B, L) ids, t (B,) or a float -> xt (B, L). With t = 0 nothing is masked; with t = 1 a
    fraction 1 - eps. The same generator state gives the same uniforms u, and a position is masked
    iff u < 1 - alpha_t, so samples at increasing t drawn from one seed are nested (masks only grow).
    """
    _check_tokens(x0, "x0")
    schedule = get_schedule(schedule)
    B, L = x0.shape
    alpha_t = schedule.alpha(_per_row(t, B, x0.device))            # (B,)
    u = _rand((B, L), generator, x0.device)                         # (B, L)
    is_masked = u < (1 - alpha_t)[:, None]                          # (B, L)
    return torch.where(is_masked, torch.full_like(x0, mask_id), x0)


def q_step(xs: torch.Tensor, s, t, mask_id: int, schedule: Schedule | str | None = None,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw x_t ~ q(x_t | x_s) for s <= t: each unmasked token is masked with prob 1 - alpha_t/alpha_s.

    Masked tokens stay masked (MASK is absorbing). Composing q_step after q_sample(x0, s) gives the
    same distribution as q_sample(x0, t) (tests/test_diffusion.py checks it).
    """
    _check_tokens(xs, "xs")
    schedule = get_schedule(schedule)
    B, L = xs.shape
    s, t = _per_row(s, B, xs.device), _per_row(t, B, xs.device)
    if (s > t).any():
        raise ValueError("q_step needs s <= t: the forward process only adds masks")
    p_mask = 1 - schedule.alpha(t) / schedule.alpha(s)             # (B,)
    newly = _rand((B, L), generator, xs.device) < p_mask[:, None]   # (B, L)
    return torch.where(newly, torch.full_like(xs, mask_id), xs)


def unmask_probability(s, t, schedule: Schedule | str | None = None) -> torch.Tensor:
    """q(x_s = x_0 | x_t = MASK, x_0) = (alpha_s - alpha_t) / (1 - alpha_t) for s < t.

    The chance that a token masked at time t was still clean at the earlier time s: the reverse
    step of a sampler reveals each masked position with this probability.
    """
    schedule = get_schedule(schedule)
    alpha_s, alpha_t = schedule.alpha(s), schedule.alpha(t)
    return (alpha_s - alpha_t) / (1 - alpha_t)


def sample_t(batch_size: int, *, antithetic: bool = True, generator: torch.Generator | None = None,
             device=None) -> torch.Tensor:
    """Times for a batch, (B,) in [T_MIN, 1].

    antithetic (stratified): one uniform u, then t_i = (u + i/B) mod 1, so the batch covers [0, 1)
    evenly and the NELBO estimate has a much lower variance than with B independent draws.
    """
    if antithetic:
        u = _rand((1,), generator, device)                          # (1,)
        offsets = torch.arange(batch_size, device=device) / batch_size
        u = (u + offsets) % 1.0                                     # (B,)
    else:
        u = _rand((batch_size,), generator, device)                 # (B,)
    return T_MIN + (1 - T_MIN) * u


# ---------------------------------------------------------------------------------------------
# SUBS and the NELBO
# ---------------------------------------------------------------------------------------------

def subs_log_probs(logits: torch.Tensor, xt: torch.Tensor, mask_id: int) -> torch.Tensor:
    """SUBS: raw logits (B, L, V) -> float32 log p_theta(x_0 | x_t) (B, L, V).

    1. zero masking probability: the MASK logit is set to -1e9 before the softmax, so no
       probability ever lands on MASK;
    2. carry-over unmasking: where x_t is not MASK the output is the one-hot of x_t
       (log-prob 0 at x_t, -1e9 elsewhere): the model cannot change a token it can see.
    """
    _check_tokens(xt, "xt")
    if logits.dim() != 3 or logits.shape[:2] != xt.shape:
        raise ValueError(f"logits must have shape (B, L, V) with (B, L) = {tuple(xt.shape)}, got {tuple(logits.shape)}")
    if not 0 <= mask_id < logits.shape[-1]:
        raise ValueError(f"mask_id={mask_id} is not a valid index into the vocabulary of size {logits.shape[-1]}")
    logits = logits.float()                                         # log-softmax in float32, even under autocast
    logits = logits.index_fill(-1, torch.tensor([mask_id], device=logits.device), NEG_INF)   # (B, L, V)
    log_probs = logits.log_softmax(-1)                              # (B, L, V)
    carry = torch.full_like(log_probs, NEG_INF).scatter(-1, xt[..., None], 0.0)    # one-hot of x_t, in log space
    is_masked = (xt == mask_id)[..., None]                          # (B, L, 1)
    return torch.where(is_masked, log_probs, carry)


def masked_nll(logits: torch.Tensor, xt: torch.Tensor, x0: torch.Tensor, mask_id: int) -> torch.Tensor:
    """-log p_theta(x0 | xt) under SUBS, per position (B, L) float32: the masked cross-entropy, 0 where visible.

    Equal to -subs_log_probs(logits, xt, mask_id).gather(-1, x0[..., None])[..., 0] (tested), without
    building the (B, L, V) carry-over tensor: at a visible position x_t = x_0, so SUBS gives log 1 = 0;
    at a masked one it is the cross-entropy of the logits with the MASK column at "log 0". One fused
    cast-and-bias (B, L, V) float32 tensor and F.cross_entropy: the training loss's memory traffic.
    """
    V = logits.shape[-1]
    no_mask = torch.zeros(V, device=logits.device, dtype=torch.float32)
    no_mask[mask_id] = NEG_INF                                      # (V,) SUBS rule 1: never predict MASK
    logits = logits + no_mask                                       # (B, L, V) float32 by type promotion
    nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), x0.flatten(), reduction="none")   # (B L,)
    return nll.view(x0.shape) * (xt == mask_id)                     # (B, L) SUBS rule 2: 0 where visible


class NelboTerms(NamedTuple):
    """Per-sample pieces of the NELBO estimate (all (B,)); `loss.mean()` is what nelbo returns."""
    loss: torch.Tensor       # w(t) * nll_sum / L: this sample's NELBO per token position, nats
    t: torch.Tensor          # the time of each sample
    weight: torch.Tensor     # w(t) = -alpha'_t / (1 - alpha_t)  (or its T-step version)
    nll_sum: torch.Tensor    # sum over masked positions of -log p_theta(x_0^i | x_t), unweighted
    n_masked: torch.Tensor   # number of masked positions in x_t


Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]   # model(xt (B, L), t (B,)) -> logits (B, L, V)


def nelbo_terms(model: Model, x0: torch.Tensor, *, mask_id: int, schedule: Schedule | str | None = None,
                antithetic: bool = True, t=None, generator: torch.Generator | None = None,
                T: int | None = None, check_x0: bool = True, nll_fn: Callable = None) -> NelboTerms:
    """The NELBO's per-sample terms for a batch x0 (B, L) of clean ids. See nelbo().

    T=None: continuous time. T an int: the T-step discrete-time ELBO (t is snapped to k/T).
    check_x0=False skips the test that x0 holds no MASK: on a GPU that test waits for the device on
    every call, so the training loop checks its whole data set once instead. nll_fn replaces
    masked_nll by an equal function (the training loop passes a torch.compile'd one).
    """
    _check_tokens(x0, "x0")
    if check_x0 and (x0 == mask_id).any():
        raise ValueError(f"x0 contains mask_id={mask_id}; the clean data must not contain the [MASK] token")
    if T is not None and (not isinstance(T, int) or T < 1):
        raise ValueError(f"T must be a positive int (number of discrete steps) or None, got {T!r}")
    schedule = get_schedule(schedule)
    B, L = x0.shape
    if t is None:
        t = sample_t(B, antithetic=antithetic, generator=generator, device=x0.device)        # (B,)
    t = _per_row(t, B, x0.device)
    if T is None:
        weight = schedule.weight(t)                                 # (B,)  = -alpha'_t / (1 - alpha_t)
    else:
        t = torch.ceil(t * T).clamp(1, T) / T                       # (B,)  snapped to the grid k/T
        s = t - 1.0 / T
        weight = T * unmask_probability(s, t, schedule)             # (B,)  = T (alpha_s - alpha_t) / (1 - alpha_t)
    xt = q_sample(x0, t, mask_id, schedule, generator)              # (B, L)
    logits = model(xt, t)                                           # (B, L, V)
    nll_sum = (nll_fn or masked_nll)(logits, xt, x0, mask_id).sum(-1)   # (B,) = -sum_i log p(x0^i | xt), SUBS
    loss = weight * nll_sum / L                                     # (B,)
    return NelboTerms(loss=loss, t=t, weight=weight, nll_sum=nll_sum, n_masked=(xt == mask_id).sum(-1))


def nelbo(model: Model, x0: torch.Tensor, *, mask_id: int, schedule: Schedule | str | None = None,
          antithetic: bool = True, t=None, generator: torch.Generator | None = None,
          check_x0: bool = True, nll_fn: Callable = None) -> torch.Tensor:
    """Monte Carlo estimate of the continuous-time NELBO, in nats per token position (a scalar).

    One t per sequence (antithetic over the batch unless antithetic=False, or the given t), one
    masked x_t ~ q(x_t | x_0) per sequence, then
        nelbo = sum_b w(t_b) sum_{i: xt_bi = MASK} -log p_theta(x0_bi | xt_b)  /  (B * L).
    `model` is any callable model(xt, t) -> logits (B, L, V): an MDLM, or an exact toy denoiser.
    Differentiable: the training loss is nelbo(...).
    """
    return nelbo_terms(model, x0, mask_id=mask_id, schedule=schedule, antithetic=antithetic, t=t,
                       generator=generator, check_x0=check_x0, nll_fn=nll_fn).loss.mean()


def discrete_elbo(model: Model, x0: torch.Tensor, *, mask_id: int, T: int,
                  schedule: Schedule | str | None = None, antithetic: bool = True,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Monte Carlo estimate of the T-step discrete-time NELBO, nats per token position (a scalar).

    A step k ~ U{1..T} per sequence (stratified over the batch), t = k/T, s = (k-1)/T, and
        L_T = T * E_k E_q [ (alpha_s - alpha_t) / (1 - alpha_t) * sum_{i masked} -log p_theta(x_0^i | x_t) ] / L.
    Each term is the KL between the true reverse step q(x_s | x_t, x_0) and the model's. The bound
    is looser than the continuous one and decreases to it as T grows (notebook 04).
    """
    return nelbo_terms(model, x0, mask_id=mask_id, schedule=schedule, antithetic=antithetic,
                       generator=generator, T=T).loss.mean()
