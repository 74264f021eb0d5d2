"""Evaluation: the likelihood bound on held-out text, in nats per token and bits per byte.

Validation is deterministic: n fixed windows of the validation split (data.fixed_windows), each scored
at k fixed times, row r (of the n k rows) at t_r = (r + 0.5) / (n k), with one fixed mask draw per
row, so two evaluations of the same weights give the same number:
    val NELBO (nats/token)   = sum_r w(t_r) sum_{masked j} -log p(x_0^rj | x_t^r)  /  (n k L)
    bits per byte            = (the same sum, in nats) / ln 2 / (UTF-8 bytes that the n k rows decode to)
Most of its variance comes from the rows at small t (few masked tokens, weight 1/t); it shrinks roughly
like log(n k) / (n k), hence k > 1 times per window.

The AR twin (objective "ar", ar.py) is scored on the same windows by its exact next-token NLL:
    val NLL (nats/token)     = sum_w sum_{i=1}^{L-1} -log p(x^wi | x^{w,<i})  /  (n (L - 1))
    bits per byte            = (the same sum) / ln 2 / (UTF-8 bytes of the n (L - 1) scored tokens)
Bits per byte do not depend on the tokenizer, so they compare any two models of the same text.

The full evaluation (`python -m mdlm_course eval`, evaluate_checkpoint) repeats the MDLM's estimate over
P passes, pass p at the shifted grid t_r = (r + (p + 0.5) / P) / (n k) with its own masks, and reports
the mean, its standard error over the passes, exp(NELBO), and the prior term that the NELBO leaves out
(diffusion.prior_term; about alpha_1 = 1e-3 times a cross-entropy). Nats per token and bits per byte are
the NELBO alone, as the MDLM paper reports them; the bound on the perplexity is exp(NELBO + prior).

Sample quality (sample_quality), for generated text against the data:
    unigram entropy      of each sample's token counts, averaged; the same for windows of the data
    real-word rate       words (split on whitespace, punctuation stripped, lower-cased) that occur in the
                         training split, over all words of the samples
    repeated 4-grams     1 - distinct / total token 4-grams, per sample, averaged (degenerate loops)
    generative PPL       exp(mean next-token NLL of the samples under the AR twin), when one is given
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .ar import ar_sample, next_token_nll
from .checkpoint import CheckpointError, load_pretrained
from .config import OBJECTIVES, check_number
from .data import (DEFAULT_CORPUS, check_long_enough, course_path, fixed_windows, load_text, split_text,
                   text_sha256)
from .device import autocast
from .diffusion import get_schedule, masked_nll, prior_term, q_sample
from .errors import MdlmError
from .model import unwrap
from .sampling import sample

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
def evaluate(model, val: ValSet, mask_id: int, *, batch_size: int = 32, device=None,
             amp_dtype: torch.dtype | None = None) -> dict:
    """{"val_nelbo" (or "val_nll" for the AR twin): nats per token, "val_bpb": bits per byte (None without
    byte counts)}; deterministic.

    For an MDLM it equals diffusion.nelbo_terms(model, x0, t=val.t, generator=seeded(VAL_SEED)).loss.mean()
    (tested): the same masks, the same weights w(t_i), summed instead of sampled.
    """
    device = torch.device(device) if device is not None else next(unwrap(model).parameters()).device
    was_training = model.training
    model.eval()
    total_nats = 0.0
    n, L = val.x0.shape
    for i in range(0, n, batch_size):
        x0 = val.x0[i:i + batch_size].to(device)                                         # (b, L)
        if val.objective == "ar":
            with autocast(device, amp_dtype):
                logits = model(x0, None)                                                # (b, L, V)
            total_nats += next_token_nll(logits, x0).double().sum().item()
            continue
        xt, t = val.xt[i:i + batch_size].to(device), val.t[i:i + batch_size].to(device)
        with autocast(device, amp_dtype):
            logits = model(xt, t)                                                       # (b, L, V)
        nll = masked_nll(logits, xt, x0, mask_id).sum(-1)                               # (b,) nats, masked only
        total_nats += (val.schedule.weight(t) * nll).double().sum().item()
    model.train(was_training)
    scored = n * (L - 1) if val.objective == "ar" else n * L
    bpb = None if not val.n_bytes else total_nats / math.log(2) / val.n_bytes
    return {METRIC[val.objective]: total_nats / scored, "val_bpb": bpb}


# ---------------------------------------------------------------------------------------------
# The full evaluation of a checkpoint: several passes, the standard error, the prior term
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def likelihood_report(model, val_ids: torch.Tensor, *, tokenizer, objective: str = "mdlm", windows: int = 64,
                      t_per_window: int = 4, passes: int = 4, batch_size: int = 32, schedule=None) -> dict:
    """The validation figures of one model: nats/token (NELBO or AR NLL), bits per byte, the perplexity
    bound, the standard error over passes (MDLM) or over windows (AR), and the MDLM's prior term."""
    mask_id, L = tokenizer.mask_id, unwrap(model).config.seq_len
    key = METRIC[objective]
    if objective == "ar":
        val = make_val_set(val_ids, L, windows, mask_id, tokenizer=tokenizer, objective="ar")
        res = evaluate(model, val, mask_id, batch_size=batch_size)
        device = next(unwrap(model).parameters()).device
        per_window = torch.cat([next_token_nll(model(x0.to(device), None), x0.to(device)).double().mean(-1).cpu()
                                for x0 in val.x0.split(batch_size)])                 # (n,) nats per token
        se = float(per_window.std() / math.sqrt(len(per_window)))
        return {key: res[key], "val_bpb": res["val_bpb"], "stderr": se, "stderr_bpb": se * res["val_bpb"] / res[key],
                "ppl": math.exp(res[key]), "passes": 1, "windows": len(val.x0), "seq_len": L}
    runs = [evaluate(model, make_val_set(val_ids, L, windows, mask_id, schedule, tokenizer, t_per_window, "mdlm",
                                         p, passes), mask_id, batch_size=batch_size) for p in range(passes)]
    nats = torch.tensor([r[key] for r in runs], dtype=torch.float64)
    bpb = torch.tensor([r["val_bpb"] for r in runs], dtype=torch.float64)
    x0 = fixed_windows(val_ids, L, windows)
    prior = sum(float(prior_term(model, batch, mask_id=mask_id, schedule=schedule)) * len(batch)
                for batch in x0.split(batch_size)) / len(x0)                  # the mean over all windows
    stderr = float(nats.std() / math.sqrt(passes)) if passes > 1 else float("nan")
    return {key: float(nats.mean()), "val_bpb": float(bpb.mean()), "stderr": stderr,
            "stderr_bpb": float(bpb.std() / math.sqrt(passes)) if passes > 1 else float("nan"),
            "ppl": math.exp(float(nats.mean())), "prior": prior, "ppl_with_prior": math.exp(float(nats.mean()) + prior),
            "passes": passes, "windows": len(x0), "seq_len": L}


