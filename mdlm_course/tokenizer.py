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

Encoding applies merges to each chunk by rank (the lowest-numbered merge present goes first), which
replays the training order, and caches the result per chunk. encode_fast() hands the same merges
to tiktoken (mergeable_ranks: token bytes -> id) and gives identical ids, several times faster.

Special tokens are never produced from text by default: encode("[MASK]") is the 6 bytes of the
spelling, merged as usual. encode(text, allowed_special={"[MASK]"}) opts in.
"""
from __future__ import annotations

import heapq
import json
import os
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from itertools import chain, repeat
from operator import add
from pathlib import Path

import regex
from tqdm import tqdm

# GPT-4's pre-split pattern (cl100k), alternative by alternative:
#   '(?i:[sdmt]|ll|ve|re)              English contractions: 's 't 'll 've 're ...
#   [^\r\n\p{L}\p{N}]?+\p{L}+          a word with at most one leading non-letter (usually a space)
#   \p{N}{1,3}                         numbers, in groups of up to three digits
#    ?[^\s\p{L}\p{N}]++[\r\n]*         punctuation runs, with an optional leading space
#   \s*[\r\n]                          whitespace ending in a newline
#   \s+(?!\S)                          whitespace, leaving the last space for the next word
#   \s+                                any other whitespace
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)
_SPLIT = regex.compile(SPLIT_PATTERN)

MASK = "[MASK]"
DEFAULT_SPECIALS = (MASK,)  # fixed-length windows cut from one stream need no [PAD], [BOS] or [EOS]
FORMAT = "mdlm_course.BPETokenizer"
FORMAT_VERSION = 1
_CACHE_LIMIT = 1 << 18  # chunks kept in the encode cache before it is cleared
_NEVER = 1 << 62  # the "rank" of a pair that was never merged


class TokenizerFileError(ValueError):
    """A tokenizer file that cannot be loaded. The message is one line and says what to do."""


def pre_split(text: str) -> list[str]:
    """Cut text into chunks with SPLIT_PATTERN.  pre_split("Hi there, you!") -> ['Hi', ' there', ',', ' you', '!']"""
    return _SPLIT.findall(text)


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


def _check_specials(special_tokens: Iterable[str]) -> tuple[str, ...]:
    specials = tuple(special_tokens)
    if MASK not in specials:
        raise ValueError(f"special_tokens must include {MASK!r} (the diffusion mask), got {list(specials)}")
    if len(set(specials)) != len(specials) or not all(isinstance(s, str) and s for s in specials):
        raise ValueError(f"special_tokens must be distinct non-empty strings, got {list(specials)}")
    return specials


class BPETokenizer:
    """A byte-level BPE tokenizer.  tok = BPETokenizer.train(text, vocab_size=4096); tok.decode(tok.encode(s)) == s"""

    def __init__(self, merges: Sequence[tuple[int, int]], special_tokens: Iterable[str] = DEFAULT_SPECIALS):
        self.merges: list[tuple[int, int]] = []
        self.token_bytes: list[bytes] = [bytes([i]) for i in range(256)]  # token_bytes[id]
        for k, pair in enumerate(merges):
            a, b = pair
            new_id = 256 + k
            if not (isinstance(a, int) and isinstance(b, int) and 0 <= a < new_id and 0 <= b < new_id):
                raise ValueError(f"merge {k} is {pair!r}: both ids must be ints that exist before id {new_id}")
            self.merges.append((a, b))
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

        verbose=True shows a tqdm progress bar. Raises ValueError if vocab_size is too small to hold
        the 256 bytes and the specials, or too large for the text (no pair left to merge).
        """
        if not isinstance(text, str):
            raise TypeError(f"train expects text as a str, got {type(text).__name__}")
        specials = _check_specials(special_tokens)
        smallest = 256 + len(specials)
        if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < smallest:
            raise ValueError(f"vocab_size must be an int >= {smallest} (256 bytes + {len(specials)} special "
                             f"token(s)), got {vocab_size!r}")
        n_merges = vocab_size - smallest

        # 1. Distinct chunks with their frequencies: each is worked on once, weighted by freq.
        chunk_freq = Counter(pre_split(text))
        words = [list(chunk.encode("utf-8")) for chunk in chunk_freq]  # words[w]: the ids of chunk w
        freqs = list(chunk_freq.values())

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
                raise ValueError(
                    f"the text only supports {k} merges (vocab_size <= {smallest + k}), asked for "
                    f"vocab_size={vocab_size}; pass a smaller vocab_size or more text")
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

    # ------------------------------------------------------------------ encoding
    def _encode_chunk(self, chunk: str) -> list[int]:
        """Apply merges by rank to one chunk.  With the one merge (104, 105) -> 256: 'hih' -> [256, 104]

        The loop is merge() in disguise, written for speed: the ids live in a str, one character per id
        (chr(id)), so that a pair is a 2-character string and str.replace() merges every occurrence
        left to right, exactly as merge() does, in C."""
        try:
            s = chunk.encode("utf-8").decode("latin-1")  # one character per byte: chr(b) for each b
        except UnicodeEncodeError as e:
            raise ValueError(f"text contains {chunk[e.start]!r} (a lone surrogate), which has no UTF-8 "
                             "encoding; clean the text first") from None
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
        if isinstance(allowed_special, str):
            raise ValueError(f"allowed_special must be 'all' or a collection of special tokens, got {allowed_special!r}")
        unknown = set(allowed_special) - set(self.special_tokens)
        if unknown:
            raise ValueError(f"allowed_special has {sorted(unknown)}, which are not special tokens "
                             f"of this tokenizer ({list(self.special_tokens)})")
        return list(allowed_special)

    def encode(self, text: str, *, allowed_special: str | Collection[str] = ()) -> list[int]:
        """Text -> ids.  Specials are never produced unless allowed:
        encode("[MASK]") is the bytes of the spelling; encode("a[MASK]", allowed_special="all")[-1] == mask_id."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        allowed = self._allowed(allowed_special)
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

    def to_tiktoken(self):
        """A tiktoken.Encoding with our merges: mergeable_ranks maps token bytes -> id, in id order."""
        import tiktoken  # noqa: PLC0415 (only this fast path needs it)

        ranks = {b: i for i, b in enumerate(self.token_bytes)}
        if len(ranks) != len(self.token_bytes):
            raise ValueError("two tokens have the same bytes, which tiktoken cannot represent; use encode()")
        return tiktoken.Encoding(name=f"mdlm_course_bpe_{self.vocab_size}", pat_str=SPLIT_PATTERN,
                                 mergeable_ranks=ranks, special_tokens=dict(self.special_tokens))

    def encode_fast(self, text: str, *, allowed_special: str | Collection[str] = ()) -> list[int]:
        """Same ids as encode(text), computed by tiktoken (built once from our merges)."""
        if not isinstance(text, str):
            raise TypeError(f"encode_fast expects a str, got {type(text).__name__}")
        allowed = self._allowed(allowed_special)
        try:  # tiktoken would silently replace a lone surrogate; encode() refuses it, so do we
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"text contains {text[e.start]!r} (a lone surrogate) at index {e.start}, "
                             "which has no UTF-8 encoding; clean the text first") from None
        if self._tiktoken is None:
            self._tiktoken = self.to_tiktoken()
        if not allowed:
            return self._tiktoken.encode_ordinary(text)
        return self._tiktoken.encode(text, allowed_special=set(allowed), disallowed_special=())

    # ------------------------------------------------------------------ decoding
    def id_to_token_bytes(self, i: int) -> bytes:
        """The bytes of one id; a special token gives its spelling.  id_to_token_bytes(104) -> b'h'"""
        if 0 <= i < len(self.token_bytes):
            return self.token_bytes[i]
        if i in self._special_by_id:
            return self._special_by_id[i].encode("utf-8")
        raise ValueError(f"token id {i!r} is out of range: this tokenizer has ids 0..{self.vocab_size - 1}")

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Ids -> the concatenated bytes of their tokens (specials as their spelling)."""
        if hasattr(ids, "tolist"):  # a torch tensor or numpy array
            ids = ids.tolist()
        tb, n = self.token_bytes, len(self.token_bytes)
        return b"".join(tb[i] if 0 <= i < n else self.id_to_token_bytes(i) for i in ids)

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
        """Write one JSON file (atomically: a .tmp file, then a rename)."""
        path = Path(path)
        doc = {"format": FORMAT, "version": FORMAT_VERSION, "vocab_size": self.vocab_size,
               "split_pattern": SPLIT_PATTERN, "special_tokens": list(self.special_tokens),
               "merges": [list(p) for p in self.merges]}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(doc, separators=(",", ":")), encoding="utf-8")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> "BPETokenizer":
        """Read a file written by save(). Raises TokenizerFileError (a ValueError) with a one-line reason."""
        path = Path(path)
        if not path.is_file():
            raise TokenizerFileError(f"{path}: no such tokenizer file; train one with BPETokenizer.train(...).save(path)")
        try:
            doc = json.loads(path.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise TokenizerFileError(f"{path}: not a tokenizer file (invalid or truncated JSON: {e}); "
                                     "re-save it with BPETokenizer.save") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise TokenizerFileError(f"{path}: not a tokenizer file (no \"format\": \"{FORMAT}\" field)")
        if doc.get("version") != FORMAT_VERSION:
            raise TokenizerFileError(f"{path}: tokenizer format version {doc.get('version')!r}, this code reads "
                                     f"version {FORMAT_VERSION}; re-train the tokenizer with this version")
        for field in ("vocab_size", "split_pattern", "special_tokens", "merges"):
            if field not in doc:
                raise TokenizerFileError(f"{path}: tokenizer file is missing the field {field!r}; re-save it")
        if doc["split_pattern"] != SPLIT_PATTERN:
            raise TokenizerFileError(f"{path}: made with a different pre-split pattern; re-train the tokenizer")
        try:
            merges = [tuple(p) for p in doc["merges"]]
            if not all(len(p) == 2 for p in merges):
                raise ValueError("each merge must be a pair [a, b]")
            tok = cls(merges, doc["special_tokens"])
        except (TypeError, ValueError) as e:
            raise TokenizerFileError(f"{path}: corrupt tokenizer file ({e})") from None
        if tok.vocab_size != doc["vocab_size"]:
            raise TokenizerFileError(f"{path}: corrupt tokenizer file (vocab_size {doc['vocab_size']!r} but "
                                     f"{tok.vocab_size} ids from merges and specials)")
        return tok


def show_split(tok: BPETokenizer, text: str, sep: str = "|") -> str:
    """Show how text is cut into tokens.  show_split(tok, "To be, or not") -> 'To| be|,| or| not'"""
    return sep.join(tok.token_str(i) for i in tok.encode(text))
