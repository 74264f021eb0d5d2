"""The autoregressive twin: the same backbone with a causal mask, trained on next-token cross-entropy.

MDLM is compared with the model everyone knows, a GPT of the same size trained on the same data for
the same number of tokens (chapter 8). With `ModelConfig(causal=True)` position i sees only x^0..x^i,
and its logits predict the next token:
    NLL(x) = - sum_{i=1}^{L-1} log p_theta(x^i | x^0 .. x^{i-1})                         next_token_nll
    loss   = NLL / (L - 1)   averaged over the batch: nats per predicted token             ar_loss
The first token of a window has no context, so it is not scored; bits per byte count the bytes of
the L - 1 scored tokens only (evaluate.py). Unlike the NELBO this is the exact log-likelihood of
the window given its first token, not a bound.

Sampling (ar_sample) is the chain rule read forwards: x^i ~ p_theta(. | x^{<i}), one network call per
token, with the same float64 categorical draw as the diffusion sampler. A twin trained from the MDLM
tokenizer never emits [MASK]: its logit is removed before the draw. ar_steps yields the same draws one
token at a time (what `visualize` shows). ar_sample refuses a bidirectional model, as sampling.sample
refuses a causal one: each model is sampled the way it was trained.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .diffusion import Model, check_tokens
from .errors import MdlmError
from .sampling import Step, _check_int, categorical, check_temperature_top_p, token_probs


def next_token_nll(logits: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """-log p(x^i | x^{<i}) for i = 1..L-1: logits (B, L, V) of a causal model on x0 (B, L) -> (B, L-1) float32."""
    if logits.dim() != 3 or x0.dim() != 2 or logits.shape[:2] != x0.shape:     # shapes only: no device sync
        raise MdlmError(f"next_token_nll: logits must be (B, L, V), the model's output on x0 (B, L); got logits "
                        f"{tuple(logits.shape)} and x0 {tuple(x0.shape)}")
    pred = logits[:, :-1].float()                                   # (B, L-1, V) position i predicts i+1
    target = x0[:, 1:]                                              # (B, L-1)
    nll = F.cross_entropy(pred.flatten(0, 1), target.flatten(), reduction="none")   # (B (L-1),)
    return nll.view(target.shape)


def ar_loss(model: Model, x0: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL of a causal model on the windows x0 (B, L), nats per predicted token (a scalar)."""
    x0 = check_tokens(x0, "x0")
    if x0.shape[1] < 2:
        raise MdlmError(f"the AR objective needs windows of at least 2 tokens, got L={x0.shape[1]}")
    return next_token_nll(model(x0, None), x0).mean()


@torch.no_grad()
def ar_sample(model: Model, *, num_samples: int, seq_len: int, prompt: torch.Tensor | None = None,
              temperature: float = 1.0, top_p: float | None = None, mask_id: int,
              generator: torch.Generator | None = None, first_token: int | None = None) -> torch.Tensor:
    """Generate (num_samples, seq_len) ids left to right from a causal model.

    An AR window is scored from its first token on, so generation starts from given tokens: `prompt`
    (P,) shared by all samples or (num_samples, P), or a single `first_token`. mask_id is never drawn. No KV cache:
    each step re-reads the prefix, which is fine at the course's sizes (L <= 512).
    """
    start = _check_ar_args(model, num_samples=num_samples, seq_len=seq_len, prompt=prompt, temperature=temperature,
                           top_p=top_p, mask_id=mask_id, first_token=first_token)   # (B, P)
    device = next(model.parameters()).device if isinstance(model, torch.nn.Module) else torch.device("cpu")
    was_training = getattr(model, "training", False)
    if isinstance(model, torch.nn.Module):
        model.eval()
    x = start.to(device)                                            # (B, P)
    try:
        while x.shape[1] < seq_len:
            logits = model(x, None)[:, -1]                          # (B, V) the next token's logits
            probs = token_probs(logits, mask_id, temperature, top_p)          # (B, V) float64
            x = torch.cat([x, categorical(probs, generator)[:, None].to(device)], dim=1)   # (B, P+1)
    finally:
        if was_training:
            model.train()
    return x


