"""One alternative run for all of a program's difference sites: pruned perturbations.

The re-run engine (:mod:`pyro_grad.engine.surrogate`'s ``difference_terms``) re-runs the
program once per difference site and alternative value, so a program of ``n`` sequential
discrete sites costs ``O(n)`` runs of ``O(n)`` each. StochasticAD.jl (Arya, Schauer,
Schäfer & Rackauckas, "Automatic Differentiation of Programs with Discrete Randomness",
NeurIPS 2022) carries one perturbation per sample instead: when a new one appears the
carried and the new are *pruned* to one, kept with probability in proportion to their
weights and reweighted, so that one extra evaluation gives an unbiased derivative.

Here every element ``e`` of every site that asks for it (``MeasureValued(engine="one-run")``)
offers its coupled jump (:class:`Perturbation`): the re-run engine's term of that element
is ``c_e · Δ_e f · ∂θ η_e``, with ``c_e`` a coefficient, ``η_e`` the parameter the jump
differentiates and ``Δ_e f`` the change of f when the element jumps. Per particle one
element is kept, with probability ``π_e``, and its term weighted by ``1/π_e``:

    E[ c_e/π_e · Δ_e f · ∂θ η_e ] = Σ_e c_e · Δ_e f · ∂θ η_e,

the re-run engine's sum, whatever the order of the sites, for any ``π`` that gives every
element that can move a chance. The choice is a defensive mixture (Hesterberg,
"Weighted Average Importance Sampling and Defensive Mixture Distributions",
Technometrics 1995) of two proposals:

    π_e = d · |c_e| / Σ|c|  +  (1 − d) · |c_e|·σ_e / Σ|c|·σ,    σ_e = |∂θ η_e|,  d = DEFENSIVE = 0.1,

``σ`` being StochasticAD's weight, the size of the jump's rate under a change of θ
(their ``δ``), for a scalar θ, computed for every element at once by two backward
passes over the first run's graph (:func:`sensitivities`); with more parameters the
proposal is ``|c|`` alone. Neither proposal wins everywhere, as the sizes of the ``Δ_e f``
decide: on StochasticAD.jl's walk (n = 100, p = 200) one sample's standard deviation is
12.3 by ``|c|`` alone, 8.7 by ``|c|·σ`` alone, 10.1 by the even mixture and 8.8 by this
one; on the agent-based SIR ``|c|·σ`` alone triples it against ``|c|`` (early infections
move f most, yet move least with β), while the mixture's share of a tenth leaves it
unchanged. The mixture's weight is never less than ``d`` times the ``|c|`` proposal's,
so its variance stays within ``1/d`` of that one's. Done at once after the first run
this is StochasticAD's sequential pruning (a weighted reservoir of one), since the
weights depend only on the first run.

The kept perturbation is then run: one re-run for all particles
(:class:`~pyro_grad.engine.alternative_run.AlternativeRun` with per-particle changes),
each particle's kept element moved, every site upstream replayed, and every later site
whose distribution the move changed redrawn on common random numbers, element by
element, as the re-run engine does. ``Δ f`` is that run's f minus the first run's.

Cost: 2 evaluations per particle (at once with ``paths=k``, 1 + k), whatever the number
of sites (the re-run engine: 1 + 1 per site), plus two backward passes over the
parameters' graph for the sensitivities.
Python control flow needs no special care: the alternative run follows its own branches,
as a re-run does. In ``pg.ELBO`` f is the whole per-particle ELBO (the terms a jump does
not reach are replayed, and cancel), or, when every one-run site lies in the same data
plates and its terms stay there, each plate element keeps one jump of its own and
differences its own terms (:class:`Rows`; the re-run engine's per-plate
Rao-Blackwellization: elements are conditionally independent, so one alternative run
serves them all). Variance: one perturbation per particle where the re-run engine
differences every element, so more per draw; the work per draw is what falls
(``benchmarks/bench_one_run.py`` measures where it wins).

Two ways to choose: *at once* (:func:`kept_at_once`), after the first run, as above; or
*lazily* (:mod:`pyro_grad.engine.lazy_pruning`, ``pg.expectation``'s way wherever it
can), as StochasticAD.jl does: the alternative path runs beside the first, value by
value, and a jump whose path has rejoined the first (its Δ is 0) is dropped before the
next one competes. On the walk (n = 100, p = 200) one sample's standard deviation is
8.8 at once and 6.7 lazily with the mixture's weights (hand-written: 8.9 and 6.7;
with StochasticAD's one-sided weights by hand, lazily, 6.5). ``pg.ELBO``'s one-run sites
are chosen at once.

*Paths* (``paths`` of the one-run estimators): each particle may keep ``k`` jumps
independently, each made on an alternative path of its own, and average their terms
(:class:`Kept` holds the mean). Every path is unbiased given the first run, so the mean
is too; it removes the variance of the choices and of the alternative redraws (which
dominates on the walk: 6.7 on one path, 3.0 on 16, lazily), not the first run's. Lazily
the paths are carried in one run (by default :func:`lazy_paths`: 16, fewer where the
sites' values are wide, as the paths' cost then grows with them); at once each is an
alternative run of its own (1 by default).
"""

