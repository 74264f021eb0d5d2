"""Bad input never costs a reader their run: every mistake gives a one-line error that names what to fix.

Each case below is something a careless or unlucky user could pass. Each asserts:
  - the exception class (the package's own, so that the CLI can print it in one line);
  - that the message is one line (no '\\n');
  - that the message names the thing to fix (the needles: words it must contain).
One section per surface; helpers are generic or local to their section.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mdlm_course.errors import MdlmError


def assert_one_line_error(exc_type: type[BaseException], fn, *needles: str) -> str:
    """Call fn(); it must raise exc_type with a one-line message containing every needle. Returns the message."""
    with pytest.raises(exc_type) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message, message
    assert message.strip(), "empty message"
    for needle in needles:
        assert needle in message, (needle, message)
    return message


# --- tokenizer -------------------------------------------------------------------------------------
from mdlm_course.tokenizer import (  # noqa: E402
    GPT4_SPLIT_PATTERN, MASK, BPETokenizer, TokenizerError, TokenizerFileError, TokenizerTypeError, pre_split,
)

TEXT = "the quick brown fox jumps over the lazy dog; 12 pack my box with five dozen liquor jugs! " * 20


@pytest.fixture(scope="module")
def tok() -> BPETokenizer:
    return BPETokenizer.train(TEXT, vocab_size=280, verbose=False)


def test_tokenizer_errors_share_the_package_base_class():
    assert issubclass(TokenizerError, MdlmError) and issubclass(MdlmError, ValueError)
    assert issubclass(TokenizerFileError, TokenizerError)
    assert issubclass(TokenizerTypeError, TokenizerError) and issubclass(TokenizerTypeError, TypeError)


# (id, call, exception class, needles): the call gets the module's small tokenizer.
TOKENIZER_CALLS = [
    # train: text
    ("train bytes", lambda t: BPETokenizer.train(b"some text", 300, verbose=False), TokenizerTypeError, ("str", "decode")),
    ("train None", lambda t: BPETokenizer.train(None, 300, verbose=False), TokenizerTypeError, ("str", "NoneType")),
    ("train list", lambda t: BPETokenizer.train(["a", "b"], 300, verbose=False), TokenizerTypeError, ("str", "list")),
    ("train surrogate", lambda t: BPETokenizer.train("ok \ud800 no", 300, verbose=False), TokenizerError,
     ("surrogate", "index 3", "clean the text")),
    ("train empty text", lambda t: BPETokenizer.train("", 300, verbose=False), TokenizerError,
     ("empty", "vocab_size=257")),
    ("train tiny text", lambda t: BPETokenizer.train("ab ab", 1_000_000, verbose=False), TokenizerError,
     ("supports at most 3 merges", "smaller vocab_size")),
    # train: vocab_size
    ("vocab_size str", lambda t: BPETokenizer.train("x", "4096", verbose=False), TokenizerTypeError, ("vocab_size", ">= 257")),
    ("vocab_size float", lambda t: BPETokenizer.train("x", 300.0, verbose=False), TokenizerTypeError, ("vocab_size", "300.0")),
    ("vocab_size bool", lambda t: BPETokenizer.train("x", True, verbose=False), TokenizerTypeError, ("vocab_size",)),
    ("vocab_size None", lambda t: BPETokenizer.train("x", None, verbose=False), TokenizerTypeError, ("vocab_size",)),
    ("vocab_size small", lambda t: BPETokenizer.train("x", 100, verbose=False), TokenizerError, ("vocab_size", ">= 257")),
    ("vocab_size negative", lambda t: BPETokenizer.train("x", -5, verbose=False), TokenizerError, ("vocab_size", "-5")),
    # train / constructor: special_tokens
    ("specials str", lambda t: BPETokenizer.train("x", 300, special_tokens=MASK), TokenizerTypeError,
     ("special_tokens", "list of strings")),
    ("specials None", lambda t: BPETokenizer([], special_tokens=None), TokenizerTypeError, ("special_tokens",)),
    ("specials no mask", lambda t: BPETokenizer([], special_tokens=["[PAD]"]), TokenizerError, ("special_tokens", MASK)),
    ("specials twice", lambda t: BPETokenizer([], special_tokens=[MASK, MASK]), TokenizerError, ("distinct",)),
    ("specials empty str", lambda t: BPETokenizer([], special_tokens=[MASK, ""]), TokenizerError, ("non-empty",)),
    ("specials int", lambda t: BPETokenizer([], special_tokens=[MASK, 5]), TokenizerError, ("strings",)),
    # constructor: merges (item 5: booleans, duplicates, arity, negative, forward, non-int)
    ("merges bool", lambda t: BPETokenizer([(True, False)]), TokenizerError, ("merge 0", "not booleans")),
    ("merges duplicate", lambda t: BPETokenizer([(97, 98), (99, 100), (97, 98)]), TokenizerError,
     ("merge 2", "same pair as merge 0")),
    ("merges triple", lambda t: BPETokenizer([(1, 2, 3)]), TokenizerError, ("merge 0", "pair")),
    ("merges single", lambda t: BPETokenizer([(1,)]), TokenizerError, ("merge 0", "pair")),
    ("merges negative", lambda t: BPETokenizer([(-1, 5)]), TokenizerError, ("merge 0", "0..255")),
    ("merges forward", lambda t: BPETokenizer([(97, 98), (258, 1)]), TokenizerError, ("merge 1", "0..256")),
    ("merges float", lambda t: BPETokenizer([(1.0, 2)]), TokenizerError, ("merge 0", "ints")),
    ("merges str pair", lambda t: BPETokenizer(["ab"]), TokenizerError, ("merge 0", "pair")),
    ("merges str", lambda t: BPETokenizer("abc"), TokenizerTypeError, ("merges", "str")),
    ("merges None", lambda t: BPETokenizer(None), TokenizerTypeError, ("merges", "NoneType")),
    # encode / encode_fast / pre_split
    ("encode bytes", lambda t: t.encode(b"abc"), TokenizerTypeError, ("encode", "str", "decode")),
    ("encode None", lambda t: t.encode(None), TokenizerTypeError, ("encode", "str")),
    ("encode list", lambda t: t.encode(["a", "b"]), TokenizerTypeError, ("encode", "list")),
    ("encode surrogate", lambda t: t.encode("a\udc80b"), TokenizerError, ("surrogate", "index 1", "clean the text")),
    ("encode surrogate with specials", lambda t: t.encode("[MASK]\ud800", allowed_special="all"), TokenizerError,
     ("surrogate", "index 6")),
    ("encode_fast bytes", lambda t: t.encode_fast(b"abc"), TokenizerTypeError, ("encode_fast", "str")),
    ("encode_fast surrogate", lambda t: t.encode_fast("a\udc80b"), TokenizerError, ("surrogate", "index 1")),
    ("allowed_special a str", lambda t: t.encode("x", allowed_special=MASK), TokenizerTypeError, ("allowed_special", "'all'")),
    ("allowed_special None", lambda t: t.encode("x", allowed_special=None), TokenizerTypeError, ("allowed_special",)),
    ("allowed_special unknown", lambda t: t.encode("x", allowed_special={"[PAD]"}), TokenizerError,
     ("[PAD]", "not special tokens")),
    ("allowed_special int", lambda t: t.encode_fast("x", allowed_special={1, MASK}), TokenizerError, ("not special tokens",)),
    ("pre_split bytes", lambda t: pre_split(b"abc"), TokenizerTypeError, ("pre_split", "str")),
    # decode / decode_bytes / id_to_token_bytes / token_str (item 13)
    ("decode float", lambda t: t.decode(3.5), TokenizerTypeError, ("decode", "1-D tensor", "float")),
    ("decode str", lambda t: t.decode("hello"), TokenizerTypeError, ("decode", "list", "str")),
    ("decode None", lambda t: t.decode(None), TokenizerTypeError, ("decode", "NoneType")),
    ("decode 2-D tensor", lambda t: t.decode(torch.zeros(2, 3, dtype=torch.long)), TokenizerTypeError,
     ("2-D", "(2, 3)", "each row")),
    ("decode 0-D tensor", lambda t: t.decode(torch.tensor(5)), TokenizerTypeError, ("0-D", "[i]")),
    ("decode float tensor", lambda t: t.decode(torch.tensor([1.0, 2.0])), TokenizerTypeError, ("float32", ".long()")),
    ("decode bool tensor", lambda t: t.decode(torch.tensor([True, False])), TokenizerTypeError, ("dtype", "bool")),
    ("decode 2-D array", lambda t: t.decode(np.ones((1, 4), dtype=np.int64)), TokenizerTypeError, ("2-D", "each row")),
    ("decode float array", lambda t: t.decode(np.array([1.5])), TokenizerTypeError, ("float64",)),
    ("decode list with float", lambda t: t.decode([104, 2.5]), TokenizerTypeError, ("ids[1]", "float", "ints")),
    ("decode list with -1.5", lambda t: t.decode([104, -1.5]), TokenizerTypeError, ("ids[1]", "float")),
    ("decode nested list", lambda t: t.decode([[104, 105]]), TokenizerTypeError, ("ids[0]", "list")),
    ("decode list with str", lambda t: t.decode_bytes([104, "a"]), TokenizerTypeError, ("ids[1]", "str")),
    ("decode id too large", lambda t: t.decode([t.vocab_size]), TokenizerError, ("out of range", "0..279")),
    ("decode id negative", lambda t: t.decode([-1]), TokenizerError, ("out of range",)),
    ("id_to_token_bytes str", lambda t: t.id_to_token_bytes("a"), TokenizerTypeError, ("token id", "int")),
    ("token_str out of range", lambda t: t.token_str(10**9), TokenizerError, ("out of range",)),
    ("token_str float", lambda t: t.token_str(1.0), TokenizerTypeError, ("int", "float")),
]


@pytest.mark.parametrize("call, exc, needles", [c[1:] for c in TOKENIZER_CALLS], ids=[c[0] for c in TOKENIZER_CALLS])
def test_tokenizer_call(tok, call, exc, needles):
    assert_one_line_error(exc, lambda: call(tok), *needles)


# Tokenizer files: (id, what to write given the good document (a dict) -> bytes, needles).
def _doc(**change):
    def make(good: dict) -> bytes:
        return json.dumps({**good, **change}).encode()
    return make


TOKENIZER_FILES = [
    ("merges booleans", _doc(merges=[[True, False]]), ("merge 0", "not booleans")),
    ("merges duplicated", _doc(merges=[[97, 98], [97, 98]]), ("merge 1", "same pair as merge 0")),
    ("merges triple", _doc(merges=[[1, 2, 3]]), ("merge 0", "pair")),
    ("merges single", _doc(merges=[[1]]), ("merge 0", "pair")),
    ("merges negative", _doc(merges=[[-3, 1]]), ("merge 0",)),
    ("merges forward", _doc(merges=[[300, 1]]), ("merge 0", "before id 256")),
    ("merges floats", _doc(merges=[[1.0, 2.0]]), ("merge 0", "ints")),
    ("merges strings", _doc(merges=[["a", "b"]]), ("merge 0",)),
    ("merges null", _doc(merges=[None]), ("merge 0",)),
    ("merges an object", _doc(merges={"a": 1}), ("merges", "lists")),
    ("merges a string", _doc(merges="1 2"), ("merges", "lists")),
    ("specials a string", _doc(special_tokens=MASK), ("special_tokens", "lists")),
    ("specials without mask", _doc(special_tokens=["[PAD]"]), (MASK,)),
    ("vocab_size a string", _doc(vocab_size="280"), ("vocab_size must be an int",)),
    ("vocab_size true", _doc(vocab_size=True), ("vocab_size must be an int",)),
    ("vocab_size float", _doc(vocab_size=280.0), ("vocab_size must be an int",)),
    ("version true", _doc(version=True), ("version", "re-train")),
    ("vocab_size wrong", _doc(vocab_size=4096), ("vocab_size 4096", "280 ids")),
    ("pattern null", _doc(split_pattern=None), ("pre-split pattern", "re-train")),
    ("nested lists", lambda good: b"[" * 100_000 + b"]" * 100_000, ("not a tokenizer file",)),
    ("nested objects", lambda good: b'{"a":' * 100_000 + b"1" + b"}" * 100_000, ("not a tokenizer file",)),
    ("nested merges", lambda good: json.dumps(good).replace('"merges":', '"merges":' + "[" * 50_000 + "]" * 50_000
                                                            + ',"x":', 1).encode(), ("not a tokenizer file",)),
    ("int of 5000 digits", lambda good: b'{"merges": [[' + b"9" * 5000 + b', 1]]}', ("not a tokenizer file", "digits")),
    ("utf-16", lambda good: json.dumps(good).encode("utf-16"), ("not a tokenizer file",)),
    ("a JSON string", lambda good: b'"mdlm_course.BPETokenizer"', ("not a tokenizer file", "format")),
    ("null", lambda good: b"null", ("not a tokenizer file",)),
]


@pytest.mark.parametrize("make, needles", [c[1:] for c in TOKENIZER_FILES], ids=[c[0] for c in TOKENIZER_FILES])
def test_tokenizer_file(tok, tmp_path, make, needles):
    tok.save(tmp_path / "good.json")
    good = json.loads((tmp_path / "good.json").read_text())
    path = tmp_path / "bad.json"
    path.write_bytes(make(good))
    message = assert_one_line_error(TokenizerFileError, lambda: BPETokenizer.load(path), *needles)
    assert str(path) in message


# Paths that are not a readable (load) or writable (save) file: (id, make(tmp_path) -> path, needles).
def _fifo(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes here")
    os.mkfifo(tmp_path / "pipe")
    return tmp_path / "pipe"


def _file(tmp_path):
    (tmp_path / "a_file").write_text("x")
    return tmp_path / "a_file"


LOAD_PATHS = [
    ("missing", lambda p: p / "missing.json", ("no such tokenizer file", "train")),
    ("a folder", lambda p: p, ("is a folder", ".json")),
    ("a FIFO", _fifo, ("not a regular file",)),  # would block read() forever
    ("under a file", lambda p: _file(p) / "tok.json", ("no such tokenizer file",)),
    ("the corpus", lambda p: _file(p), ("not a tokenizer file", "invalid")),
]


@pytest.mark.parametrize("make, needles", [c[1:] for c in LOAD_PATHS], ids=[c[0] for c in LOAD_PATHS])
def test_tokenizer_load_path(tmp_path, make, needles):
    path = make(tmp_path)
    assert_one_line_error(TokenizerFileError, lambda: BPETokenizer.load(path), str(path), *needles)


SAVE_PATHS = [
    ("a folder", lambda p: p, ("is a folder", "tokenizer.json")),
    ("missing folder", lambda p: p / "no" / "such" / "tok.json", ("does not exist", "create the folder")),
    ("under a file", lambda p: _file(p) / "tok.json", ("is a file, not a folder",)),
]


@pytest.mark.parametrize("make, needles", [c[1:] for c in SAVE_PATHS], ids=[c[0] for c in SAVE_PATHS])
def test_tokenizer_save_path(tok, tmp_path, make, needles):
    path = make(tmp_path)
    assert_one_line_error(TokenizerFileError, lambda: tok.save(path), str(path), *needles)


@pytest.mark.parametrize("path", [None, 123, ["tok.json"]], ids=["None", "int", "list"])
def test_tokenizer_path_of_wrong_type(tok, path):
    assert_one_line_error(TokenizerTypeError, lambda: BPETokenizer.load(path), "load", "path")
    assert_one_line_error(TokenizerTypeError, lambda: tok.save(path), "save", "path")


def test_tokenizer_save_unwritable(tok, tmp_path, monkeypatch):
    """A folder we may not write to (simulated: root ignores permissions); the old file survives."""
    import mdlm_course.fileio

    path = tmp_path / "tok.json"
    tok.save(path)
    before = path.read_bytes()

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(mdlm_course.fileio.os, "open", refuse)
    assert_one_line_error(TokenizerFileError, lambda: tok.save(path), str(path), "Permission denied",
                          "choose a path you can write to")
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["tok.json"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may read any file")
def test_tokenizer_load_unreadable(tok, tmp_path):
    path = tmp_path / "tok.json"
    tok.save(path)
    path.chmod(0)
    assert_one_line_error(TokenizerFileError, lambda: BPETokenizer.load(path), str(path), "cannot read")


def test_tokenizer_load_too_large(tmp_path, monkeypatch):
    import mdlm_course.tokenizer

    monkeypatch.setattr(mdlm_course.tokenizer, "_MAX_FILE_BYTES", 100)
    path = tmp_path / "big.json"
    path.write_bytes(b" " * 101)
    assert_one_line_error(TokenizerFileError, lambda: BPETokenizer.load(path), str(path), "too large")


def test_tokenizer_file_before_the_chunk_cap_still_loads(tok, tmp_path):
    """Not an error: files saved with GPT-4's uncapped pattern load (and say so nowhere)."""
    path = tmp_path / "old.json"
    tok.save(path)
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({**doc, "split_pattern": GPT4_SPLIT_PATTERN}))
    assert BPETokenizer.load(path).merges == tok.merges


