"""When data is scarce, does diffusion win? The AR twin against the MDLM on a small slice, for ~100 epochs.

Issue 28; Prabhudesai et al. 2025 (arXiv 2507.15857) report that masked diffusion keeps gaining from
repeated data long after an autoregressive model has stopped. This script measures it on a CPU.

    OMP_NUM_THREADS=1 python bench/data_constrained.py        # the committed run: about 40 CPU minutes, one thread
    python bench/data_constrained.py --quick                  # a miniature of it, seconds (tests, notebook 08)

The results file (bench/data_constrained.json) holds every model's per-window nats at every validation
epoch, and is rewritten after each model, so an interrupted run keeps what it finished. curves(),
paired_table(), crossover() and summary() read it (notebook 08 plots and prints them).

The data: the first `train_chars` characters of data/shakespeare.txt are the training text (a tokenizer is
trained on them alone); validation is the course's fixed split, the last 5% of the corpus, scored on n
fixed windows (data.fixed_windows). Three models, each from several seeds:
    ar          the AR twin (causal, next-token cross-entropy)
    mdlm        the MDLM from random weights
    mdlm_warm   an AR stage of `warm_epochs` (its own run), then the MDLM with the output shift from its
                weights; its epochs count the AR stage's
An epoch is one training split's worth of tokens: epoch(step) = step B L / N_train (windows are drawn at
random starts, so an epoch is a count of tokens seen, not one pass in order).

Per-window figures, on the same windows for every model and epoch. Window w (L tokens, UTF-8 bytes b_w):
    AR:    n_w = sum_{i=1}^{L-1} -log p(x^wi | x^{w,<i}),           b_w = bytes of tokens 1..L-1
    MDLM:  n_w = 1/k sum_{j=1}^{k} w(t_wj) sum_{masked i} -log p(x0^wi | xt^wj),   b_w = bytes of the window
with the k fixed times and masks of evaluate.make_val_set (row r of the n k rows belongs to window r mod n).
    bits/byte = sum_w n_w / (ln 2 sum_w b_w)              (= evaluate.evaluate's val_bpb; tested)
The paired standard error of a difference D = bpb^M - bpb^A of two such ratios on the same windows, by the
delta method (each window's linearised contribution to its model's ratio):
    z_w = (n_w - bpb ln 2 b_w) / (ln 2 mean_w b_w),       SE(D) = std_w(z^M_w - z^A_w) / sqrt(n)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from mdlm_course.ar import next_token_nll
from mdlm_course.checkpoint import list_checkpoints
from mdlm_course.config import ModelConfig, TrainConfig
from mdlm_course.data import DEFAULT_CORPUS, TokenData, encode_cached, load_text, prepare_tokenizer, split_text
from mdlm_course.diffusion import masked_nll
from mdlm_course.errors import MdlmError
from mdlm_course.evaluate import ValSet, make_val_set
from mdlm_course.model import MDLM
from mdlm_course.train import train

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "data_constrained.json"
MODELS = ("ar", "mdlm", "mdlm_warm")
LABELS = {"ar": "AR twin", "mdlm": "MDLM from scratch", "mdlm_warm": "MDLM, AR warm start"}


@dataclass
class Setup:
    """The sizes of one experiment (FULL: the committed run; QUICK: the miniature)."""
    train_chars: int = 220_000       # the training text: the first train_chars characters of the corpus
    vocab_size: int = 512            # BPE trained on that text alone
    seq_len: int = 64
    n_layer: int = 2
    n_head: int = 2
    d_model: int = 64                # the tiny preset's shape (0.17M parameters)
    epochs: int = 100                # each model trains for this many epochs in total
    eval_every: int = 4              # epochs between validations
    warm_epochs: int = 8             # mdlm_warm: the AR stage (a multiple of eval_every)
    seeds: tuple = (0, 1, 2)
    val_windows: int = 256           # fixed validation windows of the corpus's last 5%
    t_per_window: int = 4            # MDLM: fixed times (and masks) per window
    train_preset: str = "tiny"       # TrainConfig preset: lr, warm-up, weight decay, batch size

    def model_config(self, *, causal: bool, output_shift: bool = False) -> ModelConfig:
        return ModelConfig.preset("tiny", vocab_size=self.vocab_size, seq_len=self.seq_len, n_layer=self.n_layer,
                                  n_head=self.n_head, d_model=self.d_model, causal=causal, output_shift=output_shift)


FULL = Setup()
QUICK = Setup(train_chars=12_000, vocab_size=300, seq_len=32, d_model=32, epochs=4, eval_every=2, warm_epochs=2,
              seeds=(0, 1), val_windows=16, t_per_window=2)


# ---------------------------------------------------------------------------------------------
# The arithmetic: epochs, bits per byte, the paired standard error
# ---------------------------------------------------------------------------------------------

def eval_steps(epochs: list[int], n_train: int, tokens_per_step: int) -> list[int]:
    """The optimizer step at which each epoch count is reached: round(e N_train / (B L)), at least 1.

    eval_steps([4, 8], 100_000, 1024) -> [391, 781]
    """
    if n_train < 1 or tokens_per_step < 1:
        raise MdlmError(f"n_train and tokens_per_step must be positive, got {n_train} and {tokens_per_step}")
    return [max(1, round(e * n_train / tokens_per_step)) for e in epochs]


def epochs_at(step: int, n_train: int, tokens_per_step: int) -> float:
    """Training tokens seen after `step` steps, in epochs.  epochs_at(391, 100_000, 1024) -> 4.00384"""
    return step * tokens_per_step / n_train


def bits_per_byte(nats: torch.Tensor, n_bytes: torch.Tensor) -> float:
    """sum_w n_w / (ln 2 sum_w b_w): the ratio estimate over windows.  bits_per_byte([ln 2], [1]) -> 1.0"""
    return float(torch.as_tensor(nats, dtype=torch.float64).sum() / math.log(2)
                 / torch.as_tensor(n_bytes, dtype=torch.float64).sum())


def _influence(nats: torch.Tensor, n_bytes: torch.Tensor) -> torch.Tensor:
    """z_w = (n_w - bpb ln 2 b_w) / (ln 2 mean b): window w's linearised share of the ratio.  (n,)"""
    nats, n_bytes = nats.double(), n_bytes.double()
    bpb = bits_per_byte(nats, n_bytes)
    return (nats - bpb * math.log(2) * n_bytes) / (math.log(2) * n_bytes.mean())


