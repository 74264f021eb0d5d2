"""Text in, token windows out.

    load_text(path)            -> str, with a one-line error for missing / empty / binary / non-UTF-8 files
    split_text(text)           -> (train, val): the validation split is the LAST 5% of the characters,
                                  fixed, so every run and every notebook evaluates on the same text
    check_long_enough(ids, L)  -> raise if the token stream cannot fill one training window of L tokens
    encode_cached, TokenData, random_windows, fixed_windows  -> token streams and windows (chapter 5)
    get_batch(data, cfg, L, step) -> the training windows of one micro-batch, a pure function of (seed, step)
    prepare_tokenizer(text, V) -> a BPE tokenizer for a text, trained once and cached

Where the corpus and the cache live: config.COURSE_HOME (the repository, or $MDLM_COURSE_HOME).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from .config import COURSE_HOME, check_number
from .device import rank_zero_first
from .errors import MdlmError
from .fileio import atomic_path, file_problem
from .tokenizer import BPETokenizer

ROOT = COURSE_HOME
DATA_DIR = ROOT / "data"
DEFAULT_CORPUS = DATA_DIR / "shakespeare.txt"
VAL_FRACTION = 0.05  # the last 5% of the characters is the validation split


class DataError(MdlmError):
    """Bad input text. The message is one line and says what to do."""


def load_text(path: str | Path, *, min_chars: int = 1) -> str:
    """Read a UTF-8 text file.  load_text("data/shakespeare.txt")[:9] -> 'THE SONNE' (or similar)

    Raises DataError for a missing file, an empty file, a binary file (a NUL byte) or bytes that are
    not UTF-8, naming the byte offset of the first bad byte. A leading BOM is dropped.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise DataError(f"the text's path must be a str or Path, got {type(path).__name__} {path!r}")
    path = Path(path)
    problem = file_problem(path)
    if problem is not None:
        hint = (" Put a UTF-8 .txt file there (see data/README.md), or set MDLM_COURSE_HOME to the course's folder."
                if problem == "no such file" else " Expected a UTF-8 .txt file.")
        raise DataError(f"{path}: {problem}.{hint}")
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"{path}: the file is empty (or only whitespace); it needs text to train on.")
    nul = raw.find(b"\x00")
    if nul >= 0:
        hint = " It looks like UTF-16: re-save it as UTF-8." if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise DataError(f"{path}: looks binary (NUL byte at byte offset {nul}); expected a UTF-8 text file.{hint}")
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
        raise MdlmError(f"val_fraction must be in (0, 1), got {val_fraction}")
    cut = int(round(len(text) * (1 - val_fraction)))
    return text[:cut], text[cut:]


def check_long_enough(n_tokens: int, seq_len: int, what: str = "text") -> None:
    """Raise DataError if `n_tokens` cannot fill one window of `seq_len` tokens."""
    if n_tokens < seq_len:
        raise DataError(
            f"{what} has only {n_tokens} tokens, shorter than one training window of {seq_len}; "
            "use a longer file or a smaller seq_len."
        )


def check_splits(data, seq_len: int, vocab_size: int, mask_id: int) -> None:
    """Raise DataError unless both splits fill a window and hold only ids in [0, vocab_size) other than mask_id."""
    check_long_enough(len(data.train_ids), seq_len, "the training split")
    check_long_enough(len(data.val_ids), seq_len, "the validation split")
    for name, ids in (("training", data.train_ids), ("validation", data.val_ids)):
        if int(ids.max()) >= vocab_size or int(ids.min()) < 0 or (ids == mask_id).any():
            raise DataError(f"the {name} split holds token id {int(ids.max())} >= vocab_size={vocab_size}, a "
                            f"negative id, or the mask id {mask_id}; encode it with the model's tokenizer")


# ---------------------------------------------------------------------------------------------
# Token streams and windows (added for training, chapter 5)
#
#   encode_cached(text, tok)          -> np.ndarray of ids, cached in data/cache/ under a hash of text + tokenizer
#   TokenData.from_text(text, tok)    -> train / val id streams (the val split is the last 5% of the characters)
#   random_windows(ids, B, L, gen)    -> (B, L): B windows of L consecutive tokens at uniform random starts
#   fixed_windows(ids, L, n)          -> (n, L): n windows at evenly spaced starts, the same every call
# ---------------------------------------------------------------------------------------------

