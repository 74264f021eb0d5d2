"""Byte-level BPE: text -> UTF-8 bytes -> tokens, with a [MASK] token for diffusion.

Vocabulary (every id below vocab_size means something; there is no "unknown" token):
    ids 0..255                 the 256 single bytes, so any UTF-8 text can be written down
    id 256 + k                 merge k:  bytes(256 + k) = bytes(a_k) + bytes(b_k)   for the pair (a_k, b_k)
    ids 256 + M .. V - 1       special tokens, by default just "[MASK]" (so mask_id = V - 1)
    vocab_size V = 256 + M + number of specials

Training (Sennrich et al. 2016, on bytes as in GPT-2). First cut the text into chunks with the
GPT-4 pre-split regex (SPLIT_PATTERN: words with their leading space, 1-3 digits, punctuation runs,
whitespace), so that no token ever spans " the" and "." together. Then repeat M times:
    count(a, b) = sum over chunks w of  freq(w) * #{i : w[i] = a and w[i+1] = b}
    (a_k, b_k)  = the pair with the highest count; ties go to the smallest pair (a, b), comparing ids
                  lexicographically (a first, then b)
    replace every (a_k, b_k) in every chunk, left to right, by the new id 256 + k
The trainer here is incremental: it counts each distinct chunk once (weighted by its frequency),
keeps count(a, b) plus an index pair -> {chunks that contain it}, and after a merge recounts only
the chunks that contained the merged pair. A heap with lazy deletion finds the best pair. The
result is exactly the merges of the naive "recount everything" loop (tests/test_tokenizer.py).

One change to GPT-4's regex: chunks are capped. A run of letters, punctuation or whitespace is cut
every MAX_CHUNK_CHARS = 64 characters, so that no chunk is longer than 2 * 64 + 1 characters (a few
hundred bytes). Without the cap, a text with no whitespace (DNA, base64, a minified file) is one giant
chunk, and BPE on a chunk of n bytes costs up to n * (number of merges) steps: training crawled, and
encoding one 200k-character word took 50 µs per character. With it, both are linear in the text.
The cap changes the chunks, and so the merges and the ids, ONLY for runs longer than 64 characters,
which ordinary text does not have: the longest word of the Shakespeare corpus has 27 letters, and
tests/test_tokenizer.py checks that the whole corpus splits exactly as with GPT-4's regex. Files saved
before the cap name GPT-4's regex (GPT4_SPLIT_PATTERN); they load, and encode ordinary text as before.

Encoding applies merges to each chunk by rank (the lowest-numbered merge present goes first), which
replays the training order, and caches the result per chunk. encode_fast() hands the same merges
to tiktoken (mergeable_ranks: token bytes -> id) and gives identical ids, several times faster.

Special tokens are never produced from text by default: encode("[MASK]") is the 6 bytes of the
spelling, merged as usual. encode(text, allowed_special={"[MASK]"}) opts in.

Every mistake a caller can make (a wrong type, a lone surrogate, a bad id, a broken file, a path that
cannot be read or written) raises TokenizerError, or one of its two subclasses, with a one-line message
that says what to fix. TokenizerError is an MdlmError and so a ValueError.
"""
from __future__ import annotations

import heapq
import json
import operator
import sys
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from itertools import chain, repeat
from operator import add
from pathlib import Path

import regex
from tqdm import tqdm

from .errors import MdlmError
from .fileio import atomic_write_text, file_problem

