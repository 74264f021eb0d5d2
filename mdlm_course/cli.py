"""The command line: python -m mdlm_course {doctor,demo,...} --help

    doctor   print each dependency with its version, the device, and whether bf16 is supported
    demo     the most complete thing the course can do so far (what `make demo` runs)
    train    train a model on a text file, with checkpoints and --resume (torchrun for several processes)
    visualize  watch a checkpoint denoise in a pygame window (--record out.gif: a GIF, no display needed)
    sample   print samples from a checkpoint

Each command parses its arguments and calls one library function. A user's mistake prints one line
(exit code 2); --debug (before the command) shows the traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys

import torch

from .checkpoint import CheckpointSaveError
from .config import QUICK
from .data import CACHE_DIR
from .demo import run_demo
from .device import autocast_dtype, bf16_supported, cpu_has_fast_bf16, get_device
from .errors import MdlmError
from .evaluate import evaluate_checkpoint
from .pipeline import train_on_text
from .train import TrainingDiverged
from .visualize import sample_command, visualize_command

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
OPTIONAL = [   # what the course needs beyond the package: reported, but the doctor does not fail without them
    ("pygame", "pygame-ce", "the live window of `visualize` and `make demo`"),
    ("PIL", "Pillow", "GIFs: `visualize --record`, notebook 07"),
    ("jupyterlab", "jupyterlab", "the notebooks: `make lab`"),
    ("ipykernel", "ipykernel", "the notebooks' kernel"),
]


def _line(ok: bool, msg: str) -> None:
    print(("[OK]" if ok else "[FAIL]").ljust(7) + msg)


def cmd_doctor(args) -> int:
    """One [OK]/[FAIL] line per dependency, then the device and its precision."""
    ok = True
    _line(True, f"python {platform.python_version()} ({sys.executable})")
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")          # pygame's import banner
    for (mod, pip_name, why), required in [(d, True) for d in DEPENDENCIES] + [(d, False) for d in OPTIONAL]:
        try:
            m = importlib.import_module(mod)
            _line(True, f"{pip_name} {getattr(m, '__version__', '?')}  ({why})")
        except Exception as e:  # noqa: BLE001 - report any import failure
            if required:
                ok = False
                _line(False, f"{pip_name}: {type(e).__name__}: {e}  ({why}; pip install {pip_name})")
            else:
                print(f"[--]   {pip_name} not installed: needed only for {why} (pip install -r requirements.txt)")
    try:
        dev = get_device()
        name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.machine()
        _line(True, f"device {dev.type} ({name}, torch threads: {torch.get_num_threads()})")
        bf16 = bf16_supported(dev)
        _line(bf16, f"bf16 supported on {dev.type}: {bf16}"
              + (f" (bf16 matrix units, AMX/AVX512-BF16: {cpu_has_fast_bf16()})" if dev.type == "cpu" else ""))
        dt = autocast_dtype(dev)
        rule = (" if a measured step is at least 10% faster than float32 (train() measures it first)"
                if dt is not None and dev.type == "cpu" else "")
        _line(True, f"training precision (dtype=auto): {dt if dt is not None else 'float32 (no autocast)'}{rule}")
    except Exception as e:  # noqa: BLE001
        ok = False
        _line(False, f"device check: {type(e).__name__}: {e}")
    return 0 if ok else 1


def cmd_demo(args) -> int:
    return run_demo(quick=args.quick or QUICK)


def cmd_train(args) -> int:
    """Train the preset's model on a text file; checkpoints go to --out (pipeline.train_on_text)."""
    overrides = {k: v for k, v in (("max_steps", args.steps), ("batch_size", args.batch_size), ("lr", args.lr),
                                   ("min_lr", args.min_lr), ("dtype", args.dtype), ("device", args.device),
                                   ("seed", args.seed), ("objective", args.objective), ("init_from", args.init_from),
                                   ("compile", args.compile)) if v is not None}
    result = train_on_text(args.data, preset=args.preset, out=args.out, train_overrides=overrides,
                           tokenizer_path=args.tokenizer, vocab_size=args.vocab_size,
                           cache_dir=args.cache_dir or CACHE_DIR, resume=args.resume, stop_at=args.stop_at,
                           output_shift=args.output_shift)
    if result.val is not None:
        key = next(k for k in ("val_nelbo", "val_nll") if k in result.val)
        print(f"done: step {result.step}, {key} {result.val[key]:.4f} nats/token, "
              f"{result.val['val_bpb']:.4f} bits/byte; checkpoint {result.checkpoint}")
    return 0


def cmd_visualize(args) -> int:
    """Watch the sampler denoise in a pygame window, or write it to a GIF with --record (visualize.py)."""
    return visualize_command(args.checkpoint, method=args.method, steps=args.steps, seq_len=args.seq_len,
                             seed=args.seed, temperature=args.temperature, prompt=args.prompt,
                             record=args.record, stride=args.stride)


def cmd_sample(args) -> int:
    """Print samples from a checkpoint: the plain-text sibling of `visualize`."""
    return sample_command(args.checkpoint, prompt=args.prompt, method=args.method, steps=args.steps,
                          num=args.num, seq_len=args.seq_len, seed=args.seed, temperature=args.temperature)


