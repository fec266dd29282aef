"""RELAX for discrete sites: a learned control variate on the relaxed sample, unbiased.

A Bernoulli or categorical draw is ``b = H(z)`` of a continuous ``z``: ``z = θ + logistic
noise`` with ``H(z) = 1[z > 0]``, or ``z = log π(θ) + Gumbel noise`` with ``H(z) = argmax z``.
Grathwohl, Choi, Wu, Roeder & Duvenaud (ICLR 2018) correct the score function with
any control variate ``c`` of ``z``, evaluated at ``z`` and at ``z̃ ~ p(z | b)`` (drawn by
the conditional reparameterization of Tucker et al. 2017):

    ĝ_θ = [f(b) − c(z̃)] ∇θ log p(b | θ) + ∇θ c(z) − ∇θ c(z̃),

unbiased for every ``c`` continuous in ``z``, because ``E[c(z̃) ∇log p(b)] + E[∇c(z̃)] =
∇E[c(z)] = E[∇c(z)]``. Here ``c(z) = η·f(σ_λ(z)) + r_ψ(z)``: f at the relaxed sample
``σ_λ(z)`` (``sigmoid(z/λ)``, or ``softmax(z/λ)``; a Categorical's relaxed index is
``Σ_k k·softmax(z/λ)_k``), plus a network ``r_ψ`` of each element's ``z``. The parameters
``η``, ``λ`` and ``ψ`` are trained online to minimize the estimator's variance, by an
auxiliary loss ``Σ ĝ_θ²`` (zero in value) whose gradient reaches them alone.

The derivatives are taken with respect to the site's own parameters ``θ`` (its logits,
per element), through the relaxed value: f's other parameters see no control variate.
f must be continuous in the site's value (no rounding, indexing or branching on it)
and no discrete site may depend on it, else ``c`` jumps and the estimate is biased:
both are refused. In an ELBO a Categorical's log-mass is not continuous in a relaxed
index, so a Categorical site there is refused too (a OneHotCategorical is fine).

State: ``η``, ``λ`` and the default network's weights are ``pyro.param``s named
``_pyro_grad_relax_<site>.eta``, ``.temperature``, ``.w1``, ``.b1``, ``.w2``, ``.b2``
(a network passed as ``network=`` is registered with ``pyro.module`` as
``_pyro_grad_relax_<site>``). They are saved with the param store
(``pyro.get_param_store().save``) and reset with ``pyro.clear_param_store()``; every one
of them gets a gradient on every step, so SVI's optimizer trains them.

Cost: 3 evaluations per particle (f at ``b``, at ``σ_λ(z)`` and at ``σ_λ(z̃)``).
"""

from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

from pyro_grad.distributions import leaf_distribution, logits_of, uniform_given_bernoulli
from pyro_grad.errors import EstimatorError
from pyro_grad.gradient_estimators.base import CoupledRuns, DifferenceEstimator, Site, SiteDraw
from pyro_grad.one_hot import one_hot

SUPPORTED = (dist.Bernoulli, dist.Categorical, dist.OneHotCategorical)
#: Hidden units of the default control-variate network.
HIDDEN = 16
_TINY = 1e-6


def _uniform(shape: torch.Size) -> torch.Tensor:
    return torch.rand(shape).clamp(_TINY, 1 - _TINY)