# ---------------------------------------------------------------------------------------------
# Sample quality
# ---------------------------------------------------------------------------------------------

WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")   # letters and digits, with inner apostrophes (o'er, 'tis -> tis)


def words(text: str) -> list[str]:
    """Lower-cased words: split on whitespace, punctuation stripped.  words("O, Romeo! 'Tis") -> ['o', 'romeo', 'tis']"""
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


@torch.no_grad()
def sample_quality(samples: torch.Tensor, tokenizer, *, train_words: set[str], reference: torch.Tensor | None = None,
                   ar_model=None) -> dict:
    """Quality figures of samples (N, L) (module docstring); `reference` (M, L): windows of the data, for the
    data's own unigram entropy; ar_model: the AR twin, for the generative perplexity."""
    texts = [tokenizer.decode(row.tolist()) for row in samples]
    all_words = [w for text in texts for w in words(text)]
    out = {"samples": len(samples), "unigram_entropy": sum(map(unigram_entropy, samples)) / len(samples),
           "real_word_rate": sum(w in train_words for w in all_words) / max(1, len(all_words)),
           "repeated_4grams": sum(map(repeated_4gram_fraction, samples)) / len(samples)}
    if reference is not None:
        out["data_unigram_entropy"] = sum(map(unigram_entropy, reference)) / len(reference)
    if ar_model is not None:
        device = next(ar_model.parameters()).device
        nll = next_token_nll(ar_model(samples.to(device), None), samples.to(device))   # (N, L-1)
        out["gen_ppl"] = math.exp(float(nll.double().mean()))
    return out


# ---------------------------------------------------------------------------------------------
# `python -m mdlm_course eval`
# ---------------------------------------------------------------------------------------------

