"""Masked (absorbing-state) diffusion: noise schedules, the forward process and its NELBO.

Noise schedule: alpha_t is the probability that a token is still clean at time t in [0, 1],
decreasing from alpha_0 = 1 to alpha_1 = eps ~ 0. The NELBO weight of a masked position is
    w(t) = -alpha'_t / (1 - alpha_t)
    log-linear:  alpha_t = 1 - (1 - eps) t                ->  w(t) = 1 / t
    cosine:      alpha_t = eps + (1 - eps) cos(pi t / 2)    ->  w(t) = (pi / 2) / tan(pi t / 4)
"Log-linear" names sigma_t = -log alpha_t = -log(1 - (1 - eps) t), the total noise rate of MDLM's
parameterisation: it is the log of a linear function of t. w(t) is finite at t = 1 even with eps = 0
(1 for log-linear, pi / 2 for cosine); it blows up at t -> 0, which T_MIN handles. What eps buys is
alpha_1 > 0: sigma_1 = -log alpha_1 stays finite, and alpha_s > 0 in q_step's ratio alpha_t / alpha_s.
Its price is the prior term below. The weights are written in closed form: 1 - alpha_t computed as
1 - cos(...) would round to 0 in float32 for small t and give 0/0.

Forward process, for each position independently (MASK is absorbing: a masked token stays masked):
    q(x_t | x_0)   = alpha_t * onehot(x_0) + (1 - alpha_t) * onehot(MASK)                 q_sample
    q(x_t | x_s)   = a token still clean at s is masked by t with prob 1 - alpha_t / alpha_s  q_step
    q(x_s | x_t, x_0), s < t, x_t = MASK:  x_0 with prob (alpha_s - alpha_t) / (1 - alpha_t),
                                           MASK otherwise                            unmask_probability

SUBS parameterisation: the denoiser never predicts MASK (forbid_mask pushes its logit to -1e9; every
function here and in sampling.py and toy.py goes through it), and a position that is not masked in x_t
is copied unchanged ("carry-over", subs_log_probs). The loss needs only -log p_theta(x_0 | x_t) per
position (masked_nll): the cross-entropy where x_t = MASK, 0 elsewhere. A uniform guess over the V - 1
tokens other than MASK therefore costs ln(V - 1) nats, not ln V.

The bound. For a sequence of L tokens, with a prior p(x_1) that masks each position with prob 1 - eps and
otherwise shows a token drawn from p_theta(. | all MASK), the negative ELBO is exactly
    NLL(x_0)  <=  prior + diffusion,
    prior      = KL(q(x_1 | x_0) || p(x_1)) = eps * sum_i -log p_theta(x_0^i | all MASK)          prior_term
    diffusion  = E_{t ~ U(0,1)} E_{q(x_t|x_0)} [ w(t) sum_{i: x_t^i = MASK} -log p_theta(x_0^i | x_t) ]   nelbo
(Sahoo et al. 2024, eq. 10, in the limit of infinitely many steps; the reconstruction term at t = 0 is 0
because x_{t(0)} = x_0 exactly: alpha_0 = 1). `nelbo` estimates the diffusion term only, per token
position, as the MDLM paper reports it. It is therefore an upper bound on the NLL only up to the prior
term, which is O(eps): eps times the cross-entropy of the model's all-MASK prediction, at most
eps ln(V - 1) per token for a model no worse than a uniform guess, about 0.008 nats at V = 4096
(evaluate.py reports its size). On the toy the exact diffusion term is 0.41819 nats/token, *below* the true NLL
0.41886; adding the prior term closes the gap to 3e-7, O(eps^2) (tests/test_math_claims.py).

Discrete time with T steps, t(k) = k/T, s = (k-1)/T (discrete_elbo): the diffusion term becomes a sum of
T KL terms, k = 1..T, each the KL between q(x_s | x_t, x_0) and the model's reverse step, with the
reconstruction at x_{t(0)} = x_0 again 0. The k = 1 term reveals every position still masked at 1/T
(its reveal probability is 1):
    L_T = 1/L E_{k ~ U{1..T}} E_q [ T (alpha_s - alpha_t) / (1 - alpha_t) sum_{i masked} -log p_theta(x_0^i | x_t) ]
It decreases to the continuous value as T grows (notebook 04). Both functions return nats per token
position (sum over all B*L positions / (B*L)). The continuous Monte Carlo estimate draws t from [T_MIN, 1]
rather than [0, 1]: near t = 0 almost nothing is masked but the weight 1/t is huge, so cutting that
sliver lowers the variance at a bias of order T_MIN.

Symbols: B samples, L positions per sequence, V vocabulary size (MASK included), T discrete steps.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, NamedTuple

import torch

from .errors import MdlmError

EPS = 1e-3  # alpha_1 = EPS: even at t = 1 a token survives with probability 1e-3
MAX_T = 10**7  # discrete_elbo's T: beyond this k/T and (k-1)/T round to the same float32
T_MIN = 1e-3  # sampled times lie in [T_MIN, 1]: caps the weight (1/t <= 1000) at a bias of order T_MIN
NEG_INF = -1e9  # "log 0" in SUBS log-probs: exp() of it is exactly 0 in float32, yet 0 * it is 0, not nan

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]   # model(xt (B, L), t (B,)) -> logits (B, L, V)


class Schedule:
    """A noise schedule: alpha(t), its derivative dalpha(t), the NELBO weight(t), and alpha_inverse."""

    name = "base"

    def __init__(self, eps: float = EPS):
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < 1:
            raise MdlmError(f"{type(self).__name__}: eps (alpha_1, what survives at t = 1) must be a number in "
                            f"[0, 1), e.g. {EPS}; got {eps!r}")
        self.eps = eps                                              # alpha_1 = eps for the built-in schedules

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def dalpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """-alpha'_t / (1 - alpha_t): the factor in front of the masked cross-entropy."""
        return -self.dalpha(t) / (1 - self.alpha(t))

    def alpha_inverse(self, alpha: torch.Tensor) -> torch.Tensor:
        """The time t with alpha(t) = alpha. This generic version bisects (alpha is decreasing in t, 60
        halvings reach float64's resolution); schedules with a closed form override it."""
        alpha = torch.as_tensor(alpha, dtype=torch.float64)
        lo, hi = torch.zeros_like(alpha), torch.ones_like(alpha)
        for _ in range(60):
            mid = (lo + hi) / 2
            too_early = self.alpha(mid) > alpha                     # still too clean: go later
            lo, hi = torch.where(too_early, mid, lo), torch.where(too_early, hi, mid)
        return (lo + hi) / 2

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps})"


