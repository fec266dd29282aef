"""Every estimator's own formula, on hand-made per-sample inputs.

In the style of Optax's retired ``monte_carlo`` tests: per-sample values go in, per-sample
values come out, and each is compared with the formula written out by hand here, never
computed by the code under test. These tests call the estimator's own method
(``surrogate``, ``importance_signal``, ``alternatives`` / ``alternative_terms`` /
``alternative_loss``, ``prepare``) directly, beside the end-to-end checks that go through
the whole objective stack.

How the inputs are made:

* Score-function estimators get a ``ScoreSite`` whose ``score`` is built by hand, e.g.
  ``score = θ_g · x_{g,k}`` with ``θ`` a leaf of shape ``(G,)``, so that
  ``∂ score_{g,k} / ∂θ_g = x_{g,k}``: the gradient of ``terms.sum()`` in ``θ`` is each
  sample's estimate, compared with the hand formula; and ``terms`` must be zero in value.
* Difference estimators get a ``SiteDraw`` of a distribution whose parameter is a leaf
  that requires grad (one element per particle, batch ``(K,)``, or a plate), the values
  of f at the alternatives computed here from a hand-chosen Python function f, and
  ``CoupledRuns``; the gradient of ``alternative_terms(...)`` in the parameter is each
  particle's estimate (the objectives average those per-particle terms over particles,
  ``engine.surrogate.joined_terms``).
* Relaxations and pathwise estimators: ``prepare(msg)`` on a message ``{"fn": ...}``, then
  ``msg["fn"].rsample()`` under a fixed seed.

Tolerance: every identity here is exact in real arithmetic; the library computes in
float32 (eps = 1.2e-7) through at most a few dozen operations, the references in
float64, so values agree to ``ATOL = 1e-6`` relative to ``max(1, |expected|)``
(:func:`assert_close`). The parameter draws and uniform noise come from fixed seeds;
nothing here is Monte Carlo.
"""

import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_grad.baselines import LEARNED_PREFIX, RunningAverages
from pyro_grad.engine.particles import ParticleLayout
from pyro_grad.errors import EstimatorError
from pyro_grad.gradient_estimators import (
    ARM,
    DReG,
    REBAR,
    REGISTRY,
    RELAX,
    RODEO,
    STL,
    VIMCO,
    CoupledRuns,
    DisARM,
    DoubleCV,
    Enumerate,
    GumbelSoftmax,
    IndeCateR,
    MeasureValued,
    PathwiseEstimator,
    ReinMax,
    Reparam,
    Score,
    ScoreSite,
    SiteDraw,
    StraightThrough,
    ValueGradient,
)
from pyro_grad.gradient_estimators.base import drops_score_of_q

#: float32 rounding through a few dozen operations, relative to max(1, |expected|).
ATOL = 1e-6

#: Every estimator class some test below checks the formula of (filled at collection,
#: so that it is complete in every pytest-xdist worker).
COVERED = set()


def covers(*classes):
    """Mark a test as checking the formula of ``classes``."""

    def mark(test):
        COVERED.update(classes)
        return test

    return mark


def assert_close(actual, expected, atol=ATOL):
    """``actual`` (the library's, float32) equals ``expected`` (the hand formula, float64)
    to ``atol`` relative to ``max(1, max |expected|)``."""
    expected = torch.as_tensor(expected, dtype=torch.float64)
    actual = torch.as_tensor(actual).detach().to(torch.float64)
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} vs {tuple(expected.shape)}"
    tolerance = atol * max(1.0, float(expected.abs().max()) if expected.numel() else 1.0)
    assert torch.allclose(actual, expected, rtol=0.0, atol=tolerance), (
        f"\nactual   {actual.tolist()}\nexpected {expected.tolist()}"
    )


def grad(output, inputs):
    """∂ output.sum() / ∂ inputs (one tensor or a tuple)."""
    return torch.autograd.grad(output.sum(), inputs, retain_graph=True, allow_unused=True)


def flip_difference(f_of, point: list, d: int) -> float:
    """f at ``point`` with coordinate ``d`` set to 1, minus f with it set to 0."""
    up, down = list(point), list(point)
    up[d], down[d] = 1.0, 0.0
    return f_of(up) - f_of(down)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def seeded(shape, seed, kind="normal"):
    """Hand-made inputs of a given shape, reproducible: standard normal or 0/1 values."""
    generator = torch.Generator().manual_seed(seed)
    if kind == "bits":
        return torch.randint(0, 2, shape, generator=generator).float()
    return torch.randn(shape, generator=generator)


@pytest.fixture(autouse=True)
def fresh_param_store():
    """The learned parameters (DoubleCV's α, RODEO's, RELAX's) start at their initial values."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    yield
    pyro.clear_param_store()


# ------------------------------------------------------------------------------------
# Score: (1/K) Σ_k ∇log q(z_k) (f_k − b_k), per sample
# ------------------------------------------------------------------------------------

#: (G, K) and (G, K, N): G samples of K particles, with and without a plate of N.
SCORE_SHAPES = [(1, 4), (3, 2), (2, 3, 5)]


def score_site(shape, name="z", averages=None, args=(), kwargs=None, f_seed=2):
    """``score = θ_g · x`` (θ a leaf of shape (G,)), hand-made ``x`` and ``f``."""
    theta = torch.linspace(0.3, 0.9, shape[0]).requires_grad_()
    x = seeded(shape, 1)
    f = seeded(shape, f_seed)
    score = theta.reshape((-1,) + (1,) * (len(shape) - 1)) * x
    return theta, x, f, ScoreSite(name, score, f, averages, args, kwargs or {})


def hand_score_gradient(x, f, b):
    """``(1/K) Σ_k Σ_n x_{g,k,n} (f_{g,k,n} − b_{g,k,n})`` for every sample g, in Python."""
    x, f, b = (t.reshape(t.shape[0], t.shape[1], -1).tolist() for t in (x, f, b))
    out = []
    for xg, fg, bg in zip(x, f, b):
        k = len(xg)
        out.append(sum(xkn * (fkn - bkn) for xk, fk, bk in zip(xg, fg, bg) for xkn, fkn, bkn in zip(xk, fk, bk)) / k)
    return out


def hand_leave_one_out(f):
    """``b_{g,k,n} = (1/(K − 1)) Σ_{j≠k} f_{g,j,n}``, element by element in Python."""
    flat = f.reshape(f.shape[0], f.shape[1], -1).tolist()
    out = [[[sum(fg[j][n] for j in range(len(fg)) if j != k) / (len(fg) - 1) for n in range(len(fg[0]))]
            for k in range(len(fg))] for fg in flat]
    return torch.tensor(out, dtype=torch.float64).reshape(f.shape)


@covers(Score)
@pytest.mark.parametrize("shape", SCORE_SHAPES)
def test_score_without_baseline_is_reinforce(shape):
    """Score(): ĝ_g = (1/K) Σ_k ∇θ log q(z_{g,k}) · f_{g,k} (REINFORCE, per sample); the
    terms are zero in value and there is no auxiliary loss."""
    theta, x, f, site = score_site(shape)
    terms, aux = Score().surrogate(site)
    assert_close(terms, torch.zeros(shape[0]))
    assert_close(aux, torch.zeros(shape[0]))
    (g,) = grad(terms, theta)
    assert_close(g, hand_score_gradient(x, f, torch.zeros(shape)))


@covers(Score)
@pytest.mark.parametrize("shape", SCORE_SHAPES[1:] + [(1, 5, 2)])
def test_score_leave_one_out_baseline_is_rloo(shape):
    """Score("loo") (RLOO): b_{g,k} = (1/(K − 1)) Σ_{j≠k} f_{g,j}, per plate element;
    ĝ_g = (1/K) Σ_k ∇log q(z_{g,k}) (f_{g,k} − b_{g,k})."""
    theta, x, f, site = score_site(shape)
    terms, aux = Score("loo").surrogate(site)
    assert_close(terms, torch.zeros(shape[0]))
    assert_close(aux, torch.zeros(shape[0]))
    (g,) = grad(terms, theta)
    assert_close(g, hand_score_gradient(x, f, hand_leave_one_out(f)))


def test_score_leave_one_out_refuses_one_particle():
    """Score("loo") has no other particle to leave the draw out of at K = 1."""
    _, _, _, site = score_site((2, 1))
    with pytest.raises(EstimatorError, match="num_particles >= 2"):
        Score("loo").surrogate(site)


@covers(Score)
@pytest.mark.parametrize("shape", SCORE_SHAPES)
def test_score_constant_baseline(shape):
    """Score(1.25): ĝ_g = (1/K) Σ_k ∇log q(z_{g,k}) (f_{g,k} − 1.25)."""
    theta, x, f, site = score_site(shape)
    terms, _ = Score(1.25).surrogate(site)
    assert_close(terms, torch.zeros(shape[0]))
    (g,) = grad(terms, theta)
    assert_close(g, hand_score_gradient(x, f, torch.full(shape, 1.25)))


@covers(Score)
@pytest.mark.parametrize("shape", SCORE_SHAPES)
def test_score_decaying_average_baseline_over_two_steps(shape):
    """Score("decay", beta=0.8), TraceGraph_ELBO's decaying average, one per element of f:
    step 1 uses b = 0 and stores a₁ = (1 − β)·mean_{g,k} f¹; step 2 uses b = a₁ and
    stores a₂ = β·a₁ + (1 − β)·mean_{g,k} f²."""
    beta, averages = 0.8, RunningAverages()
    theta, x, f1, site = score_site(shape, averages=averages)
    terms, _ = Score("decay", beta=beta).surrogate(site)
    (g,) = grad(terms, theta)
    assert_close(g, hand_score_gradient(x, f1, torch.zeros(shape)))
    rest = shape[2:]
    f1_flat = f1.reshape(-1, *rest).double()
    a1 = (1 - beta) * sum(f1_flat[i] for i in range(f1_flat.shape[0])) / f1_flat.shape[0]
    assert_close(averages.get("z"), a1)

    theta, x, f2, site = score_site(shape, averages=averages, f_seed=3)
    terms, _ = Score("decay", beta=beta).surrogate(site)
    (g,) = grad(terms, theta)
    assert_close(g, hand_score_gradient(x, f2, a1.expand(shape)))
    f2_flat = f2.reshape(-1, *rest).double()
    a2 = beta * a1 + (1 - beta) * sum(f2_flat[i] for i in range(f2_flat.shape[0])) / f2_flat.shape[0]
    assert_close(averages.get("z"), a2)


@covers(Score)
@pytest.mark.parametrize("shape", SCORE_SHAPES)
def test_score_pooled_average_baseline_is_bias_corrected(shape):
    """Score("pooled", beta=0.8): one average per site over every particle and element,
    bias-corrected as Adam's moments: b₁ = 0, m₁ = (1 − β)·mean f¹; b₂ = m₁/(1 − β) =
    mean f¹, m₂ = β·m₁ + (1 − β)·mean f²; b₃ = m₂/(1 − β²)."""
    beta, averages = 0.8, RunningAverages()
    estimator = Score("pooled", beta=beta)
    means, baselines = [], []
    for step, seed in enumerate((2, 3, 4)):
        theta, x, f, site = score_site(shape, averages=averages, f_seed=seed)
        terms, _ = estimator.surrogate(site)
        (g,) = grad(terms, theta)
        flat = f.reshape(-1).tolist()
        means.append(sum(flat) / len(flat))
        if step == 0:
            b = 0.0
        else:  # m_t = β m_{t−1} + (1 − β) mean f^t, m_0 = 0; b_{t+1} = m_t / (1 − β^t)
            m = 0.0
            for mean in means[:-1]:
                m = beta * m + (1 - beta) * mean
            b = m / (1 - beta**step)
        baselines.append(b)
        assert_close(g, hand_score_gradient(x, f, torch.full(shape, b)))
    assert baselines[1] == pytest.approx(means[0], rel=1e-12)


def test_score_auto_baseline_resolves_by_particles():
    """Score("auto") is Score("loo") at K ≥ 2 particles and Score("pooled") at K = 1."""
    assert Score("auto", beta=0.7).resolve(3) == Score("loo", beta=0.7)
    assert Score("auto", beta=0.7).resolve(1) == Score("pooled", beta=0.7)


class Affine(torch.nn.Module):
    """A learned baseline b(x) = w·x + c of the program's input x."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.5))
        self.c = torch.nn.Parameter(torch.tensor(-0.25))

    def forward(self, x):
        return self.w * x + self.c


