"""The forward process, SUBS and the NELBO, proved on schedules, simulations and an exact toy.

    schedules        dalpha and the weight against finite differences of alpha (float64)
    q_sample         empirical mask rate == 1 - alpha_t; masks nest when uniforms are shared
    q_step           q(x_t | x_s) after q(x_s | x_0) is q(x_t | x_0) (Chapman-Kolmogorov), never unmasks
    unmask_prob      (alpha_s - alpha_t) / (1 - alpha_t) == the simulated fraction revealed going t -> s
    SUBS             no probability on [MASK]; unmasked positions carried over exactly
    oracle           with the exact denoiser of a toy distribution, nelbo == exact NLL (H / L per token)
    schedules        ... under log-linear and cosine alike; a context-blind model is clearly worse
    discrete ELBO    looser than the continuous NELBO, and decreases to it as T grows

Monte Carlo tolerances are 5 standard errors, the standard error measured from independent repeats
with fixed seeds: a correct implementation fails such a check with probability ~6e-7.
"""
import math

import pytest
import torch

from mdlm_course.diffusion import (
    EPS, NEG_INF, T_MIN, CosineSchedule, LogLinearSchedule, SCHEDULES, discrete_elbo, get_schedule,
    masked_nll, nelbo, nelbo_terms, q_sample, q_step, sample_t, subs_log_probs, unmask_probability,
)
from mdlm_course.toy import ToyDistribution

SIGMAS = 5



@pytest.fixture(scope="module")
def toy():
    return ToyDistribution(L=4, V=3, sharpness=2.5, seed=0)


def mc(fn, repeats: int) -> tuple[float, float]:
    """Mean and standard error of fn(generator) over independent seeded repeats."""
    vals = torch.tensor([float(fn(torch.Generator().manual_seed(r))) for r in range(repeats)], dtype=torch.float64)
    return vals.mean().item(), (vals.std() / math.sqrt(repeats)).item()


# --------------------------------------------------------------------------------------------- schedules