CACHE_DIR = DATA_DIR / "cache"   # gitignored


def _tokenizer_fingerprint(tokenizer) -> str:
    """A string that changes whenever the tokenizer would encode differently (merges, specials, pre-split regex)."""
    return json.dumps({"merges": [list(p) for p in tokenizer.merges],
                       "special_tokens": list(tokenizer.special_tokens),
                       "split_pattern": getattr(tokenizer, "split_pattern", "")}, separators=(",", ":"))


def encode_cached(text: str, tokenizer, cache_dir: str | Path | None = CACHE_DIR, *, name: str = "ids"):
    """tokenizer.encode(text) as a numpy array, cached as .npy under sha256(text, tokenizer).

    Encoding 5 MB takes a few seconds; the cache makes the second run instant.
    Uses the tokenizer's tiktoken fast path (encode_fast, same ids) when it has one.
    cache_dir=None: no cache.  The ids are uint16 when the vocabulary fits, else int32.
    """
    key = hashlib.sha256()
    key.update(_tokenizer_fingerprint(tokenizer).encode())
    key.update(b"\x00")
    key.update(text.encode("utf-8"))
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{name}-{key.hexdigest()[:20]}.npy"
        if path.exists():
            try:
                return np.load(path, allow_pickle=False)
            except (OSError, ValueError):
                path.unlink(missing_ok=True)   # a broken cache file: encode again
    encode = getattr(tokenizer, "encode_fast", None) or tokenizer.encode
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.int32
    ids = np.asarray(encode(text), dtype=dtype)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:                           # a reader sees the whole file or none
                np.save(tmp, ids, allow_pickle=False)
        except OSError as e:
            raise DataError(f"{path.parent}: cannot write the token cache there ({e.strerror or e}); pass another "
                            "cache_dir (--cache-dir), or cache_dir=None for no cache") from None
    return ids


def _token_ids(ids, name: str) -> torch.Tensor:
    """TokenData's door: a 1-D tensor, array or list of integer token ids -> (N,) int64; text is refused."""
    if isinstance(ids, (str, bytes)) or ids is None:
        raise DataError(f"TokenData {name} must be token ids (a 1-D tensor or array), got {type(ids).__name__}; "
                        "for a text use TokenData.from_text(text, tokenizer)")
    ids = torch.as_tensor(ids)
    not_ids = ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool
    if ids.dim() != 1 or (not_ids and ids.numel() > 0):             # [] is float32 to torch, yet no tokens at all
        raise DataError(f"TokenData {name} must be a 1-D stream of integer token ids, got shape {tuple(ids.shape)} "
                        f"dtype {ids.dtype}")
    return ids.long()


class TokenData:
    """The encoded corpus: train_ids and val_ids, 1-D int64 tensors (val = the last 5% of the characters).

    The split is made on characters *before* encoding, so the validation text is the same whatever the
    tokenizer, and no token straddles the boundary.
    """

    def __init__(self, train_ids, val_ids, source: dict | None = None):
        self.train_ids = _token_ids(train_ids, "train_ids")  # (N_train,)
        self.val_ids = _token_ids(val_ids, "val_ids")        # (N_val,)
        self.source = source   # {"path", "sha256"} of the text file, recorded in checkpoints (eval's default)

    @classmethod
    def from_text(cls, text: str, tokenizer, cache_dir: str | Path | None = CACHE_DIR,
                  path: str | Path | None = None) -> "TokenData":
        train_text, val_text = split_text(text)
        train = encode_cached(train_text, tokenizer, cache_dir, name="train")
        val = encode_cached(val_text, tokenizer, cache_dir, name="val")
        source = None if path is None else {"path": course_relative(path), "sha256": text_sha256(text)}
        return cls(train.astype(np.int64), val.astype(np.int64), source)

    def __repr__(self) -> str:
        return f"TokenData(train={len(self.train_ids):,} tokens, val={len(self.val_ids):,} tokens)"