@covers(Score)
def test_score_learned_baseline_and_its_squared_error():
    """Score(baseline=nn.Module), Pyro's nn_baseline: b = w·u + c of the program's input
    u (one per plate element), ĝ_g = (1/K) Σ_{k,n} x (f − b), and the auxiliary loss
    ℓ_g = Σ_{k,n} (f_{g,k,n} − b_n)² / K, whose gradient in w is
    Σ_{k,n} −2 (f − b) u_n / K; the module is registered as LEARNED_PREFIX + site."""
    shape = (2, 3, 4)
    u = torch.tensor([0.0, 1.0, -2.0, 3.0], requires_grad=True)
    module = Affine()
    theta, x, f, site = score_site(shape, args=(u,))
    terms, aux = Score(module).surrogate(site)
    b = torch.tensor([0.5 * v - 0.25 for v in u.tolist()], dtype=torch.float64)
    assert_close(terms, torch.zeros(2))
    (g,) = grad(terms, theta)
    assert_close(g, hand_score_gradient(x, f, b.expand(shape)))
    fd = f.double()
    assert_close(aux, [sum(float(fd[gi, k, n] - b[n]) ** 2 for k in range(3) for n in range(4)) / 3 for gi in range(2)])
    g_w, g_u = grad(aux, (module.w, u))
    assert g_u is None  # the program's inputs are detached: the baseline never sees a draw
    assert grad(aux, theta)[0] is None  # the squared error trains the baseline alone
    assert_close(g_w, sum(-2 * float(fd[gi, k, n] - b[n]) * u.tolist()[n]
                          for gi in range(2) for k in range(3) for n in range(4)) / 3)
    assert LEARNED_PREFIX + "z$$$w" in pyro.get_param_store().keys()


@covers(Score)
def test_score_importance_signal_is_the_bound_minus_a_constant():
    """Score in pg.IWAE: every particle's signal is L = log (1/K) Σ_j w_j (here of the
    log-weights 0.5, −1, 2, 0.25 and, beside them in a plate, −0.3, 0.1, 0.7, 1.5),
    minus the constant baseline; a baseline built from the particles is refused."""
    columns = [[0.5, -1.0, 2.0, 0.25], [-0.3, 0.1, 0.7, 1.5]]
    log_weights = torch.tensor(columns).T.unsqueeze(0)  # (G=1, K=4, N=2)
    bounds = [math.log(sum(math.exp(v) for v in column) / 4) for column in columns]
    expected = torch.tensor(bounds, dtype=torch.float64).expand(1, 4, 2)
    assert_close(Score().importance_signal("z", log_weights), expected)
    assert_close(Score(0.75).importance_signal("z", log_weights), expected - 0.75)
    with pytest.raises(EstimatorError, match="VIMCO"):
        Score("loo").importance_signal("z", log_weights)


@covers(VIMCO)
def test_vimco_signal_is_the_bound_minus_its_leave_one_out_bound():
    """VIMCO (Mnih & Rezende 2016): signal_k = L − L^{−k}, L = log (1/K) Σ_j w_j and
    L^{−k} = log (1/K) (Σ_{j≠k} w_j + exp(mean_{j≠k} log w_j)), w_k replaced by the
    geometric mean of the others; two samples (G = 2) of K = 4 and K = 3 log-weights."""
    for rows in ([[0.5, -1.0, 2.0, 0.25], [3.0, 3.0, -2.0, 0.0]], [[1.0, 0.0, -4.0], [0.2, 0.2, 0.2]]):
        log_weights = torch.tensor(rows)
        expected = []
        for row in rows:
            k = len(row)
            bound = math.log(sum(math.exp(v) for v in row) / k)
            signal = []
            for i in range(k):
                others = [v for j, v in enumerate(row) if j != i]
                replaced = sum(math.exp(v) for v in others) + math.exp(sum(others) / (k - 1))
                signal.append(bound - math.log(replaced / k))
            expected.append(signal)
        assert_close(VIMCO().importance_signal("z", log_weights), expected)
    # A plate of N = 2 elements, (G=1, K=3, N=2): each element's column on its own.
    columns = [[1.0, 0.0, -4.0], [0.2, -0.7, 0.9]]
    expected = []
    for column in columns:
        bound = math.log(sum(math.exp(v) for v in column) / 3)
        expected.append([bound - math.log((sum(math.exp(v) for j, v in enumerate(column) if j != i)
                                           + math.exp(sum(v for j, v in enumerate(column) if j != i) / 2)) / 3)
                         for i in range(3)])
    signal = VIMCO().importance_signal("z", torch.tensor(columns).T.unsqueeze(0))
    assert_close(signal, torch.tensor(expected, dtype=torch.float64).T.unsqueeze(0))
    # Equal log-weights: every L^{−k} = L, no signal.
    assert_close(VIMCO().importance_signal("z", torch.full((1, 3), 0.2)), torch.zeros(1, 3))


def test_vimco_has_no_surrogate_outside_the_importance_weighted_bound():
    """VIMCO is derived for pg.IWAE only: it has learning signals, no plain surrogate."""
    _, _, _, site = score_site((1, 3))
    with pytest.raises(NotImplementedError):
        VIMCO().surrogate(site)
    assert VIMCO.objectives == frozenset({"iwae"})
    # At K = 1 there are no other particles to form L^{−k} from: one clear error, not NaN.
    with pytest.raises(EstimatorError, match=r"VIMCO\(\) at site 'z' needs num_particles >= 2"):
        VIMCO().importance_signal("z", torch.zeros(1, 1))


# ------------------------------------------------------------------------------------
# DoubleCV and RODEO: RLOO plus control variates from ∇_value f
# ------------------------------------------------------------------------------------

#: How f meets a Bernoulli site of G samples × K particles: one element per particle
#: ("scalar"), a plate of N elements each with its own f ("plate"), an event of N
#: coordinates sharing one f ("event": one unit, the Taylor term a dot product), a plate
#: whose elements share one f (G, K, 1) ("plate, one f": pg.expectation's); and a plate
#: whose probabilities differ by particle ("plate, θ per particle": θ depends on
#: earlier draws).
LAYOUTS = ["scalar", "plate", "event", "plate, one f", "plate, θ per particle"]


def bernoulli_value_gradient_site(layout, g=2, k=3, n=4, name="z"):
    """A Bernoulli site's ScoreSite with hand-made draws b, value gradients ∇_b f and f:
    logits φ a leaf (G, 1[, N]) (or (G, K, N), one per particle), score
    log q(b) = b·logσ(φ) + (1 − b)·logσ(−φ)."""
    value_shape = (g, k) if layout == "scalar" else (g, k, n)
    per_particle = layout.endswith("per particle")
    phi = seeded(value_shape if per_particle else (g, 1) + value_shape[2:], 5).mul(0.8).requires_grad_()
    b = seeded(value_shape, 6, "bits")
    gradient = seeded(value_shape, 7)
    f = seeded({"event": (g, k), "plate, one f": (g, k, 1)}.get(layout, value_shape), 8)
    logits = phi.expand(value_shape)
    probs = torch.sigmoid(logits)
    log_q = b * torch.nn.functional.logsigmoid(logits) + (1 - b) * torch.nn.functional.logsigmoid(-logits)
    score = log_q.sum(-1) if layout == "event" else log_q
    draw = ValueGradient(b, probs, logits, gradient, "bernoulli")
    return phi, ScoreSite(name, score, f, draw=draw)


