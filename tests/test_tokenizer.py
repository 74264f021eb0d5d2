"""Byte-level BPE (mdlm_course/tokenizer.py): exact round trips, exact merges, exact tiktoken parity.

What is proved here, and against what:
  - decode(encode(s)) == s for hostile strings and for random unicode (hypothesis);
  - the incremental trainer learns the SAME merges, in the same order, as a naive trainer written
    below that recounts every pair of every chunk at every step (about 100 KB of Shakespeare);
  - the tie-breaking rule (highest count, then the smallest pair (a, b)) on a hand-made text;
  - the tiktoken fast path gives the same ids as the pure-Python path on the whole corpus;
  - "[MASK]" typed in text never becomes the mask id unless asked for;
  - save/load round-trips, and every kind of broken file gives a one-line TokenizerFileError
    (the full list of bad inputs is in tests/test_bad_input.py);
  - the chunk cap (MAX_CHUNK_CHARS) cuts long runs, and changes nothing on ordinary text: the whole
    Shakespeare corpus splits as with GPT-4's regex, and the shipped tokenizer encodes it to the same ids;
No test depends on timing (bench/bench_tokenizer.py measures the speed, linear with the cap).
"""
from __future__ import annotations

import json
import os
import pickle
from itertools import chain
from pathlib import Path

import pytest
import regex
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdlm_course import BPETokenizer
from mdlm_course.data import DEFAULT_CORPUS
from mdlm_course.tokenizer import (
    GPT4_SPLIT_PATTERN, MASK, MAX_CHUNK_CHARS, SPLIT_PATTERN, TokenizerFileError, merge, pre_split, show_split,
)

SHIPPED_TOKENIZER = Path(__file__).resolve().parents[1] / "checkpoints" / "tokenizer_shakespeare_4096.json"

MULTILINGUAL = (
    "Ünïcödé façade naïve café. 日本語のテキストと中文和한국어 텍스트. Привет, мир! Γειά σου κόσμε. "
    "مرحبا بالعالم. שלום עולם. नमस्ते दुनिया. 😀😃👩‍👩‍👧‍👦🇫🇷👍🏽 e\u0301 123456 ∑∫√π\r\n\t"
)


@pytest.fixture(scope="module")
def corpus() -> str:
    return DEFAULT_CORPUS.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def small_tok(corpus) -> BPETokenizer:
    """A small tokenizer (vocab 600) that has seen English and some other scripts."""
    return BPETokenizer.train(corpus[:50_000] + MULTILINGUAL * 20, vocab_size=600, verbose=False)


@pytest.fixture(scope="module")
def corpus_tok(corpus) -> BPETokenizer:
    """Trained once per session on the whole corpus (5 MB); 1024 keeps the suite quick, the bench does 4096."""
    return BPETokenizer.train(corpus, vocab_size=1024, verbose=False)


# ---------------------------------------------------------------- a naive reference trainer
def naive_train(text: str, n_merges: int) -> list[tuple[int, int]]:
    """The obviously correct BPE: at every step recount every adjacent pair of every chunk.

    Chunks are the pre-split pieces of the text; a chunk that occurs f times is counted f times
    (stored once with its frequency f, which only saves work). Ties: highest count, then the smallest
    (a, b). Written independently of the package: its own counting and merging, no index, no heap.
    """
    freq: dict[str, int] = {}
    for chunk in regex.findall(SPLIT_PATTERN, text):
        freq[chunk] = freq.get(chunk, 0) + 1
    chunks = [(list(c.encode("utf-8")), f) for c, f in freq.items()]
    merges = []
    for k in range(n_merges):
        counts: dict[tuple[int, int], int] = {}
        for ids, f in chunks:
            for pair in zip(ids, ids[1:]):
                counts[pair] = counts.get(pair, 0) + f
        if not counts:
            break
        best = max(counts, key=lambda p: (counts[p], -p[0], -p[1]))
        merges.append(best)
        a, b = best
        new_chunks = []
        for ids, f in chunks:
            if a not in ids:  # nothing to merge in this chunk
                new_chunks.append((ids, f))
                continue
            out, i = [], 0
            while i < len(ids):
                if i + 1 < len(ids) and ids[i] == a and ids[i + 1] == b:
                    out.append(256 + k)
                    i += 2
                else:
                    out.append(ids[i])
                    i += 1
            new_chunks.append((out, f))
        chunks = new_chunks
    return merges