def _as_float(t) -> torch.Tensor:
    """t as a floating tensor; float64 stays float64 (tests compare against finite differences)."""
    t = torch.as_tensor(t)
    return t if t.is_floating_point() else t.to(torch.get_default_dtype())


class LogLinearSchedule(Schedule):
    """alpha_t = 1 - (1 - eps) t: the expected fraction of masked tokens grows linearly in t."""

    name = "loglinear"

    def alpha(self, t):
        return 1 - (1 - self.eps) * _as_float(t)

    def dalpha(self, t):
        return torch.full_like(_as_float(t), -(1 - self.eps))

    def weight(self, t):
        """-alpha'_t / (1 - alpha_t) = (1 - eps) / ((1 - eps) t) = 1 / t."""
        return 1 / _as_float(t)

    def alpha_inverse(self, alpha):
        """t = (1 - alpha) / (1 - eps), clamped to [0, 1]."""
        return ((1 - _as_float(alpha)) / (1 - self.eps)).clamp(0, 1)


class CosineSchedule(Schedule):
    """alpha_t = eps + (1 - eps) cos(pi t / 2): slow masking at first, fast at the end."""

    name = "cosine"

    def alpha(self, t):
        return self.eps + (1 - self.eps) * torch.cos(math.pi / 2 * _as_float(t))

    def dalpha(self, t):
        return -(1 - self.eps) * math.pi / 2 * torch.sin(math.pi / 2 * _as_float(t))

    def weight(self, t):
        """-alpha'_t / (1 - alpha_t) = (pi/2) sin(pi t/2) / (1 - cos(pi t/2)) = (pi/2) / tan(pi t/4)."""
        return math.pi / 2 / torch.tan(math.pi / 4 * _as_float(t))

    def alpha_inverse(self, alpha):
        """t = (2 / pi) arccos((alpha - eps) / (1 - eps))."""
        return 2 / math.pi * torch.acos(((_as_float(alpha) - self.eps) / (1 - self.eps)).clamp(-1, 1))


