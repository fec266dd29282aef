"""Property-based exactness: every unbiased estimator, on random programs, against the exact gradient.

Programs (see ``random_programs.py``): 1–4 sites from Normal, Bernoulli, Categorical,
Binomial, Poisson, Geometric and Multinomial, single, plated or ``.to_event(1)``,
parameters that are functions of θ and of earlier draws, polynomial costs, a single
Normal's value reaching the cost through a jump (floor, round, a threshold, sign, a
where) in half the programs that have one, optionally a masked site and a
draw-dependent ``while`` loop. For each program hypothesis picks, per site, one of the
registered estimators that apply and claim ``unbiased=True`` (at a jumping Normal,
those that need no smoothness, or "auto", which must choose one), and K particles, in
four runs: vectorized (K ≤ 3, no loops, which vectorized particles refuse), looped
(K ≤ 2, loops allowed), RODEO at a Categorical first site, and vectorized with a
Normal that jumps in every program.

Reference: the exact ∂E[f]/∂θ by summing over every site's (truncated) support and
Gauss–Hermite nodes for Normals (fixed cells with every jump on an edge for a Normal
that jumps), differentiated by autograd in float64.

Tolerance: the mean of the estimator's draws is within ``Z_SUITE`` standard errors of
the exact gradient, where ``Z_SUITE`` is the larger of 4 and the Bonferroni-corrected
two-sided z for a family-wise false-alarm rate of 1e-3 over the run's examples. The run
is deterministic (``derandomize=True``, fixed seeds). ``PYRO_GRAD_DEEP=1`` runs 650
programs (400 vectorized, 100 looped, 50 with RODEO at a Categorical, 100 that jump)
instead of 52.
"""

import os

import pyro
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy.stats import norm

import pyro_grad as pg
from pyro_grad.gradient_estimators import Enumerate, Score
from pyro_grad.gradient_estimators.base import EngineChoice

from conftest import ROUNDING, Z, standard_error_of_mean
from draws import expectation_draws
from test_control_variates import perturb_control_variates
from random_programs import (
    FAMILIES,
    MAX_GRID,
    STEPS,
    Loop,
    Program,
    Site,
    distribution,
    exact_gradient,
    grid_size,
    run,
)

DEEP = os.environ.get("PYRO_GRAD_DEEP", "") not in ("", "0")
#: Programs per run: the deep run has 500 in all.
EXAMPLES = ({"vectorized": 400, "looped": 100, "categorical": 50, "jumps": 100, "one_run": 100} if DEEP
            else {"vectorized": 30, "looped": 4, "categorical": 6, "jumps": 12, "one_run": 10})
Z_SUITE = max(Z, float(norm.isf(1e-3 / (2 * sum(EXAMPLES.values())))))
THETA = 0.3
#: Independent gradient draws per program: vectorized draws are cheap, looped ones are not.
DRAWS = {True: 4000, False: 100}

coefficient = st.sampled_from([-1.0, -0.5, 0.0, 0.5, 1.0])
cost_coefficient = st.sampled_from([-1.0, 0.0, 0.5, 1.0, 2.0])


@st.composite
def sites(draw, index: int, family: str = None, jumps: bool = False) -> Site:
    """A random site; with ``jumps``, a single Normal whose value reaches the cost through a jump."""
    family = "normal" if jumps else family or draw(st.sampled_from(FAMILIES))
    placements = ["single", "plate"] + ([] if family == "multinomial" else ["event"])
    placement = "single" if jumps else draw(st.sampled_from(placements))
    # Elsewhere a single Normal's value reaches the cost through a jump in one program of two.
    jumps = jumps or (family == "normal" and placement == "single" and draw(st.booleans()))
    return Site(
        family=family,
        placement=placement,
        coefficients=tuple(draw(st.lists(coefficient, min_size=2 + index, max_size=2 + index))),
        masked=draw(st.booleans()) and draw(st.booleans()),  # one site in four
        linear=draw(cost_coefficient),
        square=draw(st.sampled_from([0.0, 0.0, 0.5, 1.0])),
        jump=draw(st.sampled_from([-1.0, 1.0, 2.0])) if jumps else 0.0,
        step=draw(st.sampled_from(sorted(STEPS))) if jumps else "floor",
    )


