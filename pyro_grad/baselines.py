"""Control variates for the score function: per-particle values of f in, per-particle baselines out.

Every baseline ``b_k`` here is independent of particle ``k``'s own draw at the site, so
``E[∇log q(z_k) · b_k] = 0`` and subtracting it leaves the estimator unbiased.
``f`` has shape ``(G, K, ...)``: ``K`` particles for each of ``G`` independent estimates.

The only state a baseline keeps is the decaying average, in :class:`RunningAverages`:
plain tensors owned by the :func:`pyro_grad.estimators` handler that chose the site,
never trainable parameters in Pyro's param store.
"""

from typing import Callable, Dict, Optional, Tuple

import pyro
import torch
from pyro.poutine.messenger import Messenger

from pyro_grad.errors import EstimatorError


#: Key in a site's ``infer`` of the baseline state (:class:`RunningAverages`) of the
#: estimators handler that chose the site's estimator.
STATE = "_pyro_grad_baseline_state"


class RunningAverages:
    """Per-site running averages of downstream f, kept across steps.

    Owned by one estimators handler (and so by the wrapped program, or by a
    :class:`pyro_grad.ELBO`). Not in Pyro's param store: the averages are state,
    not parameters, and carry no gradient.
    """

    def __init__(self) -> None:
        self._values: Dict[str, torch.Tensor] = {}

    def get(self, name: str) -> Optional[torch.Tensor]:
        return self._values.get(name)

    def set(self, name: str, value: torch.Tensor) -> None:
        self._values[name] = value.detach()

    def copy(self) -> "RunningAverages":
        snapshot = RunningAverages()
        snapshot._values = dict(self._values)
        return snapshot

    def items(self):
        """(name, value) of every average kept."""
        return self._values.items()

    def restore(self, snapshot: "RunningAverages") -> None:
        """Go back to a :meth:`copy` taken earlier."""
        self._values = dict(snapshot._values)

    def __contains__(self, name: str) -> bool:
        return name in self._values

    def __repr__(self) -> str:
        return f"RunningAverages({sorted(self._values)})"


def keep_state(msg: dict, averages: RunningAverages) -> None:
    """Record, in the site, the baseline state its estimator will use."""
    msg["infer"][STATE] = averages


def state_of(site: dict) -> RunningAverages:
    """The baseline state of the handler that chose the site's estimator."""
    return site["infer"][STATE]


def leave_one_out(f: torch.Tensor) -> torch.Tensor:
    """``b_k = (Σ_j c_j − c_k) / (K − 1)``: the mean of the *other* particles' values of f.

    Cost: O(K), no extra evaluations. Needs K ≥ 2 (checked by the caller).
    """
    num_particles = f.shape[1]
    return (f.sum(1, keepdim=True) - f) / (num_particles - 1)


def decaying_average(averages: RunningAverages, name: str, f: torch.Tensor, beta: float) -> torch.Tensor:
    """``b = avg_{t−1}``, then ``avg_t = β·avg_{t−1} + (1 − β)·mean_k c_k``.

    The running average of site ``name`` lives in ``averages`` (see
    :class:`RunningAverages`), so it persists across steps of the same handler. It
    starts at zero; when the site's shape changes (say, a new subsample size) it
    restarts from zero.
    """
    batch_mean = f.detach().mean((0, 1))
    old = averages.get(name)
    if old is None or old.shape != batch_mean.shape:
        old = torch.zeros_like(batch_mean)
    averages.set(name, beta * old + (1 - beta) * batch_mean)
    return old.expand(f.shape[:2] + old.shape)


def pooled_average(averages: RunningAverages, name: str, f: torch.Tensor, beta: float) -> torch.Tensor:
    """One decaying average of f per site, pooled over its particles and plate elements,
    bias-corrected: ``b_t = m_{t−1} / (1 − β^{t−1})`` (0 at the first step), then
    ``m_t = β·m_{t−1} + (1 − β)·mean(c)``.

    Pooled because a per-element average compares each plate element only with its own
    history: at one particle, where a discrete element almost always draws its likeliest
    value, ``c_i − b_i ≈ 0`` and nothing says which elements fit worse than the others,
    so the assignments commit before the rest of the model settles (Pyro's
    Dirichlet-process mixture: −ELBO 2282 per element against 1478 pooled, README
    "SVI"). A pooled baseline keeps that comparison and removes the offset all elements
    share, which is what cuts the variance (a sigmoid belief net, a Bernoulli VAE).
    Bias-corrected as Adam's moments (Kingma & Ba 2015), so the first steps are not
    pulled towards zero; one number, so a new subsample size does not restart it.
    Unbiased: ``b`` depends on earlier steps only.
    """
    key = f"{name}#pooled"
    state = averages.get(key)
    if state is None:
        state = torch.zeros(2, dtype=torch.float64)
    mean, steps = state[0], state[1]
    # In tensors, not Python floats, so that a recorded step (compile=) carries the state.
    baseline = torch.where(steps > 0, mean / (1 - beta**steps), torch.zeros_like(mean))
    updated = beta * mean + (1 - beta) * f.detach().double().mean()
    averages.set(key, torch.stack([updated, steps + 1]))
    return baseline.to(f.dtype).expand(f.shape)


#: Param-store name prefix of a learned baseline network, followed by the site's name.
LEARNED_PREFIX = "_pyro_grad_baseline_"


def learned(
    site: str, baseline: Callable, f: torch.Tensor, args: tuple, kwargs: dict
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``b = baseline(*args, **kwargs)``, fitted by the squared error ``Σ_k (c_k − b)² / K``.

    ``args`` are the program's (detached) inputs, never the site's own value, so the
    baseline stays unbiased. An ``nn.Module`` is registered with ``pyro.module`` as
    ``LEARNED_PREFIX + site``, so that SVI optimizes it (its weights are trainable
    parameters, unlike the averages).
    Returns ``(baseline, squared-error loss)``.
    """
    if isinstance(baseline, torch.nn.Module):
        pyro.module(LEARNED_PREFIX + site, baseline)
    detached_args = tuple(a.detach() if torch.is_tensor(a) else a for a in args)
    value = torch.as_tensor(baseline(*detached_args, **kwargs))
    try:
        fits = torch.broadcast_shapes(value.shape, f.shape) == f.shape
    except RuntimeError:
        fits = False
    if not fits:  # as TraceGraph_ELBO: a baseline shaped unlike the site's downstream cost is refused
        raise EstimatorError(
            f"the baseline of site '{site}' ({baseline!r}) has shape {tuple(value.shape)}; it must broadcast to "
            f"the site's downstream f, one value per element: {tuple(f.shape[2:])}"
        )
    loss = (f.detach() - value).pow(2)
    return value, loss.reshape(loss.shape[0], -1).sum(1) / f.shape[1]


class FrozenAverages(Messenger):
    """Within this context every site's baseline state is a snapshot, so diagnostics
    draw estimates without advancing any decaying average (the save and restore of
    baseline state for diagnostics). It is the outermost
    handler, so it sees each site after the estimators handlers have chosen."""

    def __enter__(self):
        self._snapshots: Dict[int, RunningAverages] = {}
        return super().__enter__()

    def _pyro_sample(self, msg: dict) -> None:
        averages = msg["infer"].get(STATE)
        if averages is None:
            return
        key = id(averages)
        if key not in self._snapshots:
            self._snapshots[key] = averages.copy()
        msg["infer"][STATE] = self._snapshots[key]