def course_relative(path: str | Path) -> str:
    """A path as recorded in a checkpoint: relative to COURSE_HOME when inside it (no machine's absolute
    paths in shipped files), else absolute."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(COURSE_HOME.resolve()))
    except ValueError:
        return str(path)


def course_path(recorded: str) -> Path:
    """The inverse of course_relative: a recorded path, resolved against COURSE_HOME when relative."""
    return COURSE_HOME / recorded


def text_sha256(text: str) -> str:
    """The sha256 of a text's UTF-8 bytes: which corpus a checkpoint was trained on."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def random_windows(ids, batch_size: int, seq_len: int, generator=None):
    """B windows of L consecutive ids, each starting at a uniform random offset.  -> LongTensor (B, L)

    random_windows(torch.arange(10), 2, 3, g) -> e.g. [[4, 5, 6], [0, 1, 2]]
    """
    check_long_enough(len(ids), seq_len, "the training split")
    starts = torch.randint(0, len(ids) - seq_len + 1, (batch_size,), generator=generator)   # (B,)
    return ids[starts[:, None] + torch.arange(seq_len)[None, :]]                             # (B, L)


def fixed_windows(ids, seq_len: int, n: int):
    """n windows of L ids at evenly spaced starts from the first to the last possible one.  -> (n', L)

    Deterministic, for validation. Non-overlapping when the stream holds n windows; if it holds fewer,
    n' = the number of whole windows that fit (at least 1).  fixed_windows(torch.arange(9), 3, 2) -> [[0,1,2],[6,7,8]]
    """
    check_number("fixed_windows", "n", n, integer=True, lo=1)
    check_long_enough(len(ids), seq_len, "the validation split")
    n = max(1, min(n, len(ids) // seq_len))
    last = len(ids) - seq_len
    starts = torch.linspace(0, last, n).round().long() if n > 1 else torch.zeros(1, dtype=torch.long)   # (n,)
    return ids[starts[:, None] + torch.arange(seq_len)[None, :]]                                          # (n, L)


def batch_generator(seed: int, step: int, micro: int = 0, rank: int = 0) -> torch.Generator:
    """The generator that picks the windows of one micro-batch: a pure function of (seed, rank, step, micro).

    So the data order survives a resume without saving any state, and each DDP rank draws its own windows.
    """
    state = np.random.SeedSequence([seed, rank, step, micro]).generate_state(2)   # 2 x uint32
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def get_batch(data: TokenData, config, seq_len: int, step: int, micro: int = 0,
              rank: int = 0) -> torch.Tensor:
    """The x_0 windows (B, L) of micro-batch `micro` of optimizer step `step` on process `rank`:
    config.batch_size random windows of the training split, drawn from batch_generator(config.seed, ...)."""
    return random_windows(data.train_ids, config.batch_size, seq_len,
                          batch_generator(config.seed, step, micro, rank))            # (B, L)


# ---------------------------------------------------------------------------------------------
# A tokenizer for a text, trained once and cached
# ---------------------------------------------------------------------------------------------

def prepare_tokenizer(train_text: str, vocab_size: int, cache_dir: str | Path | None = CACHE_DIR, *,
                      verbose: bool = True) -> BPETokenizer:
    """A byte-level BPE tokenizer trained on `train_text`: loaded from cache_dir when one was trained on the
    same text with the same vocab_size before, else trained (seconds to a minute for 5 MB) and cached there.

    Under torchrun, process 0 trains and caches it first; the others then load it (device.rank_zero_first).
    A cached file that cannot be read (truncated, edited) is trained again, with a word about it.
    """
    key = text_sha256(train_text)[:16]
    path = Path(cache_dir) / f"tokenizer-{vocab_size}-{key}.json" if cache_dir is not None else None

    def load_or_train() -> BPETokenizer:
        if path is not None and path.exists():
            try:
                return BPETokenizer.load(path)
            except ValueError as e:
                print(f"warning: the cached tokenizer {path} is unusable ({str(e).splitlines()[0]}); training it again")
        tok = BPETokenizer.train(train_text, vocab_size, verbose=verbose)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tok.save(path)
        return tok

    return rank_zero_first(load_or_train)