# --- data ------------------------------------------------------------------------------------------
from mdlm_course.data import (  # noqa: E402
    DataError, TokenData, check_long_enough, encode_cached, fixed_windows, load_text, prepare_tokenizer,
    random_windows, split_text,
)


def _write(name: str, content: bytes):
    def make(tmp_path):
        (tmp_path / name).write_bytes(content)
        return tmp_path / name
    return make


# (id, make(tmp_path) -> path, needles)
DATA_FILES = [
    ("missing", lambda p: p / "missing.txt", ("no such file", "UTF-8 .txt")),
    ("a folder", lambda p: p, ("is a folder", "UTF-8 .txt")),
    ("under a file", lambda p: _file(p) / "x.txt", ("no such file",)),
    ("empty", _write("e.txt", b""), ("empty", "needs text")),
    ("only whitespace", _write("w.txt", b" \n\t\n"), ("empty",)),
    ("binary", _write("b.bin", b"abc\x00def"), ("binary", "byte offset 3")),
    ("utf-16", _write("u16.txt", "hello".encode("utf-16")), ("UTF-16", "re-save it as UTF-8")),
    ("latin-1", _write("l1.txt", "café".encode("latin-1")), ("not valid UTF-8", "byte offset 3", "0xe9")),
    ("a device", lambda p: _device(), ("not a regular file",)),
]


def _device() -> Path:
    if not Path(os.devnull).exists() or Path(os.devnull).is_file():
        pytest.skip(f"{os.devnull} is not a device here")
    return Path(os.devnull)


@pytest.mark.parametrize("make, needles", [c[1:] for c in DATA_FILES], ids=[c[0] for c in DATA_FILES])
def test_data_load_text(tmp_path, make, needles):
    path = make(tmp_path)
    assert_one_line_error(DataError, lambda: load_text(path), str(path), *needles)


def test_data_fifo_is_refused_without_reading(tmp_path):
    """Item 18: a named pipe would block read() forever. The alarm turns a regression into a failure, not a hang."""
    import signal

    fifo = _fifo(tmp_path)
    if not hasattr(signal, "SIGALRM"):
        pytest.skip("no SIGALRM here")

    def hang(*_):
        raise TimeoutError("load_text blocked on the FIFO")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(10)
    try:
        assert_one_line_error(DataError, lambda: load_text(fifo), str(fifo), "not a regular file")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_data_too_short_for_min_chars(tmp_path):
    (tmp_path / "s.txt").write_text("abc")
    assert_one_line_error(DataError, lambda: load_text(tmp_path / "s.txt", min_chars=10), "only 3 characters",
                          "at least 10")


DATA_CALLS = [
    ("val_fraction 0", lambda: split_text("abcdef", 0.0), ValueError, ("val_fraction", "(0, 1)")),
    ("val_fraction 1.5", lambda: split_text("abcdef", 1.5), ValueError, ("val_fraction", "1.5")),
    ("too few tokens", lambda: check_long_enough(10, 64), DataError, ("only 10 tokens", "smaller seq_len")),
    ("random_windows too short", lambda: random_windows(torch.arange(5), 2, 8), DataError,
     ("training split", "only 5 tokens")),
    ("fixed_windows too short", lambda: fixed_windows(torch.arange(5), 8, 2), DataError,
     ("validation split", "only 5 tokens")),
]


@pytest.mark.parametrize("call, exc, needles", [c[1:] for c in DATA_CALLS], ids=[c[0] for c in DATA_CALLS])
def test_data_call(call, exc, needles):
    assert_one_line_error(exc, call, *needles)


def test_data_cache_dir_is_a_file(tmp_path):
    blocker = _file(tmp_path)
    assert_one_line_error(DataError, lambda: encode_cached("some text", BPETokenizer([]), blocker),
                          str(blocker), "cannot write the token cache", "cache_dir")
    assert blocker.read_text() == "x"


def test_data_corrupt_token_cache_is_encoded_again(tmp_path):
    """Not an error: a truncated .npy in the cache is thrown away and the text encoded again."""
    tok = BPETokenizer([(104, 101)])
    ids = encode_cached("hello there", tok, tmp_path)
    (cached,) = tmp_path.iterdir()
    cached.write_bytes(cached.read_bytes()[:20])
    assert np.array_equal(encode_cached("hello there", tok, tmp_path), ids)
    assert np.array_equal(np.load(cached), ids)


def test_data_cache_key_includes_the_split_pattern(tmp_path):
    """Two tokenizers that differ only in their pre-split regex must not share cached ids."""
    a, b = BPETokenizer([(104, 101)]), BPETokenizer([(104, 101)])
    b.split_pattern = GPT4_SPLIT_PATTERN
    encode_cached("hello there", a, tmp_path)
    encode_cached("hello there", b, tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 2


def test_data_corrupt_cached_tokenizer_is_retrained(tmp_path, capsys):
    """Item 8: a corrupt cached tokenizer is trained again, with a word about it, not a stopped run."""
    good = prepare_tokenizer(TEXT, 270, tmp_path, verbose=False)
    (cached,) = tmp_path.glob("tokenizer-*.json")
    cached.write_text('{"merges": [[1, 2')
    again = prepare_tokenizer(TEXT, 270, tmp_path, verbose=False)
    assert again.merges == good.merges
    out = capsys.readouterr().out
    assert "warning" in out and str(cached) in out and "training it again" in out
    assert BPETokenizer.load(cached).merges == good.merges    # the cache is whole again


def test_data_token_ids_do_not_fit_the_windows():
    data = TokenData(np.arange(100), np.arange(10))
    assert_one_line_error(DataError, lambda: fixed_windows(data.val_ids, 64, 4), "validation split", "10 tokens")


# --- config ----------------------------------------------------------------------------------------
from mdlm_course.config import ModelConfig, TrainConfig  # noqa: E402

# Item 15: every field is range-checked. (id, field overrides, needles)
TRAIN_CONFIGS = [
    ("beta1 2", {"beta1": 2}, ("TrainConfig.beta1", "[0, 1)", "got 2")),
    ("beta1 -0.1", {"beta1": -0.1}, ("TrainConfig.beta1",)),
    ("beta2 1", {"beta2": 1.0}, ("TrainConfig.beta2", "[0, 1)")),
    ("lr 0", {"lr": 0}, ("TrainConfig.lr", "(0, 10]")),
    ("lr nan", {"lr": float("nan")}, ("TrainConfig.lr", "nan")),
    ("lr inf", {"lr": float("inf")}, ("TrainConfig.lr",)),
    ("lr a string", {"lr": "1e-3"}, ("TrainConfig.lr", "'1e-3'")),
    ("min_lr above lr", {"lr": 1e-3, "min_lr": 1e-2}, ("TrainConfig.min_lr",)),
    ("batch_size 0", {"batch_size": 0}, ("TrainConfig.batch_size", "an int")),
    ("batch_size 1.5", {"batch_size": 1.5}, ("TrainConfig.batch_size", "1.5")),
    ("batch_size True", {"batch_size": True}, ("TrainConfig.batch_size", "True")),
    ("grad_accum 0", {"grad_accum": 0}, ("TrainConfig.grad_accum",)),
    ("max_steps -1", {"max_steps": -1}, ("TrainConfig.max_steps", "-1")),
    ("warmup_steps -1", {"warmup_steps": -1}, ("TrainConfig.warmup_steps",)),
    ("weight_decay -0.1", {"weight_decay": -0.1}, ("TrainConfig.weight_decay",)),
    ("grad_clip -1", {"grad_clip": -1}, ("TrainConfig.grad_clip",)),
    ("ema_decay 1", {"ema_decay": 1.0}, ("TrainConfig.ema_decay", "[0, 1)")),
    ("fp16_init_scale 0.5", {"fp16_init_scale": 0.5}, ("TrainConfig.fp16_init_scale",)),
    ("eval_interval 0", {"eval_interval": 0}, ("TrainConfig.eval_interval",)),
    ("eval_windows 0", {"eval_windows": 0}, ("TrainConfig.eval_windows",)),
    ("eval_t_per_window 0", {"eval_t_per_window": 0}, ("TrainConfig.eval_t_per_window",)),
    ("log_interval 0", {"log_interval": 0}, ("TrainConfig.log_interval",)),
    ("ckpt_interval -5", {"ckpt_interval": -5}, ("TrainConfig.ckpt_interval",)),
    ("seed -1", {"seed": -1}, ("TrainConfig.seed",)),
    ("dtype float16", {"dtype": "float16"}, ("TrainConfig.dtype", "bf16", "'float16'")),
    ("objective gpt", {"objective": "gpt"}, ("TrainConfig.objective", "mdlm", "ar")),
    ("schedule linear", {"schedule": "linear"}, ("unknown schedule", "'linear'", "loglinear")),
    ("stratified a string", {"stratified": "yes"}, ("TrainConfig.stratified", "True or False")),
    ("compile 1", {"compile": 1}, ("TrainConfig.compile",)),
    ("a misspelt field", {"temprature": 1.0}, ("unknown TrainConfig field", "temprature")),
]


@pytest.mark.parametrize("overrides, needles", [c[1:] for c in TRAIN_CONFIGS], ids=[c[0] for c in TRAIN_CONFIGS])
def test_config_train(overrides, needles):
    assert_one_line_error(ValueError, lambda: TrainConfig.preset("tiny", **overrides), *needles)


MODEL_CONFIGS = [
    ("vocab_size 0", {"vocab_size": 0}, ("ModelConfig.vocab_size", "positive int")),
    ("seq_len -1", {"seq_len": -1}, ("ModelConfig.seq_len",)),
    ("n_layer 1.5", {"n_layer": 1.5}, ("ModelConfig.n_layer", "1.5")),
    ("d_model not divisible", {"d_model": 65}, ("d_model=65", "n_head=2")),
    ("odd head size", {"d_model": 66, "n_head": 2}, ("head size", "even")),
    ("cond_dim odd", {"cond_dim": 7}, ("cond_dim=7", "even")),
    ("dropout 1", {"dropout": 1.0}, ("dropout", "[0, 1)")),
    ("rope_base 0", {"rope_base": 0.0}, ("rope_base", "> 1")),
    ("rope_base -5", {"rope_base": -5.0}, ("rope_base", "-5")),
    ("rope_base 1", {"rope_base": 1.0}, ("rope_base",)),
    ("rope_base inf", {"rope_base": float("inf")}, ("rope_base", "finite")),
    ("rope_base a string", {"rope_base": "1e4"}, ("rope_base",)),
    ("norm_eps 0", {"norm_eps": 0.0}, ("norm_eps", "(0, 1)")),
    ("norm_eps 1", {"norm_eps": 1.0}, ("norm_eps",)),
    ("a misspelt field", {"nlayer": 3}, ("unknown ModelConfig field", "nlayer")),
    ("vocab_size True", {"vocab_size": True}, ("ModelConfig.vocab_size",)),
    ("tie_embeddings a string", {"tie_embeddings": "no"}, ("tie_embeddings",)),
]


@pytest.mark.parametrize("overrides, needles", [pytest.param(*c[1:], id=c[0]) if isinstance(c[0], str) else c
                                                for c in MODEL_CONFIGS])
def test_config_model(overrides, needles):
    assert_one_line_error(ValueError, lambda: ModelConfig.preset("tiny", **overrides), *needles)


@pytest.mark.parametrize("make", [ModelConfig.preset, TrainConfig.preset], ids=["model", "train"])
def test_config_unknown_preset(make):
    assert_one_line_error(ValueError, lambda: make("huge"), "unknown", "'huge'", "tiny")


# --- model -----------------------------------------------------------------------------------------
from mdlm_course.model import MDLM  # noqa: E402

SMALL_MODEL = dict(vocab_size=50, seq_len=16, n_layer=1, n_head=2, d_model=16)


@pytest.fixture
def small_model(monkeypatch) -> MDLM:
    monkeypatch.delenv("MDLM_COURSE_DEBUG", raising=False)   # the id-range check off: the default
    torch.manual_seed(0)
    return MDLM(ModelConfig(**SMALL_MODEL))


MODEL_CALLS = [
    ("float ids", lambda m: m(torch.zeros(2, 4)), ("integer token ids", "(B, L)", "float32")),
    ("1-D ids", lambda m: m(torch.zeros(4, dtype=torch.long)), ("(B, L)", "(4,)")),
    ("bool ids", lambda m: m(torch.zeros(2, 4, dtype=torch.bool)), ("integer token ids",)),
    ("too long", lambda m: m(torch.zeros(1, 17, dtype=torch.long)), ("sequence length 17", "seq_len=16")),
]


@pytest.mark.parametrize("call, needles", [c[1:] for c in MODEL_CALLS], ids=[c[0] for c in MODEL_CALLS])
def test_model_call(small_model, call, needles):
    assert_one_line_error(ValueError, lambda: call(small_model), *needles)


def test_model_time_conditioned_needs_t():
    model = MDLM(ModelConfig(**SMALL_MODEL, time_conditioning=True, cond_dim=8))
    assert_one_line_error(ValueError, lambda: model(torch.zeros(1, 4, dtype=torch.long)), "time_conditioning", "t")


@pytest.mark.parametrize("bad", [50, -1, 10**6], ids=["vocab_size", "negative", "huge"])
def test_model_id_range_is_checked_when_asked(small_model, bad):
    """Item 12: model.check_inputs = True names the range; off by default (the check syncs the GPU)."""
    x = torch.tensor([[1, 2, bad]])
    assert small_model.check_inputs is False
    small_model.check_inputs = True
    assert_one_line_error(ValueError, lambda: small_model(x), "outside [0, 50)", "tokenizer")


def test_model_id_range_check_follows_the_environment(monkeypatch):
    monkeypatch.setenv("MDLM_COURSE_DEBUG", "1")
    model = MDLM(ModelConfig(**SMALL_MODEL))
    assert model.check_inputs is True
    assert_one_line_error(ValueError, lambda: model(torch.tensor([[3, 99]])), "outside [0, 50)", "max 99")
    monkeypatch.setenv("MDLM_COURSE_DEBUG", "0")
    assert MDLM(ModelConfig(**SMALL_MODEL)).check_inputs is False


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32])
def test_model_takes_small_integer_dtypes(small_model, dtype):
    """Not an error: ids of any integer dtype give the same logits as int64."""
    x = torch.tensor([[1, 2, 3, 4]])
    torch.testing.assert_close(small_model(x.to(dtype)), small_model(x), rtol=0, atol=0)


