"""Assembling the score-function terms of a surrogate objective from per-particle blocks.

Both objectives reduce a run to *blocks*: a block covers ``k`` particles (all K when
vectorized, one when looped) and maps each score-path site to ``(estimator, score,
cost)``, tensors with the particle axis first. Here the blocks are joined into
``(K, ...)`` tensors, so that baselines can look across particles (leave-one-out),
and each site's estimator turns them into its surrogate term.
"""

from typing import Dict, List, Tuple

import torch

from pyro_grad.errors import EstimatorError
from pyro_grad.particles import concat_particles
from pyro_grad.paths import Estimator

Block = Dict[str, Tuple[Estimator, torch.Tensor, torch.Tensor]]


def check_num_particles(num_particles: int) -> int:
    if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
        raise EstimatorError(f"num_particles must be a positive integer, got {num_particles!r}")
    return num_particles


def group(t: torch.Tensor, num_groups: int) -> torch.Tensor:
    """``(G·K, ...)`` → ``(G, K, ...)``: consecutive particles form one estimate."""
    return t.reshape((num_groups, t.shape[0] // num_groups) + t.shape[1:])


def score_terms(
    blocks: List[Block], num_groups: int, args: tuple, kwargs: dict
) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, Estimator]]:
    """Per-group sums of every score-path site's surrogate term and of the auxiliary
    (baseline) losses, each of shape ``(G,)``, and the estimator each site resolved to.

    The blocks hold ``G·K`` particles in all; each run of ``K`` consecutive particles is
    one independent estimate (``G = 1`` for a plain objective; diagnostics draw many).
    """
    names = list(dict.fromkeys(name for block in blocks for name in block))
    total = aux = torch.zeros(num_groups)
    resolved = {}
    for name in names:
        estimator = next(block[name][0] for block in blocks if name in block)
        scores, costs = [], []
        for block in blocks:
            if name in block:
                scores.append(block[name][1])
                costs.append(block[name][2])
            else:  # a site absent from some particles contributes nothing for them
                k = next(iter(block.values()))[1].shape[0] if block else 1
                scores.append(torch.zeros(k))
                costs.append(torch.zeros(k))
        score = group(concat_particles(scores), num_groups)
        cost = group(concat_particles(costs), num_groups)
        estimator = estimator.resolve(score.shape[1])
        term, loss = estimator.surrogate(name, score, cost, args, kwargs)
        total, aux = total + term, aux + loss
        resolved[name] = estimator
    return total, aux, resolved
