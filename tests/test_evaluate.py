"""Evaluation and the AR twin (evaluate.py, ar.py): figures checked against slow, obvious references.

- next_token_nll equals a loop over positions; the AR twin trains and its loss falls;
- its bits per byte count only the L - 1 scored tokens; the MDLM's all L;
- likelihood_report's passes average independent evaluations; its prior term is diffusion.prior_term;
- sample-quality figures on hand-made samples; `eval` prints each figure for either objective;
- init_from starts an MDLM from an AR twin's weights; load_pretrained() loads the shipped checkpoint.
"""
from __future__ import annotations

import math

import pytest
import torch

from mdlm_course.ar import ar_loss, ar_sample, next_token_nll
from mdlm_course.checkpoint import init_weights, load_checkpoint, load_pretrained, save_checkpoint
from mdlm_course.cli import main
from mdlm_course.data import DEFAULT_CORPUS, TokenData
from mdlm_course.evaluate import (bits_per_byte, copied_spans, evaluate, likelihood_report, make_val_set,
                                  paired_difference, ratio_linearised, repeated_4gram_fraction, sample_quality,
                                  unigram_entropy, words)
from mdlm_course.model import MDLM, ModelConfig
from mdlm_course.tokenizer import BPETokenizer
from mdlm_course.train import TrainConfig, train

TEXT = DEFAULT_CORPUS.read_text(encoding="utf-8")[:40_000]


def tiny(causal: bool, seed: int = 0) -> MDLM:
    torch.manual_seed(seed)
    return MDLM(ModelConfig(vocab_size=257, seq_len=32, n_layer=1, n_head=2, d_model=32, causal=causal))


def cfg(**kw) -> TrainConfig:
    base = dict(batch_size=8, max_steps=30, lr=3e-3, min_lr=3e-4, warmup_steps=3, eval_interval=15, eval_windows=8,
                log_interval=5, ckpt_interval=30, device="cpu")
    return TrainConfig(**{**base, **kw})


def test_next_token_nll_is_the_loop_over_positions():
    model, x = tiny(causal=True), torch.randint(0, 256, (3, 20))
    logits = model(x, None)
    by_hand = torch.stack([-logits[:, i].log_softmax(-1).gather(-1, x[:, i + 1:i + 2])[:, 0]
                           for i in range(19)], dim=1)                                   # (3, 19)
    torch.testing.assert_close(next_token_nll(logits, x), by_hand)
    assert ar_loss(model, x).item() == pytest.approx(by_hand.mean().item(), rel=1e-6)


def test_ar_twin_trains_and_its_validation_nll_falls(data, byte_tok):
    start = evaluate(tiny(True), make_val_set(data.val_ids, 32, 8, 256, tokenizer=byte_tok, objective="ar"), 256)
    r = train(tiny(True), cfg(objective="ar"), data, tokenizer=byte_tok, progress=False)
    assert r.history["val_step"] == [15, 30] and "val_nelbo" not in r.history
    assert r.history["val_nll"][-1] < start["val_nll"] - 1.0       # from ~ln 257 = 5.55 towards letter statistics
    assert r.val["val_bpb"] == pytest.approx(r.val["val_nll"] / math.log(2), rel=1e-9)   # 1 byte per token


def test_objective_and_model_must_agree(data, byte_tok):
    with pytest.raises(ValueError, match="causal=True"):
        train(tiny(False), cfg(objective="ar"), data, tokenizer=byte_tok, progress=False)
    with pytest.raises(ValueError, match="causal=False"):
        train(tiny(True), cfg(), data, tokenizer=byte_tok, progress=False)


def test_ar_bits_per_byte_count_the_scored_tokens_only(data, byte_tok):
    ar = make_val_set(data.val_ids, 32, 8, 256, tokenizer=byte_tok, objective="ar")
    mdlm = make_val_set(data.val_ids, 32, 8, 256, tokenizer=byte_tok)
    assert ar.n_bytes == 8 * 31 and mdlm.n_bytes == 8 * 32         # byte-level: 1 byte per token