@pytest.mark.slow
def test_incremental_trainer_matches_naive_on_100kb(corpus):
    text = corpus[200_000:300_000]  # 100 KB from the middle: prose, verse, speaker names
    n_merges = 300
    tok = BPETokenizer.train(text, vocab_size=256 + n_merges + 1, verbose=False)
    assert tok.merges == naive_train(text, n_merges)


def test_incremental_trainer_matches_naive_to_exhaustion():
    """A text full of ties (few letters, random order) merged until no pair is left: every step agrees."""
    import random

    rng = random.Random(0)
    text = " ".join("".join(rng.choice("abcé😀") for _ in range(rng.randint(1, 9))) for _ in range(400))
    reference = naive_train(text, 10_000)
    tok = BPETokenizer.train(text, vocab_size=256 + len(reference) + 1, verbose=False)
    assert tok.merges == reference
    with pytest.raises(ValueError, match=f"supports only {len(reference)} merges"):
        BPETokenizer.train(text, vocab_size=256 + len(reference) + 2, verbose=False)


def test_tie_break_is_highest_count_then_smallest_pair():
    sp, c, x, y = ord(" "), ord("c"), ord("x"), ord("y")
    # chunks "ab", " cd": (a, b), (" ", c), (c, d) tie at count 1; the smallest pair (32, 99) wins
    tok = BPETokenizer.train("ab cd", vocab_size=256 + 1 + 1, verbose=False)
    assert tok.merges == [(sp, c)]
    # chunks "ab", " cd", " xy", " xy": (" ", x) and (x, y) tie at count 2, above every other pair;
    # (32, 120) < (120, 121) goes first, then (256, y) = " x" + "y" is the only pair with count 2
    tok = BPETokenizer.train("ab cd xy xy", vocab_size=256 + 2 + 1, verbose=False)
    assert tok.merges == [(sp, x), (256, y)]


def test_vocab_layout(small_tok):
    assert small_tok.vocab_size == 256 + len(small_tok.merges) + 1 == 600
    assert small_tok.mask_id == 599 == small_tok.special_tokens[MASK]
    for k, (a, b) in enumerate(small_tok.merges):
        assert small_tok.id_to_token_bytes(256 + k) == small_tok.id_to_token_bytes(a) + small_tok.id_to_token_bytes(b)


def test_helpers_docstring_examples():
    tok = BPETokenizer([(104, 105)])
    assert tok._encode_chunk("hih") == [256, 104]
    assert merge([1, 2, 3, 1, 2], (1, 2), 9) == [9, 3, 9]
    assert merge([5, 5, 5], (5, 5), 9) == [9, 5]
    assert pre_split("Hi there, you!") == ["Hi", " there", ",", " you", "!"]
    assert pre_split("I'll pay 12345") == ["I", "'ll", " pay", " ", "123", "45"]
    assert "".join(pre_split(MULTILINGUAL)) == MULTILINGUAL


# ---------------------------------------------------------------- round trips
HOSTILE = [
    "", "a", " ", "\n", "\r\n", "line one\r\nline two\r\n", "   leading and trailing   ",
    "😀", "👩‍👩‍👧‍👦", "🇫🇷🇯🇵", "👍🏽", "日本語のテキスト", "中文文本", "한국어", "e\u0301 vs \u00e9",
    "Z\u0364\u0351\u0367\u0311a\u0308\u0356", "\x00\x01\x02\x1b[31m\x7f", "\t\x0b\x0c\x1c\x1d\x1e\x1f\x85",
    "\u2028\u2029\u00a0\u3000", "\ufeffBOM", "\U0010ffff\ue000", "\ufffd", "a" * 10_000, " " * 1000,
    "\n" * 500, "🙂" * 300, "[MASK]", "[MASK][MASK] [MASK]", "x[MASK]y", "[MA", "SK]", "[mask] [ MASK ]",
    "שלום مرحبا", "I'LL 'Ve 's 're", "3.14159265358979", "∑∫√∞≠",
]