from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.autograd.forward_ad as fwAD

from pyro_grad.engine.particles import ParticleLayout
from pyro_grad.engine.provenance import plain
from pyro_grad.errors import EstimatorError
from pyro_grad.one_hot import one_hot

#: The share of the |c|-proportional proposal in the defensive mixture (module docs).
DEFENSIVE = 0.1
#: Alternative paths per particle where the jumps are pruned lazily (module docs), at most.
LAZY_PATHS = 16
#: The elements per particle of a site's value times the default paths stay within this:
#: the paths are nearly free while a torch operation costs its Python overhead, and cost
#: in proportion beyond (``benchmarks/bench_one_run.py``'s SIR). Per particle, so that
#: ``pg.diagnose``'s many particles in one pass measure what a run of a few does.
LAZY_ELEMENTS = 2**14


class Perturbation(NamedTuple):
    """One site's jumps, element by element, shaped like its value: ``value`` (every
    element jumped), ``eta`` (the differentiated parameter of each element's difference)
    and ``coefficient`` (detached; 0 where the element cannot move). A Bernoulli's jumps
    in the one-sided form (``MeasureValued(engine="one-run", one_sided=True)``) also give
    ``probability``, ``q = P(1)`` (detached): :func:`one_sided`."""

    value: torch.Tensor
    eta: torch.Tensor
    coefficient: torch.Tensor
    probability: Optional[torch.Tensor] = None


def one_sided(offer: Perturbation, tangent: Optional[torch.Tensor]) -> torch.Tensor:
    """A Bernoulli's coefficients in StochasticAD.jl's one-sided form (Arya et al.,
    NeurIPS 2022): where ``∂θ q ≥ 0`` (or it is not known) only a 0 jumps, to 1, with
    ``c = 1/(1 − q)``; elsewhere only a 1, to 0, with ``c = −1/q``. Either way
    ``E_B[c · (f(jumped) − f(B))] = f(1) − f(0)``, as the two-sided
    ``(1 − 2B)(f(1 − B) − f(B))``: unbiased whatever the sign, which only decides that the
    jumps go the way the parameter moves the probability. The two-sided form is exact
    element by element (its product is f(1) − f(0) whatever B), the one-sided one
    concentrates the pruning's weight on the jumps the parameter makes likelier: on
    StochasticAD.jl's walk, pruned lazily on one path, one sample's standard deviation 6.5
    against 6.9 (on 16 paths, 2.3 against 3.0)."""
    q = offer.probability.expand(offer.value.shape)
    rises = torch.ones((), dtype=torch.bool) if tangent is None else tangent.expand(q.shape) >= 0
    zero = offer.value == 1  # the element is 0: it jumps to 1
    tiny = torch.finfo(q.dtype).tiny
    c = torch.where(rises, zero.to(q.dtype) / (1 - q).clamp(min=tiny), -(~zero).to(q.dtype) / q.clamp(min=tiny))
    # Where the two-sided coefficient is 0 the element cannot move (q at 0 or 1).
    return torch.where(offer.coefficient != 0, c, torch.zeros_like(c))



def forward_tangent(t: torch.Tensor) -> Optional[torch.Tensor]:
    """The forward-mode tangent ``t`` carries at the current dual level, or None."""
    return fwAD.unpack_dual(t).tangent


def differentiable_inputs(args: tuple, kwargs: dict, trace) -> List[torch.Tensor]:
    """The tensors the caller's backward can reach that the call shows: arguments (and
    those in a list, tuple or dict argument, and a module's parameters) and
    ``pyro.param``/``pyro.module`` values, that require grad or carry a forward-mode
    tangent. The one-run engine's sensitivities are taken in them (one left out only
    makes its pruning weights less apt, never the estimate biased)."""
    found = []

    def add(value: Any) -> None:
        if torch.is_tensor(value):
            found.append(value)
        elif isinstance(value, torch.nn.Module):
            found.extend(value.parameters())
        elif isinstance(value, (list, tuple)):
            found.extend(v for v in value if torch.is_tensor(v))
        elif isinstance(value, dict):
            found.extend(v for v in value.values() if torch.is_tensor(v))

    for value in (*args, *kwargs.values()):
        add(value)
    found.extend(plain(site["value"]) for site in trace.nodes.values() if site["type"] == "param")
    unique = {id(t): t for t in found if t.requires_grad or forward_tangent(t) is not None}
    return list(unique.values())


