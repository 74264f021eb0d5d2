"""mdlm_course: masked diffusion language models from scratch.

Read the modules in the order of the course's chapters: tokenizer (1) -> diffusion, the forward process (2)
-> model (3) -> diffusion, the NELBO (4) -> optim, train (5) -> sampling (6) -> visualize (7) -> evaluate,
ar (8). learning_guide.md is the text that goes with them.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .config import QUICK  # noqa: E402  (quick mode: tiny configs, so that CI runs every notebook in seconds)
from .device import get_device  # noqa: E402
from .data import load_text, split_text, DataError  # noqa: E402
from .tokenizer import BPETokenizer  # noqa: E402
from .model import ModelConfig, MDLM, PRESETS  # noqa: E402
from .diffusion import (  # noqa: E402
    Schedule, LogLinearSchedule, CosineSchedule, SCHEDULES, get_schedule,
    q_sample, subs_log_probs, masked_nll, nelbo, nelbo_terms, discrete_elbo,
)
from .sampling import sample, denoise  # noqa: E402
from .checkpoint import load_pretrained  # noqa: E402
from .train import TrainConfig, train  # noqa: E402

__all__ = ["QUICK", "get_device", "load_text", "split_text", "DataError", "BPETokenizer",
           "ModelConfig", "MDLM", "PRESETS", "Schedule", "LogLinearSchedule", "CosineSchedule", "SCHEDULES",
           "get_schedule", "q_sample", "subs_log_probs", "masked_nll", "nelbo", "nelbo_terms", "discrete_elbo",
           "load_pretrained", "TrainConfig", "train", "sample", "denoise"]
