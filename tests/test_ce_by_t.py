"""masked_ce_by_t (evaluate.py): the unweighted cross-entropy of the masked tokens at fixed t.

- it equals a slow loop over windows and positions, on a real (untrained) network;
- a context-blind denoiser (toy.unigram) scores its unigram cross-entropy at every t: the plateau;
- the exact denoiser (toy.oracle) scores the exact expected value, computed by enumerating every
  sequence and every mask pattern, so its CE falls as t falls (more context, better guesses);
- the same weights give the same numbers (fixed windows, fixed masks), and nested masks across t.
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from mdlm_course.diffusion import get_schedule, q_sample
from mdlm_course.evaluate import masked_ce_by_t
from mdlm_course.model import MDLM, ModelConfig
from mdlm_course.toy import ToyDistribution

TS = [0.05, 0.3, 0.6, 0.95]


@pytest.fixture(scope="module")
def toy():
    return ToyDistribution(L=4, V=3, sharpness=2.5, seed=0)


@pytest.fixture(scope="module")
def toy_stream(toy):
    """20,000 toy sequences end to end: fixed_windows(L=4, n=20,000) cuts them back into the sequences."""
    return toy.sample(20_000, torch.Generator().manual_seed(1)).flatten()


def exact_ce(toy: ToyDistribution, denoiser, t: float) -> float:
    """E[sum over masked i of -log p(x0^i | x_t)] / E[#masked] for x0 ~ p and masks at time t, by enumeration:
    the limit of masked_ce_by_t as the number of windows grows."""
    a = 1 - float(get_schedule().alpha(torch.tensor(t, dtype=torch.float64)))   # P(a position is masked)
    total = 0.0
    for subset in itertools.product([False, True], repeat=toy.L):
        m = torch.tensor(subset)
        if not m.any():
            continue
        xt = torch.where(m, torch.tensor(toy.mask_id), toy.support)                # (N, L)
        log_p = denoiser(xt).double().log_softmax(-1).gather(-1, toy.support[..., None])[..., 0]   # (N, L)
        g = float((toy.probs[:, None] * -log_p * m).sum())                         # E_x0 of the masked NLL
        total += a ** int(m.sum()) * (1 - a) ** int((~m).sum()) * g
    return total / (a * toy.L)


def test_equals_a_slow_loop_over_positions():
    torch.manual_seed(0)
    model = MDLM(ModelConfig(vocab_size=50, seq_len=16, n_layer=1, n_head=2, d_model=32)).eval()
    stream = torch.randint(0, 49, (400,))                                           # mask_id = 49
    got = masked_ce_by_t(model, stream, mask_id=49, seq_len=16, ts=[0.2, 0.7], windows=5, seed=3)
    windows = stream[torch.linspace(0, 400 - 16, 5).round().long()[:, None] + torch.arange(16)]   # (5, 16)
    for t, ce in zip([0.2, 0.7], got):
        xt = q_sample(windows, t, 49, generator=torch.Generator().manual_seed(3))
        nll = []
        for w in range(5):
            with torch.no_grad():
                log_p = model(xt[w:w + 1], torch.tensor([t]))[0].double()
            log_p[:, 49] = -math.inf                                                # never predict MASK
            log_p = log_p.log_softmax(-1)
            nll += [-float(log_p[i, windows[w, i]]) for i in range(16) if xt[w, i] == 49]
        # float32 logits against a float64 loop: agreement to ~1e-6 relative
        assert ce == pytest.approx(sum(nll) / len(nll), rel=1e-5)


def test_context_blind_model_sits_on_its_unigram_cross_entropy_at_every_t(toy, toy_stream):
    ce = masked_ce_by_t(toy.unigram, toy_stream, mask_id=toy.mask_id, seq_len=toy.L, ts=TS, windows=20_000)
    unigram_ce = toy.marginal_entropy_per_token()            # the marginals' cross-entropy with themselves
    for t, value in zip(TS, ce):
        assert exact_ce(toy, toy.unigram, t) == pytest.approx(unigram_ce, rel=1e-9)    # the reference agrees
        # ~4,000 masked tokens at t = 0.05 with per-token sd ~0.6 nats: standard error ~0.01; 0.04 is 4 of them
        assert abs(value - unigram_ce) < 0.04, (t, value, unigram_ce)
    assert max(ce) - min(ce) < 0.05                          # flat: the plateau


def test_exact_denoiser_matches_the_enumerated_expectation_and_falls_with_t(toy, toy_stream):
    ce = masked_ce_by_t(toy.oracle, toy_stream, mask_id=toy.mask_id, seq_len=toy.L, ts=TS, windows=20_000)
    exact = [exact_ce(toy, toy.oracle, t) for t in TS]
    for value, ref in zip(ce, exact):
        assert abs(value - ref) < 0.04, (value, ref)         # 4 standard errors at t = 0.05 (see above)
    assert all(a < b for a, b in zip(exact, exact[1:]))      # the exact curve falls as t falls ...
    assert all(a < b for a, b in zip(ce, ce[1:]))            # ... and so does the measured one
    assert exact[-1] < toy.marginal_entropy_per_token()      # even at t = 0.95 a little context helps
    assert ce[0] < toy.marginal_entropy_per_token() - 0.2    # well below the plateau with 95% of the context


def test_fixed_windows_and_masks_give_the_same_numbers():
    torch.manual_seed(0)
    model = MDLM(ModelConfig(vocab_size=50, seq_len=16, n_layer=1, n_head=2, d_model=32)).train()
    stream = torch.randint(0, 49, (400,))
    first = masked_ce_by_t(model, stream, mask_id=49, seq_len=16, ts=TS, windows=8)
    assert masked_ce_by_t(model, stream, mask_id=49, seq_len=16, ts=TS, windows=8) == first
    assert model.training                                    # the mode is restored
    masks = [q_sample(stream[:64].view(4, 16), t, 49, generator=torch.Generator().manual_seed(0)) == 49 for t in TS]
    assert all((small <= large).all() for small, large in zip(masks, masks[1:]))   # nested across t