def _sampler_args(p: argparse.ArgumentParser) -> None:
    """The options `visualize` and `sample` share."""
    p.add_argument("--checkpoint", help="a checkpoint or run directory (default: the shipped one under checkpoints/)")
    p.add_argument("--method", choices=["ancestral", "first_hitting", "confidence"], default="ancestral")
    p.add_argument("--steps", type=int, help="sampler steps (default: seq_len; first_hitting: one per token)")
    p.add_argument("--seq-len", type=int, help="tokens per sample (default: the model's seq_len)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=1.0, help="> 0; lower is more conservative")
    p.add_argument("--prompt", help="text the sample continues")


def cmd_eval(args) -> int:
    """Validation NELBO (or the AR twin's NLL) with its standard error, and sample quality (evaluate.py)."""
    evaluate_checkpoint(args.checkpoint, data_path=args.data, windows=args.windows, passes=args.passes,
                        samples=args.samples, steps=args.steps, method=args.method, block_length=args.block_length,
                        judge=args.judge, compare=args.compare, seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m mdlm_course", description="Masked diffusion LMs from scratch.")
    ap.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("doctor", help="check dependencies, device and bf16 support")
    p.set_defaults(func=cmd_doctor)
    p = sub.add_parser("demo", help="the main job: what `make demo` runs")
    p.add_argument("--quick", action="store_true", help="tiny sizes (also MDLM_COURSE_QUICK=1)")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("train", help="train a model on a UTF-8 text file (torchrun --nproc_per_node=N for DDP)")
    p.add_argument("--preset", choices=["tiny", "cpu", "gpu"], default="cpu", help="model + train preset")
    p.add_argument("--data", help="a UTF-8 text file, default data/shakespeare.txt (val = its last 5%%)")
    p.add_argument("--steps", type=int, help="optimizer steps (the preset's max_steps by default)")
    p.add_argument("--out", help="run directory for checkpoints (default runs/<data>-<preset>)")
    p.add_argument("--resume", action="store_true", help="continue the latest checkpoint in --out")
    p.add_argument("--stop-at", type=int, help="stop after this step (the LR schedule still spans --steps); "
                                               "continue later with --resume")
    p.add_argument("--objective", choices=["mdlm", "ar"], help="mdlm (default) or ar: the autoregressive twin")
    p.add_argument("--init-from", help="start from the weights of this checkpoint or run (e.g. an AR twin's)")
    p.add_argument("--output-shift", action="store_true",
                   help="MDLM: read position i's logits from position i - 1 (DiffuLLaMA; for a warm start)")
    p.add_argument("--tokenizer", help="a tokenizer .json; default: train one (cached in --cache-dir)")
    p.add_argument("--vocab-size", type=int, help="vocabulary of a newly trained tokenizer (default: the preset's)")
    p.add_argument("--cache-dir", help="where encoded ids and tokenizers are cached (default data/cache)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="peak learning rate (the preset's by default)")
    p.add_argument("--min-lr", type=float, help="where the cosine ends (default: the preset's, scaled down with "
                   "--lr when --lr is below it)")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp16", "fp32"])
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile")
    p.add_argument("--device", help="cuda, cpu or mps (default: the best available)")
    p.add_argument("--seed", type=int)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("eval", help="validation NELBO / NLL in nats per token and bits per byte, and sample quality")
    p.add_argument("--checkpoint", required=True, help="a checkpoint or run directory (an MDLM or an AR twin)")
    p.add_argument("--data", help="the text whose last 5%% is the validation split (default: the file the "
                   "checkpoint was trained on, else data/shakespeare.txt)")
    p.add_argument("--windows", type=int, default=64, help="validation windows (default 64)")
    p.add_argument("--passes", type=int, default=4, help="passes over the stratified t grid, for the standard error")
    p.add_argument("--samples", type=int, default=0, help="also generate this many windows and score them")
    p.add_argument("--steps", type=int, default=256, help="sampling steps (MDLM)")
    p.add_argument("--method", choices=["ancestral", "first_hitting", "confidence"], default="ancestral")
    p.add_argument("--block-length", type=int, help="semi-autoregressive blocks of this many tokens, left to "
                   "right, --steps each (1: the MDLM writes left to right; an approximation, chapter 6)")
    p.add_argument("--judge", help="an AR twin's checkpoint: the generative perplexity of the samples (and of real text)")
    p.add_argument("--compare", help="another checkpoint (same tokenizer and window length) scored on the same "
                   "windows: the paired difference and ratio in bits/byte, with their standard errors")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("visualize", help="watch a checkpoint denoise in a window (pygame), or --record a GIF")
    _sampler_args(p)
    p.add_argument("--record", metavar="OUT.gif", help="render offscreen to an animated GIF and exit (no display needed)")
    p.add_argument("--stride", type=int, help="with --record: one GIF frame every STRIDE steps (default: at most ~100 frames)")
    p.set_defaults(func=cmd_visualize)
    p = sub.add_parser("sample", help="print samples from a checkpoint")
    _sampler_args(p)
    p.add_argument("--num", type=int, default=1, help="number of samples")
    p.set_defaults(func=cmd_sample)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run one command. A user's mistake (MdlmError) prints one line and exits 2; --debug shows the traceback."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:                                         # `... | head`: the reader left; exit quietly
        _silence_stdout()
        return 141                                                  # 128 + SIGPIPE, as Unix tools exit
    except (MemoryError, torch.OutOfMemoryError) as e:
        if args.debug:
            raise
        print(f"error: out of memory ({type(e).__name__}); use a smaller --batch-size, --num or --seq-len",
              file=sys.stderr)
        return 2
    except RuntimeError as e:
        if args.debug or "can't allocate memory" not in str(e):
            raise
        print(f"error: out of memory ({str(e).splitlines()[0][:120]}); use a smaller --batch-size, --num or "
              "--seq-len", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except CheckpointSaveError as e:
        print(f"error: {e}", file=sys.stderr)
        return 4
    except (MdlmError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
        if args.debug:
            raise
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that Python's own flush at exit does not report the broken pipe again."""
    try:
        sys.stdout.flush()
    except (BrokenPipeError, OSError, ValueError):
        pass
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass                                                        # stdout is not a file (a test's capture)