def test_likelihood_report_averages_passes_and_reports_the_prior_term(data, byte_tok):
    model = tiny(False)
    rep = likelihood_report(model, data.val_ids, tokenizer=byte_tok, windows=4, t_per_window=2, passes=3)
    runs = [evaluate(model, make_val_set(data.val_ids, 32, 4, 256, None, byte_tok, 2, "mdlm", p, 3), 256)
            for p in range(3)]
    assert rep["val_nelbo"] == pytest.approx(sum(r["val_nelbo"] for r in runs) / 3, rel=1e-9)
    assert rep["stderr_passes"] == pytest.approx(float(torch.tensor([r["val_nelbo"] for r in runs]).std() / math.sqrt(3)))
    assert rep["val_bpb"] == pytest.approx(sum(r["val_bpb"] for r in runs) / 3, rel=1e-9)
    assert rep["ppl"] == pytest.approx(math.exp(rep["val_nelbo"]))
    # an untrained model predicts ~uniformly: the prior term is ~ eps ln(V - 1)
    assert rep["prior"] == pytest.approx(1e-3 * math.log(256), rel=0.05)
    one = make_val_set(data.val_ids, 32, 4, 256, None, byte_tok, 2, "mdlm", 0, 1)
    assert torch.allclose(one.t, (torch.arange(8) + 0.5) / 8)     # one pass: the training loop's grid


def test_likelihood_report_is_the_same_for_a_model_left_in_training_mode(data, byte_tok):
    """Dropout must be off for every figure of the report (the AR windows and the prior term included), and the
    model comes back in the mode it was given in."""
    for causal in (False, True):
        torch.manual_seed(0)
        model = MDLM(ModelConfig(vocab_size=257, seq_len=32, n_layer=1, n_head=2, d_model=32, causal=causal,
                                 dropout=0.5))
        kw = dict(tokenizer=byte_tok, objective="ar" if causal else "mdlm", windows=4, t_per_window=2, passes=2)
        reference = likelihood_report(model.eval(), data.val_ids, **kw)
        model.train()
        report = likelihood_report(model, data.val_ids, **kw)
        assert model.training
        for key in ("val_bpb", "stderr_bpb", "prior"):
            assert report.get(key) == reference.get(key), (causal, key)
        assert torch.equal(report["window_nats"], reference["window_nats"])


def test_ratio_standard_error_matches_the_spread_over_redrawn_windows():
    """The delta-method error of a ratio of sums, std(z) / sqrt(n), against the brute force: draw the n windows
    again and again from a population and measure the spread of the ratio itself."""
    g = torch.Generator().manual_seed(0)
    pop_bytes = 900 + 300 * torch.rand(5000, generator=g, dtype=torch.float64)            # bytes per window
    pop_nats = pop_bytes * (1.4 + 0.3 * torch.randn(5000, generator=g, dtype=torch.float64))
    n = 64
    draws = [torch.randint(0, 5000, (n,), generator=g) for _ in range(4000)]
    spread = torch.tensor([ratio_linearised(pop_nats[i], pop_bytes[i])[0] for i in draws]).std()
    predicted = torch.tensor([ratio_linearised(pop_nats[i], pop_bytes[i])[1].std() / math.sqrt(n)
                              for i in draws[:200]]).mean()
    assert float(predicted) == pytest.approx(float(spread), rel=0.08)
    bpb, z = bits_per_byte(pop_nats[:10], pop_bytes[:10])
    assert bpb == pytest.approx(float(pop_nats[:10].sum() / pop_bytes[:10].sum()) / math.log(2))
    assert float(z.sum()) == pytest.approx(0.0, abs=1e-9)


