"""Text in, token windows out.

    load_text(path)            -> str, with a one-line error for missing / empty / binary / non-UTF-8 files
    split_text(text)           -> (train, val): the validation split is the LAST 5% of the characters,
                                  fixed, so every run and every notebook evaluates on the same text
    check_long_enough(ids, L)  -> raise if the token stream cannot fill one training window of L tokens
"""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / "data"
DEFAULT_CORPUS = DATA_DIR / "shakespeare.txt"
VAL_FRACTION = 0.05  # the last 5% of the characters is the validation split


class DataError(ValueError):
    """Bad input text. The message is one line and says what to do."""


def load_text(path: str | Path, *, min_chars: int = 1) -> str:
    """Read a UTF-8 text file.  load_text("data/shakespeare.txt")[:9] -> 'THE SONNE' (or similar)

    Raises DataError for a missing file, an empty file, a binary file (a NUL byte) or bytes that are
    not UTF-8, naming the byte offset of the first bad byte. A leading BOM is dropped.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file. Put a UTF-8 .txt file there (see data/README.md).")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a UTF-8 .txt file.")
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"{path}: the file is empty (or only whitespace); it needs text to train on.")
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise DataError(f"{path}: looks binary (NUL byte at byte offset {nul}); expected a UTF-8 text file.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: not valid UTF-8 at byte offset {e.start} (byte 0x{raw[e.start]:02x}); "
            "re-save the file as UTF-8."
        ) from None
    text = text.removeprefix("\ufeff")
    if len(text) < min_chars:
        raise DataError(f"{path}: only {len(text)} characters, need at least {min_chars}.")
    return text


def split_text(text: str, val_fraction: float = VAL_FRACTION) -> tuple[str, str]:
    """Split into (train, val) at character len*(1-val_fraction).  split_text("abcdefghijklmnopqrst") -> ('abcdefghijklmnopqrs', 't')"""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    cut = int(round(len(text) * (1 - val_fraction)))
    return text[:cut], text[cut:]


def check_long_enough(n_tokens: int, seq_len: int, what: str = "text") -> None:
    """Raise DataError if `n_tokens` cannot fill one window of `seq_len` tokens."""
    if n_tokens < seq_len:
        raise DataError(
            f"{what} has only {n_tokens} tokens, shorter than one training window of {seq_len}; "
            "use a longer file or a smaller seq_len."
        )
