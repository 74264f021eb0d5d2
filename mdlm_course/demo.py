"""`make demo`: the whole course in one run, from the tokenizer to watching the model denoise.

    1. the tokenizer: byte-level BPE trained on the corpus (progress bar), and a sentence cut into tokens;
    2. the model: the shipped checkpoint in checkpoints/ if there is one, else a small MDLM trained
       here for a minute or two on the Shakespeare train split (progress bar, validation NELBO);
    3. live denoising: the sampler starts from a line of [MASK] (shown as ░) and unmasks a few
       positions per step. With a display (DISPLAY or WAYLAND_DISPLAY on Linux; macOS; Windows) and
       pygame installed, in a window that closes by itself 5 s after the sample is done unless a key
       is pressed; otherwise redrawn in place on a terminal, or printed as a few frames when the
       output is a file, a pipe or a dumb terminal. Either way the demo ends by itself.
The views live in mdlm_course/visualize.py; this file is only the demo's script.
"""
from __future__ import annotations

import torch

from .checkpoint import load_pretrained
from .config import ModelConfig, TrainConfig
from .data import DEFAULT_CORPUS, ROOT, TokenData, load_text, split_text
from .model import MDLM
from .tokenizer import BPETokenizer, show_split
from .train import train
from .visualize import (CHECKPOINTS, MASK_GLYPH, DenoisingWindow, VisualizeError,  # noqa: F401
                        display_available, find_shipped_checkpoint, import_pygame, render, show_denoising)

SENTENCES = ["To be, or not to be: that is the question.",
             "Now is the winter of our discontent",
             "Diffusion models 🤖 write 漢字 too"]
WINDOW_LINGER_S = 5.0      # the demo's window closes this long after the sample is done, unless a key is pressed


def demo_tokenizer(train_text: str, val_text: str, vocab_size: int):
    """Chapter 1 on one screen: train BPE (with a progress bar), then show how text is cut."""
    print(f"== 1. Tokenizer: byte-level BPE on {DEFAULT_CORPUS.name} "
          f"({len(train_text.encode()) / 1e6:.1f} MB of the train split), vocab_size={vocab_size}", flush=True)
    tok = BPETokenizer.train(train_text, vocab_size)
    print(tok)
    for sentence in SENTENCES:
        print(f"  {sentence!r}\n   -> {show_split(tok, sentence, sep=' | ')}")
    n_val = len(tok.encode_fast(val_text))
    print(f"  validation split (last 5%): {len(val_text.encode()) / n_val:.2f} bytes per token; "
          f"[MASK] is id {tok.mask_id}, and the text \"[MASK]\" encodes to {tok.encode('[MASK]')}, never to it.\n")
    return tok


NO_CHECKPOINT = f"no checkpoint in {CHECKPOINTS.name}/ yet"   # why demo_train runs, by default


def demo_train(text: str, tok, *, quick: bool, why: str = NO_CHECKPOINT):
    """A tiny MDLM trained here for a minute or two on a laptop CPU (seconds in quick mode). why: printed,
    the reason no shipped checkpoint is used.

    Its samples are word salad with Shakespeare's spelling; notebook 05 trains a real one.
    """
    model_cfg = ModelConfig.preset("tiny", vocab_size=tok.vocab_size, n_layer=2 if quick else 3, d_model=64 if quick else 96,
                                   n_head=2 if quick else 3)
    cfg = TrainConfig.preset("tiny", max_steps=30 if quick else 300, batch_size=16, eval_interval=10_000,
                             ckpt_interval=0, log_interval=10, dtype="auto", seed=0)
    torch.manual_seed(0)
    model = MDLM(model_cfg)
    data = TokenData.from_text(text, tok)
    print(f"== 2. Model: {why}, so training a small MDLM here "
          f"({model.num_params() / 1e6:.2f}M parameters, {cfg.max_steps} steps of "
          f"{cfg.batch_size} x {model_cfg.seq_len} tokens)", flush=True)
    result = train(model, cfg, data, tokenizer=tok)
    if result.val is not None:
        print(f"  validation NELBO {result.val['val_nelbo']:.3f} nats/token = {result.val['val_bpb']:.3f} bits/byte "
              f"(ln V = {torch.log(torch.tensor(float(tok.vocab_size))):.2f} for a uniform guess)\n")
    return model.eval()


def want_window(live: bool | None) -> bool:
    """Open the pygame window when nobody asked for the terminal (live is None), a display is there,
    and pygame is installed (if it is not, say so and use the terminal)."""
    if live is not None or not display_available():
        return False
    try:
        import_pygame()
    except VisualizeError as e:
        print(f"  ({e}; showing it in the terminal instead)")
        return False
    return True


def run_demo(quick: bool = False, live: bool | None = None, use_checkpoint: bool = True,
             window: bool | None = None) -> int:
    """The demo. live: None = redraw in place if stdout is a terminal. window: None = a pygame window
    when there is a display and live is None (so a test passing live=False never opens one)."""
    shipped = find_shipped_checkpoint() if use_checkpoint else None
    if shipped is not None:
        model, tok, meta = load_pretrained(shipped)
        print(f"== 1. Tokenizer (from the checkpoint): {tok}")
        for sentence in SENTENCES[:2]:
            print(f"  {sentence!r}\n   -> {show_split(tok, sentence, sep=' | ')}")
        metrics = meta.get("metrics") or {}
        val, bpb = metrics.get("val_nelbo"), metrics.get("val_bpb")
        print(f"\n== 2. Model: {shipped.relative_to(ROOT)}, {model.num_params() / 1e6:.2f}M parameters, "
              f"step {meta.get('step')}" + (f", validation NELBO {val:.3f} nats/token" if val else "")
              + (f" = {bpb:.3f} bits/byte" if bpb else "") + "\n")
        seq_len = model.config.seq_len
    else:
        text = load_text(DEFAULT_CORPUS)
        if quick:
            text = text[:400_000]   # quick mode: a slice of the corpus
        train_text, val_text = split_text(text)
        tok = demo_tokenizer(train_text, val_text, 512 if quick else 1024)
        model = demo_train(text, tok, quick=quick, why=NO_CHECKPOINT if use_checkpoint else "use_checkpoint=False")
        seq_len = model.config.seq_len
    window = want_window(live) if window is None else window
    print(f"== 3. Sampling: ancestral sampler, {seq_len} tokens, from all-[MASK] ({MASK_GLYPH}) to text", flush=True)
    if window:
        print(f"  in a window: it closes {WINDOW_LINGER_S:.0f} s after the sample is done, unless you press a key "
              "(keys are listed at its bottom; Q quits)", flush=True)
        text = DenoisingWindow(model, tok, seq_len=seq_len, steps=seq_len, seed=0, linger=WINDOW_LINGER_S).run()
        print(f"{text}\n")
    else:
        show_denoising(model, tok, seq_len=seq_len, steps=seq_len, seed=0, live=live)
    print("== 3b. Prompted: the prompt is kept, the rest is generated", flush=True)
    final = show_denoising(model, tok, seq_len=seq_len, steps=seq_len, prompt="ROMEO:\n", seed=1, live=live)
    print(f"Final sample:\n{final}\n")
    print("Next: read learning_guide.md and run the notebooks (make lab).")
    return 0
