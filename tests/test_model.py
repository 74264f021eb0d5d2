"""The transformer: each piece against a plain reference formula, plus the properties MDLM needs.

    RMSNorm, SwiGLU              == their one-line formulas in float64
    RoPE                         rotated q.k depends only on the offset m - n; norms unchanged
    attention                    SDPA == softmax(q k^T / sqrt(d)) v written out; causal zeroes the future
    bidirectional / causal       the last token changes the first position's logits only without the mask
    time conditioning            zero-initialised: equals the unconditioned model at init; gradients reach it
    presets                      parameter counts (those quoted in model.py)
    learning                     a tiny model on Shakespeare bytes beats the unigram entropy in 300 steps
"""
import math

import pytest
import torch
import torch.nn.functional as F

from mdlm_course.data import DEFAULT_CORPUS
from mdlm_course.diffusion import nelbo
from mdlm_course.model import MDLM, PRESETS, ModelConfig, RMSNorm, SwiGLU, apply_rope, rope_tables

# float64 references against float64 modules: agreement to rounding error, so a tight tolerance.
TIGHT = dict(rtol=1e-10, atol=1e-12)



def tiny(**overrides) -> ModelConfig:
    return ModelConfig.preset("tiny", **overrides)


# --------------------------------------------------------------------------------------------- pieces

def test_rmsnorm_matches_formula():
    torch.manual_seed(0)
    norm = RMSNorm(16, eps=1e-6).double()
    with torch.no_grad():
        norm.weight.copy_(torch.randn(16))
    x = torch.randn(3, 5, 16, dtype=torch.float64) * 7
    ref = x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), ref, **TIGHT)


def test_rmsnorm_keeps_input_dtype():
    norm = RMSNorm(8)
    x = torch.randn(2, 8).to(torch.bfloat16)
    assert norm(x).dtype == torch.bfloat16


def test_swiglu_matches_formula():
    torch.manual_seed(0)
    mlp = SwiGLU(12, 32).double()
    x = torch.randn(4, 12, dtype=torch.float64)
    a, b = x @ mlp.w1.weight.T, x @ mlp.w3.weight.T
    ref = (a * torch.sigmoid(a) * b) @ mlp.w2.weight.T              # silu(a) = a * sigmoid(a)
    torch.testing.assert_close(mlp(x), ref, **TIGHT)


@pytest.mark.parametrize("d_model", [64, 256, 512, 768])
def test_swiglu_hidden_size_is_8_thirds_rounded_to_64(d_model):
    h = ModelConfig(d_model=d_model, n_head=4).d_hidden
    assert h % 64 == 0 and 8 * d_model / 3 <= h < 8 * d_model / 3 + 64


