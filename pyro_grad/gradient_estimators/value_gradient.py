"""What DoubleCV and RODEO share: the leave-one-out score function on discrete sites,
corrected by control variates built from the value gradients ``g_k = ∇_b f(b_k)``.

The site's draw is a leaf that requires grad (no derivative flows back through it to
the parameters), so the objective can differentiate f in it at the discrete value:
one backward, no extra evaluation. The estimator receives its particles' values,
probabilities, logits and value gradients (:class:`~pyro_grad.gradient_estimators.base.ValueGradient`)
with the values of f. A term of f that stays in a plate element is a *unit* with its
own control variate (the papers' per-datum estimator); its coordinates are the
elements that share it (the element's event, or a whole particle's elements).
"""

from typing import ClassVar, List, Tuple

import pyro.distributions as dist
import torch

from pyro_grad.distributions import leaf_distribution
from pyro_grad.errors import EstimatorError
from pyro_grad.gradient_estimators.base import Example, Site, ValueGradientEstimator


class LeaveOneOutWithGradients(ValueGradientEstimator):
    """Base of the score-function estimators that need K ≥ 2 particles and ∇_b f."""

    unbiased = True
    min_particles = 2
    #: The distributions it applies to (unmasked, possibly batched or ``to_event``).
    families: ClassVar[Tuple[type, ...]] = (dist.Bernoulli,)

    @classmethod
    def applies_to(cls, site: Site) -> bool:
        fn = site.fn
        return isinstance(leaf_distribution(fn), cls.families) and not isinstance(fn, dist.MaskedDistribution)

    @classmethod
    def examples_for(cls, site: Site, exact_value: bool = False) -> List[Example]:
        return [Example(f"{cls.__name__}, K=4", cls(), 4)]

    def check_particles(self, name: str, num_particles: int) -> None:
        if num_particles < 2:
            raise EstimatorError(
                f"{self!r} at site '{name}' needs num_particles >= 2 for its leave-one-out "
                f"baseline, got {num_particles}"
            )


def units(t: torch.Tensor, f_shape: torch.Size, categories: bool = False) -> torch.Tensor:
    """``t (G, K, dims...)`` as ``(G, K, U, D)``: the ``U`` units (the dims where f has
    its own entries) by the ``D`` coordinates that share each entry of f. With
    ``categories``, ``t``'s last axis is a category axis, kept last: ``(G, K, U, D, C)``."""
    last = t.dim() - 1 if categories else t.dim()
    own = [i for i in range(2, last) if f_shape[i] != 1]
    shared = [i for i in range(2, last) if f_shape[i] == 1]
    category = t.shape[last:]
    t = t.permute([0, 1, *own, *shared, *range(last, t.dim())])
    coordinates = max(1, int(torch.Size(t.shape[2 + len(own):last]).numel()))
    return t.reshape(t.shape[0], t.shape[1], -1, coordinates, *category)


def per_unit_f(f: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """The values of f (detached), one per unit, with the value's event dims added."""
    f = f.detach()
    return f.reshape(f.shape + (1,) * (value.dim() - f.dim()))
