"""bench/data_constrained.py (issue 28, chapter 8): the paired standard error, the epoch bookkeeping, the
per-window scores against evaluate(), and a miniature run of the whole experiment."""
import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mdlm_course.config import ModelConfig
from mdlm_course.errors import MdlmError
from mdlm_course.evaluate import evaluate, make_val_set
from mdlm_course.model import MDLM

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import data_constrained as dc  # noqa: E402


def _windows(n: int, seed: int = 0):
    """Synthetic per-window figures of two models on the same n windows: bytes b_w, and nats that share a
    per-window difficulty (so the two models' errors are strongly correlated, as on real text)."""
    g = torch.Generator().manual_seed(seed)
    b = 100 + 100 * torch.rand(n, generator=g, dtype=torch.float64)                     # (n,) bytes
    hard = 1 + 0.3 * torch.randn(n, generator=g, dtype=torch.float64)                    # (n,) shared difficulty
    nats_a = math.log(2) * b * 2.0 * hard * (1 + 0.02 * torch.randn(n, generator=g, dtype=torch.float64))
    nats_m = math.log(2) * b * 2.2 * hard * (1 + 0.02 * torch.randn(n, generator=g, dtype=torch.float64))
    return nats_m, b, nats_a, b.clone()


def _jackknife_se(nats_m, b_m, nats_a, b_a) -> float:
    """The leave-one-window-out jackknife standard error of bpb(m) - bpb(a): a slow, assumption-free reference."""
    ln2, n = math.log(2), len(nats_m)
    d = [(nats_m.sum() - nats_m[i]) / ln2 / (b_m.sum() - b_m[i])
         - (nats_a.sum() - nats_a[i]) / ln2 / (b_a.sum() - b_a[i]) for i in range(n)]
    d = torch.stack(d)
    return float(((n - 1) / n * ((d - d.mean()) ** 2).sum()).sqrt())


def test_paired_difference_matches_the_jackknife():
    nats_m, b_m, nats_a, b_a = _windows(400)
    diff, se = dc.paired_difference(nats_m, b_m, nats_a, b_a)
    direct = float(nats_m.sum() / math.log(2) / b_m.sum() - nats_a.sum() / math.log(2) / b_a.sum())
    assert diff == pytest.approx(direct, rel=1e-12)
    assert se == pytest.approx(_jackknife_se(nats_m, b_m, nats_a, b_a), rel=0.03)
    # the pairing matters: the unpaired error (the two models' errors added) is several times larger
    unpaired = math.hypot(dc.paired_difference(nats_m, b_m, nats_m * 0 + nats_m.mean(), b_m)[1],
                          dc.paired_difference(nats_a, b_a, nats_a * 0 + nats_a.mean(), b_a)[1])
    assert unpaired > 3 * se


def test_paired_difference_matches_a_simulation():
    """Draw many validation sets of n windows from one population: the spread of D over the draws is the
    true standard error; the delta method's estimate from a single draw must agree with it on average."""
    nats_m, b_m, nats_a, b_a = _windows(20_000, seed=1)
    g = torch.Generator().manual_seed(2)
    n, diffs, ses = 200, [], []
    for _ in range(1000):
        i = torch.randint(0, len(b_m), (n,), generator=g)
        d, se = dc.paired_difference(nats_m[i], b_m[i], nats_a[i], b_a[i])
        diffs.append(d)
        ses.append(se)
    true_se = float(torch.tensor(diffs).std())
    assert sum(ses) / len(ses) == pytest.approx(true_se, rel=0.08)


def test_paired_difference_of_a_model_with_itself_is_zero_and_bad_shapes_are_refused():
    nats, b, _, _ = _windows(50)
    assert dc.paired_difference(nats, b, nats, b) == (0.0, 0.0)
    with pytest.raises(MdlmError, match="one entry per window"):
        dc.paired_difference(nats, b, nats[:-1], b[:-1])