def bernoulli_noise(b: torch.Tensor, theta: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """For ``b ~ Bernoulli(σ(θ))``: the logistic noise ``ε`` of ``z = θ + ε`` drawn given
    ``b = 1[z > 0]`` (detached), and ``z̃ ~ p(z | b)``, differentiable in ``θ``."""
    p = torch.sigmoid(theta.detach())
    u = uniform_given_bernoulli(b, p).clamp(_TINY, 1 - _TINY)  # b = 1[u < p]; z = θ − logit(u)
    noise = -torch.logit(u)
    v = _uniform(b.shape)
    # w | b is uniform on (1 − p, 1) when b = 1, on (0, 1 − p) when b = 0; z̃ = θ + logit(w).
    log_w_one = torch.log1p(-torch.sigmoid(theta) * (1 - v))
    log_w_zero = torch.log(v) + torch.nn.functional.logsigmoid(-theta)
    one_minus_w_one = torch.log(torch.sigmoid(theta)) + torch.log1p(-v)
    one_minus_w_zero = torch.log1p(-v * torch.sigmoid(-theta))
    logit_w = torch.where(b == 1, log_w_one - one_minus_w_one, log_w_zero - one_minus_w_zero)
    return noise, theta + logit_w


def gumbel_noise(index: torch.Tensor, theta: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """For ``k ~ Cat(softmax(θ))``: the Gumbel noise ``g`` of ``z = log π + g`` drawn given
    ``k = argmax z`` (detached), and ``z̃ ~ p(z | k)``, differentiable in ``θ``: with
    ``v ~ U(0, 1)^C``, ``z̃_k = −log(−log v_k)`` and ``z̃_j = −log(−log v_j / π_j − log v_k)``."""

    def given(log_pi: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        top = -torch.log(-torch.log(v))
        chosen = one_hot(index, log_pi.shape[-1])
        log_v_k = torch.log(v).gather(-1, index.unsqueeze(-1))
        others = -torch.log(-torch.log(v) * torch.exp(-log_pi) - log_v_k)
        return torch.where(chosen, top, others)

    log_pi = theta.log_softmax(-1)
    z = given(log_pi.detach(), _uniform(log_pi.shape))
    return z - log_pi.detach(), given(log_pi, _uniform(log_pi.shape))


class RelaxedControlVariate(DifferenceEstimator):
    """``[f(b) − c(z̃)]∇log p(b) + ∇c(z) − ∇c(z̃)`` with ``c(z) = η·f(σ_λ(z))``, plus a
    network ``r_ψ(z)`` when ``learned_network`` (module docs): RELAX and REBAR."""

    unbiased = True
    keeps_alternative_gradients = True
    relaxes = True
    #: Whether the control variate has a network ``r_ψ`` beside ``η·f(σ_λ(z))``.
    learned_network = True
    prefix = "_pyro_grad_relax_"

    @classmethod
    def applies_to(cls, site: Site) -> bool:
        fn = site.fn
        return isinstance(leaf_distribution(fn), SUPPORTED) and not isinstance(fn, dist.MaskedDistribution)

    def evaluations(self, site: Site) -> int:
        return 3

    def objective_refusal(self, site: Site, objective: str) -> Optional[str]:
        if objective != "expectation" and isinstance(leaf_distribution(site.fn), dist.Categorical):
            return ("a bound scores a Categorical by its log-mass, which is not continuous in a relaxed index "
                    "(a OneHotCategorical site takes it)")
        return None

    def alternatives(self, draw: SiteDraw) -> Tuple[List[torch.Tensor], Any]:
        leaf = leaf_distribution(draw.fn)
        eta, temperature = self._scalars(draw.name)
        index = draw.value
        if isinstance(leaf, dist.OneHotCategorical):
            index = draw.value.argmax(-1)
        live = self._logits(leaf, index)
        # A leaf per element: the control variate's derivatives are the site's own.
        theta = live.detach().clone().requires_grad_(torch.is_grad_enabled())
        if isinstance(leaf, dist.Bernoulli):
            noise, z_tilde = bernoulli_noise(index, theta)
            z = theta + noise
        else:
            noise, z_tilde = gumbel_noise(index.long(), theta)
            z = theta.log_softmax(-1) + noise
        relaxed = [self._relaxed(leaf, z, temperature), self._relaxed(leaf, z_tilde, temperature)]
        state = {"theta": theta, "live": live, "index": index, "z": (z, z_tilde), "eta": eta,
                 "temperature": temperature}
        return relaxed, state

    def alternative_terms(self, runs: CoupledRuns) -> torch.Tensor:
        state, draw = runs.state, runs.draw
        layout, event_dim = draw.layout, len(draw.fn.event_shape)
        if not torch.is_grad_enabled():  # a value only: the terms are zero in value
            return torch.zeros(layout.num)
        estimate = self._estimate(runs)
        state["estimate"] = estimate
        live = state["live"]
        term = (live - live.detach()) * estimate.detach()
        if term.dim() > draw.value.dim():  # a Categorical's category axis
            term = term.sum(-1)
        return layout.reduce(term, event_dim)

    def alternative_loss(self, runs: CoupledRuns) -> Optional[torch.Tensor]:
        state, draw = runs.state, runs.draw
        estimate = state.get("estimate")
        if estimate is None or not estimate.requires_grad:
            return None
        trained = self._trained(draw.name)
        squares = estimate.pow(2)
        if squares.dim() > draw.value.dim():
            squares = squares.sum(-1)
        variance = draw.layout.reduce(squares, len(draw.fn.event_shape))
        grads = torch.autograd.grad(variance.sum(), trained, retain_graph=True, allow_unused=True)
        # Zero in value, and its gradient reaches the control variate's parameters alone.
        loss = sum(((p - p.detach()) * g.detach()).sum() for p, g in zip(trained, grads) if g is not None)
        return torch.as_tensor(loss).expand(variance.shape) / variance.shape[0]

    # -- the control variate ---------------------------------------------------------

    def _estimate(self, runs: CoupledRuns) -> torch.Tensor:
        """``ĝ_θ`` per element of the site's logits, differentiable in ``η``, ``λ``, ``ψ``."""
        state, draw = runs.state, runs.draw
        theta, (z, z_tilde) = state["theta"], state["z"]
        f_z, f_z_tilde = runs.alternative_f
        r_z_tilde = self._network(draw, z_tilde)
        c_z = state["eta"] * f_z.sum() + self._network(draw, z).sum()
        c_z_tilde = state["eta"] * f_z_tilde.sum() + r_z_tilde.sum()
        difference = torch.autograd.grad(c_z - c_z_tilde, theta, create_graph=True, allow_unused=True)[0]
        if difference is None:  # f does not reach the site's value
            difference = torch.zeros_like(theta)
        # c(z̃) per element: η·f at the element's plates, plus the element's own r_ψ(z̃).
        c_element = state["eta"] * f_z_tilde + r_z_tilde
        advantage = self._at_logits(draw, runs.at_value(runs.f.detach() - c_element))
        return advantage * self._score(draw, theta, state["index"]) + difference

    def _score(self, draw: SiteDraw, theta: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``∇θ log p(b | θ)`` per element."""
        if isinstance(leaf_distribution(draw.fn), dist.Bernoulli):
            return index - torch.sigmoid(theta.detach())
        return one_hot(index, theta.shape[-1], theta.dtype) - theta.detach().softmax(-1)

    def _at_logits(self, draw: SiteDraw, t: torch.Tensor) -> torch.Tensor:
        # A Categorical's logits have a category axis right of its value's dims.
        if isinstance(leaf_distribution(draw.fn), dist.Categorical):
            return t.unsqueeze(-1)
        return t

    def _network(self, draw: SiteDraw, z: torch.Tensor) -> torch.Tensor:
        """``r_ψ`` of each batch element's flattened ``z``, shaped like the batch; 0 for REBAR."""
        if not self.learned_network:
            return torch.zeros(())
        event_dim = len(draw.fn.event_shape)
        batch = draw.value.shape[: draw.value.dim() - event_dim]
        inputs = z.reshape(batch + (-1,))
        network = getattr(self, "network", None)
        if network is not None:
            pyro.module(self.prefix + draw.name, network)
            return network(inputs).reshape(batch)
        w1, b1, w2, b2 = self._weights(draw.name, inputs.shape[-1])
        return (torch.tanh(inputs @ w1 + b1) @ w2 + b2).reshape(batch)

    def _weights(self, site: str, inputs: int) -> List[torch.Tensor]:
        name = self.prefix + site
        w1 = pyro.param(f"{name}.w1", lambda: torch.randn(inputs, HIDDEN) / inputs**0.5)
        if w1.shape[0] != inputs:
            raise EstimatorError(
                f"{self!r} at site '{site}': its network was trained on {w1.shape[0]} inputs per "
                f"element and the site now has {inputs}; clear the param store to start afresh"
            )
        b1 = pyro.param(f"{name}.b1", lambda: torch.zeros(HIDDEN))
        # The output layer starts at zero, so the control variate starts as REBAR's.
        w2 = pyro.param(f"{name}.w2", lambda: torch.zeros(HIDDEN))
        b2 = pyro.param(f"{name}.b2", lambda: torch.zeros(()))
        return [w1, b1, w2, b2]

    def _scalars(self, site: str) -> Tuple[torch.Tensor, torch.Tensor]:
        name = self.prefix + site
        eta = pyro.param(f"{name}.eta", lambda: torch.tensor(1.0))
        temperature = pyro.param(f"{name}.temperature", lambda: torch.tensor(0.5), constraint=constraints.positive)
        return eta, temperature

    def _trained(self, site: str) -> List[torch.Tensor]:
        """Every trainable tensor of the control variate (unconstrained, as the
        optimizer sees them)."""
        name = self.prefix + site
        names = ["eta", "temperature"] + (["w1", "b1", "w2", "b2"] if self.learned_network else [])
        network = getattr(self, "network", None)
        if network is not None:
            names = names[:2]
        trained = [pyro.param(f"{name}.{n}").unconstrained() for n in names]
        if self.learned_network and network is not None:
            trained += list(network.parameters())
        return trained

    @staticmethod
    def _logits(leaf: Any, index: torch.Tensor) -> torch.Tensor:
        logits = logits_of(leaf)
        if isinstance(leaf, dist.Bernoulli):
            return logits.expand(index.shape)
        return logits.expand(index.shape + logits.shape[-1:])

    @staticmethod
    def _relaxed(leaf: Any, z: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
        if isinstance(leaf, dist.Bernoulli):
            return torch.sigmoid(z / temperature)
        soft = (z / temperature).softmax(-1)
        if isinstance(leaf, dist.OneHotCategorical):
            return soft
        return (soft * torch.arange(soft.shape[-1], dtype=soft.dtype)).sum(-1)


@dataclass(frozen=True, repr=False)
class RELAX(RelaxedControlVariate):
    """RELAX (Grathwohl et al. 2018): ``[f(b) − c(z̃)]∇log p(b) + ∇c(z) − ∇c(z̃)`` with
    ``c(z) = η·f(σ_λ(z)) + r_ψ(z)``, trained to minimize the variance (module docs).
    Unbiased. Cost: 3 evaluations per particle. ``network``: an ``nn.Module`` mapping
    each element's flattened ``z`` ``(..., D)`` to ``(...)`` (default: one tanh layer of
    16 units, its output layer starting at zero)."""

    network: Optional[torch.nn.Module] = None

    def __post_init__(self) -> None:
        if self.network is not None and not isinstance(self.network, torch.nn.Module):
            raise EstimatorError(
                f"RELAX(network={self.network!r}): network must be None or a torch.nn.Module mapping each "
                "element's flattened z (..., D) to (...)"
            )
