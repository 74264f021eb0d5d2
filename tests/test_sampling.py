"""Proofs for mdlm_course/sampling.py, against exact toy denoisers (no trained network needed).

- the exact samplers (first_hitting, ancestral with many steps) reproduce the toy law; one
  ancestral step does not (it draws the product of the marginals);
- absorbing: a revealed token never changes; prompt tokens never change; no mask is left;
- caching changes nothing but the number of network calls (NFE);
- float64 matters: a float32 exponential race truncates a Zipf tail, our sampler does not;
- semi-autoregressive blocks are filled left to right; every bad input is a one-line ValueError.

Statistical tolerances are stated as multiples of the standard error of exact sampling (or of the
simulated noise of exact sampling), so a correct sampler passes with a wide margin and a wrong one
(tested each time against the known wrong answer) fails. All seeds are fixed: the tests are
deterministic.
"""
from __future__ import annotations

import math

import pytest
import torch

from mdlm_course.diffusion import LogLinearSchedule, Schedule, get_schedule
from mdlm_course.sampling import (categorical, denoise, sample, token_probs)
from mdlm_course.toy import ToyDistribution, law as law_over, race_ancestral, race_step, tv, zipf_staircase



def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# A correlated toy law: 81 sequences of 4 tokens over {0, 1, 2}; [MASK] = 3. sharpness=1 spreads the
# mass (largest p = 0.13) so that the 81 cells are all visited, and the joint is far from the product
# of its marginals: TV(p, prod_i p_i) = 0.40.
TOY = ToyDistribution(L=4, V=3, sharpness=1.0, seed=0)
N_TOY = 20_000


def law(x: torch.Tensor) -> torch.Tensor:
    """Empirical law over TOY.support of samples x (n, 4) (toy.law, in itertools order)."""
    return law_over(x, TOY.V)


def product_of_marginals() -> torch.Tensor:
    marg = torch.einsum("n,nlv->lv", TOY.probs, TOY.onehot)                     # (L, V)
    return math.prod(marg[i][TOY.support[:, i]] for i in range(TOY.L))          # (81,)


@pytest.fixture(scope="module")
def tv_noise() -> float:
    """The TV an EXACT sampler shows with N_TOY samples: the max over 200 multinomial draws from p
    (about the 99.5% quantile; the mean is 0.022 and the max 0.027 for this law)."""
    g = gen(123)
    tvs = [tv(torch.bincount(torch.multinomial(TOY.probs, N_TOY, True, generator=g), minlength=81).double()
              / N_TOY, TOY.probs) for _ in range(200)]
    return max(tvs)


# ---------------------------------------------------------------------------------------------
# The exact samplers reproduce the law; one ancestral step does not
# ---------------------------------------------------------------------------------------------

def test_law_of_the_toy_is_far_from_its_marginals():
    assert tv(product_of_marginals(), TOY.probs) > 0.35


@pytest.mark.parametrize("method,steps", [("first_hitting", None), ("ancestral", 1000)])
def test_exact_samplers_reproduce_the_toy_law(method, steps, tv_noise):
    x = sample(TOY.oracle, mask_id=TOY.mask_id, num_samples=N_TOY, seq_len=4, steps=steps,
               method=method, generator=gen(2))
    # ancestral with T steps is exact only as T -> infinity (two positions revealed in one step are
    # drawn independently); with T = 1000 and L = 4 that happens to ~0.6% of samples: TV bias < 0.006.
    assert tv(law(x), TOY.probs) < 1.25 * tv_noise, "not at the sampling-noise level"


def test_one_ancestral_step_draws_the_product_of_marginals(tv_noise):
    x = sample(TOY.oracle, mask_id=TOY.mask_id, num_samples=N_TOY, seq_len=4, steps=1, generator=gen(2))
    assert tv(law(x), TOY.probs) > 10 * tv_noise                                 # visibly wrong ...
    assert tv(law(x), product_of_marginals()) < 1.25 * tv_noise                   # ... in a known way