def test_paired_difference_removes_the_shared_difficulty_of_the_windows():
    """Two models that find the same windows hard: each figure's own error is large, the paired error of the
    difference is small, and it matches the spread of the difference over redrawn windows."""
    g = torch.Generator().manual_seed(1)
    N, n = 5000, 64
    n_bytes = 900 + 300 * torch.rand(N, generator=g, dtype=torch.float64)
    hard = 1.5 + 0.4 * torch.randn(N, generator=g, dtype=torch.float64)                 # shared difficulty
    a = n_bytes * (hard + 0.05 + 0.02 * torch.randn(N, generator=g, dtype=torch.float64))
    b = n_bytes * (hard + 0.02 * torch.randn(N, generator=g, dtype=torch.float64))

    def report(nats, i):
        return {"window_nats": nats[i], "window_bytes": n_bytes[i], "windows": n, "seq_len": 32}
    draws = [torch.randint(0, N, (n,), generator=g) for _ in range(3000)]
    pairs = [paired_difference(report(a, i), report(b, i)) for i in draws]
    spread = torch.tensor([p["diff"] for p in pairs]).std()
    assert float(torch.tensor([p["diff_se"] for p in pairs]).mean()) == pytest.approx(float(spread), rel=0.08)
    ratio_spread = torch.tensor([p["ratio"] for p in pairs]).std()
    assert float(torch.tensor([p["ratio_se"] for p in pairs]).mean()) == pytest.approx(float(ratio_spread), rel=0.08)
    own = ratio_linearised(a[draws[0]], n_bytes[draws[0]])[1].std() / math.sqrt(n) / math.log(2)
    assert pairs[0]["diff_se"] < own / 5                                                # pairing pays
    with pytest.raises(ValueError, match="same windows"):
        paired_difference(report(a, draws[0]), report(b, draws[0][:10]))


def test_copied_spans_against_a_slow_reference():
    g = torch.Generator().manual_seed(2)
    train = torch.randint(0, 5, (400,), generator=g)
    samples = torch.randint(0, 5, (6, 40), generator=g)
    samples[0, 10:30] = train[100:120]                                                  # a copied stretch
    spans = {tuple(train[i:i + 8].tolist()) for i in range(len(train) - 7)}
    slow = [sum(tuple(row[i:i + 8].tolist()) in spans for i in range(33)) / 33 for row in samples]
    assert copied_spans(samples, train).tolist() == pytest.approx(slow)
    assert slow[0] >= 13 / 33


def test_sample_quality_errors_and_real_text_under_the_judge(byte_tok):
    samples = torch.tensor([list(b"the king is dead"), list(b"thx kxng zz dead"), list(b"the the the king")])
    q = sample_quality(samples, byte_tok, train_words={"the", "king", "is", "dead"}, reference=samples[:2],
                       ar_model=tiny(True), train_ids=torch.tensor(list(b"the king is dead, long live the king")))
    per_sample = torch.tensor([1.0, 0.25, 1.0])                                         # real words per sample
    assert q["real_word_rate"] == pytest.approx(9 / 12)
    assert q["unigram_entropy_se"] == pytest.approx(
        float(torch.tensor([unigram_entropy(x) for x in samples]).std() / math.sqrt(3)))
    assert q["real_word_rate_se"] > 0 and per_sample.std() > 0
    assert q["copied_8grams"] == pytest.approx((1.0 + 0.0 + 3 / 9) / 3)    # all of the first; "e the ki" ... of the third
    assert q["gen_ppl"] > 1 and q["data_gen_ppl"] > 1 and q["gen_ppl_se"] > 0