# --- diffusion -------------------------------------------------------------------------------------
from mdlm_course import diffusion  # noqa: E402


def _nelbo(model, x0, **kw):
    return diffusion.nelbo(model, x0, mask_id=49, **kw)


X0 = torch.randint(0, 49, (2, 8), generator=torch.Generator().manual_seed(0))

DIFFUSION_CALLS = [
    ("t 0", lambda m: _nelbo(m, X0, t=0.0), ValueError, ("t must lie in (0, 1]",)),
    ("t 1.5", lambda m: _nelbo(m, X0, t=1.5), ValueError, ("(0, 1]",)),
    ("t negative", lambda m: _nelbo(m, X0, t=torch.tensor([0.5, -0.1])), ValueError, ("(0, 1]",)),
    ("t nan", lambda m: _nelbo(m, X0, t=float("nan")), ValueError, ("(0, 1]",)),
    ("t wrong shape", lambda m: _nelbo(m, X0, t=torch.full((3,), 0.5)), ValueError, ("shape (B,)", "(2,)")),
    ("empty batch", lambda m: _nelbo(m, X0[:0]), ValueError, ("x0 is empty", "(0, 8)")),
    ("empty rows", lambda m: _nelbo(m, X0[:, :0]), ValueError, ("x0 is empty", "(2, 0)")),
    ("negative id", lambda m: _nelbo(m, X0 - 5), ValueError, ("negative token id",)),
    pytest.param(lambda m: _nelbo(m, X0 + 100), ValueError, ("vocabulary size 50",), id="id >= vocab"),
    ("x0 holds mask", lambda m: _nelbo(m, torch.full((1, 4), 49)), ValueError, ("mask_id=49", "[MASK]")),
    ("float x0", lambda m: _nelbo(m, X0.float()), ValueError, ("x0", "integer token ids", "float32")),
    ("1-D x0", lambda m: _nelbo(m, X0[0]), ValueError, ("x0", "(B, L)")),
    ("a list x0", lambda m: _nelbo(m, X0.tolist()), ValueError, ("x0", "tensor", "list")),
    pytest.param(lambda m: diffusion.nelbo(m, X0, mask_id=50), ValueError, ("mask_id=50", "size 50"),
                 id="mask_id outside vocab"),
    ("T 0", lambda m: diffusion.discrete_elbo(m, X0, mask_id=49, T=0), ValueError, ("T must be a positive int",)),
    ("generator 0", lambda m: _nelbo(m, X0, generator=0), TypeError, ("torch.Generator", "int")),
    ("unknown schedule", lambda m: _nelbo(m, X0, schedule="linear"), ValueError, ("unknown schedule", "'linear'")),
    ("q_step s > t", lambda m: diffusion.q_step(X0, 0.8, 0.2, 49), ValueError, ("s <= t",)),
    ("q_sample float", lambda m: diffusion.q_sample(X0.double(), 0.5, 49), ValueError, ("x0", "float64")),
]


@pytest.mark.parametrize("call, exc, needles", [pytest.param(*c[1:], id=c[0]) if isinstance(c[0], str) else c
                                                 for c in DIFFUSION_CALLS])
def test_diffusion_call(small_model, call, exc, needles):
    assert_one_line_error(exc, lambda: call(small_model), *needles)


