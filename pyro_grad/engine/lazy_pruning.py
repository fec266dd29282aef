"""Lazy pruning: the alternative path runs beside the first, value by value.

The one-run engine (:mod:`pyro_grad.engine.one_run`) can choose each particle's jump at
once, after the first run, and make it in one re-run. StochasticAD.jl (Arya, Schauer,
Schäfer & Rackauckas, "Automatic Differentiation of Programs with Discrete Randomness",
NeurIPS 2022) instead carries the alternative beside every value (their *stochastic
triples*) and prunes as the program runs. That lets it drop a perturbation whose
alternative path has rejoined the first before it competes with the next one: its
``Δf`` is then 0 for sure, so dropping it loses nothing, and the weight it would have
taken goes to perturbations that still matter.

Here the program runs once more with every value that a jump reaches carried as an
:class:`Alternative`: its first-run value (the draws replayed from the first run) and,
per particle, its value on the alternative path. Every torch operation on one is done
twice, on the first values and on the alternatives (``__torch_function__``, as Pyro's
``ProvenanceTensor``). The particles are the values' leading dim. At each sample site:

* the alternative draw is coupled to the first by common random numbers where the
  carried jump changed the site's distribution (as an alternative run redraws), and is
  the first draw elsewhere;
* at a one-run site the carried jump, if still *alive*, competes with the site's own
  jumps: the carried one with its weight ``W``, each of the site's with ``π_e`` (the
  at-once engine's probabilities, :class:`~pyro_grad.engine.one_run.Jumps`). One is
  kept in proportion to the weights, and ``W`` becomes their sum. A new jump starts from
  the first path: every carried alternative is reset to the first value.

A jump is alive while some value the program still holds differs on the alternative
path (values it no longer holds have been freed). Per particle the kept jump ``e``
gives the term ``W · c_e/π_e · Δf · ∂θη_e``: every competition keeps the expectation
(``W·g_c + π_n·g_n``), and a dead jump's ``g`` is 0, so the estimate is the
re-run engine's sum in expectation, as pruning at once is.

Cost: one run with every reached operation done twice (plus ``__torch_function__``'s
Python), instead of the at-once engine's re-run; the same two evaluations per particle.
On StochasticAD.jl's walk (n = 100, p = 200) one sample's standard deviation falls from
10.1 (at once) to about 7.6 with the same weights (``benchmarks/bench_one_run.py``).

Where the alternative path cannot be carried, the run stops (:class:`Unsupported`)
and the jumps are chosen at once; the estimate's reasons say why:

* Python reads a value (``.item()``, ``if``) that differs on the alternative path: it
  could branch otherwise;
* a random operation (``torch.bernoulli``) takes such a value: its draw is not a site
  that could be coupled;
* an in-place operation writes such a value into a tensor that does not carry one;
* a value loses its leading particle dim (a sum over particles, a transpose), or an
  operation fails on the alternative values;
* a site has no first-run draw to replay.

Whether a value is the same on both paths is a decision on values: a recorded step
(:mod:`pyro_grad.engine.recording`) keeps it as an assumption and checks it every call.
"""

import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple

import pyro
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample
from pyro.poutine.trace_struct import Trace
from torch.utils._pytree import tree_map

from pyro_grad.distributions import describe, replaced_tensors, without_provenance
from pyro_grad.engine.assumptions import decided
from pyro_grad.engine.alternative_run import redrawn_where_changed
from pyro_grad.engine.one_run import Jumps, Kept, Perturbation, Rows, choose
from pyro_grad.engine.particles import PARTICLES
from pyro_grad.engine.provenance import plain
from pyro_grad.errors import first_line

#: Operations that read a value into Python: allowed where the alternative reads the same.
READS = frozenset({"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "__complex__", "numpy",
                   "__array__"})