def test_first_hitting_event_times():
    """With n masked positions at t = 1, the first reveal time s has P(s <= x) = ((1-alpha_x)/(1-alpha_1))^n,
    = x^n for log-linear: mean n / (n + 1), sd sqrt(n / ((n+1)^2 (n+2))). One call per revealed token."""
    n, N = 4, N_TOY
    steps = list(denoise(TOY.oracle, mask_id=TOY.mask_id, num_samples=N, seq_len=n, steps=None,
                         method="first_hitting", generator=gen(5)))
    assert [nfe for *_, nfe in steps] == [1, 2, 3, 4]
    s1 = steps[0][1]                                                             # (N,)
    mean, sd = n / (n + 1), math.sqrt(n / ((n + 1) ** 2 * (n + 2)))
    assert abs(float(s1.mean()) - mean) < 4 * sd / math.sqrt(N)                  # 4 standard errors
    times = torch.stack([t for _, t, _, _ in steps])                             # (n, N)
    assert (times[1:] < times[:-1]).all() and (times > 0).all()                  # time runs backwards


@pytest.mark.parametrize("schedule", ["loglinear", "cosine"])
def test_ancestral_reveals_on_schedule(schedule):
    """A position masked at t = 1 is still masked after the step to s with probability
    prod_k (1 - pi_k) = (1 - alpha_s) / (1 - alpha_1) (the product telescopes)."""
    n, steps = 4000, 8
    sched = get_schedule(schedule)
    runs = denoise(fixed_model([0.5, 0.5]), mask_id=2, num_samples=n // 4, seq_len=4, steps=steps,
                   schedule=schedule, generator=gen(6))
    alpha_1 = sched.alpha(torch.tensor(1.0, dtype=torch.float64))
    for _, t, xt, _ in runs:
        expected = float((1 - sched.alpha(t[0])) / (1 - alpha_1))
        still = float((xt == 2).double().mean())
        assert abs(still - expected) <= 4 * math.sqrt(expected * (1 - expected) / n) + 1e-12


@pytest.mark.parametrize("schedule", [LogLinearSchedule(), "cosine", "custom"])
def test_alpha_inverse(schedule):
    if schedule == "custom":
        class Quadratic(Schedule):                                              # alpha = 1 - t^2: bisection
            eps = 0.0
            def alpha(self, t):
                return 1 - torch.as_tensor(t) ** 2
        schedule = Quadratic()
    schedule = get_schedule(schedule)
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    torch.testing.assert_close(schedule.alpha_inverse(schedule.alpha(t)), t, rtol=0, atol=1e-9)  # ~ bisection 2^-60


# ---------------------------------------------------------------------------------------------
# Trajectories: absorbing, prompts, blocks, caching
# ---------------------------------------------------------------------------------------------

def trajectory(**kw) -> list[torch.Tensor]:
    """The starting state then xt after every step."""
    args = dict(mask_id=TOY.mask_id, num_samples=64, seq_len=4, steps=20, generator=gen(3)) | kw
    start = torch.full((args["num_samples"], args["seq_len"]), TOY.mask_id)
    prompt = args.get("prompt")
    if prompt is not None:
        start[:, : len(prompt)] = torch.as_tensor(prompt)
    return [start] + [xt for _, _, xt, _ in denoise(TOY.oracle, **args)]


METHODS = [("ancestral", 20), ("ancestral", 1), ("first_hitting", None), ("confidence", 3), ("confidence", 50)]


@pytest.mark.parametrize("method,steps", METHODS)
@pytest.mark.parametrize("block_length", [None, 2, 3])
def test_absorbing_no_mask_left(method, steps, block_length):
    states = trajectory(method=method, steps=steps, block_length=block_length)
    for before, after in zip(states, states[1:]):
        revealed = before != TOY.mask_id
        assert torch.equal(after[revealed], before[revealed]), "a revealed token changed"
    assert (states[-1] != TOY.mask_id).all() and (states[-1] < TOY.V).all()


@pytest.mark.parametrize("method,steps", METHODS)
def test_prompt_prefix_and_template_are_kept(method, steps):
    m = TOY.mask_id
    prefix = torch.tensor([2, 0])
    template = torch.tensor([1, m, m, 0])                                        # infill the middle
    for prompt in (prefix, template):
        states = trajectory(method=method, steps=steps, prompt=prompt)
        fixed = prompt != m
        for xt in states[1:]:
            assert (xt[:, : len(prompt)][:, fixed] == prompt[fixed]).all()
        assert (states[-1] != m).all()
    # infilling is conditioning: with the exact denoiser, the middle follows p(x_1, x_2 | x_0 = 1, x_3 = 0)
    x = sample(TOY.oracle, mask_id=m, num_samples=N_TOY, seq_len=4, steps=None, method="first_hitting",
               prompt=template, generator=gen(4))
    cond = TOY.probs * ((TOY.support[:, 0] == 1) & (TOY.support[:, 3] == 0))
    cond = cond / cond.sum()
    assert tv(law(x), cond) < 0.02                        # 9 cells: exact-sampling TV ~ 0.005 at 20k samples


