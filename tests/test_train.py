"""Training (mdlm_course/train.py): the schedule, the optimizer groups, the batches, deterministic
validation and bits per byte, FLOPs, resume = uninterrupted, NaN stops, fp16 + GradScaler on CPU, EMA.

Everything runs on the CPU with a one-layer model of width 32 on 32-token windows, and a byte-level
tokenizer (BPETokenizer with no merges: 256 bytes + [MASK]), so the file takes seconds.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from mdlm_course.checkpoint import CheckpointError, list_checkpoints, load_checkpoint
from mdlm_course.data import DEFAULT_CORPUS, TokenData
from mdlm_course.diffusion import masked_nll, nelbo, nelbo_terms
from mdlm_course.model import MDLM, ModelConfig
from mdlm_course.tokenizer import BPETokenizer
from mdlm_course.device import peak_flops
from mdlm_course.evaluate import VAL_SEED, evaluate, make_val_set
from mdlm_course.model import flops_per_token
from mdlm_course.train import TrainConfig, TrainingDiverged, get_batch, lr_at, param_groups, train

TEXT = DEFAULT_CORPUS.read_text(encoding="utf-8")[:40_000]


def tiny_model(vocab_size=257, seed=0, **kw) -> MDLM:
    torch.manual_seed(seed)
    return MDLM(ModelConfig(vocab_size=vocab_size, seq_len=32, n_layer=1, n_head=2, d_model=32, **kw))


def tiny_cfg(**kw) -> TrainConfig:
    base = dict(batch_size=4, max_steps=20, lr=3e-3, min_lr=3e-4, warmup_steps=4, eval_interval=10,
                eval_windows=8, log_interval=1, ckpt_interval=10, device="cpu")
    return TrainConfig(**{**base, **kw})


def params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------- config


def test_presets_and_validation():
    assert TrainConfig.preset("cpu", max_steps=7).max_steps == 7
    with pytest.raises(ValueError, match="unknown train preset"):
        TrainConfig.preset("huge")
    with pytest.raises(ValueError, match="unknown TrainConfig field"):
        TrainConfig.preset("cpu", learning_rate=1.0)
    with pytest.raises(ValueError, match="dtype"):
        TrainConfig(dtype="fp8")
    with pytest.raises(ValueError, match="min_lr"):
        TrainConfig(lr=1e-3, min_lr=1e-2)


# ---------------------------------------------------------------------------------------------- LR


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=110)
    lrs = [lr_at(s, cfg) for s in range(111)]
    # warm-up: linear from lr/warmup, peak reached at the last warm-up step
    np.testing.assert_allclose(lrs[:10], [1e-3 * (s + 1) / 10 for s in range(10)], rtol=1e-12)
    assert lrs[9] == pytest.approx(1e-3) and lrs[10] == pytest.approx(1e-3)
    # cosine: half-way down at the middle of the decay, min_lr at max_steps, monotone in between
    assert lrs[60] == pytest.approx((1e-3 + 1e-4) / 2, rel=1e-12)
    assert lrs[110] == pytest.approx(1e-4) and lr_at(500, cfg) == 1e-4
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    # the cosine's value at 1/4 of the decay: min + (max - min) (1 + cos(pi/4)) / 2
    assert lrs[35] == pytest.approx(1e-4 + 9e-4 * (1 + math.cos(math.pi / 4)) / 2, rel=1e-12)


# ---------------------------------------------------------------------------------------------- optimizer


@pytest.mark.parametrize("tie", [False, True])
def test_param_groups_no_decay_on_norms_embeddings_biases(tie):
    model = tiny_model(tie_embeddings=tie, time_conditioning=True)   # time conditioning adds biases
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    ids_decay, ids_none = {id(p) for p in decay["params"]}, {id(p) for p in no_decay["params"]}
    assert not ids_decay & ids_none
    assert ids_decay | ids_none == {id(p) for p in model.parameters()}   # every parameter, once
    by_name = dict(model.named_parameters())
    for name, p in by_name.items():
        expect_none = p.dim() < 2 or name == "tok_emb.weight"
        assert (id(p) in ids_none) == expect_none, name
    assert any("norm" in n for n, p in by_name.items() if id(p) in ids_none)
    assert any(n.endswith(".bias") for n, p in by_name.items() if id(p) in ids_none)
    assert id(model.blocks[0].attn.qkv.weight) in ids_decay
    assert (id(model.head.weight) in ids_none) == tie   # a tied head *is* the embedding


# ---------------------------------------------------------------------------------------------- data


def test_batches_depend_only_on_seed_step_micro_rank(data):
    cfg = tiny_cfg()
    a = get_batch(data, cfg, 32, step=5, micro=1, rank=0)
    assert torch.equal(a, get_batch(data, cfg, 32, step=5, micro=1, rank=0))   # reproducible: resume-safe
    for other in (dict(step=6, micro=1, rank=0), dict(step=5, micro=0, rank=0), dict(step=5, micro=1, rank=1)):
        assert not torch.equal(a, get_batch(data, cfg, 32, **other)), other   # DDP ranks differ


# ---------------------------------------------------------------------------------------------- validation


def test_validation_equals_nelbo_terms_and_is_deterministic(data, byte_tok):
    model = tiny_model()
    val = make_val_set(data.val_ids, 32, 8, byte_tok.mask_id, tokenizer=byte_tok)
    np.testing.assert_allclose(val.t, (np.arange(8) + 0.5) / 8)   # stratified, fixed times
    got = evaluate(model, val, byte_tok.mask_id, batch_size=3)     # batches of 3: 3 + 3 + 2 windows
    assert evaluate(model, val, byte_tok.mask_id, batch_size=8) == pytest.approx(got, rel=1e-6)
    assert evaluate(model, val, byte_tok.mask_id, batch_size=3) == got   # bit-for-bit the same
    # The same number from the training objective, given the same t and the same mask generator.
    ref = nelbo_terms(model, val.x0, mask_id=byte_tok.mask_id, t=val.t,
                      generator=torch.Generator().manual_seed(VAL_SEED)).loss.mean().item()
    # float32 log-probs summed in two orders: agreement to ~1e-6 relative
    assert got["val_nelbo"] == pytest.approx(ref, rel=1e-5)


def test_bits_per_byte_is_exact(data):
    """bits/byte = total nats / ln 2 / bytes; the bytes counted token by token (a slow reference)."""
    tok = BPETokenizer.train(TEXT, 300, verbose=False)      # multi-byte tokens, so bytes != tokens
    d = TokenData.from_text(TEXT, tok, cache_dir=None)
    model = tiny_model(vocab_size=tok.vocab_size)
    val = make_val_set(d.val_ids, 32, 8, tok.mask_id, tokenizer=tok)
    n_bytes = sum(len(tok.id_to_token_bytes(i)) for w in val.x0.tolist() for i in w)
    assert val.n_bytes == n_bytes > val.x0.numel()
    m = evaluate(model, val, tok.mask_id)
    total_nats = m["val_nelbo"] * val.x0.numel()
    assert m["val_bpb"] == pytest.approx(total_nats / math.log(2) / n_bytes, rel=1e-12)


def test_several_times_per_window(data, byte_tok):
    """k times per window: n k rows, window w at rows w, w + n, ...; t stratified over all rows; bytes k-fold."""
    one = make_val_set(data.val_ids, 32, 8, byte_tok.mask_id, tokenizer=byte_tok)
    four = make_val_set(data.val_ids, 32, 8, byte_tok.mask_id, tokenizer=byte_tok, t_per_window=4)
    assert four.x0.shape == (32, 32) and torch.equal(four.x0[8:16], one.x0)
    np.testing.assert_allclose(four.t, (np.arange(32) + 0.5) / 32)
    assert four.n_bytes == 4 * one.n_bytes
    assert sorted(four.t[[0, 8, 16, 24]].tolist()) == four.t[[0, 8, 16, 24]].tolist()   # spread over [0, 1]


# ---------------------------------------------------------------------------------------------- FLOPs


@pytest.mark.parametrize("tie", [False, True])
def test_flops_per_token_equals_counted_matmul_flops(tie):
    """6N + 12 n_layer L d is exactly what torch's FLOP counter sees for a forward + backward pass
    (with the plain 'math' attention, whose matrix products the counter can see)."""
    model = MDLM(ModelConfig(vocab_size=300, seq_len=32, n_layer=2, n_head=2, d_model=32, tie_embeddings=tie))
    x = torch.randint(0, 299, (3, 32))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x).float().logsumexp(-1).sum().backward()
    assert counter.get_total_flops() / x.numel() == flops_per_token(model)


def test_peak_flops_table(monkeypatch):
    monkeypatch.delenv("MDLM_PEAK_TFLOPS", raising=False)
    assert peak_flops(name="NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops(name="NVIDIA H100 PCIe") == 756e12
    assert peak_flops(name="NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops(name="NVIDIA A10G") is None                 # not confused with A10 or A100
    assert peak_flops(name="NVIDIA L40S") == 362e12
    assert peak_flops(torch.device("cpu")) is None
    monkeypatch.setenv("MDLM_PEAK_TFLOPS", "100")
    assert peak_flops(name="anything") == 100e12


# ---------------------------------------------------------------------------------------------- training


def test_training_lowers_the_validation_nelbo(data, byte_tok):
    result = train(tiny_model(), tiny_cfg(max_steps=30, eval_interval=15), data, tokenizer=byte_tok,
                   progress=False)
    h = result.history
    assert h["step"] == list(range(1, 31)) and len(h["loss"]) == 30
    assert h["val_step"] == [15, 30]
    # Byte-level, uniform guessing costs ln 256 = 5.5 nats per masked token; 30 steps learn letter frequencies.
    start = evaluate(tiny_model(), make_val_set(data.val_ids, 32, 8, 256, tokenizer=byte_tok), 256)
    assert h["val_nelbo"][-1] < start["val_nelbo"] - 1.0
    assert all(math.isfinite(x) for x in h["loss"])


def test_resume_equals_uninterrupted(tmp_path, data, byte_tok):
    """20 steps in one go == 10 steps, a checkpoint, a new process state, 10 more steps.

    On a CPU the kernels are deterministic for fixed shapes and thread count, so we expect bit-for-bit
    equality; atol=1e-6 only leaves room for a BLAS that changes its reduction order between calls.
    """
    cfg = tiny_cfg(max_steps=20, ckpt_interval=0)
    full = train(tiny_model(seed=0), cfg, data, tokenizer=byte_tok, progress=False)

    run = tmp_path / "run"
    first = train(tiny_model(seed=0), cfg, data, tokenizer=byte_tok, out_dir=run, stop_at=10, progress=False)
    assert first.step == 10 and [p.name for p in list_checkpoints(run)] == ["step-000010"]
    torch.manual_seed(999)   # scramble the global RNG: resume must restore it
    second = train(tiny_model(seed=1), cfg, data, tokenizer=byte_tok, out_dir=run, resume=True, progress=False)
    assert second.step == 20
    for (k, a), b in zip(params(full.model).items(), params(second.model).values()):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6, msg=k)
    # the loss curve continues: the same 20 losses, and the history carries the first 10
    assert second.history["step"] == list(range(1, 21))
    np.testing.assert_allclose(second.history["loss"], full.history["loss"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(second.history["lr"], full.history["lr"], rtol=1e-12)


def test_resume_with_a_different_config_is_refused(tmp_path, data, byte_tok):
    run = tmp_path / "run"
    train(tiny_model(), tiny_cfg(max_steps=4), data, tokenizer=byte_tok, out_dir=run, progress=False)
    with pytest.raises(CheckpointError) as e:   # another model
        train(MDLM(ModelConfig(vocab_size=257, seq_len=32, n_layer=1, n_head=2, d_model=64)), tiny_cfg(max_steps=8),
              data, tokenizer=byte_tok, out_dir=run, resume=True, progress=False)
    assert "model config differs in d_model" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match="train config differs in lr"):
        train(tiny_model(), tiny_cfg(max_steps=8, lr=1e-2), data, tokenizer=byte_tok, out_dir=run, resume=True,
              progress=False)
    other_tok = BPETokenizer([(104, 101)])   # "he" merged: vocab 258
    with pytest.raises(ValueError, match="vocab_size"):
        train(tiny_model(), tiny_cfg(max_steps=8), data, tokenizer=other_tok, out_dir=run, resume=True,
              progress=False)
    with pytest.raises(ValueError, match="already holds checkpoints"):   # a fresh run would mix with the old
        train(tiny_model(), tiny_cfg(max_steps=4), data, tokenizer=byte_tok, out_dir=run, progress=False)
    # max_steps may change: train longer
    r = train(tiny_model(), tiny_cfg(max_steps=6), data, tokenizer=byte_tok, out_dir=run, resume=True,
              progress=False)
    assert r.step == 6 and r.history["step"] == list(range(1, 7))


class NaNAfter(MDLM):
    """An MDLM whose logits turn NaN from the n-th forward call on (a stand-in for a diverging run)."""

    def __init__(self, config, n):
        super().__init__(config)
        self.n, self.calls = n, 0

    def forward(self, xt, t=None):
        logits = super().forward(xt, t)
        if self.training:
            self.calls += 1
            if self.calls >= self.n:
                return logits * float("nan")
        return logits


def test_nan_loss_stops_training_and_writes_no_poisoned_checkpoint(tmp_path, data, byte_tok):
    torch.manual_seed(0)
    model = NaNAfter(ModelConfig(vocab_size=257, seq_len=32, n_layer=1, n_head=2, d_model=32), n=7)
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as e:
        train(model, tiny_cfg(max_steps=20, ckpt_interval=3, log_interval=2), data, tokenizer=byte_tok,
              out_dir=run, progress=False)
    msg = str(e.value)
    assert "diverged at step 7" in msg and "step-000006" in msg and "\n" not in msg
    # step 3 and step 6 were written; step 6 is both the latest and the best, so step 3 was retired
    assert [p.name for p in list_checkpoints(run)] == ["step-000006"]
    assert load_checkpoint(run).meta["history"]["step"] == list(range(1, 7))
    for p in list_checkpoints(run):
        assert all(torch.isfinite(v).all() for v in load_checkpoint(p).model_state.values())


def test_fp16_grad_scaler_path_on_cpu(tmp_path, data, byte_tok):
    """fp16 autocast + GradScaler run on the CPU too (torch.amp.GradScaler("cpu")), so the suite covers them."""
    run = tmp_path / "run"
    r = train(tiny_model(), tiny_cfg(max_steps=6, dtype="fp16"), data, tokenizer=byte_tok, out_dir=run,
              progress=False)
    assert all(math.isfinite(x) for x in r.history["loss"])
    meta = load_checkpoint(run).meta
    assert meta["grad_scaler"]["scale"] > 0   # the scaler's state is checkpointed
    # An absurd loss scale: the scaled gradients overflow fp16, so GradScaler skips the update and halves
    # the scale. The weights after one step are the initial ones.
    model = tiny_model()
    before = params(model)
    run2 = tmp_path / "overflow"
    train(model, tiny_cfg(max_steps=1, dtype="fp16", fp16_init_scale=2.0 ** 40), data, tokenizer=byte_tok,
          out_dir=run2, progress=False)
    for k, v in params(model).items():
        assert torch.equal(v, before[k]), k
    assert load_checkpoint(run2).meta["grad_scaler"]["scale"] == 2.0 ** 39


def test_bf16_autocast_path_on_cpu_matches_fp32(data, byte_tok):
    """bf16 autocast on the CPU trains the same model as float32, up to bf16's rounding: the losses of 3 steps
    agree within 2% (bf16 keeps 8 bits of mantissa, ~0.4% per product; the loss stays float32)."""
    runs = {dt: train(tiny_model(), tiny_cfg(max_steps=3, dtype=dt), data, tokenizer=byte_tok, progress=False)
            for dt in ("fp32", "bf16")}
    np.testing.assert_allclose(runs["bf16"].history["loss"], runs["fp32"].history["loss"], rtol=0.02)
    assert runs["bf16"].history["loss"] != runs["fp32"].history["loss"]   # bf16 really ran


@pytest.mark.slow
def test_compiled_training_equals_eager(data, byte_tok):
    """compile=True (the model and the fused SUBS cross-entropy, inductor) trains the same model as eager.

    Compared: the losses of 4 steps, and the gradients of one batch. Not the weights after AdamW: its first
    steps move each weight by about lr * sign(g), so a weight whose gradient is ~1e-9 (an embedding row
    seen once) moves by +lr or -lr depending on rounding, in eager as in compiled code.
    """
    runs = {}
    for compile in (False, True):
        torch.manual_seed(0)
        runs[compile] = train(tiny_model(), tiny_cfg(max_steps=4, compile=compile), data, tokenizer=byte_tok,
                              progress=False)
    np.testing.assert_allclose(runs[True].history["loss"], runs[False].history["loss"], rtol=1e-4)
    assert not any(k.startswith("_orig_mod.") for k in runs[True].model.state_dict())
    model, x0 = tiny_model(), get_batch(data, tiny_cfg(), 32, step=0)
    grads = {}
    for compile in (False, True):
        fwd = torch.compile(model) if compile else model
        nll_fn = torch.compile(masked_nll) if compile else masked_nll
        loss = nelbo(fwd, x0, mask_id=256, generator=torch.Generator().manual_seed(0), nll_fn=nll_fn)
        grads[compile] = torch.autograd.grad(loss, list(model.parameters()))
    scale = max(g.abs().max() for g in grads[False])
    for (name, _), a, b in zip(model.named_parameters(), grads[False], grads[True]):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5 * scale, msg=name)


def test_ema_follows_its_formula(data, byte_tok):
    """After one step the EMA is d * theta_0 + (1 - d) * theta_1 with the warm-up decay d = min(decay, 1/10)."""
    model = tiny_model()
    theta0 = params(model)
    r = train(model, tiny_cfg(max_steps=1, ema_decay=0.999), data, tokenizer=byte_tok, progress=False)
    theta1 = params(r.model)
    for k, e in r.ema_model.state_dict().items():
        # float32 lerp vs the written-out sum: 1 ulp-level differences
        torch.testing.assert_close(e, 0.1 * theta0[k] + 0.9 * theta1[k], rtol=1e-6, atol=1e-7)
