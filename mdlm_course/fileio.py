"""Atomic file writes: a reader (or a crash) sees the old file or the new one, never half of one.

The recipe, used by the tokenizer, the token cache and the checkpoints:
    1. create a temporary file in the SAME folder (os.replace is atomic only within one filesystem);
    2. write it, flush it, fsync it (the bytes are on disk before the name points at them);
    3. os.replace(tmp, path) (atomic on POSIX and Windows), then fsync the folder (the rename is on disk);
    4. on any failure, remove the temporary file and leave the old `path` untouched.

    atomic_write_text("tok.json", '{"merges": []}')
    with atomic_path("ids.npy") as tmp:      # for writers that want a path (np.save, safetensors)
        np.save(tmp, ids)

Errors are the OSError of the step that failed (no folder, no permission, disk full); callers turn
them into their own one-line message.
"""
from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _fsync_path(path: Path, *, folder: bool = False) -> None:
    """fsync a file or folder by name. Folders cannot be opened on Windows; there the rename is durable anyway."""
    if folder and os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY if folder else os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_temp(path: Path) -> Path:
    """A new, empty file next to `path`: .NAME.RANDOM.tmpSUFFIX (ends with path's suffix, so that
    np.save appends no ".npy"; starts with a dot, so that globs for "*.json" do not see it)."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{path.suffix}")
        try:  # O_EXCL: never reuse a name; mode 0o666 & ~umask, as open() would give
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: could not create a temporary file for {path.name}")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path` to write into; on success fsync it and rename it to `path`.

    If the body raises, the temporary file is removed, `path` keeps its old content, and the error goes up.
        with atomic_path("model.safetensors") as tmp:
            safetensors.torch.save_file(state, tmp)
    """
    path = Path(path)
    tmp = _create_temp(path)
    try:
        yield tmp
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_path(path.parent, folder=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (see the module docstring).  atomic_write_bytes("x.bin", b"\\x00\\x01")"""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"atomic_write_bytes expects bytes, got {type(data).__name__}; use atomic_write_text for a str")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write `text` to `path` atomically, encoded (UTF-8 by default; no newline translation).  atomic_write_text("a.txt", "hi")"""
    if not isinstance(text, str):
        raise TypeError(f"atomic_write_text expects a str, got {type(text).__name__}; use atomic_write_bytes for bytes")
    atomic_write_bytes(path, text.encode(encoding))


def file_problem(path: Path) -> str | None:
    """Why `path` cannot be read as an ordinary file, or None when it can: "no such file", "is a folder",
    or "is not a regular file" (a named pipe would block read() forever; a device never ends)."""
    if not path.exists():
        return "no such file"
    if path.is_dir():
        return "is a folder"
    if not path.is_file():
        return "is not a regular file (a pipe, socket or device)"
    return None