def test_bits_per_byte_and_the_epoch_bookkeeping():
    assert dc.bits_per_byte(torch.tensor([math.log(2)]), torch.tensor([1.0])) == pytest.approx(1.0)
    assert dc.eval_steps([4, 8], 100_000, 1024) == [391, 781]
    assert dc.epochs_at(391, 100_000, 1024) == pytest.approx(4.00384)
    for e, s in zip(range(1, 101), dc.eval_steps(list(range(1, 101)), 105_158, 1024)):
        assert abs(dc.epochs_at(s, 105_158, 1024) - e) <= 0.5 * 1024 / 105_158   # within half a step
    assert dc.eval_steps([0], 10, 1024) == [1]                                       # never step 0
    with pytest.raises(MdlmError):
        dc.eval_steps([1], 0, 1024)


@pytest.mark.parametrize("objective", ["ar", "mdlm"])
def test_window_nats_add_up_to_evaluate(objective, data, byte_tok):
    """sum_w n_w / (ln 2 sum_w b_w) is evaluate()'s bits per byte, on the same rows, times and masks."""
    torch.manual_seed(0)
    model = MDLM(ModelConfig(vocab_size=byte_tok.vocab_size, seq_len=32, n_layer=1, n_head=2, d_model=32,
                             causal=objective == "ar"))
    val = make_val_set(data.val_ids, 32, 12, byte_tok.mask_id, "loglinear", byte_tok, 3, objective)
    nats = dc.window_nats(model, val, byte_tok.mask_id, batch_size=5)                     # odd batches on purpose
    n_bytes = dc.window_bytes(val, byte_tok)
    assert nats.shape == n_bytes.shape == (12,)
    assert dc.bits_per_byte(nats, n_bytes) == pytest.approx(evaluate(model, val, byte_tok.mask_id)["val_bpb"], rel=1e-5)
    if objective == "ar":                                                                # AR: bytes of tokens 1..L-1
        assert n_bytes.tolist() == [31.0] * 12
    else:
        assert n_bytes.tolist() == [32.0] * 12


def _fake_results(diffs_by_epoch):
    """A results dict of an AR twin and an MDLM (one seed, two windows of one byte each) whose difference
    in bits/byte follows diffs_by_epoch, one entry per epoch 2, 4, ..."""
    epochs = list(range(2, 2 * len(diffs_by_epoch) + 1, 2))
    ln2 = math.log(2)
    ar = [[ln2 * 2.0, ln2 * 2.0] for _ in epochs]                                         # 2 windows, 1 byte each
    md = [[ln2 * (2.0 + d), ln2 * (2.0 + d)] for d in diffs_by_epoch]
    loss = [1.0] * len(epochs)
    return {"epochs": epochs, "window_bytes": {"ar": [1.0, 1.0], "mdlm": [1.0, 1.0]},
            "runs": {"ar": {"0": {"window_nats": ar, "train_loss": loss}},
                     "mdlm": {"0": {"window_nats": md, "train_loss": loss}}}}


def test_crossover_is_where_the_difference_turns_negative_for_good():
    assert dc.crossover(_fake_results([0.3, -0.1, 0.05, -0.02, -0.2]), "mdlm") == 8
    assert dc.crossover(_fake_results([0.3, 0.2, 0.1]), "mdlm") is None
    rows = dc.paired_table(_fake_results([0.3, -0.1]), "mdlm")
    assert [r["epoch"] for r in rows] == [2, 4]
    assert [round(r["diff"], 12) for r in rows] == [0.3, -0.1]
    best = dc.best_epochs(_fake_results([0.3, -0.1, 0.05]))
    assert best["ar"][1] == pytest.approx(2.0) and best["mdlm"][:2] == (4, pytest.approx(1.9))
    against = dc.paired(_fake_results([0.3, -0.1, 0.05]), "mdlm", 6, "ar", 2)            # two different epochs
    assert against["diff"] == pytest.approx(0.05) and (against["epoch"], against["ref_epoch"]) == (6, 2)
    lines = []
    dc.summary(_fake_results([0.3, -0.1, 0.05, -0.02, -0.2]), say=lines.append)
    assert "  the curves cross: from epoch 8 on" in lines
    assert any(line.startswith("      2  +0.300") for line in lines)