SCHEDULES = {"loglinear": LogLinearSchedule, "cosine": CosineSchedule}


def get_schedule(schedule: Schedule | str | None = None) -> Schedule:
    """None -> log-linear (the default); a name from SCHEDULES; or a Schedule passed through."""
    if schedule is None:
        return LogLinearSchedule()
    if isinstance(schedule, str):
        if schedule not in SCHEDULES:
            raise MdlmError(f"unknown schedule {schedule!r}; choose from {sorted(SCHEDULES)}")
        return SCHEDULES[schedule]()
    if not all(callable(getattr(schedule, name, None)) for name in ("alpha", "dalpha", "weight", "alpha_inverse")):
        raise MdlmError(f"schedule must be a name from {sorted(SCHEDULES)}, a Schedule or None, got "
                        f"{type(schedule).__name__} {schedule!r}")
    return schedule


# ---------------------------------------------------------------------------------------------
# The forward process
# ---------------------------------------------------------------------------------------------

def uniform(shape, generator: torch.Generator | None, device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uniforms in [0, 1) drawn on the generator's device, then moved (a CPU generator works for CUDA data).

    float32 for masks and times; the samplers ask for float64 (53 random bits, sampling.py)."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator (e.g. torch.Generator().manual_seed(0)) or None, "
                        f"got {type(generator).__name__}")
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


def check_tokens(x: torch.Tensor, name: str) -> torch.Tensor:
    """x as int64 token ids (B, L): other integer dtypes (int32, uint8, ...) are cast; anything else raises."""
    if not isinstance(x, torch.Tensor):
        raise MdlmError(f"{name} must be a tensor of integer token ids of shape (B, L), got {type(x).__name__}")
    if x.dim() != 2 or x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise MdlmError(f"{name} must be integer token ids of shape (B, L), got {tuple(x.shape)} {x.dtype}")
    return x.long()


def check_mask_id(mask_id) -> None:
    """mask_id must be a non-negative int (checked against the vocabulary where the model is known)."""
    if isinstance(mask_id, bool) or not isinstance(mask_id, numbers.Integral) or mask_id < 0:
        raise MdlmError(f"mask_id must be an int >= 0 (the tokenizer's mask_id), got {mask_id!r}")


def check_bool(name: str, value) -> None:
    """A flag must be True or False: a string like "no" would silently count as True."""
    if not isinstance(value, bool):
        raise MdlmError(f"{name} must be True or False, got {type(value).__name__} {value!r}")


def check_reverse_times(s, t, who: str) -> None:
    """A reverse step's times: 0 <= s <= t <= 1 and t > 0 (s the earlier time; NaN fails too)."""
    s, t = torch.broadcast_tensors(_as_float(s), _as_float(t))
    bad = ~((s >= 0) & (s <= t) & (t > 0) & (t <= 1))
    if bool(bad.any()):
        raise MdlmError(f"{who} needs 0 <= s <= t <= 1 and t > 0 (s the earlier time), got s={s[bad][0].item():g}, "
                        f"t={t[bad][0].item():g}")


def _per_row(t, B: int, device) -> torch.Tensor:
    """t as a float tensor of shape (B,): a float or a 0-d tensor is broadcast."""
    t = _as_float(t).to(device)
    if t.dim() == 0:
        t = t.expand(B)
    if t.shape != (B,):
        raise MdlmError(f"t must be a float or have shape (B,) = ({B},), got {tuple(t.shape)}")
    return t