@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8])
def test_diffusion_casts_integer_dtypes(small_model, dtype):
    """Item 12: int32 / uint8 x0 give exactly the int64 NELBO (same seed, same masks)."""
    want = _nelbo(small_model, X0, generator=torch.Generator().manual_seed(1))
    got = _nelbo(small_model, X0.to(dtype), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(got, want, rtol=0, atol=0)


# --- sampler ---------------------------------------------------------------------------------------
from mdlm_course.sampling import MIN_TEMPERATURE, categorical, sample  # noqa: E402


def _sample(model, **kw):
    args = dict(mask_id=49, num_samples=2, seq_len=8, steps=4, generator=torch.Generator().manual_seed(0))
    return sample(model, **{**args, **kw})


SAMPLER_CALLS = [
    ("temperature 0", dict(temperature=0.0), ("temperature", f">= {MIN_TEMPERATURE}")),
    ("temperature 1e-320", dict(temperature=1e-320), ("temperature", str(MIN_TEMPERATURE))),
    ("temperature below the floor", dict(temperature=MIN_TEMPERATURE / 2), ("temperature",)),
    ("temperature negative", dict(temperature=-1.0), ("temperature",)),
    ("temperature nan", dict(temperature=float("nan")), ("temperature", "nan")),
    ("temperature inf", dict(temperature=float("inf")), ("temperature", "finite")),
    ("temperature True", dict(temperature=True), ("temperature",)),
    ("top_p 0", dict(top_p=0.0), ("top_p", "(0, 1]")),
    ("top_p 1.5", dict(top_p=1.5), ("top_p",)),
    ("steps 0", dict(steps=0), ("steps", "int >= 1")),
    ("steps 2.5", dict(steps=2.5), ("steps", "2.5")),
    ("num_samples 0", dict(num_samples=0), ("num_samples",)),
    ("seq_len 0", dict(seq_len=0), ("seq_len",)),
    ("method greedy", dict(method="greedy"), ("unknown method", "ancestral")),
    ("mask_id outside vocab", dict(mask_id=50), ("mask_id=50", "vocabulary of size 50")),
    ("mask_id negative", dict(mask_id=-1), ("mask_id", ">= 0")),
    ("block_length 0", dict(block_length=0), ("block_length",)),
    ("prompt too long", dict(prompt=torch.arange(9)), ("prompt has 9 tokens", "seq_len=8")),
    ("prompt float", dict(prompt=torch.tensor([1.0, 2.0])), ("prompt", "float32")),
    ("prompt 2-D", dict(prompt=torch.zeros(2, 2, dtype=torch.long)), ("prompt", "1-D", "(2, 2)")),
    ("prompt negative", dict(prompt=torch.tensor([3, -2])), ("prompt", "negative token id -2")),
    ("prompt >= vocab", dict(prompt=torch.tensor([3, 77])), ("prompt", "77")),
]


@pytest.mark.parametrize("kwargs, needles", [c[1:] for c in SAMPLER_CALLS], ids=[c[0] for c in SAMPLER_CALLS])
def test_sampler_call(small_model, kwargs, needles):
    assert_one_line_error(ValueError, lambda: _sample(small_model, **kwargs), *needles)


def test_sampler_generator_of_the_wrong_type(small_model):
    assert_one_line_error(TypeError, lambda: _sample(small_model, generator=0), "torch.Generator")


@pytest.mark.parametrize("probs", [[[0.5, float("nan")]], [[0.0, 0.0]], [[0.5, -0.1]], [[float("inf"), 1.0]]],
                         ids=["nan", "all zero", "negative", "inf"])
def test_sampler_categorical_refuses_what_it_cannot_draw_from(probs):
    """Item 1: never a silent draw (of the last token, or of [MASK]) from probabilities that are not ones."""
    assert_one_line_error(ValueError, lambda: categorical(torch.tensor(probs, dtype=torch.float64)),
                          "NaN, inf, negative or all zero", "temperature")


def test_sampler_nan_weights_raise_instead_of_returning_masks(small_model):
    """Item 1: a model with NaN weights used to return mask_id everywhere, silently."""
    with torch.no_grad():
        small_model.head.weight[0, 0] = float("nan")
    assert_one_line_error(ValueError, lambda: _sample(small_model), "NaN", "checkpoint")


# --- checkpoint ------------------------------------------------------------------------------------
import mdlm_course.checkpoint as ckpt_module  # noqa: E402
from mdlm_course.checkpoint import (  # noqa: E402
    CheckpointError, CheckpointSaveError, check_writable, find_checkpoint, load_checkpoint, load_pretrained,
    meta_sha256, read_meta, save_checkpoint, save_checkpoint_safely,
)
from mdlm_course.train import make_optimizer  # noqa: E402

@pytest.fixture
def saved(tmp_path):
    """A checkpoint with everything: AdamW state, EMA, tokenizer, history."""
    torch.manual_seed(0)
    model = MDLM(ModelConfig(**SMALL_MODEL))
    opt = make_optimizer(model, TrainConfig(), torch.device("cpu"))
    model(torch.randint(0, 49, (2, 8))).logsumexp(-1).mean().backward()
    opt.step()
    return save_checkpoint(tmp_path / "run", model=model, step=7, train_config=TrainConfig().to_dict(),
                           tokenizer=BPETokenizer([]), optimizer=opt, ema_model=MDLM(ModelConfig(**SMALL_MODEL)),
                           metrics={"val_nelbo": 3.0}, history={"step": [1], "loss": [5.0]})


def _edit_meta(path, change, *, rehash=True) -> None:
    """Apply change(meta) to path/meta.json; rehash=True writes a matching meta_sha256, as a careful forger
    would, so that the schema check (not the hash) is what must catch it."""
    meta = json.loads((path / "meta.json").read_text())
    change(meta)
    if rehash:
        meta["meta_sha256"] = meta_sha256(meta)
    (path / "meta.json").write_text(json.dumps(meta))


def _set(*keys, value):
    def change(meta):
        d = meta
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    return change


def _drop(*keys):
    def change(meta):
        d = meta
        for k in keys[:-1]:
            d = d[k]
        del d[keys[-1]]
    return change


# Item 10: (id, change to meta.json, needles). Each gives a CheckpointError naming the field, never a
# KeyError / TypeError / AttributeError later.
META_CHANGES = [
    ("step a string", _set("step", value="7"), ('"step"', "int >= 0", "'7'")),
    ("step negative", _set("step", value=-1), ('"step"',)),
    ("step a float", _set("step", value=7.5), ('"step"', "7.5")),
    ("step true", _set("step", value=True), ('"step"',)),
    ("step missing", _drop("step"), ('"step"', "missing")),
    ("model_config missing", _drop("model_config"), ('"model_config"', "missing")),
    ("model_config a list", _set("model_config", value=[1, 2]), ('"model_config"',)),
    ("model_config unknown field", _set("model_config", "n_layers", value=2), ('"model_config"', "n_layers")),
    ("model_config vocab_size a string", _set("model_config", "vocab_size", value="50"),
     ('"model_config.vocab_size"', "an int")),
    ("model_config causal a string", _set("model_config", "causal", value="no"), ('"model_config.causal"', "true")),
    ("model_config out of range", _set("model_config", "rope_base", value=0.5), ('"model_config"', "rope_base")),
    ("train_config a list", _set("train_config", value=[]), ('"train_config"',)),
    ("metrics a string", _set("metrics", value="good"), ('"metrics"',)),
    ("metrics non-numeric", _set("metrics", "val_nelbo", value="3.0"), ('"metrics"',)),
    ("has_ema a string", _set("has_ema", value="yes"), ('"has_ema"', "true or false")),
    ("optimizer a string", _set("optimizer", value="adamw"), ('"optimizer"', "param_groups")),
    ("optimizer without param_groups", _drop("optimizer", "param_groups"), ('"optimizer"',)),
    ("grad_scaler a list", _set("grad_scaler", value=[1]), ('"grad_scaler"',)),
    ("rng missing", _drop("rng"), ('"rng"', "missing")),
    ("rng.python missing", _drop("rng", "python"), ('"rng.python"',)),
    ("rng.python short", _set("rng", "python", "internal", value=[1, 2, 3]), ('"rng.python"', "625 ints")),
    ("rng.numpy keys not base64", _set("rng", "numpy", "keys", value="!!"), ('"rng.numpy"', "base64")),
    ("rng.numpy pos a string", _set("rng", "numpy", "pos", value="3"), ('"rng.numpy"',)),
    ("history a list", _set("history", value=[1, 2]), ('"history"', "lists")),
    ("history values", _set("history", "loss", value=5.0), ('"history"',)),
    ("files a list", _set("files", value=[]), ('"files"',)),
    ("files without bytes", _drop("files", "model.safetensors", "bytes"), ('"files"',)),
    ("files outside the folder", _set("files", "../../etc/passwd", value={"bytes": 1, "sha256": "0" * 64}),
     ('"files"',)),
]


@pytest.mark.parametrize("change, needles", [c[1:] for c in META_CHANGES], ids=[c[0] for c in META_CHANGES])
def test_checkpoint_meta_schema(saved, change, needles):
    _edit_meta(saved, change)
    message = assert_one_line_error(CheckpointError, lambda: load_checkpoint(saved), "meta.json", *needles)
    assert "use another" in message or "edited" in message


@pytest.mark.parametrize("change", [_set("step", value=10**6), _set("metrics", "val_nelbo", value=0.1),
                                    _set("model_config", "causal", value=True)],
                         ids=["step", "metrics", "model_config"])
def test_checkpoint_meta_tampering_is_caught_by_its_hash(saved, change):
    """Item 10: a well-typed edit (a larger step: item 3's case) fails the hash, as an edited weight file does."""
    _edit_meta(saved, change, rehash=False)
    assert_one_line_error(CheckpointError, lambda: load_checkpoint(saved), "meta.json", "altered", "meta_sha256")
    assert_one_line_error(CheckpointError, lambda: load_pretrained(saved), "altered")


def test_checkpoint_meta_hash_of_the_wrong_type(saved):
    _edit_meta(saved, _set("meta_sha256", value=[1]), rehash=False)
    assert_one_line_error(CheckpointError, lambda: load_checkpoint(saved), "altered")


META_FILES = [
    ("nested lists", lambda good: b"[" * 100_000 + b"]" * 100_000, ("not a checkpoint file", "nested")),
    ("nested objects", lambda good: b'{"a":' * 100_000 + b"1" + b"}" * 100_000, ("not a checkpoint file",)),
    ("nested inside a valid meta", lambda good: good.replace(b'"history":', b'"history":' + b"[" * 50_000
                                                             + b"]" * 50_000 + b',"x":', 1), ("not a checkpoint file",)),
    ("int of 5000 digits", lambda good: good.replace(b'"step": 7', b'"step": ' + b"9" * 5000, 1),
     ("not a checkpoint file", "digits")),
    ("utf-16", lambda good: good.decode().encode("utf-16"), ("corrupt",)),
    ("truncated", lambda good: good[: len(good) // 2], ("corrupt or truncated",)),
    ("a JSON list", lambda good: b"[]", ("not an mdlm_course checkpoint",)),
    ("null", lambda good: b"null", ("not an mdlm_course checkpoint",)),
]


@pytest.mark.parametrize("make, needles", [c[1:] for c in META_FILES], ids=[c[0] for c in META_FILES])
def test_checkpoint_meta_file(saved, make, needles):
    """Item 11: JSON nested thousands of levels deep, and other garbage, in meta.json."""
    meta = saved / "meta.json"
    meta.write_bytes(make(meta.read_bytes()))
    assert_one_line_error(CheckpointError, lambda: load_checkpoint(saved), str(meta), *needles)


def test_checkpoint_nested_meta_in_a_sibling_does_not_break_best(saved):
    """find_checkpoint(run, "best") reads every meta.json's metrics; a bad one is never the best, and no crash."""
    other = saved.parent / "step-000009"
    shutil.copytree(saved, other)
    (other / "meta.json").write_bytes(b"[" * 100_000 + b"]" * 100_000)
    assert find_checkpoint(saved.parent, "best") == saved
    assert_one_line_error(CheckpointError, lambda: load_checkpoint(saved.parent, "latest"), "not a checkpoint file")


def test_checkpoint_meta_a_folder(saved):
    (saved / "meta.json").unlink()
    (saved / "meta.json").mkdir()
    assert_one_line_error(CheckpointError, lambda: load_checkpoint(saved), "not a regular file")


def _rewrite_weights(path, fname, change) -> None:
    """Change a safetensors file of the checkpoint, then update its size and sha256 in meta.json (and meta's
    own hash): what a training run that went NaN before the save check existed would have written."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(path / fname)
    change(tensors)
    save_file(tensors, path / fname, metadata={"format": ckpt_module.FORMAT})
    data = (path / fname).read_bytes()
    _edit_meta(path, _set("files", fname, value={"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}))


@pytest.mark.parametrize("fname, key, value", [("model.safetensors", "head.weight", float("nan")),
                                                ("model.safetensors", "tok_emb.weight", float("inf")),
                                                ("state.safetensors", "ema/head.weight", float("nan"))],
                         ids=["nan weight", "inf weight", "nan ema weight"])
def test_checkpoint_refuses_non_finite_weights_on_load(saved, fname, key, value):
    """Item 1: loading refuses NaN/inf weights, as saving does (else sample() would only see NaN)."""
    def poison(tensors):
        tensors[key][0, 0] = value

    _rewrite_weights(saved, fname, poison)
    read_meta(saved)   # the files themselves are consistent
    assert_one_line_error(CheckpointError, lambda: load_checkpoint(saved), key, "NaN or inf", "earlier checkpoint")
    assert_one_line_error(CheckpointError, lambda: load_pretrained(saved), key)


def test_checkpoint_written_before_the_hash_still_loads(saved):
    """Checkpoints written before meta_sha256 existed (their meta.json has no such key) load as before."""
    meta = json.loads((saved / "meta.json").read_text())
    del meta["meta_sha256"]
    (saved / "meta.json").write_text(json.dumps(meta))
    assert "meta_sha256" not in read_meta(saved) and read_meta(saved)["step"] == 7
    model, tok, _ = load_pretrained(saved)
    assert model.config.vocab_size == SMALL_MODEL["vocab_size"] and tok.vocab_size == 257


def test_checkpoint_new_ones_carry_their_hash(saved):
    meta = json.loads((saved / "meta.json").read_text())
    assert meta["meta_sha256"] == meta_sha256(meta)


@pytest.mark.parametrize("make", [lambda p: _file(p), lambda p: _file(p) / "sub"], ids=["a file", "under a file"])
def test_checkpoint_check_writable(tmp_path, make):
    """Item 6: --out / --cache-dir are probed before the first step."""
    folder = make(tmp_path)
    assert_one_line_error(CheckpointError, lambda: check_writable(folder), str(folder), "cannot write there",
                          "--out")
    assert (tmp_path / "a_file").read_text() == "x"


def test_checkpoint_find_with_a_bad_which(saved):
    assert_one_line_error(ValueError, lambda: find_checkpoint(saved.parent, "middle"), "'best' or 'latest'")


def _model_for_saving():
    torch.manual_seed(0)
    return MDLM(ModelConfig(**SMALL_MODEL))


def test_checkpoint_save_retries_once(tmp_path, monkeypatch, capsys):
    """Item 7: one failed save is retried, with a warning; the checkpoint is then whole."""
    real, calls = ckpt_module.save_checkpoint, []

    def flaky(run_dir, **kwargs):
        calls.append(run_dir)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        return real(run_dir, **kwargs)

    monkeypatch.setattr(ckpt_module, "save_checkpoint", flaky)
    path = save_checkpoint_safely(tmp_path / "run", model=_model_for_saving(), step=3)
    assert len(calls) == 2 and load_checkpoint(path).step == 3
    err = capsys.readouterr().err
    assert "No space left on device" in err and "retrying once" in err


def _saves_fail_for(monkeypatch, folder: Path, error: OSError, rescue: Path) -> None:
    """Every save_checkpoint into `folder` raises `error`; the fallback folder goes under `rescue`."""
    import tempfile

    real = ckpt_module.save_checkpoint

    def broken(run_dir, **kwargs):
        if Path(run_dir) == folder:
            raise error
        return real(run_dir, **kwargs)

    monkeypatch.setattr(ckpt_module, "save_checkpoint", broken)
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(rescue))


def test_checkpoint_save_fails_twice_then_rescues(tmp_path, monkeypatch, capsys):
    """Item 7: two failures write the run to a fallback folder, named in one line, and loadable from there."""
    target = tmp_path / "run"
    _saves_fail_for(monkeypatch, target, PermissionError(13, "Permission denied"), tmp_path / "rescue")
    model = _model_for_saving()
    message = assert_one_line_error(CheckpointSaveError, lambda: save_checkpoint_safely(target, model=model, step=3),
                                    str(target), "Permission denied", str(tmp_path / "rescue"), "--resume")
    assert isinstance(CheckpointSaveError("x"), CheckpointError)
    (rescued,) = (tmp_path / "rescue").glob("*/step-000003")
    assert str(rescued) in message
    torch.testing.assert_close(load_checkpoint(rescued).model_state["head.weight"], model.head.weight.detach())
    assert capsys.readouterr().err.count("warning") == 2


def test_checkpoint_broken_folder_is_skipped(tmp_path, monkeypatch, capsys, saved):
    """Item 8: one bad folder under checkpoints/ is skipped with a warning; the next usable one is used."""
    root = tmp_path / "checkpoints"
    (root / "a_broken").mkdir(parents=True)
    (root / "a_broken" / "meta.json").write_text("{not json")
    shutil.copytree(saved.parent, root / "b_good")
    monkeypatch.setattr(ckpt_module, "CHECKPOINTS", root)
    monkeypatch.setattr(ckpt_module, "SHIPPED", {"mdlm": root / "shakespeare-mdlm", "ar": root / "shakespeare-ar"})
    assert ckpt_module.find_shipped_checkpoint() == root / "b_good" / saved.name
    err = capsys.readouterr().err
    assert "warning: skipping" in err and "a_broken" in err and len(err.strip().splitlines()) == 1


def test_checkpoint_none_shipped(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt_module, "CHECKPOINTS", tmp_path / "none")
    monkeypatch.setattr(ckpt_module, "SHIPPED", {"mdlm": tmp_path / "none" / "x", "ar": tmp_path / "none" / "y"})
    assert_one_line_error(CheckpointError, lambda: load_pretrained(), "no shipped checkpoint", "make checkpoint")


# --- cli -------------------------------------------------------------------------------------------
# `python -m mdlm_course ...` in-process (cli.main): a mistake exits 2 with ONE line on stderr, and never
# costs the checkpoints already in --out. Runs use the tiny preset, 3 steps, 60 kB of text, caches in tmp.
from mdlm_course import cli  # noqa: E402
from mdlm_course.data import DEFAULT_CORPUS  # noqa: E402


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_text(DEFAULT_CORPUS.read_text(encoding="utf-8")[:60_000], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def _train_args(corpus, out, cache, *extra) -> list[str]:
    return ["train", "--preset", "tiny", "--steps", "3", "--data", str(corpus), "--out", str(out),
            "--cache-dir", str(cache), *extra]


def run_cli(capsys, argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_cli_error(capsys, argv, *needles, code: int = 2, progress: bool = False) -> str:
    """cli.main(argv) exits `code` with one line on stderr ("error: ..."), containing every needle.
    progress=True: the run trained first, so stderr also holds its progress bar and warnings; one error line."""
    rc, out, err = run_cli(capsys, argv)
    lines = [line for line in err.splitlines() if line.strip() and (not progress or "error" in line)]
    assert rc == code, (rc, out, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _snapshot(run: Path) -> dict:
    """Every file of a run directory and its bytes: equal before and after means nothing was lost or altered."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus, cache) -> Path:
    """A run directory holding one checkpoint, step 3 of the tiny preset (trained once for this section)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert cli.main(_train_args(corpus, out, cache, "--seed", "7")) == 0
    return out


@pytest.fixture
def run_copy(tmp_path, trained) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "run"))


# (id, extra options or replacements, needles); --out is a fresh folder, which must stay without a checkpoint.
CLI_TRAIN_ERRORS = [
    ("device foo", ["--device", "foo"], ("unknown device 'foo'", "cpu")),
    ("lr negative", ["--lr", "-1"], ("TrainConfig.lr", "-1")),
    ("steps 0", ["--steps", "0"], ("TrainConfig.max_steps",)),
    ("batch size 0", ["--batch-size", "0"], ("TrainConfig.batch_size",)),
    ("seed negative", ["--seed", "-1"], ("TrainConfig.seed",)),
    ("stop-at 0", ["--stop-at", "0"], ("stop_at",)),
    ("vocab size 100", ["--vocab-size", "100"], ("vocab_size", "257")),
    ("tokenizer missing", ["--tokenizer", "{tmp}/none.json"], ("no such tokenizer file",)),
    ("tokenizer nested", ["--tokenizer", "{nested}"], ("not a tokenizer file",)),
    ("tokenizer the corpus", ["--tokenizer", "{corpus}"], ("not a tokenizer file",)),
    ("init-from missing", ["--init-from", "{tmp}/no_run"], ("no such checkpoint",)),
    ("init-from nested meta", ["--init-from", "{bad_ckpt}"], ("not a checkpoint file",)),
    ("output shift on the AR twin", ["--objective", "ar", "--output-shift"], ("output_shift=True", "causal")),
    ("data missing", ["--data", "{tmp}/none.txt"], ("no such file",)),
    ("data a folder", ["--data", "{tmp}"], ("is a folder",)),
    ("data binary", ["--data", "{binary}"], ("looks binary",)),
    ("data a device", ["--data", os.devnull], ("not a regular file",)),
    ("out a file", ["--out", "{a_file}"], ("cannot write there", "--out")),
    ("out under a file", ["--out", "{a_file}/run"], ("cannot write there",)),
    ("cache-dir a file", ["--cache-dir", "{a_file}"], ("cannot write there", "--cache-dir")),
]


@pytest.mark.parametrize("extra, needles", [c[1:] for c in CLI_TRAIN_ERRORS], ids=[c[0] for c in CLI_TRAIN_ERRORS])
def test_cli_train_error(capsys, tmp_path, corpus, cache, trained, extra, needles):
    (tmp_path / "nested.json").write_bytes(b"[" * 100_000 + b"]" * 100_000)
    (tmp_path / "binary.txt").write_bytes(b"text\x00more")
    bad_ckpt = Path(shutil.copytree(trained, tmp_path / "bad_run"))
    for meta in bad_ckpt.glob("step-*/meta.json"):
        meta.write_bytes(b'{"a":' * 100_000 + b"1" + b"}" * 100_000)
    names = dict(tmp=tmp_path, nested=tmp_path / "nested.json", corpus=corpus, bad_ckpt=bad_ckpt,
                 binary=tmp_path / "binary.txt", a_file=_file(tmp_path))
    extra = [e.format(**names) for e in extra]
    out = tmp_path / "out"
    assert_cli_error(capsys, _train_args(corpus, out, cache, *extra), *needles)
    assert not list(out.glob("step-*")) and (tmp_path / "a_file").read_text() == "x"


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here")
def test_cli_train_cuda_without_cuda(capsys, tmp_path, corpus, cache):
    """Item 9: name the devices that exist here."""
    assert_cli_error(capsys, _train_args(corpus, tmp_path / "out", cache, "--device", "cuda"), "'cuda'",
                     "not available", "the devices here are", "cpu")


def test_cli_debug_shows_the_traceback(tmp_path, corpus, cache):
    """Item 17: --debug (before the command) re-raises the error itself."""
    with pytest.raises(ValueError, match="unknown device 'foo'"):
        cli.main(["--debug", *_train_args(corpus, tmp_path / "out", cache, "--device", "foo")])


# Resuming: (id, change to the run, extra options, needles). The run's files must be byte-for-byte unchanged.
def _nest_meta(run):
    for meta in run.glob("step-*/meta.json"):
        meta.write_bytes(b"[" * 100_000 + b"]" * 100_000)


def _bump_step(run):
    for ck in run.glob("step-*"):
        _edit_meta(ck, _set("step", value=1000), rehash=False)


CLI_RESUME_ERRORS = [
    ("meta nested", _nest_meta, ["--resume"], ("not a checkpoint file",)),
    ("meta edited", _bump_step, ["--resume"], ("altered", "meta_sha256")),
    ("no --resume", None, [], ("already holds checkpoints", "--resume")),
    ("other lr", None, ["--resume", "--lr", "0.01"], ("train config differs in lr",)),
    ("other batch size", None, ["--resume", "--batch-size", "4"], ("train config differs in batch_size",)),
    ("other seed", None, ["--resume", "--seed", "8"], ("train config differs in seed",)),
    ("other tokenizer", None, ["--resume", "--tokenizer", "{tok}"], ("vocab_size",)),
]


@pytest.mark.parametrize("change, extra, needles", [c[1:] for c in CLI_RESUME_ERRORS],
                         ids=[c[0] for c in CLI_RESUME_ERRORS])
def test_cli_resume_error_keeps_the_checkpoint(capsys, tmp_path, corpus, cache, run_copy, change, extra, needles):
    if change is not None:
        change(run_copy)
    BPETokenizer.train(TEXT, 300, verbose=False).save(tmp_path / "tok.json")
    before = _snapshot(run_copy)
    extra = [e.format(tok=tmp_path / "tok.json") for e in extra]
    assert_cli_error(capsys, _train_args(corpus, run_copy, cache, "--seed", "7", *extra), *needles)
    assert _snapshot(run_copy) == before


@pytest.mark.parametrize("steps", ["3", "2"], ids=["at the step", "below it"])
def test_cli_resume_at_or_past_the_last_step(capsys, corpus, cache, run_copy, steps):
    """Item 3: nothing to do is said, exit 0, and the checkpoint is untouched."""
    before = _snapshot(run_copy)
    args = _train_args(corpus, run_copy, cache, "--seed", "7", "--resume")
    args[args.index("--steps") + 1] = steps
    rc, out, err = run_cli(capsys, args)
    assert rc == 0, err
    assert "already at step 3; pass a larger --steps" in out + err
    assert _snapshot(run_copy) == before


def test_cli_same_seed_same_weights(capsys, tmp_path, corpus, cache, trained):
    """Item 2: two CLI runs with the same --seed give identical weights (the model is built after seeding)."""
    assert run_cli(capsys, _train_args(corpus, tmp_path / "a", cache, "--seed", "7"))[0] == 0
    first, again = load_checkpoint(trained).model_state, load_checkpoint(tmp_path / "a").model_state
    assert first.keys() == again.keys()
    for k in first:
        torch.testing.assert_close(again[k], first[k], rtol=0, atol=0, msg=k)


def test_cli_save_that_fails_twice_exits_4_and_keeps_the_run(capsys, tmp_path, corpus, cache, run_copy, monkeypatch):
    """Item 7: a run whose saves fail is written to a fallback folder (named, exit 4); the old checkpoint stays whole."""
    _saves_fail_for(monkeypatch, run_copy, OSError(28, "No space left on device"), tmp_path / "rescue")
    before = _snapshot(run_copy)
    args = _train_args(corpus, run_copy, cache, "--seed", "7", "--resume")
    args[args.index("--steps") + 1] = "5"
    line = assert_cli_error(capsys, args, "No space left on device", str(tmp_path / "rescue"), "--resume", code=4,
                            progress=True)
    assert _snapshot(run_copy) == before
    (rescued,) = (tmp_path / "rescue").glob("*/step-000005")
    assert str(rescued) in line and load_checkpoint(rescued).step == 5


def test_cli_data_fifo_does_not_hang(tmp_path, corpus, cache):
    """Item 18, in a subprocess with a timeout: a FIFO as --data is refused at once, never read."""
    fifo = _fifo(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "mdlm_course", *_train_args(fifo, tmp_path / "out", cache)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a regular file" in lines[0] and str(fifo) in lines[0]


# `sample`: (id, options, needles); --checkpoint is the trained run unless given.
CLI_SAMPLE_ERRORS = [
    ("checkpoint missing", ["--checkpoint", "{tmp}/none"], ("no such checkpoint",)),
    ("checkpoint nested meta", ["--checkpoint", "{bad}"], ("not a checkpoint file",)),
    ("temperature 0", ["--temperature", "0"], ("temperature",)),
    ("temperature nan", ["--temperature", "nan"], ("temperature",)),
    ("steps 0", ["--steps", "0"], ("steps",)),
    ("seq-len too long", ["--seq-len", "1000"], ("seq_len=1000", "--seq-len 64")),
    ("num 0", ["--num", "0"], ("num_samples",)),
]


@pytest.mark.parametrize("extra, needles", [c[1:] for c in CLI_SAMPLE_ERRORS], ids=[c[0] for c in CLI_SAMPLE_ERRORS])
def test_cli_sample_error(capsys, tmp_path, trained, extra, needles):
    bad = Path(shutil.copytree(trained, tmp_path / "bad"))
    _nest_meta(bad)
    extra = [e.format(tmp=tmp_path, bad=bad) for e in extra]
    args = ["sample", *([] if "--checkpoint" in extra else ["--checkpoint", trained]), *extra]
    assert_cli_error(capsys, args, *needles)


# --- the base class ---

def test_every_user_error_of_the_package_is_an_mdlm_error():
    """cli.main prints any MdlmError in one line: the package raises no bare ValueError of its own
    (TypeError is kept where Python code expects it, and subclasses it with MdlmError where it is the user's)."""
    import mdlm_course
    root = Path(mdlm_course.__file__).parent
    offenders = [f"{p.name}:{i}" for p in sorted(root.glob("*.py"))
                 for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
                 if "raise ValueError(" in line]
    assert offenders == []


# --- round 2 (issue 23): the public API ------------------------------------------------------------
# Each call is checked at the door of the public function: a one-line MdlmError naming what to fix.
from contextlib import contextmanager  # noqa: E402

import mdlm_course.evaluate as evaluate_module  # noqa: E402
import mdlm_course.tokenizer as tokenizer_module  # noqa: E402
from mdlm_course import visualize as visualize_module  # noqa: E402
from mdlm_course.ar import ar_sample  # noqa: E402
from mdlm_course.diffusion import CosineSchedule, LogLinearSchedule  # noqa: E402
from mdlm_course.evaluate import evaluate_checkpoint, make_val_set  # noqa: E402
from mdlm_course.pipeline import train_on_text  # noqa: E402
from mdlm_course.sampling import token_probs  # noqa: E402
from mdlm_course.train import train as train_model  # noqa: E402


@pytest.fixture
def causal_model() -> MDLM:
    torch.manual_seed(0)
    return MDLM(ModelConfig(**SMALL_MODEL, causal=True))


def _ar(model, **kw):
    args = dict(num_samples=2, seq_len=8, mask_id=49, first_token=3, generator=torch.Generator().manual_seed(0))
    return ar_sample(model, **{**args, **kw})


LOGITS = torch.randn(2, 50, generator=torch.Generator().manual_seed(0))
X0_SMALL = torch.randint(0, 49, (2, 8), generator=torch.Generator().manual_seed(1))

# (id, call given (MDLM, causal MDLM), needles)
ROUND2_API_CALLS = [
    ("q_sample t 2", lambda m, c: diffusion.q_sample(X0_SMALL, 2.0, 49), ("t must lie in [0, 1]", "2.0")),
    ("q_sample t -1", lambda m, c: diffusion.q_sample(X0_SMALL, -1.0, 49), ("t must lie in [0, 1]",)),
    ("q_sample t nan", lambda m, c: diffusion.q_sample(X0_SMALL, float("nan"), 49), ("t must lie in [0, 1]", "nan")),
    ("q_sample mask_id -1", lambda m, c: diffusion.q_sample(X0_SMALL, 0.5, -1), ("mask_id", ">= 0", "-1")),
    ("q_step s -1", lambda m, c: diffusion.q_step(X0_SMALL, -1.0, 0.5, 49), ("0 <= s <= t <= 1",)),
    ("q_step t 2", lambda m, c: diffusion.q_step(X0_SMALL, 0.5, 2.0, 49), ("0 <= s <= t <= 1",)),
    ("loglinear eps 1.5", lambda m, c: LogLinearSchedule(eps=1.5), ("eps", "[0, 1)", "1.5")),
    ("loglinear eps -0.5", lambda m, c: LogLinearSchedule(eps=-0.5), ("eps", "-0.5")),
    ("cosine eps 1", lambda m, c: CosineSchedule(eps=1.0), ("CosineSchedule", "eps")),
    ("discrete_elbo T 1e8", lambda m, c: diffusion.discrete_elbo(m, X0_SMALL, mask_id=49, T=10**8),
     ("T must be", "float32")),
    ("prior_term mask_id 99", lambda m, c: diffusion.prior_term(m, X0_SMALL, mask_id=99), ("mask_id=99", "50")),
    ("token_probs temperature -1", lambda m, c: token_probs(LOGITS, 49, temperature=-1.0), ("temperature", "-1.0")),
    ("token_probs temperature 0", lambda m, c: token_probs(LOGITS, 49, temperature=0.0), ("temperature",)),
    ("token_probs top_p 5", lambda m, c: token_probs(LOGITS, 49, top_p=5.0), ("top_p", "(0, 1]")),
    ("token_probs top_p 0", lambda m, c: token_probs(LOGITS, 49, top_p=0.0), ("top_p",)),
    ("categorical 1-D", lambda m, c: categorical(torch.tensor([0.5, 0.5])), ("(N, V)", "probs[None]")),
    ("sample a text prompt", lambda m, c: _sample(m, prompt="hello"), ("prompt", "encode it", "tokenizer.encode")),
    ("sample a causal model", lambda m, c: _sample(c), ("causal", "ar_sample")),
    ("ar_sample a bidirectional model", lambda m, c: _ar(m), ("causal model", "bidirectional", "sampling.sample")),
    ("ar_sample temperature -1", lambda m, c: _ar(c, temperature=-1.0), ("temperature", "-1.0")),
    ("ar_sample top_p 5", lambda m, c: _ar(c, top_p=5.0), ("top_p", "(0, 1]")),
    ("ar_sample top_p 0", lambda m, c: _ar(c, top_p=0.0), ("top_p", "(0, 1]")),
    ("ar_sample first_token mask_id", lambda m, c: _ar(c, first_token=49), ("mask_id=49", "start ids")),
    ("ar_sample first_token 1e6", lambda m, c: _ar(c, first_token=10**6), ("[0, 50)", "1000000")),
    ("ar_sample seq_len past the model", lambda m, c: _ar(c, seq_len=100), ("seq_len=100", "16 positions")),
    ("ar_sample num_samples 0", lambda m, c: _ar(c, num_samples=0), ("num_samples",)),
    ("time-conditioned t shape", lambda m, c: MDLM(ModelConfig(**SMALL_MODEL, time_conditioning=True, cond_dim=8))(
        torch.zeros(2, 4, dtype=torch.long), torch.full((3,), 0.5)), ("t must be", "(2,)", "(3,)")),
    ("time-conditioned t nan", lambda m, c: MDLM(ModelConfig(**SMALL_MODEL, time_conditioning=True, cond_dim=8))(
        torch.zeros(2, 4, dtype=torch.long), torch.full((2,), float("nan"))), ("t holds NaN",)),
    ("ModelConfig dropout a string", lambda m, c: ModelConfig(**SMALL_MODEL, dropout="0.1"),
     ("ModelConfig.dropout", "'0.1'")),
    ("ModelConfig seq_len 1e9", lambda m, c: ModelConfig(**{**SMALL_MODEL, "seq_len": 10**9}),
     ("ModelConfig.seq_len", "at most")),
    ("TrainConfig init_from 5", lambda m, c: TrainConfig(init_from=5), ("TrainConfig.init_from", "5")),
    ("TrainConfig seed 2**70", lambda m, c: TrainConfig(seed=2**70), ("TrainConfig.seed",)),
    ("TrainConfig.from_dict extra field", lambda m, c: TrainConfig.from_dict({**TrainConfig().to_dict(), "x": 1}),
     ("unknown fields", "'x'")),
    ("train_on_text 123", lambda m, c: train_on_text(123), ("data_path", "int")),
    ("train_on_text overrides a string", lambda m, c: train_on_text(DEFAULT_CORPUS, train_overrides="max_steps=5"),
     ("train_overrides", "dict", "str")),
    ("train_on_text out 5", lambda m, c: train_on_text(DEFAULT_CORPUS, out=5), ("out must be a folder", "int")),
    ("train out_dir 5", lambda m, c: train_model(m, TrainConfig(), None, mask_id=49, out_dir=5),
     ("out_dir must be a folder", "int")),
    ("save_checkpoint run_dir 5", lambda m, c: save_checkpoint(5, model=m, step=1), ("run_dir", "int")),
    ("TrainConfig device 5", lambda m, c: TrainConfig(device=5), ("TrainConfig.device", "5")),
    ("get_schedule 5", lambda m, c: diffusion.get_schedule(5), ("schedule must be", "int")),
    ("ar_sample a float prompt", lambda m, c: _ar(c, prompt=torch.tensor([1.5])), ("integer token ids", "float32")),
    ("fixed_windows n 0", lambda m, c: fixed_windows(torch.arange(100), 8, 0), ("fixed_windows.n", "0")),
    ("masked_ce_by_t windows 0", lambda m, c: evaluate_module.masked_ce_by_t(m, torch.arange(200) % 49, mask_id=49,
                                                                             seq_len=8, ts=[0.5], windows=0),
     ("fixed_windows.n",)),
    ("load_text 5", lambda m, c: load_text(5), ("str or Path", "int")),
    ("plot_history smooth a string", lambda m, c: visualize_module.plot_history({"step": [1], "loss": [1.0]},
                                                                                smooth="x"), ("plot_history.smooth",)),
    ("make_val_set passes 0", lambda m, c: make_val_set(torch.arange(200), 8, 2, 49, passes=0),
     ("make_val_set.passes", "0")),
    ("make_val_set n 0", lambda m, c: make_val_set(torch.arange(200), 8, 0, 49), ("make_val_set.n",)),
    ("load_pretrained 123", lambda m, c: load_pretrained(123), ("str or Path", "int")),
    ("load_pretrained device bogus", lambda m, c: load_pretrained(device="bogus"), ("unknown device 'bogus'",)),
]


@pytest.mark.parametrize("call, needles", [c[1:] for c in ROUND2_API_CALLS], ids=[c[0] for c in ROUND2_API_CALLS])
def test_round2_api_call(small_model, causal_model, call, needles):
    assert_one_line_error(MdlmError, lambda: call(small_model, causal_model), *needles)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here")
def test_round2_load_pretrained_on_cuda_without_cuda():
    assert_one_line_error(MdlmError, lambda: load_pretrained(device="cuda"), "'cuda'", "not available")


def test_round2_q_sample_keeps_its_range_ends():
    """Correct behaviour at the ends of [0, 1]: t = 0 masks nothing; eps = 0 is allowed (alpha_1 = 0)."""
    assert torch.equal(diffusion.q_sample(X0_SMALL, 0.0, 49), X0_SMALL)
    assert LogLinearSchedule(eps=0.0).eps == 0.0


def test_round2_ar_sample_of_a_causal_model_still_works(causal_model):
    x = _ar(causal_model, top_p=0.9, temperature=0.7)
    assert x.shape == (2, 8) and not bool((x == 49).any()) and bool((x[:, 0] == 3).all())


# save_checkpoint: (id, keyword changes, needles); nothing may be left in the run directory.
SAVE_CALLS = [
    ("step a string", dict(step="5"), ("step must be an int >= 0", "'5'")),
    ("step 2.5", dict(step=2.5), ("step", "2.5")),
    ("step -1", dict(step=-1), ("step", "-1")),
    ("metrics a list", dict(metrics=[1, 2]), ("metrics must be a dict of finite numbers",)),
    ("metrics nan", dict(metrics={"val_nelbo": float("nan")}), ("metrics", "finite", "nan")),
    ("history a string", dict(history="none"), ("history must be a dict of lists",)),
    ("model None", dict(model=None), ("model=an MDLM", "NoneType")),
    ("optimizer a string", dict(optimizer="adamw"), ("optimizer must be a torch.optim.Optimizer", "str")),
    ("tokenizer an int", dict(tokenizer=5), ("tokenizer must be a BPETokenizer", "int")),
    ("ema_model a dict", dict(ema_model={}), ("ema_model must be an nn.Module", "dict")),
]


@pytest.mark.parametrize("change, needles", [c[1:] for c in SAVE_CALLS], ids=[c[0] for c in SAVE_CALLS])
def test_round2_save_checkpoint_door(tmp_path, change, needles):
    args = {"model": _model_for_saving(), "step": 3, **change}
    assert_one_line_error(MdlmError, lambda: save_checkpoint(tmp_path / "run", **args), *needles)
    assert not list((tmp_path / "run").glob("*")) if (tmp_path / "run").exists() else True


def test_round2_a_failed_save_leaves_no_tmp_folder(tmp_path, monkeypatch):
    """Whatever fails mid-write (here the tokenizer's save), the hidden .tmp-step folder is removed."""
    class Broken:
        def save(self, path):
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "run", model=_model_for_saving(), step=3, tokenizer=Broken())
    assert list((tmp_path / "run").iterdir()) == []


# meta.json changes that used to pass: (id, change, rehash, needles)
def _bad_history(meta):
    meta["history"] = {"step": [1, 2], "loss": [5.0]}


ROUND2_META_CHANGES = [
    ("train_config lr a string", _set("train_config", "lr", value="0.01"), True, ('"train_config"', "lr")),
    ("train_config unknown schedule", _set("train_config", "schedule", value="linear"), True,
     ('"train_config"', "unknown schedule")),
    ("data a string", _set("data", value="small.txt"), True, ('"data"', "path")),
    ("data.path 5, hash removed", _set("data", value={"path": 5, "sha256": "0" * 64}), False, ('"data"',)),
    ("seq_len 1e9", _set("model_config", "seq_len", value=10**9), True, ('"model_config"', "seq_len")),
    ("metric nan, hash removed", _set("metrics", "val_nelbo", value=float("nan")), False,
     ('"metrics"', "finite")),
    ("history of different lengths", _bad_history, True, ('"history"', "one length")),
    ("step 2 in folder step-000007, hash removed", _set("step", value=2), False, ("step 2", "step-000007")),
]


@pytest.mark.parametrize("change, rehash, needles", [c[1:] for c in ROUND2_META_CHANGES],
                         ids=[c[0] for c in ROUND2_META_CHANGES])
def test_round2_checkpoint_meta(saved, change, rehash, needles):
    _edit_meta(saved, change, rehash=rehash)
    if not rehash:
        _edit_meta(saved, _drop("meta_sha256"), rehash=False)      # accepted as a pre-hash checkpoint
    assert_one_line_error(CheckpointError, lambda: load_checkpoint(saved), str(saved), *needles)


def test_round2_a_nan_metric_is_never_the_best(tmp_path):
    run = tmp_path / "run"
    for step, value in ((1, 5.0), (2, 4.0)):
        save_checkpoint(run, model=_model_for_saving(), step=step, metrics={"val_nelbo": value}, keep=False)
    _edit_meta(run / "step-000002", _set("metrics", "val_nelbo", value=float("nan")), rehash=False)
    assert find_checkpoint(run, "best") == run / "step-000001"


def test_round2_has_ema_without_ema_weights(saved):
    _rewrite_weights(saved, "state.safetensors", lambda t: [t.pop(k) for k in list(t) if k.startswith("ema/")])
    message = assert_one_line_error(CheckpointError, lambda: load_pretrained(saved), "has_ema", "no EMA weights",
                                    "ema=False")
    assert "use load_pretrained" not in message
    assert load_pretrained(saved, ema=False)[0] is not None


def test_round2_evaluate_checkpoint_api_types(saved):
    assert_one_line_error(MdlmError, lambda: evaluate_checkpoint(saved, windows="4"), "eval.windows", "'4'")
    assert_one_line_error(MdlmError, lambda: evaluate_checkpoint(saved, passes=1.5), "eval.passes", "1.5")


def test_round2_visualize_doors(small_model, tmp_path, monkeypatch):
    tok = BPETokenizer.train(TEXT, 300, verbose=False)
    assert_one_line_error(MdlmError, lambda: visualize_module.show_denoising(small_model, tok, seq_len=8, steps=4,
                                                                             fps=0), "show_denoising.fps", "0")
    calls = []
    monkeypatch.setattr(visualize_module.Trajectory, "run", lambda self, stop=None: calls.append(1))
    assert_one_line_error(MdlmError, lambda: visualize_module.record_gif(small_model, tok, tmp_path / "a.gif",
                                                                         seq_len=8, width=0), "record_gif.width", "0")
    assert calls == []                                              # refused before any sampling
    assert_one_line_error(MdlmError, lambda: visualize_module.plot_history(None), "plot_history", "NoneType")
    assert_one_line_error(MdlmError, lambda: visualize_module.plot_history({"step": [1, 2], "loss": [5.0]}),
                          "'step' and 'loss'", "different lengths")


def test_round2_window_on_an_offscreen_fallback_says_so(small_model, monkeypatch):
    """A stale DISPLAY: SDL falls back to its offscreen driver and the window would wait for Q forever, unseen."""
    pygame = pytest.importorskip("pygame")
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")                  # what opens here; then report "offscreen"
    monkeypatch.setattr(pygame.display, "get_driver", lambda: "offscreen")
    tok = BPETokenizer([], special_tokens=[MASK])
    model = MDLM(ModelConfig(**{**SMALL_MODEL, "vocab_size": tok.vocab_size}))
    assert_one_line_error(MdlmError, lambda: visualize_module.DenoisingWindow(model, tok, seq_len=8, steps=4),
                          "'offscreen'", "DISPLAY", "--record")


# --- round 2 (issue 23): the command line ----------------------------------------------------------
import socket  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

from mdlm_course.checkpoint import export_for_shipping  # noqa: E402


@pytest.fixture(scope="module")
def trained_ar(tmp_path_factory, corpus, cache) -> Path:
    """The AR twin of `trained`: same corpus, same tokenizer (cached), 3 steps."""
    out = tmp_path_factory.mktemp("trained_ar") / "run"
    assert cli.main(_train_args(corpus, out, cache, "--objective", "ar", "--seed", "7")) == 0
    return out


def _no_long_work(monkeypatch):
    """Any sampling or model loading for evaluation fails the test: the mistake must be refused before it."""
    def forbidden(*args, **kwargs):
        raise AssertionError("the long work started before the bad option was refused")

    for name in ("sample", "ar_sample"):
        monkeypatch.setattr(visualize_module, name, forbidden)
    monkeypatch.setattr(visualize_module.Trajectory, "run", forbidden)
    monkeypatch.setattr(visualize_module, "DenoisingWindow", forbidden)
    monkeypatch.setattr(evaluate_module, "load_pretrained", forbidden)


def _write_lock(run: Path, pid: int) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / ".lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": "earlier",
                                           "command": "python -m mdlm_course train (the first)"}))


