"""Checkpoints: safetensors for tensors, JSON for everything else, written so a crash never leaves a broken one.

A checkpoint is a directory, one per saved step, inside a run directory:

    runs/shakespeare-cpu/
        step-000400/
            model.safetensors    the weights of the *uncompiled*, unwrapped module (no `_orig_mod.`, no `module.`)
            state.safetensors    optimizer moments, EMA weights, RNG tensors (only for resuming training)
            tokenizer.json       the tokenizer, in its own file format (BPETokenizer.load reads it)
            meta.json            format + version, model config, train config, step, val NELBO, history,
                                 optimizer hyper-parameters, grad-scaler state, the RNG states of python and
                                 numpy, and the byte size + sha256 of each file above.  Written last.
        step-000500/ ...

Writing is atomic at the level of the directory:
    1. write every file into a hidden temporary directory `.tmp-step-000500-<pid>` and fsync each one;
    2. fsync the temporary directory, then rename it to `step-000500` (a rename within one file system is
       atomic: a reader sees the old set of checkpoints or the new one, never half a directory);
    3. fsync the run directory so the rename itself survives a power cut;
    4. retire the directories that are neither the latest nor the best: rename to `.trash-...`, then delete.
A process killed at any moment leaves only complete `step-*` directories (plus hidden leftovers that are
ignored and cleaned up next time). Loading re-checks each file's size and sha256 against meta.json, so a
file truncated or altered later (a full disk, a bad copy) gives a one-line CheckpointError.

    latest = the step-* directory with the highest step;  best = the one with the lowest val NELBO.

Loading uses only safetensors and json (no pickle): a checkpoint cannot run code on your machine.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT = "mdlm_course.checkpoint"
FORMAT_VERSION = 1
STEP_DIR = re.compile(r"^step-(\d+)$")
MODEL_FILE, STATE_FILE = "model.safetensors", "state.safetensors"
TOKENIZER_FILE, META_FILE = "tokenizer.json", "meta.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used. The message is one line and says what to do."""


# ---------------------------------------------------------------------------------------------
# Small pieces: unwrap a module, fsync, hash
# ---------------------------------------------------------------------------------------------