def test_full_prompt_returns_it():
    prompt = torch.tensor([0, 1, 2, 0])
    x = sample(TOY.oracle, mask_id=TOY.mask_id, num_samples=3, seq_len=4, steps=5, prompt=prompt)
    assert torch.equal(x, prompt.repeat(3, 1))


@pytest.mark.parametrize("method,steps", METHODS)
def test_semi_autoregressive_blocks_fill_left_to_right(method, steps):
    states = trajectory(method=method, steps=steps, block_length=2)
    for xt in states:
        first_done = (xt[:, :2] != TOY.mask_id).all()
        second_started = (xt[:, 2:] != TOY.mask_id).any()
        assert first_done or not second_started, "block 2 started before block 1 was complete"


class TimeConditionedToy:
    """The oracle, made to depend on t (a t-dependent tilt of the logits); records every call."""
    time_conditioned = True

    def __init__(self):
        self.calls = []

    def __call__(self, xt, t):
        self.calls.append(t.clone())
        return TOY.oracle(xt) + torch.tensor([0.0, 1.0, 2.0, 0.0]) * t[:, None, None]


@pytest.mark.parametrize("method,steps", [("ancestral", 50), ("ancestral", 5), ("confidence", 20)])
@pytest.mark.parametrize("time_conditioned", [False, True])
def test_caching_changes_only_the_number_of_calls(method, steps, time_conditioned):
    runs = {}
    for cache in (True, False):
        model = TimeConditionedToy() if time_conditioned else TOY.oracle
        out = list(denoise(model, mask_id=TOY.mask_id, num_samples=64, seq_len=4, steps=steps, method=method,
                           generator=gen(9), cache=cache))
        runs[cache] = out, model
    (cached, model_c), (uncached, model_u) = runs[True], runs[False]
    assert len(cached) == len(uncached)
    for (step_c, t_c, x_c, _), (step_u, t_u, x_u, _) in zip(cached, uncached):
        assert step_c == step_u and torch.equal(t_c, t_u) and torch.equal(x_c, x_u)   # same samples
    start = torch.full((64, 4), TOY.mask_id)
    states = [start] + [x for _, _, x, _ in cached]
    changing_steps = sum(not torch.equal(a, b) for a, b in zip(states, states[1:]))
    assert cached[-1][3] == changing_steps               # one call per step that reveals a token ...
    assert uncached[-1][3] == len(uncached)              # ... instead of one per step
    if time_conditioned:                                 # every call got the time of its step, t = k / steps
        for t in model_c.calls:
            k = float(t[0]) * steps
            assert abs(k - round(k)) < 1e-5 and (t == t[0]).all()


class SwitchAtHalf:
    """A context-blind, time-conditioned denoiser over {0, 1} ([MASK] = 2) whose answer depends on t alone:
    token 0 when t > 0.5, token 1 otherwise. In the continuous-time reverse process a masked position is
    revealed at a time tau with P(tau <= s) = (1 - alpha_s) / (1 - alpha_1), independently of the others,
    and its token comes from p_theta(. | x, tau). So every position is 0 with probability
    P(tau > 0.5) = 1 - (1 - alpha_0.5) / (1 - alpha_1), independently: the exact law is a product of
    Bernoullis, known in closed form. A sampler that asks the model at the wrong time gets it wrong
    (asking at the previous reveal's time gives token 0 to the first position every time)."""
    mask_id = 2

    def __init__(self):
        self.calls = []

    def __call__(self, xt, t):
        self.calls.append(t.clone())
        answer = (t <= 0.5).long()[:, None].expand(xt.shape)                     # (B, L) 0 or 1
        return torch.nn.functional.one_hot(answer, 3).float() * 30.0             # (B, L, 3), sure of it


