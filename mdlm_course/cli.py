"""The command line: python -m mdlm_course {doctor,demo,...} --help

    doctor   print each dependency with its version, the device, and whether bf16 is supported
    demo     the most complete thing the course can do so far (what `make demo` runs)
"""
from __future__ import annotations

import argparse
import importlib
import platform
import sys

# (import name, pip name, needed by)
DEPENDENCIES = [
    ("torch", "torch", "everything"),
    ("numpy", "numpy", "everything"),
    ("regex", "regex", "tokenizer pre-split"),
    ("tqdm", "tqdm", "progress bars"),
    ("safetensors", "safetensors", "checkpoints"),
    ("tiktoken", "tiktoken", "fast tokenizer path"),
    ("matplotlib", "matplotlib", "plots"),
]


def _line(ok: bool, msg: str) -> None:
    print(("[OK]" if ok else "[FAIL]").ljust(7) + msg)


def cmd_doctor(args) -> int:
    """One [OK]/[FAIL] line per dependency, then the device and its precision."""
    ok = True
    _line(True, f"python {platform.python_version()} ({sys.executable})")
    for mod, pip_name, why in DEPENDENCIES:
        try:
            m = importlib.import_module(mod)
            _line(True, f"{pip_name} {getattr(m, '__version__', '?')}  ({why})")
        except Exception as e:  # noqa: BLE001 - report any import failure
            ok = False
            _line(False, f"{pip_name}: {type(e).__name__}: {e}  ({why}; pip install {pip_name})")
    try:
        import torch

        from .device import autocast_dtype, bf16_supported, cpu_has_fast_bf16, get_device

        dev = get_device()
        name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.machine()
        _line(True, f"device {dev.type} ({name}, torch threads: {torch.get_num_threads()})")
        bf16 = bf16_supported(dev)
        _line(bf16, f"bf16 supported on {dev.type}: {bf16}"
              + (f" (bf16 matrix units, AMX/AVX512-BF16: {cpu_has_fast_bf16()})" if dev.type == "cpu" else ""))
        dt = autocast_dtype(dev)
        _line(True, f"training precision (dtype=auto): {dt if dt is not None else 'float32 (no autocast)'}")
    except Exception as e:  # noqa: BLE001
        ok = False
        _line(False, f"device check: {type(e).__name__}: {e}")
    return 0 if ok else 1


def demo_tokenizer(quick: bool = False):
    """Chapter 1 in one screen: train BPE on the corpus (progress bar), then show how text is cut."""
    from .data import DEFAULT_CORPUS, load_text, split_text
    from .tokenizer import BPETokenizer, show_split

    text = load_text(DEFAULT_CORPUS)
    train_text, val_text = split_text(text)
    vocab_size = 512 if quick else 4096
    if quick:
        train_text = train_text[:200_000]
    print(f"Training a byte-level BPE tokenizer on {DEFAULT_CORPUS.name} "
          f"({len(train_text.encode()) / 1e6:.1f} MB of the train split) to vocab_size={vocab_size} ...")
    tok = BPETokenizer.train(train_text, vocab_size)
    print(tok)
    for sentence in ["To be, or not to be: that is the question.",
                     "Now is the winter of our discontent",
                     "Diffusion models 🤖 write 漢字 too"]:
        print(f"\n  {sentence!r}\n  -> {show_split(tok, sentence, sep=' | ')}")
    ids = tok.encode(val_text)
    print(f"\nOn the validation split (last 5%): {len(val_text.encode()) / len(ids):.2f} bytes per token.")
    print(f"[MASK] is id {tok.mask_id}; the text \"[MASK]\" encodes to ordinary tokens "
          f"{tok.encode('[MASK]')}, never to {tok.mask_id}.")
    return tok


def cmd_demo(args) -> int:
    import os

    quick = args.quick or os.environ.get("MDLM_COURSE_QUICK", "") not in ("", "0")
    demo_tokenizer(quick=quick)
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m mdlm_course", description="Masked diffusion LMs from scratch.")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("doctor", help="check dependencies, device and bf16 support")
    p.set_defaults(func=cmd_doctor)
    p = sub.add_parser("demo", help="the main job: what `make demo` runs")
    p.add_argument("--quick", action="store_true", help="tiny sizes (also MDLM_COURSE_QUICK=1)")
    p.set_defaults(func=cmd_demo)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        # Bad input: one clear line, no traceback.
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
