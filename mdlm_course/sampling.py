"""Sampling: run the masking process backwards, from a line of [MASK] to text.

The reverse step (Sahoo et al. 2024). For s < t and a position that is MASK in x_t,
    q(x_s | x_t, x_0) = (1 - alpha_s) / (1 - alpha_t) * onehot(MASK)
                      + (alpha_s - alpha_t) / (1 - alpha_t) * onehot(x_0)
and a position that is already a token stays that token (MASK is absorbing, so the reverse
process never changes a revealed token: "carry-over"). The sampler does not know x_0; it puts the
denoiser's prediction in its place (the SUBS parameterisation, [MASK] excluded):
    p_theta(x_s^i | x_t) = (1 - alpha_s) / (1 - alpha_t) * onehot(MASK)
                         + (alpha_s - alpha_t) / (1 - alpha_t) * p_theta(x_0^i | x_t)
We draw it in two stages, which is the same distribution:
    1. a coin per masked position: it is revealed with probability
           pi(s, t) = (alpha_s - alpha_t) / (1 - alpha_t)       (diffusion.unmask_probability)
    2. only for the revealed positions, a token x ~ p_theta(x_0^i | x_t), after temperature / top-p.
Stage 1 does not need the network, so a step in which no position is revealed costs no network call
(NFE): with T >> L steps most steps are such. This is MDLM's "caching" (x_t did not change, so a
time-agnostic denoiser would return what it returned last time), done lazily: the network runs only
on the samples with a revealed position, always with the current (x_t, t), so it stays exact for a
time-conditioned model (`model.time_conditioned`) too: nothing is ever reused across times (the
ancestral step from t to s asks p_theta(x_0 | x_t, t), which is what the discrete reverse step uses).
At most
one call per revealed position, whatever T. `cache=False` calls it at every step instead (the
baseline for the benchmark; same seed, same samples).

Every categorical draw is an inverse-CDF draw in float64 (float64 probabilities, float64 cumsum,
float64 uniforms). A float32 Gumbel / exponential race over [MASK] + V tokens cannot pick a token
whose share of the step is below ~3.6e-9 (uniforms in float32 live on a 2^-24 grid), which with many
steps truncates the tail of p_theta and lowers the entropy of the samples (Zheng et al. 2024,
"Masked diffusion models are secretly time-agnostic masked models and exploit inaccurate
categorical sampling"); tests/test_sampling.py measures it.

Methods (`method=`):
    ancestral       the exact reverse step above on the grid t_k = k / steps, k = steps..1; the last
                    step (s = 0, alpha_0 = 1) reveals every remaining position. Tokens revealed in
                    the same step are drawn independently, so few steps cost quality; as
                    steps -> infinity one token is revealed at a time and the sampler draws from
                    the model's any-order chain rule exactly.
    first_hitting   exact and step-free (Zheng et al. 2024): with n masked positions at time t each
                    is revealed at an independent time with P(still masked at s) = (1-alpha_s)/(1-alpha_t),
                    so the next event time s solves (1 - alpha_s) / (1 - alpha_t) = u^(1/n), u ~ U(0, 1);
                    reveal one uniformly chosen masked position with a token from p_theta(. | x_t, s),
                    the model asked at the reveal's time s (x_t has not changed in (s, t]), and repeat.
                    For a model that ignores t the time does not matter; for one that reads it, it does.
                    Exactly one network call per generated token; `steps` is ignored.
    confidence      MaskGIT / LLaDA low-confidence remasking. NOT an exact sampler of the model:
                    each step draws a token for every masked position and keeps the k most confident
                    (highest p_theta of the drawn token), the rest stay masked. k follows the
                    schedule: after the step to time s, floor(n_0 (1 - alpha_s) / (1 - alpha_1))
                    positions are still masked.

Semi-autoregressive blocks (`block_length=`): the sequence is cut into blocks of that many positions;
block b is denoised completely (a full run of `method` from t = 1 to 0, with `steps` steps per block)
before block b + 1 starts. Later blocks are kept MASKED and stay in the model's input (not cut off).
This is an approximation, LLaDA's practice, not a sampler of the model's distribution. MDLM trains on
independent per-position masks, under which a long run of masks beside a long clean stretch is atypical:
at mask rate 0.5 the longest run of masks in 256 positions is about 7 (its mean is 7.3), and a run of 64
or more has probability about 5e-18 (tests/test_mask_runs.py). (That any one pattern of 64 masks has
probability 2^-64 proves nothing: so has every pattern.) Whether the model generalises to such inputs is
an empirical question; block diffusion (BD3-LM, Arriola et al. 2025) trains on clean blocks followed by
a noised block so that it does not have to. The MDLM paper's
own semi-autoregressive sampling is different: it generates a sequence longer than the training window
by sliding a window over it, keeping the last part of the previous window as a clean prefix and
sampling the rest of the window with the ordinary sampler. The time t given to the model is the
current block's.

Prompting and infilling (`prompt=`): a 1-D LongTensor. Shorter than seq_len: a prefix. Exactly
seq_len long: a template, in which positions equal to mask_id are generated and every other position
is kept (suffix or middle infilling). Prompt tokens never change.
Symbols: B samples (num_samples), L positions (seq_len), V vocabulary size, T sampling steps.
"""
from __future__ import annotations