def hand_double_cv(site, alpha):
    """DoubleCV on the logits by hand (Titsias & Shi 2022), for each sample g and each
    particle k's share (the logits' gradient sums them over particles it shares):

        T_k      = Σ_{d∈unit} ḡ_{−k,d} (b_{k,d} − θ_{k,d}),  ḡ_{−k,d} = mean_{j≠k} g_{j,d}
        A_k      = (f_k + α T_k) − mean_{j≠k} (f_j + α T_j)
        ĝ_{k,d}  = (1/K) (b_{k,d} − θ_{k,d}) A_k − (1/K) α ḡ_{−k,d} θ_{k,d} (1 − θ_{k,d})

    (the score of a Bernoulli in its logit is b − θ, and ∂θ/∂φ = θ(1 − θ)). Returns the
    shares ĝ (G, K, D), and ∂ĝ/∂α (ĝ is affine in α)."""
    draw = site.draw
    b, theta, gv = (t.double() for t in (draw.value, draw.probs.detach(), draw.gradient))
    f = site.f.double()
    if b.dim() == 2:  # one coordinate per particle
        b, theta, gv = b.unsqueeze(-1), theta.unsqueeze(-1), gv.unsqueeze(-1)
    if f.dim() == 2:
        f = f.unsqueeze(-1)
    shared = f.shape[-1] == 1  # one f for every coordinate (an event, or a plate sharing f)
    G, K, D = b.shape
    estimate, slope_in_alpha = torch.zeros(G, K, D, dtype=torch.float64), torch.zeros(G, K, D, dtype=torch.float64)
    for s in range(G):
        units = [list(range(D))] if shared else [[d] for d in range(D)]
        for unit in units:
            fk = [float(f[s, k, 0 if shared else unit[0]]) for k in range(K)]

            def gbar(k, d):
                return sum(float(gv[s, j, d]) for j in range(K) if j != k) / (K - 1)

            t = [sum(gbar(k, d) * float(b[s, k, d] - theta[s, k, d]) for d in unit) for k in range(K)]
            for a, out in ((alpha, estimate), (None, slope_in_alpha)):
                # With a = None: the coefficient of α (the f's drop out of its A_k).
                corrected = [(fk[k] + a * t[k]) if a is not None else t[k] for k in range(K)]
                advantage = [corrected[k] - sum(corrected[j] for j in range(K) if j != k) / (K - 1) for k in range(K)]
                for d in unit:
                    for k in range(K):
                        th = float(theta[s, k, d])
                        out[s, k, d] = (float(b[s, k, d] - th) * advantage[k]
                                        - (1.0 if a is None else a) * gbar(k, d) * th * (1 - th)) / K
    return estimate, slope_in_alpha


def on_leaf(shares, phi):
    """Per-particle shares (G, K, D) as the gradient of the logits leaf ``phi``: summed
    over the particles that share one logit."""
    if phi.shape[1] == 1 and shares.shape[1] > 1:
        shares = shares.sum(1, keepdim=True)
    return shares.reshape(phi.shape)


def squared_norm_on_logits(shares):
    """The auxiliary loss Σ ĝ² of DoubleCV and RODEO: Σ_d (Σ_k ĝ_{k,d})², per sample."""
    return (shares.sum(1) ** 2).sum(1)


@covers(DoubleCV)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_double_cv_starts_as_rloo(layout):
    """DoubleCV with α at its initial value 0 (a fresh param store) is RLOO:
    ĝ_d = (1/K) Σ_k (b_{k,d} − θ_{k,d})(f_k − mean_{j≠k} f_j); its auxiliary loss is
    the estimate's squared norm on the logits, Σ_d ĝ_d², and its gradient in α is
    2 Σ_d ĝ_d ∂ĝ_d/∂α (hand formula in :func:`hand_double_cv`)."""
    phi, site = bernoulli_value_gradient_site(layout)
    terms, aux = DoubleCV().surrogate(site)
    alpha = pyro.param("_pyro_grad_doublecv_z.alpha")
    assert alpha.item() == 0.0
    assert_close(terms, torch.zeros(2))
    (g,) = grad(terms, phi)
    expected, in_alpha = hand_double_cv(site, 0.0)
    # RLOO by hand: the advantage is f minus the mean of the other particles' f.
    b, theta = site.draw.value.double(), site.draw.probs.detach().double()
    f = site.f.double()
    f = f if f.dim() == b.dim() else f.unsqueeze(-1)
    rloo = (b - theta) * (f - hand_leave_one_out(f)) / b.shape[1]
    assert_close(expected.reshape(rloo.shape), rloo, atol=1e-12)
    assert_close(g, on_leaf(expected, phi))
    assert_close(aux, squared_norm_on_logits(expected))
    assert grad(aux, phi)[0] is None  # the auxiliary loss reaches α alone
    (g_alpha,) = grad(aux, alpha)
    assert_close(g_alpha, 2 * (expected.sum(1) * in_alpha.sum(1)).sum())


@covers(DoubleCV)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_double_cv_taylor_term_and_its_expectation(layout):
    """DoubleCV with α = 0.7: RLOO of f + α ḡ_{−k}·(b_k − θ_k) minus its exact expectation
    α ḡ_{−k} ⊙ ∂θ_k (module docs; Titsias & Shi 2022), on the logits (:func:`hand_double_cv`)."""
    phi, site = bernoulli_value_gradient_site(layout)
    pyro.param("_pyro_grad_doublecv_z.alpha", torch.tensor(0.7))
    terms, aux = DoubleCV().surrogate(site)
    assert_close(terms, torch.zeros(2))
    (g,) = grad(terms, phi)
    expected, in_alpha = hand_double_cv(site, 0.7)
    assert_close(g, on_leaf(expected, phi))
    assert_close(aux, squared_norm_on_logits(expected))
    assert grad(aux, phi)[0] is None  # the auxiliary loss reaches α alone
    (g_alpha,) = grad(aux, pyro.param("_pyro_grad_doublecv_z.alpha"))
    assert_close(g_alpha, 2 * (expected.sum(1) * in_alpha.sum(1)).sum())


def enumerated_pairs(p, f, df):
    """Every joint draw of K = 2 particles of D independent Bernoulli(p) coordinates, as
    G = 4^D samples: values (G, 2, D), f and ∇_b f at them, and each draw's probability."""
    d = len(p)
    points = list(itertools.product((0.0, 1.0), repeat=d))
    pairs = list(itertools.product(points, repeat=2))
    b = torch.tensor(pairs)  # (G, 2, D)
    weight = [math.prod(pi if x else 1 - pi for point in pair for pi, x in zip(p, point)) for pair in pairs]
    fb = torch.tensor([[f(point) for point in pair] for pair in pairs])
    gb = torch.tensor([[df(point) for point in pair] for pair in pairs])
    return b, fb, gb, weight


@covers(DoubleCV, RODEO)
@pytest.mark.parametrize("estimator, params", [
    (DoubleCV(), {"_pyro_grad_doublecv_z.alpha": 0.7}),
    (RODEO(), {"_pyro_grad_rodeo_z.alpha": 0.6, "_pyro_grad_rodeo_z.beta": -0.9}),
], ids=["DoubleCV", "RODEO"])
def test_value_gradient_estimators_are_unbiased_over_every_joint_draw(estimator, params):
    """For f(b) = (b₁ + 2b₂ − 0.5)² of two Bernoulli coordinates (an event) and K = 2
    particles, the probability-weighted sum of the per-sample estimates over all 16
    joint draws is the exact gradient ∂φ_d E[f] = Σ_b q(b)(b_d − p_d) f(b), for any
    value of the control variates' parameters (DoubleCV's α, RODEO's α, β and network)."""
    for name, value in params.items():
        pyro.param(name, torch.tensor(value))
    phi0 = [0.4, -1.1]
    p = [sigmoid(v) for v in phi0]

    def f(x):
        return (x[0] + 2 * x[1] - 0.5) ** 2

    def df(x):
        s = 2 * (x[0] + 2 * x[1] - 0.5)
        return [s, 2 * s]

    b, fb, gb, weight = enumerated_pairs(p, f, df)
    phi = torch.tensor(phi0).expand(b.shape[0], 1, 2).clone().requires_grad_()
    logits = phi.expand(b.shape)
    probs = torch.sigmoid(logits)
    score = (b * torch.nn.functional.logsigmoid(logits) + (1 - b) * torch.nn.functional.logsigmoid(-logits)).sum(-1)
    site = ScoreSite("z", score, fb, draw=ValueGradient(b, probs, logits, gb, "bernoulli"))
    terms, _ = estimator.surrogate(site)
    (g,) = grad(terms, phi)
    mean = (torch.tensor(weight, dtype=torch.float64).reshape(-1, 1) * g.reshape(-1, 2).double()).sum(0)
    points = list(itertools.product((0.0, 1.0), repeat=2))
    exact = [sum(math.prod(pi if x else 1 - pi for pi, x in zip(p, point)) * (point[d] - p[d]) * f(point)
                 for point in points) for d in range(2)]
    assert_close(mean, exact)


