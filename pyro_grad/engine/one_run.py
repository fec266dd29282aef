"""One alternative run for all of a program's difference sites: pruned perturbations.

The re-run engine (:mod:`pyro_grad.engine.surrogate`'s ``difference_terms``) re-runs the
program once per difference site and alternative value, so a program of ``n`` sequential
discrete sites costs ``O(n)`` runs of ``O(n)`` each. StochasticAD.jl (Arya, Schauer,
Schäfer & Rackauckas, "Automatic Differentiation of Programs with Discrete Randomness",
NeurIPS 2022) carries one perturbation per sample instead: when a new one appears the
carried and the new are *pruned* to one, kept with probability in proportion to their
weights and reweighted, so that one extra evaluation gives an unbiased derivative.

Here every site that asks for it (``MeasureValued(engine="one-run")``) proposes, per
particle, one perturbation of its draw (:class:`Perturbation`): the coupled jump of one
element, the element chosen with probability in proportion to the ``|c|`` of the
coefficients the re-run engine gives the elements' differences of f, and its own
coefficient ``c_s`` scaled to ``sign(c)·Σ|c|`` (so ``E[c_s · Δ_s f]`` is the site's share
of the gradient). Pruning then keeps, per
particle, one site ``s`` with probability ``|c_s| / W``, ``W = Σ_s |c_s|``, and weighs
its difference by ``W / |c_s|``:

    E[ W/|c_s| · c_s · Δ_s f ] = Σ_s c_s · Δ_s f,

the sum of the sites' re-run estimates, whatever the order of the sites; done at once
after the first run, this is StochasticAD's sequential pruning (a weighted reservoir of
one), since the weights depend only on the first run. The kept perturbation is then run:
one re-run for all particles (:class:`~pyro_grad.engine.alternative_run.AlternativeRun`
with per-particle changes), each particle's chosen element moved, every site upstream
replayed, and every later site whose distribution the move changed redrawn on common
random numbers, element by element, as the re-run engine does. ``Δ f`` is that run's f
minus the first run's, per particle.

Cost: 2 evaluations per particle, whatever the number of sites (the re-run engine: 1 + 1
per site). Python control flow needs no special care: the alternative run follows its own
branches, as a re-run does. Variance: one perturbation per particle where the re-run
engine differences every site, so more per draw (``W`` grows with the sites); the work
per draw is what falls (``benchmarks/bench_one_run.py`` measures where it wins).
"""

from typing import Callable, Dict, NamedTuple, Tuple

import torch

from pyro_grad.engine.particles import ParticleLayout


class Perturbation(NamedTuple):
    """One site's proposed perturbation per particle: ``value`` (the site's value with the
    ``moved`` elements jumped), ``lever`` (shaped like the value, zero in value: its
    gradient, times the difference of f, is the site's term, the coefficient ``c_s``
    included) and ``magnitude`` (``|c_s|`` per particle, ``(P,)``; 0 where nothing can move)."""

    value: torch.Tensor
    moved: torch.Tensor
    lever: torch.Tensor
    magnitude: torch.Tensor


def prune(magnitudes: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per particle, the index of the kept perturbation among ``magnitudes (P, S)``, drawn in
    proportion to them, and the weight ``W / |c_kept|`` of its difference (0 where every
    magnitude is 0: nothing can move)."""
    total = magnitudes.sum(1)
    movable = total > 0
    # A particle where nothing moves draws from a uniform row and keeps weight 0.
    kept = torch.multinomial(torch.where(movable.unsqueeze(1), magnitudes, torch.ones_like(magnitudes)), 1)
    kept = kept.squeeze(1)
    chosen = magnitudes.gather(1, kept.unsqueeze(1)).squeeze(1)
    weight = torch.where(movable, total / torch.where(movable, chosen, torch.ones_like(chosen)), torch.zeros_like(total))
    return kept, weight


def pruned_terms(
    perturbations: Dict[str, Tuple[Perturbation, torch.Tensor, int]],
    layout: ParticleLayout,
    f: torch.Tensor,
    run_changes: Callable[[Dict[str, Tuple[torch.Tensor, torch.Tensor]]], torch.Tensor],
) -> Dict[str, torch.Tensor]:
    """Per-particle ``(P,)`` terms of each site of ``perturbations`` (site → its
    :class:`Perturbation`, its first-run value and its event dims), from one alternative
    run: ``run_changes({site: (value, picked)})`` runs the program with each site's
    ``value`` at the particles ``picked`` (a mask shaped to broadcast against it) and
    returns that run's f ``(P,)``; ``f`` is the first run's, ``(P,)``."""
    names = list(perturbations)
    magnitudes = torch.stack([perturbations[n][0].magnitude.detach().reshape(layout.num) for n in names], 1)
    kept, weight = prune(magnitudes)
    changes = {}
    for index, name in enumerate(names):
        perturbation, value, event_dim = perturbations[name]
        picked = layout.align((kept == index) & (weight > 0), event_dim)
        changes[name] = (torch.where(picked & perturbation.moved, perturbation.value, value), picked)
    delta = (run_changes(changes) - f).detach()
    terms = {}
    for index, name in enumerate(names):
        perturbation, _, event_dim = perturbations[name]
        scale = torch.where(kept == index, weight * delta, torch.zeros_like(delta))
        terms[name] = layout.reduce(perturbation.lever * layout.align(scale, event_dim), event_dim)
    return terms
