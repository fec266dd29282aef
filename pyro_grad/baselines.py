"""Control variates for the score function: per-particle costs in, per-particle baselines out.

Every baseline ``b_k`` here is independent of particle ``k``'s own draw at the site, so
``E[∇log q(z_k) · b_k] = 0`` and subtracting it leaves the estimator unbiased.
``cost`` has shape ``(G, K, ...)``: ``K`` particles for each of ``G`` independent estimates.
"""

from typing import Callable, Tuple

import pyro
import torch


def leave_one_out(cost: torch.Tensor) -> torch.Tensor:
    """``b_k = (Σ_j c_j − c_k) / (K − 1)``: the mean of the *other* particles' costs.

    Cost: O(K), no extra evaluations. Needs K ≥ 2 (checked by the caller).
    """
    num_particles = cost.shape[1]
    return (cost.sum(1, keepdim=True) - cost) / (num_particles - 1)


def decaying_average(key: str, cost: torch.Tensor, beta: float) -> torch.Tensor:
    """``b = avg_{t−1}``, then ``avg_t = β·avg_{t−1} + (1 − β)·mean_k c_k``.

    The running average lives in Pyro's param store under ``key`` (as
    ``TraceGraph_ELBO``'s does), so it persists across steps and is saved with the
    params. It starts at zero; when the site's shape changes (say, a new subsample
    size) it restarts from zero.
    """
    store = pyro.get_param_store()
    batch_mean = cost.detach().mean((0, 1))
    old = store[key].detach() if key in store else None
    if old is None or old.shape != batch_mean.shape:
        old = torch.zeros_like(batch_mean)
    store[key] = beta * old + (1 - beta) * batch_mean
    return old.expand(cost.shape[:2] + old.shape)


def learned(
    key: str, baseline: Callable, cost: torch.Tensor, args: tuple, kwargs: dict
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``b = baseline(*args, **kwargs)``, fitted by the squared error ``Σ_k (c_k − b)² / K``.

    ``args`` are the program's (detached) inputs, never the site's own value, so the
    baseline stays unbiased. An ``nn.Module`` is registered with ``pyro.module`` so
    that SVI optimizes it. Returns ``(baseline, squared-error loss)``.
    """
    if isinstance(baseline, torch.nn.Module):
        pyro.module(key, baseline)
    detached_args = tuple(a.detach() if torch.is_tensor(a) else a for a in args)
    value = torch.as_tensor(baseline(*detached_args, **kwargs))
    loss = (cost.detach() - value).pow(2)
    return value, loss.reshape(loss.shape[0], -1).sum(1) / cost.shape[1]
