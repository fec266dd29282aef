"""MeasureValued on continuous sites: weak derivatives (Mohamed, Rosca, Figurnov & Mnih,
"Monte Carlo Gradient Estimation in Machine Learning", JMLR 2020, §6 and Table 1)
against exact gradients, in plates, events and ELBOs, and their variances against the
same formula written by hand and against closed forms.

Every tolerance is ``Z`` (conftest) standard errors computed from the draws
themselves: of a mean (``sd/√n``) or of a variance (from the fourth central moment).
Seeds are fixed (conftest seeds pyro before each test; diagnostics use ``seed=0``).
"""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import ROUNDING, Z, assert_mean, standard_error_of_mean, standard_error_of_variance
from pyro.distributions import constraints
from scipy import integrate, special, stats

import pyro_grad as pg
from pyro_grad.gradient_estimators import weak_derivatives as weak
from test_elbo import normal_guide, normal_model

N = 20_000


def phi(x: float) -> float:
    """The standard Normal density."""
    return math.exp(-x * x / 2) / math.sqrt(2 * math.pi)


def draws(program, value: float, num_samples: int = N, **settings) -> pg.diagnostics.GradientReport:
    """``num_samples`` independent MeasureValued gradients of ``E[program(θ)]`` at θ = ``value``."""
    return pg.diagnose(program, torch.tensor(value, requires_grad=True), estimators=pg.MeasureValued(),
                       num_samples=num_samples, sites=False, **settings)


def expectation_gradient(program, value: float, num_particles: int = N) -> float:
    """The gradient of ``pg.expectation`` with MeasureValued at site z, ``num_particles`` particles."""
    theta = torch.tensor(value, requires_grad=True)
    pg.expectation(pg.estimators(program, {"z": pg.MeasureValued()}), theta, num_particles=num_particles).backward()
    return float(theta.grad)


# Each program: z drawn from one family, θ one of its parameters, f, and the exact gradient.
def normal_loc_square(t):
    return pyro.sample("z", dist.Normal(t, 1.0)) ** 2  # E = θ² + 1: ∇ = 2θ


def normal_loc_step(t):
    return (pyro.sample("z", dist.Normal(t, 1.0)) > 0).float()  # E = Φ(θ): ∇ = φ(θ)


def normal_loc_round(t):
    return torch.round(pyro.sample("z", dist.Normal(t, 1.0)))  # E = Σ_k k·P(round z = k): ∇ = Σ_k φ(k + ½ − θ)


def normal_scale_square(t):
    return pyro.sample("z", dist.Normal(0.4, t)) ** 2  # E = 0.4² + θ²: ∇ = 2θ


def normal_scale_step(t):
    return (pyro.sample("z", dist.Normal(0.4, t)) > 1).float()  # E = 1 − Φ(u), u = 0.6/θ: ∇ = φ(u)·u/θ


def normal_both_square(t):
    return pyro.sample("z", dist.Normal(t, t)) ** 2  # E = 2θ²: ∇ = 4θ


def exponential_step(t):
    return (pyro.sample("z", dist.Exponential(t)) < 1).float()  # E = 1 − e^{−θ}: ∇ = e^{−θ}


def exponential_square(t):
    return pyro.sample("z", dist.Exponential(t)) ** 2  # E = 2/θ²: ∇ = −4/θ³


def gamma_rate_step(t):
    return (pyro.sample("z", dist.Gamma(2.0, t)) < 1).float()  # E = P(2, θ): ∇ = θ·e^{−θ}/Γ(2)


def gamma_rate_square(t):
    return pyro.sample("z", dist.Gamma(2.0, t)) ** 2  # E = α(α + 1)/θ²: ∇ = −2·6/θ³


def log_normal_loc(t):
    return pyro.sample("z", dist.LogNormal(t, 0.5))  # E = e^{θ + 0.125}: ∇ = e^{θ + 0.125}


def log_normal_scale_step(t):
    return (pyro.sample("z", dist.LogNormal(0.1, t)) > 1.5).float()  # u = (log 1.5 − 0.1)/θ: ∇ = φ(u)·u/θ


