"""Checkpoints: safetensors for tensors, JSON for everything else, written so a crash never leaves a broken one.

A checkpoint is a directory, one per saved step, inside a run directory:

    runs/shakespeare-cpu/
        step-000400/
            model.safetensors    the weights of the *uncompiled*, unwrapped module (no `_orig_mod.`, no `module.`)
            state.safetensors    optimizer moments, EMA weights, RNG tensors (only for resuming training)
            tokenizer.json       the tokenizer, in its own file format (BPETokenizer.load reads it)
            meta.json            format + version, model config, train config, step, val NELBO, history,
                                 optimizer hyper-parameters, grad-scaler state, the RNG states of python and
                                 numpy, the byte size + sha256 of each file above, and "meta_sha256": the
                                 sha256 of meta.json itself without that key (meta_sha256()).  Written last.
        step-000500/ ...

Writing is atomic at the level of the directory:
    1. write every file into a hidden temporary directory `.tmp-step-000500-<pid>` and fsync each one;
    2. fsync the temporary directory, then rename it to `step-000500` (a rename within one file system is
       atomic: a reader sees the old set of checkpoints or the new one, never half a directory);
    3. fsync the run directory so the rename itself survives a power cut;
    4. retire the directories that are neither the latest nor the best: rename to `.trash-...`, then delete.
A process killed at any moment leaves only complete `step-*` directories (plus hidden leftovers that are
ignored and cleaned up next time). While a training writes into a run directory it holds `.lock` there
(run_lock: its process id and command), so a second training into the same folder is refused; a lock whose
process is gone (a killed run) is taken over. Loading re-checks each file's size and sha256 against meta.json, and
meta.json against its own meta_sha256, so a file truncated or altered later (a full disk, a bad copy, a
hand edit) gives a one-line CheckpointError. So does a meta.json whose fields have the wrong type
(check_meta: a small schema), or weights that hold NaN or inf.
Checkpoints written before meta_sha256 existed (the shipped ones) have no such key; they load, unhashed.

    latest = the step-* directory with the highest step;  best = the one with the lowest val NELBO.

Loading uses only safetensors and json (no pickle): a checkpoint cannot run code on your machine.
"""
from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import random
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import COURSE_HOME, RESUMABLE_CHANGES, TrainConfig
from .device import get_device
from .errors import MdlmError
from .fileio import atomic_write_text
from .model import MDLM, ModelConfig, unwrap
from .tokenizer import BPETokenizer

FORMAT = "mdlm_course.checkpoint"
FORMAT_VERSION = 1
STEP_DIR = re.compile(r"^step-(\d+)$")
MODEL_FILE, STATE_FILE = "model.safetensors", "state.safetensors"
TOKENIZER_FILE, META_FILE = "tokenizer.json", "meta.json"


class CheckpointError(MdlmError):
    """A checkpoint that cannot be used. The message is one line and says what to do."""


class CheckpointSaveError(CheckpointError):
    """Saving failed twice; the run was written to a fallback folder, which the message names."""


# ---------------------------------------------------------------------------------------------
# Small pieces: unwrap a module, fsync, hash
# ---------------------------------------------------------------------------------------------

def _storage_key(tensor: torch.Tensor) -> tuple:
    return tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape)