import math
import numbers
from typing import Iterator, NamedTuple

import torch
import torch.nn as nn

from .diffusion import Model, Schedule, check_bool, forbid_mask, get_schedule, uniform, unmask_probability
from .errors import MdlmError

METHODS = ("ancestral", "first_hitting", "confidence")
MIN_TEMPERATURE = 1e-3   # below this, logits / temperature overflows float64 for logits of a few hundred


class Step(NamedTuple):
    """One step of the sampler, as `denoise` yields it. Unpacks like a tuple: for step, t, xt, nfe in ..."""
    step: int                # 1, 2, ... counted across blocks
    t: torch.Tensor          # (num_samples,) float64: the time of xt after the step
    xt: torch.Tensor         # (num_samples, seq_len) ids, a copy
    nfe: int                 # network calls so far


# ---------------------------------------------------------------------------------------------
# Float64 categorical draws
# ---------------------------------------------------------------------------------------------

def token_probs(logits: torch.Tensor, mask_id: int, temperature: float = 1.0,
                top_p: float | None = None) -> torch.Tensor:
    """Raw logits (N, V) -> float64 p_theta(x_0 | x_t) (N, V): [MASK] removed, temperature, top-p.

    p = softmax(logits / temperature) over the tokens other than mask_id. top-p keeps the smallest set
    of most probable tokens whose mass reaches top_p and renormalises:
    p = [0.5, 0.3, 0.2], top_p = 0.6 -> [0.625, 0.375, 0].
    """
    check_temperature_top_p(temperature, top_p)
    logits = forbid_mask(logits, mask_id, torch.float64)            # (N, V) float64 from here on
    probs = torch.softmax(logits / temperature, dim=-1)             # (N, V)
    if top_p is not None and top_p < 1:
        sorted_p, order = probs.sort(dim=-1, descending=True)       # (N, V)
        mass_before = sorted_p.cumsum(-1) - sorted_p                # mass of the more probable tokens
        sorted_p = sorted_p.masked_fill(mass_before >= top_p, 0.0)  # the first token is always kept
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def categorical(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row of probs (N, V) by inverse CDF, all in float64 -> (N,) token ids.

    x = the first index whose cumulative probability exceeds u * total, u ~ U[0, 1) in float64, so a
    token of probability p is drawn with probability p up to ~1e-16, however small p is.
    [[0.0, 1.0, 0.0]] -> tensor([1])
    """
    if not isinstance(probs, torch.Tensor) or probs.dim() != 2:
        shape = tuple(probs.shape) if isinstance(probs, torch.Tensor) else type(probs).__name__
        raise MdlmError(f"categorical needs probabilities of shape (N, V), one row per draw, got {shape}; "
                        "for a single distribution pass probs[None]")
    probs = probs.double()
    cdf = probs.cumsum(-1)                                          # (N, V) float64
    total = cdf[:, -1]                                              # (N,)
    if not bool((torch.isfinite(total) & (total > 0)).all()) or bool((probs < 0).any()):
        raise MdlmError("the model's probabilities are NaN, inf, negative or all zero (NaN weights, or a "
                         "temperature too close to 0); check the checkpoint and the temperature")
    u = uniform((probs.shape[0], 1), generator, probs.device, torch.float64) * cdf[:, -1:]   # (N, 1) in [0, total)
    x = torch.searchsorted(cdf, u, right=True)[:, 0]                # (N,)
    # u * total can round up to the total: never return a trailing zero-probability token.
    last = probs.shape[-1] - 1 - (probs.flip(-1) > 0).to(torch.int8).argmax(-1)        # (N,)
    return torch.minimum(x, last)


# ---------------------------------------------------------------------------------------------
# The network: called only where its output is used, counted
# ---------------------------------------------------------------------------------------------

class _Network:
    """Wraps model(xt, t): moves data to the model's device, runs it without gradients, checks the
    vocabulary on the first call, and counts calls (NFE: network function evaluations)."""

    def __init__(self, model: Model, mask_id: int, template: torch.Tensor, device: torch.device):
        self.model, self.mask_id, self.template, self.device = model, mask_id, template, device
        self.nfe = 0

    def __call__(self, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """xt (R, L), t (R,) float64 -> raw logits (R, L, V) on xt's device."""
        with torch.no_grad():
            logits = self.model(xt.to(self.device), t.to(device=self.device, dtype=torch.float32))
        if self.nfe == 0:
            self._check(logits, xt)
        self.nfe += 1
        return logits.to(xt.device)

    def _check(self, logits: torch.Tensor, xt: torch.Tensor) -> None:
        if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or logits.shape[:2] != xt.shape:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise MdlmError(f"model(xt, t) must return logits of shape (B, L, V) = ({xt.shape[0]}, "
                             f"{xt.shape[1]}, V), got {shape}")
        _check_vocab(logits.shape[-1], self.mask_id, self.template)


def _check_vocab(vocab_size: int, mask_id: int, template: torch.Tensor) -> None:
    if not 0 <= mask_id < vocab_size:
        raise MdlmError(f"mask_id={mask_id} is outside the model's vocabulary of size {vocab_size}; "
                         f"pass the tokenizer's mask_id")
    if template.numel() and int(template.max()) >= vocab_size:
        raise MdlmError(f"prompt contains token id {int(template.max())} >= the model's vocab_size "
                         f"{vocab_size}; encode it with the model's tokenizer")


def _model_device(model: Model) -> torch.device:
    """The device of an nn.Module's first parameter or buffer; CPU for a plain callable."""
    if isinstance(model, nn.Module):
        for tensor in (*model.parameters(), *model.buffers()):
            return tensor.device
    return torch.device("cpu")


# ---------------------------------------------------------------------------------------------
# The three samplers, each for one block of positions (`todo`), each a generator of steps
# ---------------------------------------------------------------------------------------------

def _ancestral(net, xt, todo, *, steps, schedule, mask_id, draw, generator, cache):
    """The exact reverse step from t = k/steps to s = (k-1)/steps, k = steps..1. Yields (t, xt)."""
    B, L = xt.shape
    grid = torch.arange(steps + 1, dtype=torch.float64) / steps    # t_0 = 0, ..., t_steps = 1
    pis = unmask_probability(grid[:-1], grid[1:], schedule).tolist()   # pi for the step t_k -> t_{k-1}
    pis[0] = 1.0                                                    # the last step reveals everything
    masked = (xt == mask_id) & todo                                 # (B, L), kept up to date below
    n_left = int(masked.sum())
    for k in range(steps, 0, -1):
        if n_left == 0:
            return
        # stage 1: which masked positions are revealed; pi = (alpha_s - alpha_t) / (1 - alpha_t)
        reveal = masked & (uniform((B, L), generator, xt.device, torch.float64) < pis[k - 1])         # (B, L)
        n_reveal = int(reveal.sum())
        if n_reveal or not cache:
            t = torch.full((B,), k / steps, dtype=torch.float64, device=xt.device)     # x_t is at time t
        if cache:
            if n_reveal:                                            # only then is p_theta needed ...
                rows = reveal.any(1)                                # (B,) ... and only for these samples
                logits = net(xt[rows], t[rows])                     # (R, L, V)
                xt[reveal] = draw(logits[reveal[rows]])             # stage 2, float64
        else:
            logits = net(xt, t)                                     # (B, L, V): every step, all samples
            if n_reveal:
                xt[reveal] = draw(logits[reveal])
        if n_reveal:
            masked &= ~reveal
            n_left -= n_reveal
        yield torch.full((B,), (k - 1) / steps, dtype=torch.float64, device=xt.device), xt


def _first_hitting(net, xt, todo, *, schedule, mask_id, draw, generator):
    """Zheng et al.'s first-hitting sampler: one revealed position per network call. Yields (t, xt)."""
    B, L = xt.shape
    t = torch.ones(B, dtype=torch.float64, device=xt.device)        # (B,) time of the current state
    n = int(((xt[0] == mask_id) & todo).sum())                      # masked positions (same in every row)
    rows = torch.arange(B, device=xt.device)
    while n > 0:
        masked = (xt == mask_id) & todo                             # (B, L), n per row
        # the next event: (1 - alpha_s) / (1 - alpha_t) = u^(1/n)
        u = uniform((B,), generator, xt.device, torch.float64)
        alpha_t = schedule.alpha(t)
        s = schedule.alpha_inverse(1 - (1 - alpha_t) * u ** (1.0 / n))                 # (B,)
        # the token is revealed at time s, so it comes from p_theta(x_0 | x_t, s): xt is still the state
        # just before s (nothing changed in (s, t]). A time-agnostic model does not care; one that
        # reads t does, and asking it at the previous event's time t would be wrong.
        logits = net(xt, s)                                         # (B, L, V)
        # which position: uniform among the n masked ones (the rank-th, rank = floor(v n))
        rank = (uniform((B,), generator, xt.device, torch.float64) * n).long().clamp_max(n - 1)       # (B,)
        is_pick = masked & (masked.cumsum(1) - 1 == rank[:, None])  # (B, L), one True per row
        pos = is_pick.to(torch.int8).argmax(1)                      # (B,)
        xt[rows, pos] = draw(logits[rows, pos])                     # float64 draw from p_theta
        t, n = s, n - 1
        yield t, xt


def _confidence(net, xt, todo, *, steps, schedule, mask_id, draw_with_probs, cache):
    """Low-confidence remasking (not exact): commit the most confident draws. Yields (t, xt)."""
    B, L = xt.shape
    n0 = int(((xt[0] == mask_id) & todo).sum())
    alpha_1 = float(schedule.alpha(torch.tensor(1.0, dtype=torch.float64)))
    for k in range(steps, 0, -1):
        t, s = k / steps, (k - 1) / steps
        masked = (xt == mask_id) & todo                             # (B, L)
        n_now = int(masked[0].sum())
        if n_now == 0:
            return
        alpha_s = float(schedule.alpha(torch.tensor(s, dtype=torch.float64)))
        n_keep = 0 if k == 1 else math.floor(n0 * (1 - alpha_s) / (1 - alpha_1) + 1e-9)
        n_commit = n_now - min(n_keep, n_now)
        if n_commit > 0 or not cache:
            logits = net(xt, torch.full((B,), t, dtype=torch.float64, device=xt.device))   # (B, L, V)
        if n_commit > 0:
            x_hat, p_hat = draw_with_probs(logits[masked])          # (B*n_now,) each
            confidence = torch.full((B, L), -1.0, dtype=torch.float64, device=xt.device)
            confidence[masked] = p_hat                              # unmasked positions: -1, never chosen
            proposal = xt.clone()
            proposal[masked] = x_hat
            keep = confidence.topk(n_commit, dim=1).indices         # (B, n_commit)
            xt.scatter_(1, keep, proposal.gather(1, keep))
        yield torch.full((B,), s, dtype=torch.float64, device=xt.device), xt


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------

def _check_int(name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise MdlmError(f"{name} must be an int >= {minimum}, got {value!r}")


def check_temperature_top_p(temperature, top_p) -> None:
    """The draw's settings (denoise, token_probs, ar_sample): temperature >= MIN_TEMPERATURE, finite; top_p in
    (0, 1] or None."""
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or \
            not MIN_TEMPERATURE <= temperature < math.inf:
        raise MdlmError(f"temperature must be a finite number >= {MIN_TEMPERATURE} (use e.g. 0.1 for "
                         f"near-greedy), got {temperature!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, numbers.Real) or not 0 < top_p <= 1):
        raise MdlmError(f"top_p must be in (0, 1] or None, got {top_p!r}")


MAX_STEPS = 10**7           # the API's cap on steps (the commands cap at MAX_STEPS_PER_TOKEN x seq_len)
MAX_STEPS_PER_TOKEN = 100   # beyond ~seq_len steps the sampler reveals about one token per step: more change nothing


def check_steps(steps, seq_len: int, method: str = "ancestral", option: str = "--steps") -> None:
    """The commands' door (sample, visualize, eval): steps an int in [1, MAX_STEPS_PER_TOKEN x seq_len], so that a
    typo of 1e9 steps is one line, not a time grid of gigabytes (first_hitting ignores steps: any int >= 1)."""
    if steps is None:
        return
    _check_int(option, steps)
    if method != "first_hitting" and steps > MAX_STEPS_PER_TOKEN * seq_len:
        raise MdlmError(f"{option} {steps} is more than {MAX_STEPS_PER_TOKEN} x seq_len = "
                        f"{MAX_STEPS_PER_TOKEN * seq_len}: past about seq_len={seq_len} steps the sampler reveals "
                        f"one token at a time and more steps change nothing; use e.g. {option} {seq_len}")


def _template(prompt, seq_len: int, mask_id: int) -> torch.Tensor:
    """The starting sequence (L,): the prompt's tokens where given, mask_id everywhere else."""
    x = torch.full((seq_len,), mask_id, dtype=torch.long)
    if prompt is None:
        return x
    if isinstance(prompt, str):
        raise MdlmError(f"prompt must be token ids, got the text {prompt[:40]!r}; encode it first: "
                        "prompt=torch.tensor(tokenizer.encode(text))")
    prompt = torch.as_tensor(prompt)
    if prompt.dim() != 1 or prompt.is_floating_point() or prompt.dtype == torch.bool:
        raise MdlmError(f"prompt must be a 1-D tensor of token ids shared by all samples, "
                         f"got shape {tuple(prompt.shape)} dtype {prompt.dtype}")
    if len(prompt) > seq_len:
        raise MdlmError(f"prompt has {len(prompt)} tokens, longer than seq_len={seq_len}; "
                         f"raise seq_len or shorten the prompt")
    if len(prompt) and int(prompt.min()) < 0:
        raise MdlmError(f"prompt contains a negative token id {int(prompt.min())}")
    x[: len(prompt)] = prompt.cpu().long()
    return x


def denoise(model: Model, *, mask_id: int, num_samples: int, seq_len: int, steps: int | None,
            method: str = "ancestral", temperature: float = 1.0, top_p: float | None = None,
            prompt: torch.Tensor | None = None, generator: torch.Generator | None = None,
            schedule: Schedule | str | None = None, block_length: int | None = None,
            cache: bool = True) -> Iterator[Step]:
    """The sampler, one step at a time: yields Step(step, t, xt, nfe) after every step.

    step: 1, 2, ... (counted across blocks); t: (num_samples,) float64, the time of xt after the step
    (0 at the end of a block; per sample for first_hitting); xt: (num_samples, seq_len) ids, a copy;
    nfe: network calls so far. The starting state (all mask_id except the prompt) is not yielded.
    See the module docstring for the methods; `sample` runs this to the end. Arguments are checked
    here, eagerly; mask_id and prompt ids against the model's vocabulary at the first network call.
    """
    _check_int("num_samples", num_samples)
    _check_int("seq_len", seq_len)
    _check_int("mask_id", mask_id, minimum=0)
    if method not in METHODS:
        raise MdlmError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if method != "first_hitting" or steps is not None:
        _check_int("steps", steps)                  # first_hitting ignores steps (None allowed)
        if method != "first_hitting" and steps > MAX_STEPS:
            raise MdlmError(f"steps={steps} is more than {MAX_STEPS:.0e}: the time grid alone would take gigabytes "
                            "and the loop hours, and past about seq_len steps more steps change nothing")
    check_temperature_top_p(temperature, top_p)
    if block_length is not None:
        _check_int("block_length", block_length)
    check_bool("cache", cache)
    template = _template(prompt, seq_len, mask_id)                  # (L,)
    config = getattr(model, "config", None)
    if _model_device(model).type == "meta":
        raise MdlmError("the model is on the meta device (shapes only, no weights); load weights into it first, "
                        "e.g. with load_pretrained")
    if getattr(config, "causal", False) is True:
        raise MdlmError("the model is causal (an AR twin): it writes left to right, not by unmasking; sample it "
                        "with mdlm_course.ar.ar_sample (the CLI's sample and visualize do so for an AR checkpoint)")
    vocab_size = getattr(config, "vocab_size", getattr(model, "vocab_size", None))
    if isinstance(vocab_size, int):
        _check_vocab(vocab_size, mask_id, template)                 # before the first call can crash
    return _run(model, template=template, mask_id=mask_id, num_samples=num_samples, steps=steps,
                method=method, temperature=temperature, top_p=top_p, generator=generator,
                schedule=get_schedule(schedule), block_length=block_length or seq_len, cache=cache)


def _run(model, *, template, mask_id, num_samples, steps, method, temperature, top_p, generator,
         schedule, block_length, cache):
    device = _model_device(model)
    work = torch.device("cpu") if device.type == "mps" else device  # MPS has no float64: book-keep on CPU
    xt = template.to(work).repeat(num_samples, 1)                   # (B, L)
    net = _Network(model, mask_id, template, device)

    def draw(logits):                                               # (N, V) raw logits -> (N,) tokens
        return categorical(token_probs(logits, mask_id, temperature, top_p), generator)

    def draw_with_probs(logits):                                    # -> tokens (N,), their p_theta (N,)
        probs = token_probs(logits, mask_id, temperature, top_p)
        x = categorical(probs, generator)
        return x, probs.gather(-1, x[:, None])[:, 0]

    was_training = model.training if isinstance(model, nn.Module) else None
    if was_training is not None:
        model.eval()
    try:
        step = 0
        positions = torch.arange(template.numel(), device=work)
        for start in range(0, template.numel(), block_length):
            todo = (positions >= start) & (positions < start + block_length)           # (L,) this block
            if method == "ancestral":
                block = _ancestral(net, xt, todo, steps=steps, schedule=schedule, mask_id=mask_id, draw=draw,
                                   generator=generator, cache=cache)
            elif method == "first_hitting":
                block = _first_hitting(net, xt, todo, schedule=schedule, mask_id=mask_id, draw=draw,
                                       generator=generator)
            else:
                block = _confidence(net, xt, todo, steps=steps, schedule=schedule, mask_id=mask_id,
                                    draw_with_probs=draw_with_probs, cache=cache)
            for t, xt in block:
                step += 1
                yield Step(step, t, xt.clone(), net.nfe)
    finally:
        if was_training:
            model.train()


def sample(model: Model, *, mask_id: int, num_samples: int, seq_len: int, steps: int | None,
           method: str = "ancestral", temperature: float = 1.0, top_p: float | None = None,
           prompt: torch.Tensor | None = None, generator: torch.Generator | None = None,
           schedule: Schedule | str | None = None, block_length: int | None = None,
           cache: bool = True) -> torch.Tensor:
    """Generate num_samples sequences of seq_len tokens -> LongTensor (num_samples, seq_len), no mask_id.

    model: any callable model(xt, t) -> logits (B, L, V): an MDLM (run in eval mode, no gradients, on
    its device) or an exact toy denoiser. method: "ancestral" (default, exact reverse step, `steps`
    steps), "first_hitting" (exact, one call per token, steps ignored) or "confidence" (MaskGIT /
    LLaDA remasking, not exact). temperature > 0 and top_p reshape p_theta(x_0 | x_t) before the
    reverse step. prompt: a prefix, or a full-length template with mask_id where text is wanted.
    block_length: semi-autoregressive blocks, left to right. cache=False: call the network at every
    step (slower, same samples). Same generator seed -> same samples.

        toy = ToyDistribution()       # mdlm_course.toy: 81 sequences of 4 tokens, exact denoiser
        sample(toy.oracle, mask_id=toy.mask_id, num_samples=2, seq_len=4, steps=100,
               generator=torch.Generator().manual_seed(0))      -> tensor([[2, 0, 2, 2], [1, 2, 2, 2]])
    """
    steps_iter = denoise(model, mask_id=mask_id, num_samples=num_samples, seq_len=seq_len, steps=steps,
                         method=method, temperature=temperature, top_p=top_p, prompt=prompt,
                         generator=generator, schedule=schedule, block_length=block_length, cache=cache)
    xt = None
    for _, _, xt, _ in steps_iter:
        pass
    if xt is None:                                                  # the prompt left nothing to generate
        xt = _template(prompt, seq_len, mask_id).to(_model_device(model)).repeat(num_samples, 1)
    return xt
