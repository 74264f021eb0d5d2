"""Benchmark the tokenizer against references measured in the same run; prints a table with ratios.

    python bench/bench_tokenizer.py                  # the whole corpus, vocab 4096, best of 3
    python bench/bench_tokenizer.py --repeat 1 --chars 500000

Rows (the best of --repeat runs, so that a busy machine hurts less; wall-clock and CPU seconds):
  train      BPETokenizer.train            vs HF `tokenizers` ByteLevel BPE, same text, same vocab_size
  encode     BPETokenizer.encode, cold     (a fresh tokenizer: empty per-chunk cache)   target >= 3 MB/s
  encode     BPETokenizer.encode, warm     (the cache already holds every chunk)        for information
  fast       BPETokenizer.encode_fast      vs tiktoken's own Encoding built from the same merges, called
                                           directly (encode_ordinary): what our wrapper costs
  hf encode  HF Tokenizer.encode of the corpus with HF's own 4096 vocab               for information
No whitespace (--dna-chars, default 1 MB; 0 skips): text with no space for the pre-split to cut at,
timed against the same number of characters of the corpus, same vocab_size (MAX_CHUNK_CHARS in the
tokenizer keeps both linear in the text; before the cap the DNA row was ~100x the English one):
  train      BPETokenizer.train on random "ACGT"       vs train on English            target ratio <= 50
  encode     BPETokenizer.encode of one random-letter word (a single 200k-character run), cold cache,
             with the merges learned on the corpus     vs encode of 200k English chars   target ratio <= 20
Offline: no pretrained tiktoken vocabulary is downloaded; both tiktoken rows use our merges.
HF trains with its own threads (all cores); ours is one Python thread.
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import time

from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from mdlm_course.data import DEFAULT_CORPUS, load_text
from mdlm_course.tokenizer import MASK, BPETokenizer


def best_of(repeat: int, fn):
    """((best wall-clock seconds, best CPU seconds of this process, all threads), result of the last call)."""
    wall, cpu, out = float("inf"), float("inf"), None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    return (wall, cpu), out


def train_hf(text: str, vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[MASK], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    lines = text.splitlines(keepends=True)  # batches of lines: HF's fastest input form on this corpus
    tok.train_from_iterator(("".join(lines[i:i + 1000]) for i in range(0, len(lines), 1000)), trainer=trainer)
    return tok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--chars", type=int, default=0, help="use only the first N characters (0: all)")
    ap.add_argument("--dna-chars", type=int, default=1_000_000,
                    help="characters of whitespace-free text for the no-whitespace rows (0: skip them)")
    args = ap.parse_args()

    text = load_text(DEFAULT_CORPUS)
    if args.chars:
        text = text[: args.chars]
    mb = len(text.encode("utf-8")) / 1e6
    print(f"corpus: {mb:.2f} MB, vocab_size {args.vocab_size}, best of {args.repeat}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"load average {os.getloadavg()[0]:.1f} at start")

    t_hf, hf = best_of(args.repeat, lambda: train_hf(text, args.vocab_size))
    t_ours, tok = best_of(args.repeat, lambda: BPETokenizer.train(text, args.vocab_size, verbose=False))
    assert tok.vocab_size == hf.get_vocab_size() == args.vocab_size

    t_cold, ids = best_of(args.repeat, lambda: BPETokenizer(tok.merges).encode(text))
    tok.encode(text)  # fill the cache
    t_warm, _ = best_of(args.repeat, lambda: tok.encode(text))
    tok.encode_fast("warm up: build the tiktoken Encoding once")
    t_fast, ids_fast = best_of(args.repeat, lambda: tok.encode_fast(text))
    raw = tok._tiktoken
    t_raw, ids_raw = best_of(args.repeat, lambda: raw.encode_ordinary(text))
    assert ids == ids_fast == ids_raw, "the tiktoken path disagrees with the pure-Python path"
    t_hf_enc, enc = best_of(args.repeat, lambda: hf.encode(text))

    rows = [  # task, ours, reference name, reference times, target
        ("train to vocab", t_ours, "HF tokenizers", t_hf, "ratio <= 3"),
        ("encode, cold cache", t_cold, "", None, ">= 3 MB/s"),
        ("encode, warm cache", t_warm, "", None, ""),
        ("encode_fast", t_fast, "raw tiktoken", t_raw, "ratio <= 2"),
        ("HF encode (its vocab)", t_hf_enc, "", None, ""),
    ]
    print(f"\n{'':22}{'ours: wall':>11} {'cpu':>6}  {'MB/s: wall':>10} {'cpu':>5}   {'reference':14}{'wall':>6} {'cpu':>6}"
          f"   {'ratio: wall':>11} {'cpu':>5}   target")
    for task, (wall, cpu), ref, t_ref, target in rows:
        line = f"{task:22}{wall:10.2f}s {cpu:5.2f}s  {mb / wall:10.2f} {mb / cpu:5.2f}   {ref:14}"
        if t_ref:
            line += f"{t_ref[0]:5.2f}s {t_ref[1]:5.2f}s   {wall / t_ref[0]:11.2f} {cpu / t_ref[1]:5.2f}"
        else:
            line += " " * 31
        print(f"{line}   {target}")
    print("wall: best wall-clock time; cpu: best CPU time of the process, summed over its threads "
          "(HF trains with several threads; ours and tiktoken use one).")
    print("On a busy machine wall-clock time includes waiting for a core; CPU time does not.")
    n = len(ids)
    print(f"\nour tokens: {n:,} ({mb * 1e6 / n:.2f} bytes/token); HF tokens: {len(enc.ids):,} "
          f"({mb * 1e6 / len(enc.ids):.2f} bytes/token); load average {os.getloadavg()[0]:.1f} at end")
    if args.dna_chars:
        bench_no_whitespace(text, tok, args)


def bench_no_whitespace(text: str, tok: BPETokenizer, args) -> None:
    """Whitespace-free text against the same number of English characters: a ratio near 1 means linear."""
    rng = random.Random(0)
    n = min(args.dna_chars, len(text))
    dna = "".join(rng.choices("ACGT", k=n))
    english = text[:n]
    t_dna, dna_tok = best_of(args.repeat, lambda: BPETokenizer.train(dna, args.vocab_size, verbose=False))
    t_eng, _ = best_of(args.repeat, lambda: BPETokenizer.train(english, args.vocab_size, verbose=False))
    m = 200_000
    word = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=m))
    t_word, ids = best_of(args.repeat, lambda: BPETokenizer(tok.merges).encode(word))
    t_prose, _ = best_of(args.repeat, lambda: BPETokenizer(tok.merges).encode(text[:m]))
    assert tok.decode(ids) == word and tok.encode_fast(word) == ids
    print(f"\nno whitespace: {n:,} characters of random ACGT vs the first {n:,} of the corpus, vocab_size "
          f"{args.vocab_size}; one {m:,}-letter word vs {m:,} corpus characters, merges from the corpus")
    print(f"{'':28}{'wall':>8} {'cpu':>6}   {'reference':>9} {'cpu':>6}   {'ratio: wall':>11} {'cpu':>5}   target")
    for task, (wall, cpu), (ref_wall, ref_cpu), target in [
        ("train, DNA vs English", t_dna, t_eng, "ratio <= 50"),
        ("encode, one long word", t_word, t_prose, "ratio <= 20"),
    ]:
        print(f"{task:28}{wall:7.2f}s {cpu:5.2f}s   {ref_wall:8.2f}s {ref_cpu:5.2f}s   {wall / ref_wall:11.2f} "
              f"{cpu / ref_cpu:5.2f}   {target}")
    print(f"DNA: {(args.vocab_size - len(dna_tok.special_tokens) - 256) / t_dna[0]:.0f} merges/s; "
          f"long word: {t_word[0] / m * 1e6:.2f} µs/character (before the chunk cap: ~50)")


if __name__ == "__main__":
    main()
