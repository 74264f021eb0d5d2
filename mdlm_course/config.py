"""Settings read from the environment (in this one place), and the helper behind every named preset.

    QUICK          MDLM_COURSE_QUICK=1: tiny configs and few steps, so that CI runs every notebook in minutes
    debug_checks() MDLM_COURSE_DEBUG=1: MDLM.forward checks that every id is in [0, vocab_size)
    COURSE_HOME    where the corpus (data/), its cache (data/cache/) and the shipped checkpoints
                   (checkpoints/) live, in this order:
                     1. $MDLM_COURSE_HOME;
                     2. the repository, when the package runs from a clone (pip install -e . included);
                     3. the current directory (a plain `pip install`, run from anywhere).
                   Every function that reads or writes there also takes an explicit path argument.
    ModelConfig, PRESETS              the network's shape (model.py builds it), named presets
    TrainConfig, TRAIN_PRESETS        the optimisation and bookkeeping (train.py runs it), named presets
    from_preset    ModelConfig.preset("cpu", ...) and TrainConfig.preset("cpu", ...): one named dataclass
                   with some fields replaced, and a one-line error for a misspelt name or field.
    check_number   the one-line range check behind every numeric field
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import ClassVar

from .diffusion import get_schedule
from .errors import MdlmError

QUICK = os.environ.get("MDLM_COURSE_QUICK", "") not in ("", "0")


def debug_checks() -> bool:
    """MDLM_COURSE_DEBUG=1: models check their input ids on every call (read when a model is built)."""
    return os.environ.get("MDLM_COURSE_DEBUG", "") not in ("", "0")


def _course_home() -> Path:
    if os.environ.get("MDLM_COURSE_HOME"):
        return Path(os.environ["MDLM_COURSE_HOME"]).expanduser()
    clone = Path(__file__).resolve().parent.parent
    if (clone / "pyproject.toml").is_file() and (clone / "data").is_dir():
        return clone
    return Path.cwd()


COURSE_HOME = _course_home()
MAX_SEQ_LEN = 1 << 20       # positions: far beyond the course's 512, below where the RoPE tables exhaust memory
OBJECTIVES = ("mdlm", "ar")   # the MDLM's NELBO, or the AR twin's next-token cross-entropy (ar.py)


def from_preset(presets: dict, kind: str, name: str, overrides: dict):
    """presets[name] with some fields replaced; a one-line ValueError for an unknown name or field.

    from_preset(PRESETS, "model", "tiny", {"n_layer": 3}) -> ModelConfig(..., n_layer=3, ...)
    """
    if name not in presets:
        raise MdlmError(f"unknown {kind} preset {name!r}; choose from {', '.join(sorted(presets))}")
    base = presets[name]
    bad = sorted(set(overrides) - {f.name for f in fields(base)})
    if bad:
        raise MdlmError(f"unknown {type(base).__name__} field(s) {bad}")
    return replace(base, **overrides)


def check_number(owner: str, name: str, value, *, integer: bool = False, lo: float | None = None,
                 hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> None:
    """One-line ValueError unless value is a finite (int) number in the interval [lo, hi] (or open ends).

    check_number("TrainConfig", "beta1", 2.0, lo=0, hi=1, hi_open=True)
    -> ValueError: TrainConfig.beta1 must be a number in [0, 1), got 2.0
    """
    kind = "an int" if integer else "a number"
    left, right = ("(" if lo_open else "["), (")" if hi_open else "]")
    where = f" in {left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
    ok = not isinstance(value, bool) and isinstance(value, (int,) if integer else (int, float))
    ok = ok and math.isfinite(value)
    ok = ok and (lo is None or (value > lo if lo_open else value >= lo))
    ok = ok and (hi is None or (value < hi if hi_open else value <= hi))
    if not ok:
        raise MdlmError(f"{owner}.{name} must be {kind}{where}, got {value!r}")


class _Config:
    """What ModelConfig and TrainConfig share: named presets, and a plain dict for JSON."""
    kind = ""   # "model" or "train": which table of PRESET_TABLES holds the presets

    @classmethod
    def preset(cls, name: str, **overrides):
        """ModelConfig.preset("cpu", vocab_size=tok.vocab_size), TrainConfig.preset("cpu", max_steps=500):
        the named preset with some fields replaced."""
        return from_preset(PRESET_TABLES[cls.kind], cls.kind, name, overrides)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ModelConfig(_Config):
    kind: ClassVar[str] = "model"
    vocab_size: int = 4096          # tokenizer vocabulary, incl. the [MASK] token
    seq_len: int = 256              # tokens per window; the RoPE tables are built for this length
    n_layer: int = 6                # transformer blocks
    n_head: int = 4                 # attention heads; d_model must divide by n_head
    d_model: int = 256              # width of the residual stream
    dropout: float = 0.0            # on attention weights and residual branches (0: none)
    tie_embeddings: bool = False    # share the output head with the token embedding
    time_conditioning: bool = False  # adaLN from a sinusoidal embedding of t (an ablation)
    causal: bool = False            # True: autoregressive mask (the AR twin); False: bidirectional
    output_shift: bool = False      # logits of position i from position i - 1 (DiffuLLaMA; for warm starts)
    rope_base: float = 10000.0      # RoPE base: the slowest pair turns once per ~2*pi*base tokens
    cond_dim: int = 128             # width of the time embedding (only with time_conditioning)
    norm_eps: float = 1e-6          # RMSNorm epsilon

    def __post_init__(self):
        for name in ("vocab_size", "seq_len", "n_layer", "n_head", "d_model", "cond_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MdlmError(f"ModelConfig.{name} must be a positive int, got {value!r}")
        if self.seq_len > MAX_SEQ_LEN:                              # the RoPE tables alone would not fit in memory
            raise MdlmError(f"ModelConfig.seq_len must be at most {MAX_SEQ_LEN:,}, got {self.seq_len:,}")
        check_number("ModelConfig", "dropout", self.dropout, lo=0, hi=1, hi_open=True)
        for name in ("tie_embeddings", "time_conditioning", "causal", "output_shift"):
            if not isinstance(getattr(self, name), bool):
                raise MdlmError(f"ModelConfig.{name} must be True or False, got {getattr(self, name)!r}")
        if self.output_shift and self.causal:
            raise MdlmError("output_shift=True is for a bidirectional MDLM (causal=False): a causal model "
                             "already predicts token i + 1 at position i")
        if self.d_model % self.n_head:
            raise MdlmError(f"d_model={self.d_model} must be divisible by n_head={self.n_head}")
        if (self.d_model // self.n_head) % 2:
            raise MdlmError(f"head size d_model/n_head={self.d_model // self.n_head} must be even for RoPE")
        if self.cond_dim % 2:
            raise MdlmError(f"cond_dim={self.cond_dim} must be even (sinusoidal features come in cos/sin pairs)")
        if not 0 <= self.dropout < 1:
            raise MdlmError(f"dropout must be in [0, 1), got {self.dropout}")
        if not (isinstance(self.rope_base, (int, float)) and math.isfinite(self.rope_base) and self.rope_base > 1):
            raise MdlmError(f"rope_base must be a finite number > 1, got {self.rope_base!r}")
        if not (isinstance(self.norm_eps, (int, float)) and 0 < self.norm_eps < 1):
            raise MdlmError(f"norm_eps must be in (0, 1), got {self.norm_eps!r}")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_head

    @property
    def d_hidden(self) -> int:
        """SwiGLU hidden size: 8/3 d rounded up to a multiple of 64.  d_model=256 -> 704"""
        return 64 * math.ceil(8 * self.d_model / 3 / 64)



# Parameter counts (no time conditioning; tests/test_model.py checks them):
#   tiny:   0.17 M  (2 x 64, vocab 512, L=64)       tests and quick mode, seconds on a CPU
#   cpu:    4.26 M  (4 x 256, vocab 4096, L=256, tied head, dropout 0.1)   the shipped checkpoint's shape
#   gpu:   40.51 M  (10 x 512, vocab 8192, L=512)   one GPU, minutes
PRESETS = {
    "tiny": ModelConfig(vocab_size=512, seq_len=64, n_layer=2, n_head=2, d_model=64),
    "cpu": ModelConfig(vocab_size=4096, seq_len=256, n_layer=4, n_head=4, d_model=256, tie_embeddings=True,
                       dropout=0.1),
    "gpu": ModelConfig(vocab_size=8192, seq_len=512, n_layer=10, n_head=8, d_model=512),
}


@dataclass
class TrainConfig(_Config):
    kind: ClassVar[str] = "train"
    # optimisation
    batch_size: int = 16            # sequences per micro-batch, per process
    grad_accum: int = 1             # micro-batches per optimizer step
    max_steps: int = 2000           # optimizer steps; the LR schedule spans exactly these
    lr: float = 1e-3                # peak learning rate, reached after warm-up
    min_lr: float = 1e-4            # the cosine decays to this at max_steps
    warmup_steps: int = 100         # linear warm-up from lr/warmup to lr
    weight_decay: float = 0.1       # AdamW decay for matrices; norms, embeddings and biases get none
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0          # max global gradient norm (0: no clipping)
    ema_decay: float = 0.0          # exponential moving average of the weights (0: off; 0.999 typical)
    # objective
    objective: str = "mdlm"         # "mdlm": the NELBO; "ar": next-token cross-entropy (the AR twin, causal model)
    init_from: str | None = None    # a checkpoint (or run directory) whose weights start the run; None: random
    # diffusion
    schedule: str = "loglinear"     # noise schedule (diffusion.SCHEDULES)
    stratified: bool = True         # stratified t over the batch: one t per stratum [i/B, (i+1)/B)
    # precision and speed
    dtype: str = "auto"             # "auto" | "bf16" | "fp16" | "fp32" (device.autocast_dtype)
    compile: bool = False           # torch.compile the model (minutes of compilation, then faster steps)
    fp16_init_scale: float = 2.0 ** 16   # GradScaler's first loss scale (fp16 only)
    device: str | None = None       # None: get_device() (cuda, mps, cpu)
    # bookkeeping
    eval_interval: int = 200        # steps between validations (also done at the end)
    eval_windows: int = 32          # fixed validation windows
    eval_t_per_window: int = 4      # times t at which each validation window is scored (less variance)
    log_interval: int = 10          # steps between loss read-outs (each one synchronises the GPU)
    ckpt_interval: int = 200        # steps between checkpoints when out_dir is given (0: only at the end)
    seed: int = 1337                # model init, t and masks, data order: same seed, same run

    def __post_init__(self):
        check = lambda name, **kw: check_number("TrainConfig", name, getattr(self, name), **kw)   # noqa: E731
        for name in ("batch_size", "grad_accum", "max_steps", "eval_interval", "eval_windows", "eval_t_per_window",
                     "log_interval"):
            check(name, integer=True, lo=1)
        for name in ("warmup_steps", "ckpt_interval"):
            check(name, integer=True, lo=0)
        check("seed", integer=True, lo=0, hi=2**63 - 1)           # what torch.manual_seed takes
        check("lr", lo=0, lo_open=True, hi=10)
        check("min_lr", lo=0, hi=self.lr)
        check("weight_decay", lo=0)
        check("beta1", lo=0, hi=1, hi_open=True)
        check("beta2", lo=0, hi=1, hi_open=True)
        check("grad_clip", lo=0)
        check("ema_decay", lo=0, hi=1, hi_open=True)
        check("fp16_init_scale", lo=1)
        if self.dtype not in ("auto", "bf16", "fp16", "fp32"):
            raise MdlmError(f"TrainConfig.dtype must be auto, bf16, fp16 or fp32, got {self.dtype!r}")
        if self.objective not in OBJECTIVES:
            raise MdlmError(f"TrainConfig.objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        for name in ("stratified", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise MdlmError(f"TrainConfig.{name} must be True or False, got {getattr(self, name)!r}")
        if self.device is not None and not isinstance(self.device, str):
            raise MdlmError(f"TrainConfig.device must be a name like 'cuda', 'cpu' or 'mps', or None, got "
                            f"{self.device!r}")
        if self.init_from is not None and not isinstance(self.init_from, (str, os.PathLike)):
            raise MdlmError(f"TrainConfig.init_from must be a checkpoint's path or None, got {self.init_from!r}")
        get_schedule(self.schedule)   # raises for an unknown name

    @classmethod
    def from_dict(cls, saved: dict) -> "TrainConfig":
        """A TrainConfig from a checkpoint's train_config. Files written before the rename say
        `antithetic`; it is read as `stratified`, with a note."""
        saved = dict(saved)
        if "antithetic" in saved:
            warnings.warn("train_config field 'antithetic' is now called 'stratified' (it is stratified "
                          "sampling, not antithetic); read as such", DeprecationWarning, stacklevel=2)
            saved.setdefault("stratified", saved.pop("antithetic"))
            saved.pop("antithetic", None)
        unknown = sorted(set(saved) - {f.name for f in fields(cls)})
        if unknown:
            raise MdlmError(f"train_config has unknown fields {unknown}: the checkpoint is from another version of "
                            "mdlm_course, or was edited")
        return cls(**saved)



TRAIN_PRESETS = {
    # tests and quick mode: 16 x 64 tokens per step, seconds on any CPU
    "tiny": TrainConfig(batch_size=16, max_steps=200, lr=3e-3, min_lr=3e-4, warmup_steps=20,
                        eval_interval=50, eval_windows=16, log_interval=1, ckpt_interval=50),
    # a laptop CPU: 16 x 256 = 4,096 tokens per step (the shipped checkpoint's recipe: checkpoints/README.md)
    "cpu": TrainConfig(batch_size=16, max_steps=3000, lr=2e-3, min_lr=2e-4, warmup_steps=100,
                       eval_interval=100, eval_windows=64, log_interval=5, ckpt_interval=100),
    # one GPU: 64 x 512 = 32,768 tokens per step, compiled, EMA of the weights as in the MDLM paper
    "gpu": TrainConfig(batch_size=64, max_steps=10000, lr=1e-3, min_lr=1e-4, warmup_steps=500,
                       ema_decay=0.9999, compile=True, eval_interval=500, eval_windows=128,
                       log_interval=20, ckpt_interval=1000),
}

# Settings that may change when a run is resumed (train longer, log more often, another machine).
# Anything else (lr, batch size, seed, schedule, ...) must match, or the resumed curve would lie.
RESUMABLE_CHANGES = {"max_steps", "eval_interval", "log_interval", "ckpt_interval", "compile", "device", "dtype"}

PRESET_TABLES = {"model": PRESETS, "train": TRAIN_PRESETS}
