"""Reference gradients: exact where they can be computed, else a high-sample pathwise one.

Every reference is a dict from target name (an argument, a ``pyro.param``, or a
site's ``"site.param"``) to a tensor. Computed references differentiate an objective
in reverse mode with respect to every target at once, site parameters included (via
:class:`~pyro_grad.diagnostics.site_tangent.SiteTangent` shifts).
"""

from typing import Any, Callable, Dict, List, Optional, Type, Union

import torch

from pyro_grad.diagnostics.gradient_samples import Target, reverse_leaves
from pyro_grad.errors import EstimatorError
from pyro_grad.handler import estimators
from pyro_grad.objectives.objective import Objective
from pyro_grad.gradient_estimators import Reparam

Reference = Union[None, str, Dict[str, Any], Callable[..., Dict[str, Any]]]
#: Particles for the ``"reparam"`` reference, per gradient draw diagnosed.
REPARAM_PARTICLES_PER_DRAW = 100


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
    kind: Type[Objective],
    fn: Callable,
    guide: Optional[Callable],
    args: tuple,
    kwargs: dict,
    targets: List[Target],
    params: Dict[str, torch.Tensor],
    num_samples: int,
    num_particles: int = 1,
) -> Dict[str, torch.Tensor]:
    """The reference gradient of the objective ``kind`` (of ``fn``, or of model ``fn``
    and ``guide``, at ``num_particles`` particles) for each target it covers (possibly
    none)."""
    if reference is None:
        return {}
    if isinstance(reference, str):
        objective = kind.configured(num_particles, True, None)

        def model_and_guide(program: Callable) -> tuple:
            # ``program`` in place of the program whose sites are the targets.
            return (fn, program) if objective.takes_guide else (program, None)

        chosen = objective.chosen_program(fn, guide)
        if reference == "enumerate":
            def exact(a, wrap):
                return objective.exact(*model_and_guide(wrap(chosen)), a, kwargs)
        elif reference == "reparam":
            particles = REPARAM_PARTICLES_PER_DRAW * num_samples

            def exact(a, wrap):
                model, program = model_and_guide(estimators(wrap(chosen), default=Reparam()))
                if kind.averages_particles:  # one estimate of many particles is a precise one of the same objective
                    return kind.configured(particles, True, None).estimates(model, program, a, kwargs).values[0]
                # Else the mean of many independent estimates, each of the objective's K particles.
                many = max(1, particles // num_particles)
                return objective.estimates(model, program, a, kwargs, num_samples=many).values.mean()
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