def uniform_high_step(t):
    return (pyro.sample("z", dist.Uniform(0.0, t)) > 1).float()  # E = (θ − 1)/θ: ∇ = 1/θ²


def uniform_low_step(t):
    return (pyro.sample("z", dist.Uniform(t, 2.0)) > 1).float()  # E = 1/(2 − θ): ∇ = 1/(2 − θ)²


def uniform_both_mean(t):
    return pyro.sample("z", dist.Uniform(t, 2 * t))  # E = 1.5θ: ∇ = 1.5


U_LOG = (math.log(1.5) - 0.1) / 0.6
CASES = [
    # program, θ, exact ∇, evaluations per particle (1 + the moving parameters' runs)
    (normal_loc_square, 0.7, 1.4, 3),
    (normal_loc_step, 0.3, phi(0.3), 3),
    (normal_loc_round, 0.3, sum(phi(k + 0.5 - 0.3) for k in range(-12, 13)), 3),
    (normal_scale_square, 1.3, 2.6, 2),
    (normal_scale_step, 0.8, phi(0.6 / 0.8) * 0.6 / 0.8**2, 2),
    (normal_both_square, 0.6, 2.4, 4),
    (exponential_step, 1.5, math.exp(-1.5), 2),
    (exponential_square, 1.5, -4 / 1.5**3, 2),
    (gamma_rate_step, 1.7, 1.7 * math.exp(-1.7), 2),
    (gamma_rate_square, 1.7, -12 / 1.7**3, 2),
    (log_normal_loc, 0.2, math.exp(0.325), 3),
    (log_normal_scale_step, 0.6, phi(U_LOG) * U_LOG / 0.6, 2),
    (uniform_high_step, 2.5, 1 / 2.5**2, 2),
    (uniform_low_step, 0.4, 1 / 1.6**2, 2),
    (uniform_both_mean, 0.7, 1.5, 3),
]


@pytest.mark.parametrize("program, value, exact, runs", CASES, ids=[case[0].__name__ for case in CASES])
def test_each_family_and_parameter_matches_its_exact_gradient(program, value, exact, runs):
    # Per-sample draws (diagnose) give the mean and its standard error; pg.expectation
    # with N particles is their average, within the same tolerance.
    report = draws(program, value)
    samples = report.samples["t"]
    assert_mean(samples, exact)
    assert report.params.iloc[0]["cost"] == runs
    tolerance = Z * standard_error_of_mean(samples) + ROUNDING * max(1.0, abs(exact))
    assert expectation_gradient(program, value) == pytest.approx(exact, abs=tolerance)


def test_a_parameter_that_does_not_move_costs_no_run():
    # Normal(θ, σ) with σ a constant: only the loc's two runs (the scale's would be wasted).
    site = pg.gradient_estimators.Site.of_distribution(dist.Normal(torch.tensor(0.0, requires_grad=True), 1.0))
    assert pg.MeasureValued().evaluations(site) == 3
    site = pg.gradient_estimators.Site.of_distribution(dist.Normal(0.0, torch.tensor(1.0, requires_grad=True)))
    assert pg.MeasureValued().evaluations(site) == 2
    site = pg.gradient_estimators.Site.of_distribution(dist.Gamma(2.0, torch.tensor(1.0, requires_grad=True)))
    assert pg.MeasureValued().evaluations(site) == 2


K = torch.tensor([1.0, 2.0, 3.0])


def plated_normals(t):
    # f = (Σ_k k·z_k)² with z_k ~ N(θk, 1): E = Σk² + θ²(Σk²)² = 14 + 196θ², ∇ = 392θ.
    with pyro.plate("elements", 3):
        z = pyro.sample("z", dist.Normal(t * K, 1.0))
    return (z * K).sum(-1) ** 2


def event_normals(t):
    # The same three Normals as one event of an Independent: ∇ = 392θ.
    z = pyro.sample("z", dist.Normal(t * K, 1.0).to_event(1))
    return (z * K).sum(-1) ** 2