def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside DistributedDataParallel (`.module`) and torch.compile (`._orig_mod`)."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def state_dict_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The unwrapped module's state_dict, contiguous and on the CPU, with tied tensors stored once each name.

    safetensors refuses two names that share memory, so a tied head (`head.weight` is `tok_emb.weight`)
    is saved as a copy under each name; load_state_dict re-ties them because the module shares the Parameter.
    """
    state = unwrap(model).state_dict()
    out, seen = {}, set()
    for name, tensor in state.items():
        t = tensor.detach().to("cpu")
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        out[name] = t.clone().contiguous() if key in seen else t.contiguous()
        seen.add(key)
    return out


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:   # some platforms (Windows) cannot open a directory; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# RNG states: torch CPU/CUDA as uint8 tensors (safetensors); python and numpy as base64 in JSON
# ---------------------------------------------------------------------------------------------

def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, json_able): every random-number generator training touches."""
    tensors = {"rng/torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/torch_cuda_{i}"] = s
    # python's state is a tuple of ints; numpy's a tuple (name, uint32 array, ints, float). Both are
    # stored as base64 of a fixed layout, never as a pickle.
    version, internal, gauss = random.getstate()
    py = {"version": version, "internal": list(internal), "gauss": gauss}
    name, keys, pos, has_gauss, cached = np.random.get_state()
    npy = {"name": name, "keys": base64.b64encode(np.asarray(keys, dtype=np.uint32).tobytes()).decode(),
           "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    return tensors, {"python": py, "numpy": npy}


def set_rng_state(tensors: dict[str, torch.Tensor], states: dict) -> None:
    """Undo rng_state(): restore torch (CPU, and CUDA when the device count matches), python and numpy."""
    torch.set_rng_state(tensors["rng/torch_cpu"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng/torch_cuda_"))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    py = states["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    npy = states["numpy"]
    keys = np.frombuffer(base64.b64decode(npy["keys"]), dtype=np.uint32)
    np.random.set_state((npy["name"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))


# ---------------------------------------------------------------------------------------------
# Optimizer state: tensors to safetensors, the rest (param groups, scalars) to JSON
# ---------------------------------------------------------------------------------------------

def _optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, per_param in sd["state"].items():
        for key, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"optim/{idx}/{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars[f"{idx}/{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_from_flat(tensors: dict[str, torch.Tensor], info: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim/"):
            _, idx, key = name.split("/", 2)
            state.setdefault(int(idx), {})[key] = value
    for name, value in info["scalars"].items():
        idx, key = name.split("/", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": info["param_groups"]}


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------

def _write_json(path: Path, doc: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, allow_nan=False)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(run_dir: str | Path, *, model: torch.nn.Module, step: int, train_config: dict | None = None,
                    tokenizer=None, optimizer: torch.optim.Optimizer | None = None, scaler=None,
                    ema_model: torch.nn.Module | None = None, metrics: dict | None = None,
                    history: dict | None = None, keep: bool = True) -> Path:
    """Write run_dir/step-{step:06d}/ atomically and return its path. See the module docstring.

    model: the (possibly compiled / DDP-wrapped) model; its unwrapped state_dict is saved and its
    `.config.to_dict()` recorded. optimizer/scaler/ema_model: saved for resuming when given.
    metrics: e.g. {"val_nelbo": 5.1, "val_bpb": 2.3}; "val_nelbo" decides which checkpoint is the best.
    keep=True: afterwards delete every checkpoint that is neither the latest nor the best.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:06d}"
    tmp = run_dir / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()

    raw = unwrap(model)
    weights = state_dict_for_saving(raw)
    for k, v in weights.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            shutil.rmtree(tmp)
            raise FloatingPointError(f"refusing to save step {step}: weight {k!r} holds NaN or inf")
    save_file(weights, tmp / MODEL_FILE, metadata={"format": FORMAT})

    state: dict[str, torch.Tensor] = {}
    rng_tensors, rng_json = rng_state()
    state.update(rng_tensors)
    optim_json = None
    if optimizer is not None:
        optim_tensors, optim_json = _optimizer_to_flat(optimizer)
        state.update(optim_tensors)
    if ema_model is not None:
        state.update({f"ema/{k}": v for k, v in state_dict_for_saving(ema_model).items()})
    save_file(state, tmp / STATE_FILE, metadata={"format": FORMAT})

    if tokenizer is not None:
        tokenizer.save(tmp / TOKENIZER_FILE)

    files = {}
    for fname in (MODEL_FILE, STATE_FILE, TOKENIZER_FILE):
        path = tmp / fname
        if path.exists():
            _fsync_file(path)
            files[fname] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "step": int(step),
        "model_config": raw.config.to_dict(),
        "train_config": train_config,
        "metrics": metrics or {},
        "has_ema": ema_model is not None,
        "optimizer": optim_json,
        "grad_scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng": rng_json,
        "history": history,
        "torch_version": torch.__version__,
        "files": files,
    }
    _write_json(tmp / META_FILE, meta)   # the manifest, written last
    _fsync_dir(tmp)

    final = run_dir / name
    if final.exists():   # a stale directory of the same step (from a run that was resumed from an earlier one)
        _retire(final)
    os.rename(tmp, final)
    _fsync_dir(run_dir)
    if keep:
        prune(run_dir)
    return final


def _retire(path: Path) -> None:
    """Delete a checkpoint directory so that no reader ever sees it half-deleted: rename, then remove."""
    trash = path.parent / f".trash-{path.name}-{os.getpid()}"
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The step-* directories of a run, oldest first (hidden .tmp-/.trash- leftovers are ignored)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if p.is_dir() and STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def _val_nelbo(ckpt: Path) -> float:
    try:
        value = json.loads((ckpt / META_FILE).read_text())["metrics"].get("val_nelbo")
    except (OSError, ValueError, KeyError, AttributeError):
        return float("inf")
    return float("inf") if value is None else float(value)


def prune(run_dir: str | Path) -> None:
    """Keep the latest and the best checkpoint, retire the others and any leftover temporary directories."""
    run_dir = Path(run_dir)
    ckpts = list_checkpoints(run_dir)
    if ckpts:
        keep = {ckpts[-1], min(ckpts, key=_val_nelbo)}
        for p in ckpts:
            if p not in keep:
                _retire(p)
    for p in run_dir.iterdir():
        if p.is_dir() and p.name.startswith((".tmp-", ".trash-")):
            shutil.rmtree(p, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

def find_checkpoint(path: str | Path, which: str = "best") -> Path:
    """A checkpoint directory: `path` itself if it holds meta.json, else the run's "best" or "latest"."""
    path = Path(path)
    if which not in ("best", "latest"):
        raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
    if (path / META_FILE).exists():
        return path
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint or run directory; train one with "
                              "`python -m mdlm_course train --out DIR` or check the path")
    ckpts = list_checkpoints(path)
    if not ckpts:
        raise CheckpointError(f"{path}: no checkpoint in this directory (no step-*/meta.json); "
                              "train one with `python -m mdlm_course train --out DIR`")
    return ckpts[-1] if which == "latest" else min(ckpts, key=_val_nelbo)


def read_meta(ckpt: str | Path, *, verify: bool = True) -> dict:
    """meta.json of a checkpoint directory, checked: format, version, and each file's size and sha256."""
    ckpt = Path(ckpt)
    meta_path = ckpt / META_FILE
    if not meta_path.exists():
        raise CheckpointError(f"{ckpt}: not a checkpoint (no {META_FILE}); point to a step-* directory "
                              "or a run directory")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{meta_path}: corrupt or truncated ({e}); use another checkpoint") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path}: not an mdlm_course checkpoint (no \"format\": \"{FORMAT}\")")
    if meta.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{meta_path}: checkpoint format version {meta.get('version')!r}, this code reads "
                              f"version {FORMAT_VERSION}; use a matching mdlm_course version")
    for fname, info in meta.get("files", {}).items():
        path = ckpt / fname
        if not path.exists():
            raise CheckpointError(f"{path}: missing from the checkpoint; it is incomplete, use another one")
        size = path.stat().st_size
        if size != info["bytes"]:
            raise CheckpointError(f"{path}: truncated or altered ({size} bytes, expected {info['bytes']}); "
                                  "use another checkpoint")
        if verify and _sha256(path) != info["sha256"]:
            raise CheckpointError(f"{path}: corrupt (sha256 differs from {META_FILE}); use another checkpoint")
    if MODEL_FILE not in meta.get("files", {}):
        raise CheckpointError(f"{meta_path}: lists no {MODEL_FILE}; the checkpoint is incomplete")
    return meta


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot be read as safetensors ({str(e).splitlines()[0]}); "
                              "use another checkpoint") from None


@dataclass
class Checkpoint:
    """Everything in one checkpoint directory, loaded (tensors on the CPU)."""
    path: Path
    meta: dict
    model_state: dict[str, torch.Tensor]
    state: dict[str, torch.Tensor]      # optim/*, ema/*, rng/*

    @property
    def step(self) -> int:
        return self.meta["step"]

    def optimizer_state(self) -> dict | None:
        return None if self.meta["optimizer"] is None else _optimizer_from_flat(self.state, self.meta["optimizer"])

    def ema_state(self) -> dict[str, torch.Tensor] | None:
        if not self.meta.get("has_ema"):
            return None
        return {k[len("ema/"):]: v for k, v in self.state.items() if k.startswith("ema/")}

    def restore_rng(self) -> None:
        set_rng_state({k: v for k, v in self.state.items() if k.startswith("rng/")}, self.meta["rng"])

    def tokenizer(self):
        from .tokenizer import BPETokenizer

        path = self.path / TOKENIZER_FILE
        return BPETokenizer.load(path) if path.exists() else None


def load_checkpoint(path: str | Path, which: str = "latest", *, verify: bool = True) -> Checkpoint:
    """Load a checkpoint directory (or a run's latest / best) into CPU tensors. CheckpointError if unusable."""
    ckpt = find_checkpoint(path, which)
    meta = read_meta(ckpt, verify=verify)
    model_state = _load_tensors(ckpt / MODEL_FILE)
    state = _load_tensors(ckpt / STATE_FILE) if STATE_FILE in meta["files"] else {}
    return Checkpoint(ckpt, meta, model_state, state)


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str = "checkpoint") -> None:
    """load_state_dict with a one-line error naming the first missing / unexpected / mis-shaped key."""
    model = unwrap(model)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and expected[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        if missing:
            detail = f"missing {missing[:3]}"
        elif unexpected:
            detail = f"unexpected {unexpected[:3]}"
        else:
            k = shapes[0]
            detail = f"{k} has shape {tuple(state[k].shape)}, the model wants {tuple(expected[k].shape)}"
        raise CheckpointError(f"{where}: weights do not fit this model ({detail}); build the model from the "
                              "checkpoint's config (load_pretrained does)")
    model.load_state_dict(state)


def load_pretrained(path: str | Path, *, which: str = "best", device: str | torch.device | None = "cpu",
                    ema: bool = True):
    """(model, tokenizer, meta) from a checkpoint or a run directory, ready for sampling.

    model = load_pretrained("runs/shakespeare-cpu")[0]  ->  MDLM in eval() mode on `device`.
    Uses the EMA weights when the checkpoint has them (ema=False: the raw weights). The tokenizer is
    None when the run had none (synthetic data).
    """
    from .model import MDLM, ModelConfig

    ck = load_checkpoint(path, which)
    try:
        config = ModelConfig(**ck.meta["model_config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{ck.path}: model config does not fit this code's ModelConfig ({e})") from None
    model = MDLM(config)
    weights = ck.ema_state() if ema and ck.meta.get("has_ema") else ck.model_state
    load_model_state(model, weights, str(ck.path))
    model.to(device).eval()
    return model, ck.tokenizer(), ck.meta
