"""Sticking the landing: the pathwise ELBO gradient without the score of log q."""

from dataclasses import dataclass

from pyro_grad.gradient_estimators.base import PathwiseEstimator
from pyro_grad.gradient_estimators.reparam import Reparam


@dataclass(frozen=True, repr=False)
class STL(PathwiseEstimator):
    """Sticking the landing (Roeder, Wu & Duvenaud, NeurIPS 2017): the pathwise gradient
    of the ELBO with ``log q`` scored at its parameters detached.

    ``∇φ ELBO = E[∇_z (log p(x, z) − log q_φ(z)) ∂z/∂φ] − E[∂_φ log q_φ(z)]``; the last
    term, the score of ``q``, has mean zero and is dropped, so that the estimate's
    variance vanishes as ``q`` reaches the posterior. In :class:`~pyro_grad.ELBO` only:
    ``E[f]`` has no ``log q`` to drop (use ``Reparam``), and in the IWAE bound the score
    of ``q`` does not have mean zero (use ``DReG``). Applies to distributions with
    ``rsample`` whose parameters are all tensors it can detach. Cost: 1 evaluation.
    """

    unbiased = True
    objectives = frozenset({"elbo"})
    drops_score_of_q = True

    # Wherever the pathwise gradient applies: the value must be reparameterized.
    applies_to = Reparam.applies_to