@covers(RODEO)
def test_rodeo_on_one_hot_coordinates_is_unbiased_over_every_joint_draw():
    """RODEO's Gibbs-Stein control variates for categories (α = 0.6, β = −0.9, its network
    at its seeded initial weights): D = 2 one-hot coordinates of C = 3 categories, K = 2
    particles, f(x) = (Σ a⊙x − 0.3)² with ∇_x f = 2(Σ a⊙x − 0.3)·a; the probability-weighted
    sum of the per-sample estimates over all 81 joint draws is the exact gradient
    ∂l_{d,c} E[f] = Σ_x q(x)(x_{d,c} − π_{d,c}) f(x)."""
    pyro.param("_pyro_grad_rodeo_z.alpha", torch.tensor(0.6))
    pyro.param("_pyro_grad_rodeo_z.beta", torch.tensor(-0.9))
    l0 = [[0.3, -0.4, 0.8], [0.1, 0.5, -0.2]]
    a = [[1.0, -1.0, 2.0], [0.5, 1.5, -1.0]]
    pi = [[math.exp(v) / sum(math.exp(u) for u in row) for v in row] for row in l0]

    def f_of(point):
        return (sum(a[d][c] for d, c in enumerate(point)) - 0.3) ** 2

    def df_of(point):
        s = 2 * (sum(a[d][c] for d, c in enumerate(point)) - 0.3)
        return [[s * v for v in row] for row in a]

    points = list(itertools.product(range(3), repeat=2))
    pairs = list(itertools.product(points, repeat=2))
    one_hot = torch.nn.functional.one_hot(torch.tensor(pairs), 3).float()  # (81, 2, D, C)
    weight = torch.tensor([math.prod(pi[d][c] for point in pair for d, c in enumerate(point)) for pair in pairs],
                          dtype=torch.float64)
    f = torch.tensor([[f_of(point) for point in pair] for pair in pairs])
    gradient = torch.tensor([[df_of(point) for point in pair] for pair in pairs])
    leaf = torch.tensor(l0).expand(len(pairs), 1, 2, 3).clone().requires_grad_()
    logits = leaf.expand(one_hot.shape)
    score = (one_hot * logits.log_softmax(-1)).sum((-2, -1))
    site = ScoreSite("z", score, f, draw=ValueGradient(one_hot, logits.softmax(-1), logits, gradient, "one_hot"))
    terms, _ = RODEO().surrogate(site)
    (g,) = grad(terms, leaf)
    mean = (weight.reshape(-1, 1, 1) * g.reshape(-1, 2, 3).double()).sum(0)
    exact = [[sum(math.prod(pi[e][x] for e, x in enumerate(point)) * ((point[d] == c) - pi[d][c]) * f_of(point)
                  for point in points) for c in range(3)] for d in range(2)]
    assert_close(mean, exact)


def one_hot_site(family, g=2, k=3, c=3, name="z"):
    """A OneHotCategorical ("one_hot") or Categorical ("categorical", a float index) site:
    logits a leaf (G, 1, C), hand-made draws, value gradients and f (G, K)."""
    logits_leaf = seeded((g, 1, c), 9).requires_grad_()
    index = torch.tensor([[0, 2, 2], [1, 0, 2]])[:g, :k]
    one_hot = torch.nn.functional.one_hot(index, c).float()
    logits = logits_leaf.expand(g, k, c)
    probs = logits.softmax(-1)
    log_q = (one_hot * logits.log_softmax(-1)).sum(-1)
    f = seeded((g, k), 10)
    if family == "one_hot":
        draw = ValueGradient(one_hot, probs, logits, seeded((g, k, c), 11), "one_hot")
    else:
        draw = ValueGradient(index.float(), probs, logits, seeded((g, k), 11), "categorical")
    return logits_leaf, one_hot, ScoreSite(name, log_q, f, draw=draw)


@covers(RODEO)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_rodeo_starts_as_rloo_on_a_bernoulli(layout):
    """RODEO with α = β = 0 (their initial values, whatever its network's weights): RLOO,
    ĝ_d = (1/K) Σ_k (b_{k,d} − θ_{k,d})(f_k − mean_{j≠k} f_j), and the auxiliary loss
    its squared norm on the logits, Σ_d ĝ_d²."""
    phi, site = bernoulli_value_gradient_site(layout)
    terms, aux = RODEO().surrogate(site)
    assert pyro.param("_pyro_grad_rodeo_z.alpha").item() == 0.0
    assert pyro.param("_pyro_grad_rodeo_z.beta").item() == 0.0
    assert_close(terms, torch.zeros(2))
    (g,) = grad(terms, phi)
    b, theta = site.draw.value.double(), site.draw.probs.detach().double()
    f = site.f.double()
    f = f if f.dim() == b.dim() else f.unsqueeze(-1)
    rloo = (b - theta) * (f - hand_leave_one_out(f)) / b.shape[1]  # each particle's share
    shares = rloo if rloo.dim() == 3 else rloo.unsqueeze(-1)
    assert_close(g, on_leaf(shares, phi))
    assert_close(aux, squared_norm_on_logits(shares))
    assert grad(aux, phi)[0] is None  # the auxiliary loss reaches RODEO's own parameters alone


@covers(RODEO)
@pytest.mark.parametrize("family", ["one_hot", "categorical"])
def test_rodeo_starts_as_rloo_on_categories(family):
    """RODEO at α = β = 0 on a OneHotCategorical or Categorical site: RLOO on the logits,
    ĝ_c = (1/K) Σ_k (x_{k,c} − π_c)(f_k − mean_{j≠k} f_j), x_k one-hot; the auxiliary
    loss Σ_c ĝ_c²."""
    logits, one_hot, site = one_hot_site(family)
    terms, aux = RODEO().surrogate(site)
    assert_close(terms, torch.zeros(2))
    (g,) = grad(terms, logits)
    pi = site.draw.probs.detach().double()
    f = site.f.double()
    advantage = f - hand_leave_one_out(f)
    rloo = ((one_hot.double() - pi) * advantage.unsqueeze(-1)).mean(1)  # (G, C)
    assert_close(g.reshape(rloo.shape), rloo)
    assert_close(aux, (rloo**2).sum(1))


# ------------------------------------------------------------------------------------
# Difference estimators: alternatives, coupled runs, per-particle terms
# ------------------------------------------------------------------------------------


def run(estimator, fn, value, layout, f, local=False, name="z"):
    """Call ``alternatives`` on the draw, evaluate the hand-chosen ``f`` (a function of
    the value, per particle or per element) at the first value and at each alternative,
    and return ``(terms, runs)``."""
    draw = SiteDraw(name, fn, value, layout, local)
    alternatives, state = estimator.alternatives(draw)
    runs = CoupledRuns(draw, f(value), [f(a) for a in alternatives], state)
    return estimator.alternative_terms(runs), runs, alternatives


#: Particle layouts of a scalar site: K = 3 vectorized particles, or one looped particle.
PARTICLES = [("vectorized", ParticleLayout(-1, 3), (3,)), ("looped", ParticleLayout(None, 1), ())]


def quadratic(x):
    """A hand-chosen f per element: (x − 0.3)² + 0.5·x."""
    return (x - 0.3) ** 2 + 0.5 * x


@covers(Enumerate)
@pytest.mark.parametrize("label, layout, shape", PARTICLES)
def test_enumerate_bernoulli_sums_over_the_support(label, layout, shape):
    """Enumerate on Bernoulli(logits=φ): per particle Σ_v ∇φ p_φ(v) f(v) =
    σ(φ)(1 − σ(φ)) (f(1) − f(0)), zero in value; the alternatives are the support."""
    phi = torch.linspace(-1.0, 1.5, max(1, math.prod(shape))).reshape(shape).requires_grad_()
    value = torch.tensor([1.0, 0.0, 1.0][: max(1, math.prod(shape))]).reshape(shape)
    terms, runs, alternatives = run(Enumerate(), dist.Bernoulli(logits=phi), value, layout, quadratic)
    assert [a.tolist() for a in alternatives] == [torch.zeros(shape).tolist(), torch.ones(shape).tolist()]
    assert_close(terms, torch.zeros(layout.num))
    (g,) = grad(terms, phi)
    expected = [sigmoid(v) * (1 - sigmoid(v)) * (quadratic(1.0) - quadratic(0.0)) for v in phi.reshape(-1).tolist()]
    assert_close(g, torch.tensor(expected, dtype=torch.float64).reshape(shape))


@covers(Enumerate)
def test_enumerate_categorical_sums_over_the_support():
    """Enumerate on Categorical(logits=l), K = 2 particles of 3 categories: per particle
    Σ_v ∇p(v) f(v), ∂p_v/∂l_c = p_v (δ_vc − p_c), f(v) = (v − 0.3)² + 0.5v."""
    logits = torch.tensor([[0.2, -0.5, 1.0], [1.5, 0.0, -1.0]], requires_grad=True)
    value = torch.tensor([2.0, 0.0])
    terms, _, alternatives = run(Enumerate(), dist.Categorical(logits=logits), value, ParticleLayout(-1, 2),
                                 quadratic)
    assert len(alternatives) == 3
    (g,) = grad(terms, logits)
    expected = []
    for row in logits.tolist():
        z = sum(math.exp(v) for v in row)
        p = [math.exp(v) / z for v in row]
        expected.append([sum(p[v] * ((v == c) - p[c]) * quadratic(float(v)) for v in range(3)) for c in range(3)])
    assert_close(g, expected)


@covers(Enumerate)
def test_enumerate_each_plate_element_sees_its_own_values_when_local():
    """Enumerate on a plate of N = 4 Bernoullis per particle (K = 2) whose terms of f stay
    in their element (local): every element takes each support value in the same run,
    and ∂φ_{k,n} = σ'(φ_{k,n}) (f_n(1) − f_n(0)) with f_n(x) = (x − 0.1n)² + 0.5x;
    terms are summed per particle. A plate that shares one f is refused."""
    phi = torch.linspace(-1.0, 1.0, 8).reshape(2, 4).requires_grad_()
    value = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 1.0]])
    shift = 0.1 * torch.arange(4.0)

    def f(x):  # one f per element: local terms
        return (x - shift) ** 2 + 0.5 * x

    layout = ParticleLayout(-2, 2)
    terms, _, _ = run(Enumerate(), dist.Bernoulli(logits=phi), value, layout, f, local=True)
    assert terms.shape == (2,)
    (g,) = grad(terms, phi)
    expected = [[sigmoid(v) * (1 - sigmoid(v)) * (((1 - 0.1 * n) ** 2 + 0.5) - (0.1 * n) ** 2)
                 for n, v in enumerate(row)] for row in phi.tolist()]
    assert_close(g, expected)
    with pytest.raises(EstimatorError, match="joint support"):
        Enumerate().alternatives(SiteDraw("z", dist.Bernoulli(logits=phi), value, layout, local=False))


