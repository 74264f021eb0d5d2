"""The command line: python -m mdlm_course {doctor,demo,...} --help

    doctor   print each dependency with its version, the device, and whether bf16 is supported
    demo     the most complete thing the course can do so far (what `make demo` runs)
    train    train a model on a text file, with checkpoints and --resume (torchrun for several processes)
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


def cmd_demo(args) -> int:
    import os

    from .demo import run_demo

    quick = args.quick or os.environ.get("MDLM_COURSE_QUICK", "") not in ("", "0")
    return run_demo(quick=quick)


def cmd_train(args) -> int:
    """Train the preset's model on a text file; checkpoints go to --out (see mdlm_course/train.py)."""
    from pathlib import Path

    import torch.distributed as dist

    from .checkpoint import list_checkpoints, load_checkpoint
    from .data import CACHE_DIR, DEFAULT_CORPUS, TokenData, load_text, split_text
    from .model import MDLM, ModelConfig
    from .tokenizer import BPETokenizer
    from .train import TrainConfig, TrainingDiverged, prepare_tokenizer, setup_distributed, train

    overrides = {k: v for k, v in (("max_steps", args.steps), ("batch_size", args.batch_size), ("lr", args.lr),
                                   ("dtype", args.dtype), ("device", args.device), ("seed", args.seed))
                 if v is not None}
    if args.compile is not None:
        overrides["compile"] = args.compile
    cfg = TrainConfig.preset(args.preset, **overrides)
    data_path = Path(args.data or DEFAULT_CORPUS)
    out = Path(args.out or Path("runs") / f"{data_path.stem}-{args.preset}")
    cache_dir = Path(args.cache_dir) if args.cache_dir else CACHE_DIR
    # Under torchrun: join the process group first, so that process 0 alone trains and caches the tokenizer.
    rank, world_size, _, initialised_here = setup_distributed(cfg.device)
    say = print if rank == 0 else (lambda *a, **k: None)
    try:
        text = load_text(data_path)
        model_config = ModelConfig.preset(args.preset)
        if args.tokenizer:
            tok = BPETokenizer.load(args.tokenizer)
        elif args.resume and list_checkpoints(out):
            tok = load_checkpoint(out, "latest", verify=False).tokenizer()
        else:
            tok = None
        if tok is None:
            if rank == 0:
                say(f"tokenizer: byte-level BPE, vocab_size={model_config.vocab_size}, trained on the train split "
                    f"of {data_path} (cached in {cache_dir})")
                tok = prepare_tokenizer(split_text(text)[0], model_config.vocab_size, cache_dir)
            if world_size > 1:
                dist.barrier()
                tok = prepare_tokenizer(split_text(text)[0], model_config.vocab_size, cache_dir)
        if rank == 0:
            data = TokenData.from_text(text, tok, cache_dir)
        if world_size > 1:
            dist.barrier()
            data = TokenData.from_text(text, tok, cache_dir)
        model = MDLM(ModelConfig.preset(args.preset, vocab_size=tok.vocab_size))
        say(f"data: {data_path}: {data}")
        say(f"model: {args.preset} preset, {model.num_params() / 1e6:.2f}M parameters; "
            f"{cfg.max_steps} steps of {cfg.batch_size * cfg.grad_accum * world_size} x {model.config.seq_len} tokens"
            + (f" on {world_size} processes" if world_size > 1 else ""))
        say(f"checkpoints -> {out}/step-*  (resume with --resume; load with mdlm_course.load_pretrained('{out}'))")
        try:
            result = train(model, cfg, data, tokenizer=tok, out_dir=out, resume=args.resume)
        except TrainingDiverged as e:
            print(f"error: {e}", file=sys.stderr)
            return 3
        if result.val is not None:
            say(f"done: step {result.step}, val NELBO {result.val['val_nelbo']:.4f} nats/token, "
                f"{result.val['val_bpb']:.4f} bits/byte; checkpoint {result.checkpoint}")
        return 0
    finally:
        if initialised_here:
            dist.destroy_process_group()


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m mdlm_course", description="Masked diffusion LMs from scratch.")
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
    p.add_argument("--tokenizer", help="a tokenizer .json; default: train one (cached in --cache-dir)")
    p.add_argument("--cache-dir", help="where encoded ids and tokenizers are cached (default data/cache)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--dtype", choices=["auto", "bf16", "fp16", "fp32"])
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile")
    p.add_argument("--device", help="cuda, cpu or mps (default: the best available)")
    p.add_argument("--seed", type=int)
    p.set_defaults(func=cmd_train)
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
