"""The claims of chapters 2-6 that code can check: each test fails on the wrong version.

- the NELBO alone is a bound only up to the prior term: on the toy it lies *below* the exact NLL, and
  adding the prior term closes the gap to O(eps^2);
- eps does not keep w(t) finite at t = 1 (it is finite with eps = 0); w blows up at t -> 0;
- discrete_elbo draws k ~ U{1..T} exactly, k = 1 included, whatever T;
- the caching sampler stays exact for a time-conditioned model;
- under SUBS a uniform guess costs ln(V - 1), not ln V;
- stratified times: one per stratum; old checkpoints' `antithetic` is read as `stratified`.
"""
from __future__ import annotations

import math

import pytest
import torch

from mdlm_course.config import TrainConfig
from mdlm_course.diffusion import (EPS, CosineSchedule, LogLinearSchedule, masked_nll, nelbo_terms, prior_term,
                                   sample_t)
from mdlm_course.model import MDLM, ModelConfig
from mdlm_course.sampling import sample
from mdlm_course.toy import ToyDistribution


@pytest.fixture(scope="module")
def toy():
    return ToyDistribution()


def test_nelbo_alone_is_below_the_nll_and_the_prior_term_closes_the_gap(toy):
    bound, nll = toy.exact_bound(toy.oracle), toy.nll_per_token()
    prior = toy.exact_prior_term(toy.oracle)
    assert bound < nll - 5e-4                                      # "the dropped prior term is ~0" is false
    assert prior == pytest.approx(EPS * toy.marginal_entropy_per_token(), rel=1e-12)
    assert abs(bound + prior - nll) < 1e-6                         # bound + prior = H / L, up to O(eps^2)
    # a context-blind model: its diffusion term plus its prior term is exactly its cross-entropy
    blind = toy.exact_bound(toy.unigram) + toy.exact_prior_term(toy.unigram)
    assert blind == pytest.approx(toy.marginal_entropy_per_token(), abs=1e-12)


def test_prior_term_estimator_is_the_exact_prior_term(toy):
    """diffusion.prior_term over the whole support, weighted by p(x0), equals toy.exact_prior_term."""
    per_sequence = torch.stack([prior_term(toy.oracle, x[None], mask_id=toy.mask_id) for x in toy.support])   # (N,)
    assert float((toy.probs * per_sequence.double()).sum()) == pytest.approx(toy.exact_prior_term(toy.oracle),
                                                                              rel=1e-5)


@pytest.mark.parametrize("schedule, w1", [(LogLinearSchedule(eps=0.0), 1.0), (CosineSchedule(eps=0.0), math.pi / 2)])
def test_weight_is_finite_at_t_one_even_with_eps_zero(schedule, w1):
    t = torch.tensor([1.0, 1e-6], dtype=torch.float64)
    w = schedule.weight(t)
    assert float(w[0]) == pytest.approx(w1, rel=1e-12)            # eps is not what keeps w(1) finite
    assert float(w[1]) > 1e5                                       # w blows up at t -> 0 (T_MIN's job)


def test_discrete_elbo_draws_every_step_including_k_one():
    T = 2000
    terms = nelbo_terms(lambda xt, t: torch.zeros(*xt.shape, 4), torch.zeros(T, 3, dtype=torch.long), mask_id=3,
                        T=T, generator=torch.Generator().manual_seed(0))
    k = torch.round(terms.t * T).long()
    assert sorted(k.tolist()) == list(range(1, T + 1))             # stratified over T rows: every k exactly once


def test_caching_sampler_is_exact_for_a_time_conditioned_model():
    torch.manual_seed(0)
    model = MDLM(ModelConfig(vocab_size=11, seq_len=12, n_layer=1, n_head=2, d_model=16, time_conditioning=True))
    for block in model.blocks:                                     # zero-initialised: make t matter
        torch.nn.init.normal_(block.modulation.weight, std=0.5)
    xt = torch.full((1, 12), 10)
    assert not torch.allclose(model(xt, torch.tensor([0.9])), model(xt, torch.tensor([0.2])))
    kw = dict(mask_id=10, num_samples=4, seq_len=12, steps=200)
    cached = sample(model, cache=True, generator=torch.Generator().manual_seed(1), **kw)
    uncached = sample(model, cache=False, generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(cached, uncached)


def test_uniform_guess_costs_log_v_minus_one():
    V, mask_id = 17, 16
    x0 = torch.randint(0, V - 1, (2, 5))
    xt = torch.full_like(x0, mask_id)
    nll = masked_nll(torch.zeros(2, 5, V), xt, x0, mask_id)
    torch.testing.assert_close(nll, torch.full((2, 5), math.log(V - 1)))


def test_stratified_times_one_per_stratum_and_old_name_is_read():
    B = 64
    t = sample_t(B, stratified=True, generator=torch.Generator().manual_seed(3), t_min=0.0)
    assert sorted((t * B).floor().long().tolist()) == list(range(B))
    with pytest.warns(DeprecationWarning, match="stratified"):
        cfg = TrainConfig.from_dict({**TrainConfig().to_dict(), "antithetic": False, "stratified": True})
    assert cfg.stratified is True                                  # an explicit new name wins
    with pytest.warns(DeprecationWarning):
        old = {k: v for k, v in TrainConfig().to_dict().items() if k != "stratified"}
        assert TrainConfig.from_dict({**old, "antithetic": False}).stratified is False


def test_prior_term_of_a_near_uniform_model_is_eps_log_v_minus_one():
    """The guide's size of the prior term: eps ln(V - 1) = 0.0083 nats/token at V = 4096 for a model that
    guesses uniformly (an untrained one nearly does)."""
    torch.manual_seed(0)
    model = MDLM(ModelConfig(vocab_size=4096, seq_len=32, n_layer=1, n_head=2, d_model=32))
    x0 = torch.randint(0, 4095, (4, 32))
    assert EPS * math.log(4095) == pytest.approx(0.0083, abs=5e-5)
    with torch.no_grad():
        prior = float(prior_term(model, x0, mask_id=4095))
    assert prior == pytest.approx(EPS * math.log(4095), rel=0.02)
