"""Reference gradients: exact where they can be computed, else a high-sample pathwise one.

Every reference is a dict from target name (an argument, a ``pyro.param``, or a
site's ``"site.param"``) to a tensor. Computed references differentiate an objective
in reverse mode with respect to every target at once, site parameters included (via
:class:`~pyro_grad.diagnostics.site_tangent.SiteTangent` shifts).
"""

from typing import Any, Callable, Dict, List, Optional, Union

import pyro.poutine as poutine
import torch
from pyro.infer import TraceEnum_ELBO, config_enumerate

from pyro_grad.diagnostics.gradient_samples import Target, reverse_leaves
from pyro_grad.engine.particles import guess_max_plate_nesting
from pyro_grad.errors import EstimatorError
from pyro_grad.handler import estimators
from pyro_grad.objectives.choice import sampler
from pyro_grad.objectives.expectation import check_f, expectation
from pyro_grad.gradient_estimators import Reparam

Reference = Union[None, str, Dict[str, Any], Callable[..., Dict[str, Any]]]
#: Particles for the ``"reparam"`` reference, per gradient draw diagnosed.
REPARAM_PARTICLES_PER_DRAW = 100


def exact_enumerated_expectation(fn: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    """``E[f] = Σ_z p(z) f(z)`` by summing every latent site over its support (parallel
    enumeration). Sites in plates are refused: their joint support grows exponentially."""
    nesting = guess_max_plate_nesting(fn, args, kwargs)
    enumerated = poutine.enum(config_enumerate(fn, "parallel"), first_available_dim=-nesting - 1)
    trace = poutine.trace(enumerated).get_trace(*args, **kwargs)
    log_joint = torch.zeros(())
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        if not site["fn"].has_enumerate_support:
            raise EstimatorError(
                f"reference='enumerate' cannot sum site '{name}' ({type(site['fn']).__name__}): "
                "its support is not finite; use reference='reparam' or an exact dict"
            )
        if any(f.vectorized for f in site["cond_indep_stack"]):
            raise EstimatorError(
                f"reference='enumerate' cannot sum site '{name}' inside a plate: its joint "
                "support grows exponentially; pass an exact reference instead"
            )
        log_joint = log_joint + site["fn"].log_prob(site["value"])
    f = trace.nodes["_RETURN"]["value"]
    if not torch.is_tensor(f):
        check_f(f, 1, False)
    return (log_joint.exp() * f).sum()


def exact_enumerated_elbo(model: Callable, guide: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    """The exact ELBO, every guide site enumerated (Pyro's ``TraceEnum_ELBO``)."""
    loss = TraceEnum_ELBO().differentiable_loss(
        model, config_enumerate(guide, "parallel"), *args, **kwargs
    )
    return -loss


def gradients_of(
    objective: Callable[[tuple, Callable], torch.Tensor],
    args: tuple,
    targets: List[Target],
    params: Dict[str, torch.Tensor],
) -> Dict[str, torch.Tensor]:
    """Reverse-mode gradient of ``objective(args, wrap)`` with respect to every target.

    ``wrap`` must be applied to the program whose sites are targets (the guide, when
    there is one), so that a site's shift reaches only that program's draw.
    """
    new_args, leaves, sites = reverse_leaves(args, targets, params)

    def wrap(program: Callable) -> Callable:
        for site in sites:
            program = site(program)
        return program

    value = objective(new_args, wrap)
    grads = torch.autograd.grad(value, list(leaves.values()), allow_unused=True)
    return {
        name: torch.zeros_like(leaves[name]) if g is None else g.detach()
        for name, g in zip(leaves, grads)
    }


def resolve_reference(
    reference: Reference,
    objective: Any,
    fn: Callable,
    guide: Optional[Callable],
    args: tuple,
    kwargs: dict,
    targets: List[Target],
    params: Dict[str, torch.Tensor],
    num_samples: int,
    num_particles: int = 1,
) -> Dict[str, torch.Tensor]:
    """The reference gradient of ``objective`` (``pg.expectation`` of ``fn``, or an ELBO
    class of model ``fn`` and ``guide``, at ``num_particles`` particles) for each target
    it covers (possibly none)."""
    if reference is None:
        return {}
    if isinstance(reference, str):
        averages = objective is expectation or objective.averages_particles
        if reference == "enumerate" and not averages:
            raise EstimatorError(
                f"reference='enumerate' sums the ELBO over the guide's support, not the bound of "
                f"{objective.__name__}, which is not a mean over particles; pass a dict or a callable of "
                "its exact gradients, or reference='reparam'"
            )
        if reference == "enumerate":
            if objective is expectation:
                def exact(a, wrap):
                    return exact_enumerated_expectation(wrap(fn), a, kwargs)
            else:
                def exact(a, wrap):
                    return exact_enumerated_elbo(fn, wrap(guide), a, kwargs)
        elif reference == "reparam":
            particles = REPARAM_PARTICLES_PER_DRAW * num_samples

            def exact(a, wrap):
                if objective is expectation:
                    model, program = estimators(wrap(fn), default=Reparam()), None
                else:
                    model, program = fn, estimators(wrap(guide), default=Reparam())
                if averages:  # one estimate of many particles is a precise one of the same objective
                    return sampler(objective, model, program, kwargs, particles, True)(a, 1).values[0]
                # Else the mean of many independent estimates, each of the objective's K particles.
                many = max(1, particles // num_particles)
                return sampler(objective, model, program, kwargs, num_particles, True)(a, many).values.mean()
        else:
            raise EstimatorError(
                f"reference must be None, 'enumerate', 'reparam', a dict or a callable; got {reference!r}"
            )
        return gradients_of(exact, args, targets, params)
    if callable(reference):
        reference = reference(*args, **kwargs)
    if not isinstance(reference, dict):
        raise EstimatorError(f"a reference must give a dict of exact gradients, got {type(reference).__name__}")
    known = {t.name for t in targets}
    unknown = sorted(set(reference) - known)
    if unknown:
        raise EstimatorError(f"reference names {unknown}, which are not targets; the targets are {sorted(known)}")
    return {name: torch.as_tensor(value, dtype=torch.float).detach() for name, value in reference.items()}