def test_round2_cli_second_training_into_the_same_out_is_refused(capsys, tmp_path, corpus, cache):
    """Two trainings at once into one --out: the second refuses in one line naming the first (a real process)."""
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "mdlm_course", *_train_args(corpus, out, cache)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    try:
        deadline = time.monotonic() + 120
        while not (out / ".lock").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if first.poll() is not None:
            pytest.skip("the first training ended before the second could start")
        line = assert_cli_error(capsys, _train_args(corpus, out, cache), "in use by another training",
                                f"process {first.pid}", "another --out")
        assert "mdlm_course train" in line
    finally:
        first.kill()
        first.wait()


def test_round2_cli_live_lock_refuses_and_keeps_the_run(capsys, run_copy, corpus, cache):
    _write_lock(run_copy, os.getppid())                             # a live process of this host
    before = _snapshot(run_copy)
    assert_cli_error(capsys, _train_args(corpus, run_copy, cache, "--seed", "7", "--resume"),
                     "in use by another training", f"process {os.getppid()}", "(the first)")
    assert _snapshot(run_copy) == before


def test_round2_cli_stale_lock_is_taken_over(capsys, tmp_path, corpus, cache):
    """A lock left by a killed run (its process is gone) is recognised, taken over with a warning, and released."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "run"
    _write_lock(out, dead.pid)
    rc, _, err = run_cli(capsys, _train_args(corpus, out, cache))
    assert rc == 0, err
    assert "taking over the lock" in err and str(dead.pid) in err
    assert not (out / ".lock").exists() and list(out.glob("step-*"))


def test_round2_cli_resume_on_another_text(capsys, tmp_path, corpus, cache, run_copy):
    other = tmp_path / "other.txt"
    other.write_text(corpus.read_text(encoding="utf-8")[::-1], encoding="utf-8")
    before = _snapshot(run_copy)
    args = _train_args(other, run_copy, cache, "--seed", "7", "--resume")
    args[args.index("--steps") + 1] = "5"
    assert_cli_error(capsys, args, "cannot resume", "small.txt", "other.txt", "sha256")
    assert _snapshot(run_copy) == before


def test_round2_cli_resume_of_an_exported_checkpoint(capsys, tmp_path, corpus, cache, trained):
    """No optimizer state: refused (never a silent fresh optimizer), and nothing of it is pruned."""
    export_for_shipping(trained, tmp_path / "shipped")
    before = _snapshot(tmp_path / "shipped")
    args = _train_args(corpus, tmp_path / "shipped", cache, "--seed", "7", "--resume")
    args[args.index("--steps") + 1] = "5"
    assert_cli_error(capsys, args, "no optimizer state", "--init-from")
    assert _snapshot(tmp_path / "shipped") == before


def test_round2_cli_out_inside_a_checkpoint(capsys, corpus, cache, run_copy):
    before = _snapshot(run_copy)
    (ckpt,) = run_copy.glob("step-*")
    assert_cli_error(capsys, _train_args(corpus, ckpt / "nested", cache), "inside the checkpoint folder", ckpt.name)
    assert_cli_error(capsys, _train_args(corpus, ckpt, cache), "inside the checkpoint folder")
    assert _snapshot(run_copy) == before and not (ckpt / "nested").exists()


def test_round2_cli_lr_below_the_presets_min_lr(capsys, tmp_path, corpus, cache):
    """--lr 1e-5 (the tiny preset's min_lr is 3e-4) trains, min_lr scaled with it; --min-lr sets it."""
    assert run_cli(capsys, _train_args(corpus, tmp_path / "a", cache, "--lr", "1e-5"))[0] == 0
    cfg = load_checkpoint(tmp_path / "a").meta["train_config"]
    assert cfg["lr"] == 1e-5 and cfg["min_lr"] == pytest.approx(1e-6)
    assert run_cli(capsys, _train_args(corpus, tmp_path / "b", cache, "--lr", "1e-5", "--min-lr", "0"))[0] == 0
    assert load_checkpoint(tmp_path / "b").meta["train_config"]["min_lr"] == 0
    assert_cli_error(capsys, _train_args(corpus, tmp_path / "c", cache, "--lr", "1e-5", "--min-lr", "1e-3"),
                     "TrainConfig.min_lr")


def test_round2_cli_resume_after_the_init_folder_was_removed(capsys, tmp_path, corpus, cache, trained):
    init = Path(shutil.copytree(trained, tmp_path / "init"))
    args = _train_args(corpus, tmp_path / "run", cache, "--init-from", str(init), "--stop-at", "2")
    assert run_cli(capsys, args)[0] == 0
    shutil.rmtree(init)
    args = _train_args(corpus, tmp_path / "run", cache, "--init-from", str(init), "--resume")
    rc, _, err = run_cli(capsys, args)
    assert rc == 0, err
    assert load_checkpoint(tmp_path / "run").step == 3


def test_round2_cli_out_of_memory_is_one_line(capsys, tmp_path, corpus, cache, monkeypatch):
    def allocate(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 13421772800 bytes.\nmore lines")

    monkeypatch.setattr(cli, "train_on_text", allocate)
    assert_cli_error(capsys, _train_args(corpus, tmp_path / "out", cache, "--batch-size", "100000"),
                     "out of memory", "--batch-size")


# `sample` / `visualize` / `train`: (id, command and options, needles); refused before any sampling.
CLI_ROUND2_ERRORS = [
    ("sample steps 1e9", ["sample", "--steps", "1000000000"], ("--steps 1000000000", "100 x seq_len = 6400")),
    ("sample seq-len 0", ["sample", "--seq-len", "0"], ("--seq-len", ">= 1", "0")),
    ("sample seq-len -5", ["sample", "--seq-len", "-5"], ("--seq-len", "-5")),
    ("sample seed 2**70", ["sample", "--seed", str(2**70)], ("--seed",)),
    ("visualize steps 1e7", ["visualize", "--record", "{tmp}/a.gif", "--steps", "10000000"], ("--steps", "100 x")),
    ("visualize seq-len 0", ["visualize", "--record", "{tmp}/a.gif", "--seq-len", "0"], ("--seq-len",)),
    ("visualize stride 0", ["visualize", "--record", "{tmp}/a.gif", "--stride", "0"], ("--stride", "0")),
    ("visualize stride -1", ["visualize", "--record", "{tmp}/a.gif", "--stride", "-1"], ("--stride", "-1")),
    ("record .gif", ["visualize", "--record", "{tmp}/.gif"], ("a name before .gif",)),
    ("record a folder", ["visualize", "--record", "{tmp}/x.gif"], ("is a folder",)),
    ("record in /proc", ["visualize", "--record", "/proc/x.gif"], ("/proc/x.gif", "cannot write")),
    ("train seed 2**70", ["train", "--seed", str(2**70)], ("TrainConfig.seed",)),
    ("train data empty", ["train", "--data", ""], ("--data is empty",)),
    ("train out empty", ["train", "--out", ""], ("--out is empty",)),
    ("sample a meta.json", ["sample", "--checkpoint", "{meta}"], ("a file, not a checkpoint", "its folder")),
]


@pytest.mark.parametrize("argv, needles", [c[1:] for c in CLI_ROUND2_ERRORS], ids=[c[0] for c in CLI_ROUND2_ERRORS])
def test_round2_cli_error_before_sampling(capsys, tmp_path, corpus, cache, trained, monkeypatch, argv, needles):
    (tmp_path / "x.gif").mkdir()
    (meta,) = trained.glob("step-*/meta.json")
    argv = [a.format(tmp=tmp_path, meta=meta) for a in argv]
    if argv[0] == "train":
        argv = _train_args(corpus, tmp_path / "out", cache, *argv[1:])
    elif "--checkpoint" not in argv:
        argv = [argv[0], "--checkpoint", str(trained), *argv[1:]]
    _no_long_work(monkeypatch)
    assert_cli_error(capsys, argv, *needles)


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True, reason="root may write anywhere")
def test_round2_cli_record_into_a_read_only_folder(capsys, tmp_path, trained, monkeypatch):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o500)
    _no_long_work(monkeypatch)
    assert_cli_error(capsys, ["visualize", "--checkpoint", trained, "--record", tmp_path / "ro" / "a.gif"],
                     "cannot write")


