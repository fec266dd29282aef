"""Relaxations of discrete sites: Gumbel-softmax (Concrete), straight-through and its
second-order form ReinMax. Biased.

Meaning inside an ELBO (mind Pyro issue #3127): a *hard* relaxed sample is an exact
discrete value that carries a relaxed gradient, and it is scored by the site's
*discrete* log-probability, in the guide and in the model alike, so the ELBO's value is
the true one and only its gradient is approximate. A *soft* sample (``hard=False``) is
not in the discrete support, so an ELBO refuses it; in ``pg.expectation`` it is fed to
the program as it is and scored by the relaxed density.
"""

import numbers
from dataclasses import dataclass
from typing import Any, List, Optional

import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution
from torch.distributions import constraints

from pyro_grad.errors import EstimatorError
from pyro_grad.gradient_estimators.base import Example, Relaxation, Site
from pyro_grad.distributions import leaf_distribution, logits_of
from pyro_grad.one_hot import one_hot

RELAXABLE = (dist.Bernoulli, dist.Categorical, dist.OneHotCategorical)


def check_temperature(estimator: Any) -> None:
    """A relaxation's ``temperature`` is a positive number, or one clear error."""
    t = estimator.temperature
    if isinstance(t, bool) or not isinstance(t, numbers.Real) or not t > 0:
        raise EstimatorError(f"{type(estimator).__name__}(temperature={t!r}): temperature must be a positive number")


def _relaxable(fn: Any) -> bool:
    return isinstance(leaf_distribution(fn), RELAXABLE) and not isinstance(fn, dist.MaskedDistribution)


class RelaxedSample(TorchDistribution):
    """Draws ``base_dist`` through a relaxation: ``rsample`` returns a value whose gradient
    is the relaxation's. ``temperature=None`` means straight-through on the probabilities."""

    arg_constraints = {}
    #: A path switch, not part of the user's distribution (see ``describe``).
    path_wrapper = True
    has_rsample = True

    def __init__(self, base_dist: Any, temperature: Any, hard: bool, second_order: bool = False) -> None:
        self.base_dist = base_dist
        self.temperature = temperature
        self.hard = hard
        self.second_order = second_order
        super().__init__(base_dist.batch_shape, base_dist.event_shape, validate_args=False)

    def expand(self, batch_shape, _instance=None) -> "RelaxedSample":
        return RelaxedSample(self.base_dist.expand(batch_shape), self.temperature, self.hard, self.second_order)

    @constraints.dependent_property
    def support(self):
        return self.base_dist.support

    @property
    def draws_float_index(self) -> bool:
        """Whether the draw is a Categorical's index handed to the program as a float
        (``Σ_k k·y_k``, so that the relaxed gradient reaches it)."""
        return isinstance(leaf_distribution(self.base_dist), dist.Categorical)

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        return self.rsample(sample_shape).detach()

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        leaf = leaf_distribution(self.base_dist)
        shape = sample_shape + self.base_dist.batch_shape + self.base_dist.event_shape
        if isinstance(leaf, dist.Bernoulli):
            return self._bernoulli(logits_of(leaf).expand(shape))
        categories = logits_of(leaf).shape[-1]
        if isinstance(leaf, dist.Categorical):
            one_hot = self._one_hot(logits_of(leaf).expand(shape + (categories,)))
            return (one_hot * torch.arange(categories, dtype=one_hot.dtype)).sum(-1)
        return self._one_hot(logits_of(leaf).expand(shape))

    def _bernoulli(self, logits: torch.Tensor) -> torch.Tensor:
        if self.second_order:  # a Bernoulli is the second of two categories, logits (0, φ)
            return self._reinmax(torch.stack([torch.zeros_like(logits), logits], -1))[..., 1]
        if self.temperature is None:  # straight-through: b + p − sg(p)
            probs = torch.sigmoid(logits)
            hard = torch.bernoulli(probs.detach())
            return hard + (probs - probs.detach())  # exactly hard in value
        u = torch.rand(logits.shape).clamp(1e-6, 1 - 1e-6)
        soft = torch.sigmoid((logits + u.log() - (-u).log1p()) / self.temperature)
        if not self.hard:
            return soft
        hard = (soft.detach() > 0.5).to(soft.dtype)
        return hard + (soft - soft.detach())  # exactly hard in value

    def _reinmax(self, logits: torch.Tensor) -> torch.Tensor:
        """ReinMax (Liu et al. 2023, Algorithm 2): the exact one-hot draw D forward, and
        backward the gradient of π₂ = 2π₁ − ½π₀, with π₀ = softmax(θ) and π₁ the softmax
        through θ of the value ½(D + softmax(θ/τ))."""
        pi0 = logits.softmax(-1)
        index = torch.multinomial(pi0.detach().reshape(-1, pi0.shape[-1]), 1).reshape(pi0.shape[:-1])
        hard = one_hot(index, pi0.shape[-1], pi0.dtype)
        pi1 = (hard + (logits / self.temperature).softmax(-1)) / 2
        pi1 = ((pi1.log() - logits).detach() + logits).softmax(-1)
        pi2 = 2 * pi1 - 0.5 * pi0
        return hard + (pi2 - pi2.detach())  # exactly hard in value

    def _one_hot(self, logits: torch.Tensor) -> torch.Tensor:
        if self.second_order:
            return self._reinmax(logits)
        if self.temperature is None:
            probs = logits.softmax(-1)
            index = torch.multinomial(probs.detach().reshape(-1, probs.shape[-1]), 1).reshape(probs.shape[:-1])
            hard = one_hot(index, probs.shape[-1], probs.dtype)
            return hard + (probs - probs.detach())  # exactly hard in value
        gumbel = -(-torch.rand(logits.shape).clamp(1e-6, 1 - 1e-6).log()).log()
        soft = ((logits + gumbel) / self.temperature).softmax(-1)
        if not self.hard:
            return soft
        index = soft.detach().argmax(-1)
        hard = one_hot(index, soft.shape[-1], soft.dtype)
        return hard + (soft - soft.detach())  # exactly hard in value

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self.hard or self.temperature is None:
            return self.base_dist.log_prob(value)
        return self._relaxed_density().log_prob(value)

    def _relaxed_density(self) -> Any:
        leaf = leaf_distribution(self.base_dist)
        shape = self.base_dist.batch_shape
        if isinstance(leaf, dist.Bernoulli):
            return dist.RelaxedBernoulli(torch.tensor(self.temperature), logits=logits_of(leaf).expand(shape))
        if isinstance(leaf, dist.OneHotCategorical):
            return dist.RelaxedOneHotCategorical(torch.tensor(self.temperature), logits=logits_of(leaf))
        raise EstimatorError(
            "a soft Gumbel-softmax sample of a Categorical is a fractional index with no "
            "density; use hard=True, or a OneHotCategorical site"
        )