def q_sample(x0: torch.Tensor, t, mask_id: int, schedule: Schedule | str | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw x_t ~ q(x_t | x_0): mask each position independently with probability 1 - alpha_t.

    x0 (B, L) ids, t (B,) or a float -> xt (B, L). With t = 0 nothing is masked; with t = 1 a
    fraction 1 - eps. The same generator state gives the same uniforms u, and a position is masked
    iff u < 1 - alpha_t, so samples at increasing t drawn from one seed are nested (masks only grow).
    """
    x0 = check_tokens(x0, "x0")
    check_mask_id(mask_id)
    t = _per_row(t, x0.shape[0], x0.device)                         # (B,)
    bad = ~((t >= 0) & (t <= 1))                                    # NaN is bad too
    if bool(bad.any()):
        raise MdlmError(f"t must lie in [0, 1] (0: nothing masked, 1: all but eps), got {t[bad][0].item()}")
    return _q_sample(x0, t, mask_id, get_schedule(schedule), generator)


def _q_sample(x0: torch.Tensor, t: torch.Tensor, mask_id: int, schedule: Schedule,
              generator: torch.Generator | None) -> torch.Tensor:
    """q_sample without the checks (the training loss calls it every step: no GPU sync for them)."""
    B, L = x0.shape
    alpha_t = schedule.alpha(t)                                     # (B,)
    u = uniform((B, L), generator, x0.device)                         # (B, L)
    is_masked = u < (1 - alpha_t)[:, None]                          # (B, L)
    return torch.where(is_masked, torch.full_like(x0, mask_id), x0)


def q_step(xs: torch.Tensor, s, t, mask_id: int, schedule: Schedule | str | None = None,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw x_t ~ q(x_t | x_s) for s <= t: each unmasked token is masked with prob 1 - alpha_t/alpha_s.

    Masked tokens stay masked (MASK is absorbing). Composing q_step after q_sample(x0, s) gives the
    same distribution as q_sample(x0, t) (tests/test_diffusion.py checks it).
    """
    xs = check_tokens(xs, "xs")
    schedule = get_schedule(schedule)
    B, L = xs.shape
    s, t = _per_row(s, B, xs.device), _per_row(t, B, xs.device)
    if not bool(((s >= 0) & (t <= 1)).all()):                       # NaN fails too
        raise MdlmError("q_step needs 0 <= s <= t <= 1 (times of the forward process)")
    if (s > t).any():
        raise MdlmError("q_step needs s <= t: the forward process only adds masks")
    p_mask = 1 - schedule.alpha(t) / schedule.alpha(s)             # (B,)
    newly = uniform((B, L), generator, xs.device) < p_mask[:, None]   # (B, L)
    return torch.where(newly, torch.full_like(xs, mask_id), xs)


def unmask_probability(s, t, schedule: Schedule | str | None = None) -> torch.Tensor:
    """q(x_s = x_0 | x_t = MASK, x_0) = (alpha_s - alpha_t) / (1 - alpha_t) for s < t.

    The chance that a token masked at time t was still clean at the earlier time s: the reverse
    step of a sampler reveals each masked position with this probability.
    """
    schedule = get_schedule(schedule)
    check_reverse_times(s, t, "unmask_probability")
    alpha_s, alpha_t = schedule.alpha(s), schedule.alpha(t)
    return (alpha_s - alpha_t) / (1 - alpha_t)


def sample_t(batch_size: int, *, stratified: bool = True, generator: torch.Generator | None = None,
             device=None, t_min: float = T_MIN) -> torch.Tensor:
    """Times for a batch, (B,) in [t_min, 1).

    stratified (systematic sampling): one uniform u, then t_i = (u + i/B) mod 1, so each of the B strata
    [i/B, (i+1)/B) holds exactly one time. This lowers the part of the estimate's variance that comes from
    which t were drawn; it does not remove it (each t is still random within its stratum), and it leaves
    the variance of the masks at a given t untouched (notebook 04). Not antithetic: that would pair u with 1 - u.
    """
    check_bool("stratified", stratified)
    if isinstance(t_min, bool) or not isinstance(t_min, numbers.Real) or not 0 <= t_min < 1:   # NaN fails too
        raise MdlmError(f"t_min must be a number in [0, 1) (the smallest time drawn, e.g. {T_MIN}), got {t_min!r}")
    if stratified:
        u = uniform((1,), generator, device)                        # (1,)
        offsets = torch.arange(batch_size, device=device) / batch_size
        u = (u + offsets) % 1.0                                     # (B,)
    else:
        u = uniform((batch_size,), generator, device)               # (B,)
    return t_min + (1 - t_min) * u


# ---------------------------------------------------------------------------------------------
# SUBS and the NELBO
# ---------------------------------------------------------------------------------------------

def forbid_mask(logits: torch.Tensor, mask_id: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """SUBS rule 1, the one place it is written: logits (..., V) with the MASK column set to NEG_INF.

    Computed in `dtype` (at least float32: log-softmax under autocast must not run in bf16). Every use
    of p_theta(x_0 | x_t) in the package (the loss, the samplers, the toy) goes through here.
    """
    V = logits.shape[-1]
    if isinstance(mask_id, bool) or not isinstance(mask_id, int) or not 0 <= mask_id < V:
        raise MdlmError(f"mask_id={mask_id!r} is not a valid index into the vocabulary of size {V}")
    index = torch.tensor([mask_id], device=logits.device)
    return logits.to(dtype).index_fill(-1, index, NEG_INF)          # (..., V): a cast, then "log 0" for MASK


def subs_log_probs(logits: torch.Tensor, xt: torch.Tensor, mask_id: int) -> torch.Tensor:
    """SUBS: raw logits (B, L, V) -> float32 log p_theta(x_0 | x_t) (B, L, V).

    1. zero masking probability: the MASK logit is set to -1e9 before the softmax (forbid_mask), so no
       probability ever lands on MASK;
    2. carry-over unmasking: where x_t is not MASK the output is the one-hot of x_t
       (log-prob 0 at x_t, -1e9 elsewhere): the model cannot change a token it can see.
    """
    xt = check_tokens(xt, "xt")
    if logits.dim() != 3 or logits.shape[:2] != xt.shape:
        raise MdlmError(f"logits must have shape (B, L, V) with (B, L) = {tuple(xt.shape)}, got {tuple(logits.shape)}")
    log_probs = forbid_mask(logits, mask_id).log_softmax(-1)       # (B, L, V)
    carry = torch.full_like(log_probs, NEG_INF).scatter(-1, xt[..., None], 0.0)    # one-hot of x_t, in log space
    is_masked = (xt == mask_id)[..., None]                          # (B, L, 1)
    return torch.where(is_masked, log_probs, carry)


def masked_nll(logits: torch.Tensor, xt: torch.Tensor, x0: torch.Tensor, mask_id: int) -> torch.Tensor:
    """-log p_theta(x0 | xt) under SUBS, per position (B, L) float32: the masked cross-entropy, 0 where visible.

    Equal to -subs_log_probs(logits, xt, mask_id).gather(-1, x0[..., None])[..., 0] (tested), without
    building the (B, L, V) carry-over tensor: at a visible position x_t = x_0, so SUBS gives log 1 = 0;
    at a masked one it is the cross-entropy of the logits with the MASK column at "log 0". forbid_mask
    casts the logits to float32 (.to, a no-op if they already are) and index_fill writes "log 0" into a
    float32 copy; then F.cross_entropy: the training loss's memory traffic.
    """
    logits = forbid_mask(logits, mask_id)                           # (B, L, V) float32, SUBS rule 1
    nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), x0.flatten(), reduction="none")   # (B L,)
    return nll.view(x0.shape) * (xt == mask_id)                     # (B, L) SUBS rule 2: 0 where visible


