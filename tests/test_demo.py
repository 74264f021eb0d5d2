"""`make demo` in quick mode, and the terminal renderer it uses."""
import io

import pytest
import torch

from mdlm_course.demo import MASK_GLYPH, find_shipped_checkpoint, render, run_demo, show_denoising
from mdlm_course.tokenizer import BPETokenizer


def _tok():
    return BPETokenizer.train("to be or not to be, that is the question " * 20, 270, verbose=False)


def test_render_draws_masks_and_decodes_spans():
    tok = _tok()
    ids = tok.encode("to be or not")
    with_mask = ids[:1] + [tok.mask_id] + ids[2:]
    assert render(tok, ids) == "to be or not"
    assert render(tok, with_mask) == tok.decode(ids[:1]) + MASK_GLYPH + tok.decode(ids[2:])


def test_show_denoising_prints_frames_and_ends_unmasked():
    tok = _tok()
    V = tok.vocab_size

    def uniform_model(xt, t):        # any callable model(xt, t) -> logits works
        return torch.zeros(*xt.shape, V)

    buf = io.StringIO()
    text = show_denoising(uniform_model, tok, seq_len=12, steps=8, prompt="to be", live=False, out=buf)
    frames = buf.getvalue().count("--- step")
    assert frames == 4                       # frames_when_not_live evenly spaced frames
    assert text.startswith("to be") and MASK_GLYPH not in text


@pytest.mark.parametrize("use_checkpoint", [False, True], ids=["train-in-place", "shipped-checkpoint"])
def test_demo_runs_in_quick_mode(capsys, use_checkpoint):
    if use_checkpoint and find_shipped_checkpoint() is None:
        pytest.skip("no checkpoint under checkpoints/")
    assert run_demo(quick=True, live=False, use_checkpoint=use_checkpoint) == 0
    out = capsys.readouterr().out
    assert "== 1. Tokenizer" in out and "== 2. Model" in out and "== 3. Sampling" in out
    final = out.split("Final sample:\n", 1)[1].split("\nNext:", 1)[0]
    assert final.startswith("ROMEO:") and MASK_GLYPH not in final
