"""Property-based exactness of pg.ELBO's enumeration, on random programs, against TraceEnum_ELBO.

Programs: one to three discrete latents (Bernoulli or Categorical(3)), each global or
in a plate of two data, globals first (TraceEnum's rule: nothing outside a plate
depends on what is inside it); each latent's logits are a parameter plus a multiple of
an earlier latent's value; two observations in the plate, Normal around the sum of
the latents. Each latent is, by hypothesis's choice, enumerated in the model (the
guide does not draw it), enumerated in the guide, or sampled in the guide under pg's
default (the score function with a baseline). A model-enumerated latent stays at least
as local as every guide-enumerated one, as TraceEnum_ELBO requires.

Reference: TraceEnum_ELBO with every guide latent enumerated, which is exact
(deterministic). Where nothing is sampled pg's gradient must equal it to float
tolerance (1e-4 relative); otherwise the mean of 200 of pg's draws (K = 2 particles,
vectorized or looped) is within ``Z_SUITE`` standard errors of it in every coordinate,
``Z_SUITE`` the larger of 4 and the Bonferroni-corrected z for a family-wise false-alarm
rate of 1e-3 over the run's examples and coordinates. Deterministic: ``derandomize``,
fixed seeds.
"""

from typing import List, NamedTuple

import pyro
import pyro.distributions as dist
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyro.infer import TraceEnum_ELBO
from scipy.stats import norm

import pyro_grad as pg
from conftest import ROUNDING, Z, standard_error_of_mean

EXAMPLES = 12
#: At most 3 latents' parameters, of at most 3 entries each, in model and guide.
COORDINATES = 18
Z_SUITE = max(Z, float(norm.isf(1e-3 / (2 * EXAMPLES * COORDINATES))))
DRAWS = 200
DATA = torch.tensor([0.4, 1.7])
ROLES = ("model", "guide-enumerated", "guide-sampled")


class Latent(NamedTuple):
    family: str  # "bernoulli" or "categorical"
    plated: bool
    parent: int  # an earlier latent whose value shifts the logits, or -1
    role: str


def law(latent: Latent, logits: torch.Tensor, values: List[torch.Tensor]):
    """The latent's distribution given the earlier values (broadcasting over enumerated dims)."""
    shift = 0.0 if latent.parent < 0 else 0.7 * values[latent.parent].float()
    if latent.family == "bernoulli":
        return dist.Bernoulli(logits=logits + shift)
    return dist.Categorical(logits=logits + (shift if latent.parent < 0 else shift.unsqueeze(-1)))


def size(latent: Latent) -> int:
    return 1 if latent.family == "bernoulli" else 3


def program(latents: List[Latent], in_guide: bool, enumerate_sampled: bool = False):
    """The model (``in_guide=False``) or the guide of a random program."""
    def fn(data):
        values = []
        plate = pyro.plate("data", len(data), dim=-1)
        for i, latent in enumerate(latents):
            if in_guide and latent.role == "model":
                values.append(None)
                continue
            logits = pyro.param(f"{'phi' if in_guide else 'theta'}_{i}", torch.linspace(-0.5, 0.5, size(latent)).squeeze(0)
                                * (i + 1))
            enumerated = (latent.role == "model" and not in_guide) or (
                in_guide and (latent.role == "guide-enumerated" or enumerate_sampled))
            infer = {"enumerate": "parallel"} if enumerated else {}
            if latent.plated:
                with plate:
                    values.append(pyro.sample(f"z_{i}", law(latent, logits, values), infer=infer))
            else:
                values.append(pyro.sample(f"z_{i}", law(latent, logits, values), infer=infer))
        if not in_guide:
            with plate:
                total = sum(v.float() for v in values)
                pyro.sample("x", dist.Normal(total, 1.0), obs=data)
    return fn


@st.composite
def programs(draw) -> List[Latent]:
    n = draw(st.integers(1, 3))
    globals_ = draw(st.integers(0, n))
    latents = []
    for i in range(n):
        plated = i >= globals_
        parent = draw(st.integers(-1, i - 1)) if i else -1
        latents.append(Latent(draw(st.sampled_from(["bernoulli", "categorical"])), plated, parent,
                              draw(st.sampled_from(ROLES))))
    # The guide cannot depend on a latent only the model draws.
    for i, latent in enumerate(latents):
        if latent.role != "model" and latent.parent >= 0 and latents[latent.parent].role == "model":
            latents[i] = latent._replace(parent=-1)
    # TraceEnum's rule: model enumeration no more global than guide enumeration.
    if any(l.role == "model" and not l.plated for l in latents) and any(
        l.role != "model" and l.plated for l in latents
    ):
        latents = [l._replace(role="guide-enumerated") if l.role == "model" and not l.plated else l for l in latents]
    return latents


def gradient(elbo, model, guide) -> torch.Tensor:
    loss = elbo.differentiable_loss(model, guide, DATA)
    names = sorted(pyro.get_param_store().keys())
    params = [pyro.param(n).unconstrained() for n in names]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)])


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(latents=programs(), vectorize=st.booleans())
def test_enumeration_in_random_programs_matches_traceenum(latents, vectorize):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model, guide = program(latents, in_guide=False), program(latents, in_guide=True)
    exact = gradient(TraceEnum_ELBO(max_plate_nesting=1), model, program(latents, True, enumerate_sampled=True))
    elbo = pg.ELBO(num_particles=2, vectorize_particles=vectorize)
    if not any(l.role == "guide-sampled" for l in latents):
        assert torch.allclose(gradient(elbo, model, guide), exact, rtol=1e-4, atol=1e-5)
        return
    draws = torch.stack([gradient(elbo, model, guide) for _ in range(DRAWS)])
    for j in range(exact.numel()):
        column = draws[:, j]
        tolerance = Z_SUITE * standard_error_of_mean(column) + ROUNDING * max(1.0, abs(float(exact[j])))
        assert abs(float(column.double().mean()) - float(exact[j])) <= tolerance, (latents, j, column.mean(), exact[j])