def test_rope_matches_complex_rotation():
    """Reference: pair j of a vector at position m is the complex number x_j + i x_{j+d/2}, times e^{i m theta_j}."""
    d, T = 8, 10
    x = torch.randn(1, 1, T, d, dtype=torch.float64)
    cos, sin = rope_tables(T, d)
    theta = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    z = torch.complex(x[..., : d // 2], x[..., d // 2:]) * torch.exp(1j * torch.arange(T)[:, None] * theta)
    ref = torch.cat([z.real, z.imag], dim=-1)
    # rope_tables are float32, so agreement is to float32 precision of the angles (~1e-7 relative)
    torch.testing.assert_close(apply_rope(x, cos.double(), sin.double()), ref, rtol=1e-6, atol=1e-6)


def test_rope_preserves_norms_and_depends_only_on_offset():
    torch.manual_seed(0)
    d, T = 16, 64
    cos, sin = rope_tables(T, d)
    q, k = torch.randn(d, dtype=torch.float64), torch.randn(d, dtype=torch.float64)
    # put the same q and k at every position: row m of Q is q rotated by m, row n of K is k rotated by n
    Q = apply_rope(q.expand(1, 1, T, d), cos.double(), sin.double())[0, 0]      # (T, d)
    K = apply_rope(k.expand(1, 1, T, d), cos.double(), sin.double())[0, 0]      # (T, d)
    torch.testing.assert_close(Q.norm(dim=-1), q.norm().expand(T), rtol=1e-6, atol=0)
    dots = Q @ K.T                                                              # (T, T): q_m . k_n
    for offset in (-5, 0, 3, 17):
        diag = torch.diagonal(dots, offset=offset)                              # all pairs with n - m = offset
        torch.testing.assert_close(diag, diag[0].expand_as(diag), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(torch.diagonal(dots, 0)[0], torch.diagonal(dots, 3)[0])  # ...yet it does vary


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_equals_written_out_attention(causal):
    torch.manual_seed(0)
    model = MDLM(tiny(causal=causal)).double()
    attn = model.blocks[0].attn
    x = torch.randn(2, 9, 64, dtype=torch.float64)
    cos, sin = model.rope_cos.double(), model.rope_sin.double()
    probs = attn.attention_probs(x, cos, sin)                                   # (B, H, L, L)
    _, _, v = attn.rotated_qkv(x, cos, sin)
    y = (probs @ v).transpose(1, 2).reshape(2, 9, 64)
    torch.testing.assert_close(attn(x, cos, sin), attn.proj(y), rtol=1e-9, atol=1e-10)
    future = torch.ones(9, 9, dtype=torch.bool).triu(1)
    assert (probs[..., future] == 0).all() if causal else (probs[..., future] > 0).all()


# --------------------------------------------------------------------------------------------- model

@pytest.mark.parametrize("causal", [False, True])
def test_last_token_reaches_first_position_only_without_causal_mask(causal):
    torch.manual_seed(0)
    model = MDLM(tiny(causal=causal)).eval()
    x = torch.randint(0, 500, (1, 32))
    x2 = x.clone()
    x2[0, -1] = (x[0, -1] + 1) % 500
    with torch.no_grad():
        a, b = model(x), model(x2)
    changed = (a - b).abs().amax(-1)[0]                                         # (L,) per position
    if causal:
        assert (changed[:-1] == 0).all() and changed[-1] > 0
    else:
        assert (changed > 1e-6).all()


def test_forward_shapes_and_input_errors():
    model = MDLM(tiny())
    assert model(torch.randint(0, 512, (3, 64))).shape == (3, 64, 512)
    assert model(torch.randint(0, 512, (2, 5))).shape == (2, 5, 512)          # shorter windows are fine
    with pytest.raises(ValueError, match="exceeds config.seq_len"):
        model(torch.randint(0, 512, (1, 65)))
    with pytest.raises(ValueError, match="integer token ids"):
        model(torch.rand(2, 5))
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(d_model=100, n_head=3)
    with pytest.raises(ValueError, match="unknown model preset"):
        ModelConfig.preset("huge")
    with pytest.raises(ValueError, match="unknown ModelConfig field"):
        ModelConfig.preset("tiny", n_layers=3)


def test_config_round_trips_through_a_dict():
    cfg = tiny(vocab_size=300, causal=True)
    assert ModelConfig(**cfg.to_dict()) == cfg


def test_rope_tables_are_not_in_the_state_dict():
    keys = MDLM(tiny()).state_dict().keys()
    assert not any("rope" in k for k in keys)


def test_tied_head_shares_the_embedding():
    model = MDLM(tiny(tie_embeddings=True))
    assert model.head.weight is model.tok_emb.weight
    untied = MDLM(tiny())
    assert untied.num_params() - model.num_params() == 512 * 64


def test_residual_projections_start_smaller():
    torch.manual_seed(0)
    cfg = ModelConfig.preset("cpu")
    model = MDLM(cfg)
    expected = 0.02 / math.sqrt(2 * cfg.n_layer)
    assert model.blocks[0].attn.proj.weight.std().item() == pytest.approx(expected, rel=0.05)
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)


# Parameter counts quoted in model.py (no time conditioning; the cpu preset ties its head). Built on the
# meta device: no memory is allocated, so the 40M model costs nothing.
@pytest.mark.parametrize("name, expected", [("tiny", 172_352), ("cpu", 4_262_144), ("gpu", 40_512_000)])
def test_preset_parameter_counts(name, expected):
    with torch.device("meta"):
        model = MDLM(ModelConfig.preset(name))
    assert model.num_params() == expected
    counts = model.param_counts()
    assert sum(counts.values()) == expected
    head = 0 if model.config.tie_embeddings else counts["head"]
    assert model.num_params(non_embedding=True) == expected - counts["embedding"] - head


def test_cpu_preset_fits_the_20_mb_checkpoint_in_float32():
    """The shipped checkpoint is the cpu preset's shape: its float32 weights stay under 20 MB (the course's size limit)."""
    with torch.device("meta"):
        n = MDLM(ModelConfig.preset("cpu")).num_params()
    assert 4e6 <= n and 4 * n < 20e6


# --------------------------------------------------------------------------------------------- time conditioning

def test_time_conditioning_is_identity_at_init_and_learns():
    torch.manual_seed(0)
    plain = MDLM(tiny())
    cond = MDLM(tiny(time_conditioning=True))
    missing = cond.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all("modulation" in k or "time_mlp" in k for k in missing)
    assert cond.time_conditioned and not plain.time_conditioned
    x = torch.randint(0, 511, (2, 16))
    t1, t2 = torch.tensor([0.1, 0.9]), torch.tensor([0.5, 0.3])
    torch.testing.assert_close(cond(x, t1), plain(x), rtol=0, atol=0)          # exactly equal: zero modulation
    torch.testing.assert_close(cond(x, t2), plain(x), rtol=0, atol=0)
    loss = nelbo(cond, x, mask_id=511, t=t1)
    loss.backward()
    grads = [cond.blocks[0].modulation.weight.grad, cond.final_modulation.weight.grad]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    torch.optim.SGD(cond.parameters(), lr=1.0).step()
    with torch.no_grad():
        assert not torch.allclose(cond(x, t1), cond(x, t2))                    # now the output depends on t


def test_time_conditioned_model_requires_t():
    model = MDLM(tiny(time_conditioning=True))
    with pytest.raises(ValueError, match="needs t"):
        model(torch.randint(0, 512, (1, 8)))


# --------------------------------------------------------------------------------------------- learning

def test_tiny_model_learns_shakespeare_bytes():
    """Byte ids 0..255, [MASK] = 256, V = 257. 300 AdamW steps of 16 x 64 bytes (a few seconds on a CPU).

    The bar: the NELBO falls below the corpus' byte unigram entropy by 0.15 nats. A model that ignores
    context cannot beat the unigram entropy in expectation, so this shows it uses the visible bytes.
    ln V = 5.55; we measured ~3.05 against a unigram entropy of ~3.31 (seeds fixed).
    """
    torch.manual_seed(0)
    L, B, mask_id = 64, 16, 256
    ids = torch.tensor(list(DEFAULT_CORPUS.read_bytes()[:200_000]))
    counts = torch.bincount(ids, minlength=256).double()
    p = counts[counts > 0] / counts.sum()
    unigram_entropy = float(-(p * p.log()).sum())

    model = MDLM(tiny(vocab_size=257, seq_len=L))
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)

    def windows(n, gen):
        starts = torch.randint(0, len(ids) - L, (n,), generator=gen)
        return torch.stack([ids[s:s + L] for s in starts.tolist()])

    x_eval = windows(256, torch.Generator().manual_seed(1))

    def evaluate():
        with torch.no_grad():
            return sum(nelbo(model, x_eval, mask_id=mask_id, generator=torch.Generator().manual_seed(k)).item()
                       for k in range(4)) / 4

    start = evaluate()
    for _ in range(300):
        loss = nelbo(model, windows(B, g), mask_id=mask_id, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = evaluate()
    assert start > 0.95 * math.log(257)                                         # at init: about ln V
    assert end < unigram_entropy - 0.15, (start, end, unigram_entropy)


def test_output_shift_reads_each_position_from_the_one_before():
    """DiffuLLaMA's shift: with the same weights, shifted logits at i == plain logits at i - 1 (i >= 1), and
    position 0 keeps its own; a causal model cannot take it (it already predicts i + 1 at i)."""
    base = dict(vocab_size=50, seq_len=16, n_layer=2, n_head=2, d_model=32)
    torch.manual_seed(0)
    plain = MDLM(ModelConfig(**base)).eval()
    shifted = MDLM(ModelConfig(**base, output_shift=True)).eval()
    shifted.load_state_dict(plain.state_dict())                     # no parameter is added
    xt = torch.randint(0, 50, (3, 16))
    a, b = plain(xt), shifted(xt)                                   # (3, 16, 50) each
    torch.testing.assert_close(b[:, 1:], a[:, :-1], rtol=0, atol=0)
    torch.testing.assert_close(b[:, 0], a[:, 0], rtol=0, atol=0)
    assert not torch.equal(a, b)
    with pytest.raises(ValueError, match="output_shift=True is for a bidirectional MDLM"):
        ModelConfig(**base, causal=True, output_shift=True)