# GPT-4's pre-split pattern (cl100k), alternative by alternative:
#   '(?i:[sdmt]|ll|ve|re)              English contractions: 's 't 'll 've 're ...
#   [^\r\n\p{L}\p{N}]?+\p{L}+          a word with at most one leading non-letter (usually a space)
#   \p{N}{1,3}                         numbers, in groups of up to three digits
#    ?[^\s\p{L}\p{N}]++[\r\n]*         punctuation runs, with an optional leading space
#   \s*[\r\n]                          whitespace ending in a newline
#   \s+(?!\S)                          whitespace, leaving the last space for the next word
#   \s+                                any other whitespace
GPT4_SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)
# Ours: the same alternatives, with every unbounded run (+ or *) bounded to MAX_CHUNK_CHARS characters
# (+ becomes {1,64}, * becomes {0,64}). A longer run is cut into several chunks; a shorter one matches
# exactly as before, because each alternative then finds the same match it found unbounded.
MAX_CHUNK_CHARS = 64
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}{1,64}|\p{N}{1,3}| ?[^\s\p{L}\p{N}]{1,64}+[\r\n]{0,64}"""
    r"""|\s{0,64}[\r\n]|\s{1,64}(?!\S)|\s{1,64}"""
)
_SPLIT = regex.compile(SPLIT_PATTERN)
_COMPATIBLE_PATTERNS = (SPLIT_PATTERN, GPT4_SPLIT_PATTERN)  # split_pattern values that load() accepts

MASK = "[MASK]"
DEFAULT_SPECIALS = (MASK,)  # fixed-length windows cut from one stream need no [PAD], [BOS] or [EOS]
FORMAT = "mdlm_course.BPETokenizer"
FORMAT_VERSION = 1
_CACHE_LIMIT = 1 << 18  # chunks kept in the encode cache before it is cleared
_NEVER = 1 << 62  # the "rank" of a pair that was never merged
_MAX_FILE_BYTES = 1 << 28  # 256 MB: a tokenizer file with a million merges is about 20 MB


class TokenizerError(MdlmError):
    """A tokenizer was given something it cannot use. The message is one line and says what to do."""


class TokenizerTypeError(TokenizerError, TypeError):
    """An argument of the wrong type, e.g. bytes where text is expected. Also a TypeError."""


class TokenizerFileError(TokenizerError):
    """A tokenizer file that cannot be loaded or saved. The message is one line and says what to do."""


def _short(x: object, limit: int = 60) -> str:
    """repr(x), cut to `limit` characters for an error message.  _short("a" * 100, 10) -> "'aaaaaa..."."""
    r = repr(x)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _type_name(x: object) -> str:
    return type(x).__name__


def _surrogate_error(text: str) -> TokenizerError:
    """The one message for text that has no UTF-8 encoding (a lone surrogate such as '\\ud800')."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return TokenizerError(
            f"text contains {text[e.start]!r} (a lone surrogate) at index {e.start}, which has no UTF-8 encoding; "
            "clean the text first, e.g. text.encode('utf-8', 'replace').decode('utf-8')")
    return TokenizerError("text has no UTF-8 encoding; clean the text first")  # not reached for str


def _check_text(text: object, caller: str) -> str:
    """text itself, if it is a str; otherwise a TokenizerTypeError that says what to pass instead."""
    if isinstance(text, str):
        return text
    hint = "; decode it first, e.g. raw.decode('utf-8')" if isinstance(text, (bytes, bytearray)) else ""
    raise TokenizerTypeError(f"{caller} expects text as a str, got {_type_name(text)}{hint}")


def _check_path(path: object, caller: str) -> Path:
    if not isinstance(path, (str, Path)) and not hasattr(path, "__fspath__"):
        raise TokenizerTypeError(f"{caller} expects a file path (str or pathlib.Path), got {_type_name(path)}")
    return Path(path)


# Distinct chunks' bytes beyond which BPE training is slow enough for a note (text without spaces: 1 MB took
# 23 s to 4,096 tokens, against 2.1 s for 1 MB of Shakespeare, one thread of the course's 2-core EPYC machine)
SLOW_DISTINCT_BYTES = 1_000_000


def pre_split(text: str) -> list[str]:
    """Cut text into chunks with SPLIT_PATTERN.  pre_split("Hi there, you!") -> ['Hi', ' there', ',', ' you', '!']"""
    return _SPLIT.findall(_check_text(text, "pre_split"))