def paired_difference(nats_m, bytes_m, nats_a, bytes_a) -> tuple[float, float]:
    """(D, SE): D = bpb(m) - bpb(a) of two models scored on the same n windows (per-window nats and bytes,
    each (n,)), and its delta-method standard error std(z^m - z^a) / sqrt(n) (the module docstring).

    Identical models give (0.0, 0.0); the error shrinks with the correlation of the two models' windows.
    """
    nats_m, bytes_m, nats_a, bytes_a = (torch.as_tensor(x, dtype=torch.float64)
                                        for x in (nats_m, bytes_m, nats_a, bytes_a))
    if not nats_m.shape == bytes_m.shape == nats_a.shape == bytes_a.shape or nats_m.dim() != 1 or len(nats_m) < 2:
        raise MdlmError(f"paired_difference needs four 1-D tensors of one length >= 2 (one entry per window), got "
                        f"shapes {[tuple(x.shape) for x in (nats_m, bytes_m, nats_a, bytes_a)]}")
    diff = bits_per_byte(nats_m, bytes_m) - bits_per_byte(nats_a, bytes_a)
    z = _influence(nats_m, bytes_m) - _influence(nats_a, bytes_a)                        # (n,)
    return diff, float(z.std() / math.sqrt(len(z)))


# ---------------------------------------------------------------------------------------------
# Per-window scores
# ---------------------------------------------------------------------------------------------

def window_bytes(val: ValSet, tokenizer) -> torch.Tensor:
    """b_w (n,): the UTF-8 bytes of the tokens each window's score counts (AR: tokens 1..L-1)."""
    first = 1 if val.objective == "ar" else 0
    windows = val.x0[:_n_windows(val)]                                                   # (n, L)
    return torch.tensor([len(tokenizer.decode_bytes(w[first:].tolist())) for w in windows], dtype=torch.float64)