def plated_events(t):
    # Two plate elements of that event, f summed over them: ∇ = 2·392θ.
    with pyro.plate("pairs", 2):
        z = pyro.sample("z", dist.Normal(t * K, 1.0).to_event(1))
    return ((z * K).sum(-1) ** 2).sum(-1)


def plated_exponentials(t):
    # z_k ~ Exp(θk), f = Σ_k 1[z_k < 1]: E = Σ_k (1 − e^{−θk}), ∇ = Σ_k k·e^{−θk}.
    with pyro.plate("elements", 3):
        z = pyro.sample("z", dist.Exponential(t * K))
    return (z < 1).float().sum(-1)


@pytest.mark.parametrize("program, exact", [
    (plated_normals, 392 * 0.5),
    (event_normals, 392 * 0.5),
    (plated_events, 2 * 392 * 0.5),
    (plated_exponentials, float((K * torch.exp(-0.5 * K)).sum())),
], ids=["plate", "event", "plate-of-events", "plate-exponential"])
def test_sites_with_several_elements_stay_unbiased(program, exact):
    # One element (or event coordinate) moved per particle, weighted by their number;
    # vectorized, and with particles run one at a time (no particle dim in the layout).
    assert_mean(draws(program, 0.5).samples["t"], exact)
    assert_mean(draws(program, 0.5, num_samples=500, vectorize=False).samples["t"], exact)


DATA = torch.tensor([0.9, 1.6, -0.3])


def test_elbo_gradient_of_a_conjugate_gaussian_guide_is_exact_in_the_mean():
    # ELBO = −½(m² + s²) − ½Σ_i((x_i − m)² + s²) + log s + const, so
    # ∂m = Σ_i x_i − (n + 1)m and ∂s = 1/s − (n + 1)s. The param "s" is unconstrained
    # (log s): its gradient is s·∂s. The site targets loc.loc and loc.scale are ∂m and ∂s.
    m, s, n = 0.3, 0.5, len(DATA)  # test_elbo's guide starts there
    d_m, d_s = float(DATA.sum()) - (n + 1) * m, 1 / s - (n + 1) * s
    report = pg.diagnose(normal_model, DATA, guide=normal_guide, estimators=pg.MeasureValued(),
                         num_samples=N)
    for name, exact in (("m", d_m), ("s", s * d_s), ("loc.loc", d_m), ("loc.scale", d_s)):
        assert_mean(report.samples[name].reshape(-1), exact)


def local_model(x):
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def local_guide(x):
    m = pyro.param("m", torch.tensor([0.2, -0.1, 0.5]))
    s = pyro.param("s", torch.tensor(0.7), constraint=constraints.positive)
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(m, s))


def test_elbo_of_a_plated_guide_moves_every_element_at_once_and_is_exact_in_the_mean():
    # Each element's terms stay in its plate element: ∂m_i = x_i − 2m_i and, for the
    # shared scale, ∂s = Σ_i (1/s − 2s). z.loc shifts every m_i at once: Σ_i ∂m_i.
    m, s = torch.tensor([0.2, -0.1, 0.5]), 0.7
    d_m = DATA - 2 * m
    d_s = len(DATA) * (1 / s - 2 * s)
    report = pg.diagnose(local_model, DATA, guide=local_guide, estimators=pg.MeasureValued(), num_samples=N)
    for i in range(3):
        assert_mean(report.samples["m"][:, i], float(d_m[i]))
    assert_mean(report.samples["s"], s * d_s)
    assert_mean(report.samples["z.loc"], float(d_m.sum()))
    assert_mean(report.samples["z.scale"], d_s)


def test_elbo_gradient_is_exactly_zero_at_the_conjugate_posterior():
    # At the posterior N(Σx/(n + 1), 1/(n + 1)) the ELBO's integrand log p(x, z) − log q(z)
    # is log p(x) for every z: each difference of f is 0, so every draw is 0 up to
    # float32 rounding of the log-densities (ROUNDING relative to |log p(x)| ≈ 5).
    n = len(DATA)
    m, s = float(DATA.sum()) / (n + 1), 1 / math.sqrt(n + 1)
    pyro.param("m", torch.tensor(m))
    pyro.param("s", torch.tensor(s), constraint=constraints.positive)
    report = pg.diagnose(normal_model, DATA, guide=normal_guide, estimators=pg.MeasureValued(),
                         num_samples=N)
    for name in ("m", "s", "loc.loc", "loc.scale"):
        assert float(report.samples[name].abs().max()) < ROUNDING * 5, name