def state_dict_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The unwrapped module's state_dict, contiguous and on the CPU, each tensor stored once.

    A tied head (`head.weight` is `tok_emb.weight`) is saved under its first name only (safetensors refuses
    two names that share memory, and a copy would cost 4 MB in the shipped checkpoint); load_model_state
    fills the alias back in, and the module's shared Parameter ties them again.
    """
    out, seen = {}, set()
    for name, tensor in unwrap(model).state_dict().items():
        if _storage_key(tensor) in seen:
            continue                                                # an alias of a tensor already stored
        seen.add(_storage_key(tensor))
        out[name] = tensor.detach().to("cpu").contiguous()
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
    atomic_write_text(path, json.dumps(doc, indent=1, allow_nan=False))   # fsynced, never half-written


def meta_sha256(meta: dict) -> str:
    """sha256 of meta.json's content without its own "meta_sha256" key, in a canonical form (sorted keys, no
    spaces), so that the same document always hashes the same, however it was indented."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def save_checkpoint(run_dir: str | Path, *, model: torch.nn.Module, step: int, train_config: dict | None = None,
                    tokenizer=None, optimizer: torch.optim.Optimizer | None = None, scaler=None,
                    ema_model: torch.nn.Module | None = None, metrics: dict | None = None,
                    history: dict | None = None, data: dict | None = None, keep: bool = True) -> Path:
    """Write run_dir/step-{step:06d}/ atomically and return its path. See the module docstring.

    model: the (possibly compiled / DDP-wrapped) model; its unwrapped state_dict is saved and its
    `.config.to_dict()` recorded. optimizer/scaler/ema_model: saved for resuming when given.
    The weights must be finite (FloatingPointError otherwise).
    metrics: e.g. {"val_nelbo": 5.1, "val_bpb": 2.3}; "val_nelbo" (an AR twin's "val_nll") decides which
    checkpoint is the best.
    data: {"path", "sha256"} of the training text (TokenData.source), the default text of `eval`.
    keep=True: afterwards delete every checkpoint that is neither the latest nor the best.
    """
    _check_save_args(run_dir, model, step, metrics, history, optimizer=optimizer, ema_model=ema_model,
                     tokenizer=tokenizer)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:06d}"
    tmp = run_dir / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        final = _write_checkpoint(tmp, run_dir / name, model=model, step=step, train_config=train_config,
                                  tokenizer=tokenizer, optimizer=optimizer, scaler=scaler, ema_model=ema_model,
                                  metrics=metrics, history=history, data=data)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)                      # never a .tmp-step left behind
        raise
    _fsync_dir(run_dir)
    if keep:
        prune(run_dir)
    return final


def _check_save_args(run_dir, model, step, metrics, history, *, optimizer, ema_model, tokenizer) -> None:
    """save_checkpoint's door: a folder's path, a model with a config, a step int >= 0, finite metrics, a history
    of lists, and an optimizer, EMA model and tokenizer of the right kind (or None)."""
    for name, value, kind, want in (("optimizer", optimizer, torch.optim.Optimizer, "a torch.optim.Optimizer"),
                                    ("ema_model", ema_model, torch.nn.Module, "an nn.Module (the EMA weights)"),
                                    ("tokenizer", tokenizer, BPETokenizer, "a BPETokenizer")):
        if value is not None and not isinstance(value, kind) and not (name == "tokenizer" and hasattr(value, "save")):
            raise MdlmError(f"save_checkpoint: {name} must be {want} or None, got {type(value).__name__}")
    if not isinstance(run_dir, (str, os.PathLike)):
        raise MdlmError(f"save_checkpoint: run_dir must be a folder's path (str or Path), got {type(run_dir).__name__}")
    if not isinstance(model, torch.nn.Module) or not hasattr(unwrap(model), "config"):
        raise MdlmError(f"save_checkpoint needs model=an MDLM (a module with a .config), got {type(model).__name__}")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise MdlmError(f"save_checkpoint: step must be an int >= 0 (the optimizer steps done), got {step!r}")
    if metrics is not None and not (isinstance(metrics, dict) and all(
            isinstance(k, str) and (v is None or (_is_number(v) and math.isfinite(v))) for k, v in metrics.items())):
        raise MdlmError(f"save_checkpoint: metrics must be a dict of finite numbers (or None values), e.g. "
                        f"{{'val_nelbo': 5.1}}, got {_short(metrics)}")
    if history is not None and not (isinstance(history, dict) and all(isinstance(v, list) for v in history.values())):
        raise MdlmError(f"save_checkpoint: history must be a dict of lists (TrainResult.history) or None, "
                        f"got {_short(history)}")


def _write_checkpoint(tmp: Path, final: Path, *, model, step, train_config, tokenizer, optimizer, scaler, ema_model,
                      metrics, history, data) -> Path:
    """save_checkpoint's steps 1-2: every file into tmp, fsynced, then tmp renamed to final."""
    raw = unwrap(model)
    weights = state_dict_for_saving(raw)
    for k, v in weights.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
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
        "data": data,
        "torch_version": torch.__version__,
        "files": files,
    }
    meta["meta_sha256"] = meta_sha256(meta)   # so an edited meta.json is caught, as an edited weight file is
    _write_json(tmp / META_FILE, meta)   # the manifest, written last
    _fsync_dir(tmp)

    if final.exists():   # a stale directory of the same step (from a run that was resumed from an earlier one)
        _retire(final)
    os.rename(tmp, final)
    return final