def sensitivities(etas: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor]) -> List[Optional[torch.Tensor]]:
    """``∂θ η`` for each of ``etas`` (detached, shaped alike; None where it is not
    known), when the differentiated ``inputs`` are one scalar θ, as StochasticAD.jl's
    derivative is: its forward-mode tangent under forward-mode AD (``pg.diagnose``'s
    draws), else by the double-backward trick, ``g(u) = Σ_s ∂θ η_s · u_s`` being linear
    in ``u`` so that ``∂u g = ∂θ η`` for every element at once. With more inputs every
    entry is None: no one size serves every direction, and a random one would make the
    estimate differ between reverse mode and forward mode's one pass per coordinate
    (the proposal is then ``|c|`` alone), as it is where the graph has no second derivative."""
    found: List[Optional[torch.Tensor]] = [None] * len(etas)
    if len(inputs) != 1 or inputs[0].numel() != 1:
        return found
    if forward_tangent(inputs[0]) is not None:
        return [None if tangent is None else tangent.detach() for tangent in map(forward_tangent, etas)]
    wanted = [i for i, eta in enumerate(etas) if eta.requires_grad]
    if not inputs[0].requires_grad or not wanted:
        return found
    try:
        with torch.enable_grad():
            us = [torch.zeros_like(etas[i], requires_grad=True) for i in wanted]
            paired = sum((u * etas[i]).sum() for u, i in zip(us, wanted))
            (g,) = torch.autograd.grad(paired, list(inputs), create_graph=True, allow_unused=True)
            if g is None or not g.requires_grad:
                return found
            tangents = torch.autograd.grad(g.sum(), us, allow_unused=True)
    except RuntimeError:  # an operation without a second derivative: the proposal is |c| alone
        return found
    for i, tangent in zip(wanted, tangents):
        if tangent is not None:
            found[i] = tangent.detach()
    return found


def choose(weights: torch.Tensor) -> torch.Tensor:
    """A one-hot ``(P, E)`` mask picking per row one entry of ``weights (P, E) ≥ 0`` in
    proportion to them (none in a row of zeros); no random number for a single entry.
    By inverse CDF (a uniform on each row's cumulative weights, in float64), which costs
    a pass over the table where ``torch.multinomial`` costs many times that per row."""
    if weights.shape[1] == 1:
        return weights > 0
    cumulative = weights.to(torch.float64).cumsum(1)
    total = cumulative[:, -1:]
    point = torch.rand(total.shape, dtype=torch.float64) * total
    index = torch.searchsorted(cumulative, point, right=True).clamp(max=weights.shape[1] - 1).squeeze(1)
    return one_hot(index, weights.shape[1]) & (total > 0) & (weights > 0)


class Rows:
    """The groups the engine keeps one jump in: each particle, or with ``batch`` (the
    natural batch shape every site shares) each particle's plate element, each keeping
    one jump of its own and differencing its own terms of f (an ELBO's sites whose terms
    stay in their plates: the per-plate Rao-Blackwellization)."""

    def __init__(self, layout: ParticleLayout, batch: Optional[torch.Size] = None):
        self.layout, self.batch = layout, batch
        self.count = layout.num if batch is None else layout.first(torch.empty(batch)).numel()

    def of(self, t: torch.Tensor, value: torch.Tensor, event_dim: int) -> torch.Tensor:
        """``t`` (broadcast to ``value``) as ``(rows, elements of a row)``."""
        return self.layout.first(t.expand(value.shape), event_dim).reshape(self.count, -1)

    def elements(self, block: torch.Tensor, value: torch.Tensor, event_dim: int) -> torch.Tensor:
        """Undo :meth:`of`: a ``(rows, elements of a row)`` tensor shaped like ``value``."""
        return self.layout.natural(block.reshape(self.layout.first(value, event_dim).shape), value, event_dim)

    def f(self, f: torch.Tensor) -> torch.Tensor:
        """f, per particle ``(P,)`` or broadcast to ``batch``, as ``(rows,)``."""
        if self.batch is None:
            return f.reshape(self.count)
        return self.layout.first(f.expand(self.batch)).reshape(self.count)

    def back(self, r: torch.Tensor, event_dim: int) -> torch.Tensor:
        """A per-row ``(rows,)`` tensor shaped to broadcast against a site's value."""
        if self.batch is None:
            return self.layout.align(r, event_dim)
        like = torch.empty(self.batch)
        natural = self.layout.natural(r.reshape(self.layout.first(like).shape), like)
        return natural.reshape(self.batch + (1,) * event_dim)