def gamma_shape(t):
    return pyro.sample("z", dist.Gamma(t, 1.0)) ** 2


def test_a_gamma_whose_concentration_moves_is_refused_naming_the_site():
    with pytest.raises(pg.EstimatorError) as info:
        pg.expectation(pg.estimators(gamma_shape, {"z": pg.MeasureValued()}), torch.tensor(2.0, requires_grad=True))
    message = str(info.value)
    assert "'z'" in message and "Gamma" in message and "concentration" in message
    assert "Reparam()" in message and "Score()" in message  # what applies there


def test_distributions_without_a_weak_derivative_here_are_refused():
    def half_normal(t):
        return pyro.sample("z", dist.HalfNormal(t))

    def masked(t):
        return pyro.sample("z", dist.Normal(t, 1.0).mask(False))

    def beta(t):
        return pyro.sample("z", dist.Beta(t, 1.0))

    for program, name in ((half_normal, "HalfNormal"), (masked, "MaskedDistribution"), (beta, "Beta")):
        with pytest.raises(pg.EstimatorError, match=rf"MeasureValued\(\) does not apply to site 'z' \({name}"):
            pg.expectation(pg.estimators(program, {"z": pg.MeasureValued()}), torch.tensor(0.5, requires_grad=True))


def test_alternative_values_keep_the_shape_dtype_and_support():
    pyro.set_rng_seed(3)
    shape = (500, 2)
    x64 = torch.float64
    for fn in (
        dist.Normal(torch.zeros(shape, dtype=x64), torch.ones(shape, dtype=x64)),
        dist.LogNormal(torch.zeros(shape), 2.0),
        dist.Exponential(torch.full(shape, 3.0)),
        dist.Gamma(torch.full(shape, 0.5), 2.0),
        dist.Uniform(torch.full(shape, -1.0), 1.0),
    ):
        family, leaf = weak.family_of(fn)
        value = fn.sample()
        for d in weak.derivatives(family, leaf, value, frozenset(family.evaluations)):
            for alternative in (d.plus, d.minus):
                if alternative is not None:
                    assert alternative.shape == value.shape and alternative.dtype == value.dtype
                    assert fn.support.check(alternative).all(), (fn, d.parameter)
                    assert torch.isfinite(fn.log_prob(alternative)).all(), (fn, d.parameter)


def two_sided(z: float) -> float:
    """The two-sided tail probability of ``z`` standard errors: the p-value a KS test
    must exceed to agree within the same tolerance as every other assertion."""
    return 2 * stats.norm.sf(z)


def test_coupled_maxwell_is_double_sided_maxwell_and_the_rayleigh_is_rayleigh():
    # M = sign(ε)·sqrt(ε² + 2E): |M|² = ε² + χ²₂ ~ χ²₃ and its sign is symmetric, so M
    # has density m²φ(m), the double-sided Maxwell; and R = sqrt(2E) ~ Rayleigh(1).
    pyro.set_rng_seed(4)
    loc, scale, n = 0.3, 2.0, 20_000
    fn = dist.Normal(torch.full((n,), loc), scale)
    x = fn.sample()
    by_name = {d.parameter: d for d in weak.derivatives(weak.NORMAL, fn, x, frozenset({"loc", "scale"}))}
    maxwell = ((by_name["scale"].plus - loc) / scale).double().numpy()
    eps = ((x - loc) / scale).double().numpy()

    def double_sided_maxwell_cdf(m):
        return 0.5 + np.sign(m) * 0.5 * stats.maxwell.cdf(np.abs(m))

    assert stats.kstest(maxwell, double_sided_maxwell_cdf).pvalue > two_sided(Z)
    rayleigh = ((by_name["loc"].plus - by_name["loc"].minus) / (2 * scale)).double().numpy()
    assert stats.kstest(rayleigh, "rayleigh").pvalue > two_sided(Z)
    # Coupled: M keeps ε's sign and |M| ≥ |ε|.
    assert (np.sign(maxwell) == np.sign(eps)).all() and (np.abs(maxwell) >= np.abs(eps) - 1e-6).all()