def prior_term(model: Model, x0: torch.Tensor, *, mask_id: int, schedule: Schedule | str | None = None,
               nll_fn: Callable | None = None) -> torch.Tensor:
    """The prior term the NELBO leaves out, nats per token position (a scalar):
        alpha_1 / (B L) sum_{b, i} -log p_theta(x_0^bi | all MASK)
    = KL(q(x_1 | x_0) || p(x_1)) for the prior that shows a token with prob alpha_1 = eps, drawn from the
    model's all-MASK prediction (module docstring). nelbo + prior_term is an upper bound on the NLL.
    """
    x0 = check_tokens(x0, "x0")
    check_mask_id(mask_id)
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if isinstance(vocab, int) and mask_id >= vocab:
        raise MdlmError(f"mask_id={mask_id} is outside the model's vocabulary of size {vocab}; pass the tokenizer's")
    schedule = get_schedule(schedule)
    B, L = x0.shape
    xt = torch.full_like(x0, mask_id)                               # (B, L) x_1 with nothing surviving
    t = torch.ones(B, device=x0.device)                             # (B,)
    alpha_1 = float(schedule.alpha(torch.tensor(1.0, dtype=torch.float64)))
    return alpha_1 * (nll_fn or masked_nll)(model(xt, t), xt, x0, mask_id).mean()