@st.composite
def programs(draw, loops: bool, first: str = None, jumps: bool = False) -> Program:
    """A random program; with ``first``, its first site is of that family; with ``jumps``,
    a Normal whose value jumps (placed first, second or third)."""
    count = draw(st.integers(1, 4))
    jumping = draw(st.integers(0, min(count, 3) - 1)) if jumps else -1
    program_sites = tuple(draw(sites(i, first if i == 0 else None, jumps=i == jumping)) for i in range(count))
    loop = None
    if loops and draw(st.integers(0, 2)) == 0:  # one looped program in three has a loop
        loop = Loop(tuple(draw(st.lists(coefficient, min_size=2 + count, max_size=2 + count))), draw(cost_coefficient))
    program = Program(program_sites, loop, cross=draw(cost_coefficient), pathwise=draw(st.sampled_from([0.0, 1.0])))
    assume(grid_size(program) <= MAX_GRID)
    return program


def unbiased_estimators(site: Site, num_particles: int, relaxable: bool = True) -> list:
    """Every registered estimator that applies to the site and claims to be unbiased;
    the relaxed control variates (RELAX, REBAR) only where they are ``relaxable``."""
    fn = example_distribution(site)
    options = [
        e for e in pg.applicable(fn, "expectation")
        if e.unbiased and num_particles >= e.min_particles and (relaxable or not getattr(e, "relaxes", False))
    ]
    elements = fn.batch_shape.numel() * (fn.event_shape.numel() if site.family != "multinomial" else 1)
    if elements > 1:  # a joint support too large to enumerate: Enumerate refuses it
        options = [e for e in options if not isinstance(e, Enumerate)]
    if num_particles >= 2:
        options.append(Score("loo"))
    if site.family != "normal":
        # The one-run engine (discrete sites): every such site's jumps pruned into one
        # alternative run, whatever the other sites take.
        options += [type(e)(engine="one-run") for e in options if isinstance(e, EngineChoice)]
    if site.jump:  # the pathwise derivative misses the jump (refused there); "auto" (None) must not
        options = [e for e in options if not isinstance(e, pg.gradient_estimators.PathwiseEstimator)] + [None]
    return options


def example_distribution(site: Site):
    program = Program((site,))
    captured = {}

    def keep(i, name, fn, s):
        captured["fn"] = fn
        return fn.sample()

    run(program, torch.tensor(THETA), keep)
    return captured["fn"]


def loop_estimators() -> list:
    # The loop's draws are read into Python, which relaxed control variates refuse.
    fn = torch.distributions.Bernoulli(0.5)
    return [e for e in pg.applicable(fn, "expectation") if e.unbiased and not getattr(e, "relaxes", False)]  # any K


def relaxable(program: Program, i: int) -> bool:
    """Whether a relaxed control variate may take site ``i``: no discrete site, nor the
    loop, has parameters that depend on its draw (its re-run would jump)."""
    later = [s.coefficients for s in program.sites[i + 1:] if s.family != "normal"]
    if program.loop is not None:
        later.append(program.loop.coefficients)
    return all(c[2 + i] == 0 for c in later)