# Variance against the paper's Figure 2 setups (Mohamed et al. 2020, §6 and Fig. 2):
# Gaussian N(μ, σ²), f = x² and f = cos(ωx), derivatives in μ and σ.
MU, SIGMA, OMEGA = 0.8, 1.2, 1.5


def square(x):
    return x * x


def cosine(x):
    return torch.cos(OMEGA * x)


def handwritten(parameter: str, f, n: int, generator: torch.Generator) -> torch.Tensor:
    """The same weak derivative written directly in vectorized torch, independently of
    pyro_grad: loc, (f(μ + σR) − f(μ − σR))/(σ√(2π)) with R = sqrt(2E); scale,
    (f(μ + σM) − f(μ + σε))/σ with M = sign(ε)·sqrt(ε² + 2E)."""
    e = torch.empty(n, dtype=torch.float64).exponential_(generator=generator)
    if parameter == "loc":
        r = torch.sqrt(2 * e)
        return (f(MU + SIGMA * r) - f(MU - SIGMA * r)) / (SIGMA * math.sqrt(2 * math.pi))
    eps = torch.randn(n, dtype=torch.float64, generator=generator)
    m = torch.where(eps < 0, -1.0, 1.0) * torch.sqrt(eps**2 + 2 * e)
    return (f(MU + SIGMA * m) - f(MU + SIGMA * eps)) / SIGMA


def rayleigh_expectation(g) -> float:
    return integrate.quad(lambda r: g(r) * r * math.exp(-r * r / 2), 0, np.inf, limit=200)[0]


def coupled_expectation(g) -> float:
    """E[g(ε, e)] over ε ~ N(0, 1) and e ~ Exp(1), by quadrature."""
    return integrate.dblquad(lambda e, x: g(x, e) * phi(x) * math.exp(-e), -12, 12, 0, 60)[0]


def exact_variance(parameter: str, name: str) -> float:
    """The per-sample variance of the weak derivative in closed form (up to quadrature).

    loc, x²: the estimate is 4μR/√(2π), variance 16μ²·Var R/(2π) = 4μ²(4 − π)/π.
    loc, cos: −2c·sin(ωμ)·sin(ωσR) with c = 1/(σ√(2π)): 4c²sin²(ωμ)·Var sin(ωσR).
    scale, x²: 2μ(M − ε) + σ(M² − ε²) = 2μ·sign(ε)(|M| − |ε|) + 2σE, whose two parts are
    uncorrelated (the sign is independent of the rest): 4μ²(4 − 2·E|ε|·sqrt(ε² + 2E)) + 4σ²,
    with E_E sqrt(a + 2E) = √a + e^{a/2}·sqrt(π/2)·erfc(sqrt(a/2)).
    scale, cos: (cos(ω(μ + σM)) − cos(ω(μ + σε)))/σ, its moments by quadrature over (ε, E).
    """
    if parameter == "loc" and name == "square":
        return 4 * MU**2 * (4 - math.pi) / math.pi
    if parameter == "loc":
        c = 1 / (SIGMA * math.sqrt(2 * math.pi))
        a = OMEGA * SIGMA
        m1 = rayleigh_expectation(lambda r: math.sin(a * r))
        m2 = rayleigh_expectation(lambda r: math.sin(a * r) ** 2)
        return 4 * c**2 * math.sin(OMEGA * MU) ** 2 * (m2 - m1**2)
    if name == "square":
        def inner(a):
            return math.sqrt(a) + math.exp(a / 2) * math.sqrt(math.pi / 2) * special.erfc(math.sqrt(a / 2))

        cross = 2 * integrate.quad(lambda x: x * inner(x * x) * phi(x), 0, 12)[0]
        return 4 * MU**2 * (4 - 2 * cross) + 4 * SIGMA**2

    def estimate(x, e):
        m = math.copysign(math.sqrt(x * x + 2 * e), x)
        return (math.cos(OMEGA * (MU + SIGMA * m)) - math.cos(OMEGA * (MU + SIGMA * x))) / SIGMA

    m1 = coupled_expectation(estimate)
    m2 = coupled_expectation(lambda x, e: estimate(x, e) ** 2)
    return m2 - m1**2


