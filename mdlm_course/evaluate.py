"""Evaluation: the likelihood bound on held-out text, in nats per token and bits per byte.

Validation is deterministic: n fixed windows of the validation split (data.fixed_windows), each scored
at k fixed times, row r (of the n k rows) at t_r = (r + 0.5) / (n k), with one fixed mask draw per
row, so two evaluations of the same weights give the same number:
    val NELBO (nats/token)   = sum_r w(t_r) sum_{masked j} -log p(x_0^rj | x_t^r)  /  (n k L)
    bits per byte            = (the same sum, in nats) / ln 2 / (UTF-8 bytes that the n k rows decode to)
Most of its variance comes from the rows at small t (few masked tokens, weight 1/t); it shrinks like
log(n k) / (n k). Log-linear schedule (w = 1/t, mask rate a_r = (1 - eps) t_r), each masked token costing
about c nats whatever else is masked (the noise is the binomial count of masked tokens), windows fixed:
    Var(row r)          = c^2 L a_r (1 - a_r) / (t_r L)^2  ~  c^2 (1 - a_r) / (t_r L)
    Var(mean of N rows) ~ c^2 / (N^2 L) sum_r (1 - t_r) / t_r = c^2 (ln N + gamma + 2 ln 2 - 1 + O(1/N^2)) / (N L)
with N = n k, since sum_{r<N} 1 / (r + 1/2) = ln N + gamma + 2 ln 2 + O(1/N^2) (tests/test_estimator_variance.py).
The spread between windows adds a term of order 1/n. Hence k > 1 times per window: more rows, no new windows.

The AR twin (objective "ar", ar.py) is scored on the same windows by its exact next-token NLL:
    val NLL (nats/token)     = sum_w sum_{i=1}^{L-1} -log p(x^wi | x^{w,<i})  /  (n (L - 1))
    bits per byte            = (the same sum) / ln 2 / (UTF-8 bytes of the n (L - 1) scored tokens)
Bits per byte do not depend on the tokenizer, so they compare any two models of the same text.

The full evaluation (`python -m mdlm_course eval`, evaluate_checkpoint) repeats the MDLM's estimate over
P passes, pass p at the shifted grid t_r = (r + (p + 0.5) / P) / (n k) with its own masks, and reports
the mean, exp(NELBO), and the prior term that the NELBO leaves out (diffusion.prior_term; about
alpha_1 = 1e-3 times a cross-entropy). Nats per token and bits per byte are the NELBO alone, as the MDLM
paper reports them; the bound on the perplexity is exp(NELBO + prior).

Standard errors are taken over the n windows (each window's nats averaged over its k P rows), by the delta
method for a ratio of sums (ratio_linearised):
    bpb = sum_w nats_w / (ln 2 sum_w bytes_w),   z_w = (nats_w / ln 2 - bpb bytes_w) / mean(bytes),
    stderr(bpb) = sd(z) / sqrt(n)
which covers the choice of windows and the times and masks at once. Two models on the same windows:
    stderr(bpb_A - bpb_B) = sd(z^A - z^B) / sqrt(n)                          (paired_difference)

Sample quality (sample_quality), for generated text against the data:
    unigram entropy      of each sample's token counts, averaged; the same for windows of the data
    real-word rate       words (split on whitespace, punctuation stripped, lower-cased) that occur in the
                         training split, over all words of the samples
    repeated 4-grams     1 - distinct / total token 4-grams, per sample, averaged (degenerate loops)
    copied 8-grams       the share of each sample's 8-token spans found verbatim in the training split
    generative PPL       exp(mean next-token NLL of the samples under the AR twin), when one is given,
                         beside the same figure for real text under the same judge
Each with its standard error over the samples.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .ar import ar_sample, next_token_nll
from .checkpoint import TOKENIZER_FILE, CheckpointError, find_checkpoint, load_pretrained, read_meta
from .config import OBJECTIVES, check_number
from .data import (DEFAULT_CORPUS, check_long_enough, course_path, fixed_windows, load_text, split_text,
                   text_sha256)
from .device import autocast
from .diffusion import check_tokens, get_schedule, masked_nll, prior_term, q_sample
from .errors import MdlmError
from .model import unwrap
from .sampling import check_steps, sample
from .tokenizer import BPETokenizer

VAL_SEED = 0        # the seed of the validation masks: fixed forever, so every run is measured alike
METRIC = {"mdlm": "val_nelbo", "ar": "val_nll"}   # the name of each objective's nats/token figure


@dataclass
class ValSet:
    """The fixed validation rows, on the CPU. For "mdlm": n windows, each repeated at k times, with their
    masks. For "ar": the n windows alone (t and xt are None)."""
    x0: torch.Tensor            # (n k, L) clean ids: window w is row w, w + n, w + 2n, ...
    t: torch.Tensor | None      # (n k,)   t_r = (r + 0.5) / (n k): window w gets k times spread over [0, 1]
    xt: torch.Tensor | None     # (n k, L) x0 masked at t_r, from the generator seeded with VAL_SEED
    n_bytes: int | None         # UTF-8 bytes of the scored tokens (None without a tokenizer)
    schedule: object = field(repr=False, default=None)
    objective: str = "mdlm"


def make_val_set(val_ids: torch.Tensor, seq_len: int, n: int, mask_id: int, schedule=None,
                 tokenizer=None, t_per_window: int = 1, objective: str = "mdlm", pass_index: int = 0,
                 passes: int = 1) -> ValSet:
    """The fixed validation batch: n windows from fixed_windows(); for "mdlm" each at t_per_window
    stratified times with one fixed mask draw per row. pass_index p of `passes` shifts the time grid by
    (p + 0.5) / passes of a stratum and draws its own masks (seed VAL_SEED + p)."""
    if objective not in OBJECTIVES:
        raise MdlmError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    for name, value in (("n", n), ("t_per_window", t_per_window), ("passes", passes)):
        check_number("make_val_set", name, value, integer=True, lo=1)
    check_number("make_val_set", "pass_index", pass_index, integer=True, lo=0, hi=passes - 1)
    windows = fixed_windows(val_ids, seq_len, n)                                        # (n, L)
    if objective == "ar":
        n_bytes = None if tokenizer is None else sum(len(tokenizer.decode_bytes(w[1:])) for w in windows)
        return ValSet(windows, None, None, n_bytes, None, "ar")
    schedule = get_schedule(schedule)
    x0 = windows.repeat(t_per_window, 1)                                                # (n k, L)
    rows = len(x0)
    t = (torch.arange(rows, dtype=torch.float32) + (pass_index + 0.5) / passes) / rows  # (n k,)
    gen = torch.Generator().manual_seed(VAL_SEED + pass_index)
    xt = q_sample(x0, t, mask_id, schedule, generator=gen)                             # (n k, L)
    n_bytes = None if tokenizer is None else sum(len(tokenizer.decode_bytes(w)) for w in x0)
    return ValSet(x0, t, xt, n_bytes, schedule, "mdlm")


@torch.no_grad()
def row_nats(model, val: ValSet, mask_id: int, *, batch_size: int = 32, device=None,
             amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """The nats of each row of `val` (rows,) float64, in whatever mode the model is in:
        MDLM row r:  w(t_r) sum_{masked j} -log p(x_0^rj | x_t^r)      (an unbiased estimate of the window's NELBO)
        AR window w: sum_{i=1}^{L-1} -log p(x^wi | x^{w,<i})             (the window's exact NLL)"""
    device = torch.device(device) if device is not None else next(unwrap(model).parameters()).device
    out = []
    for i in range(0, len(val.x0), batch_size):
        x0 = val.x0[i:i + batch_size].to(device)                                         # (b, L)
        if val.objective == "ar":
            with autocast(device, amp_dtype):
                logits = model(x0, None)                                                # (b, L, V)
            out.append(next_token_nll(logits, x0).double().sum(-1).cpu())              # (b,)
            continue
        xt, t = val.xt[i:i + batch_size].to(device), val.t[i:i + batch_size].to(device)
        with autocast(device, amp_dtype):
            logits = model(xt, t)                                                       # (b, L, V)
        nll = masked_nll(logits, xt, x0, mask_id).sum(-1)                               # (b,) nats, masked only
        out.append((val.schedule.weight(t) * nll).double().cpu())                       # (b,)
    return torch.cat(out)                                                               # (rows,)


def evaluate(model, val: ValSet, mask_id: int, *, batch_size: int = 32, device=None,
             amp_dtype: torch.dtype | None = None) -> dict:
    """{"val_nelbo" (or "val_nll" for the AR twin): nats per token, "val_bpb": bits per byte (None without
    byte counts)}; deterministic, in eval mode.

    For an MDLM it equals diffusion.nelbo_terms(model, x0, t=val.t, generator=seeded(VAL_SEED)).loss.mean()
    (tested): the same masks, the same weights w(t_i), summed instead of sampled.
    """
    with eval_mode(model):
        total_nats = float(row_nats(model, val, mask_id, batch_size=batch_size, device=device,
                                    amp_dtype=amp_dtype).sum())
    n, L = val.x0.shape
    scored = n * (L - 1) if val.objective == "ar" else n * L
    bpb = None if not val.n_bytes else total_nats / math.log(2) / val.n_bytes
    return {METRIC[val.objective]: total_nats / scored, "val_bpb": bpb}


@contextmanager
def eval_mode(model):
    """Run a block with the model in eval mode (no dropout) and put it back as it was; a plain function
    (the toy's oracle) passes through."""
    was_training = getattr(model, "training", False)
    if isinstance(model, torch.nn.Module):
        model.eval()
    try:
        yield model
    finally:
        if was_training:
            model.train()


# ---------------------------------------------------------------------------------------------
# The full evaluation of a checkpoint: several passes, standard errors over windows, the prior term
# ---------------------------------------------------------------------------------------------

def ratio_linearised(num: torch.Tensor, den: torch.Tensor) -> tuple[float, torch.Tensor]:
    """A ratio of sums over n units (windows, samples) and each unit's linearised share of it (the delta method):
        R   = sum_w num_w / sum_w den_w
        z_w = (num_w - R den_w) / mean_w den_w          mean_w z_w = 0
    so that R over another draw of n units is R + mean(z) to first order, and its standard error is
    std(z) / sqrt(n). Bits per byte: num = nats / ln 2, den = bytes. For two models scored on the same
    windows, the error of R_A - R_B is std(z^A - z^B) / sqrt(n): the paired error (paired_difference).
    num (n,), den (n,) -> (R, z (n,)).   ([1, 3], [2, 2]) -> (1.0, tensor([-0.5, 0.5]))"""
    num, den = num.double(), den.double()
    ratio = float(num.sum() / den.sum())
    return ratio, (num - ratio * den) / den.mean()                                     # (n,)


def bits_per_byte(nats: torch.Tensor, n_bytes: torch.Tensor) -> tuple[float, torch.Tensor]:
    """(bpb, z): ratio_linearised of the windows' nats / ln 2 over their bytes."""
    return ratio_linearised(nats.double() / math.log(2), n_bytes)


def _stderr(z: torch.Tensor) -> float:
    """The standard error of the mean of z (n,): std / sqrt(n); nan for fewer than 2 values."""
    return float(z.std() / math.sqrt(len(z))) if len(z) > 1 else float("nan")


@torch.no_grad()
def likelihood_report(model, val_ids: torch.Tensor, *, tokenizer, objective: str = "mdlm", windows: int = 64,
                      t_per_window: int = 4, passes: int = 4, batch_size: int = 32, schedule=None) -> dict:
    """The validation figures of one model on `windows` fixed windows (data.fixed_windows), in eval mode:
    nats/token (NELBO or AR NLL), bits per byte, the perplexity bound and the MDLM's prior term.

    Errors. "stderr" / "stderr_bpb": the standard error over windows (the spread of the per-window figures,
    / sqrt(n)). It covers the choice of the n windows from the split and, for the MDLM, the random times and
    masks too (each window's estimate carries its own Monte-Carlo noise). "stderr_passes" (MDLM): the spread
    of the P pass means alone, the Monte-Carlo part; from P = 4 passes it is itself uncertain by about 40%.
    "window_nats", "window_bytes" (n,): each window's nats (the MDLM's averaged over its k P rows) and the
    bytes it scores, for paired comparisons of two models on the same windows (paired_difference)."""
    mask_id, L = tokenizer.mask_id, unwrap(model).config.seq_len
    key = METRIC[objective]
    x0 = fixed_windows(val_ids, L, windows)                                            # (n, L)
    n = len(x0)
    with eval_mode(model):
        if objective == "ar":
            val = make_val_set(val_ids, L, windows, mask_id, tokenizer=tokenizer, objective="ar")
            window_nats = row_nats(model, val, mask_id, batch_size=batch_size)          # (n,)
            window_bytes = torch.tensor([len(tokenizer.decode_bytes(w[1:])) for w in x0], dtype=torch.float64)
            scored, pass_means, prior = L - 1, None, None
        else:
            window_nats, pass_means = torch.zeros(n, dtype=torch.float64), []
            for p in range(passes):
                val = make_val_set(val_ids, L, windows, mask_id, schedule, tokenizer, t_per_window, "mdlm", p, passes)
                rows = row_nats(model, val, mask_id, batch_size=batch_size)             # (n k,) row r: window r % n
                window_nats += rows.view(t_per_window, n).mean(0) / passes              # (n,)
                pass_means.append(float(rows.sum()) / (n * t_per_window * L))
            window_bytes = torch.tensor([len(tokenizer.decode_bytes(w)) for w in x0], dtype=torch.float64)
            scored = L
            prior = sum(float(prior_term(model, batch, mask_id=mask_id, schedule=schedule)) * len(batch)
                        for batch in x0.split(batch_size)) / n                          # the mean over all windows
    nats_per_token = float(window_nats.sum()) / (n * scored)
    bpb, z = bits_per_byte(window_nats, window_bytes)
    report = {key: nats_per_token, "val_bpb": bpb, "stderr": _stderr(window_nats / scored), "stderr_bpb": _stderr(z),
              "ppl": math.exp(nats_per_token), "passes": 1 if objective == "ar" else passes, "windows": n,
              "seq_len": L, "window_nats": window_nats, "window_bytes": window_bytes}
    if objective == "mdlm":
        report.update(prior=prior, ppl_with_prior=math.exp(nats_per_token + prior),
                      stderr_passes=_stderr(torch.tensor(pass_means, dtype=torch.float64)))
    return report


def paired_difference(a: dict, b: dict) -> dict:
    """Compare two likelihood_reports scored on the same windows, in bits per byte:
        diff = bpb_A - bpb_B,  its paired standard error std(z^A - z^B) / sqrt(n)
        ratio = bpb_A / bpb_B, its standard error ratio * std(z^A / bpb_A - z^B / bpb_B) / sqrt(n)
    (bits_per_byte's z). The pairing removes the windows' shared difficulty: two models that find the same
    windows hard differ by much less noise than either figure's own error. -> {"diff", "diff_se", "ratio",
    "ratio_se", "windows"}."""
    if a["window_nats"].shape != b["window_nats"].shape or a["seq_len"] != b["seq_len"]:
        raise MdlmError(f"a paired comparison needs the same windows: got {a['windows']} windows of {a['seq_len']} "
                        f"tokens against {b['windows']} of {b['seq_len']}")
    bpb_a, z_a = bits_per_byte(a["window_nats"], a["window_bytes"])
    bpb_b, z_b = bits_per_byte(b["window_nats"], b["window_bytes"])
    ratio = bpb_a / bpb_b
    return {"diff": bpb_a - bpb_b, "diff_se": _stderr(z_a - z_b), "ratio": ratio,
            "ratio_se": ratio * _stderr(z_a / bpb_a - z_b / bpb_b), "windows": len(z_a)}


# ---------------------------------------------------------------------------------------------
# Sample quality
# ---------------------------------------------------------------------------------------------

WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")   # letters and digits, with inner apostrophes (o'er, 'tis -> tis)


def words(text: str) -> list[str]:
    """Lower-cased words: split on whitespace, punctuation stripped.  words("O, Romeo! 'Tis") -> ['o', 'romeo', 'tis']"""
    if not isinstance(text, str):
        raise MdlmError(f"words: text must be a str, got {type(text).__name__}; decode ids first (tokenizer.decode)")
    out = []
    for chunk in text.split():
        out.extend(w.lower() for w in WORD.findall(chunk))
    return out


def unigram_entropy(ids: torch.Tensor) -> float:
    """Entropy (nats) of the token frequencies of one sequence (L,)."""
    counts = torch.bincount(ids.flatten()).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


def repeated_4gram_fraction(ids: torch.Tensor) -> float:
    """1 - distinct / total token 4-grams of one sequence (L,): 0 for no repetition."""
    grams = [tuple(ids[i:i + 4].tolist()) for i in range(len(ids) - 3)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def copied_spans(samples: torch.Tensor, train_ids: torch.Tensor, n: int = 8) -> torch.Tensor:
    """For each sample (N, L), the share of its n-token spans that occur verbatim in train_ids (T,) -> (N,).
    Spans are compared by a 64-bit hash of their ids (a false match has probability ~ T / 2^63).
    copied_spans(tensor([[1, 2, 3]]), tensor([0, 1, 2, 5]), n=2) -> tensor([0.5])"""
    coef = torch.randint(1, 2 ** 62, (n,), generator=torch.Generator().manual_seed(0)) * 2 + 1   # (n,) odd

    def hashes(x: torch.Tensor) -> torch.Tensor:                     # (..., m) -> (..., m - n + 1) int64
        spans = x.long().unfold(-1, n, 1)                             # (..., m - n + 1, n)
        return (spans * coef).sum(-1)                                 # wraps around in int64: a hash
    seen = hashes(train_ids.flatten()).unique()                       # (S,) sorted
    h = hashes(samples)                                               # (N, L - n + 1)
    pos = torch.searchsorted(seen, h).clamp_max(len(seen) - 1)
    return (seen[pos] == h).double().mean(-1)                         # (N,)


@torch.no_grad()
def generative_nll(judge, samples: torch.Tensor) -> torch.Tensor:
    """Each sample's mean next-token NLL (nats) under an AR judge, in eval mode: (N, L) -> (N,) float64."""
    device = next(judge.parameters()).device
    with eval_mode(judge):
        out = [next_token_nll(judge(x.to(device), None), x.to(device)).double().mean(-1).cpu()
               for x in samples.split(32)]
    return torch.cat(out)


def _mean_se(values: torch.Tensor) -> tuple[float, float]:
    values = values.double()
    return float(values.mean()), _stderr(values)


def check_samples(samples) -> None:
    """sample_quality's door: samples (N, L) of integer token ids with N >= 1 (its figures are means over samples)."""
    if check_tokens(samples, "samples").shape[0] == 0:
        raise MdlmError("samples has 0 rows; sample_quality needs at least one sample, a LongTensor (N, L) with N >= 1")


@torch.no_grad()
def sample_quality(samples: torch.Tensor, tokenizer, *, train_words: set[str], reference: torch.Tensor | None = None,
                   ar_model=None, train_ids: torch.Tensor | None = None) -> dict:
    """Quality figures of samples (N, L) (module docstring), each with its standard error over the samples
    (key + "_se"): a difference between two samplers smaller than about twice the errors is noise.
    reference (M, L): windows of real text, scored alike (the data's unigram entropy, and its generative
    perplexity under the same judge: the judge favours text like its own, so real text is the yardstick);
    ar_model: the AR twin as judge, for generative perplexities; train_ids: the training split's ids, for the
    share of 8-token spans copied verbatim from it (the real-word rate rewards copying)."""
    check_samples(samples)
    texts = [tokenizer.decode(row.tolist()) for row in samples]
    per_sample = [words(text) for text in texts]
    real = torch.tensor([sum(w in train_words for w in ws) for ws in per_sample], dtype=torch.float64)   # (N,)
    total = torch.tensor([len(ws) for ws in per_sample], dtype=torch.float64)                          # (N,)
    rate, z = ratio_linearised(real, total) if total.sum() > 0 else (0.0, torch.zeros(len(samples)))
    out = {"samples": len(samples), "real_word_rate": rate, "real_word_rate_se": _stderr(z)}
    entropies = torch.tensor([unigram_entropy(x) for x in samples])
    out["unigram_entropy"], out["unigram_entropy_se"] = _mean_se(entropies)
    out["repeated_4grams"], out["repeated_4grams_se"] = _mean_se(torch.tensor([repeated_4gram_fraction(x) for x in samples]))
    if train_ids is not None:
        out["copied_8grams"], out["copied_8grams_se"] = _mean_se(copied_spans(samples, train_ids))
    if reference is not None:
        out["data_unigram_entropy"], out["data_unigram_entropy_se"] = _mean_se(
            torch.tensor([unigram_entropy(x) for x in reference]))
    if ar_model is not None:
        for key, x in (("gen", samples), ("data_gen", reference)):
            if x is None:
                continue
            nll = generative_nll(ar_model, x)                                               # (N,)
            out[f"{key}_ppl"] = math.exp(float(nll.mean()))
            out[f"{key}_ppl_se"] = out[f"{key}_ppl"] * _stderr(nll)                         # the delta method
    return out


# ---------------------------------------------------------------------------------------------
# `python -m mdlm_course eval`
# ---------------------------------------------------------------------------------------------

def evaluate_checkpoint(path, *, data_path=None, windows: int = 64, passes: int = 4, samples: int = 0,
                        steps: int = 256, method: str = "ancestral", block_length: int | None = None,
                        judge=None, compare=None, seed: int = 0, say=print) -> dict:
    """Load a checkpoint (an MDLM or an AR twin), print and return its validation figures and, with
    samples > 0, the quality of that many generated windows (`judge`: an AR twin's checkpoint for the
    generative perplexity). `compare`: another checkpoint of the same tokenizer and window length, scored on
    the same windows, with the paired difference in bits per byte. The objective is read from the checkpoint."""
    _check_eval_args(path, windows=windows, passes=passes, samples=samples, steps=steps, method=method, judge=judge,
                     compare=compare, seed=seed)
    if block_length is not None:                                    # before an evaluation of minutes, not after
        check_number("eval", "block_length", block_length, integer=True, lo=1)
    model, tok, meta = load_pretrained(path)
    if tok is None:
        raise CheckpointError(f"{path}: the checkpoint has no tokenizer, so bits per byte cannot be measured")
    objective = "ar" if model.config.causal else "mdlm"
    judge_model = _partner(judge) if judge is not None else None
    compare_model = _partner(compare) if compare is not None else None
    text, data_path = _scored_text(data_path, meta, say)
    train_text, val_text = split_text(text)
    val_ids = torch.tensor(tok.encode_fast(val_text) if hasattr(tok, "encode_fast") else tok.encode(val_text))
    check_long_enough(len(val_ids), model.config.seq_len, "the validation split")
    schedule = (meta.get("train_config") or {}).get("schedule")
    report = {"checkpoint": str(path), "objective": objective, "step": meta.get("step"), "data": str(data_path),
              **likelihood_report(model, val_ids, tokenizer=tok, objective=objective, windows=windows, passes=passes,
                                  schedule=schedule)}
    say(f"{path}: {objective.upper()} at step {report['step']}, {report['windows']} validation windows of "
        f"{report['seq_len']} tokens of {data_path}" + (f", {passes} pass{'es' if passes > 1 else ''}" if objective == "mdlm" else ""))
    _say_likelihood(report, say)
    if compare is not None:
        report["compare"] = _compare(report, compare_model, val_ids, tok, windows=windows, passes=passes, say=say)
    if samples > 0:
        report["quality"] = _quality(model, tok, objective, train_text, val_ids, samples, steps, method, block_length,
                                     judge_model, seed)
        how = f"{method}, {steps} steps" + (f" per block of {block_length}" if block_length else "")
        _say_quality(report["quality"], how if objective == "mdlm" else "left to right", say)
    return report


def _se(value: float) -> str:
    """' ± 0.011': the error to two significant figures (its third would be noise); '' for nan."""
    if not math.isfinite(value):
        return ""
    return f" ± {value:.{max(0, 1 - math.floor(math.log10(abs(value))))}f}" if value else " ± 0"


def _say_likelihood(report: dict, say) -> None:
    """The likelihood lines of `eval`: the figure, its error over windows, what the error covers."""
    key = METRIC[report["objective"]]
    name = "NLL" if report["objective"] == "ar" else "NELBO"
    say(f"  val {name}: {report[key]:.4f}{_se(report['stderr'])} nats/token = {report['val_bpb']:.4f}"
        f"{_se(report['stderr_bpb'])} bits/byte; {'exp(NELBO)' if name == 'NELBO' else 'perplexity'} {report['ppl']:.2f}")
    if report["objective"] == "mdlm":
        say(f"  (± is the standard error over the {report['windows']} windows: the windows drawn from the split and "
            f"the times and masks; the times and masks alone, over {report['passes']} passes:"
            f"{_se(report['stderr_passes']) or ' n/a'} nats/token)")
        say(f"  prior term left out of the NELBO: {report['prior']:.5f} nats/token; with it, the perplexity bound: "
            f"perplexity <= {report['ppl_with_prior']:.2f}")
    else:
        say(f"  (± is the standard error over the {report['windows']} windows drawn from the split)")


def _compare(report: dict, other, val_ids, tok, *, windows: int, passes: int, say) -> dict:
    """Score the --compare checkpoint on the same windows and print the paired difference."""
    model, meta = other
    objective = "ar" if model.config.causal else "mdlm"
    schedule = (meta.get("train_config") or {}).get("schedule")
    theirs = likelihood_report(model, val_ids, tokenizer=tok, objective=objective, windows=windows, passes=passes,
                               schedule=schedule)
    theirs["objective"] = objective
    say(f"compared with {meta.get('path', 'the --compare checkpoint')} ({objective.upper()} at step {meta.get('step')}), "
        f"on the same windows:")
    _say_likelihood(theirs, say)
    pair = paired_difference(report, theirs)
    resolved = "resolved" if abs(pair["diff"]) > 2 * pair["diff_se"] else "within the noise (less than 2 errors)"
    say(f"  difference: {pair['diff']:+.4f}{_se(pair['diff_se'])} bits/byte (paired over the {pair['windows']} "
        f"windows: {resolved}); ratio {pair['ratio']:.4f}{_se(pair['ratio_se'])}")
    return {**{k: v for k, v in theirs.items() if not k.startswith("window_")}, **pair}


def _say_quality(q: dict, how: str, say) -> None:
    """The sample-quality lines of `eval`, each figure with its standard error over the samples."""
    pct = lambda key: f"{100 * q[key]:.1f}%{_se(100 * q[key + '_se'])}"                          # noqa: E731
    say(f"  {q['samples']} samples ({how}): unigram entropy {q['unigram_entropy']:.3f}{_se(q['unigram_entropy_se'])} "
        f"(real text {q['data_unigram_entropy']:.3f}), real words {pct('real_word_rate')}, "
        f"repeated 4-grams {pct('repeated_4grams')}, 8-token spans copied from the training text {pct('copied_8grams')}")
    if "gen_ppl" in q:
        say(f"  generative perplexity under the judge: {q['gen_ppl']:.1f}{_se(q['gen_ppl_se'])} "
            f"(real text under the same judge, {q['samples']} windows: {q['data_gen_ppl']:.1f}{_se(q['data_gen_ppl_se'])})")
    say("  (± is the standard error over the samples: differences under about twice it are noise)")


def _check_eval_args(path, *, windows, passes, samples, steps, method, judge, compare, seed) -> None:
    """evaluate_checkpoint's door: every option, and the judge's and the compared checkpoint's kind, window and
    tokenizer (from their meta.json, without loading weights), before minutes of evaluation."""
    for name, value, lo in (("windows", windows, 1), ("passes", passes, 1), ("samples", samples, 0)):
        check_number("eval", name, value, integer=True, lo=lo)
    check_number("eval", "seed", seed, integer=True, lo=-2**63, hi=2**64 - 1)
    ckpt = find_checkpoint(path, "best")
    seq_len = read_meta(ckpt, verify=False)["model_config"]["seq_len"]
    if samples > 0:
        check_steps(steps, seq_len, method)
    for option, other in (("--judge", judge), ("--compare", compare)):
        if other is not None:
            _check_partner(option, other, ckpt, seq_len)


def _check_partner(option: str, other, ckpt: Path, seq_len: int) -> None:
    """A --judge must be an AR twin; a --judge or --compare checkpoint must share the tokenizer and the windows."""
    other_ckpt = find_checkpoint(other, "best")
    config = read_meta(other_ckpt, verify=False)["model_config"]
    if option == "--judge" and not config.get("causal"):
        raise CheckpointError(f"--judge {other}: an MDLM, not an AR model; the generative perplexity needs an AR "
                              "twin's checkpoint (e.g. checkpoints/shakespeare-ar)")
    if option == "--judge" and config["seq_len"] < seq_len or option == "--compare" and config["seq_len"] != seq_len:
        raise CheckpointError(f"{option} {other}: its windows are {config['seq_len']} tokens, the evaluated "
                              f"checkpoint's {seq_len}; {'a judge needs at least as many' if option == '--judge' else 'both must score the same windows'}")
    mine, theirs = (c / TOKENIZER_FILE for c in (ckpt, other_ckpt))
    if not (mine.is_file() and theirs.is_file()) or BPETokenizer.load(mine).merges != BPETokenizer.load(theirs).merges:
        raise CheckpointError(f"{option} {other}: it uses another tokenizer than {ckpt}; both must share one "
                              "(the AR twin trained with the same tokenizer)")


def _scored_text(data_path, meta: dict, say) -> tuple[str, Path]:
    """The text whose last 5% is scored: data_path if given, else the file the checkpoint was trained on
    (meta.json's "data", relative to COURSE_HOME), else the Shakespeare corpus."""
    source = meta.get("data") or {}
    if data_path is None and source.get("path"):
        data_path = course_path(source["path"])
        if not data_path.is_file():
            raise CheckpointError(f"{data_path}: the text this checkpoint was trained on is not there; "
                                  "pass --data FILE to score it on another text")
    data_path = Path(data_path or DEFAULT_CORPUS)
    text = load_text(data_path)
    if source.get("sha256") and text_sha256(text) != source["sha256"]:
        say(f"note: {data_path} is not the text this checkpoint was trained on ({source['path']}, by its sha256)")
    return text, data_path


def _partner(path) -> tuple:
    """Load the --judge or --compare checkpoint (checked at the door): (model, meta with its "path")."""
    model, _, meta = load_pretrained(path)
    return model, {**meta, "path": str(path)}


def _quality(model, tok, objective, train_text, val_ids, n, steps, method, block_length, judge, seed) -> dict:
    """Generate n windows from the model and score them (sample_quality)."""
    L, gen = model.config.seq_len, torch.Generator().manual_seed(seed)
    if objective == "ar":
        first = fixed_windows(val_ids, L, n)[:, :1]                 # (n, 1): each sample starts from a real token
        out = ar_sample(model, num_samples=len(first), seq_len=L, prompt=first, mask_id=tok.mask_id, generator=gen)
    else:
        out = sample(model, mask_id=tok.mask_id, num_samples=n, seq_len=L, steps=steps, method=method,
                     block_length=block_length, generator=gen)
    train_ids = torch.tensor(tok.encode_fast(train_text))
    return sample_quality(out, tok, train_words=set(words(train_text)), reference=fixed_windows(val_ids, L, n),
                          ar_model=judge[0] if judge is not None else None, train_ids=train_ids)


# ---------------------------------------------------------------------------------------------
# The masked cross-entropy at fixed t (chapter 8: the unigram plateau)
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def masked_ce_by_t(model, val_ids: torch.Tensor, *, mask_id: int, seq_len: int, ts, windows: int = 16,
                   seed: int = 0) -> list[float]:
    """The mean cross-entropy of the masked tokens at each fixed t of `ts`, unweighted, nats per masked token:
        CE(t) = sum_{w, i: x_t^wi = MASK} -log p_theta(x_0^wi | x_t^w)  /  #{masked positions}
    on `windows` fixed windows of the validation stream (data.fixed_windows) with fixed masks (seeded by
    `seed`, the same uniforms at every t, so the masks at a larger t contain those at a smaller one).
    Two calls on the same weights give the same numbers; over training the curve moves only with the weights.

    No 1/t weight: this is how well the denoiser fills a masked token when a fraction alpha_t of the context
    is visible. A context-blind model scores its unigram cross-entropy at every t (the plateau of chapter 8);
    a model that uses the context scores lower at small t.  masked_ce_by_t(m, val, mask_id=4095, seq_len=128,
    ts=[0.05, 0.5, 0.95]) -> e.g. [4.8, 5.9, 6.8]. NaN for a t at which no position is masked.
    """
    device = next(unwrap(model).parameters()).device if isinstance(model, torch.nn.Module) else torch.device("cpu")
    x0 = fixed_windows(val_ids, seq_len, windows).to(device)                           # (n, L)
    out = []
    with eval_mode(model):
        for t in ts:
            gen = torch.Generator().manual_seed(seed)                                   # the same u at every t
            t_rows = torch.full((len(x0),), float(t), device=device)                    # (n,)
            xt = q_sample(x0, t_rows, mask_id, generator=gen)                           # (n, L)
            n_masked = int((xt == mask_id).sum())
            nll = masked_nll(model(xt, t_rows), xt, x0, mask_id)                        # (n, L), 0 where visible
            out.append(float(nll.double().sum()) / n_masked if n_masked else float("nan"))
    return out