def _check_ar_args(model, *, num_samples, seq_len, prompt, temperature, top_p, mask_id, first_token) -> torch.Tensor:
    """ar_sample's door: every argument, before the first network call -> the start ids (num_samples, P)."""
    config = getattr(model, "config", None)
    if getattr(config, "causal", None) is False:
        raise MdlmError("ar_sample needs a causal model (an AR twin); this one is bidirectional (an MDLM): "
                        "sample it with mdlm_course.sampling.sample")
    _check_int("num_samples", num_samples)
    _check_int("seq_len", seq_len)
    _check_int("mask_id", mask_id, minimum=0)
    check_temperature_top_p(temperature, top_p)
    max_len, vocab = getattr(config, "seq_len", None), getattr(config, "vocab_size", None)
    if isinstance(max_len, int) and seq_len > max_len:
        raise MdlmError(f"seq_len={seq_len} is longer than the model's {max_len} positions; use seq_len <= {max_len}")
    if prompt is None and first_token is None:
        raise MdlmError("ar_sample needs a prompt or a first_token: an AR window starts from a given token")
    if prompt is None:
        _check_int("first_token", first_token, minimum=0)
    start = torch.as_tensor(prompt if prompt is not None else [first_token])                    # (P,) or (B, P)
    if start.is_floating_point() or start.is_complex() or start.dtype == torch.bool:
        raise MdlmError(f"the prompt must be integer token ids, got dtype {start.dtype}; encode text with the "
                        "model's tokenizer")
    start = start.long()
    if start.dim() == 1:
        start = start.repeat(num_samples, 1)                        # (B, P): the same start for every sample
    if start.dim() != 2 or len(start) != num_samples or not 1 <= start.shape[1] <= seq_len:
        raise MdlmError(f"prompt must hold 1..{seq_len} ids, shared (P,) or one row per sample "
                         f"({num_samples}, P); got shape {tuple(start.shape)}")
    if isinstance(vocab, int) and not 0 <= mask_id < vocab:
        raise MdlmError(f"mask_id={mask_id} is outside the model's vocabulary of size {vocab}; pass the tokenizer's")
    if int(start.min()) < 0 or (isinstance(vocab, int) and int(start.max()) >= vocab) or bool((start == mask_id).any()):
        raise MdlmError(f"the start ids (prompt or first_token) must be tokens in [0, {vocab}) other than "
                        f"mask_id={mask_id}, got {start.unique().tolist()[:8]}; encode text with the model's tokenizer")
    return start


@torch.no_grad()
def ar_steps(model: Model, *, seq_len: int, prompt: torch.Tensor, mask_id: int, temperature: float = 1.0,
             top_p: float | None = None, generator: torch.Generator | None = None):
    """ar_sample for one sample, one token at a time (what the window shows): yields Step(step, t, xt, nfe) after
    each token, xt (1, seq_len) = the tokens so far, then mask_id; t (1,) = the fraction still to write.
    The same draws as ar_sample(num_samples=1) with the same generator."""
    x = _check_ar_args(model, num_samples=1, seq_len=seq_len, prompt=prompt, temperature=temperature, top_p=top_p,
                       mask_id=mask_id, first_token=None)           # (1, P)
    device = next(model.parameters()).device if isinstance(model, torch.nn.Module) else torch.device("cpu")
    x, step = x.to(device), 0
    while x.shape[1] < seq_len:
        logits = model(x, None)[:, -1]                              # (1, V) the next token's logits
        probs = token_probs(logits, mask_id, temperature, top_p)   # (1, V) float64
        x = torch.cat([x, categorical(probs, generator)[:, None].to(device)], dim=1)   # (1, P+1)
        step += 1
        xt = torch.full((1, seq_len), mask_id, dtype=torch.long)
        xt[:, :x.shape[1]] = x.cpu()
        t = torch.full((1,), (seq_len - x.shape[1]) / seq_len, dtype=torch.float64)
        yield Step(step, t, xt, step)