def check_writable(folder: str | Path) -> None:
    """Create `folder` if needed, then write and remove a probe file: a CheckpointError now, in one line,
    rather than a traceback when the first checkpoint is due (after an hour of training)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        reason = "a file is in the way" if isinstance(e, (FileExistsError, NotADirectoryError)) else e.strerror
        raise CheckpointError(f"{folder}: cannot write there ({reason}); choose another folder (--out, "
                              "--cache-dir)") from None


LOCK_FILE = ".lock"   # in a run directory while a training writes there (run_lock)
_HELD: dict[str, int] = {}   # the locks this process holds -> the thread that holds each
_HELD_GUARD = threading.Lock()


def _lock_owner(lock: Path) -> dict | None:
    """The owner recorded in a lock file ({pid, host, started, command}); None if there is no lock, {} if it
    cannot be read (then it is stale: a lock is written whole)."""
    try:
        owner = json.loads(lock.read_text(encoding="utf-8"))
        return owner if isinstance(owner, dict) and _is_int(owner.get("pid")) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True   # another user's process: alive
    return True


def _create_exclusively(src: Path, dst: Path) -> None:
    """dst with src's content, or FileExistsError if dst exists: a hard link (whole at once), else O_EXCL."""
    try:
        os.link(src, dst)
    except FileExistsError:
        raise
    except OSError:                                                 # a file system without hard links
        fd = os.open(dst, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        with os.fdopen(fd, "wb") as f:
            f.write(src.read_bytes())


@contextmanager
def run_lock(run_dir: str | Path):
    """Hold run_dir/.lock while a training writes checkpoints there, so that two trainings can never share a run
    directory (each would prune or overwrite the other's checkpoints). A second one gets a one-line
    CheckpointError naming the first (another thread of this process too); a lock left by a process that no
    longer runs (killed) is taken over with a warning. Re-entrant within one thread (train_on_text takes it,
    then train() again)."""
    run_dir = Path(run_dir)
    check_writable(run_dir)
    lock = run_dir / LOCK_FILE
    key = str(lock.resolve())
    if _HELD.get(key) == threading.get_ident():
        yield lock                                                  # this thread holds it already (nested)
        return
    with _HELD_GUARD:                                               # one thread of this process at a time
        _acquire(run_dir, lock, key)
        _HELD[key] = threading.get_ident()
    try:
        yield lock
    finally:
        with _HELD_GUARD:
            del _HELD[key]
            if (_lock_owner(lock) or {}).get("pid") == os.getpid():
                lock.unlink()


def _acquire(run_dir: Path, lock: Path, key: str) -> None:
    """Create the lock file with this process's id, taking over a stale one; CheckpointError if it is held."""
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(3):
        owner = _lock_owner(lock)
        if owner is not None:
            if not owner:
                alive = False                                       # unreadable: a lock is written whole
            elif owner.get("pid") == me["pid"] and owner.get("host") == me["host"]:
                alive = key in _HELD                                # another thread of this process
            else:
                alive = owner.get("host") != me["host"] or _process_alive(owner["pid"])
            if alive:
                raise CheckpointError(
                    f"{run_dir} is in use by another training (process {owner.get('pid')} on {owner.get('host')}, "
                    f"started {owner.get('started', '?')}: {str(owner.get('command', '?'))[:120]}); wait for it to "
                    f"finish or choose another --out (if that run is over, delete {lock})")
            print(f"warning: {lock}: taking over the lock of process {owner.get('pid')}, which no longer runs",
                  file=sys.stderr)
            try:
                os.rename(lock, run_dir / f".lock-stale-{os.getpid()}")
                os.unlink(run_dir / f".lock-stale-{os.getpid()}")
            except FileNotFoundError:
                pass                                                # another process took it over first
        tmp = run_dir / f".lock-new-{os.getpid()}"
        by_cli = bool(sys.argv) and sys.argv[0].endswith("__main__.py")   # python -m mdlm_course ...
        command = " ".join(["python -m mdlm_course", *sys.argv[1:]] if by_cli else sys.argv)
        tmp.write_text(json.dumps({**me, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": command[:200]}),
                       encoding="utf-8")
        try:
            _create_exclusively(tmp, lock)                          # atomic: fails if a lock exists
            return
        except FileExistsError:
            continue
        finally:
            tmp.unlink()
    raise CheckpointError(f"{run_dir}: could not take the lock {lock}; choose another --out")


def check_not_in_checkpoint(out: str | Path) -> None:
    """A CheckpointError when `out` is a checkpoint folder or lies inside one: a run written there would sit
    inside another checkpoint, and pruning one would delete the other."""
    out = Path(out).resolve()
    for folder in (out, *out.parents):
        if (folder / META_FILE).is_file() and (folder / MODEL_FILE).is_file():
            raise CheckpointError(f"{out}: inside the checkpoint folder {folder}; choose an --out outside every "
                                  "checkpoint (e.g. runs/NAME)")


def check_has_optimizer(ckpt: str | Path, meta: dict) -> None:
    """A CheckpointError when a checkpoint cannot be resumed: an exported one holds no optimizer state, and
    continuing it with a fresh optimizer would not continue the run."""
    if meta.get("optimizer") is None:
        raise CheckpointError(f"cannot resume from {ckpt}: it holds no optimizer state (an exported checkpoint, for "
                              f"sampling); start a new run from its weights: --init-from {ckpt} --out NEW_DIR")


def check_same_data(ckpt: str | Path, saved: dict | None, now: dict | None) -> None:
    """A CheckpointError when a run is resumed on another text than the one it was trained on (by sha256)."""
    if not (isinstance(saved, dict) and isinstance(now, dict) and saved.get("sha256") and now.get("sha256")):
        return                                                      # not recorded (older checkpoints): unknown
    if saved["sha256"] != now["sha256"]:
        raise CheckpointError(f"cannot resume from {ckpt}: it was trained on {saved.get('path')}, but --data "
                              f"{now.get('path')} is another text (its sha256 differs); resume with --data "
                              f"{saved.get('path')}, or train on the new text in a new --out (--init-from to "
                              "start from these weights)")


def save_checkpoint_safely(run_dir: str | Path, **kwargs) -> Path:
    """save_checkpoint(run_dir, **kwargs), and the run is never lost to a failed save.

    On an error (disk full, folder removed, no permission): say what failed and retry once. If the retry
    fails too, write the checkpoint to a fallback folder in the system's temporary directory and raise
    CheckpointSaveError naming it (the CLI exits non-zero). The weights stay in memory throughout.
    """
    for attempt in (1, 2):
        try:
            return save_checkpoint(run_dir, **kwargs)
        except (OSError, RuntimeError, SafetensorError) as e:
            error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            print(f"warning: saving a checkpoint to {run_dir} failed ({error})"
                  + ("; retrying once" if attempt == 1 else ""), file=sys.stderr)
    fallback = Path(tempfile.gettempdir()) / f"mdlm_course-rescue-{os.getpid()}"
    path = save_checkpoint(fallback, **kwargs)
    raise CheckpointSaveError(f"could not write a checkpoint to {run_dir} ({error}); the run was saved to {path} "
                              f"instead: continue it with --out {fallback} --resume")


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
        metrics = json.loads((ckpt / META_FILE).read_text())["metrics"]
        value = metrics.get("val_nelbo", metrics.get("val_nll"))     # an MDLM's NELBO, an AR twin's NLL
        value = float("inf") if value is None else float(value)
        return value if math.isfinite(value) else float("inf")      # a NaN metric is never the best
    except (OSError, ValueError, KeyError, AttributeError, TypeError, RecursionError):
        return float("inf")   # an unreadable meta.json is never the best; loading it says what is wrong


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
    if not isinstance(path, (str, os.PathLike)):
        raise CheckpointError(f"a checkpoint path must be a str or Path, got {type(path).__name__} {_short(path)}")
    path = Path(path)
    if which not in ("best", "latest"):
        raise MdlmError(f"which must be 'best' or 'latest', got {which!r}")
    if (path / META_FILE).exists():
        return path
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint or run directory; train one with "
                              "`python -m mdlm_course train --out DIR` or check the path")
    if not path.is_dir():
        raise CheckpointError(f"{path}: a file, not a checkpoint; give its folder (a step-* directory or a run "
                              "directory)")
    ckpts = list_checkpoints(path)
    if not ckpts:
        raise CheckpointError(f"{path}: no checkpoint in this directory (no step-*/meta.json); "
                              "train one with `python -m mdlm_course train --out DIR`")
    return ckpts[-1] if which == "latest" else min(ckpts, key=_val_nelbo)


def read_meta(ckpt: str | Path, *, verify: bool = True) -> dict:
    """meta.json of a checkpoint directory, checked: format, version, its own hash, its fields' types
    (check_meta), and each file's size and sha256 (verify=False: size only)."""
    ckpt = Path(ckpt)
    meta_path = ckpt / META_FILE
    if not meta_path.exists():
        raise CheckpointError(f"{ckpt}: not a checkpoint (no {META_FILE}); point to a step-* directory "
                              "or a run directory")
    if not meta_path.is_file():   # a folder, or a FIFO that would block read_text() forever
        raise CheckpointError(f"{meta_path}: not a regular file, so not a checkpoint file; use another checkpoint")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except RecursionError:
        raise CheckpointError(f"{meta_path}: not a checkpoint file (JSON nested too deeply); "
                              "use another checkpoint") from None
    except ValueError as e:   # JSONDecodeError, UnicodeDecodeError, an int of more than 4300 digits
        raise CheckpointError(f"{meta_path}: corrupt or truncated, not a checkpoint file "
                              f"({str(e).splitlines()[0]}); use another checkpoint") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path}: not an mdlm_course checkpoint (no \"format\": \"{FORMAT}\")")
    if meta.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{meta_path}: checkpoint format version {meta.get('version')!r}, this code reads "
                              f"version {FORMAT_VERSION}; use a matching mdlm_course version")
    if "meta_sha256" in meta:   # absent in checkpoints written before it existed: those load unhashed
        try:
            same = meta["meta_sha256"] == meta_sha256(meta)
        except (TypeError, ValueError):   # unhashable content: it was not written by save_checkpoint
            same = False
        if not same:
            raise CheckpointError(f"{meta_path}: altered (its content differs from its meta_sha256); "
                                  "use another checkpoint, or an unedited copy")
    check_meta(meta, meta_path)
    for fname, info in meta["files"].items():
        path = ckpt / fname
        if not path.is_file():
            raise CheckpointError(f"{path}: missing from the checkpoint; it is incomplete, use another one")
        if not os.access(path, os.R_OK):
            raise CheckpointError(f"{path}: cannot be read (permission denied); fix its permissions (chmod u+r)")
        size = path.stat().st_size
        if size != info["bytes"]:
            raise CheckpointError(f"{path}: truncated or altered ({size} bytes, expected {info['bytes']}); "
                                  "use another checkpoint")
        if verify and _sha256(path) != info["sha256"]:
            raise CheckpointError(f"{path}: corrupt (sha256 differs from {META_FILE}); use another checkpoint")
    if MODEL_FILE not in meta["files"]:
        raise CheckpointError(f"{meta_path}: lists no {MODEL_FILE}; the checkpoint is incomplete")
    folder = STEP_DIR.match(ckpt.name)
    if folder and int(folder.group(1)) != meta["step"]:
        raise CheckpointError(f"{meta_path}: says step {meta['step']} inside the folder {ckpt.name}; the checkpoint "
                              "was edited or moved, use another one")
    return meta