def test_sample_quality_figures_on_hand_made_samples(byte_tok):
    assert words("O, Romeo! 'Tis o'er -- 3rd") == ["o", "romeo", "tis", "o'er", "3rd"]
    assert unigram_entropy(torch.tensor([1, 1, 2, 2])) == pytest.approx(math.log(2))
    assert repeated_4gram_fraction(torch.tensor([1, 2, 3, 4, 1, 2, 3, 4])) == pytest.approx(1 - 4 / 5)
    samples = torch.tensor([list(b"the king is dead"), list(b"thx kxng zz dead")])
    q = sample_quality(samples, byte_tok, train_words={"the", "king", "is", "dead"})
    assert q["real_word_rate"] == pytest.approx(5 / 8)
    assert q["repeated_4grams"] == 0.0 and q["samples"] == 2


def test_ar_sample_continues_a_prompt_and_never_draws_mask():
    model = tiny(True)
    out = ar_sample(model, num_samples=3, seq_len=12, prompt=torch.tensor([5, 6]), mask_id=256,
                    generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 12) and (out[:, :2] == torch.tensor([5, 6])).all() and not (out == 256).any()
    rows = ar_sample(model, num_samples=2, seq_len=6, prompt=torch.tensor([[1], [2]]), mask_id=256)
    assert rows[:, 0].tolist() == [1, 2]


def test_init_from_an_ar_twin(tmp_path, byte_tok):
    ar = tiny(True, seed=1)
    save_checkpoint(tmp_path / "ar", model=ar, step=5, tokenizer=byte_tok, metrics={"val_nll": 3.0})
    mdlm = tiny(False, seed=2)
    init_weights(mdlm, tmp_path / "ar", byte_tok)
    for (k, a), b in zip(ar.state_dict().items(), mdlm.state_dict().values()):
        assert torch.equal(a, b), k
    x = torch.randint(0, 256, (1, 10))
    assert not torch.allclose(ar(x), mdlm(x))                      # same weights, but now it looks both ways


def _text_file(tmp_path):
    path = tmp_path / "plays.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def _train_cli(tmp_path, out, *extra):
    return main(["train", "--preset", "tiny", "--steps", "4", "--data", str(_text_file(tmp_path)), "--out", str(out),
                 "--cache-dir", str(tmp_path / "cache"), "--vocab-size", "300", *extra])


@pytest.mark.slow
def test_eval_prints_each_figure_for_either_objective(tmp_path, capsys):
    assert _train_cli(tmp_path, tmp_path / "ar", "--objective", "ar") == 0
    assert _train_cli(tmp_path, tmp_path / "mdlm", "--init-from", str(tmp_path / "ar")) == 0
    capsys.readouterr()
    common = ["--data", str(_text_file(tmp_path)), "--windows", "4", "--samples", "2", "--steps", "8"]
    assert main(["eval", "--checkpoint", str(tmp_path / "mdlm"), "--passes", "2", "--judge", str(tmp_path / "ar"),
                 *common]) == 0
    out = capsys.readouterr().out
    for needle in ("MDLM at step 4", "val NELBO", "nats/token", "bits/byte", "exp(NELBO)", "perplexity bound", "prior term",
                   "unigram entropy", "real words", "repeated 4-grams", "generative perplexity", "copied",
                   "real text under the same judge", "standard error over the 4 windows"):
        assert needle in out, (needle, out)
    assert main(["eval", "--checkpoint", str(tmp_path / "mdlm"), "--compare", str(tmp_path / "ar"), *common[:4]]) == 0
    out = capsys.readouterr().out
    assert "on the same windows" in out and "difference:" in out and "paired over the 4 windows" in out
    assert main(["eval", "--checkpoint", str(tmp_path / "ar"), "--judge", str(tmp_path / "mdlm"), *common]) == 2
    assert "not an AR model" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "ar"), *common]) == 0
    out = capsys.readouterr().out
    assert "AR at step 4" in out and "val NLL" in out and "NELBO" not in out and "bits/byte" in out
    meta = load_checkpoint(tmp_path / "mdlm").meta
    assert meta["train_config"]["init_from"] == str(tmp_path / "ar") and meta["model_config"]["causal"] is False
    assert main(["eval", "--checkpoint", str(tmp_path / "mdlm"), "--passes", "1", *common[:4]]) == 0
    out = capsys.readouterr().out
    assert ", 1 pass\n" in out and "over 1 passes: n/a" in out and "nan" not in out and " ± " in out
    assert main(["eval", "--checkpoint", str(tmp_path / "mdlm"), "--passes", "1", "--steps", "1", "--block-length", "1",
                 *common[:6]]) == 0
    assert "2 samples (ancestral, 1 steps per block of 1)" in capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(tmp_path / "mdlm"), "--block-length", "0", *common]) == 2
    err = capsys.readouterr().err.strip()
    assert "block_length" in err and "\n" not in err