@pytest.mark.parametrize("schedule", ["loglinear", "cosine"])
@pytest.mark.parametrize("method,steps", [("first_hitting", None), ("ancestral", 1000)])
def test_exact_samplers_ask_a_time_conditioned_model_at_the_right_time(method, steps, schedule):
    n, L = 20_000, 3
    sched = get_schedule(schedule)
    a_half, a_one = (float(sched.alpha(torch.tensor(v, dtype=torch.float64))) for v in (0.5, 1.0))
    p0 = 1 - (1 - a_half) / (1 - a_one)                     # P(token 0) at each position, exact
    x = sample(SwitchAtHalf(), mask_id=2, num_samples=n, seq_len=L, steps=steps, method=method,
               schedule=sched, generator=gen(11))           # (n, L)
    se = math.sqrt(p0 * (1 - p0) / n)
    freq0 = (x == 0).double().mean(0)                       # (L,) per position
    assert (freq0 - p0).abs().max() < 5 * se, (freq0, p0)
    # independence: the joint law over the 2^L cells is the product of the marginals
    cells = (x * torch.tensor([4, 2, 1])).sum(1)            # (n,) cell index in [0, 8)
    ones = torch.tensor([bin(c).count("1") for c in range(8)], dtype=torch.float64)
    joint = p0 ** (L - ones) * (1 - p0) ** ones             # (8,)
    freq = torch.bincount(cells, minlength=8).double() / n
    assert ((freq - joint).abs() / (joint * (1 - joint) / n).sqrt()).max() < 5


