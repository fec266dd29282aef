"""DReG: the doubly reparameterized gradient of the importance-weighted bound."""

from dataclasses import dataclass

from pyro_grad.gradient_estimators.base import PathwiseEstimator
from pyro_grad.gradient_estimators.reparam import Reparam


@dataclass(frozen=True, repr=False)
class DReG(PathwiseEstimator):
    """DReG (Tucker, Lawson, Gu & Maddison, ICLR 2019): the IWAE bound's gradient in the
    guide's parameters, with the score of ``q`` reparameterized a second time.

    ``∇φ L = E[Σ_k w̃_k² ∂log w_k/∂z_k ∂z_k/∂φ]``: the plain gradient's score term
    ``−Σ_k w̃_k ∂_φ log q_φ(z_k)`` has, by reparameterizing ``z_k`` once more, the mean of
    ``−Σ_k (w̃_k − w̃_k²) ∂log w_k/∂z_k ∂z_k/∂φ``. The model's parameters keep
    ``Σ_k w̃_k ∇log p``. Per site: ``log q`` is scored at its parameters detached, and the
    pathwise gradient through the site's value is reweighted from ``w̃_k`` to ``w̃_k²``.
    At K = 1 it is :class:`~pyro_grad.STL`.

    In :class:`~pyro_grad.IWAE` only, at sites with ``rsample`` after which no
    non-reparameterized guide site depends on the value (its law would move with the
    value, which this identity does not see), and whose value the program does not read
    into Python. Cost: 1 evaluation, plus one backward pass for ``∂log w/∂z``.
    """

    unbiased = True
    objectives = frozenset({"iwae"})
    drops_score_of_q = True

    # Wherever the pathwise gradient applies: the value must be reparameterized.
    applies_to = Reparam.applies_to
