"""Property-based exactness of pg.IWAE: random model/guide pairs, every bound estimator.

Programs: a data plate of 1 or 2 points; in it, optionally a Bernoulli latent ``c`` and
optionally a Normal latent ``z`` whose prior and guide depend on ``c``; an observed
``x ~ Normal(b·z + h·c, σ_x)``. Random coefficients, data and parameters. The guide's
``c`` takes Score(), Score(constant baseline), VIMCO() or the default; its ``z``
Reparam(), DReG() or the default; K ∈ {1, 2, 3}.

Reference: the per-datum bound Σ_n E[log (1/K) Σ_k w_{k,n}] as a sum over every K-tuple
of ``c`` and a K-dimensional Gauss–Hermite sum over ``z``'s noise, in float64,
differentiated by autograd in every parameter (the guide's and the model's ``mu0``).

Tolerance: the mean of 4000 draws (300 from the reverse-mode loop with DReG) is within ``Z_BOUNDS`` standard errors of the exact
gradient, the larger of 4 and the Bonferroni z for a family-wise false-alarm rate of
1e-3 over every checked element of the run. ``PYRO_GRAD_DEEP=1`` runs 60 programs.
"""

import itertools
import math
import os
from typing import NamedTuple, Optional

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pyro.distributions import constraints
from scipy.stats import norm

import pyro_grad as pg
from conftest import ROUNDING, Z, standard_error_of_mean
from draws import elbo_draws

DEEP = os.environ.get("PYRO_GRAD_DEEP", "") not in ("", "0")
EXAMPLES = 60 if DEEP else 6
#: Parameter elements per program, at most: a, m, s for 2 data points, and mu0.
ELEMENTS = 7
Z_BOUNDS = max(Z, float(norm.isf(1e-3 / (2 * EXAMPLES * ELEMENTS))))
DRAWS = 4000
NODES = {1: 40, 2: 40, 3: 24}