def test_crossover_beyond_the_noise():
    """Per-window differences spread as (-e, 0, e) with e = sqrt(3) 0.05: a paired SE of exactly 0.05."""
    ln2, e = math.log(2), math.sqrt(3) * 0.05
    res = _fake_results([0.0, 0.0, 0.0])
    for k, d in enumerate([-0.05, -0.2, -0.15]):
        res["window_bytes"] = {"ar": [1.0] * 3, "mdlm": [1.0] * 3}
        res["runs"]["ar"]["0"]["window_nats"][k] = [ln2 * 2.0] * 3
        res["runs"]["mdlm"]["0"]["window_nats"][k] = [ln2 * (2.0 + d + u) for u in (-e, 0.0, e)]
    assert [round(r["se_windows"], 12) for r in dc.paired_table(res, "mdlm")] == [0.05] * 3
    assert dc.crossover(res, "mdlm") == 2 and dc.crossover(res, "mdlm", n_se=2) == 4
    assert dc.crossover(res, "mdlm", n_se=4) is None


def test_an_unfinished_run_is_summarised_with_a_note():
    """The results file is saved after every model: a run still going has models without seeds yet."""
    res = {**_fake_results([0.3, -0.1]), "complete": False}
    res["runs"]["mdlm"] = {}
    lines = []
    dc.summary(res, say=lines.append)
    assert lines[0].startswith("NOTE: an unfinished run: AR twin seeds [0], MDLM from scratch seeds []")
    assert sum("best at epoch" in line for line in lines) == 1 and list(dc.curves(res)) == ["ar"]


def test_a_miniature_run_gives_curves_of_the_right_shape(tmp_path):
    setup = replace(dc.QUICK, train_chars=6_000, epochs=4, eval_every=2, warm_epochs=2, seeds=(0, 1), val_windows=6)
    res = dc.run_experiment(setup, work_dir=tmp_path, say=lambda *_: None)
    assert res["epochs"] == [2, 4] and len(res["steps"]) == 2 and res["steps"][0] < res["steps"][1]
    assert len(res["window_bytes"]["ar"]) == len(res["window_bytes"]["mdlm"]) == 6
    for name in dc.MODELS:
        assert sorted(res["runs"][name]) == ["0", "1"]
        for run in res["runs"][name].values():
            expected = 1 if name == "mdlm_warm" else 2                       # warm: only after its AR stage
            assert len(run["window_nats"]) == len(run["train_loss"]) == expected
            assert all(len(c) == 6 and all(math.isfinite(x) and x > 0 for x in c) for c in run["window_nats"])
    assert res["runs"]["mdlm_warm"]["0"]["epochs"] == [4] and res["runs"]["mdlm_warm"]["0"]["ar_stage_bpb"] > 0
    c = dc.curves(res)
    assert c["ar"]["bpb"].shape == (2, 2) and c["mdlm_warm"]["bpb"].shape == (2, 1)
    assert [r["epoch"] for r in dc.paired_table(res, "mdlm_warm")] == [4]
    lines = []
    dc.summary(res, say=lines.append)
    assert sum("best at epoch" in line for line in lines) == 3
    assert sum("the curves cross" in line for line in lines) == 2
    assert sum("AR stage alone (2 epochs" in line for line in lines) == 1
    assert list(tmp_path.iterdir()) == []                                                 # the checkpoints are gone


def test_bad_sizes_are_refused_before_any_training():
    with pytest.raises(MdlmError, match="warm_epochs"):
        dc.run_experiment(replace(dc.QUICK, warm_epochs=3), say=lambda *_: None)
    with pytest.raises(MdlmError, match="train_chars"):
        dc.prepare(replace(dc.QUICK, train_chars=0))