def exact_mean(parameter: str, name: str) -> float:
    """∂ of E[x²] = μ² + σ² and of E[cos ωx] = cos(ωμ)·e^{−ω²σ²/2}."""
    if name == "square":
        return 2 * MU if parameter == "loc" else 2 * SIGMA
    damping = math.exp(-(OMEGA * SIGMA) ** 2 / 2)
    if parameter == "loc":
        return -OMEGA * math.sin(OMEGA * MU) * damping
    return -math.cos(OMEGA * MU) * OMEGA**2 * SIGMA * damping


def figure_2_program(parameter: str, f):
    def program(t):
        fn = dist.Normal(t, SIGMA) if parameter == "loc" else dist.Normal(MU, t)
        return f(pyro.sample("z", fn))
    return program


@pytest.mark.parametrize("parameter", ["loc", "scale"])
@pytest.mark.parametrize("name, f", [("square", square), ("cos", cosine)], ids=["square", "cos"])
def test_variance_matches_a_handwritten_version_and_the_closed_form(parameter, name, f):
    value = MU if parameter == "loc" else SIGMA
    ours = draws(figure_2_program(parameter, f), value).samples["t"].double()
    theirs = handwritten(parameter, f, N, torch.Generator().manual_seed(5))
    assert_mean(ours, exact_mean(parameter, name))
    assert_mean(theirs, exact_mean(parameter, name))
    # Two independent samples of the same law: their variances differ by less than Z
    # standard errors of the difference (each from its fourth moment; an F-test would
    # assume Normal draws, and these are not).
    se = math.hypot(standard_error_of_variance(ours), standard_error_of_variance(theirs))
    assert abs(float(ours.var()) - float(theirs.var())) <= Z * se
    exact = exact_variance(parameter, name)
    for sample in (ours, theirs):
        assert abs(float(sample.var()) - exact) <= Z * standard_error_of_variance(sample), (float(sample.var()), exact)


def test_coupling_the_maxwell_to_the_draw_lowers_the_scale_variance():
    # Uncoupled (M independent of ε, as in the paper's estimator) the scale estimate for
    # f = x² is 2μ(M − ε) + σ(M² − ε²), of variance 4μ²·(3 + 1) + σ²·(Var χ²₃ + Var χ²₁)
    # = 16μ² + 8σ²; coupled it is exact_variance("scale", "square"), less than half.
    coupled = exact_variance("scale", "square")
    uncoupled = 16 * MU**2 + 8 * SIGMA**2
    assert coupled < uncoupled / 2
    ours = draws(figure_2_program("scale", square), SIGMA).samples["t"].double()
    assert float(ours.var()) < uncoupled / 2 - Z * standard_error_of_variance(ours)


def test_diagnosing_a_gamma_rate_names_the_shift_of_its_concentration():
    # pg.diagnose shifts each site's own parameters too (sites=True): the Gamma's
    # concentration then moves, after the handler chose, and the error says so.
    with pytest.raises(pg.EstimatorError, match=r"site 'z' \(Gamma\): its concentration moves.*sites=False"):
        pg.diagnose(gamma_rate_step, torch.tensor(1.7, requires_grad=True), estimators=pg.MeasureValued(),
                    num_samples=10)
    report = pg.diagnose(gamma_rate_step, torch.tensor(1.7, requires_grad=True), estimators=pg.MeasureValued(),
                         num_samples=10, sites=False)
    assert report.estimators == {"z": pg.MeasureValued()}