@dataclass(frozen=True, repr=False)
class GumbelSoftmax(Relaxation):
    """Concrete relaxation: ``y = softmax((logits + g)/τ)``, ``g`` Gumbel noise (for a
    Bernoulli, ``y = σ((logit + logistic noise)/τ)``); gradients flow through ``y``.
    ``hard=True`` is straight-through Gumbel: the exact discrete value forward,
    ``hard + y − sg(y)``, the relaxed gradient backward. Biased at every τ > 0.
    Applies to Bernoulli, Categorical (value ``Σ_k k·y_k``) and OneHotCategorical.
    Cost: 1 evaluation.
    """

    temperature: float = 0.5
    hard: bool = False

    unbiased = False

    def __post_init__(self) -> None:
        check_temperature(self)

    @property
    def exact_value(self) -> bool:
        return bool(self.hard)

    @classmethod
    def applies_to(cls, site: Site) -> bool:
        return _relaxable(site.fn)

    def refusal(self, site: Site) -> Optional[str]:
        if self.applies_to(site) and not self.hard and isinstance(leaf_distribution(site.fn), dist.Categorical):
            return (
                "a soft sample of a Categorical is a fractional index, which neither indexes nor "
                "has a density; use GumbelSoftmax(hard=True), StraightThrough(), or a "
                "OneHotCategorical site for the soft relaxation"
            )
        return super().refusal(site)

    @classmethod
    def example_for(cls, site: Site) -> "GumbelSoftmax":
        # A soft sample of a Categorical would be a fractional index.
        return cls(hard=isinstance(leaf_distribution(site.fn), dist.Categorical))

    @classmethod
    def examples_for(cls, site: Site, exact_value: bool = False) -> List[Example]:
        if exact_value:  # an ELBO scores the discrete value: only the hard relaxation fits
            return [Example("GumbelSoftmax(hard)", cls(hard=True), 1)]
        return super().examples_for(site)

    def prepare(self, msg: dict) -> None:
        msg["fn"] = RelaxedSample(msg["fn"], float(self.temperature), bool(self.hard))


@dataclass(frozen=True, repr=False)
class StraightThrough(Relaxation):
    """Straight-through: the exact discrete draw forward, ``b + p − sg(p)``, so backward
    takes ``∂b/∂p = 1`` (one-hot ``h + π − sg(π)`` for a Categorical). Biased.
    Applies to Bernoulli, Categorical and OneHotCategorical. Cost: 1 evaluation.
    """

    unbiased = False

    @classmethod
    def applies_to(cls, site: Site) -> bool:
        return _relaxable(site.fn)

    def prepare(self, msg: dict) -> None:
        msg["fn"] = RelaxedSample(msg["fn"], None, True)


@dataclass(frozen=True, repr=False)
class ReinMax(Relaxation):
    """ReinMax (Liu, Zhang, Gao, Wang, Chen & Han, NeurIPS 2023): straight-through with
    second-order accuracy. The exact one-hot draw ``D`` forward; backward the gradient of
    ``π₂ = 2π₁ − ½π₀``, ``π₀ = softmax(θ)``, ``π₁ = softmax(sg(log ½(D + softmax(θ/τ)) − θ) + θ)``
    (Heun's method on the straight-through ODE instead of Euler's). Biased.
    Applies to Bernoulli (the second of two categories with logits ``(0, φ)``),
    Categorical and OneHotCategorical. Cost: 1 evaluation.
    """

    temperature: float = 1.0

    unbiased = False

    def __post_init__(self) -> None:
        check_temperature(self)

    @classmethod
    def applies_to(cls, site: Site) -> bool:
        return _relaxable(site.fn)

    def prepare(self, msg: dict) -> None:
        msg["fn"] = RelaxedSample(msg["fn"], float(self.temperature), True, second_order=True)