@pytest.mark.slow
def test_eval_scores_the_text_the_checkpoint_was_trained_on(tmp_path, capsys):
    """Without --data, eval reads the training file from meta.json (not Shakespeare), and names it."""
    assert _train_cli(tmp_path, tmp_path / "mdlm") == 0
    data = load_checkpoint(tmp_path / "mdlm").meta["data"]
    assert data["path"] == str((tmp_path / "plays.txt").resolve()) and len(data["sha256"]) == 64
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path / "mdlm"), "--windows", "2", "--passes", "1"]) == 0
    out = capsys.readouterr().out
    assert f"tokens of {tmp_path / 'plays.txt'}" in out.replace(str(tmp_path.resolve()), str(tmp_path))
    other = tmp_path / "other.txt"
    other.write_text(TEXT.upper(), encoding="utf-8")
    assert main(["eval", "--checkpoint", str(tmp_path / "mdlm"), "--windows", "2", "--passes", "1",
                 "--data", str(other)]) == 0
    assert "is not the text this checkpoint was trained on" in capsys.readouterr().out
    (tmp_path / "plays.txt").unlink()
    assert main(["eval", "--checkpoint", str(tmp_path / "mdlm"), "--windows", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "plays.txt" in err and "--data" in err and "\n" not in err


@pytest.mark.slow
def test_eval_and_resume_bad_input(tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "nowhere" in err and "\n" not in err
    assert _train_cli(tmp_path, tmp_path / "run") == 0
    capsys.readouterr()
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert _train_cli(tmp_path, tmp_path / "run", "--resume", "--objective", "ar", "--steps", "8") == 2
    err = capsys.readouterr().err.strip()
    assert "causal" in err and "\n" not in err
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before


def test_load_pretrained_without_arguments_loads_the_shipped_checkpoint():
    model, tok, meta = load_pretrained()
    assert isinstance(model, MDLM) and not model.training and tok is not None
    assert tok.vocab_size == model.config.vocab_size and meta["step"] > 0


@pytest.mark.slow
def test_a_small_text_gets_a_small_vocabulary_and_notes_before_the_first_step(tmp_path, capsys):
    """Own text under SMALL_TEXT characters: a SMALL_TEXT_VOCAB tokenizer, not the preset's 4096; and a run
    shorter than its warm-up, or with fewer validation windows than eval_windows, says so before step 1."""
    from mdlm_course.data import DEFAULT_CORPUS, load_text
    from mdlm_course.pipeline import SMALL_TEXT, SMALL_TEXT_VOCAB, train_on_text
    path = tmp_path / "book.txt"
    path.write_text(load_text(DEFAULT_CORPUS)[:200_000], encoding="utf-8")
    assert 200_000 < SMALL_TEXT
    result = train_on_text(path, preset="cpu", out=tmp_path / "run", cache_dir=tmp_path / "cache",
                           train_overrides={"max_steps": 2, "batch_size": 2, "eval_interval": 2})
    assert result.model.config.vocab_size == SMALL_TEXT_VOCAB
    out = capsys.readouterr().out
    assert "note: 2 steps are fewer than the 100 warm-up steps" in out
    assert "note: the validation split holds" in out and "fewer than eval_windows=64" in out