class Jumps(NamedTuple):
    """Every one-run site's offered jumps as the columns of a ``(rows, jumps)`` table:
    ``offers`` (site, :class:`Perturbation`) with ``spans`` (their columns), ``shaped``
    (each offer's coefficient and parameter, broadcast to its site's value), ``size``
    ``|c|`` and ``share`` (so that ``π = size · share``, summing to 1 over a row: the
    at-once choice's probabilities and the lazy choice's weights)."""

    offers: List[Tuple[str, Perturbation]]
    spans: List[Tuple[int, int]]
    shaped: List[Tuple[torch.Tensor, torch.Tensor]]
    size: torch.Tensor
    share: torch.Tensor


def jumps(perturbations: Dict[str, Tuple[List[Perturbation], torch.Tensor, int]], rows: Rows,
          inputs: Sequence[torch.Tensor] = ()) -> Optional[Jumps]:
    """The jumps of ``perturbations`` (site → its offers, first-run value and event dims)
    and their weights (module docs), or None when no jump moves with θ."""
    # A jump whose parameter does not move with θ has no term: it does not compete.
    offers = [(name, offer) for name, (offered, _, _) in perturbations.items() for offer in offered
              if offer.eta.requires_grad or forward_tangent(offer.eta) is not None]
    if not offers:
        return None
    shaped = [(offer.coefficient.expand(perturbations[name][1].shape), offer.eta.expand(perturbations[name][1].shape))
              for name, offer in offers]
    tangents = sensitivities([eta for _, eta in shaped], inputs)
    shaped = [(one_sided(offer, tangent), eta) if offer.probability is not None else (coefficient, eta)
              for (_, offer), (coefficient, eta), tangent in zip(offers, shaped, tangents)]
    tangents = [None if t is None else t.abs() for t in tangents]

    def flat(name: str, t: torch.Tensor) -> torch.Tensor:  # (rows, elements of a row)
        return rows.of(t, perturbations[name][1], perturbations[name][2])

    sizes = [flat(name, c).abs() for (name, _), (c, _) in zip(offers, shaped)]  # |c| of each offer
    size = torch.cat(sizes, 1)  # (rows, jumps)
    tangent = torch.cat([flat(name, t if t is not None else torch.zeros(()))
                         for (name, _), t in zip(offers, tangents)], 1)
    tiny = torch.finfo(size.dtype).tiny
    by_size = size.sum(1, keepdim=True).clamp(min=tiny)
    by_sensitivity = (size * tangent).sum(1, keepdim=True)
    # π_e = |c_e| · share_e: the mixture where some element is sensitive, else |c| alone.
    share = torch.where(by_sensitivity > 0,
                        DEFENSIVE / by_size + (1 - DEFENSIVE) * tangent / by_sensitivity.clamp(min=tiny),
                        1 / by_size)
    spans, start = [], 0
    for offered in sizes:
        spans.append((start, start + offered.shape[1]))
        start += offered.shape[1]
    return Jumps(offers, spans, shaped, size, share)


class Kept(NamedTuple):
    """The kept jumps as ``amount (rows, jumps)``: each jump's ``c/π · Δf`` up to the sign
    of ``c`` where a row kept it, averaged over the row's paths (0 where none kept it)."""

    amount: torch.Tensor


def amounts(kept: torch.Tensor, scale: torch.Tensor, delta: torch.Tensor) -> Kept:
    """:class:`Kept` from the one-hot ``kept (rows, jumps)`` (a row of zeros keeps none),
    its ``c/π`` up to sign ``scale`` and ``Δf`` ``delta``, ``(rows,)``."""
    return Kept(torch.where(kept, (scale * delta).unsqueeze(1), torch.zeros((), dtype=scale.dtype)))