@covers(MeasureValued)
@pytest.mark.parametrize("label, layout, shape", PARTICLES)
def test_measure_valued_bernoulli_is_the_difference_of_f(label, layout, shape):
    """MeasureValued on Bernoulli(probs=p): ∂p E[f] = E[f(1) − f(0)], the alternative
    the flipped value 1 − X: per particle f(1) − f(0), whichever value was drawn."""
    p = torch.tensor([0.2, 0.5, 0.9][: max(1, math.prod(shape))]).reshape(shape).requires_grad_()
    value = torch.tensor([1.0, 0.0, 0.0][: max(1, math.prod(shape))]).reshape(shape)
    terms, _, (alternative,) = run(MeasureValued(), dist.Bernoulli(probs=p), value, layout, quadratic)
    assert alternative.tolist() == (1 - value).tolist()
    assert_close(terms, torch.zeros(layout.num))
    (g,) = grad(terms, p)
    assert_close(g, torch.full(shape, quadratic(1.0) - quadratic(0.0), dtype=torch.float64))


@covers(MeasureValued)
def test_measure_valued_moves_one_element_of_a_plate_weighted_by_their_number():
    """MeasureValued on a plate of N = 4 Bernoullis per particle sharing one f (K = 3):
    one element n* per particle is flipped, and ∂p_{k,n} = N·1[n = n*]·(f(x^{n←1}) −
    f(x^{n←0})) for f(x) = (x·w − 1)², w = (1, −2, 0.5, 3)."""
    w = [1.0, -2.0, 0.5, 3.0]
    p = torch.full((3, 4), 0.4).requires_grad_()
    value = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])

    def f_of(x):
        return (sum(a * b for a, b in zip(x, w)) - 1) ** 2

    def f(x):  # one f per particle, shaped to broadcast against the plate
        return torch.tensor([f_of(row) for row in x.tolist()]).reshape(3, 1)

    terms, runs, _ = run(MeasureValued(), dist.Bernoulli(probs=p), value, ParticleLayout(-2, 3), f)
    mask, _ = runs.state
    assert mask.sum(1).tolist() == [1, 1, 1]
    (g,) = grad(terms, p)
    expected = []
    for row, chosen in zip(value.tolist(), mask.tolist()):
        out = []
        for n, picked in enumerate(chosen):
            out.append(4 * flip_difference(f_of, row, n) if picked else 0.0)
        expected.append(out)
    assert_close(g, expected)


def cubic(x):
    """A hand-chosen f of a count: x³/10 − x."""
    return x**3 / 10 - x


@covers(MeasureValued)
@pytest.mark.parametrize("family", ["poisson", "binomial", "geometric", "categorical"])
def test_measure_valued_discrete_jumps(family):
    """MeasureValued's coupled jumps (module table), per particle, f(x) = x³/10 − x:
    Poisson(λ): ∂λ = f(X + 1) − f(X); Binomial(5, p): ∂p = (5 − X)/(1 − p)·(f(X + 1) −
    f(X)); Geometric(p): ∂p = X/(p(1 − p))·(f(X − 1) − f(X)); Categorical(π): ∂π_c = f(c),
    through torch's normalization π/Σπ: f(c) − Σ_j π_j f(j)."""
    layout = ParticleLayout(-1, 3)
    if family == "poisson":
        param = torch.tensor([0.5, 2.0, 4.0], requires_grad=True)
        fn, value = dist.Poisson(param), torch.tensor([0.0, 2.0, 5.0])
        expected = [cubic(x + 1) - cubic(x) for x in value.tolist()]
    elif family == "binomial":
        param = torch.tensor([0.3, 0.5, 0.8], requires_grad=True)
        fn, value = dist.Binomial(5, probs=param), torch.tensor([0.0, 2.0, 4.0])
        expected = [(5 - x) / (1 - p) * (cubic(x + 1) - cubic(x)) for x, p in zip(value.tolist(), param.tolist())]
    elif family == "geometric":
        param = torch.tensor([0.3, 0.5, 0.8], requires_grad=True)
        fn, value = dist.Geometric(probs=param), torch.tensor([3.0, 1.0, 2.0])
        expected = [x / (p * (1 - p)) * (cubic(x - 1) - cubic(x)) for x, p in zip(value.tolist(), param.tolist())]
    else:
        param = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]], requires_grad=True)
        fn, value = dist.Categorical(probs=param), torch.tensor([2.0, 0.0, 1.0])
        # ∂π_c Σ_j π_j f(j) = f(c); torch's Categorical normalizes π ← π / Σπ, whose chain
        # rule (Σπ = 1 here) leaves the component along the simplex: f(c) − Σ_j π_j f(j).
        expected = [[cubic(float(c)) - sum(pj * cubic(float(j)) for j, pj in enumerate(row)) for c in range(3)]
                    for row in param.tolist()]
    terms, _, _ = run(MeasureValued(), fn, value, layout, cubic)
    assert_close(terms, torch.zeros(3))
    (g,) = grad(terms, param)
    assert_close(g, expected)


def smooth(x):
    """A hand-chosen smooth f of a continuous value: sin x + x²/2."""
    return torch.sin(x) + x**2 / 2


def smooth_float(x: float) -> float:
    return math.sin(x) + x * x / 2


@covers(MeasureValued)
def test_measure_valued_normal_weak_derivatives():
    """MeasureValued on Normal(μ, σ), both moving (Mohamed et al. 2020, §6.2), per particle:
    the alternatives are μ ± σR (one R > 0 for both) and μ + σM with sign M = sign ε,
    M² > ε² (ε = (X − μ)/σ); ∂μ = (f(μ + σR) − f(μ − σR))/(σ√(2π)) and
    ∂σ = (f(μ + σM) − f(X))/σ, for f = sin x + x²/2."""
    loc = torch.tensor([0.0, 1.0, -2.0], requires_grad=True)
    scale = torch.tensor([1.0, 0.5, 2.0], requires_grad=True)
    value = torch.tensor([0.3, 0.2, -1.0])
    terms, _, alternatives = run(MeasureValued(), dist.Normal(loc, scale), value, ParticleLayout(-1, 3), smooth)
    assert len(alternatives) == 3  # loc: X⁺, X⁻; scale: X⁺ (X⁻ is the site's own draw)
    plus, minus, maxwell = (a.double() for a in alternatives)
    mu, sigma, x = loc.detach().double(), scale.detach().double(), value.double()
    r, m, eps = (plus - mu) / sigma, (maxwell - mu) / sigma, (x - mu) / sigma
    assert_close(plus + minus, 2 * mu)  # the same R for both: X⁺ and X⁻ mirror each other
    assert bool((r > 0).all()) and bool((torch.sign(m) == torch.sign(eps)).all()) and bool((m.abs() > eps.abs()).all())
    assert_close(terms, torch.zeros(3))
    g_loc, g_scale = grad(terms, (loc, scale))
    assert_close(g_loc, [(smooth_float(a) - smooth_float(b)) / (s * math.sqrt(2 * math.pi))
                         for a, b, s in zip(plus.tolist(), minus.tolist(), sigma.tolist())])
    assert_close(g_scale, [(smooth_float(a) - smooth_float(b)) / s
                           for a, b, s in zip(maxwell.tolist(), x.tolist(), sigma.tolist())])


@covers(MeasureValued)
def test_measure_valued_exponential_and_uniform_weak_derivatives():
    """MeasureValued, Mohamed et al. (2020) Table 1, per particle, f = sin x + x²/2:
    Exponential(λ): X⁻ = X + E/λ > X, ∂λ = (f(X) − f(X⁻))/λ; Uniform(a, b): ∂b =
    (f(b⁻) − f(X))/(b − a) with b⁻ the float below b, ∂a = (f(X) − f(a))/(b − a)."""
    rate = torch.tensor([0.5, 2.0], requires_grad=True)
    value = torch.tensor([1.5, 0.25])
    terms, _, (minus,) = run(MeasureValued(), dist.Exponential(rate), value, ParticleLayout(-1, 2), smooth)
    assert bool((minus > value).all())
    (g,) = grad(terms, rate)
    assert_close(g, [(smooth_float(x) - smooth_float(y)) / lam
                     for x, y, lam in zip(value.tolist(), minus.tolist(), rate.tolist())])

    low = torch.tensor([0.0, -1.0], requires_grad=True)
    high = torch.tensor([1.0, 3.0], requires_grad=True)
    value = torch.tensor([0.4, 2.5])
    terms, _, (at_high, at_low) = run(MeasureValued(), dist.Uniform(low, high), value, ParticleLayout(-1, 2), smooth)
    below = torch.nextafter(high.detach(), low.detach())
    assert at_high.tolist() == below.tolist() and at_low.tolist() == low.tolist()
    g_low, g_high = grad(terms, (low, high))
    width = [b - a for a, b in zip(low.tolist(), high.tolist())]
    assert_close(g_high, [(smooth_float(b) - smooth_float(x)) / w
                          for b, x, w in zip(below.tolist(), value.tolist(), width)])
    assert_close(g_low, [(smooth_float(x) - smooth_float(a)) / w
                         for x, a, w in zip(value.tolist(), low.tolist(), width)])