def check_program(program: Program, data, vectorize: bool, first=None, one_run: bool = False) -> None:
    """``first``: the estimator of the first site (else hypothesis picks it, as the others').
    ``one_run``: every discrete site takes a one-run estimator, pruned lazily."""
    num_particles = data.draw(st.integers(max(1, first.min_particles if first else 1), 3 if vectorize else 2),
                              label="K")
    config = {
        f"s{i}": data.draw(st.sampled_from(unbiased_estimators(site, num_particles, relaxable(program, i))),
                           label=f"s{i}")
        for i, site in enumerate(program.sites)
    }
    if first is not None:
        config["s0"] = first
    if one_run:
        for i, site in enumerate(program.sites):
            lazy = [e for e in unbiased_estimators(site, num_particles) if getattr(e, "one_run", False)]
            if lazy:
                config[f"s{i}"] = data.draw(st.sampled_from(lazy), label=f"s{i} one-run")
    loop_estimator = data.draw(st.sampled_from(loop_estimators()), label="loop") if program.loop else None
    pyro.clear_param_store()  # each program's control variates start afresh
    perturb_control_variates(config)  # learned control variates away from their start

    def choose(msg):
        return config.get(msg["name"], loop_estimator)

    _, exact = exact_gradient(program, THETA)
    draws = expectation_draws(
        pg.estimators(program, choose),
        torch.tensor(THETA, requires_grad=True),
        num_samples=DRAWS[vectorize],
        num_particles=num_particles,
        vectorize=vectorize,
        mode="vectorized" if vectorize else "loop",  # looped particles: reverse mode is faster
        seed=0,
    )["theta"]
    assert torch.isfinite(draws).all()
    if one_run:  # the alternative path was carried beside the run, not chosen at once
        estimates = pg.expectation.objective(num_particles, vectorize).estimates(
            pg.estimators(program, choose), None, (torch.tensor(THETA, requires_grad=True),), {})
        assert not any("pruned at once" in why for why in estimates.reasons.values()), estimates.reasons
    mean, se = float(draws.double().mean()), standard_error_of_mean(draws)
    tolerance = Z_SUITE * se + 1e3 * ROUNDING * max(1.0, abs(exact))
    assert abs(mean - exact) <= tolerance, (
        f"{program.describe()} with {config}, loop {loop_estimator}, K={num_particles}, "
        f"vectorize={vectorize}: mean {mean:.5g} vs exact {exact:.5g} (se {se:.3g})"
    )


def suite_settings(examples: int):
    return settings(
        max_examples=examples,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    )


@suite_settings(EXAMPLES["vectorized"])
@given(program=programs(loops=False), data=st.data())
def test_every_unbiased_estimator_matches_the_exact_gradient_vectorized(program, data):
    check_program(program, data, vectorize=True)


@suite_settings(EXAMPLES["looped"])
@given(program=programs(loops=True), data=st.data())
def test_every_unbiased_estimator_matches_the_exact_gradient_looped(program, data):
    # Looped particles, where programs may also loop on a draw read by Python.
    check_program(program, data, vectorize=False)


@suite_settings(EXAMPLES["categorical"])
@given(program=programs(loops=False, first="categorical"), data=st.data())
def test_rodeo_on_a_categorical_matches_the_exact_gradient(program, data):
    # RODEO's categorical form (its own extension of the authors' binary code) at a
    # Categorical first site, whose index later sites and the cost use arithmetically.
    assume(not program.sites[0].masked)  # RODEO refuses a masked site before its draw
    check_program(program, data, vectorize=True, first=pg.RODEO())


@suite_settings(EXAMPLES["jumps"])
@given(program=programs(loops=False, jumps=True), data=st.data())
def test_programs_that_jump_in_a_continuous_draw_match_the_exact_gradient(program, data):
    # A Normal's value reaches the cost through floor, round, a threshold, sign or a
    # where: its site takes an estimator that needs no smoothness, or "auto", which must.
    check_program(program, data, vectorize=True)


@suite_settings(EXAMPLES["one_run"])
@given(program=programs(loops=False), data=st.data())
def test_lazily_pruned_one_run_sites_match_the_exact_gradient(program, data):
    # Every discrete site on a one-run engine: their jumps compete as the program runs,
    # the alternative path carried beside every value (pyro_grad.engine.lazy_pruning),
    # later sites' parameters depending on earlier draws.
    check_program(program, data, vectorize=True, one_run=True)