# The schema of meta.json: field -> (what it must be, a test). Loading checks it, so that a hand-edited or
# foreign meta.json gives one line naming the field, never a KeyError or TypeError later, mid-resume.
_MISSING = object()


def _short(value) -> str:
    """repr(value), cut to 60 characters for a one-line message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(x, lo=None) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and (lo is None or x >= lo)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_dict_or_none(x) -> bool:
    return x is None or isinstance(x, dict)


def _is_base64_of(x, n_bytes: int) -> bool:
    try:
        return isinstance(x, str) and len(base64.b64decode(x, validate=True)) == n_bytes
    except ValueError:
        return False


_META_SCHEMA = {
    "step": ("an int >= 0", lambda x: _is_int(x, 0)),
    "model_config": ("an object of ModelConfig fields", lambda x: isinstance(x, dict)),
    "train_config": ("an object or null", _is_dict_or_none),
    "metrics": ("an object of finite numbers", lambda x: isinstance(x, dict) and all(
        v is None or (_is_number(v) and math.isfinite(v)) for v in x.values())),
    "has_ema": ("true or false", lambda x: isinstance(x, bool)),
    "optimizer": ("null or an object with param_groups (a list) and scalars (an object)", lambda x: x is None or (
        isinstance(x, dict) and isinstance(x.get("param_groups"), list) and isinstance(x.get("scalars"), dict))),
    "grad_scaler": ("an object or null", _is_dict_or_none),
    "rng": ("an object with the python and numpy random states", lambda x: isinstance(x, dict)),
    "rng.python": ("{version: int, internal: 625 ints, gauss: a number or null}", lambda x: isinstance(x, dict)
                   and _is_int(x.get("version")) and isinstance(x.get("internal"), list)
                   and len(x["internal"]) == 625 and all(_is_int(i, 0) for i in x["internal"])
                   and (x.get("gauss") is None or _is_number(x.get("gauss")))),
    "rng.numpy": ("{name: str, keys: base64 of 624 uint32, pos: int, has_gauss: int, cached_gaussian: number}",
                  lambda x: isinstance(x, dict) and isinstance(x.get("name"), str)
                  and _is_base64_of(x.get("keys"), 624 * 4) and _is_int(x.get("pos"), 0)
                  and _is_int(x.get("has_gauss"), 0) and _is_number(x.get("cached_gaussian"))),
    "history": ("null or an object of lists", lambda x: x is None or (
        isinstance(x, dict) and all(isinstance(v, list) for v in x.values()))),
    "files": (f"an object mapping {MODEL_FILE}, {STATE_FILE}, {TOKENIZER_FILE} to {{bytes, sha256}}",
              lambda x: isinstance(x, dict) and all(
                  name in (MODEL_FILE, STATE_FILE, TOKENIZER_FILE) and isinstance(info, dict)
                  and _is_int(info.get("bytes"), 0) and isinstance(info.get("sha256"), str)
                  and len(info["sha256"]) == 64 for name, info in x.items())),
}


def check_meta(meta: dict, where: str | Path = META_FILE) -> None:
    """A one-line CheckpointError naming the first field of meta.json that is missing or of the wrong type.

    check_meta({..., "step": "7"}) -> CheckpointError: meta.json: field "step" must be an int >= 0, got '7'; ...
    model_config must build a ModelConfig (unknown fields and out-of-range values are named too).
    """
    for field, (want, ok) in _META_SCHEMA.items():
        head, _, tail = field.partition(".")
        value = meta.get(head, _MISSING)
        if tail and isinstance(value, dict):
            value = value.get(tail, _MISSING)
        elif tail:
            continue   # the parent's own check has failed already
        if value is _MISSING or not ok(value):
            got = "nothing (missing)" if value is _MISSING else _short(value)
            raise CheckpointError(f"{where}: field \"{field}\" must be {want}, got {got}; the checkpoint is "
                                  "damaged or was edited, use another one")
    config = meta["model_config"]
    known = {f.name: f for f in fields(ModelConfig)}
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise CheckpointError(f"{where}: field \"model_config\" has unknown fields {unknown}; the checkpoint is from "
                              "another version of mdlm_course, or was edited")
    for name, value in config.items():
        if isinstance(known[name].default, bool) and not isinstance(value, bool):
            raise CheckpointError(f"{where}: field \"model_config.{name}\" must be true or false, got {_short(value)}; "
                                  "the checkpoint is damaged or was edited, use another one")
        if isinstance(known[name].default, int) and not isinstance(known[name].default, bool) and not _is_int(value):
            raise CheckpointError(f"{where}: field \"model_config.{name}\" must be an int, got {_short(value)}; "
                                  "the checkpoint is damaged or was edited, use another one")
    try:
        ModelConfig(**config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: field \"model_config\" does not make a ModelConfig "
                              f"({str(e).splitlines()[0]}); the checkpoint is damaged or was edited") from None
    _check_meta_extras(meta, where)


def _check_meta_extras(meta: dict, where) -> None:
    """check_meta's fields beyond the schema: "data" (optional), the history's list lengths, train_config."""
    def bad(field: str, want: str, got) -> CheckpointError:
        return CheckpointError(f"{where}: field \"{field}\" must be {want}, got {_short(got)}; the checkpoint is "
                               "damaged or was edited, use another one")

    data = meta.get("data")
    if data is not None and not (isinstance(data, dict) and isinstance(data.get("path"), str)
                                 and isinstance(data.get("sha256"), str)):
        raise bad("data", "null or {path: str, sha256: str}", data)
    history = meta["history"] or {}
    for group in (("step", "loss", "lr", "grad_norm", "tokens_per_s"), ("val_step", "val_nelbo", "val_nll", "val_bpb")):
        lengths = {k: len(history[k]) for k in group if k in history}
        if len(set(lengths.values())) > 1:
            raise bad("history", "lists of one length per group", lengths)
    if meta["train_config"] is not None:                           # its known fields (resuming refuses others)
        known = {f.name for f in fields(TrainConfig)} | {"antithetic"}
        try:
            objective = TrainConfig.from_dict({k: v for k, v in meta["train_config"].items() if k in known}).objective
        except (MdlmError, TypeError) as e:
            raise CheckpointError(f"{where}: field \"train_config\" does not make a TrainConfig "
                                  f"({str(e).splitlines()[0]}); the checkpoint is damaged or was edited") from None
        causal = meta["model_config"].get("causal", False) if isinstance(meta["model_config"], dict) else None
        if causal is not (objective == "ar"):                       # the AR twin is causal, an MDLM is not
            raise bad("model_config.causal", f"{objective == 'ar'} for a run of objective {objective!r}", causal)


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
        ema = {k[len("ema/"):]: v for k, v in self.state.items() if k.startswith("ema/")}
        if not ema:
            raise CheckpointError(f"{self.path}: meta.json says has_ema but {STATE_FILE} holds no EMA weights; the "
                                  "checkpoint is damaged or was edited (load_pretrained(path, ema=False) reads the "
                                  "raw weights)")
        return ema

    def restore_rng(self) -> None:
        set_rng_state({k: v for k, v in self.state.items() if k.startswith("rng/")}, self.meta["rng"])

    def tokenizer(self):
        path = self.path / TOKENIZER_FILE
        return BPETokenizer.load(path) if path.exists() else None


def load_checkpoint(path: str | Path, which: str = "latest", *, verify: bool = True) -> Checkpoint:
    """Load a checkpoint directory (or a run's latest / best) into CPU tensors. CheckpointError if unusable."""
    ckpt = find_checkpoint(path, which)
    meta = read_meta(ckpt, verify=verify)
    model_state = _load_tensors(ckpt / MODEL_FILE)
    state = _load_tensors(ckpt / STATE_FILE) if STATE_FILE in meta["files"] else {}
    _check_finite(ckpt / MODEL_FILE, model_state)       # as save_checkpoint refuses to write them
    _check_finite(ckpt / STATE_FILE, {k: v for k, v in state.items() if k.startswith("ema/")})
    return Checkpoint(ckpt, meta, model_state, state)


def _check_finite(path: Path, weights: dict[str, torch.Tensor]) -> None:
    """A CheckpointError naming the first floating-point tensor that holds NaN or inf."""
    for name, tensor in weights.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{path}: weight {name!r} holds NaN or inf, so the model would only sample "
                                  "[MASK]; use an earlier checkpoint")


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str = "checkpoint") -> None:
    """load_state_dict with a one-line error naming the first missing / unexpected / mis-shaped key."""
    model = unwrap(model)
    expected = model.state_dict()
    first_name: dict[tuple, str] = {}
    state = dict(state)
    for name, tensor in expected.items():                           # tied aliases are saved once: fill them in
        first = first_name.setdefault(_storage_key(tensor), name)
        if name not in state and first in state:
            state[name] = state[first]
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