@pytest.mark.parametrize("s", HOSTILE, ids=range(len(HOSTILE)))
def test_round_trip_hostile(small_tok, s):
    ids = small_tok.encode(s)
    assert small_tok.decode(ids) == s
    assert small_tok.encode_fast(s) == ids
    assert small_tok.mask_id not in ids  # "[MASK]" spelled in text is ordinary bytes
    assert all(0 <= i < small_tok.mask_id for i in ids)
    assert len(ids) <= len(s.encode("utf-8"))


# no surrogates: a lone surrogate has no UTF-8 encoding (tested separately below)
UNICODE_TEXT = st.text(st.characters(codec="utf-8"), max_size=200)
HYPOTHESIS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@HYPOTHESIS
@given(UNICODE_TEXT)
def test_round_trip_random_unicode(small_tok, s):
    ids = small_tok.encode(s)
    assert small_tok.decode(ids) == s
    assert small_tok.encode(small_tok.decode(ids)) == ids  # encode is canonical: re-encoding is stable
    assert small_tok.encode_fast(s) == ids


@HYPOTHESIS
@given(st.lists(st.integers(0, 599), max_size=60))
def test_decode_arbitrary_ids(small_tok, ids):
    """Any id sequence decodes (cuts through a character become U+FFFD, [MASK] its spelling);
    its bytes are the concatenated token bytes; and the decoded text is a fixed point of encode/decode.
    (encode(decode(ids)) == ids is NOT true in general: many id sequences spell the same bytes.)"""
    raw = b"".join(small_tok.id_to_token_bytes(i) for i in ids)
    assert small_tok.decode_bytes(ids) == raw
    text = small_tok.decode(ids)
    assert text == raw.decode("utf-8", errors="replace")
    assert small_tok.decode(small_tok.encode(text)) == text


def test_decode_accepts_tensors_and_rejects_bad_ids(small_tok):
    ids = small_tok.encode("To be, or not to be")
    assert small_tok.decode(torch.tensor(ids)) == "To be, or not to be"
    with pytest.raises(ValueError, match="out of range"):
        small_tok.decode([small_tok.vocab_size])
    with pytest.raises(ValueError, match="out of range"):
        small_tok.decode([-1])


def test_pickle_round_trip(small_tok):
    small_tok.encode_fast("build the tiktoken object first")
    tok = pickle.loads(pickle.dumps(small_tok))
    assert tok.merges == small_tok.merges and tok.encode_fast(MULTILINGUAL) == small_tok.encode(MULTILINGUAL)


def test_duplicate_token_bytes_cannot_go_to_tiktoken():
    # "abc" twice: (ab, c) and (a, bc). Valid merges for encode(), but tiktoken keys tokens by bytes.
    tok = BPETokenizer([(97, 98), (256, 99), (98, 99), (97, 258)])
    assert tok.id_to_token_bytes(257) == tok.id_to_token_bytes(259) == b"abc"
    assert tok.decode(tok.encode("abcabc")) == "abcabc"
    with pytest.raises(ValueError, match="same bytes"):
        tok.encode_fast("abc")


def test_lone_surrogate_is_a_clear_error(small_tok):
    for encode in (small_tok.encode, small_tok.encode_fast):
        with pytest.raises(ValueError, match="surrogate"):
            encode("ok \ud800 not ok")