def test_the_reference_matches_closed_forms():
    # Bernoulli(σ(θ)) ... E[b] = 0.05 + 0.9σ(θ): d/dθ = 0.9σ(1−σ).
    theta = THETA
    s = torch.sigmoid(torch.tensor(theta, dtype=torch.float64))
    program = Program((Site("bernoulli", "single", (0.0, 1.0)),))
    value, grad = exact_gradient(program, theta)
    assert value == pytest.approx(float(0.05 + 0.9 * s), abs=1e-12)
    assert grad == pytest.approx(float(0.9 * s * (1 - s)), abs=1e-12)
    # Normal(θ, σ_z = 0.5 + 0.5σ(θ)), cost floor(z): ∂θ E = Σ_k ∂θ P(z ≥ k), by the CDF.
    program = Program((Site("normal", "single", (0.0, 1.0), linear=0.0, jump=1.0, step="floor"),))
    value, grad = exact_gradient(program, theta)
    t = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
    law = torch.distributions.Normal(t, 0.5 + 0.5 * torch.sigmoid(t))
    closed = sum(1 - law.cdf(torch.tensor(float(k), dtype=torch.float64)) for k in range(1, 12)) - sum(
        law.cdf(torch.tensor(float(k), dtype=torch.float64)) for k in range(-11, 1))
    (closed_grad,) = torch.autograd.grad(closed, t)
    assert value == pytest.approx(float(closed), abs=1e-9)
    assert grad == pytest.approx(float(closed_grad), abs=1e-9)
    # Normal(θ, 0.5 + 0.5σ(θ)), cost z²: E = θ² + σ_z², by Gauss–Hermite exactly.
    program = Program((Site("normal", "single", (0.0, 1.0), linear=0.0, square=1.0),))
    value, grad = exact_gradient(program, theta)
    t = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
    closed = t**2 + (0.5 + 0.5 * torch.sigmoid(t)) ** 2
    (closed_grad,) = torch.autograd.grad(closed, t)
    assert value == pytest.approx(float(closed), abs=1e-10)
    assert grad == pytest.approx(float(closed_grad), abs=1e-10)
    # Two plated Poissons, cost their sum: E = 2λ, λ = 0.2 + 2.3σ(θ).
    program = Program((Site("poisson", "plate", (0.0, 1.0)),))
    value, grad = exact_gradient(program, theta)
    assert value == pytest.approx(float(2 * (0.2 + 2.3 * s)), abs=1e-9)
    assert grad == pytest.approx(float(2 * 2.3 * s * (1 - s)), abs=1e-9)
    # The loop: n ~ truncated geometric counting successes of q = 0.2 + 0.6σ(θ), at most 4.
    program = Program((Site("bernoulli", "single", (0.0, 0.0), linear=0.0),), loop=Loop((0.0, 1.0, 0.0)))
    value, grad = exact_gradient(program, theta)
    t = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
    q = 0.2 + 0.6 * torch.sigmoid(t)
    closed = sum(q**k for k in range(1, 5))  # E[n] = Σ_{k=1..4} P(n ≥ k) = Σ q^k
    (closed_grad,) = torch.autograd.grad(closed, t)
    assert value == pytest.approx(float(closed), abs=1e-12)
    assert grad == pytest.approx(float(closed_grad), abs=1e-12)


def test_distributions_are_valid_for_every_parameter():
    # Every family's parameter map keeps the truncation bounds: rates ≤ 2.5, Geometric probs ≥ 0.45.
    a = torch.linspace(-20, 20, 101)
    assert float(distribution(Site("poisson", "single", ()), a).rate.max()) <= 2.5 + 1e-6
    assert float(distribution(Site("geometric", "single", ()), a).probs.min()) >= 0.45 - 1e-6