class Pair(NamedTuple):
    """A random model and guide: which latents they have, and their constants."""

    data: tuple
    discrete: bool
    normal: bool
    prior: float  # P(c = 1) under the model
    gamma: float  # the prior mean of z moves by gamma·c
    b: float
    h: float
    sigma_x: float
    d: float  # the guide's mean of z moves by d·c
    a: tuple  # the guide's logits of c, per datum
    m: tuple
    s: tuple
    mu0: float

    def model(self, x):
        mu0 = pyro.param("mu0", torch.tensor(self.mu0))
        with pyro.plate("data", len(x)):
            c = pyro.sample("c", dist.Bernoulli(self.prior)) if self.discrete else 0.0
            mean = b_term = 0.0
            if self.normal:
                z = pyro.sample("z", dist.Normal(mu0 + self.gamma * c, 1.0))
                b_term = self.b * z
            else:
                mean = mu0  # the model's parameter enters through x's mean
            pyro.sample("x", dist.Normal(mean + b_term + self.h * c, self.sigma_x), obs=x)

    def guide(self, x):
        with pyro.plate("data", len(x)):
            c = 0.0
            if self.discrete:
                a = pyro.param("a", torch.tensor(self.a))
                c = pyro.sample("c", dist.Bernoulli(logits=a))
            if self.normal:
                m = pyro.param("m", torch.tensor(self.m))
                s = pyro.param("s", torch.tensor(self.s), constraint=constraints.positive)
                pyro.sample("z", dist.Normal(m + self.d * c, s))

    def exact(self, k: int, nodes: int):
        """The bound and its gradient in every unconstrained parameter, in float64."""
        names = ["mu0"] + (["a"] if self.discrete else []) + (["m", "s"] if self.normal else [])
        leaves = {n: pyro.param(n).unconstrained().detach().double().requires_grad_() for n in names}
        x = torch.tensor(self.data, dtype=torch.float64)
        cs = list(itertools.product([0.0, 1.0], repeat=k)) if self.discrete else [(0.0,) * k]
        e, w = (torch.tensor(t) for t in np.polynomial.hermite_e.hermegauss(nodes))
        w = w / w.sum()
        if self.normal:
            eps = torch.stack([g.reshape(-1) for g in torch.meshgrid(*([e] * k), indexing="ij")])  # (K, M)
            weight = torch.stack([g.reshape(-1) for g in torch.meshgrid(*([w] * k), indexing="ij")]).prod(0)
        else:
            eps, weight = torch.zeros(k, 1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
        mu0, bound = leaves["mu0"], 0.0
        for c_tuple in cs:
            c = torch.tensor(c_tuple, dtype=torch.float64)[None, :, None]  # (1, K, 1)
            log_w = torch.zeros(len(self.data), k, 1, dtype=torch.float64)
            probability = torch.ones(len(self.data), dtype=torch.float64)
            if self.discrete:
                q = dist.Bernoulli(logits=leaves["a"][:, None, None])
                log_w = log_w + dist.Bernoulli(torch.tensor(self.prior, dtype=torch.float64)).log_prob(c) - q.log_prob(c)
                probability = q.log_prob(c).sum((1, 2)).exp()
            mean = 0.0
            if self.normal:
                m, s = leaves["m"][:, None, None], leaves["s"].exp()[:, None, None]
                z = m + self.d * c + s * eps
                log_w = log_w + dist.Normal(mu0 + self.gamma * c, 1.0).log_prob(z) - dist.Normal(m + self.d * c, s).log_prob(z)
                mean = self.b * z
            else:
                mean = mu0
            log_w = log_w + dist.Normal(mean + self.h * c, self.sigma_x).log_prob(x[:, None, None])
            per_datum = ((torch.logsumexp(log_w, 1) - math.log(k)) * weight).sum(-1)
            bound = bound + (probability * per_datum).sum()
        gradient = torch.autograd.grad(bound, list(leaves.values()))
        return float(bound), dict(zip(names, gradient))


small = st.sampled_from([-1.0, -0.5, 0.0, 0.5, 1.0])


@st.composite
def pairs(draw) -> Pair:
    n = draw(st.integers(1, 2))
    discrete, normal = draw(st.sampled_from([(True, False), (False, True), (True, True)]))
    return Pair(
        data=tuple(draw(st.lists(st.sampled_from([-1.5, -0.4, 0.3, 1.2, 2.0]), min_size=n, max_size=n))),
        discrete=discrete, normal=normal,
        prior=draw(st.sampled_from([0.2, 0.5, 0.7])), gamma=draw(small), b=draw(st.sampled_from([0.5, 1.0])),
        h=draw(small), sigma_x=draw(st.sampled_from([0.8, 1.0, 1.5])), d=draw(small),
        a=tuple(draw(st.lists(small, min_size=n, max_size=n))),
        m=tuple(draw(st.lists(small, min_size=n, max_size=n))),
        s=tuple(draw(st.lists(st.sampled_from([0.6, 0.8, 1.0]), min_size=n, max_size=n))),
        mu0=draw(small),
    )


def check_pair(pair: Pair, k: int, choices: dict) -> None:
    pair.guide(torch.tensor(pair.data))
    pyro.param("mu0", torch.tensor(pair.mu0))
    value, exact = pair.exact(k, NODES[k])
    finer_value, finer = pair.exact(k, NODES[k] + 8)
    guide = pg.estimators(pair.guide, choices) if choices else pair.guide
    # DReG's ∂log w/∂z is reverse-mode only: its draws come from the (slower) loop.
    loop = pg.DReG() in choices.values()
    count = 300 if loop else DRAWS
    draws, values = elbo_draws(pair.model, guide, torch.tensor(pair.data), num_samples=count, num_particles=k,
                               objective=pg.IWAE, values=True, mode="loop" if loop else "vectorized")
    checks = [("bound", values, value, finer_value)]
    checks += [(f"{n}[{i}]", draws[n].reshape(count, -1)[:, i], float(exact[n].reshape(-1)[i]),
                float(finer[n].reshape(-1)[i])) for n in exact for i in range(exact[n].numel())]
    for label, sample, reference, finer_reference in checks:
        se = standard_error_of_mean(sample)
        assert abs(reference - finer_reference) <= max(se / 20, 1e-9), f"{label}: the quadrature has not converged"
        mean = float(sample.double().mean())
        tolerance = Z_BOUNDS * se + 1e3 * ROUNDING * max(1.0, abs(reference))
        assert abs(mean - reference) <= tolerance, (
            f"{pair} with {choices}, K={k}: {label} mean {mean:.5g} vs exact {reference:.5g} (se {se:.3g})"
        )


@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(pair=pairs(), data=st.data())
def test_every_bound_estimator_matches_the_exact_iwae_gradient(pair, data):
    k = data.draw(st.integers(1, 3), label="K")
    choices = {}
    if pair.discrete:
        options = [pg.Score(), pg.Score(baseline=-2.0), None] + ([pg.VIMCO()] if k >= 2 else [])
        choice: Optional[pg.Estimator] = data.draw(st.sampled_from(options), label="c")
        if choice is not None:
            choices["c"] = choice
    if pair.normal:
        choice = data.draw(st.sampled_from([pg.Reparam(), pg.DReG(), None]), label="z")
        if choice is not None:
            choices["z"] = choice
    assume(pair.normal or pair.discrete)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    check_pair(pair, k, choices)
