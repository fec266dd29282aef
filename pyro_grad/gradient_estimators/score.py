"""The score-function (REINFORCE) gradient, Rao-Blackwellized, with baselines."""

import numbers
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple, Union

import pyro.distributions as dist
import torch

from pyro_grad import baselines
from pyro_grad.baselines import RunningAverages
from pyro_grad.engine.importance_weights import log_mean_exp
from pyro_grad.errors import EstimatorError
from pyro_grad.gradient_estimators.base import Example, ScoreEstimator, ScoreSite, Site
from pyro_grad.distributions import leaf_distribution, support_moves

BaselineSpec = Union[None, str, float, Callable]
_NAMED = ("auto", "loo", "decay", "pooled")


@dataclass(frozen=True, repr=False)
class Score(ScoreEstimator):
    """Score function: ``∇θ E[f] = E[(f_down − b) ∇θ log q_θ(z)]`` plus the pathwise part of f.

    Rao-Blackwellized: the site's score multiplies only ``f_down``, the terms of f whose value
    depends on the site (tracked by provenance, as in ``TraceGraph_ELBO``).
    ``baseline`` (``b``, independent of the particle's own draw, so unbiased):

    * ``None``: no baseline.
    * ``"loo"``: leave-one-out, the mean of the other K − 1 particles' values of f (K ≥ 2).
    * ``"decay"``: an exponential moving average with factor ``beta``, one per element
      of f (TraceGraph_ELBO's decaying average), kept by the estimators handler that
      chose it (so by the wrapped program, or by the :class:`~pyro_grad.ELBO`) across
      steps; never in the param store.
    * ``"pooled"``: one such average per site, pooled over the particles and plate
      elements and bias-corrected (:func:`pyro_grad.baselines.pooled_average`).
    * ``"auto"``: ``"loo"`` when K ≥ 2, else ``"pooled"``.
    * a float: a constant.
    * an ``nn.Module`` or callable: ``baseline(*args, **kwargs)`` of the program's
      inputs, fitted by an added squared-error term as Pyro's ``nn_baseline``.

    Applies to every distribution with a density or mass function (not ``Delta``).
    Cost: 1 evaluation; the baselines add O(K) work.

    In :class:`~pyro_grad.IWAE` every particle's learning signal is the bound itself,
    ``L = log (1/K) Σ_j w_j`` (minus a constant baseline; the others would see the
    particle's own draw), beside the bound's own ``Σ_k w̃_k ∇log w_k``: the plain
    score-function IWAE gradient. ``"auto"`` there means :class:`~pyro_grad.VIMCO`.
    """

    baseline: BaselineSpec = None
    beta: float = 0.9

    unbiased = True
    objectives = frozenset({"expectation", "elbo", "iwae"})

    def __post_init__(self) -> None:
        b = self.baseline
        ok = (
            b is None
            or (isinstance(b, str) and b in _NAMED)
            or (isinstance(b, numbers.Real) and not isinstance(b, bool))
            or callable(b)
        )
        if not ok:
            raise EstimatorError(
                f"Score(baseline={b!r}): baseline must be None, 'loo', 'decay', 'auto', "
                "a float, or an nn.Module/callable"
            )
        if isinstance(self.beta, bool) or not isinstance(self.beta, numbers.Real) or not 0.0 <= self.beta < 1.0:
            raise EstimatorError(f"Score(beta={self.beta!r}): beta must be in [0, 1)")

    @property
    def min_particles(self) -> int:  # type: ignore[override]
        # The leave-one-out baseline needs another particle to leave the draw out of.
        return 2 if self.baseline == "loo" else 1

    @classmethod
    def applies_to(cls, site: Site) -> bool:
        # A point mass has no density in its parameter: ∇θ log δ(z − θ) does not exist.
        return not isinstance(leaf_distribution(site.fn), dist.Delta)

    def refusal(self, site: Site) -> Optional[str]:
        if self.applies_to(site) and support_moves(site.fn):
            # E[f] = ∫_{support(θ)} f p_θ: the score ∇log p_θ misses the moving bound's term.
            return ("its support moves with its parameters, which the score function cannot see (it would be "
                    "biased); use Reparam() or MeasureValued()")
        return super().refusal(site)

    @classmethod
    def examples_for(cls, site: Site, exact_value: bool = False) -> List[Example]:
        # The plain score function, and beside it the leave-one-out baseline it needs.
        return [Example("Score", cls(), 1), Example("Score(loo), K=4", cls("loo"), 4)]

    def resolve(self, num_particles: int) -> "Score":
        if self.baseline == "auto":
            return Score("loo" if num_particles >= 2 else "pooled", beta=self.beta)
        return self

    def surrogate(self, site: ScoreSite) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(1/K) Σ_k (s_k − sg(s_k)) · sg(f_k − b_k)``, per sample: zero in value, with
        gradient ``(1/K) Σ_k ∇log q(z_k) (f_k − b_k)``."""
        baseline, aux_loss = self._baseline(site.name, site.f, site.args, site.kwargs or {}, site.averages)
        advantage = (site.f - baseline).detach()
        # (s − s.detach()) keeps the surrogate's value equal to the plain estimate.
        term = (site.score - site.score.detach()) * advantage
        return term.reshape(term.shape[0], -1).sum(1) / site.num_particles, aux_loss

    def importance_signal(self, name: str, log_weights: torch.Tensor) -> torch.Tensor:
        """Each particle's learning signal in the IWAE gradient, ``L − b``, from the
        log-weights ``(G, K, ...)`` (particles on axis 1); shaped like them."""
        b = self.baseline
        if b is not None and not (isinstance(b, numbers.Real) and not isinstance(b, bool)):
            raise EstimatorError(
                f"Score(baseline={b!r}) at site '{name}': in pg.IWAE every particle's learning signal is "
                "the bound, which depends on the particle's own draw, so a baseline computed from the "
                "particles or learned from them is not independent of it; use VIMCO() (the bound's "
                "leave-one-out baseline), Score() or Score(baseline=<a constant>)"
            )
        bound = log_mean_exp(log_weights, 1).unsqueeze(1).expand(log_weights.shape)
        return bound - (0.0 if b is None else float(b))

    def _baseline(
        self, name: str, f: torch.Tensor, args: tuple, kwargs: dict, averages: Optional[RunningAverages]
    ) -> Tuple[Any, torch.Tensor]:
        b, zero = self.baseline, torch.zeros(f.shape[0])
        if b is None:
            return 0.0, zero
        if b == "loo":
            if f.shape[1] < 2:
                raise EstimatorError(
                    f"Score(baseline='loo') at site '{name}' needs num_particles >= 2, "
                    f"got {f.shape[1]}; use baseline='decay' for a single particle"
                )
            return baselines.leave_one_out(f), zero
        if b == "decay":
            if averages is None:  # no handler keeps state for this site: start afresh
                averages = RunningAverages()
            return baselines.decaying_average(averages, name, f, self.beta), zero
        if b == "pooled":
            if averages is None:
                averages = RunningAverages()
            return baselines.pooled_average(averages, name, f, self.beta), zero
        if isinstance(b, numbers.Real):
            return float(b), zero
        return baselines.learned(name, b, f, args, kwargs)
