"""`make demo`: the whole course in one run, in the terminal.

    1. the tokenizer: byte-level BPE trained on the corpus (progress bar), and a sentence cut into tokens;
    2. the model: the shipped checkpoint in checkpoints/ if there is one, else a small MDLM trained
       here for a minute or two on the Shakespeare train split (progress bar, validation NELBO);
    3. live denoising: the sampler starts from a line of [MASK] (shown as ░) and unmasks a few
       positions per step, redrawn in place on a terminal, or printed as a few frames when the
       output is a file or a pipe (no display needed).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from .data import DEFAULT_CORPUS, ROOT, load_text, split_text

CHECKPOINTS = ROOT / "checkpoints"
MASK_GLYPH = "░"
SENTENCES = ["To be, or not to be: that is the question.",
             "Now is the winter of our discontent",
             "Diffusion models 🤖 write 漢字 too"]


def render(tokenizer, ids, mask_glyph: str = MASK_GLYPH) -> str:
    """Text of one sequence with each [MASK] drawn as a glyph.  render(tok, [84, mask, 33]) -> 'T░!'"""
    out, span = [], []
    for i in ids.tolist() if torch.is_tensor(ids) else ids:
        if i == tokenizer.mask_id:
            out.append(tokenizer.decode(span))
            out.append(mask_glyph)
            span = []
        else:
            span.append(i)
    out.append(tokenizer.decode(span))
    return "".join(out)


def show_denoising(model, tokenizer, *, seq_len: int, steps: int, method: str = "ancestral",
                   prompt: str | None = None, seed: int = 0, temperature: float = 1.0,
                   live: bool | None = None, fps: float = 20.0, frames_when_not_live: int = 4,
                   out=None) -> str:
    """Run the sampler and show its trajectory; return the final text.

    live (default: stdout is a terminal) redraws one frame per step in place; otherwise prints
    `frames_when_not_live` evenly spaced frames, so logs and notebooks stay short.
    """
    from .sampling import denoise

    out = out or sys.stdout
    live = out.isatty() if live is None else live
    generator = torch.Generator().manual_seed(seed)
    prompt_ids = torch.tensor(tokenizer.encode(prompt)) if prompt else None
    frames = denoise(model, mask_id=tokenizer.mask_id, num_samples=1, seq_len=seq_len, steps=steps,
                     method=method, temperature=temperature, prompt=prompt_ids, generator=generator)
    total = seq_len if method == "first_hitting" else steps
    shown = {max(1, round(total * k / frames_when_not_live)) for k in range(1, frames_when_not_live + 1)}
    text = ""
    for step, t, xt, nfe in frames:
        text = render(tokenizer, xt[0])
        header = f"step {step}/{total}  t={float(t[0]):.3f}  network calls={nfe}  masked={int((xt[0] == tokenizer.mask_id).sum())}"
        if live:
            out.write("\x1b[H\x1b[J" + header + "\n\n" + text + "\n")
            out.flush()
            time.sleep(1.0 / fps)
        elif step in shown:
            out.write(f"--- {header}\n{text}\n\n")
    out.flush()
    return text


def find_shipped_checkpoint() -> Path | None:
    """The first run directory (or checkpoint) under checkpoints/ that holds a model, if any."""
    from .checkpoint import CheckpointError, find_checkpoint

    for d in sorted(p for p in CHECKPOINTS.iterdir() if p.is_dir()) if CHECKPOINTS.is_dir() else []:
        try:
            return find_checkpoint(d)
        except CheckpointError:
            continue
    return None


def demo_tokenizer(train_text: str, val_text: str, vocab_size: int):
    """Chapter 1 on one screen: train BPE (with a progress bar), then show how text is cut."""
    from .tokenizer import BPETokenizer, show_split

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


def demo_train(text: str, tok, *, quick: bool):
    """A tiny MDLM trained here for a minute or two on a laptop CPU (seconds in quick mode).

    Its samples are word salad with Shakespeare's spelling; notebook 05 trains a real one.
    """
    from .data import TokenData
    from .model import MDLM, ModelConfig
    from .train import TrainConfig, train

    model_cfg = ModelConfig.preset("tiny", vocab_size=tok.vocab_size, n_layer=2 if quick else 3, d_model=64 if quick else 96,
                                   n_head=2 if quick else 3)
    cfg = TrainConfig.preset("tiny", max_steps=30 if quick else 300, batch_size=16, eval_interval=10_000,
                             ckpt_interval=0, log_interval=10, dtype="auto", seed=0)
    torch.manual_seed(0)
    model = MDLM(model_cfg)
    data = TokenData.from_text(text, tok)
    print(f"== 2. Model: no checkpoint in {CHECKPOINTS.name}/ yet, so training a small MDLM here "
          f"({model.num_params() / 1e6:.2f}M parameters, {cfg.max_steps} steps of "
          f"{cfg.batch_size} x {model_cfg.seq_len} tokens)", flush=True)
    result = train(model, cfg, data, tokenizer=tok)
    if result.val is not None:
        print(f"  validation NELBO {result.val['val_nelbo']:.3f} nats/token = {result.val['val_bpb']:.3f} bits/byte "
              f"(ln V = {torch.log(torch.tensor(float(tok.vocab_size))):.2f} for a uniform guess)\n")
    return model.eval()


def run_demo(quick: bool = False, live: bool | None = None, use_checkpoint: bool = True) -> int:
    shipped = find_shipped_checkpoint() if use_checkpoint else None
    if shipped is not None:
        from .checkpoint import load_pretrained

        from .tokenizer import show_split

        model, tok, meta = load_pretrained(shipped)
        print(f"== 1. Tokenizer (from the checkpoint): {tok}")
        for sentence in SENTENCES[:2]:
            print(f"  {sentence!r}\n   -> {show_split(tok, sentence, sep=' | ')}")
        val = (meta.get("metrics") or {}).get("val_nelbo")
        print(f"\n== 2. Model: {shipped.relative_to(ROOT)}, {model.num_params() / 1e6:.2f}M parameters, "
              f"step {meta.get('step')}" + (f", validation NELBO {val:.3f} nats/token" if val else "") + "\n")
        seq_len = model.config.seq_len
    else:
        text = load_text(DEFAULT_CORPUS)
        if quick:
            text = text[:400_000]   # quick mode: a slice of the corpus
        train_text, val_text = split_text(text)
        tok = demo_tokenizer(train_text, val_text, 512 if quick else 1024)
        model = demo_train(text, tok, quick=quick)
        seq_len = model.config.seq_len
    print(f"== 3. Sampling: ancestral sampler, {seq_len} tokens, from all-[MASK] ({MASK_GLYPH}) to text", flush=True)
    show_denoising(model, tok, seq_len=seq_len, steps=seq_len, seed=0, live=live)
    print("== 3b. Prompted: the prompt is kept, the rest is generated", flush=True)
    final = show_denoising(model, tok, seq_len=seq_len, steps=seq_len, prompt="ROMEO:\n", seed=1, live=live)
    print(f"Final sample:\n{final}\n")
    print("Next: read learning_guide.md and run the notebooks (make lab).")
    return 0