@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_dalpha_and_weight_match_finite_differences(name):
    sched = get_schedule(name)
    t = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    h = 1e-6
    fd = (sched.alpha(t + h) - sched.alpha(t - h)) / (2 * h)    # central difference: error O(h^2) ~ 1e-12
    # float64 rounding in the difference: ~1e-16 / 1e-6 = 1e-10, so rtol 1e-7 leaves room yet would
    # catch any wrong factor (a missing pi/2, a sign)
    torch.testing.assert_close(sched.dalpha(t), fd, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(sched.weight(t), -fd / (1 - sched.alpha(t)), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_runs_from_clean_to_almost_all_masked(name):
    sched = get_schedule(name)
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    a = sched.alpha(t)
    assert a[0].item() == pytest.approx(1.0, abs=1e-15) and a[-1].item() == pytest.approx(EPS, abs=1e-15)
    assert (a[1:] < a[:-1]).all()                                 # strictly decreasing
    assert (sched.weight(t[1:]) > 0).all()


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_weight_is_finite_in_float32_near_zero(name):
    """At t = 1e-5, 1 - cos(pi t / 2) is 0 in float32: the closed-form weight must not be 0/0."""
    sched = get_schedule(name)
    w32 = sched.weight(torch.tensor([T_MIN, 1e-3, 0.5], dtype=torch.float32))
    w64 = sched.weight(torch.tensor([T_MIN, 1e-3, 0.5], dtype=torch.float64))
    assert torch.isfinite(w32).all()
    torch.testing.assert_close(w32.double(), w64, rtol=1e-6, atol=0)   # float32 precision


def test_loglinear_weight_is_one_over_t():
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    torch.testing.assert_close(LogLinearSchedule().weight(t), 1 / t, rtol=1e-15, atol=0)


def test_get_schedule():
    assert isinstance(get_schedule(None), LogLinearSchedule)
    assert isinstance(get_schedule("cosine"), CosineSchedule)
    s = CosineSchedule(eps=1e-2)
    assert get_schedule(s) is s
    with pytest.raises(ValueError, match="unknown schedule"):
        get_schedule("linear")


# --------------------------------------------------------------------------------------------- forward process

@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_mask_rate_matches_one_minus_alpha(name):
    sched = get_schedule(name)
    t = torch.linspace(0, 1, 11)                                   # one row per t
    n = 20_000
    x0 = torch.randint(0, 7, (11, n))
    xt = q_sample(x0, t, mask_id=7, schedule=sched, generator=torch.Generator().manual_seed(0))
    masked = xt == 7
    rate = masked.double().mean(-1)
    p = (1 - sched.alpha(t)).double()
    se = torch.sqrt(p * (1 - p) / n).clamp_min(1e-12)             # binomial standard error
    assert ((rate - p).abs() <= SIGMAS * se + 1e-12).all(), (rate, p)
    assert (xt[~masked] == x0[~masked]).all()                      # unmasked tokens are untouched


def test_masks_nest_with_shared_uniforms():
    """Absorbing: drawing x_t at increasing t from one seed, a masked position stays masked."""
    x0 = torch.randint(0, 50, (8, 200))
    masks = [q_sample(x0, t, 50, generator=torch.Generator().manual_seed(3)) == 50 for t in (0.1, 0.4, 0.7, 1.0)]
    for earlier, later in zip(masks, masks[1:]):
        assert (later | ~earlier).all()                            # earlier => later
        assert later.sum() > earlier.sum()


def _two_stage(sched, n, s, t, seed):
    """x_s ~ q(x_s | x_0), then x_t ~ q(x_t | x_s), for n positions of random tokens (mask id 5)."""
    x0 = torch.randint(0, 5, (1, n))
    g = torch.Generator().manual_seed(seed)
    xs = q_sample(x0, s, 5, sched, g)
    return xs, q_step(xs, s, t, 5, sched, g)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_q_step_composes_to_q_sample(name):
    """q(x_t | x_0) = sum_{x_s} q(x_t | x_s) q(x_s | x_0): the two-stage path masks 1 - alpha_t."""
    sched = get_schedule(name)
    n, s, t = 100_000, 0.3, 0.8
    xs, xt = _two_stage(sched, n, s, t, seed=0)
    assert ((xs == 5) <= (xt == 5)).all()                          # never unmasks
    p = 1 - sched.alpha(torch.tensor(t)).item()
    rate = (xt == 5).double().mean().item()
    assert abs(rate - p) <= SIGMAS * math.sqrt(p * (1 - p) / n)
    with pytest.raises(ValueError, match="s <= t"):
        q_step(xs, 0.9, 0.2, 5, sched)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_unmask_probability_is_the_true_posterior(name):
    """Simulate x_s then x_t; of the positions masked at t, the fraction clean at s is the formula."""
    sched = get_schedule(name)
    n, s, t = 200_000, 0.4, 0.7
    xs, xt = _two_stage(sched, n, s, t, seed=1)
    masked_t = xt == 5
    frac = (xs[masked_t] != 5).double().mean().item()
    p = unmask_probability(torch.tensor(s), torch.tensor(t), sched).item()
    m = masked_t.sum().item()
    assert abs(frac - p) <= SIGMAS * math.sqrt(p * (1 - p) / m)


def test_stratified_times_have_one_per_stratum():
    B = 64
    t = sample_t(B, stratified=True, generator=torch.Generator().manual_seed(0))
    assert t.shape == (B,) and (t >= T_MIN).all() and (t <= 1).all()
    u = (t - T_MIN) / (1 - T_MIN)
    counts = torch.bincount((u * B).long().clamp_max(B - 1), minlength=B)
    assert (counts == 1).all()                                     # exactly one t in each interval [i/B, (i+1)/B)


# --------------------------------------------------------------------------------------------- SUBS

def test_subs_log_probs():
    torch.manual_seed(0)
    B, L, V, mask_id = 3, 10, 9, 4
    logits = torch.randn(B, L, V) * 3
    logits[..., mask_id] = 50.0                                    # the raw model loves MASK; SUBS must not
    xt = torch.randint(0, V, (B, L))
    xt[:, ::2] = mask_id
    lp = subs_log_probs(logits, xt, mask_id)
    assert lp.dtype == torch.float32 and lp.shape == (B, L, V)
    probs = lp.exp()
    assert (probs[..., mask_id] == 0).all()                        # no probability on MASK, ever
    torch.testing.assert_close(probs.sum(-1), torch.ones(B, L), rtol=0, atol=1e-6)
    unmasked = xt != mask_id
    onehot = torch.nn.functional.one_hot(xt, V).float()
    assert torch.equal(probs[unmasked], onehot[unmasked])          # carry-over: exactly the visible token
    # masked rows: the softmax of the logits with the MASK column deleted
    keep = [v for v in range(V) if v != mask_id]
    ref = logits[..., keep].log_softmax(-1)
    torch.testing.assert_close(lp[~unmasked][:, keep], ref[~unmasked], rtol=1e-6, atol=1e-6)
    assert (lp[~unmasked][:, mask_id] == NEG_INF).all()


def test_subs_log_probs_is_float32_under_bf16_logits():
    logits = torch.randn(2, 3, 5).to(torch.bfloat16)
    assert subs_log_probs(logits, torch.full((2, 3), 4), 4).dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_masked_nll_equals_subs_gather(dtype):
    """The training loss's fast path equals the slow, obviously-SUBS one: full log-probs, then gather."""
    torch.manual_seed(1)
    B, L, V, mask_id = 4, 12, 11, 7
    logits = (torch.randn(B, L, V) * 3).to(dtype)
    logits[..., mask_id] = 40.0                                    # MASK must get no mass in either
    x0 = torch.randint(0, V - 1, (B, L))
    x0[x0 == mask_id] = V - 1                                      # clean data never holds MASK
    xt = torch.where(torch.rand(B, L) < 0.5, torch.full_like(x0, mask_id), x0)
    ref = -subs_log_probs(logits, xt, mask_id).gather(-1, x0[..., None])[..., 0]   # (B, L)
    got = masked_nll(logits, xt, x0, mask_id)
    assert got.dtype == torch.float32 and got.shape == (B, L)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-5)
    assert (got[xt != mask_id] == 0).all() and (got[xt == mask_id] > 0).all()
    # gradients agree too (what training uses)
    lg1 = logits.float().requires_grad_()
    lg2 = logits.float().requires_grad_()
    masked_nll(lg1, xt, x0, mask_id).sum().backward()
    (-subs_log_probs(lg2, xt, mask_id).gather(-1, x0[..., None])).sum().backward()
    torch.testing.assert_close(lg1.grad, lg2.grad, rtol=1e-5, atol=1e-6)


def test_nelbo_check_x0_flag():
    x0 = torch.tensor([[0, 1, 2]])
    with pytest.raises(ValueError, match="mask_id"):
        nelbo(Uniform(4), x0, mask_id=2)
    nelbo(Uniform(4), x0, mask_id=3, check_x0=False)               # runs; the caller vouches for x0


def test_subs_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(B, L, V\)"):
        subs_log_probs(torch.randn(2, 3), torch.zeros(2, 3, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="mask_id"):
        subs_log_probs(torch.randn(2, 3, 5), torch.zeros(2, 3, dtype=torch.long), 5)


# --------------------------------------------------------------------------------------------- the NELBO

class Uniform(torch.nn.Module):
    """A model with no parameters: uniform logits. Each masked token then costs exactly ln(V - 1)."""

    def __init__(self, V):
        super().__init__()
        self.V = V

    def forward(self, xt, t):
        return torch.zeros(*xt.shape, self.V)


def test_nelbo_is_mean_per_token_position():
    """With a uniform model and fixed t: nelbo == sum_b w(t_b) n_masked_b ln(V-1) / (B L), by hand."""
    V, mask_id, B, L = 11, 10, 4, 32
    x0 = torch.randint(0, 10, (B, L))
    t = torch.tensor([0.2, 0.4, 0.6, 0.8])
    with torch.no_grad():
        value = nelbo(Uniform(V), x0, mask_id=mask_id, t=t, generator=torch.Generator().manual_seed(0))
        terms = nelbo_terms(Uniform(V), x0, mask_id=mask_id, t=t, generator=torch.Generator().manual_seed(0))
    w = LogLinearSchedule().weight(t)
    expected = (w * terms.n_masked * math.log(V - 1)).sum() / (B * L)
    torch.testing.assert_close(value, expected.float(), rtol=1e-6, atol=0)
    torch.testing.assert_close(terms.nll_sum, terms.n_masked * math.log(V - 1), rtol=1e-6, atol=0, check_dtype=False)
    # ...and its expectation is (1 - eps) ln(V - 1): the integral of -alpha'_t over [0, 1]
    mean, se = mc(lambda g: nelbo(Uniform(V), torch.randint(0, 10, (64, L), generator=g), mask_id=mask_id,
                                  generator=g), repeats=30)
    assert abs(mean - (1 - EPS) * math.log(V - 1)) <= SIGMAS * se


def test_nelbo_input_errors():
    x0 = torch.randint(0, 10, (2, 8))
    x0[0, 0] = 10
    with pytest.raises(ValueError, match="contains mask_id"):
        nelbo(Uniform(11), x0, mask_id=10)
    with pytest.raises(ValueError, match=r"shape \(B, L\)"):
        nelbo(Uniform(11), torch.randint(0, 10, (8,)), mask_id=10)
    with pytest.raises(ValueError, match="positive int"):
        discrete_elbo(Uniform(11), torch.randint(0, 10, (2, 8)), mask_id=10, T=0)


def test_oracle_nelbo_equals_exact_nll(toy):
    """The any-order chain rule: with the true conditionals the bound is tight, NELBO = H(p) / L.

    Expected gap: the NELBO's integral stops at mask rate 1 - eps (alpha_1 = eps), so it leaves out the start
    of the chain, the tokens still visible at t = 1: at most eps * sum_i H(x^i) / L
    (6.8e-4 nats here), far below the Monte Carlo tolerance; exact_bound confirms it without MC.
    """
    target = toy.nll_per_token()
    exact = toy.exact_bound(toy.oracle)
    assert 0 <= target - exact <= EPS * toy.marginal_entropy_per_token() + 1e-9
    with torch.no_grad():
        mean, se = mc(lambda g: nelbo(toy.oracle, toy.sample(1000, g), mask_id=toy.mask_id, generator=g), 40)
    gap = toy.marginal_entropy_per_token() - target                # what ignoring context costs (0.256 nats)
    assert SIGMAS * se < gap / 4                                   # the test has the power to tell them apart
    assert abs(mean - target) <= SIGMAS * se + EPS * toy.marginal_entropy_per_token(), (mean, se, target)


def test_context_blind_model_is_clearly_worse(toy):
    """A unigram model pays sum_i H(x^i) / L (times 1 - eps): the correlations it ignores."""
    exact = toy.exact_bound(toy.unigram)
    assert exact == pytest.approx((1 - EPS) * toy.marginal_entropy_per_token(), rel=1e-9)
    with torch.no_grad():
        mean, se = mc(lambda g: nelbo(toy.unigram, toy.sample(1000, g), mask_id=toy.mask_id, generator=g), 20)
    assert abs(mean - exact) <= SIGMAS * se                        # unbiased for any model, up to the O(T_MIN) floor on t
    assert mean > toy.nll_per_token() + 0.2                        # and this one is 0.26 nats above the NLL


@pytest.mark.parametrize("denoiser", ["oracle", "unigram"])
def test_nelbo_is_invariant_to_the_schedule(toy, denoiser):
    """Substituting a = 1 - alpha_t turns the NELBO into integral_0^{1-eps} f(a) / a da for every schedule."""
    model = getattr(toy, denoiser)
    values = [toy.exact_bound(model, name) for name in sorted(SCHEDULES)]
    assert values[0] == pytest.approx(values[1], rel=1e-9)         # Gauss-Legendre with 64 nodes: ~1e-15
    with torch.no_grad():
        mean, se = mc(lambda g: nelbo(model, toy.sample(1000, g), mask_id=toy.mask_id, schedule="cosine",
                                      generator=g), 20)
    assert abs(mean - values[0]) <= SIGMAS * se


def test_discrete_elbo_decreases_to_the_continuous_nelbo(toy):
    continuous = toy.exact_bound(toy.oracle)
    Ts = [1, 2, 4, 8, 16, 64, 256, 1024]
    discrete = [toy.exact_bound(toy.oracle, T=T) for T in Ts]
    assert all(a > b for a, b in zip(discrete, discrete[1:]))     # tighter with every refinement
    assert all(d > continuous for d in discrete)                   # always looser than continuous time
    # T = 1: a single step from (almost) all masked to clean: the unigram cost, up to the fraction
    # eps of tokens still visible at t = 1, which the oracle may use (at most L * eps * 0.675 = 2.7e-3)
    assert discrete[0] == pytest.approx(toy.exact_bound(toy.unigram, T=1), abs=toy.L * EPS)
    assert discrete[-1] - continuous < 1e-3                        # a right Riemann sum: error O(1/T)
    # the Monte Carlo estimator agrees with the exact value for a small T
    with torch.no_grad():
        mean, se = mc(lambda g: discrete_elbo(toy.oracle, toy.sample(1000, g), mask_id=toy.mask_id, T=4,
                                              generator=g), 20)
    assert abs(mean - discrete[2]) <= SIGMAS * se


def test_nelbo_backpropagates_into_a_model():
    from mdlm_course.model import MDLM, ModelConfig
    torch.manual_seed(0)
    model = MDLM(ModelConfig.preset("tiny", vocab_size=20))
    loss = nelbo(model, torch.randint(0, 19, (4, 16)), mask_id=19, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