@covers(MeasureValued)
def test_measure_valued_gamma_rate_and_log_normal_loc_weak_derivatives():
    """MeasureValued, Mohamed et al. (2020) Table 1, f = sin x + x²/2, per particle:
    Gamma(α, β) in its rate: X⁻ = X + E/β, ∂β = (α/β)(f(X) − f(X⁻)); LogNormal(μ, σ) in
    its loc: the Normal's on log X, mapped by exp: exp(μ ± σR), ∂μ = (f(e^{μ+σR}) −
    f(e^{μ−σR}))/(σ√(2π))."""
    concentration = torch.tensor([2.0, 0.5])
    rate = torch.tensor([1.5, 3.0], requires_grad=True)
    value = torch.tensor([0.8, 0.1])
    terms, _, (minus,) = run(MeasureValued(), dist.Gamma(concentration, rate), value, ParticleLayout(-1, 2), smooth)
    assert bool((minus > value).all())
    (g,) = grad(terms, rate)
    assert_close(g, [a / b * (smooth_float(x) - smooth_float(y))
                     for a, b, x, y in zip(concentration.tolist(), rate.tolist(), value.tolist(), minus.tolist())])

    loc = torch.tensor([0.0, -0.5], requires_grad=True)
    scale = torch.tensor([0.5, 1.0])
    value = torch.tensor([1.2, 0.4])
    terms, _, (plus, minus) = run(MeasureValued(), dist.LogNormal(loc, scale), value, ParticleLayout(-1, 2), smooth)
    log_plus, log_minus = plus.double().log(), minus.double().log()
    assert_close(log_plus + log_minus, 2 * loc.detach().double(), atol=1e-5)  # mirrored on the log scale
    (g,) = grad(terms, loc)
    assert_close(g, [(smooth_float(a) - smooth_float(b)) / (s * math.sqrt(2 * math.pi))
                     for a, b, s in zip(plus.tolist(), minus.tolist(), scale.tolist())])


#: A Bernoulli site for the antithetic estimators: K = 6 particles of one element, or
#: K = 3 particles of a plate of N = 4 elements sharing one f per particle.
ANTITHETIC = [("particles", (6,), ParticleLayout(-1, 6)), ("plate", (3, 4), ParticleLayout(-2, 3))]


def antithetic_case(shape):
    phi = torch.linspace(-2.0, 1.5, math.prod(shape)).reshape(shape).requires_grad_()
    value = seeded(shape, 12, "bits")
    w = torch.tensor([1.0, -2.0, 0.5, 3.0])

    def f(x):  # per particle: a scalar site's own element, or one f of the whole plate
        if x.dim() == 1:
            return quadratic(x)
        return ((x * w).sum(-1, keepdim=True) - 1) ** 2

    return phi, value, f


@covers(ARM, DisARM)
@pytest.mark.parametrize("label, shape, layout", ANTITHETIC)
@pytest.mark.parametrize("estimator", [ARM(), DisARM()], ids=["ARM", "DisARM"])
def test_antithetic_pair_formulas(estimator, label, shape, layout):
    """ARM (Yin & Zhou 2019) and DisARM (Dong, Mnih & Tucker 2020) on Bernoulli(σ(φ)),
    from the state's u and twin: b = 1[u < σ(φ)], b̃ = 1[1 − u < σ(φ)], and per element

        ARM:    ∂φ = (f(b̃) − f(b)) (u − ½)
        DisARM: ∂φ = ½ (f(b) − f(b̃)) (−1)^b̃ 1[b ≠ b̃] σ(|φ|),

    with f per particle (the plate's elements share one f, the multivariate estimators)."""
    phi, value, f = antithetic_case(shape)
    terms, runs, (twin_value,) = run(estimator, dist.Bernoulli(logits=phi), value, layout, f)
    u, twin = runs.state
    p = torch.sigmoid(phi.detach())
    assert (value == (u < p).float()).all() and (twin == (1 - u < p).float()).all()
    assert twin_value.tolist() == twin.tolist()
    assert bool((value != twin).any()) and bool((value == twin).any())  # both cases occur
    assert_close(terms, torch.zeros(layout.num))
    (g,) = grad(terms, phi)
    f_b, f_twin = f(value).double().expand(shape), f(twin).double().expand(shape)
    expected = []
    for fb, ft, b, bt, uu, ph in zip(*(t.reshape(-1).tolist() for t in (f_b, f_twin, value, twin, u, phi))):
        if isinstance(estimator, DisARM):
            expected.append(0.5 * (fb - ft) * (-1) ** bt * (b != bt) * sigmoid(abs(ph)))
        else:
            expected.append((ft - fb) * (uu - 0.5))
    assert_close(g, torch.tensor(expected, dtype=torch.float64).reshape(shape))


@covers(IndeCateR)
def test_indecater_bernoulli_sums_each_coordinate():
    """IndeCateR (De Smet et al. 2023) on N = 4 Bernoulli(p) coordinates per particle
    (K = 2) sharing f(x) = (x·w − 1)²: ∂p_{k,d} = Σ_c ∂p(c)/∂p_d f(x^{d←c}) =
    f(x^{d←1}) − f(x^{d←0}), one run per coordinate (its bit flipped)."""
    w = [1.0, -2.0, 0.5, 3.0]
    p = torch.tensor([[0.2, 0.4, 0.6, 0.8], [0.5, 0.5, 0.1, 0.9]], requires_grad=True)
    value = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0]])

    def f_of(x):
        return (sum(a * b for a, b in zip(x, w)) - 1) ** 2

    def f(x):
        return torch.tensor([f_of(row) for row in x.tolist()]).reshape(2, 1)

    terms, _, alternatives = run(IndeCateR(), dist.Bernoulli(probs=p), value, ParticleLayout(-2, 2), f)
    assert len(alternatives) == 4
    assert_close(terms, torch.zeros(2))
    (g,) = grad(terms, p)
    expected = [[flip_difference(f_of, row, d) for d in range(4)] for row in value.tolist()]
    assert_close(g, expected)


@covers(IndeCateR)
@pytest.mark.parametrize("num_coordinates", [None, 2])
def test_indecater_categorical_sums_each_coordinate(num_coordinates):
    """IndeCateR on N = 3 Categorical(softmax(l)) coordinates of C = 3 categories per
    particle (K = 2), f(x) = (x·v − 1)², v = (1, −1, 2): ∂l_{k,d,j} =
    Σ_c π_{d,c}(δ_cj − π_{d,j}) f(x^{d←c}), each coordinate's category summed out.
    With num_coordinates=2 only the state's 2 chosen coordinates, weighted by 3/2."""
    v = [1.0, -1.0, 2.0]
    logits = torch.tensor([[[0.0, 0.5, -0.5], [1.0, 0.0, 0.0], [-1.0, 2.0, 0.3]],
                           [[0.2, 0.2, 0.2], [0.0, -1.5, 1.5], [0.7, 0.1, -0.4]]], requires_grad=True)
    value = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 0.0]])

    def f_of(x):
        return (sum(a * b for a, b in zip(x, v)) - 1) ** 2

    def f(x):
        return torch.tensor([f_of(row) for row in x.tolist()]).reshape(2, 1)

    estimator = IndeCateR(num_coordinates)
    terms, runs, alternatives = run(estimator, dist.Categorical(logits=logits), value, ParticleLayout(-2, 2), f)
    masks, _, weight = runs.state
    chosen = torch.stack(masks).sum(0)  # how often each coordinate is run: 0 or 1
    if num_coordinates is None:
        assert len(alternatives) == 3 * 2 and weight == 1.0 and chosen.eq(1).all()
    else:
        assert len(alternatives) == 2 * 2 and weight == 1.5 and chosen.sum(1).tolist() == [2, 2]
        assert chosen.le(1).all()
    assert_close(terms, torch.zeros(2))
    (g,) = grad(terms, logits)
    expected = []
    for k, (row, lrow) in enumerate(zip(value.tolist(), logits.tolist())):
        out = []
        for d in range(3):
            z = sum(math.exp(a) for a in lrow[d])
            pi = [math.exp(a) / z for a in lrow[d]]
            fc = []
            for c in range(3):
                moved = list(row)
                moved[d] = float(c)
                fc.append(f_of(moved))
            scale = (3 / num_coordinates if num_coordinates else 1.0) * float(chosen[k, d])
            out.append([scale * sum(pi[c] * ((c == j) - pi[j]) * fc[c] for c in range(3)) for j in range(3)])
        expected.append(out)
    assert_close(g, expected)


