"""Atomic writes (mdlm_course/fileio.py): a reader, or a crash, sees the old file or the new one, never half.

The helper that BPETokenizer.save, the token cache (data.encode_cached) and the checkpoints share. Each test
checks what is on disk afterwards: the right bytes, the usual permissions, and no temporary file left over.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import torch

import mdlm_course.fileio as fileio
from mdlm_course.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from mdlm_course.data import DataError, encode_cached
from mdlm_course.fileio import atomic_path, atomic_write_bytes, atomic_write_text
from mdlm_course.model import MDLM, ModelConfig
from mdlm_course.tokenizer import BPETokenizer


def test_atomic_write_bytes_and_text(tmp_path):
    path = tmp_path / "a.bin"
    atomic_write_bytes(path, b"\x00old")
    atomic_write_bytes(path, b"\x00new")
    assert path.read_bytes() == b"\x00new"
    atomic_write_text(tmp_path / "t.txt", "héllo\r\n😀")
    assert (tmp_path / "t.txt").read_bytes() == "héllo\r\n😀".encode()  # UTF-8, no newline translation
    assert sorted(os.listdir(tmp_path)) == ["a.bin", "t.txt"]


def test_atomic_write_gives_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    atomic_write_text(tmp_path / "t.txt", "x")
    assert (tmp_path / "t.txt").stat().st_mode & 0o777 == 0o666 & ~umask  # as open(path, "w") would


def test_atomic_path_failure_keeps_the_old_file(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_path(path) as tmp:
            tmp.write_text("half of the new")
            raise RuntimeError("disk on fire")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["state.json"]


@pytest.mark.parametrize("step", ["fsync", "replace"])
def test_atomic_write_os_failure_keeps_the_old_file(tmp_path, monkeypatch, step):
    path = tmp_path / "state.json"
    path.write_text("old")

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileio.os, step, fail)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["state.json"]


def test_atomic_write_wrong_types_write_nothing(tmp_path):
    with pytest.raises(TypeError, match="atomic_write_text"):
        atomic_write_bytes(tmp_path / "x", "a str")
    with pytest.raises(TypeError, match="atomic_write_bytes"):
        atomic_write_text(tmp_path / "x", b"bytes")
    with pytest.raises(UnicodeEncodeError):
        atomic_write_text(tmp_path / "x", "lone \ud800")
    assert os.listdir(tmp_path) == []


def test_atomic_path_onto_a_folder_fails_cleanly(tmp_path):
    (tmp_path / "sub").mkdir()
    with pytest.raises(OSError):
        atomic_write_bytes(tmp_path / "sub", b"x")
    assert os.listdir(tmp_path) == ["sub"] and os.listdir(tmp_path / "sub") == []


def test_atomic_path_suits_numpy(tmp_path):
    """The temporary path ends with the target's suffix, so np.save does not append another ".npy"."""
    with atomic_path(tmp_path / "ids.npy") as tmp:
        np.save(tmp, np.arange(5))
    assert os.listdir(tmp_path) == ["ids.npy"]
    assert np.load(tmp_path / "ids.npy").tolist() == [0, 1, 2, 3, 4]


def _fail_replace(*args, **kwargs):
    raise OSError(28, "No space left on device")


# ---------------------------------------------------------------- the writers that use it
def test_token_cache_is_written_atomically(tmp_path, monkeypatch):
    """encode_cached writes through atomic_path: a failed write leaves no partial .npy, and says where."""
    tok = BPETokenizer([(104, 101)])
    monkeypatch.setattr(fileio.os, "replace", _fail_replace)
    with pytest.raises(DataError, match="cannot write the token cache") as info:
        encode_cached("hello there", tok, tmp_path / "cache")
    assert "\n" not in str(info.value) and os.listdir(tmp_path / "cache") == []
    monkeypatch.undo()
    ids = encode_cached("hello there", tok, tmp_path / "cache")
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".npy"]
    assert np.array_equal(encode_cached("hello there", tok, tmp_path / "cache"), ids)   # read back from the cache


def test_checkpoint_meta_is_written_atomically(tmp_path, monkeypatch):
    """meta.json goes through atomic_write_text: a failure there leaves no step-* directory, so no half checkpoint."""
    torch.manual_seed(0)
    model = MDLM(ModelConfig(vocab_size=258, seq_len=16, n_layer=1, n_head=2, d_model=32))
    good = save_checkpoint(tmp_path / "run", model=model, step=1)
    monkeypatch.setattr(fileio.os, "replace", _fail_replace)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(tmp_path / "run", model=model, step=2)
    monkeypatch.undo()
    assert list_checkpoints(tmp_path / "run") == [good]
    assert load_checkpoint(tmp_path / "run").step == 1