@pytest.mark.slow
def test_whole_corpus_tiktoken_parity_and_round_trip(corpus, corpus_tok):
    ids = corpus_tok.encode(corpus)
    assert corpus_tok.encode_fast(corpus) == ids
    assert corpus_tok.decode(ids) == corpus
    assert corpus_tok.mask_id not in ids


# ---------------------------------------------------------------- special tokens
def test_mask_cannot_be_injected_by_default(small_tok):
    mask = small_tok.mask_id
    assert small_tok.decode([mask]) == MASK
    for encode in (small_tok.encode, small_tok.encode_fast):
        assert mask not in encode("a [MASK] b [MASK]")
        ids = encode("a[MASK]b", allowed_special={MASK})
        assert ids == small_tok.encode("a") + [mask] + small_tok.encode("b")
        assert encode("[MASK]", allowed_special="all") == [mask]
        with pytest.raises(ValueError, match="not special tokens"):
            encode("x", allowed_special={"[PAD]"})


def test_extra_special_tokens():
    tok = BPETokenizer.train("hello hello world", vocab_size=262, special_tokens=["[PAD]", MASK], verbose=False)
    assert tok.special_tokens == {"[PAD]": 260, MASK: 261} and tok.mask_id == 261
    with pytest.raises(ValueError, match="must include"):
        BPETokenizer.train("hello", vocab_size=300, special_tokens=["[PAD]"], verbose=False)


@pytest.mark.parametrize("vocab_size", [0, 256, 100, 300.0, "4096", True])
def test_vocab_size_too_small_or_wrong_type(vocab_size):
    with pytest.raises(ValueError, match="vocab_size must be an int >= 257"):
        BPETokenizer.train("some text", vocab_size=vocab_size, verbose=False)


def test_smallest_vocab_is_bytes_plus_mask():
    tok = BPETokenizer.train("", vocab_size=257, verbose=False)
    assert tok.merges == [] and tok.mask_id == 256
    assert tok.decode(tok.encode("any text ✓")) == "any text ✓"


def test_progress_bar(capsys):
    BPETokenizer.train("the cat sat on the mat", vocab_size=260, verbose=True)
    assert "BPE merges" in capsys.readouterr().err
    BPETokenizer.train("the cat sat on the mat", vocab_size=260, verbose=False)
    assert capsys.readouterr().err == ""


def test_show_split(small_tok):
    shown = show_split(small_tok, "To be, or not to be:\nthat is")
    assert shown.replace("|", "") == "To be, or not to be:\\nthat is"
    assert shown.count("|") == len(small_tok.encode("To be, or not to be:\nthat is")) - 1


# ---------------------------------------------------------------- files
def test_save_load_round_trip(small_tok, tmp_path):
    path = tmp_path / "tok.json"
    small_tok.save(path)
    tok = BPETokenizer.load(path)
    assert tok.merges == small_tok.merges and tok.special_tokens == small_tok.special_tokens
    assert tok.encode(MULTILINGUAL) == small_tok.encode(MULTILINGUAL)
    assert os.listdir(tmp_path) == ["tok.json"]  # the atomic write leaves no temporary file behind


