"""From a text file to a trained model in one call: what `python -m mdlm_course train` runs, and what
notebook 05's "retrain on your own text" cell calls.

    train_on_text("data/my_books.txt", preset="cpu", out="runs/my_books")

1. check every input first (the text, the folders, the options), so a mistake costs seconds, not a run;
2. the tokenizer: given (--tokenizer), the one of the checkpoint being resumed or started from, or a
   byte-level BPE trained on the train split and cached (data.prepare_tokenizer);
3. the data: the text encoded once and cached (data.TokenData);
4. the model: the preset's shape (or the shape of the --init-from checkpoint), causal for the AR twin,
   built after seeding, so the same seed gives the same run;
5. train.train(), with checkpoints in `out` and --resume.
Under torchrun, process 0 fills the caches first (device.rank_zero_first).
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist

from .checkpoint import (check_has_optimizer, check_not_in_checkpoint, check_same_data, check_writable,
                         list_checkpoints, load_checkpoint, read_meta, run_lock)
from .config import TRAIN_PRESETS, ModelConfig, TrainConfig
from .data import (CACHE_DIR, DEFAULT_CORPUS, TokenData, course_relative, load_text, prepare_tokenizer, split_text,
                   text_sha256)
from .device import autocast_dtype, get_device, rank_zero_first, setup_distributed
from .errors import MdlmError
from .model import MDLM
from .tokenizer import BPETokenizer
from .train import TrainResult, train


SMALL_TEXT = 1_000_000      # characters: below this, a newly trained tokenizer gets SMALL_TEXT_VOCAB tokens
SMALL_TEXT_VOCAB = 1024     # what notebook 05's own-text cell uses


def train_on_text(data_path: str | Path | None = None, *, preset: str = "cpu", out: str | Path | None = None,
                  train_overrides: dict | None = None, tokenizer_path: str | Path | None = None,
                  vocab_size: int | None = None, cache_dir: str | Path | None = CACHE_DIR, resume: bool = False,
                  stop_at: int | None = None, output_shift: bool = False, say=print) -> TrainResult:
    """Train the preset's model on a UTF-8 text file; checkpoints go to `out` (default runs/<file>-<preset>).

    train_overrides: TrainConfig fields to change, e.g. {"max_steps": 500, "objective": "ar"} (a misspelt
    field is a one-line error). vocab_size: of a newly trained tokenizer (default: the preset's, or
    SMALL_TEXT_VOCAB for a text under SMALL_TEXT characters, where 4096 tokens would leave few examples each).
    output_shift: ModelConfig.output_shift, the MDLM reads position i's logits from position i - 1.
    """
    _check_args(data_path, out, train_overrides, tokenizer_path, vocab_size)
    cfg = TrainConfig.preset(preset, **_with_min_lr(preset, train_overrides or {}))
    data_path = Path(data_path or DEFAULT_CORPUS)
    out = Path(out or Path("runs") / f"{data_path.stem}-{preset}")
    get_device(cfg.device)                                          # an unknown device fails here, in one line
    text = load_text(data_path)
    check_not_in_checkpoint(out)                                    # before check_writable creates it there
    check_writable(out)
    if resume and list_checkpoints(out):                            # refused before any work: another text,
        latest = list_checkpoints(out)[-1]                          # or an exported checkpoint
        meta = read_meta(latest, verify=False)
        check_same_data(latest, meta.get("data"), {"path": course_relative(data_path), "sha256": text_sha256(text)})
        check_has_optimizer(latest, meta)
    if cache_dir is not None:
        check_writable(cache_dir)
    # resuming a run started --init-from: its own checkpoint has the shape and tokenizer (the init may be gone)
    resuming = resume and bool(list_checkpoints(out))
    init = load_checkpoint(list_checkpoints(out)[-1] if resuming else cfg.init_from, "best") if cfg.init_from else None
    shape = {"causal": cfg.objective == "ar", "output_shift": output_shift}
    model_config = ModelConfig.preset(preset, **shape)
    if init is not None:                 # the model's shape and tokenizer come from the checkpoint it starts from
        model_config = ModelConfig(**{**init.meta["model_config"], **shape})
    if vocab_size is None and tokenizer_path is None and init is None and len(text) < SMALL_TEXT:
        vocab_size = min(model_config.vocab_size, SMALL_TEXT_VOCAB)   # used only if a tokenizer is trained
    if vocab_size is not None:
        model_config = replace(model_config, vocab_size=vocab_size)
    rank, world_size, _, initialised_here = setup_distributed(cfg.device)
    try:
        with run_lock(out) if rank == 0 else nullcontext():        # a second training into `out` is refused
            return _train(text, data_path, preset, out, cfg, model_config, init, tokenizer_path, cache_dir, resume,
                          stop_at, rank, world_size, say if rank == 0 else _quiet)
    finally:
        if initialised_here:
            dist.destroy_process_group()


def _train(text, data_path, preset, out, cfg, model_config, init, tokenizer_path, cache_dir, resume, stop_at,
           rank, world_size, say) -> TrainResult:
    """Steps 2-5: tokenizer, data, model, train()."""
    tok = _tokenizer(text, model_config.vocab_size, tokenizer_path, init, out if resume else None, cache_dir, say)
    data = rank_zero_first(lambda: TokenData.from_text(text, tok, cache_dir, path=data_path))
    torch.manual_seed(cfg.seed)                                     # the initial weights are the seed's too
    model = MDLM(replace(model_config, vocab_size=tok.vocab_size))
    say(f"data: {data_path}: {data}")
    say(f"model: {preset} preset, {model.num_params() / 1e6:.2f}M parameters"
        f"{', AR twin (causal)' if cfg.objective == 'ar' else ''}; {cfg.max_steps} steps of "
        f"{cfg.batch_size * cfg.grad_accum * world_size} x {model.config.seq_len} tokens"
        + (f" on {world_size} processes" if world_size > 1 else ""))
    say(f"checkpoints -> {out}/step-*  (resume with --resume; load with mdlm_course.load_pretrained('{out}'))")
    return train(model, cfg, data, tokenizer=tok, out_dir=out, resume=resume, stop_at=stop_at)


def choose_preset(device: torch.device | str | None = None) -> tuple[str, str]:
    """(preset, why): the model size and precision that suit this device, for "retrain on your own text".

    CUDA: the "gpu" preset (40M parameters, 512-token windows), bf16 autocast (fp16 + GradScaler on cards
    without bf16), compiled. A CPU or MPS: the "cpu" preset (4.3M parameters, the shipped checkpoint's
    shape), bf16 only on CPUs with bf16 matrix units and only where train() measures it faster (else
    float32: emulated bf16 is ~25x slower), eager.
    """
    device = get_device(None if device is None else str(device))
    if device.type == "cuda":
        dtype = "bf16" if torch.cuda.is_bf16_supported() else "fp16 with a GradScaler"
        return "gpu", (f"CUDA ({torch.cuda.get_device_name(device)}): the 40M-parameter gpu preset, {dtype}, "
                       "torch.compile (about 2.4x faster steps after a minute of compiling)")
    precision = "bf16 where a measured step is faster, else float32" if autocast_dtype(device) is not None \
        else "float32"                                              # train() measures (device.faster_cpu_dtype)
    return "cpu", (f"{device.type}: the 4.3M-parameter cpu preset (the shipped checkpoint's shape), {precision}, "
                   "no compile (on small CPU models it does not reliably pay for itself)")


def _check_args(data_path, out, train_overrides, tokenizer_path, vocab_size) -> None:
    """train_on_text's door for the arguments' types (the values are checked by TrainConfig and load_text)."""
    if tokenizer_path is not None and vocab_size is not None:         # the given tokenizer fixes the vocabulary
        raise MdlmError("--tokenizer and --vocab-size (tokenizer_path, vocab_size) exclude each other: the given "
                        "tokenizer fixes the vocabulary; drop --vocab-size, or drop --tokenizer to train a new one")
    if data_path is not None and not isinstance(data_path, (str, os.PathLike)):
        raise MdlmError(f"data_path must be the path of a text file (str or Path), got {type(data_path).__name__} "
                        f"{data_path!r}")
    if out is not None and not isinstance(out, (str, os.PathLike)):
        raise MdlmError(f"out must be a folder's path (str or Path) or None, got {type(out).__name__} {out!r}")
    for name, value in (("--data", data_path), ("--out", out)):
        if isinstance(value, str) and not value.strip():             # "" would mean the default corpus, or "."
            raise MdlmError(f"{name} is empty; give a path, or leave the option out for the default")
    if train_overrides is not None and not isinstance(train_overrides, dict):
        raise MdlmError(f"train_overrides must be a dict of TrainConfig fields, e.g. {{'max_steps': 500}}, got "
                        f"{type(train_overrides).__name__}")


def _with_min_lr(preset: str, overrides: dict) -> dict:
    """An lr below the preset's min_lr (the cosine's floor) scales min_lr with it, unless min_lr is given:
    lr 1e-5 on a preset of lr 2e-3, min_lr 2e-4 -> min_lr 1e-6."""
    base, lr = TRAIN_PRESETS.get(preset), overrides.get("lr")
    if base is None or "min_lr" in overrides or isinstance(lr, bool) or not isinstance(lr, (int, float)) \
            or not 0 < lr < base.min_lr:
        return overrides
    return {**overrides, "min_lr": lr * base.min_lr / base.lr}


def _quiet(*_args) -> None:
    """say() for the processes other than 0."""


def _tokenizer(text: str, vocab_size: int, path, init, resume_dir, cache_dir, say) -> BPETokenizer:
    """The given tokenizer file; else the resumed or initial checkpoint's; else one trained on the train split."""
    if path is not None:
        return BPETokenizer.load(path)
    for ck in (init, load_checkpoint(resume_dir, "latest", verify=False) if resume_dir and
               list_checkpoints(resume_dir) else None):
        if ck is not None and ck.tokenizer() is not None:
            return ck.tokenizer()
    say(f"tokenizer: byte-level BPE, vocab_size={vocab_size} (--vocab-size to choose), trained on the train split "
        f"(cached in {cache_dir})")
    return prepare_tokenizer(split_text(text)[0], vocab_size, cache_dir)