def test_first_hitting_calls_the_model_at_the_time_of_each_reveal():
    model = SwitchAtHalf()
    steps = list(denoise(model, mask_id=2, num_samples=8, seq_len=5, steps=None, method="first_hitting",
                         generator=gen(3)))
    assert len(model.calls) == len(steps) == 5
    for call, (_, t_after, _, _) in zip(model.calls, steps):      # the call of a reveal is at the reveal's time
        assert torch.allclose(call.double(), t_after, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Temperature, top-p and the float64 categorical
# ---------------------------------------------------------------------------------------------

def fixed_model(p: list[float]):
    """A context-blind model whose p_theta(x_0 | x_t) is p at every position; [MASK] is the last id."""
    logits = torch.tensor(p + [1.0], dtype=torch.float64).log().float()          # the mask logit is ignored
    return lambda xt, t: logits.expand(*xt.shape, len(p) + 1)


def test_token_probs_temperature_and_top_p():
    logits = torch.tensor([[0.5, 0.3, 0.2, 0.9]]).log()                        # id 3 is [MASK]: dropped
    p = token_probs(logits, mask_id=3)
    tol = dict(rtol=0, atol=1e-6)                     # the logits are float32: ~1e-7 relative error
    torch.testing.assert_close(p, torch.tensor([[0.5, 0.3, 0.2, 0.0]], dtype=torch.float64), **tol)
    q = token_probs(logits, mask_id=3, temperature=0.5)                        # p^2, renormalised
    torch.testing.assert_close(q, torch.tensor([[25, 9, 4, 0]], dtype=torch.float64) / 38, **tol)
    r = token_probs(logits, mask_id=3, top_p=0.6)
    torch.testing.assert_close(r, torch.tensor([[0.625, 0.375, 0.0, 0.0]], dtype=torch.float64), **tol)
    assert token_probs(logits, mask_id=3, top_p=0.4)[0, 0] == 1.0             # the top token always stays


@pytest.mark.parametrize("kw,expected", [({}, [0.5, 0.3, 0.2]), ({"temperature": 0.5}, [25 / 38, 9 / 38, 4 / 38]),
                                         ({"top_p": 0.6}, [0.625, 0.375, 0.0])])
def test_sampler_frequencies_follow_temperature_and_top_p(kw, expected):
    n = 40_000
    x = sample(fixed_model([0.5, 0.3, 0.2]), mask_id=3, num_samples=n // 8, seq_len=8, steps=10,
               generator=gen(11), **kw)
    freq = torch.bincount(x.flatten(), minlength=4).double() / n
    expected = torch.tensor(expected + [0.0], dtype=torch.float64)
    se = (expected * (1 - expected) / n).sqrt()
    assert ((freq - expected).abs() <= 4 * se + 1e-12).all()                    # 4 standard errors


def test_categorical_is_float64_inverse_cdf():
    # The draw is "the first index whose float64 cumulative sum exceeds u * total", with u the float64
    # uniforms of the generator: checked against a plain Python loop (Python floats are float64).
    probs = torch.softmax(torch.randn(50, 1000, generator=gen(0), dtype=torch.float64) * 3, -1)
    x = categorical(probs, gen(7))
    u = torch.rand(50, 1, generator=gen(7), dtype=torch.float64)
    for row, (p_row, u_row) in enumerate(zip(probs.tolist(), u[:, 0].tolist())):
        cum, target = 0.0, u_row * probs[row].cumsum(0)[-1].item()
        for i, p_i in enumerate(p_row):
            cum += p_i
            if cum > target:
                break
        assert x[row] == i
    # ... and those uniforms have 53 random bits, not 24: none lies on float32's 2^-24 grid.
    assert ((u * 2 ** 24) == (u * 2 ** 24).floor()).sum() == 0
    # Exact on a point mass and on zero-probability ends; frequencies on a small law.
    assert categorical(torch.tensor([[0.0, 1.0, 0.0]] * 5), gen(0)).tolist() == [1] * 5
    p = torch.tensor([0.1, 0.0, 0.6, 0.3], dtype=torch.float64)
    n = 50_000
    freq = torch.bincount(categorical(p.expand(n, 4), gen(1)), minlength=4).double() / n
    assert ((freq - p).abs() <= 4 * (p * (1 - p) / n).sqrt() + 1e-12).all()


# ---------------------------------------------------------------------------------------------
# Float64 matters: a float32 exponential race truncates a long tail
# ---------------------------------------------------------------------------------------------
# A long-tailed law over V = 50,000 tokens: Zipf, p(r) ~ 1/r, averaged over 45 log-spaced rank bins
# (a "Zipf staircase": every token of a bin has the same probability). The bins make the float32 race
# cheap to simulate exactly (below). The smallest probability is 1.8e-6.

V_ZIPF = 50_000   # toy.zipf_staircase's default; toy.race_step / race_ancestral simulate the float32 race


def test_grouped_race_matches_brute_force_race():
    """The bin trick is the race: compare with the race over every token, on a coarse 2^-10 grid where
    truncation already shows at small sizes (one step, pi = 0.05, bins of 1, 10 and 200 tokens)."""
    sizes = torch.tensor([1, 10, 200])
    p_bin = torch.tensor([0.5, 0.03, 0.001], dtype=torch.float64)               # bin masses 0.5, 0.3, 0.2
    rows, bits, pi = 100_000, 10, 0.05
    # brute force: 211 tokens + MASK, one grid uniform each
    p_tok = torch.repeat_interleave(p_bin, sizes)
    u = torch.floor(torch.rand(rows, 212, generator=gen(0), dtype=torch.float64) * 2 ** bits) * 2.0 ** -bits
    w = torch.cat([pi * p_tok, torch.tensor([1 - pi], dtype=torch.float64)]).float()
    winner = (w / -torch.log(u.float())).argmax(1)                              # token id, 211 = MASK
    brute = torch.bincount(torch.bucketize(winner, sizes.cumsum(0), right=True), minlength=4).double() / rows
    grouped = torch.bincount(race_step(sizes, p_bin, pi, rows=rows, bits=bits, generator=gen(1)),
                             minlength=4).double() / rows
    exact = torch.cat([pi * p_bin * sizes, torch.tensor([1 - pi], dtype=torch.float64)])
    se = (exact * (1 - exact) / rows).sqrt()
    assert ((brute - grouped).abs() < 6 * se).all()          # the same law: two estimates, 4 sqrt(2) se
    # Both nearly cut the 200-token bin: pi p = 5e-5 beats MASK only when MASK's u is exactly 0 (then
    # E_mask = inf), as E_token >= 2^-10 and a finite E_mask <= 10 log 2. Both thin the 10-token bin
    # (measured: brute force 0.00017 and 0.0112, bins 0.00017 and 0.0111, exact 0.01 and 0.015).
    assert brute[2] < exact[2] / 10 and grouped[2] < exact[2] / 10
    assert brute[1] < 0.9 * exact[1] and grouped[1] < 0.9 * exact[1]           # 0.9 * exact: 7 se away


def test_float64_sampling_keeps_the_zipf_tail_float32_race_does_not():
    """Sample entropy = mean surprisal -log p(x) of the samples: its expectation under exact sampling
    is exactly H(p), with standard error sd(-log p(x)) / sqrt(n). Our sampler: within 4 SE of H. The
    float32 race, same law and steps (T = 1000): its rare tokens are cut, entropy far below H."""
    sizes, p_bin = zipf_staircase()
    p = torch.repeat_interleave(p_bin, sizes)                                   # (V,)
    H = float(-(p * p.log()).sum())                                              # 7.565 nats
    sd = math.sqrt(float((p * p.log() ** 2).sum()) - H ** 2)                     # 3.28 nats
    logits = torch.cat([p.log(), torch.tensor([-math.inf], dtype=torch.float64)]).float()
    model = lambda xt, t: logits.expand(*xt.shape, V_ZIPF + 1)                  # noqa: E731; mask id = V
    n = 2000
    x = sample(model, mask_id=V_ZIPF, num_samples=n // 8, seq_len=8, steps=1000, generator=gen(0))
    ours = float(-p[x.flatten()].log().mean())
    se = sd / math.sqrt(n)                                                       # 0.073 nats
    assert abs(ours - H) < 4 * se, f"float64 sampler entropy {ours:.3f} vs H = {H:.3f}"

    bins = race_ancestral(sizes, p_bin, rows=n, steps=1000, bits=24, generator=gen(1))
    race = float(-p_bin[bins].log().mean())
    assert race < H - 8 * se, f"float32 race entropy {race:.3f} vs H = {H:.3f}"     # measured: 1.1 nats below
    tail = p_bin < 1e-5                                                          # the rarest 36,000 tokens ...
    tail_mass = float((p_bin * sizes)[tail].sum())                               # ... hold 5% of the mass
    assert float(tail[bins].double().mean()) < tail_mass / 4
    assert abs(float((p[x.flatten()] < 1e-5).double().mean()) - tail_mass) < 4 * math.sqrt(tail_mass / n)


# ---------------------------------------------------------------------------------------------
# Bad input: one clear line
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw,match", [
    ({"steps": 0}, "steps must be an int >= 1"),
    ({"steps": 2.5}, "steps must be an int >= 1"),
    ({"num_samples": 0}, "num_samples must be"),
    ({"seq_len": 0}, "seq_len must be"),
    ({"method": "greedy"}, "unknown method 'greedy'"),
    ({"temperature": 0}, "temperature must be a finite number >= 0.001"),
    ({"temperature": -1.0}, "temperature must be"),
    ({"top_p": 0}, "top_p must be in"),
    ({"top_p": 1.5}, "top_p must be in"),
    ({"prompt": torch.tensor([0, 1, 2, 0, 1])}, "longer than seq_len=4"),
    ({"prompt": torch.tensor([[0, 1]])}, "prompt must be a 1-D tensor"),
    ({"prompt": torch.tensor([0, 7])}, "prompt contains token id 7"),
    ({"mask_id": 4}, "mask_id=4 is outside the model's vocabulary of size 4"),
    ({"mask_id": 9, "method": "first_hitting"}, "mask_id=9 is outside"),
    ({"mask_id": -1}, "mask_id must be"),
    ({"block_length": 0}, "block_length must be"),
])
def test_bad_input_is_a_one_line_value_error(kw, match):
    args = dict(mask_id=TOY.mask_id, num_samples=2, seq_len=4, steps=4) | kw
    model = fixed_model([0.4, 0.3, 0.3])                                         # vocab 4, ignores its input
    with pytest.raises(ValueError, match=match) as err:
        sample(model, **args)
    assert "\n" not in str(err.value)


def test_bad_model_output_is_a_one_line_value_error():
    with pytest.raises(ValueError, match=r"must return logits of shape \(B, L, V\)"):
        sample(lambda xt, t: torch.zeros(xt.shape[0], 3), mask_id=0, num_samples=1, seq_len=4, steps=2)


def test_mdlm_module_runs_in_eval_mode_without_grad():
    """A real (untrained) MDLM: eval mode during sampling, restored afterwards; no mask left; the
    mask id is checked against model.config.vocab_size before any call."""
    from mdlm_course.model import MDLM, ModelConfig

    torch.manual_seed(0)
    model = MDLM(ModelConfig.preset("tiny", seq_len=16, dropout=0.1))
    model.train()
    V = model.config.vocab_size
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append((m.training, o.requires_grad)))
    x = sample(model, mask_id=V - 1, num_samples=2, seq_len=16, steps=8, generator=gen(0))
    assert x.shape == (2, 16) and (x != V - 1).all() and (x < V).all()
    assert seen and all(not training and not grad for training, grad in seen)
    assert model.training
    with pytest.raises(ValueError, match=f"mask_id={V} is outside"):
        sample(model, mask_id=V, num_samples=1, seq_len=16, steps=2)
