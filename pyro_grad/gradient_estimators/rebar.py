"""REBAR for discrete sites: RELAX whose control variate is f at the relaxed sample, unbiased.

Tucker, Mnih, Maddison, Lawson & Sohl-Dickstein (NeurIPS 2017): with ``z`` the
continuous variable behind the draw (``b = H(z)``), ``z̃ ~ p(z | b)`` and ``σ_λ`` the
Concrete relaxation at temperature ``λ``,

    ĝ_θ = [f(b) − η·f(σ_λ(z̃))] ∇θ log p(b | θ) + η·∇θ f(σ_λ(z)) − η·∇θ f(σ_λ(z̃)),

unbiased for every ``η`` and ``λ``, which are learned online to minimize the variance
(``Σ ĝ_θ²``). It is RELAX (:mod:`pyro_grad.gradient_estimators.relax`, which has the derivation, the
refusals and the conditional draws) with no network. State: ``pyro.param``s named
``_pyro_grad_rebar_<site>.eta`` and ``.temperature``, saved with the param store and
reset by ``pyro.clear_param_store()``.

Cost: 3 evaluations per particle.
"""

from dataclasses import dataclass

from pyro_grad.gradient_estimators.relax import RelaxedControlVariate


@dataclass(frozen=True, repr=False)
class REBAR(RelaxedControlVariate):
    """REBAR (Tucker et al. 2017): RELAX with ``c(z) = η·f(σ_λ(z))``, ``η`` and ``λ``
    learned (module docs). Unbiased. Cost: 3 evaluations per particle."""

    learned_network = False
    prefix = "_pyro_grad_rebar_"
