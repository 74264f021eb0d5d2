"""Checkpoints (mdlm_course/checkpoint.py): exact round trips, clean keys, keep latest + best, and a
one-line CheckpointError for every broken checkpoint: truncated, altered, garbage, wrong version, missing."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from mdlm_course.checkpoint import (CheckpointError, check_resumable, find_checkpoint, list_checkpoints,
                                    load_checkpoint, load_pretrained, meta_sha256, prune, read_meta, rng_state,
                                    save_checkpoint, set_rng_state)
from mdlm_course.model import MDLM, ModelConfig, unwrap
from mdlm_course.tokenizer import BPETokenizer
from mdlm_course.train import TrainConfig, make_optimizer


def tiny(seed=0, **kw) -> MDLM:
    torch.manual_seed(seed)
    return MDLM(ModelConfig(vocab_size=258, seq_len=16, n_layer=1, n_head=2, d_model=32, **kw))


def one_step(model, opt):
    x = torch.randint(0, 257, (2, 16))
    model(x).float().logsumexp(-1).mean().backward()
    opt.step()
    opt.zero_grad()


@pytest.fixture
def tok():
    return BPETokenizer([(104, 101)])   # bytes + the merge "he" + [MASK]: vocab 258


@pytest.fixture
def saved(tmp_path, tok):
    """A run directory with one checkpoint (model, AdamW state after a step, EMA, tokenizer)."""
    model = tiny()
    opt = make_optimizer(model, TrainConfig(), torch.device("cpu"))
    one_step(model, opt)
    ema = tiny(seed=1)
    path = save_checkpoint(tmp_path / "run", model=model, step=7, train_config=TrainConfig().to_dict(),
                           tokenizer=tok, optimizer=opt, ema_model=ema, metrics={"val_nelbo": 3.0},
                           history={"step": [1], "loss": [5.0]})
    return path, model, opt, ema


def one_line_error(fn, *args, match: str, **kwargs) -> str:
    with pytest.raises(CheckpointError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and match in msg, msg
    return msg


# ---------------------------------------------------------------------------------------------- round trips


def test_round_trip_is_exact(saved, tok):
    path, model, opt, ema = saved
    assert path.name == "step-000007" and sorted(p.name for p in path.iterdir()) == [
        "meta.json", "model.safetensors", "state.safetensors", "tokenizer.json"]
    ck = load_checkpoint(path.parent)   # the run directory: its latest checkpoint
    assert ck.path == path and ck.step == 7 and ck.meta["history"]["loss"] == [5.0]
    for k, v in model.state_dict().items():
        assert torch.equal(ck.model_state[k], v), k
    for k, v in ema.state_dict().items():
        assert torch.equal(ck.ema_state()[k], v), k
    # optimizer: a fresh AdamW loaded from the checkpoint has the same moments and step count
    opt2 = make_optimizer(tiny(), TrainConfig(), torch.device("cpu"))
    opt2.load_state_dict(ck.optimizer_state())
    for p1, p2 in zip(opt.param_groups[0]["params"], opt2.param_groups[0]["params"]):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt.state[p1][key], opt2.state[p2][key]), key
    assert opt2.param_groups[1]["weight_decay"] == 0.0
    assert ck.tokenizer().merges == tok.merges


def test_load_pretrained_uses_ema_weights_and_eval_mode(saved, tok):
    path, model, _, ema = saved
    m, t, meta = load_pretrained(path.parent)
    assert not m.training and t.vocab_size == tok.vocab_size and meta["step"] == 7
    assert torch.equal(m.head.weight, ema.head.weight)                           # EMA by default
    m_raw, _, _ = load_pretrained(path, ema=False)
    assert torch.equal(m_raw.head.weight, model.head.weight)
    x = torch.randint(0, 257, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(m_raw(x), model.eval()(x), rtol=0, atol=0)  # same weights, same logits


def test_keys_never_carry_compile_or_ddp_prefixes(tmp_path):
    model = tiny()
    compiled = torch.compile(model, backend="eager")   # an OptimizedModule whose state_dict keys start _orig_mod.
    assert any(k.startswith("_orig_mod.") for k in compiled.state_dict())
    assert unwrap(compiled) is model
    path = save_checkpoint(tmp_path, model=compiled, step=1)
    keys = set(load_checkpoint(path).model_state)
    assert keys == set(model.state_dict()) and not any("_orig_mod" in k or k.startswith("module.") for k in keys)


def test_tied_embeddings_round_trip(tmp_path):
    model = tiny(tie_embeddings=True)
    path = save_checkpoint(tmp_path, model=model, step=1)
    m, _, _ = load_pretrained(tmp_path)
    assert m.head.weight is m.tok_emb.weight and torch.equal(m.head.weight, model.head.weight)
    stored = load_checkpoint(path).model_state
    assert "tok_emb.weight" in stored and "head.weight" not in stored   # the tied matrix is stored once


def test_rng_states_round_trip():
    tensors, states = rng_state()
    states = json.loads(json.dumps(states))   # as written to meta.json
    first = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(5), np.random.rand(7), random.random()
    set_rng_state(tensors, states)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


# ---------------------------------------------------------------------------------------------- which ones are kept


def test_keeps_the_latest_and_the_best(tmp_path):
    model = tiny()
    for step, val in [(1, 3.0), (2, 1.0), (3, 2.0), (4, 4.0)]:
        save_checkpoint(tmp_path, model=model, step=step, metrics={"val_nelbo": val})
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000002", "step-000004"]
    assert find_checkpoint(tmp_path, "best").name == "step-000002"
    assert find_checkpoint(tmp_path, "latest").name == "step-000004"


def test_leftovers_of_a_killed_write_are_ignored_and_cleaned(tmp_path):
    model = tiny()
    save_checkpoint(tmp_path, model=model, step=1)
    half = tmp_path / ".tmp-step-000002-12345"   # what a process killed mid-write leaves behind
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"\x00" * 10)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000001"]
    assert load_checkpoint(tmp_path).step == 1
    prune(tmp_path)
    assert not half.exists()


# ---------------------------------------------------------------------------------------------- broken ones


def test_truncated_weights(saved):
    path = saved[0]
    f = path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    one_line_error(load_checkpoint, path, match="truncated")
    one_line_error(load_pretrained, path.parent, match="truncated")


def test_altered_bytes_fail_the_checksum(saved):
    path = saved[0]
    f = path / "state.safetensors"
    raw = bytearray(f.read_bytes())
    raw[-1] ^= 0xFF   # same size, one byte different
    f.write_bytes(bytes(raw))
    one_line_error(load_checkpoint, path, match="sha256")


def test_truncated_or_garbage_meta(saved):
    path = saved[0]
    meta = path / "meta.json"
    text = meta.read_text()
    meta.write_text(text[: len(text) // 2])
    one_line_error(load_checkpoint, path, match="corrupt or truncated")
    meta.write_text(json.dumps({"hello": 1}))
    one_line_error(load_checkpoint, path, match="not an mdlm_course checkpoint")


def test_wrong_version_and_missing_file(saved):
    path = saved[0]
    doc = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps({**doc, "version": 99}))
    one_line_error(read_meta, path, match="format version 99")
    (path / "meta.json").write_text(json.dumps(doc))
    (path / "tokenizer.json").unlink()
    one_line_error(read_meta, path, match="missing")


def test_not_a_checkpoint(tmp_path):
    one_line_error(load_pretrained, tmp_path / "nothing", match="no such checkpoint")
    one_line_error(load_pretrained, tmp_path, match="no checkpoint in this directory")


def test_weights_that_do_not_fit_the_config(saved):
    path = saved[0]
    doc = json.loads((path / "meta.json").read_text())
    doc["model_config"]["d_model"] = 64   # the config now disagrees with the saved tensors
    doc.pop("meta_sha256")                # as written before meta.json was hashed (else: "altered")
    (path / "meta.json").write_text(json.dumps(doc))
    one_line_error(load_pretrained, path, match="do not fit this model")


def test_refuses_to_save_nan_weights(tmp_path):
    model = tiny()
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="head.weight"):
        save_checkpoint(tmp_path, model=model, step=3)
    assert list_checkpoints(tmp_path) == [] and not any(tmp_path.iterdir())


def test_a_checkpoint_saved_before_a_model_field_existed_still_resumes(tmp_path):
    """meta.json written before ModelConfig.output_shift existed has no such key: resuming must read the
    field's default (False), not refuse the run as a different model."""
    model = MDLM(ModelConfig.preset("tiny", vocab_size=257))
    path = save_checkpoint(tmp_path / "run", model=model, step=3, train_config=TrainConfig().to_dict())
    meta = json.loads((path / "meta.json").read_text())
    del meta["model_config"]["output_shift"]
    meta["meta_sha256"] = meta_sha256(meta)
    (path / "meta.json").write_text(json.dumps(meta))
    check_resumable(load_checkpoint(path), model, TrainConfig(), None)          # no error
    shifted = MDLM(ModelConfig.preset("tiny", vocab_size=257, output_shift=True))
    with pytest.raises(CheckpointError, match="output_shift"):
        check_resumable(load_checkpoint(path), shifted, TrainConfig(), None)
