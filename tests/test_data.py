"""Text loading (mdlm_course/data.py): bad files give one-line DataErrors that say what is wrong.

Each broken file is written to tmp_path; the tests check the error type, that the message is one
line, and the detail a reader needs (the path, the byte offset of the first bad byte).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mdlm_course import DataError, load_text, split_text
from mdlm_course.data import (DEFAULT_CORPUS, VAL_FRACTION, TokenData, check_long_enough, encode_cached, fixed_windows,
                              random_windows)
from mdlm_course.tokenizer import BPETokenizer

TEXT = DEFAULT_CORPUS.read_text(encoding="utf-8")[:40_000]


def _error(path, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_text(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    return message


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)


def test_missing_file(tmp_path):
    assert "no such file" in _error(tmp_path / "nope.txt")


def test_directory(tmp_path):
    assert "directory" in _error(tmp_path)


@pytest.mark.parametrize("content", [b"", b"   \n\t\r\n  "], ids=["empty", "only whitespace"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "empty.txt"
    path.write_bytes(content)
    assert "empty" in _error(path)


def test_binary_file_names_the_offset(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"PK\x03\x04" + b"\x00" * 10 + bytes(range(256)))
    message = _error(path)
    assert "binary" in message and "byte offset 4" in message


@pytest.mark.parametrize(
    "content, offset",
    [
        (b"hello \xff world", 6),                           # a byte that never occurs in UTF-8
        ("caf\u00e9 cr\u00e8me".encode("latin-1"), 3),      # a Latin-1 file: 0xe9 starts a 3-byte sequence
        ("abc".encode() + "\u00e9".encode()[:1], 3),         # cut in the middle of a character
        ("ok \u00e9 ok ".encode() + b"\x80", 9),            # valid UTF-8, then a lone continuation byte
    ],
    ids=["0xff", "latin-1", "truncated char", "lone continuation"],
)
def test_non_utf8_names_the_offset(tmp_path, content, offset):
    path = tmp_path / "text.txt"
    path.write_bytes(content)
    message = _error(path)
    assert "not valid UTF-8" in message and f"byte offset {offset}" in message


def test_bom_is_dropped_and_line_endings_kept(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeffline one\r\nline two \u00e9\n".encode("utf-8"))
    assert load_text(path) == "line one\r\nline two \u00e9\n"  # no BOM, "\r\n" untouched


def test_min_chars(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("tiny", encoding="utf-8")
    assert load_text(path, min_chars=4) == "tiny"
    assert "only 4 characters" in _error(path, min_chars=5)


def test_default_corpus_loads():
    text = load_text(DEFAULT_CORPUS)
    assert len(text) > 4_000_000 and "\ufeff" not in text[:1]


@pytest.mark.parametrize("n", [1, 20, 101, 10_000])
def test_split_text_last_five_percent_is_val(n):
    text = "".join(chr(97 + i % 26) for i in range(n))
    train, val = split_text(text)
    assert train + val == text
    assert len(val) == n - round(n * (1 - VAL_FRACTION))  # the LAST 5% of the characters
    assert VAL_FRACTION == 0.05


def test_split_text_rejects_bad_fraction():
    for bad in (0, 1, -0.1, 1.5):
        with pytest.raises(ValueError, match="val_fraction"):
            split_text("abc", val_fraction=bad)


def test_check_long_enough():
    check_long_enough(256, 256)  # exactly one window is enough
    with pytest.raises(DataError) as info:
        check_long_enough(255, 256, what="my_text.txt")
    message = str(info.value)
    assert "\n" not in message and "255 tokens" in message and "256" in message and "my_text.txt" in message


def test_utf16_file_gets_a_hint(tmp_path):
    p = tmp_path / "utf16.txt"
    p.write_bytes("To be, or not to be".encode("utf-16"))
    with pytest.raises(DataError, match=r"NUL byte at byte offset \d+.*UTF-16"):
        load_text(p)


# ---------------------------------------------------------------------------------------------- token streams and windows

def test_random_and_fixed_windows_are_contiguous_slices():
    ids = torch.arange(1000)
    w = random_windows(ids, 8, 16, torch.Generator().manual_seed(0))
    assert w.shape == (8, 16)
    assert torch.equal(w - w[:, :1], torch.arange(16).expand(8, 16))   # consecutive ids
    f = fixed_windows(ids, 16, 10)
    assert f.shape == (10, 16) and f[0, 0] == 0 and f[-1, -1] == 999   # first and last possible window
    assert (f[1:, 0] - f[:-1, 0] >= 16).all()                           # no overlap
    assert torch.equal(fixed_windows(ids, 16, 10), f)
    assert fixed_windows(torch.arange(40), 16, 10).shape == (2, 16)    # only 2 whole windows fit


def test_encode_cached(tmp_path, byte_tok):
    tok = BPETokenizer.train(TEXT[:5000], 270, verbose=False)
    ids = encode_cached(TEXT[:3000], tok, tmp_path)
    assert ids.tolist() == tok.encode(TEXT[:3000]) and ids.dtype == np.uint16
    assert len(list(tmp_path.glob("*.npy"))) == 1
    again = encode_cached(TEXT[:3000], tok, tmp_path)
    assert np.array_equal(ids, again) and len(list(tmp_path.glob("*.npy"))) == 1   # a cache hit
    encode_cached(TEXT[:3000], byte_tok, tmp_path)                                  # other tokenizer: other key
    assert len(list(tmp_path.glob("*.npy"))) == 2


def test_token_data_splits_on_characters(data):
    assert len(data.train_ids) + len(data.val_ids) == len(TEXT.encode("utf-8"))   # bytes: 1 token each
    assert bytes(data.val_ids.tolist()).decode() == TEXT[-len(TEXT) // 20:]      # the last 5%