def merge(ids: Sequence[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace each `pair`, left to right, by new_id.  merge([1, 2, 3, 1, 2], (1, 2), 9) -> [9, 3, 9]
    Overlaps resolve from the left: merge([5, 5, 5], (5, 5), 9) -> [9, 5]."""
    a, b = pair
    out, i, n = [], 0, len(ids)
    while i < n:
        if i < n - 1 and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _check_merges(merges: object) -> list[tuple[int, int]]:
    """The merges as a list of int pairs, each made of ids that exist before it, each pair only once."""
    if isinstance(merges, (str, bytes, dict)) or not isinstance(merges, Iterable):
        raise TokenizerTypeError(f"merges must be a list of (a, b) pairs of token ids, got {_type_name(merges)}")
    out: list[tuple[int, int]] = []
    first: dict[tuple[int, int], int] = {}  # pair -> the merge that made it
    for k, pair in enumerate(merges):
        new_id = 256 + k
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise TokenizerError(f"merge {k} is {_short(pair)}: each merge must be a pair [a, b] of token ids")
        a, b = pair
        if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < new_id for i in (a, b)):
            raise TokenizerError(f"merge {k} is {_short(pair)}: both ids must be ints (not booleans) in "
                                 f"0..{new_id - 1}, the ids that exist before id {new_id}")
        if (a, b) in first:
            raise TokenizerError(f"merge {k} is {_short(pair)}, the same pair as merge {first[a, b]}; "
                                 "each pair is merged once")
        first[a, b] = k
        out.append((a, b))
    return out


def _strings(value: object, what: str) -> tuple:
    """value as a tuple, or a TokenizerTypeError when it is a bare string or not iterable at all."""
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise TokenizerTypeError(f"{what}, got {_type_name(value)} {_short(value)}")
    return tuple(value)


def _check_specials(special_tokens: object) -> tuple[str, ...]:
    specials = _strings(special_tokens, f"special_tokens must be a list of strings such as [{MASK!r}]")
    if MASK not in specials:
        raise TokenizerError(f"special_tokens must include {MASK!r} (the diffusion mask), got {_short(list(specials))}")
    if len(set(specials)) != len(specials) or not all(isinstance(s, str) and s for s in specials):
        raise TokenizerError(f"special_tokens must be distinct non-empty strings, got {_short(list(specials))}")
    return specials


def _check_vocab_size(vocab_size: object, smallest: int, n_specials: int) -> int:
    expected = (f"vocab_size must be an int >= {smallest} (256 bytes + {n_specials} special token(s)), "
                f"got {_short(vocab_size)}")
    if isinstance(vocab_size, bool):
        raise TokenizerTypeError(expected)
    try:
        vocab_size = operator.index(vocab_size)  # int, or numpy/torch integer scalars
    except TypeError:
        raise TokenizerTypeError(expected) from None
    if vocab_size < smallest:
        raise TokenizerError(expected)
    return vocab_size


class BPETokenizer:
    """A byte-level BPE tokenizer.  tok = BPETokenizer.train(text, vocab_size=4096); tok.decode(tok.encode(s)) == s"""

    split_pattern: str = SPLIT_PATTERN  # the pre-split regex that encode uses (for caches keyed on the encoding)

    def __init__(self, merges: Sequence[tuple[int, int]], special_tokens: Iterable[str] = DEFAULT_SPECIALS):
        self.merges: list[tuple[int, int]] = _check_merges(merges)
        self.token_bytes: list[bytes] = [bytes([i]) for i in range(256)]  # token_bytes[id]
        for a, b in self.merges:
            self.token_bytes.append(self.token_bytes[a] + self.token_bytes[b])
        self.ranks = {pair: 256 + k for k, pair in enumerate(self.merges)}  # (a, b) -> merged id
        self._pair_str = {i: chr(a) + chr(b) for (a, b), i in self.ranks.items()}  # for _encode_chunk
        self._rank_of_str = {ab: i for i, ab in self._pair_str.items()}
        n = len(self.token_bytes)
        self.special_tokens = {s: n + i for i, s in enumerate(_check_specials(special_tokens))}  # str -> id
        self.mask_id: int = self.special_tokens[MASK]
        self._special_by_id = {i: s for s, i in self.special_tokens.items()}
        self._cache: dict[str, list[int]] = {}  # chunk -> ids
        self._tiktoken = None  # built on the first encode_fast()

    @property
    def vocab_size(self) -> int:
        """Number of ids: 256 bytes + merges + specials."""
        return len(self.token_bytes) + len(self.special_tokens)

    def __getstate__(self) -> dict:
        """Pickle (e.g. for DataLoader workers) without the tiktoken object and the cache; both are rebuilt."""
        return {**self.__dict__, "_tiktoken": None, "_cache": {}}

    def __repr__(self) -> str:
        return (f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
                f"special_tokens={list(self.special_tokens)}, mask_id={self.mask_id})")

    # ------------------------------------------------------------------ training
    @classmethod
    def train(cls, text: str, vocab_size: int, *, special_tokens: Iterable[str] = DEFAULT_SPECIALS,
              verbose: bool = True) -> "BPETokenizer":
        """Learn vocab_size - 256 - len(special_tokens) merges from text (see the module docstring).

        verbose=True shows a tqdm progress bar. Raises TokenizerError (a ValueError) if vocab_size is too
        small to hold the 256 bytes and the specials, or too large for the text (no pair left to merge),
        or if the text has a lone surrogate (no UTF-8 encoding).
        """
        text = _check_text(text, "train")
        specials = _check_specials(special_tokens)
        smallest = 256 + len(specials)
        vocab_size = _check_vocab_size(vocab_size, smallest, len(specials))
        n_merges = vocab_size - smallest

        # 1. Distinct chunks with their frequencies: each is worked on once, weighted by freq.
        chunk_freq = Counter(_SPLIT.findall(text))
        try:
            words = [list(chunk.encode("utf-8")) for chunk in chunk_freq]  # words[w]: the ids of chunk w
        except UnicodeEncodeError:
            raise _surrogate_error(text) from None
        freqs = list(chunk_freq.values())
        distinct = sum(map(len, words))                             # bytes of the distinct chunks: the work
        if verbose and distinct > SLOW_DISTINCT_BYTES and distinct > 0.3 * len(text):   # say why it is slow
            print(f"note: the text splits into {len(words):,} distinct chunks, {distinct / 1e6:.1f} MB of them (few "
                  "repeated words: e.g. text without spaces); BPE re-reads every chunk that holds each merged pair, "
                  "so this takes about ten times longer per MB than text with spaces: minutes", file=sys.stderr)
        # Each merge shortens some chunk by at least one id: a chunk of n ids allows at most n - 1 merges.
        at_most = sum(len(ids) - 1 for ids in words)
        if n_merges > at_most:
            raise cls._too_few_merges(at_most, smallest, vocab_size, text, "at most ")

        # 2. count[(a, b)] over all chunks, and where[(a, b)] = {w : chunk w contains (a, b)}.
        count: dict[tuple[int, int], int] = {}
        where: dict[tuple[int, int], set[int]] = {}
        for w, ids in enumerate(words):
            f = freqs[w]
            for pair in zip(ids, ids[1:]):
                count[pair] = count.get(pair, 0) + f
                where.setdefault(pair, set()).add(w)
        # Max-heap by count, then the smallest pair: Python's min-heap on (-count, (a, b)).
        # Entries go stale when a count changes (a fresh entry is pushed); stale ones are skipped.
        heap = [(-c, pair) for pair, c in count.items()]
        heapq.heapify(heap)

        merges: list[tuple[int, int]] = []
        for k in tqdm(range(n_merges), desc="BPE merges", unit="merge", mininterval=0.5, disable=not verbose):
            # 3. The best pair: pop until an entry agrees with the current count.
            while heap:
                neg_c, pair = heapq.heappop(heap)
                if count.get(pair) == -neg_c:
                    break
            else:
                raise cls._too_few_merges(k, smallest, vocab_size, text, "only ")
            new_id = 256 + k
            merges.append(pair)

            # 4. Re-tokenise only the chunks that contain the pair; collect the count changes.
            delta: dict[tuple[int, int], int] = {}
            for w in where.pop(pair):
                old = words[w]
                new = merge(old, pair, new_id)
                words[w] = new
                f = freqs[w]
                old_pairs = list(zip(old, old[1:]))
                new_pairs = list(zip(new, new[1:]))
                for p in old_pairs:
                    delta[p] = delta.get(p, 0) - f
                for p in new_pairs:
                    delta[p] = delta.get(p, 0) + f
                old_set, new_set = set(old_pairs), set(new_pairs)
                for p in old_set - new_set:  # chunk w no longer contains p
                    if p != pair:
                        s = where[p]
                        s.discard(w)
                        if not s:
                            del where[p]
                for p in new_set - old_set:  # chunk w now contains p
                    where.setdefault(p, set()).add(w)

            # 5. Apply the changes; every pair whose count changed gets a fresh heap entry.
            for p, d in delta.items():
                if d:
                    c = count.get(p, 0) + d
                    if c:
                        count[p] = c
                        heapq.heappush(heap, (-c, p))
                    else:
                        del count[p]
        return cls(merges, specials)

    @staticmethod
    def _too_few_merges(k: int, smallest: int, vocab_size: int, text: str, bound: str) -> TokenizerError:
        if not text:
            return TokenizerError(f"the text is empty, so there is nothing to merge; train on some text, or pass "
                                  f"vocab_size={smallest} (bytes and specials only)")
        return TokenizerError(f"the text supports {bound}{k} merges (vocab_size <= {smallest + k}), asked for "
                              f"vocab_size={vocab_size}; pass a smaller vocab_size or more text")

    # ------------------------------------------------------------------ encoding
    def _encode_chunk(self, chunk: str) -> list[int]:
        """Apply merges by rank to one chunk.  With the one merge (104, 105) -> 256: 'hih' -> [256, 104]

        The loop is merge() in disguise, written for speed: the ids live in a str, one character per id
        (chr(id)), so that a pair is a 2-character string and str.replace() merges every occurrence
        left to right, exactly as merge() does, in C. A lone surrogate raises UnicodeEncodeError."""
        s = chunk.encode("utf-8").decode("latin-1")  # one character per byte: chr(b) for each b
        rank_of, pair_str = self._rank_of_str.get, self._pair_str
        while len(s) >= 2:
            # The pair merged earliest in training goes first. The rank of a pair is the id it merges
            # into, so the smallest id found is the merge to apply; a pair never merged ranks _NEVER.
            new_id = min(map(rank_of, map(add, s, s[1:]), repeat(_NEVER)))
            if new_id == _NEVER:
                break
            s = s.replace(pair_str[new_id], chr(new_id))
        return list(map(ord, s))

    def _encode_ordinary(self, text: str) -> list[int]:
        """Text (no specials) -> ids: split, BPE each chunk not yet in the cache, concatenate."""
        chunks = _SPLIT.findall(text)
        cache = self._cache
        if len(cache) > _CACHE_LIMIT:
            cache.clear()
        for chunk in set(chunks).difference(cache):  # most chunks repeat: only new ones need BPE
            cache[chunk] = self._encode_chunk(chunk)
        return list(chain.from_iterable(map(cache.__getitem__, chunks)))

    def _allowed(self, allowed_special: str | Collection[str]) -> list[str]:
        if allowed_special == "all":
            return list(self.special_tokens)
        allowed = list(_strings(allowed_special, "allowed_special must be 'all' or a collection of special "
                                                  f"tokens such as {{{MASK!r}}}"))
        unknown = [s for s in allowed if s not in self.special_tokens]
        if unknown:
            raise TokenizerError(f"allowed_special has {_short(unknown)}, which are not special tokens "
                                 f"of this tokenizer ({list(self.special_tokens)})")
        return allowed

    def encode(self, text: str, *, allowed_special: str | Collection[str] = ()) -> list[int]:
        """Text -> ids.  Specials are never produced unless allowed:
        encode("[MASK]") is the bytes of the spelling; encode("a[MASK]", allowed_special="all")[-1] == mask_id."""
        text = _check_text(text, "encode")
        allowed = self._allowed(allowed_special)
        try:
            if not allowed:
                return self._encode_ordinary(text)
            # Cut at the allowed spellings (longest first), encode the pieces in between as text.
            pattern = "(" + "|".join(regex.escape(s) for s in sorted(allowed, key=len, reverse=True)) + ")"
            out: list[int] = []
            for i, piece in enumerate(regex.split(pattern, text)):
                if i % 2:
                    out.append(self.special_tokens[piece])
                elif piece:
                    out.extend(self._encode_ordinary(piece))
            return out
        except UnicodeEncodeError:
            raise _surrogate_error(text) from None

    def to_tiktoken(self):
        """A tiktoken.Encoding with our merges: mergeable_ranks maps token bytes -> id, in id order."""
        import tiktoken  # noqa: PLC0415 (only this fast path needs it)

        ranks = {b: i for i, b in enumerate(self.token_bytes)}
        if len(ranks) != len(self.token_bytes):
            raise TokenizerError("two tokens have the same bytes, which tiktoken cannot represent; use encode()")
        return tiktoken.Encoding(name=f"mdlm_course_bpe_{self.vocab_size}", pat_str=SPLIT_PATTERN,
                                 mergeable_ranks=ranks, special_tokens=dict(self.special_tokens))

    def encode_fast(self, text: str, *, allowed_special: str | Collection[str] = ()) -> list[int]:
        """Same ids as encode(text), computed by tiktoken (built once from our merges)."""
        text = _check_text(text, "encode_fast")
        allowed = self._allowed(allowed_special)
        try:  # tiktoken would silently replace a lone surrogate; encode() refuses it, so do we
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise _surrogate_error(text) from None
        if self._tiktoken is None:
            self._tiktoken = self.to_tiktoken()
        if not allowed:
            return self._tiktoken.encode_ordinary(text)
        return self._tiktoken.encode(text, allowed_special=set(allowed), disallowed_special=())

    # ------------------------------------------------------------------ decoding
    def id_to_token_bytes(self, i: int) -> bytes:
        """The bytes of one id; a special token gives its spelling.  id_to_token_bytes(104) -> b'h'"""
        if isinstance(i, bool) or not hasattr(i, "__index__"):
            raise TokenizerTypeError(f"a token id must be an int, got {_type_name(i)} {_short(i)}")
        i = operator.index(i)
        if 0 <= i < len(self.token_bytes):
            return self.token_bytes[i]
        if i in self._special_by_id:
            return self._special_by_id[i].encode("utf-8")
        raise TokenizerError(f"token id {i!r} is out of range: this tokenizer has ids 0..{self.vocab_size - 1}")

    def _id_list(self, ids: object, caller: str) -> list:
        """ids as a list: from a list, a tuple, any iterable of ints, or a 1-D integer tensor or array."""
        expected = f"{caller} expects a list or a 1-D tensor of int token ids"
        if hasattr(ids, "tolist") and hasattr(ids, "ndim"):  # a torch tensor or numpy array
            if ids.ndim != 1:
                hint = "; decode each row" if ids.ndim > 1 else "; for one id i pass [i]"
                raise TokenizerTypeError(f"{expected}, got a {ids.ndim}-D {_type_name(ids)} of shape "
                                         f"{tuple(ids.shape)}{hint}")
            if "int" not in str(ids.dtype):  # torch.int64, int32, uint8, ...; not float or bool
                raise TokenizerTypeError(f"{expected}, got a {_type_name(ids)} of dtype {ids.dtype}; "
                                         "convert it with .long() or .astype(int)")
            return ids.tolist()
        if isinstance(ids, (str, bytes, bytearray, dict)) or not isinstance(ids, Iterable):
            raise TokenizerTypeError(f"{expected}, got {_type_name(ids)} {_short(ids)}")
        return ids if isinstance(ids, list) else list(ids)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Ids -> the concatenated bytes of their tokens (specials as their spelling)."""
        ids = self._id_list(ids, "decode")
        tb, n = self.token_bytes, len(self.token_bytes)
        try:
            return b"".join(tb[i] if 0 <= i < n else self.id_to_token_bytes(i) for i in ids)
        except TypeError:  # an element that is not an int (a float, a str, a nested list)
            k, bad = next((k, i) for k, i in enumerate(ids) if isinstance(i, bool) or not hasattr(i, "__index__"))
            raise TokenizerTypeError(f"decode expects int token ids, but ids[{k}] is {_type_name(bad)} "
                                     f"{_short(bad)}; pass a list or a 1-D tensor of ints") from None

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text. Never fails on a cut through a multi-byte character (errors="replace" gives '\ufffd').
        The mask id renders as "[MASK]", so decode([mask_id]) == decode(encode("[MASK]")) == "[MASK]"."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_str(self, i: int) -> str:
        """A printable form of one token: partial UTF-8 as \\x.. escapes, newline as \\n.  token_str(10) -> '\\\\n'"""
        s = self.id_to_token_bytes(i).decode("utf-8", errors="backslashreplace")
        return s.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> None:
        """Write one JSON file, atomically (fileio.atomic_write_text: a temporary file, then a rename).

        Raises TokenizerFileError with a one-line reason when the path cannot be written."""
        path = _check_path(path, "save")
        doc = {"format": FORMAT, "version": FORMAT_VERSION, "vocab_size": self.vocab_size,
               "split_pattern": self.split_pattern, "special_tokens": list(self.special_tokens),
               "merges": [list(p) for p in self.merges]}
        if path.is_dir():
            raise TokenizerFileError(f"{path} is a folder; pass a file path such as {path / 'tokenizer.json'}")
        if not path.parent.is_dir():
            what = "is a file, not a folder" if path.parent.exists() else "does not exist"
            raise TokenizerFileError(f"cannot save the tokenizer to {path}: the folder {path.parent} {what}; "
                                     "create the folder first or choose another path")
        try:
            atomic_write_text(path, json.dumps(doc, separators=(",", ":")))
        except OSError as e:
            raise TokenizerFileError(f"cannot save the tokenizer to {path} ({e.strerror or _type_name(e)}); "
                                     "choose a path you can write to") from None

    @classmethod
    def load(cls, path: str | Path) -> "BPETokenizer":
        """Read a file written by save(). Raises TokenizerFileError (a ValueError) with a one-line reason."""
        path = _check_path(path, "load")
        doc = _read_json(path)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise TokenizerFileError(f"{path}: not a tokenizer file (no \"format\": \"{FORMAT}\" field)")
        version = doc.get("version")
        if version != FORMAT_VERSION or isinstance(version, bool):
            raise TokenizerFileError(f"{path}: tokenizer format version {_short(version)}, this code reads "
                                     f"version {FORMAT_VERSION}; re-train the tokenizer with this version")
        for field in ("vocab_size", "split_pattern", "special_tokens", "merges"):
            if field not in doc:
                raise TokenizerFileError(f"{path}: tokenizer file is missing the field {field!r}; re-save it")
        if doc["split_pattern"] not in _COMPATIBLE_PATTERNS:
            raise TokenizerFileError(f"{path}: made with a different pre-split pattern; re-train the tokenizer")
        if not isinstance(doc["merges"], list) or not isinstance(doc["special_tokens"], list):
            raise TokenizerFileError(f"{path}: corrupt tokenizer file (\"merges\" and \"special_tokens\" must be "
                                     "lists); re-train or re-save it")
        try:
            tok = cls(doc["merges"], doc["special_tokens"])
        except TokenizerError as e:
            raise TokenizerFileError(f"{path}: corrupt tokenizer file ({e}); re-train or re-save it") from None
        vocab_size = doc["vocab_size"]
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
            raise TokenizerFileError(f"{path}: corrupt tokenizer file (vocab_size must be an int, got "
                                     f"{_short(vocab_size)}); re-train or re-save it")
        if vocab_size != tok.vocab_size:
            raise TokenizerFileError(f"{path}: corrupt tokenizer file (vocab_size {_short(vocab_size)} but "
                                     f"{tok.vocab_size} ids from merges and specials); re-train or re-save it")
        return tok


def _read_json(path: Path) -> object:
    """The JSON document in a tokenizer file, or a one-line TokenizerFileError saying why it cannot be read."""
    problem = file_problem(path)
    if problem == "no such file":
        raise TokenizerFileError(f"{path}: no such tokenizer file; train one with BPETokenizer.train(...).save(path)")
    if problem is not None:
        raise TokenizerFileError(f"{path} {problem}, not a tokenizer file; pass the tokenizer .json file itself")
    try:
        if path.stat().st_size > _MAX_FILE_BYTES:
            raise TokenizerFileError(f"{path}: {path.stat().st_size:,} bytes is too large for a tokenizer file "
                                     f"(at most {_MAX_FILE_BYTES:,}); pass a tokenizer .json file")
        raw = path.read_bytes()
    except OSError as e:
        raise TokenizerFileError(f"{path}: cannot read the tokenizer file ({e.strerror or _type_name(e)}); "
                                 "check that it exists and that you may read it") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerFileError(f"{path}: not a tokenizer file (invalid or truncated JSON: {e}); "
                                 "re-save it with BPETokenizer.save") from None
    except ValueError:  # an int of more than 4300 digits (sys.get_int_max_str_digits)
        raise TokenizerFileError(f"{path}: not a tokenizer file (it holds a number with thousands of digits); "
                                 "pass a file written by BPETokenizer.save") from None
    except RecursionError:
        raise TokenizerFileError(f"{path}: not a tokenizer file (JSON nested too deeply to read); "
                                 "pass a file written by BPETokenizer.save") from None


def show_split(tok: BPETokenizer, text: str, sep: str = "|") -> str:
    """Show how text is cut into tokens.  show_split(tok, "To be, or not") -> 'To| be|,| or| not'"""
    return sep.join(tok.token_str(i) for i in tok.encode(text))