CLI_EVAL_ERRORS = [
    ("passes 0", ["--passes", "0"], ("eval.passes", "0")),
    ("passes -1", ["--passes", "-1"], ("eval.passes", "-1")),
    ("windows 0", ["--windows", "0"], ("eval.windows", "0")),
    ("windows -5", ["--windows", "-5"], ("eval.windows", "-5")),
    ("samples -3", ["--samples", "-3"], ("eval.samples", "-3")),
    ("samples with steps 0", ["--samples", "4", "--steps", "0"], ("--steps", ">= 1")),
    ("samples with steps 1e9", ["--samples", "4", "--steps", "1000000000"], ("--steps", "100 x seq_len")),
    ("seed 2**70", ["--seed", str(2**70)], ("eval.seed",)),
    ("judge nowhere", ["--samples", "2", "--judge", "{tmp}/none"], ("no such checkpoint",)),
    ("judge an MDLM", ["--samples", "2", "--judge", "{mdlm}"], ("--judge", "an MDLM, not an AR model")),
    ("judge with another tokenizer", ["--samples", "2", "--judge", "{other_ar}"], ("--judge", "another tokenizer")),
    ("compare nowhere", ["--compare", "{tmp}/none"], ("no such checkpoint",)),
    ("compare with another tokenizer", ["--compare", "{other_ar}"], ("--compare", "another tokenizer")),
]