class NelboTerms(NamedTuple):
    """Per-sample pieces of the NELBO estimate (all (B,)); `loss.mean()` is what nelbo returns."""
    loss: torch.Tensor       # w(t) * nll_sum / L: this sample's NELBO per token position, nats
    t: torch.Tensor          # the time of each sample
    weight: torch.Tensor     # w(t) = -alpha'_t / (1 - alpha_t)  (or its T-step version)
    nll_sum: torch.Tensor    # sum over masked positions of -log p_theta(x_0^i | x_t), unweighted
    n_masked: torch.Tensor   # number of masked positions in x_t



def sample_k(batch_size: int, T: int, *, stratified: bool = True, generator: torch.Generator | None = None,
             device=None) -> torch.Tensor:
    """Steps k ~ U{1..T} for a batch, (B,) int64, stratified like sample_t (in float64, so that with B = T
    every k appears exactly once)."""
    u = uniform((1,) if stratified else (batch_size,), generator, device, torch.float64)
    if stratified:
        u = (u + torch.arange(batch_size, device=device, dtype=torch.float64) / batch_size) % 1.0   # (B,)
    return (u * T).floor().long().clamp(0, T - 1) + 1


def nelbo_terms(model: Model, x0: torch.Tensor, *, mask_id: int, schedule: Schedule | str | None = None,
                stratified: bool = True, t=None, generator: torch.Generator | None = None,
                T: int | None = None, check_x0: bool = True, nll_fn: Callable = None) -> NelboTerms:
    """The NELBO's per-sample terms for a batch x0 (B, L) of clean ids. See nelbo().

    T=None: continuous time. T an int: the T-step discrete-time ELBO (t is snapped to k/T).
    check_x0=False skips the test that x0 holds no MASK: on a GPU that test waits for the device on
    every call, so the training loop checks its whole data set once instead. nll_fn replaces
    masked_nll by an equal function (the training loop passes a torch.compile'd one).
    """
    x0 = check_tokens(x0, "x0")
    check_bool("stratified", stratified)
    B, L = x0.shape
    if B == 0 or L == 0:
        raise MdlmError(f"x0 is empty (shape {tuple(x0.shape)}); the NELBO needs at least one token")
    if check_x0 and (x0 == mask_id).any():
        raise MdlmError(f"x0 contains mask_id={mask_id}; the clean data must not contain the [MASK] token")
    if check_x0 and int(x0.min()) < 0:
        raise MdlmError(f"x0 contains a negative token id {int(x0.min())}; encode the text with the tokenizer")
    if T is not None and (isinstance(T, bool) or not isinstance(T, int) or not 1 <= T <= MAX_T):
        raise MdlmError(f"T must be a positive int (number of discrete steps) up to {MAX_T:.0e} or None, got {T!r}; "
                        "beyond that float32 times cannot tell k/T from (k-1)/T (T = None is the T -> inf limit)")
    if t is not None:
        t_check = _as_float(t)
        if not bool(((t_check > 0) & (t_check <= 1)).all()):
            raise MdlmError("t must lie in (0, 1]: at t = 0 nothing is masked and the weight w(0) is infinite")
    schedule = get_schedule(schedule)
    if T is None:
        t = _per_row(t, B, x0.device) if t is not None else \
            sample_t(B, stratified=stratified, generator=generator, device=x0.device)       # (B,)
        weight = schedule.weight(t)                                 # (B,)  = -alpha'_t / (1 - alpha_t)
    else:
        k = sample_k(B, T, stratified=stratified, generator=generator, device=x0.device) if t is None else \
            torch.ceil(_per_row(t, B, x0.device).double() * T).clamp(1, T)                 # (B,) k in 1..T
        t, s = (k / T).float(), ((k - 1) / T).float()               # (B,)  t = k/T on the grid, s one step before
        weight = T * unmask_probability(s, t, schedule)             # (B,)  = T (alpha_s - alpha_t) / (1 - alpha_t)
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if isinstance(vocab, int):                                      # before the model call can fail inside torch
        if not 0 <= mask_id < vocab:
            raise MdlmError(f"mask_id={mask_id} is outside the model's vocabulary of size {vocab}")
        if check_x0 and int(x0.max()) >= vocab:
            raise MdlmError(f"x0 contains token id {int(x0.max())} >= the model's vocabulary size {vocab}")
    xt = _q_sample(x0, t, mask_id, schedule, generator)             # (B, L); t was checked above
    logits = model(xt, t)                                           # (B, L, V)
    if check_x0 and int(x0.max()) >= logits.shape[-1]:
        raise MdlmError(f"x0 contains token id {int(x0.max())} >= the model's vocabulary size {logits.shape[-1]}")
    nll_sum = (nll_fn or masked_nll)(logits, xt, x0, mask_id).sum(-1)   # (B,) = -sum_i log p(x0^i | xt), SUBS
    loss = weight * nll_sum / L                                     # (B,)
    return NelboTerms(loss=loss, t=t, weight=weight, nll_sum=nll_sum, n_masked=(xt == mask_id).sum(-1))