def local_event_case():
    """K = 2 particles of a plate of N = 3 elements, each a Bernoulli(p) event of E = 2
    coordinates whose terms of f stay in its element (local): f_{k,n}(x) = (x·w − 0.3)²,
    w = (1, −2); and, by hand, f_{k,n}(x^{e←1}) − f_{k,n}(x^{e←0}) for every coordinate."""
    p = torch.tensor([[[0.2, 0.7], [0.5, 0.5], [0.9, 0.1]], [[0.3, 0.3], [0.6, 0.4], [0.8, 0.2]]], requires_grad=True)
    value = torch.tensor([[[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]], [[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]])
    w = [1.0, -2.0]

    def f_of(x):
        return (sum(a * b for a, b in zip(x, w)) - 0.3) ** 2

    def f(x):  # one f per plate element: (K, N)
        return torch.tensor([[f_of(e) for e in row] for row in x.tolist()])

    differences = [[[flip_difference(f_of, element, e) for e in range(2)] for element in row]
                   for row in value.tolist()]
    return p, value, f, torch.tensor(differences, dtype=torch.float64)


@covers(IndeCateR)
def test_indecater_local_plate_elements_share_their_runs():
    """IndeCateR on a plate of Bernoulli events with local terms: one run per coordinate
    of the event moves that coordinate in every element at once, and ∂p_{k,n,e} =
    f_{k,n}(x^{e←1}) − f_{k,n}(x^{e←0}), each element seeing only its own f."""
    p, value, f, differences = local_event_case()
    fn = dist.Bernoulli(probs=p).to_event(1)
    terms, _, alternatives = run(IndeCateR(), fn, value, ParticleLayout(-2, 2), f, local=True)
    assert len(alternatives) == 2  # one per coordinate of the event, not per element
    assert terms.shape == (2,)
    (g,) = grad(terms, p)
    assert_close(g, differences)


@covers(MeasureValued)
def test_measure_valued_local_plate_moves_one_coordinate_per_element():
    """MeasureValued on the same plate of Bernoulli events with local terms: every
    element flips one coordinate e* of its event in the same run, weighted by E = 2:
    ∂p_{k,n,e} = 2·1[e = e*]·(f_{k,n}(x^{e←1}) − f_{k,n}(x^{e←0}))."""
    p, value, f, differences = local_event_case()
    fn = dist.Bernoulli(probs=p).to_event(1)
    terms, runs, (moved,) = run(MeasureValued(), fn, value, ParticleLayout(-2, 2), f, local=True)
    mask, count = runs.state
    assert mask.sum(-1).eq(1).all() and count.eq(2).all()
    assert moved.tolist() == torch.where(mask, 1 - value, value).tolist()
    (g,) = grad(terms, p)
    assert_close(g, 2 * mask.double() * differences)


# ------------------------------------------------------------------------------------
# RELAX and REBAR: a control variate on the relaxed sample
# ------------------------------------------------------------------------------------


def rebar_hand(value, phi, z, z_tilde, f, df, eta=1.0, temperature=0.5, a=0.0, c=0.0):
    """REBAR/RELAX's per-particle estimate on the logit θ by hand (Tucker et al. 2017;
    Grathwohl et al. 2018), with c(z) = η·f(σ(z/λ)) + a·z + c (a linear network r_ψ):

        ĝ = [f(b) − c(z̃)] (b − σ(θ)) + ∂θ c(z) − ∂θ c(z̃),

    ∂θ f(σ(z/λ)) = f'(y) y(1 − y)/λ · ∂z/∂θ, with ∂z/∂θ = 1 (z = θ + logistic noise) and,
    for z̃ = θ + logit(w) drawn given b (w = σ(z̃ − θ)), ∂z̃/∂θ = 1 − (1 − p)/w when
    b = 1 and 1 − p/(1 − w) when b = 0. Also returns ∂ĝ/∂η."""
    out, in_eta = [], []
    for b, th, zz, zt in zip(value, phi, z, z_tilde):
        p = sigmoid(th)
        w = sigmoid(zt - th)
        dzt = 1 - (1 - p) / w if b == 1 else 1 - p / (1 - w)
        y, yt = sigmoid(zz / temperature), sigmoid(zt / temperature)
        dfz = df(y) * y * (1 - y) / temperature
        dfzt = df(yt) * yt * (1 - yt) / temperature * dzt
        out.append((f(b) - eta * f(yt) - a * zt - c) * (b - p) + eta * dfz + a - eta * dfzt - a * dzt)
        in_eta.append(-f(yt) * (b - p) + dfz - dfzt)
    return out, in_eta


@covers(REBAR, RELAX)
@pytest.mark.parametrize("estimator, prefix", [(REBAR(), "_pyro_grad_rebar_z"), (RELAX(), "_pyro_grad_relax_z")],
                         ids=["REBAR", "RELAX"])
def test_rebar_and_relax_at_their_initial_control_variate(estimator, prefix):
    """REBAR, and RELAX whose network's output layer starts at zero, with η = 1 and
    λ = 0.5 (initial values), on Bernoulli(σ(φ)), K = 6 particles, f(y) = (y − 0.4)²:
    z and z̃ (from the state) are consistent with b (b = 1[z > 0] = 1[z̃ > 0]); each
    particle's estimate is the hand formula of :func:`rebar_hand`; the auxiliary loss is
    zero in value with gradient ∂η Σ_k ĝ_k² = 2 Σ_k ĝ_k ∂ĝ_k/∂η in η."""
    phi = torch.linspace(-1.5, 1.5, 6).requires_grad_()
    value = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0])

    def f(y):
        return (y - 0.4) ** 2

    def df(y):
        return 2 * (y - 0.4)

    terms, runs, _ = run(estimator, dist.Bernoulli(logits=phi), value, ParticleLayout(-1, 6), f)
    z, z_tilde = (t.detach() for t in runs.state["z"])
    assert ((z > 0).float() == value).all() and ((z_tilde > 0).float() == value).all()
    assert pyro.param(prefix + ".eta").item() == 1.0
    assert pyro.param(prefix + ".temperature").item() == pytest.approx(0.5, rel=1e-6)
    expected, in_eta = rebar_hand(value.tolist(), phi.tolist(), z.tolist(), z_tilde.tolist(), f, df)
    assert_close(terms, torch.zeros(6))
    (g,) = grad(terms, phi)
    assert_close(g, expected)
    loss = estimator.alternative_loss(runs)
    assert_close(loss, torch.zeros(6))
    (g_eta,) = grad(loss, pyro.param(prefix + ".eta").unconstrained())
    assert_close(g_eta, 2 * sum(a * b for a, b in zip(expected, in_eta)))


@covers(RELAX)
def test_relax_with_a_linear_network():
    """RELAX(network=r) with r(z) = a·z + c (a = 0.7, c = −0.2): c(z) = η f(σ(z/λ)) + r(z),
    so each particle's estimate gains −r(z̃)(b − p) + a − a ∂z̃/∂θ (:func:`rebar_hand`)."""
    network = torch.nn.Linear(1, 1)
    with torch.no_grad():
        network.weight.fill_(0.7)
        network.bias.fill_(-0.2)
    phi = torch.linspace(-1.0, 2.0, 5).requires_grad_()
    value = torch.tensor([0.0, 1.0, 0.0, 1.0, 1.0])

    def f(y):
        return (y - 0.4) ** 2

    def df(y):
        return 2 * (y - 0.4)

    terms, runs, _ = run(RELAX(network), dist.Bernoulli(logits=phi), value, ParticleLayout(-1, 5), f)
    z, z_tilde = (t.detach() for t in runs.state["z"])
    expected, _ = rebar_hand(value.tolist(), phi.tolist(), z.tolist(), z_tilde.tolist(), f, df, a=0.7, c=-0.2)
    (g,) = grad(terms, phi)
    assert_close(g, expected)


@covers(REBAR, RELAX)
@pytest.mark.parametrize("estimator", [REBAR(), RELAX()], ids=["REBAR", "RELAX"])
def test_rebar_on_a_one_hot_categorical(estimator):
    """REBAR (and RELAX at its initial network) on OneHotCategorical(logits=θ), K = 3
    particles of C = 4 categories, f(y) = (y·a − 0.3)², η = 1, λ = 0.5, by hand:
    z = log π + g with argmax z = argmax z̃ = b, ∂z_i/∂θ_m = δ_im − π_m; z̃ drawn given b
    (Tucker et al. 2017): z̃_b = −log(−log v_b) does not move, z̃_j = −log(−log v_j/π_j −
    log v_b), so ∂z̃_j/∂log π_j = 1 − exp(z̃_j − z̃_b) for j ≠ b. With
    ∂f(σ_λ(z))/∂z_i = y_i (∂f/∂y_i − y·∂f/∂y)/λ, y = softmax(z/λ):

        ĝ_m = [f(b) − f(ỹ)] (b_m − π_m) + ∂θ_m f(σ_λ(z)) − ∂θ_m f(σ_λ(z̃))."""
    a = [1.0, -1.0, 2.0, 0.5]
    logits = torch.tensor([[0.2, -0.5, 1.0, 0.0], [1.5, 0.0, -1.0, 0.3], [0.0, 0.0, 0.0, 0.0]], requires_grad=True)
    index = [2, 0, 3]
    value = torch.nn.functional.one_hot(torch.tensor(index), 4).float()

    def f(y):
        return ((y * torch.tensor(a)).sum(-1) - 0.3) ** 2

    terms, runs, _ = run(estimator, dist.OneHotCategorical(logits=logits), value, ParticleLayout(-1, 3), f)
    z, z_tilde = (t.detach() for t in runs.state["z"])
    assert z.argmax(-1).tolist() == index and z_tilde.argmax(-1).tolist() == index
    tau = 0.5

    def relaxed_and_slope(zz):
        """y = softmax(z/λ), f(y) and ∂f(y)/∂z."""
        top = max(v / tau for v in zz)
        e = [math.exp(v / tau - top) for v in zz]
        y = [v / sum(e) for v in e]
        fy = (sum(yi * ai for yi, ai in zip(y, a)) - 0.3) ** 2
        dfdy = [2 * (sum(yi * ai for yi, ai in zip(y, a)) - 0.3) * ai for ai in a]
        dot = sum(yi * di for yi, di in zip(y, dfdy))
        return fy, [yi * (di - dot) / tau for yi, di in zip(y, dfdy)]

    expected = []
    for row, b, zz, zt in zip(logits.tolist(), index, z.tolist(), z_tilde.tolist()):
        total = sum(math.exp(v) for v in row)
        pi = [math.exp(v) / total for v in row]
        fb = (a[b] - 0.3) ** 2
        _, dz = relaxed_and_slope(zz)
        f_tilde, dzt = relaxed_and_slope(zt)
        moved = [0.0 if j == b else dzt[j] * (1 - math.exp(zt[j] - zt[b])) for j in range(4)]  # ∂f/∂log π_j
        expected.append([(fb - f_tilde) * ((m == b) - pi[m])
                         + (dz[m] - pi[m] * sum(dz)) - (moved[m] - pi[m] * sum(moved)) for m in range(4)])
    assert_close(terms, torch.zeros(3))
    (g,) = grad(terms, logits)
    assert_close(g, expected)


# ------------------------------------------------------------------------------------
# Relaxations: prepare swaps the sampler
# ------------------------------------------------------------------------------------


def relaxed_draw(estimator, fn, seed=3):
    msg = {"fn": fn}
    estimator.prepare(msg)
    torch.manual_seed(seed)
    return msg["fn"].rsample()


def replayed_uniform(shape, seed=3):
    """The uniform noise a relaxed draw took from the seeded stream (one torch.rand)."""
    torch.manual_seed(seed)
    return torch.rand(shape).clamp(1e-6, 1 - 1e-6).double()