def evaluate_checkpoint(path, *, data_path=None, windows: int = 64, passes: int = 4, samples: int = 0,
                        steps: int = 256, method: str = "ancestral", block_length: int | None = None,
                        judge=None, seed: int = 0, say=print) -> dict:
    """Load a checkpoint (an MDLM or an AR twin), print and return its validation figures and, with
    samples > 0, the quality of that many generated windows (`judge`: an AR twin's checkpoint for the
    generative perplexity). The objective is read from the checkpoint."""
    if block_length is not None:                                    # before an evaluation of minutes, not after
        check_number("eval", "block_length", block_length, integer=True, lo=1)
    model, tok, meta = load_pretrained(path)
    if tok is None:
        raise CheckpointError(f"{path}: the checkpoint has no tokenizer, so bits per byte cannot be measured")
    objective = "ar" if model.config.causal else "mdlm"
    text, data_path = _scored_text(data_path, meta, say)
    train_text, val_text = split_text(text)
    val_ids = torch.tensor(tok.encode_fast(val_text) if hasattr(tok, "encode_fast") else tok.encode(val_text))
    check_long_enough(len(val_ids), model.config.seq_len, "the validation split")
    schedule = (meta.get("train_config") or {}).get("schedule")
    report = {"checkpoint": str(path), "objective": objective, "step": meta.get("step"),
              **likelihood_report(model, val_ids, tokenizer=tok, objective=objective, windows=windows, passes=passes,
                                  schedule=schedule)}
    name = "NLL" if objective == "ar" else "NELBO"
    report["data"] = str(data_path)
    say(f"{path}: {objective.upper()} at step {report['step']}, {report['windows']} validation windows of "
        f"{report['seq_len']} tokens of {data_path}" + (f", {passes} pass{'es' if passes > 1 else ''}" if objective == "mdlm" else ""))
    err, err_bpb = ((f" ± {report['stderr']:.4f}", f" ± {report['stderr_bpb']:.4f}") if math.isfinite(report["stderr"])
                    else ("", " (one pass: no standard error; use --passes 2 or more)"))
    say(f"  val {name}: {report[METRIC[objective]]:.4f}{err} nats/token = {report['val_bpb']:.4f}{err_bpb} bits/byte; "
        f"{'exp(NELBO)' if objective == 'mdlm' else 'perplexity'} {report['ppl']:.2f}")
    if objective == "mdlm":
        say(f"  prior term left out of the NELBO: {report['prior']:.5f} nats/token; with it, the perplexity bound: "
            f"perplexity <= {report['ppl_with_prior']:.2f}")
    if samples > 0:
        report["quality"] = _quality(model, tok, objective, train_text, val_ids, samples, steps, method, block_length,
                                     judge, seed)
        q = report["quality"]
        how = f"{method}, {steps} steps" + (f" per block of {block_length}" if block_length else "")
        say(f"  {samples} samples ({how if objective == 'mdlm' else 'left to right'}): "
            f"unigram entropy {q['unigram_entropy']:.3f} (data {q['data_unigram_entropy']:.3f}), real words "
            f"{100 * q['real_word_rate']:.1f}%, repeated 4-grams {100 * q['repeated_4grams']:.1f}%"
            + (f", generative perplexity {q['gen_ppl']:.1f}" if "gen_ppl" in q else ""))
    return report


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


def _quality(model, tok, objective, train_text, val_ids, n, steps, method, block_length, judge, seed) -> dict:
    """Generate n windows from the model and score them (sample_quality)."""
    L, gen = model.config.seq_len, torch.Generator().manual_seed(seed)
    if objective == "ar":
        first = fixed_windows(val_ids, L, n)[:, :1]                 # (n, 1): each sample starts from a real token
        out = ar_sample(model, num_samples=len(first), seq_len=L, prompt=first, mask_id=tok.mask_id, generator=gen)
    else:
        out = sample(model, mask_id=tok.mask_id, num_samples=n, seq_len=L, steps=steps, method=method,
                     block_length=block_length, generator=gen)
    ar_model = load_pretrained(judge)[0] if judge is not None else None
    return sample_quality(out, tok, train_words=set(words(train_text)), reference=fixed_windows(val_ids, L, n),
                          ar_model=ar_model)


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
    x0 = fixed_windows(val_ids, seq_len, windows)                                       # (n, L)
    if isinstance(model, torch.nn.Module):
        device, was_training = next(unwrap(model).parameters()).device, model.training
        model.eval()
    else:                                                                               # a function (toy.py)
        device, was_training = torch.device("cpu"), False
    x0 = x0.to(device)
    out = []
    try:
        for t in ts:
            gen = torch.Generator().manual_seed(seed)                                   # the same u at every t
            t_rows = torch.full((len(x0),), float(t), device=device)                    # (n,)
            xt = q_sample(x0, t_rows, mask_id, generator=gen)                           # (n, L)
            n_masked = int((xt == mask_id).sum())
            nll = masked_nll(model(xt, t_rows), xt, x0, mask_id)                        # (n, L), 0 where visible
            out.append(float(nll.double().sum()) / n_masked if n_masked else float("nan"))
    finally:
        if was_training:
            model.train()
    return out