# The checkpoints that ship with the course (checkpoints/README.md says how they were trained).
CHECKPOINTS = COURSE_HOME / "checkpoints"
SHIPPED = {"mdlm": CHECKPOINTS / "shakespeare-mdlm", "ar": CHECKPOINTS / "shakespeare-ar"}


def find_shipped_checkpoint(kind: str = "mdlm") -> Path | None:
    """The shipped checkpoint of this kind ("mdlm" or "ar"), else the first usable one under checkpoints/
    (for kind "mdlm"); None when there is none. A broken folder is skipped with a warning."""
    candidates = [SHIPPED[kind]]
    if kind == "mdlm" and CHECKPOINTS.is_dir():
        candidates += sorted(p for p in CHECKPOINTS.iterdir() if p.is_dir() and p not in SHIPPED.values())
    for folder in candidates:
        if not folder.is_dir():
            continue
        try:
            ckpt = find_checkpoint(folder)
            read_meta(ckpt, verify=False)
            return ckpt
        except CheckpointError as e:
            print(f"warning: skipping {folder}: {e}", file=sys.stderr)
    return None


def load_pretrained(path: str | Path | None = None, *, which: str = "best", device: str | torch.device | None = "cpu",
                    ema: bool = True):
    """(model, tokenizer, meta) from a checkpoint or a run directory, ready for sampling.

    load_pretrained()                          -> the shipped Shakespeare MDLM (checkpoints/shakespeare-mdlm)
    model = load_pretrained("runs/shakespeare-cpu")[0]  ->  MDLM in eval() mode on `device`.
    Uses the EMA weights when the checkpoint has them (ema=False: the raw weights). The tokenizer is
    None when the run had none (synthetic data). Weights stored in bf16 are loaded as float32.
    """
    if device is not None:
        device = get_device(str(device))                            # an unknown or absent device: one line
    if path is None:
        path = find_shipped_checkpoint()
        if path is None:
            raise CheckpointError(f"no shipped checkpoint under {CHECKPOINTS}; run `make checkpoint` to train it, "
                                  "or pass a path")
    ck = load_checkpoint(path, which)
    try:
        config = ModelConfig(**ck.meta["model_config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{ck.path}: model config does not fit this code's ModelConfig ({e})") from None
    model = MDLM(config)
    weights = ck.ema_state() if ema and ck.meta.get("has_ema") else ck.model_state
    load_model_state(model, {k: v.float() if v.is_floating_point() else v for k, v in weights.items()},
                     str(ck.path))
    model.to(device).eval()
    return model, ck.tokenizer(), ck.meta


def export_for_shipping(src: str | Path, dst: str | Path, *, which: str = "best") -> Path:
    """Copy a checkpoint's weights (its EMA weights when it has them), tokenizer, configs, metrics and history
    into dst/step-N/, without the optimizer state: what ships in checkpoints/. Returns the new directory.
    dst must hold no checkpoint yet (exporting into a run would replace or prune the run's own)."""
    if not isinstance(dst, (str, os.PathLike)):
        raise CheckpointError(f"dst must be a folder's path (str or Path), got {type(dst).__name__}")
    check_not_in_checkpoint(dst)
    if list_checkpoints(dst):
        raise CheckpointError(f"{dst}: already holds checkpoints ({list_checkpoints(dst)[-1].name}); export into a "
                              "new folder, so that none of them is replaced or pruned")
    ck = load_checkpoint(src, which)
    model = MDLM(ModelConfig(**ck.meta["model_config"]))
    weights = ck.ema_state() if ck.meta.get("has_ema") else ck.model_state
    load_model_state(model, weights, str(ck.path))
    return save_checkpoint(dst, model=model, step=ck.step, train_config=ck.meta.get("train_config"),
                           tokenizer=ck.tokenizer(), metrics=ck.meta.get("metrics"), history=ck.meta.get("history"),
                           data=ck.meta.get("data"))


def check_resumable(ck: "Checkpoint", model: torch.nn.Module, config: TrainConfig, tokenizer, *,
                    data: dict | None = None) -> None:
    """One-line CheckpointErrors when the run being resumed is not the one in the checkpoint (data: the text's
    {path, sha256}, which must match the one recorded)."""
    check_same_data(ck.path, ck.meta.get("data"), data)
    defaults = {f.name: f.default for f in fields(ModelConfig)}   # a field added since the save: its default
    saved, now = {**defaults, **ck.meta["model_config"]}, unwrap(model).config.to_dict()
    _refuse_differences(ck.path, "model config", saved, now, set(saved) | set(now),
                        "use the same model settings or a new output directory")
    try:
        saved_t = asdict(TrainConfig.from_dict(ck.meta.get("train_config") or {}))
    except MdlmError as e:                                          # a field this version does not know
        raise CheckpointError(f"cannot resume from {ck.path}: {e}") from None
    now_t = config.to_dict()
    _refuse_differences(ck.path, "train config", saved_t, now_t, set(now_t) - RESUMABLE_CHANGES,
                        f"only {', '.join(sorted(RESUMABLE_CHANGES))} may change on resume")
    saved_tok = ck.tokenizer()
    if tokenizer is not None and saved_tok is not None and (
            saved_tok.merges != tokenizer.merges or saved_tok.special_tokens != tokenizer.special_tokens):
        raise CheckpointError(f"cannot resume from {ck.path}: it was trained with a different tokenizer; "
                              "pass the checkpoint's tokenizer (load_checkpoint(path).tokenizer())")


def _refuse_differences(path: Path, what: str, saved: dict, now: dict, keys, hint: str) -> None:
    """A one-line CheckpointError naming every key of `keys` whose value differs between saved and now."""
    diff = [k for k in sorted(keys) if saved.get(k) != now.get(k)]
    if diff:
        k = diff[0]
        raise CheckpointError(f"cannot resume from {path}: {what} differs in {', '.join(diff)} (checkpoint "
                              f"{k}={saved.get(k)!r}, now {now.get(k)!r}); {hint}")


def init_weights(model: torch.nn.Module, path: str | Path, tokenizer=None) -> None:
    """Load the weights of checkpoint `path` into `model` (its EMA weights when it has them).

    Only the weights: optimizer, step and history start afresh. The shapes must match; `causal` and
    `dropout` may differ (an AR twin's weights start an MDLM: chapter 8).
    """
    ck = load_checkpoint(path, "best")
    saved_tok = ck.tokenizer()
    if tokenizer is not None and saved_tok is not None and saved_tok.merges != tokenizer.merges:
        raise CheckpointError(f"cannot start from {ck.path}: it was trained with a different tokenizer")
    weights = ck.ema_state() if ck.meta.get("has_ema") else ck.model_state
    load_model_state(model, {k: v.float() if v.is_floating_point() else v for k, v in weights.items()},
                     str(ck.path))