def _broken_files(good: dict) -> dict[str, bytes]:
    def doc(**change):
        d = {**good, **change}
        return json.dumps({k: v for k, v in d.items() if v is not None}).encode()

    raw = json.dumps(good).encode()
    return {
        "truncated": raw[: len(raw) // 2],
        "empty": b"",
        "binary": bytes(range(256)),
        "a list": b"[1, 2, 3]",
        "other json": b'{"model": "gpt2"}',
        "wrong version": doc(version=99),
        "no version": doc(version=None),
        "no merges": doc(merges=None),
        "no vocab_size": doc(vocab_size=None),
        "no special_tokens": doc(special_tokens=None),
        "other pattern": doc(split_pattern=r"\w+"),
        "forward reference": doc(merges=[[256, 1]]),
        "bad merge shape": doc(merges=[[1, 2, 3]]),
        "merges not a list": doc(merges=5),
        "vocab_size mismatch": doc(vocab_size=123),
        "no mask": doc(special_tokens=["[PAD]"]),
    }


def test_corrupt_files_give_one_line_errors(small_tok, tmp_path):
    small_tok.save(tmp_path / "good.json")
    good = json.loads((tmp_path / "good.json").read_text())
    for name, content in _broken_files(good).items():
        path = tmp_path / f"{name}.json"
        path.write_bytes(content)
        with pytest.raises(TokenizerFileError) as info:
            BPETokenizer.load(path)
        message = str(info.value)
        assert "\n" not in message and str(path) in message, (name, message)
    with pytest.raises(TokenizerFileError, match="no such tokenizer file"):
        BPETokenizer.load(tmp_path / "missing.json")
    assert issubclass(TokenizerFileError, ValueError)


# ---------------------------------------------------------------- the chunk cap (MAX_CHUNK_CHARS)
def test_split_pattern_spells_the_cap():
    assert f"{{1,{MAX_CHUNK_CHARS}}}" in SPLIT_PATTERN and "+" not in SPLIT_PATTERN.replace("}+", "").replace("?+", "")


@pytest.mark.slow
def test_capped_split_is_gpt4_split_on_the_corpus(corpus):
    """The cap changes nothing on ordinary text: every chunk of the corpus is the same (none is near 64 chars)."""
    assert regex.findall(SPLIT_PATTERN, corpus) == regex.findall(GPT4_SPLIT_PATTERN, corpus)


@pytest.mark.slow
def test_shipped_tokenizer_encodes_the_corpus_as_before(corpus):
    """checkpoints/tokenizer_shakespeare_4096.json (saved before the cap, with GPT-4's regex) loads and gives
    the ids of the code before the cap:
      - the whole corpus: encode_fast() == tiktoken with GPT-4's regex (the old encode_fast);
      - the first 1 MB: encode() == GPT-4's chunks, each BPE-encoded (the old encode), == encode_fast()."""
    import tiktoken

    tok = BPETokenizer.load(SHIPPED_TOKENIZER)
    assert tok.vocab_size == 4096
    before = tiktoken.Encoding(name="before_the_cap", pat_str=GPT4_SPLIT_PATTERN,
                               mergeable_ranks={b: i for i, b in enumerate(tok.token_bytes)}, special_tokens={})
    assert tok.encode_fast(corpus) == before.encode_ordinary(corpus)
    text = corpus[:1_000_000]
    chunks = regex.findall(GPT4_SPLIT_PATTERN, text)
    chunk_ids = {chunk: tok._encode_chunk(chunk) for chunk in set(chunks)}
    old_ids = list(chain.from_iterable(map(chunk_ids.__getitem__, chunks)))
    assert tok.encode(text) == old_ids == tok.encode_fast(text)


def test_resaved_tokenizer_names_the_capped_pattern(tmp_path):
    """A file saved before the 64-character cap names GPT-4's pattern: it loads, encodes with the capped
    pattern, and is re-saved under the capped pattern's name with the same merges."""
    doc = json.loads(SHIPPED_TOKENIZER.read_text())
    doc["split_pattern"] = GPT4_SPLIT_PATTERN                       # as the files of before the cap
    old = tmp_path / "old.json"
    old.write_text(json.dumps(doc))
    tok = BPETokenizer.load(old)
    assert tok.split_pattern == SPLIT_PATTERN  # it encodes with the capped pattern
    tok.save(tmp_path / "tok.json")
    assert json.loads((tmp_path / "tok.json").read_text())["split_pattern"] == SPLIT_PATTERN
    assert BPETokenizer.load(tmp_path / "tok.json").merges == tok.merges
    assert [list(m) for m in tok.merges] == doc["merges"]


LONG_RUNS = {
    "letters": "A" * 1000, "DNA": "ACGT" * 250, "punctuation": "!" * 300, "dots then newlines": "." + "\n" * 300,
    "spaces then a word": " " * 300 + "word", "newlines": "\n" * 300, "tabs and spaces": "\t \n" * 100 + "  ",
    "CJK": "日本語のテキスト" * 40, "emoji": "😀" * 200, "a word with a long tail": " Hello" + "o" * 200 + "!",
    "mixed": ("x" * 70 + " ") * 5 + "," * 70 + "\r\n" * 40,
}


@pytest.mark.parametrize("text", LONG_RUNS.values(), ids=LONG_RUNS.keys())
def test_long_runs_are_cut(small_tok, text):
    chunks = pre_split(text)
    assert "".join(chunks) == text
    assert max(map(len, chunks)) <= 2 * MAX_CHUNK_CHARS + 1  # a punctuation run + its trailing newlines
    assert max(len(c.encode("utf-8")) for c in chunks) <= 4 * (2 * MAX_CHUNK_CHARS + 1)  # a few hundred bytes
    assert len(chunks) >= len(regex.findall(GPT4_SPLIT_PATTERN, text))
    ids = small_tok.encode(text)
    assert small_tok.decode(ids) == text
    assert small_tok.encode_fast(text) == ids  # tiktoken's regex engine cuts the same chunks


# Text made of runs of one character class, 0 to 200 long: some runs are short, some longer than the cap.
RUN_CHARS = st.sampled_from(["a", "Z", "é", "日", "1", "!", ".", " ", "\n", "\r", "\t", "'", "😀", "\u3000"])
RUNS = st.lists(st.tuples(st.lists(RUN_CHARS, min_size=1, max_size=3), st.integers(0, 200)), max_size=8)


@HYPOTHESIS
@given(RUNS)
def test_cap_cuts_only_long_runs(small_tok, runs):
    text = "".join("".join(chars) * n for chars, n in runs)
    old, new = regex.findall(GPT4_SPLIT_PATTERN, text), pre_split(text)
    assert "".join(new) == text
    if all(len(c) <= MAX_CHUNK_CHARS for c in old):
        assert new == old  # short runs: exactly GPT-4's chunks
    ids = small_tok.encode(text)
    assert small_tok.encode_fast(text) == ids and small_tok.decode(ids) == text


def test_incremental_trainer_matches_naive_on_long_runs():
    """DNA with a few spaces: long runs are cut into 64-character chunks; the trainer still learns the naive merges."""
    import random

    rng = random.Random(1)
    text = " ".join("".join(rng.choice("ACGT") for _ in range(rng.randint(1, 500))) for _ in range(20))
    assert max(map(len, pre_split(text))) <= MAX_CHUNK_CHARS + 1
    tok = BPETokenizer.train(text, vocab_size=256 + 120 + 1, verbose=False)
    assert tok.merges == naive_train(text, 120)


def test_vocab_size_accepts_integer_scalars():
    import numpy as np

    tok = BPETokenizer.train("hello hello world", vocab_size=np.int64(260), verbose=False)
    assert tok.vocab_size == 260
    assert BPETokenizer.train("hello hello world", vocab_size=torch.tensor(260), verbose=False).vocab_size == 260


def test_decode_accepts_int_arrays_tuples_and_generators(small_tok):
    import numpy as np

    ids = small_tok.encode("To be, or not to be")
    for form in (tuple(ids), iter(ids), np.array(ids, dtype=np.uint16), torch.tensor(ids, dtype=torch.int32),
                 [np.int64(i) for i in ids]):
        assert small_tok.decode(form) == "To be, or not to be"


def test_save_is_atomic(small_tok, tmp_path, monkeypatch):
    """A save that fails at the rename leaves the previous tokenizer file whole, and no temporary file."""
    import mdlm_course.fileio as fileio

    path = tmp_path / "tok.json"
    BPETokenizer([(104, 105)]).save(path)
    before = path.read_bytes()
    monkeypatch.setattr(fileio.os, "replace", lambda *a: (_ for _ in ()).throw(OSError(5, "Input/output error")))
    with pytest.raises(TokenizerFileError, match="Input/output error"):
        small_tok.save(path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["tok.json"]