@pytest.fixture(scope="module")
def other_ar(tmp_path_factory, corpus, cache) -> Path:
    """An AR twin with another tokenizer (vocabulary 300)."""
    out = tmp_path_factory.mktemp("other_ar") / "run"
    assert cli.main(_train_args(corpus, out, cache, "--objective", "ar", "--vocab-size", "300")) == 0
    return out


@pytest.mark.parametrize("extra, needles", [c[1:] for c in CLI_EVAL_ERRORS], ids=[c[0] for c in CLI_EVAL_ERRORS])
def test_round2_cli_eval_error_before_the_evaluation(capsys, tmp_path, trained, other_ar, monkeypatch, extra, needles):
    extra = [e.format(tmp=tmp_path, mdlm=trained, other_ar=other_ar) for e in extra]
    _no_long_work(monkeypatch)
    assert_cli_error(capsys, ["eval", "--checkpoint", trained, *extra], *needles)


def test_round2_cli_sample_an_ar_checkpoint_left_to_right(capsys, trained_ar):
    """`sample` on the AR twin: ar_sample's draws (same seed, same start), never the masked-diffusion sampler."""
    rc, out, err = run_cli(capsys, ["sample", "--checkpoint", trained_ar, "--num", "2", "--seed", "3"])
    assert rc == 0 and "left to right" in err, err
    model, tok, _ = load_pretrained(trained_ar)
    want = ar_sample(model, num_samples=2, seq_len=64, prompt=torch.tensor(tok.encode("\n")[:1]), mask_id=tok.mask_id,
                     generator=torch.Generator().manual_seed(3))
    assert out == "".join(f"--- sample {i + 1}\n{visualize_module.render(tok, row)}\n"
                          for i, row in enumerate(want.tolist()))


def test_round2_visualize_an_ar_checkpoint_left_to_right(capsys, tmp_path, trained_ar):
    """The window and the GIF show the AR twin writing left to right: position i is revealed at step i."""
    model, tok, _ = load_pretrained(trained_ar)
    traj = visualize_module.Trajectory(model, tok, seq_len=16, steps=None, seed=3)
    traj.run()
    assert traj.error is None and traj.method == "left-to-right"
    assert traj.reveal_step.tolist() == list(range(16)) and traj.total_steps == 15
    want = ar_sample(model, num_samples=1, seq_len=16, prompt=torch.tensor(tok.encode("\n")[:1]), mask_id=tok.mask_id,
                     generator=torch.Generator().manual_seed(3))[0]
    assert traj.ids(traj.num_frames - 1).tolist() == want.tolist()
    assert 0 < float(traj.prob[1:].min()) and float(traj.prob[1:].max()) <= 1
    pytest.importorskip("pygame")
    pytest.importorskip("PIL")
    rc, out, err = run_cli(capsys, ["visualize", "--checkpoint", trained_ar, "--seq-len", "16", "--record",
                                    tmp_path / "ar.gif"])
    assert rc == 0 and "left to right" in err, err
    assert (tmp_path / "ar.gif").stat().st_size > 0


def test_round2_cli_sample_shows_control_characters_as_replacement(capsys, trained):
    rc, out, err = run_cli(capsys, ["sample", "--checkpoint", trained, "--prompt", "\x1b[2Jhi\x1b]0;x\x07",
                                    "--seq-len", "40"])
    assert rc == 0, err
    assert "\x1b" not in out and "\x07" not in out and "\ufffd" in out