#: Operations that only print.
PRINTS = frozenset({"__repr__", "__str__", "__format__"})
#: Random operations: a draw outside ``pyro.sample`` cannot be coupled.
RANDOM = frozenset({"bernoulli", "bernoulli_", "multinomial", "normal", "normal_", "poisson", "rand_like",
                    "randn_like", "randint_like", "random_", "uniform_", "exponential_", "geometric_", "cauchy_",
                    "log_normal_", "dropout", "dropout_", "feature_dropout", "alpha_dropout", "rrelu", "binomial",
                    "_standard_gamma", "_sample_dirichlet", "native_dropout"})
IN_PLACE = frozenset({"__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__imod__", "__ipow__",
                      "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__", "__imatmul__", "__setitem__"})


class Unsupported(Exception):
    """Why the alternative path cannot be carried value by value."""


class World:
    """The alternative path's bookkeeping: ``num`` particles (the leading dim of every
    carried value, or one particle with no dim when ``num`` is None) and the carried
    values the program still holds."""

    def __init__(self, num: Optional[int]):
        self.num = num
        self.live: "weakref.WeakSet[Alternative]" = weakref.WeakSet()

    @property
    def rows(self) -> int:
        return 1 if self.num is None else self.num

    def per_particle(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` as ``(particles, elements)``."""
        return t.reshape(self.rows, -1)

    def differs(self, first: torch.Tensor, alternative: torch.Tensor) -> torch.Tensor:
        """Per particle, whether any element differs ``(rows,)``."""
        return self.per_particle(first != alternative).any(1)

    def alive(self) -> torch.Tensor:
        """Per particle, whether some value the program holds differs on the alternative path."""
        found = torch.zeros(self.rows, dtype=torch.bool)
        for value in list(self.live):
            found |= self.differs(value._t, value._alt)
        return found

    def reset(self, particles: torch.Tensor) -> None:
        """Every held value's alternative is its first value at ``particles`` ``(rows,)``:
        a new jump starts from the first path (values made before it cannot depend on it)."""
        for value in list(self.live):
            shaped = particles.reshape(()) if self.num is None else particles.reshape((-1,) + (1,) * (value._t.dim() - 1))
            value._alt.copy_(torch.where(shaped, value._t, value._alt))

    def check(self, t: torch.Tensor, what: str) -> None:
        if self.num is not None and (t.dim() == 0 or t.shape[0] != self.num):
            raise Unsupported(f"{what} has shape {tuple(t.shape)}, without the {self.num} particles as its "
                              "leading dim (a sum over particles, a transpose), so its alternatives cannot be "
                              "told apart by particle")


class Alternative(torch.Tensor):
    """A value (its first-run value ``_t``) with its value on the alternative path
    (``_alt``, shaped alike). Operations on it are done on both (module docs)."""

    _t: torch.Tensor
    _alt: torch.Tensor
    _world: World

    def __new__(cls, first: torch.Tensor, alternative: torch.Tensor, world: World):
        world.check(first, "a value")
        value = first.as_subclass(cls)
        value._t, value._alt, value._world = first, alternative, world
        world.live.add(value)
        return value

    def __repr__(self) -> str:
        return f"Alternative({self._t!r}, alternative={self._alt!r})"

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        found: List[Alternative] = []
        first_args = _unwrapped((args, kwargs), "_t", found)
        if name in PRINTS:
            return func(*first_args[0], **first_args[1])
        if name in RANDOM:
            raise Unsupported(f"torch's {name} draws from a value that differs on the alternative path; a draw "
                              "outside pyro.sample cannot be coupled (make it a pyro.sample site)")
        world = found[0]._world
        alternative_args = _unwrapped((args, kwargs), "_alt", [])
        target = _written(name, args, kwargs)
        if target is not None and not isinstance(target, Alternative):
            raise Unsupported(f"the in-place {name} writes a value that differs on the alternative path into a "
                              "tensor that does not carry one")
        first = func(*first_args[0], **first_args[1])
        try:
            alternative = func(*alternative_args[0], **alternative_args[1])
        except Exception as error:  # the first path ran as the first run did: only the alternative failed
            raise Unsupported(f"{name} fails on the alternative path ({first_line(error)})") from error
        if target is not None:
            return target if first is not None else None
        if name in READS:
            if not _same(first, alternative):
                raise Unsupported(f"Python reads a value ({name}) that differs on the alternative path, "
                                  "so the program could branch otherwise there")
            return first
        return _paired(first, alternative, world, name)


def _unwrapped(tree: Any, part: str, found: List["Alternative"]) -> Any:
    """``tree`` (an operation's ``(args, kwargs)``) with each :class:`Alternative` replaced
    by its ``part`` ("_t" or "_alt"), the ones met appended to ``found``. Written out for
    tuples, lists and dicts, as ``tree_map`` costs more than the operation it wraps."""
    if isinstance(tree, Alternative):
        found.append(tree)
        return getattr(tree, part)
    kind = type(tree)
    if kind is tuple or kind is list:
        return kind(_unwrapped(x, part, found) for x in tree)
    if kind is dict:
        return {k: _unwrapped(v, part, found) for k, v in tree.items()}
    if isinstance(tree, (tuple, list, dict)):  # a named tuple, say
        return tree_map(lambda x: _unwrapped(x, part, found) if isinstance(x, Alternative) else x, tree)
    return tree


def _written(name: str, args: tuple, kwargs: dict) -> Any:
    """The tensor an in-place operation writes, or None."""
    if "out" in kwargs:
        return kwargs["out"]
    if name in IN_PLACE or (name.endswith("_") and not name.startswith("_")):
        return args[0] if args else None
    return None


def _same(a: Any, b: Any) -> bool:
    if torch.is_tensor(a) and torch.is_tensor(b):
        return a.shape == b.shape and decided((a == b).all())
    try:
        return bool(a == b)
    except Exception:
        return False


def _paired(first: Any, alternative: Any, world: World, name: str) -> Any:
    if torch.is_tensor(first):
        if not torch.is_tensor(alternative) or alternative.shape != first.shape:
            raise Unsupported(f"{name} gives a value whose shape differs on the alternative path")
        if alternative is first or decided((first == alternative).all()):
            return first  # the same on both paths: nothing to carry
        world.check(first, f"the value of {name}")
        return Alternative(first, alternative, world)
    if isinstance(first, (tuple, list)) and isinstance(alternative, (tuple, list)) and len(first) == len(alternative):
        items = [_paired(a, b, world, name) for a, b in zip(first, alternative)]
        if hasattr(first, "_fields"):
            return type(first)(*items)
        return type(first)(items)
    if not _same(first, alternative):
        raise Unsupported(f"{name} gives a value that differs on the alternative path")
    return first


def holds_alternative(fn: Any) -> bool:
    """Whether a distribution's parameters (or its base's) carry an alternative."""
    for value in vars(fn).values():
        if isinstance(value, Alternative):
            return True
        if isinstance(value, torch.distributions.Distribution) and holds_alternative(value):
            return True
    return False


class LazyPruning(Messenger):
    """Runs the program on the first run's draws (``trace``) with the alternative path
    beside it, pruning the jumps of ``table`` as their sites come (module docs)."""

    def __init__(self, trace: Trace, table: Jumps, rows: Rows, world: World):
        super().__init__()
        self.trace, self.table, self.rows, self.world = trace, table, rows, world
        n = world.rows
        #: Per particle: the summed weight of the jumps that competed while alive, the
        #: kept jump's column (-1: none).
        self.weight = torch.zeros(n, dtype=table.share.dtype)
        self.kept = torch.full((n,), -1, dtype=torch.long)
        # Plain tensors: the first run's coefficients may carry provenance, whose tracking
        # would follow every value of this run.
        self.weights, self.share = plain(table.size * table.share), plain(table.share)
        #: Each site's offers with their columns.
        self.offers: Dict[str, List[Tuple[Perturbation, int, int]]] = {}
        for (site, offer), (start, stop) in zip(table.offers, table.spans):
            self.offers.setdefault(site, []).append((offer, start, stop))

    def _pyro_sample(self, msg: dict) -> None:
        if msg["is_observed"] or msg["value"] is not None:
            return
        name = msg["name"]
        first_site = self.trace.nodes.get(name)
        if isinstance(msg["fn"], _Subsample):
            if first_site is not None:  # the first run's minibatch (the particles' plate is outside it)
                msg["value"] = plain(first_site["value"])
            return
        if first_site is None or first_site["type"] != "sample":
            raise Unsupported(f"site '{name}' has no draw in the first run to replay")
        first = plain(first_site["value"]).detach()
        if self.world.num is not None:
            self.world.check(first, f"site '{name}' ({describe(msg['fn'])})")
        alternative = first
        if holds_alternative(msg["fn"]):
            # The first run's distribution without its provenance (tracking it costs more
            # than the draw).
            new_fn = replaced_tensors(msg["fn"], Alternative, lambda value: value._alt)
            redrawn = redrawn_where_changed(without_provenance(first_site["fn"]), first, new_fn)
            if redrawn is None:  # the family changed: drawn anew
                redrawn = new_fn.sample()
            alternative = redrawn.to(first.dtype).expand(first.shape)
        offers = self.offers.get(name)
        if offers:
            alternative = self._compete(offers, first, alternative, len(msg["fn"].event_shape))
        msg["value"] = first if alternative is first else Alternative(first, alternative.clone(), self.world)

    def _compete(self, offers, first: torch.Tensor, carried: torch.Tensor, event_dim: int) -> torch.Tensor:
        """The site's alternative draw after its jumps compete with the carried one."""
        a, b = offers[0][1], offers[-1][2]
        weights = self.weights[:, a:b]
        alive = (self.weight > 0) & (self.world.alive() | self.world.differs(first, carried))
        new = weights.sum(1)
        total = torch.where(alive, self.weight, torch.zeros_like(self.weight)) + new
        take = (torch.rand(total.shape, dtype=total.dtype) * total < new) & (new > 0)
        picked = choose(weights) & take.unsqueeze(1)
        self.kept = torch.where(take, a + picked.to(torch.long).argmax(1), torch.where(alive, self.kept, -1))
        self.weight = torch.where(take | alive, total, torch.zeros_like(total))
        self.world.reset(take)
        moved = first
        for offer, start, stop in offers:
            mask = self.rows.elements(picked[:, start - a:stop - a], first, event_dim)
            moved = torch.where(mask, plain(offer.value).to(first.dtype), moved)
        return torch.where(self.rows.back(take, event_dim), moved, carried)

    def kept_jumps(self, f: Any) -> Kept:
        """The kept jumps, their ``c/π`` up to sign (``W/share``) and ``Δf``."""
        rows = self.world.rows
        delta = (f._alt - f._t) if isinstance(f, Alternative) else torch.zeros(rows)
        delta = self.rows.f(torch.as_tensor(delta).to(self.weight.dtype))
        kept = torch.zeros(self.table.size.shape, dtype=torch.bool)
        has = self.kept >= 0
        kept[has, self.kept[has]] = True
        tiny = torch.finfo(self.weight.dtype).tiny
        share = (self.share * kept).sum(1).clamp(min=tiny)
        scale = torch.where(has, self.weight / share, torch.zeros_like(self.weight))
        return Kept(kept, scale, delta.detach())


def lazily_pruned(program: Callable, args: tuple, kwargs: dict, trace: Trace, table: Jumps, rows: Rows,
                  dim: Optional[int], num: int) -> Kept:
    """Run ``program`` beside its first run ``trace`` (particles at ``dim``, ``num`` of
    them; looped when ``dim`` is None) and keep one jump per particle lazily; raises
    :class:`Unsupported` where the alternative path cannot be carried."""
    world = World(num if dim is not None else None)
    handler = LazyPruning(trace, table, rows, world)
    with torch.no_grad(), handler:
        if dim is not None:
            with pyro.plate(PARTICLES, num, dim=dim):
                f = program(*args, **kwargs)
        else:
            f = program(*args, **kwargs)
        return handler.kept_jumps(f)