@covers(GumbelSoftmax)
@pytest.mark.parametrize("hard", [False, True])
def test_gumbel_softmax_one_hot(hard):
    """GumbelSoftmax(τ = 0.5) on OneHotCategorical(logits=l), K = 4 particles: the soft
    value is y = softmax((l + g)/τ) for the Gumbel noise g = −log(−log u) it drew; hard
    is one_hot(argmax y) forward; either way ∂(w·value)/∂l = (1/τ) y ⊙ (w − y·w)."""
    logits = torch.tensor([[0.2, -0.5, 1.0], [1.5, 0.0, -1.0], [0.0, 0.0, 0.0], [-2.0, 1.0, 0.5]],
                          requires_grad=True)
    tau, w = 0.5, torch.tensor([1.0, -2.0, 0.5])
    value = relaxed_draw(GumbelSoftmax(tau, hard), dist.OneHotCategorical(logits=logits))
    u = replayed_uniform(logits.shape)
    y = ((logits.detach().double() - (-u.log()).log()) / tau).softmax(-1)
    if hard:
        assert_close(value, torch.nn.functional.one_hot(y.argmax(-1), 3).double())
    else:
        assert_close(value, y)
    (g,) = grad(value * w, logits)
    wd = w.double()
    assert_close(g, y * (wd - (y * wd).sum(-1, keepdim=True)) / tau)


@covers(GumbelSoftmax)
@pytest.mark.parametrize("hard", [False, True])
def test_gumbel_softmax_bernoulli(hard):
    """GumbelSoftmax(τ = 0.5) on Bernoulli(logits=φ): y = σ((φ + log u − log(1 − u))/τ),
    hard 1[y > ½]; ∂value/∂φ = y(1 − y)/τ."""
    phi = torch.tensor([-1.0, 0.0, 0.5, 2.0], requires_grad=True)
    value = relaxed_draw(GumbelSoftmax(0.5, hard), dist.Bernoulli(logits=phi))
    u = replayed_uniform(phi.shape)
    y = torch.sigmoid((phi.detach().double() + u.log() - (1 - u).log()) / 0.5)
    assert_close(value, (y > 0.5).double() if hard else y)
    (g,) = grad(value, phi)
    assert_close(g, y * (1 - y) / 0.5)


@covers(GumbelSoftmax)
def test_gumbel_softmax_hard_categorical_index():
    """GumbelSoftmax(τ = 1, hard=True) on Categorical(logits=l): the value is the index
    argmax y, y = softmax(l + g); ∂value/∂l = y ⊙ (k − y·k), k = (0, 1, 2)."""
    logits = torch.tensor([[0.2, -0.5, 1.0], [1.5, 0.0, -1.0]], requires_grad=True)
    value = relaxed_draw(GumbelSoftmax(1.0, True), dist.Categorical(logits=logits))
    u = replayed_uniform(logits.shape)
    y = (logits.detach().double() - (-u.log()).log()).softmax(-1)
    assert_close(value, y.argmax(-1).double())
    (g,) = grad(value, logits)
    k = torch.arange(3.0, dtype=torch.float64)
    assert_close(g, y * (k - (y * k).sum(-1, keepdim=True)))


@covers(StraightThrough)
def test_straight_through_is_b_plus_p_minus_sg_p():
    """StraightThrough: b + p − sg(p), an exact draw forward with ∂value/∂p = 1 (a
    Bernoulli in its probs; σ(φ)(1 − σ(φ)) in its logits); one-hot h + π − sg(π), whose
    ∂(w·value)/∂π = w; a Categorical's index Σ_k k(h + π − sg π)_k, ∂/∂π = k = (0, 1, 2).
    A categorical distribution normalizes its probs (π/Σπ, Σπ = 1 here), whose chain rule
    leaves the component along the simplex: w − π·w and k − π·k."""
    p = torch.tensor([0.1, 0.5, 0.9, 0.3], requires_grad=True)
    value = relaxed_draw(StraightThrough(), dist.Bernoulli(probs=p))
    assert set(value.tolist()) <= {0.0, 1.0}
    (g,) = grad(value, p)
    assert_close(g, torch.ones(4))

    phi = torch.tensor([-1.0, 0.0, 2.0], requires_grad=True)
    (g,) = grad(relaxed_draw(StraightThrough(), dist.Bernoulli(logits=phi)), phi)
    assert_close(g, [sigmoid(v) * (1 - sigmoid(v)) for v in phi.tolist()])

    pi = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]], requires_grad=True)
    w = torch.tensor([1.0, -2.0, 0.5])
    value = relaxed_draw(StraightThrough(), dist.OneHotCategorical(probs=pi))
    assert value.sum(-1).tolist() == [1.0, 1.0] and set(value.reshape(-1).tolist()) <= {0.0, 1.0}
    (g,) = grad(value * w, pi)
    assert_close(g, [[wc - sum(a * b for a, b in zip(row, w.tolist())) for wc in w.tolist()] for row in pi.tolist()])

    value = relaxed_draw(StraightThrough(), dist.Categorical(probs=pi))
    assert set(value.tolist()) <= {0.0, 1.0, 2.0}
    (g,) = grad(value, pi)
    assert_close(g, [[k - sum(j * a for j, a in enumerate(row)) for k in range(3)] for row in pi.tolist()])


def softmax_jacobian_times(pi, w):
    """(diag π − π πᵀ) w, by hand."""
    dot = sum(a * b for a, b in zip(pi, w))
    return [a * (b - dot) for a, b in zip(pi, w)]


@covers(ReinMax)
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_reinmax_one_hot_gradient(temperature):
    """ReinMax (Liu et al. 2023, Algorithm 2) on OneHotCategorical(logits=θ): the exact
    one-hot D forward; ∂(w·value)/∂θ = 2 J(π₁) w − ½ J(π₀) w, J(π) = diag π − ππᵀ,
    π₀ = softmax θ, π₁ = ½(D + softmax(θ/τ))."""
    logits = torch.tensor([[0.2, -0.5, 1.0], [1.5, 0.0, -1.0], [0.0, 0.3, -0.3]], requires_grad=True)
    w = [1.0, -2.0, 0.5]
    value = relaxed_draw(ReinMax(temperature), dist.OneHotCategorical(logits=logits))
    assert value.sum(-1).tolist() == [1.0] * 3 and set(value.reshape(-1).tolist()) <= {0.0, 1.0}
    (g,) = grad(value * torch.tensor(w), logits)
    expected = []
    for d, row in zip(value.tolist(), logits.tolist()):
        z0 = sum(math.exp(a) for a in row)
        pi0 = [math.exp(a) / z0 for a in row]
        zt = sum(math.exp(a / temperature) for a in row)
        pi1 = [(di + math.exp(a / temperature) / zt) / 2 for di, a in zip(d, row)]
        first, zeroth = softmax_jacobian_times(pi1, w), softmax_jacobian_times(pi0, w)
        expected.append([2 * a - 0.5 * b for a, b in zip(first, zeroth)])
    assert_close(g, expected)


@covers(ReinMax)
def test_reinmax_bernoulli_gradient():
    """ReinMax on Bernoulli(logits=φ), the second of two categories with logits (0, φ):
    ∂value/∂φ = 2 π₁(1 − π₁) − ½ σ(φ)(1 − σ(φ)), π₁ = ½(b + σ(φ/τ)), τ = 1."""
    phi = torch.tensor([-1.0, 0.0, 0.5, 2.0], requires_grad=True)
    value = relaxed_draw(ReinMax(), dist.Bernoulli(logits=phi))
    assert set(value.tolist()) <= {0.0, 1.0}
    (g,) = grad(value, phi)
    expected = []
    for b, v in zip(value.tolist(), phi.tolist()):
        pi1 = (b + sigmoid(v)) / 2
        expected.append(2 * pi1 * (1 - pi1) - 0.5 * sigmoid(v) * (1 - sigmoid(v)))
    assert_close(g, expected)


# ------------------------------------------------------------------------------------
# Pathwise: Reparam, STL, DReG
# ------------------------------------------------------------------------------------


@covers(Reparam, STL, DReG)
@pytest.mark.parametrize("estimator", [Reparam(), STL(), DReG()], ids=["Reparam", "STL", "DReG"])
def test_pathwise_estimators_draw_by_rsample(estimator):
    """Reparam, STL and DReG leave the site's distribution as it is (rsample): for
    z = μ + σε from Normal(μ, σ), ∂z²/∂μ = 2z and ∂z²/∂σ = 2zε, ε = (z − μ)/σ."""
    loc = torch.tensor([0.0, 1.0, -2.0], requires_grad=True)
    scale = torch.tensor([1.0, 0.5, 2.0], requires_grad=True)
    fn = dist.Normal(loc, scale)
    msg = {"fn": fn}
    estimator.prepare(msg)
    assert msg["fn"] is fn and msg["fn"].has_rsample
    z = msg["fn"].rsample()
    g_loc, g_scale = grad(z**2, (loc, scale))
    zd = z.detach().double()
    assert_close(g_loc, 2 * zd)
    assert_close(g_scale, 2 * zd * (zd - loc.detach().double()) / scale.detach().double())


@covers(Reparam, STL, DReG)
def test_only_stl_and_dreg_drop_the_score_of_q():
    """Sticking the landing (Roeder et al. 2017) and DReG (Tucker et al. 2019) score log q
    at detached parameters; no other registered estimator does."""
    dropping = {cls for cls in REGISTRY if drops_score_of_q(cls.example())}
    assert dropping == {STL, DReG}
    assert all(issubclass(cls, PathwiseEstimator) for cls in (Reparam, STL, DReG))
    assert STL.objectives == frozenset({"elbo"}) and DReG.objectives == frozenset({"iwae"})


def test_every_registered_estimator_has_a_formula_test():
    """Every class of the registry is covered by some test in this file."""
    assert len(REGISTRY) == 17
    missing = {cls.__name__ for cls in REGISTRY} - {cls.__name__ for cls in COVERED}
    assert not missing, f"no formula test for {sorted(missing)}"