def test_round2_cli_broken_pipe_exits_quietly(tmp_path, trained):
    """`sample ... | head -1`: the reader has gone; the command exits without a traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "mdlm_course", "sample", "--checkpoint", str(trained), "--num", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    proc.stdout.close()                                             # before the first line is written
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert proc.returncode == 141


def test_round2_causal_flipped_against_the_objective(saved):
    """An MDLM whose meta.json says causal (hash removed) would be scored as an AR model: its train_config's
    objective says otherwise, and loading says so."""
    _edit_meta(saved, _set("model_config", "causal", value=True), rehash=False)
    _edit_meta(saved, _drop("meta_sha256"), rehash=False)
    assert_one_line_error(CheckpointError, lambda: load_checkpoint(saved), '"model_config.causal"', "'mdlm'")


def test_round2_unreadable_model_file_is_named_as_such(saved, monkeypatch):
    real = os.access
    monkeypatch.setattr(ckpt_module.os, "access", lambda p, mode: not str(p).endswith("model.safetensors")
                        and real(p, mode))
    assert_one_line_error(CheckpointError, lambda: load_checkpoint(saved), "model.safetensors", "cannot be read",
                          "permission")


def test_round2_sample_on_a_meta_device_model():
    model = MDLM(ModelConfig(**SMALL_MODEL)).to("meta")
    assert_one_line_error(MdlmError, lambda: _sample(model), "meta device", "load_pretrained")


def test_round2_record_onto_a_full_disk(capsys, tmp_path, trained, monkeypatch):
    """ENOSPC while the GIF is written: one line naming the file, and no half-written GIF."""
    pytest.importorskip("pygame")
    pytest.importorskip("PIL")

    @contextmanager
    def full_disk(path):
        raise OSError(28, "No space left on device")
        yield                                                       # never reached: the write fails first

    monkeypatch.setattr(visualize_module, "atomic_path", full_disk)
    assert_cli_error(capsys, ["visualize", "--checkpoint", trained, "--seq-len", "8", "--record", tmp_path / "a.gif"],
                     "a.gif", "No space left on device", "--record")
    assert not (tmp_path / "a.gif").exists()


def test_round2_sample_out_of_memory_is_one_line(capsys, trained, monkeypatch):
    def allocate(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 52428800000 bytes.")

    monkeypatch.setattr(visualize_module, "sample", allocate)
    assert_cli_error(capsys, ["sample", "--checkpoint", trained, "--num", "100000"], "out of memory", "--num")


def test_round2_bpe_on_text_without_whitespace_says_why_it_is_slow(capsys, monkeypatch):
    """Text without spaces splits into chunks that never repeat, and BPE's work grows with their bytes: a note
    says so before the minutes start (the threshold lowered here, so that a small text shows it)."""
    monkeypatch.setattr(tokenizer_module, "SLOW_DISTINCT_BYTES", 5_000)
    text = "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(3000))    # CJK without spaces: no repeats
    BPETokenizer.train(text, 260, verbose=True)
    err = capsys.readouterr().err
    assert "distinct chunks" in err and "without spaces" in err and "minutes" in err
    BPETokenizer.train(TEXT, 260, verbose=True)                     # repeated words: no note
    assert "distinct chunks" not in capsys.readouterr().err


def test_round2_sample_api_steps_capped(small_model):
    """sample(steps=10**9) used to build a time grid of gigabytes (OOM-killed after 94 s): one line now."""
    assert_one_line_error(MdlmError, lambda: _sample(small_model, steps=10**9), "steps=1000000000", "gigabytes")


def test_round2_run_lock_without_hard_links(tmp_path, monkeypatch):
    """A file system without hard links still gets a lock (O_EXCL), released afterwards."""
    def no_links(src, dst):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(ckpt_module.os, "link", no_links)
    with ckpt_module.run_lock(tmp_path / "run") as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        _write_lock(tmp_path / "other", os.getppid())
        assert_one_line_error(CheckpointError, lambda: ckpt_module.run_lock(tmp_path / "other").__enter__(),
                              "in use by another training")
    assert not lock.exists()


@pytest.mark.parametrize("command, target", [("demo", "run_demo"), ("eval", "evaluate_checkpoint")])
def test_round2_cli_broken_pipe_in_demo_and_eval(capsys, monkeypatch, trained, command, target):
    """`demo | head -3`, `eval ... | head -1`: the same quiet exit as `sample`."""
    def reader_gone(*args, **kwargs):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, target, reader_gone)
    rc, out, err = run_cli(capsys, [command] + (["--checkpoint", trained] if command == "eval" else []))
    assert rc == 141 and err == ""


def test_round2_cli_eval_with_an_ar_judge_of_the_same_tokenizer(capsys, trained, trained_ar):
    """Correct behaviour: an AR judge with the checkpoint's tokenizer is accepted and scores the samples."""
    rc, out, err = run_cli(capsys, ["eval", "--checkpoint", trained, "--windows", "2", "--passes", "2", "--samples",
                                    "2", "--steps", "8", "--judge", trained_ar])
    assert rc == 0, err
    assert "generative perplexity" in out


def test_round2_resume_with_an_extra_train_config_field(capsys, corpus, cache, run_copy):
    """A train_config field this version does not know: sampling still loads it; resuming says so in one line."""
    for ck in run_copy.glob("step-*"):
        _edit_meta(ck, _set("train_config", "extra", value=1))
    assert load_pretrained(run_copy)[0] is not None
    before = _snapshot(run_copy)
    args = _train_args(corpus, run_copy, cache, "--seed", "7", "--resume")
    args[args.index("--steps") + 1] = "5"
    assert_cli_error(capsys, args, "cannot resume", "unknown fields ['extra']")
    assert _snapshot(run_copy) == before


def test_round2_first_hitting_ignores_steps_so_no_cap(capsys, trained):
    """Correct behaviour: first_hitting takes one step per token whatever --steps says; a large one is not an error."""
    rc, out, err = run_cli(capsys, ["sample", "--checkpoint", trained, "--method", "first_hitting", "--steps",
                                    "1000000", "--seq-len", "8"])
    assert rc == 0 and out.startswith("--- sample 1"), err


def test_round2_resume_with_a_stop_at_already_passed(capsys, corpus, cache, run_copy):
    """--stop-at at or below the step reached: the note names --stop-at (not --steps), exit 0, nothing written."""
    before = _snapshot(run_copy)
    args = _train_args(corpus, run_copy, cache, "--seed", "7", "--resume", "--stop-at", "2")
    args[args.index("--steps") + 1] = "10"
    rc, out, err = run_cli(capsys, args)
    assert rc == 0, err
    assert "already at step 3; pass a larger --stop-at" in out + err
    assert _snapshot(run_copy) == before


def test_round2_export_into_a_run_that_holds_checkpoints(tmp_path, trained):
    """Exporting into the source run (or any folder with checkpoints) would replace its checkpoint by one without
    optimizer state: refused, and the run is untouched."""
    run = Path(shutil.copytree(trained, tmp_path / "run"))
    before = _snapshot(run)
    assert_one_line_error(CheckpointError, lambda: export_for_shipping(run, run), "already holds checkpoints",
                          "new folder")
    assert_one_line_error(CheckpointError, lambda: export_for_shipping(run, next(run.glob("step-*")) / "x"),
                          "inside the checkpoint folder")
    assert _snapshot(run) == before


def test_round2_run_lock_between_threads_of_one_process(tmp_path):
    """Two trainings in two threads of one process (a notebook) into one folder: the second is refused too;
    the same thread may nest (train_on_text, then train())."""
    errors = []
    with ckpt_module.run_lock(tmp_path / "run"):
        with ckpt_module.run_lock(tmp_path / "run"):                # nested in the same thread: fine
            pass
        assert (tmp_path / "run" / ".lock").exists()

        def second():
            try:
                with ckpt_module.run_lock(tmp_path / "run"):
                    pass
            except CheckpointError as e:
                errors.append(str(e))

        thread = threading.Thread(target=second)
        thread.start()
        thread.join()
    assert len(errors) == 1 and "in use by another training" in errors[0] and str(os.getpid()) in errors[0]
    assert not (tmp_path / "run" / ".lock").exists()


def test_round2_train_api_refuses_to_resume_an_exported_checkpoint(tmp_path, trained):
    """train() itself (not only the CLI) refuses an exported checkpoint, before any step."""
    export_for_shipping(trained, tmp_path / "shipped")
    model, tok, meta = load_pretrained(tmp_path / "shipped")
    data = TokenData(torch.arange(5000) % 200, torch.arange(2000) % 200)
    cfg = TrainConfig.from_dict(meta["train_config"])
    before = _snapshot(tmp_path / "shipped")
    assert_one_line_error(CheckpointError, lambda: train_model(model.train(), cfg, data, tokenizer=tok,
                                                               out_dir=tmp_path / "shipped", resume=True,
                                                               progress=False), "no optimizer state", "--init-from")
    assert _snapshot(tmp_path / "shipped") == before


# --- round 2 (issue 23), second probe: the cases it left open ----------------------------------------
from mdlm_course.ar import next_token_nll  # noqa: E402
from mdlm_course.evaluate import sample_quality, words  # noqa: E402
from mdlm_course.sampling import denoise  # noqa: E402


def test_round2_tokenizer_with_vocab_size_is_refused(capsys, tmp_path, corpus, cache, tok):
    """--tokenizer fixes the vocabulary, so --vocab-size beside it would be silently ignored: one line naming both,
    in the CLI and in train_on_text, before anything is written."""
    tok.save(tmp_path / "tok.json")
    out = tmp_path / "out"
    assert_cli_error(capsys, _train_args(corpus, out, cache, "--tokenizer", tmp_path / "tok.json", "--vocab-size",
                                         "300"), "--tokenizer", "--vocab-size")
    assert_one_line_error(MdlmError, lambda: train_on_text(corpus, out=out, tokenizer_path=tmp_path / "tok.json",
                                                           vocab_size=300), "--tokenizer", "--vocab-size")
    assert not out.exists()


def test_round2_nelbo_stratified_must_be_a_bool(small_model):
    """stratified="no" is truthy: it would silently draw stratified times. nelbo and discrete_elbo refuse it."""
    assert_one_line_error(MdlmError, lambda: diffusion.nelbo(small_model, X0_SMALL, mask_id=49, stratified="no"),
                          "stratified must be True or False", "'no'")
    assert_one_line_error(MdlmError, lambda: diffusion.discrete_elbo(small_model, X0_SMALL, mask_id=49, T=10,
                                                                     stratified=1), "stratified", "int")
    assert torch.isfinite(diffusion.nelbo(small_model, X0_SMALL, mask_id=49, stratified=False))


def test_round2_sample_cache_must_be_a_bool(small_model):
    """cache="no" would silently mean cache=True: refused by sample and by denoise when called (before any step)."""
    assert_one_line_error(MdlmError, lambda: _sample(small_model, cache="no"), "cache must be True or False", "'no'")
    assert_one_line_error(MdlmError, lambda: denoise(small_model, mask_id=49, num_samples=1, seq_len=8, steps=4,
                                                     cache=0), "cache", "int")
    assert _sample(small_model, cache=False).shape == (2, 8)


def test_round2_sample_t_checks_t_min_and_stratified():
    """sample_t (notebook 04) with t_min outside [0, 1) gave times outside [0, 1]; NaN gave NaN times."""
    for t_min in (2, -0.5, 1.0, float("nan"), "0.1"):
        assert_one_line_error(MdlmError, lambda: diffusion.sample_t(4, t_min=t_min), "t_min", "[0, 1)")
    assert_one_line_error(MdlmError, lambda: diffusion.sample_t(4, stratified="no"), "stratified", "'no'")
    t = diffusion.sample_t(4, generator=torch.Generator().manual_seed(0), t_min=0.0)
    assert t.shape == (4,) and bool(((t >= 0) & (t < 1)).all())


def test_round2_unmask_probability_needs_s_before_t():
    """s > t gave a negative 'probability'; t = 0 gave 0/0. Both refused, naming the first bad pair."""
    assert_one_line_error(MdlmError, lambda: diffusion.unmask_probability(0.7, 0.4), "0 <= s <= t <= 1",
                          "s=0.7", "t=0.4")
    assert_one_line_error(MdlmError, lambda: diffusion.unmask_probability(0.0, 0.0, "cosine"), "t > 0")
    assert_one_line_error(MdlmError, lambda: diffusion.unmask_probability(torch.tensor([0.1, 0.9]),
                                                                          torch.tensor([0.5, 0.5])), "s=0.9")
    assert diffusion.unmask_probability(0.4, 0.7).item() == pytest.approx(0.3 / 0.7)   # log-linear: (t - s) / t


def test_round2_next_token_nll_shape_mismatch():
    """Logits of one batch with the ids of another: (1, 9) and (2, 5) both flatten to 8 targets, a silent wrong
    score; refused by the shapes (no device sync)."""
    x0 = torch.zeros(2, 5, dtype=torch.long)
    assert_one_line_error(MdlmError, lambda: next_token_nll(torch.randn(1, 9, 50), x0), "next_token_nll",
                          "(1, 9, 50)", "(2, 5)")
    assert_one_line_error(MdlmError, lambda: next_token_nll(torch.randn(2, 5), x0), "(B, L, V)")
    assert next_token_nll(torch.randn(2, 5, 50), x0).shape == (2, 4)


def test_round2_token_data_refuses_text():
    """TokenData("the text", ...) said "new(): invalid data type 'str'"; now it names from_text."""
    assert_one_line_error(DataError, lambda: TokenData("some text", "more"), "train_ids", "str",
                          "TokenData.from_text")
    assert_one_line_error(DataError, lambda: TokenData(np.arange(100), None), "val_ids", "NoneType")
    assert_one_line_error(DataError, lambda: TokenData(np.arange(100.0), np.arange(10)), "train_ids", "float64")
    assert_one_line_error(DataError, lambda: TokenData(np.arange(100), np.zeros((2, 5), dtype=np.int64)),
                          "val_ids", "(2, 5)")
    data = TokenData(np.arange(100, dtype=np.uint16), [1, 2, 3])
    assert data.train_ids.dtype == data.val_ids.dtype == torch.long and data.val_ids.tolist() == [1, 2, 3]


def test_round2_render_of_no_sequence(tok):
    """render(tok, 5) was "'int' object is not iterable"; a batch (2, L) is refused too: render one row."""
    assert_one_line_error(MdlmError, lambda: visualize_module.render(tok, 5), "render", "int")
    assert_one_line_error(MdlmError, lambda: visualize_module.render(tok, torch.zeros(2, 3, dtype=torch.long)),
                          "(2, 3)")
    ids = tok.encode("the fox")
    assert visualize_module.render(tok, ids) == visualize_module.render(tok, torch.tensor(ids)) == "the fox"


def test_round2_words_of_no_text():
    assert_one_line_error(MdlmError, lambda: words(None), "text must be a str", "NoneType")
    assert_one_line_error(MdlmError, lambda: words(b"O Romeo"), "text must be a str", "bytes")
    assert words("O, Romeo! 'Tis") == ["o", "romeo", "tis"]


def test_round2_sample_quality_of_no_samples(tok):
    """0 samples, or one sequence given as 1-D: refused at the door, before any decoding or scoring."""
    assert_one_line_error(MdlmError, lambda: sample_quality(torch.zeros(0, 8, dtype=torch.long), tok,
                                                            train_words=set()), "0 rows", "at least one sample")
    assert_one_line_error(MdlmError, lambda: sample_quality(torch.zeros(8, dtype=torch.long), tok,
                                                            train_words=set()), "samples", "(B, L)")
    assert sample_quality(torch.tensor([tok.encode("the quick brown fox")]), tok, train_words={"the"})["samples"] == 1