def kept_at_once(table: Jumps, perturbations, rows: Rows, f: torch.Tensor,
                 run_changes: Callable[[Dict[str, Tuple[torch.Tensor, torch.Tensor]]], torch.Tensor]) -> Kept:
    """One jump per row chosen after the first run, with probability ``π``, and made in
    one alternative run: ``c/π = sign(c)/share``."""
    kept = choose(table.size * table.share)
    tiny = torch.finfo(table.size.dtype).tiny
    scale = torch.where(kept.any(1), 1 / (table.share * kept).sum(1).clamp(min=tiny), torch.zeros(kept.shape[0]))
    changes = {name: (perturbations[name][1], None) for name, _ in table.offers}
    for (name, offer), (a, b) in zip(table.offers, table.spans):
        _, value, event_dim = perturbations[name]
        block = kept[:, a:b]
        mask = rows.elements(block, value, event_dim)
        # At most one jump per row is kept, so a site's offers never overlap.
        moved, picked = changes[name]
        here = rows.back(block.any(1), event_dim)
        changes[name] = (torch.where(mask, offer.value.to(value.dtype), moved), here if picked is None else picked | here)
    delta = (rows.f(run_changes(changes)) - rows.f(f)).detach()
    return amounts(kept, scale, delta)


def pruned_terms(
    perturbations: Dict[str, Tuple[List[Perturbation], torch.Tensor, int]],
    layout: ParticleLayout,
    f: torch.Tensor,
    run_changes: Callable[[Dict[str, Tuple[torch.Tensor, torch.Tensor]]], torch.Tensor],
    inputs: Sequence[torch.Tensor] = (),
    batch: Optional[torch.Size] = None,
    lazy: Optional[Callable[[Jumps, Rows, int], Optional[Kept]]] = None,
    paths: Optional[int] = None,
) -> Dict[str, torch.Tensor]:
    """Per-particle ``(P,)`` terms of each site of ``perturbations`` (site → its
    :class:`Perturbation` s, one per kind of jump its elements offer, its first-run value
    and its event dims), from one alternative run: ``run_changes({site: (value,
    picked)})`` runs the program with each site's ``value`` where ``picked`` (a mask shaped
    to broadcast against it) and returns that run's f; ``f`` is the first run's, ``(P,)``,
    or with ``batch`` (:class:`Rows`) each plate element's own, broadcast to ``batch``;
    ``inputs`` are the tensors θ the sensitivities differentiate in (the module docs).
    ``lazy(jumps, rows, paths)``, when given, runs the alternative paths beside the first
    and prunes as it goes (:mod:`pyro_grad.engine.lazy_pruning`), or gives None where it
    cannot (it says why): the jumps are then chosen at once, one alternative run per path.
    ``paths`` is the sites' setting (:func:`paths_of`), None for the engine's choice:
    :func:`lazy_paths` lazily, 1 at once."""
    rows = Rows(layout, batch)
    table = jumps(perturbations, rows, inputs)
    if table is None:
        return {}
    chosen = lazy(table, rows, paths or lazy_paths(perturbations, rows)) if lazy is not None else None
    if chosen is None:
        # Each path at once is its own alternative run: the paths' mean.
        runs = [kept_at_once(table, perturbations, rows, f, run_changes) for _ in range(paths or 1)]
        chosen = Kept(torch.stack([run.amount for run in runs]).mean(0))
    terms: Dict[str, torch.Tensor] = {}
    for (name, _), (coefficient, eta), (a, b) in zip(table.offers, table.shaped, table.spans):
        _, value, event_dim = perturbations[name]
        amount = rows.elements(chosen.amount[:, a:b], value, event_dim)
        lever = layout.reduce((eta - eta.detach()) * coefficient.sign() * amount, event_dim)
        terms[name] = terms[name] + lever if name in terms else lever
    return terms


def lazy_paths(perturbations: Dict[str, Tuple[List[Perturbation], torch.Tensor, int]], rows: Rows) -> int:
    """The default paths of a lazy run: :data:`LAZY_PATHS`, fewer where the widest site's
    elements per particle times the paths would pass :data:`LAZY_ELEMENTS`."""
    widest = max(value.numel() for _, value, _ in perturbations.values()) // rows.count
    return max(1, min(LAZY_PATHS, LAZY_ELEMENTS // max(1, widest)))


def paths_of(estimators: Dict[str, Any]) -> Optional[int]:
    """The alternative paths per particle the one-run sites ``estimators`` (site → its
    estimator) ask for: their one ``paths`` setting, or None (the engine's choice) where
    none sets it. They share one run, so sites that set different values are refused."""
    asked = {name: getattr(estimator, "paths", None) for name, estimator in estimators.items()}
    asked = {name: paths for name, paths in asked.items() if paths is not None}
    if len(set(asked.values())) > 1:
        listed = ", ".join(f"'{name}' paths={value}" for name, value in asked.items())
        raise EstimatorError(f"the one-run sites share one run and its alternative paths, but they ask for different "
                             f"numbers of paths ({listed}); give them one paths= (or leave it to the engine)")
    return next(iter(asked.values()), None)