def _n_windows(val: ValSet) -> int:
    """n, the distinct windows of a ValSet (an MDLM's rows repeat them k times: window w is row w, w + n, ...)."""
    if val.objective == "ar":
        return len(val.x0)
    rows = len(val.x0)
    for n in range(1, rows + 1):                                    # the smallest period of the rows
        if rows % n == 0 and torch.equal(val.x0, val.x0[:n].repeat(rows // n, 1)):
            return n
    return rows


@torch.no_grad()
def window_nats(model, val: ValSet, mask_id: int, *, batch_size: int = 64) -> torch.Tensor:
    """n_w (n,) float64: each window's nats (AR: exact next-token NLL; MDLM: the weighted masked NLL
    averaged over its k fixed times). sum_w n_w / (ln 2 sum_w b_w) is evaluate.evaluate's val_bpb."""
    was_training = model.training
    model.eval()
    rows = []
    for i in range(0, len(val.x0), batch_size):
        x0 = val.x0[i:i + batch_size]                                                    # (b, L)
        if val.objective == "ar":
            rows.append(next_token_nll(model(x0, None), x0).double().sum(-1))           # (b,)
            continue
        xt, t = val.xt[i:i + batch_size], val.t[i:i + batch_size]                        # (b, L), (b,)
        nll = masked_nll(model(xt, t), xt, x0, mask_id).double().sum(-1)                 # (b,) masked only
        rows.append(val.schedule.weight(t).double() * nll)                               # (b,)
    model.train(was_training)
    per_row = torch.cat(rows)                                                            # (n k,)
    n = _n_windows(val)
    return per_row.view(-1, n).mean(0)                                                   # (n,) mean over k times


# ---------------------------------------------------------------------------------------------
# Training with validation at fixed epochs
# ---------------------------------------------------------------------------------------------

def _train_config(setup: Setup, *, objective: str, seed: int, max_steps: int,
                  init_from: str | None = None) -> TrainConfig:
    """The preset's optimisation (lr, warm-up, weight decay, batch); no validation of its own beyond one
    window at each stop (the curve is measured here, per window); float32 for a reproducible CPU run."""
    return TrainConfig.preset(setup.train_preset, objective=objective, seed=seed, max_steps=max_steps,
                              init_from=init_from, eval_interval=max_steps, eval_windows=1, eval_t_per_window=1,
                              log_interval=max_steps, ckpt_interval=0, dtype="fp32", device="cpu")


def train_curve(model_config: ModelConfig, cfg: TrainConfig, data: TokenData, tok, val: ValSet, stops: list[int],
                run_dir: Path) -> tuple[list[torch.Tensor], list[float]]:
    """Train a fresh model (seeded by cfg.seed) for cfg.max_steps steps, stopping at each step of `stops`
    to score val per window; between stops the run is resumed from its checkpoint (train's resume), so the
    schedule, data order and noise are those of one uninterrupted run.
    -> (one (n,) tensor per stop, the mean training loss in nats/token over the steps since the previous stop)"""
    torch.manual_seed(cfg.seed)                                      # the initial weights are the seed's
    model = MDLM(replace(model_config, vocab_size=tok.vocab_size))
    curve, train_loss, last = [], [], 0
    for stop in stops:
        result = train(model, cfg, data, tokenizer=tok, out_dir=run_dir, resume=True, stop_at=stop, progress=False)
        curve.append(window_nats(result.model, val, tok.mask_id))
        losses = [loss for step, loss in zip(result.history["step"], result.history["loss"]) if last < step <= stop]
        train_loss.append(sum(losses) / len(losses))
        last = stop
    return curve, train_loss


def prepare(setup: Setup, corpus: Path = DEFAULT_CORPUS, cache_dir: Path | None = None):
    """(tokenizer, TokenData, {objective: ValSet}): the training slice, its tokenizer, the fixed windows."""
    text = load_text(corpus)
    train_text, val_text = split_text(text)
    if not 0 < setup.train_chars <= len(train_text):
        raise MdlmError(f"train_chars must be in [1, {len(train_text)}] (the corpus's training split), "
                        f"got {setup.train_chars}")
    slice_text = train_text[:setup.train_chars]
    tok = prepare_tokenizer(slice_text, setup.vocab_size, cache_dir, verbose=False)
    data = TokenData(encode_cached(slice_text, tok, cache_dir, name="train"),
                     encode_cached(val_text, tok, cache_dir, name="val"))
    vals = {obj: make_val_set(data.val_ids, setup.seq_len, setup.val_windows, tok.mask_id, "loglinear", tok,
                              setup.t_per_window if obj == "mdlm" else 1, obj) for obj in ("ar", "mdlm")}
    return tok, data, vals


def run_experiment(setup: Setup, *, corpus: Path = DEFAULT_CORPUS, work_dir: Path | None = None,
                   cache_dir: Path | None = None, models=MODELS, say=print, on_result=None) -> dict:
    """Train every model of `models` at every seed of setup, scoring the fixed windows every eval_every
    epochs. -> the results dict (what data_constrained.json holds). on_result(results) is called after each
    model with the results so far ("complete": False until the last), so that a long run can be saved as it goes."""
    if setup.warm_epochs % setup.eval_every or not 0 < setup.warm_epochs < setup.epochs:
        raise MdlmError(f"warm_epochs={setup.warm_epochs} must be a multiple of eval_every={setup.eval_every} "
                        f"below epochs={setup.epochs}")
    start = time.perf_counter()
    tok, data, vals = prepare(setup, corpus, cache_dir)
    n_train, per_step = len(data.train_ids), setup.seq_len * TrainConfig.preset(setup.train_preset).batch_size
    epochs = list(range(setup.eval_every, setup.epochs + 1, setup.eval_every))
    stops = eval_steps(epochs, n_train, per_step)
    say(f"{n_train:,} training tokens ({setup.train_chars:,} characters), {len(data.val_ids):,} validation tokens; "
        f"{per_step} tokens per step, {stops[-1]:,} steps = {setup.epochs} epochs per model")
    out = {"setup": {**setup.__dict__, "seeds": list(setup.seeds)}, "n_train_tokens": n_train,
           "n_val_tokens": len(data.val_ids), "tokens_per_step": per_step, "epochs": epochs, "steps": stops,
           "window_bytes": {obj: window_bytes(v, tok).tolist() for obj, v in vals.items()},
           "runs": {m: {} for m in models}, "run_seconds": {m: {} for m in models}, "complete": False}
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        for seed in setup.seeds:
            for name in models:
                t0 = time.perf_counter()
                curve, extra = _one_model(name, setup, seed, data, tok, vals, stops, epochs,
                                          Path(tmp) / f"{name}-{seed}")
                nats = [[round(float(x), 4) for x in c] for c in curve]                 # per window, per stop
                out["runs"][name][str(seed)] = {"window_nats": nats, **extra}
                out["run_seconds"][name][str(seed)] = round(time.perf_counter() - t0, 1)
                obj = "ar" if name == "ar" else "mdlm"
                bpbs = [bits_per_byte(c, torch.tensor(out["window_bytes"][obj])) for c in curve]
                say(f"{name:>9} seed {seed}: {time.perf_counter() - t0:6.1f} s; bits/byte at epochs "
                    + ", ".join(f"{e}: {b:.3f}" for e, b in zip(extra.get("epochs", epochs), bpbs)))
                out["seconds"] = round(time.perf_counter() - start, 1)
                if on_result is not None:
                    on_result(out)
    out["complete"] = True
    return out


def _one_model(name, setup, seed, data, tok, vals, stops, epochs, run_dir):
    """The curve of one model at one seed: (per-window nats at each of its stops, extra fields)."""
    if name in ("ar", "mdlm"):
        cfg = _train_config(setup, objective=name, seed=seed, max_steps=stops[-1])
        curve, loss = train_curve(setup.model_config(causal=name == "ar"), cfg, data, tok, vals[name], stops, run_dir)
        return curve, {"train_loss": [round(x, 4) for x in loss]}
    # mdlm_warm: the AR stage (its own schedule, warm_epochs), then the MDLM from its weights
    warm_step = stops[epochs.index(setup.warm_epochs)]
    ar_cfg = _train_config(setup, objective="ar", seed=seed, max_steps=warm_step)
    ar_curve, ar_loss = train_curve(setup.model_config(causal=True), ar_cfg, data, tok, vals["ar"], [warm_step],
                                    run_dir / "ar-stage")
    ar_ckpt = str(list_checkpoints(run_dir / "ar-stage")[-1])
    later = [s - warm_step for s in stops if s > warm_step]
    cfg = _train_config(setup, objective="mdlm", seed=seed, max_steps=later[-1], init_from=ar_ckpt)
    curve, loss = train_curve(setup.model_config(causal=False, output_shift=True), cfg, data, tok, vals["mdlm"], later,
                              run_dir / "mdlm-stage")
    ar_bpb = bits_per_byte(ar_curve[0], window_bytes(vals["ar"], tok))
    return curve, {"epochs": [e for e in epochs if e > setup.warm_epochs], "train_loss": [round(x, 4) for x in loss],
                   "ar_stage_bpb": round(ar_bpb, 5), "ar_stage_train_loss": round(ar_loss[0], 4)}


# ---------------------------------------------------------------------------------------------
# Reading the results: curves, paired differences, the crossover
# ---------------------------------------------------------------------------------------------

def curves(results: dict) -> dict:
    """{model: {"epochs": [...], "bpb": (S, E) tensor over seeds x evaluated epochs}}."""
    out = {}
    for name, by_seed in _done(results).items():
        obj = "ar" if name == "ar" else "mdlm"
        n_bytes = torch.tensor(results["window_bytes"][obj], dtype=torch.float64)
        bpb = [[bits_per_byte(torch.tensor(c, dtype=torch.float64), n_bytes) for c in run["window_nats"]]
               for run in by_seed.values()]                                               # (S, E)
        out[name] = {"epochs": _epochs_of(results, name), "bpb": torch.tensor(bpb, dtype=torch.float64)}
    return out


def _done(results: dict) -> dict:
    """results["runs"] without the models that have no finished seed yet (a run still going)."""
    return {name: by_seed for name, by_seed in results["runs"].items() if by_seed}


def _epochs_of(results: dict, model: str) -> list[int]:
    """The epochs at which `model` was scored (the warm start: only after its AR stage)."""
    return next(iter(results["runs"][model].values())).get("epochs", results["epochs"])


def paired(results: dict, model: str, epoch: int, reference: str = "ar", ref_epoch: int | None = None) -> dict:
    """bpb(model at epoch) - bpb(reference at ref_epoch, default the same epoch), on the same windows:
    the seed-mean difference D, its paired standard error over windows (the per-window z differences
    averaged over seeds, seed s of one model paired with seed s of the other), and the standard error
    of D over seeds (seed-to-seed spread / sqrt(S))."""
    ref_epoch = epoch if ref_epoch is None else ref_epoch
    obj = {m: "ar" if m == "ar" else "mdlm" for m in (model, reference)}
    wb = {m: torch.tensor(results["window_bytes"][obj[m]], dtype=torch.float64) for m in (model, reference)}
    i, j = _epochs_of(results, model).index(epoch), _epochs_of(results, reference).index(ref_epoch)
    seeds = sorted(set(results["runs"][model]) & set(results["runs"][reference]), key=int)
    diffs, z = [], []
    for s in seeds:
        nm = torch.tensor(results["runs"][model][s]["window_nats"][i], dtype=torch.float64)       # (n,)
        na = torch.tensor(results["runs"][reference][s]["window_nats"][j], dtype=torch.float64)   # (n,)
        diffs.append(paired_difference(nm, wb[model], na, wb[reference])[0])
        z.append(_influence(nm, wb[model]) - _influence(na, wb[reference]))                      # (n,)
    z_mean = torch.stack(z).mean(0)                                                               # (n,)
    d = torch.tensor(diffs, dtype=torch.float64)                                                  # (S,)
    return {"epoch": epoch, "ref_epoch": ref_epoch, "diff": float(d.mean()),
            "se_windows": float(z_mean.std() / math.sqrt(len(z_mean))),
            "se_seeds": float(d.std() / math.sqrt(len(d))) if len(d) > 1 else float("nan")}


def paired_table(results: dict, model: str, reference: str = "ar") -> list[dict]:
    """paired(results, model, e, reference) at every epoch e at which both models were scored."""
    ref_epochs = _epochs_of(results, reference)
    return [paired(results, model, e, reference) for e in _epochs_of(results, model) if e in ref_epochs]


def crossover(results: dict, model: str, reference: str = "ar", n_se: float = 0.0) -> int | None:
    """The first evaluated epoch from which on the seed-mean bits/byte of `model` stays below the reference's
    (the curves have crossed for good), or None. n_se > 0: below by more than n_se paired standard errors
    (over the windows) at every epoch from there on."""
    rows = paired_table(results, model, reference)
    for k, row in enumerate(rows):
        if all(r["diff"] + n_se * r["se_windows"] < 0 for r in rows[k:]):
            return row["epoch"]
    return None


def best_epochs(results: dict) -> dict:
    """{model: (epoch of the lowest seed-mean bits/byte, that mean, its seed standard deviation)}."""
    out = {}
    for name, c in curves(results).items():
        mean = c["bpb"].mean(0)
        k = int(mean.argmin())
        sd = float(c["bpb"][:, k].std()) if len(c["bpb"]) > 1 else float("nan")
        out[name] = (c["epochs"][k], float(mean[k]), sd)
    return out


def _sd(x: torch.Tensor) -> float:
    return float(x.std()) if len(x) > 1 else float("nan")


def summary(results: dict, say=print) -> None:
    """Print the figures chapter 8 quotes: each model's best and last epoch (seed mean ± seed standard
    deviation), the training loss there, the paired differences from the AR twin at every epoch, the
    crossover, and each MDLM's last epoch against the AR twin's best (early-stopped) epoch."""
    best, cs, last_epoch = best_epochs(results), curves(results), results["epochs"][-1]
    if not results.get("complete", True):
        say("NOTE: an unfinished run: " + ", ".join(f"{LABELS[m]} seeds {sorted(map(int, r))}"
                                                    for m, r in results["runs"].items()))
    say("bits/byte, mean ± standard deviation over seeds; training loss in nats/token (its own objective):")
    for name, (e, bpb, sd) in best.items():
        c, runs = cs[name], list(_done(results)[name].values())
        k = c["epochs"].index(e)
        loss_best = sum(r["train_loss"][k] for r in runs) / len(runs)
        loss_last = sum(r["train_loss"][-1] for r in runs) / len(runs)
        last = c["bpb"][:, -1]
        say(f"  {LABELS[name]:>19}: best at epoch {e}: {bpb:.3f} ± {sd:.3f} (train loss {loss_best:.3f}); "
            f"epoch {last_epoch}: {float(last.mean()):.3f} ± {_sd(last):.3f} (train loss {loss_last:.3f}); "
            f"last - best {float(last.mean()) - bpb:+.3f}")
    if "mdlm_warm" in _done(results):
        stage = torch.tensor([r["ar_stage_bpb"] for r in _done(results)["mdlm_warm"].values()], dtype=torch.float64)
        say(f"  the warm start's AR stage alone ({results['setup']['warm_epochs']} epochs, its learning rate decayed "
            f"by then): {float(stage.mean()):.3f} ± {_sd(stage):.3f}")
    for name in [m for m in _done(results) if m != "ar" and "ar" in _done(results)]:
        say(f"\n{LABELS[name]} - AR twin, bits/byte (mean over seeds; paired SE over windows; SE over seeds):")
        say("  epoch    diff   SE(windows)  SE(seeds)")
        for r in paired_table(results, name):
            say(f"  {r['epoch']:>5}  {r['diff']:+.3f}   {r['se_windows']:.4f}      {r['se_seeds']:.4f}")
        for n_se, what in ((0, "the curves cross"), (2, "below by more than 2 paired SE")):
            cross = crossover(results, name, n_se=n_se)
            say(f"  {what}: {f'none up to epoch {last_epoch}' if cross is None else f'from epoch {cross} on'}")
        r = paired(results, name, last_epoch, "ar", best["ar"][0])
        say(f"  epoch {last_epoch} against the AR twin's best (epoch {best['ar'][0]}): {r['diff']:+.3f} ± "
            f"{r['se_windows']:.4f} (paired, windows) ± {r['se_seeds']:.4f} (seeds)")


def machine() -> dict:
    """The CPU's model name, whether it has AVX512 / AMX, the torch version and thread count."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        lscpu = ""
    name = re.search(r"Model name:\s*(.+)", lscpu)
    flags = (re.search(r"Flags:\s*(.+)", lscpu) or [None, ""])[1].split()
    return {"cpu": name[1].strip() if name else platform.processor(), "cores": os.cpu_count(),
            "avx512f": "avx512f" in flags, "avx512_bf16": "avx512_bf16" in flags,
            "amx": any(f.startswith("amx") for f in flags),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the miniature run (seconds)")
    p.add_argument("--out", type=Path, default=None, help=f"results file (default {RESULTS.name} in bench/; "
                   "--quick: not written unless given)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    args = p.parse_args(argv)
    if args.threads < 1:
        raise SystemExit("error: --threads must be at least 1")
    torch.set_num_threads(args.threads)
    setup = QUICK if args.quick else FULL
    if args.seeds:
        setup = replace(setup, seeds=tuple(args.seeds))
    out = args.out if args.out is not None else (None if args.quick else RESULTS)
    if out is not None and not out.parent.is_dir():
        raise SystemExit(f"error: {out.parent}: no such folder")
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["OMP_NUM_THREADS=1 python bench/data_constrained.py", *map(shlex.quote, given)])

    def save(results: dict) -> None:                                # after every model: a long run is never lost
        results.update(machine=machine(), command=command,
                       finished_utc=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
        if out is not None:
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(results, separators=(",", ":")) + "\n")
            tmp.replace(out)

    results = run_experiment(setup, on_result=save)
    save(results)
    if out is not None:
        print(f"-> {out}")
    m = results["machine"]
    print(f"\n{m['cpu']}, {m['threads']} thread(s): {results['seconds']:.0f} s in all")
    summary(results)


if __name__ == "__main__":
    main()