def nelbo(model: Model, x0: torch.Tensor, *, mask_id: int, schedule: Schedule | str | None = None,
          stratified: bool = True, t=None, generator: torch.Generator | None = None,
          check_x0: bool = True, nll_fn: Callable = None) -> torch.Tensor:
    """Monte Carlo estimate of the continuous-time NELBO, in nats per token position (a scalar).

    One t per sequence (stratified over the batch unless stratified=False, or the given t), one
    masked x_t ~ q(x_t | x_0) per sequence, then
        nelbo = sum_b w(t_b) sum_{i: xt_bi = MASK} -log p_theta(x0_bi | xt_b)  /  (B * L).
    `model` is any callable model(xt, t) -> logits (B, L, V): an MDLM, or an exact toy denoiser.
    Differentiable: the training loss is nelbo(...).
    """
    return nelbo_terms(model, x0, mask_id=mask_id, schedule=schedule, stratified=stratified, t=t,
                       generator=generator, check_x0=check_x0, nll_fn=nll_fn).loss.mean()


def discrete_elbo(model: Model, x0: torch.Tensor, *, mask_id: int, T: int,
                  schedule: Schedule | str | None = None, stratified: bool = True,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Monte Carlo estimate of the T-step discrete-time NELBO, nats per token position (a scalar).

    A step k ~ U{1..T} per sequence (stratified over the batch), t = k/T, s = (k-1)/T, and
        L_T = T * E_k E_q [ (alpha_s - alpha_t) / (1 - alpha_t) * sum_{i masked} -log p_theta(x_0^i | x_t) ] / L.
    Each term is the KL between the true reverse step q(x_s | x_t, x_0) and the model's. The bound
    is looser than the continuous one and decreases to it as T grows (notebook 04).
    """
    return nelbo_terms(model, x0, mask_id=mask_id, schedule=schedule, stratified=stratified,
                       generator=generator, T=T).loss.mean()
