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

*Paths.* Each particle may carry several alternative paths (``World(paths=k)``; the
one-run engine's default is :data:`~pyro_grad.engine.one_run.LAZY_PATHS`), each pruned
on its own, on its own redraws, and averaged. They share the first path, so they remove
the variance of the pruning's choices and of the alternative redraws, not the first
run's. A carried value's alternatives then stack the paths on a new leading dim,
``(paths, *first.shape)``; an elementwise operation whose other tensors have no more dims
than the carried values (:data:`POINTWISE`), a reduction along dims counted from the
right (:data:`ALONG_DIMS`) and ``expand`` run on the stack directly, any other operation
through ``torch.vmap`` over the paths, so that dims and shapes mean on every path what
they mean on the first. A value's shape, dtype and the like are the first path's.

Cost: one run with every reached operation done on the first values and on the stacked
alternatives (plus ``__torch_function__``'s Python), instead of the at-once engine's
re-run; the same two evaluations per particle. On StochasticAD.jl's walk (n = 100, p =
200) one sample's standard deviation is 8.8 at once, 6.7 lazily on one path and 3.0 on
16, at about 1.0–1.2× one path's seconds (``benchmarks/bench_one_run.py``).

Where the alternative path cannot be carried, the run stops (:class:`Unsupported`)
and the jumps are chosen at once; the estimate's reasons say why:

* Python reads a value a jump reaches (``.item()``, ``if``): the program could branch
  otherwise on an alternative path;
* a random operation (``torch.bernoulli``) takes such a value: its draw is not a site
  that could be coupled;
* an in-place operation writes such a value into a tensor that does not carry one;
* a value loses its leading particle dim (a sum over particles, a transpose), or an
  operation fails on the alternative values;
* a site has no first-run draw to replay.

*A value a jump reaches* is one computed from a one-run site's draw, or from a draw
whose distribution such a value set: it is carried even where every path agrees with
the first, so that whether the run stops depends on the program and its first run,
never on the run's own random choices. (Were it otherwise, the lazy estimate would be
kept only on the choices that let the run finish, which biases it.) The first run
validated the first path's distributions; the lazy run does not validate them again.
"""

import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple

import pyro
import pyro.distributions as dist
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample
from pyro.poutine.trace_struct import Trace
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from pyro_grad.distributions import describe, held_values, leaf_distribution, replaced_tensors, without_provenance
from pyro_grad.engine.assumptions import recording
from pyro_grad.engine.alternative_run import redrawn_where_changed
from pyro_grad.engine.one_run import Jumps, Kept, Perturbation, Rows, choose
from pyro_grad.engine.particles import PARTICLES
from pyro_grad.engine.provenance import plain
from pyro_grad.errors import first_line

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
    """The alternative paths' bookkeeping: ``num`` particles (the leading dim of every
    carried value, or one particle with no dim when ``num`` is None), ``paths``
    alternative paths per particle (with more than one, a carried value's alternatives
    stack the paths on a new leading dim: ``(paths, *first.shape)``) and the carried
    values the program still holds. A *chain* is one path of one particle, path-major."""

    def __init__(self, num: Optional[int], paths: int = 1):
        self.num, self.paths = num, paths
        self.stacked = paths > 1
        self.live: "weakref.WeakSet[Alternative]" = weakref.WeakSet()

    @property
    def rows(self) -> int:
        return 1 if self.num is None else self.num

    @property
    def chains(self) -> int:
        return self.rows * self.paths

    def shape_of(self, first: torch.Size) -> torch.Size:
        """The alternatives' shape of a value shaped ``first``."""
        return torch.Size((self.paths,) + tuple(first)) if self.stacked else torch.Size(first)

    def differs(self, first: torch.Tensor, alternative: torch.Tensor) -> torch.Tensor:
        """Per chain, whether any element differs ``(chains,)``."""
        return (first != alternative).expand(self.shape_of(first.shape)).reshape(self.chains, -1).any(1)

    def alive(self) -> torch.Tensor:
        """Per chain, whether some value the program holds differs on its alternative path."""
        found = torch.zeros(self.chains, dtype=torch.bool)
        for value in list(self.live):
            found |= self.differs(value._t, value._alt)
        return found

    def reset(self, chains: torch.Tensor) -> None:
        """Every held value's alternative is its first value at ``chains`` ``(chains,)``:
        a new jump starts from the first path (values made before it cannot depend on it)."""
        lead = ((self.paths,) if self.stacked else ()) + (() if self.num is None else (self.num,))
        for value in list(self.live):
            shaped = chains.reshape(lead + (1,) * (value._alt.dim() - len(lead)))
            reset = torch.where(shaped, value._t, value._alt)
            if _expanded(value._alt):  # several elements share memory: it cannot be written in place
                value._alt = reset
                continue
            try:  # in place, so that views of it keep sharing it
                value._alt.copy_(reset)
            except RuntimeError as error:  # overlapping windows (unfold), say
                raise Unsupported(f"a value a jump reaches cannot be reset in place ({first_line(error)})") \
                    from error

    def check(self, t: torch.Tensor, what: str) -> None:
        if self.num is not None and (t.dim() == 0 or t.shape[0] != self.num):
            raise Unsupported(f"{what} has shape {tuple(t.shape)}, without the {self.num} particles as its "
                              "leading dim (a sum over particles, a transpose), so its alternatives cannot be "
                              "told apart by particle")

    def call(self, func: Callable, name: str, args: tuple, kwargs: dict, alternatives: List[torch.Tensor],
             writes: bool) -> Any:
        """``func`` (named ``name``) on the alternative values ``alternatives`` (among
        ``args`` and ``kwargs``): on each path, by ``torch.vmap`` over the stacked paths, so
        that dims and shapes mean what they mean on the first path; a pointwise operation
        whose broadcasting already keeps the paths apart is called directly (the same
        result, without vmap's cost). ``writes``: an in-place op."""
        if not self.stacked or (name in POINTWISE and _broadcast_alike(args, kwargs, alternatives) and (
                name not in FROM_RECEIVER or (args and any(args[0] is t for t in alternatives)))):
            return func(*args, **kwargs)
        if name in ALONG_DIMS and len(alternatives) == 1 and args and args[0] is alternatives[0] and \
                _negative_dims(args[1:], kwargs, args[0].dim() - 1):
            return func(*args, **kwargs)  # dims counted from the right never reach the paths' dim
        if name == "expand" and not kwargs and args and args[0] is alternatives[0] and len(alternatives) == 1:
            sizes = args[1] if len(args) == 2 and isinstance(args[1], (tuple, list)) else args[1:]
            new = len(sizes) - (args[0].dim() - 1)  # dims expand adds, on the left of the first path's
            if new >= 0 and all(type(size) is int for size in sizes):  # behind the paths' dim
                stacked = args[0]
                return stacked.reshape(stacked.shape[:1] + (1,) * new + stacked.shape[1:]).expand(self.paths, *sizes)
        ids = {id(t) for t in alternatives}
        leaves, spec = tree_flatten((args, kwargs))
        dims = tuple(0 if id(leaf) in ids else None for leaf in leaves)

        def each(*values):
            each_args, each_kwargs = tree_unflatten(list(values), spec)
            result = func(*each_args, **each_kwargs)
            return torch.zeros(()) if writes else result  # vmap returns tensors only

        return torch.vmap(each, in_dims=dims)(*leaves)


def _expanded(t: torch.Tensor) -> bool:
    """Whether ``t`` is an expanded view (a stride of 0 over a dim of more than one), decided
    from its layout rather than by a failed write, which a recorded step would keep."""
    return any(stride == 0 and size > 1 for stride, size in zip(t.stride(), t.shape))


#: Operations whose result, when not a tensor, describes a value without reading it
#: (``x.shape`` is the getter ``__get__``): the first path's serves every path.
METADATA = frozenset({"__get__", "size", "dim", "ndimension", "numel", "nelement", "stride", "__len__",
                      "is_contiguous", "element_size", "is_floating_point", "is_complex", "get_device",
                      "storage_offset", "data_ptr"})


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
            raise Unsupported(f"torch's {name} draws from a value a jump reaches; a draw outside pyro.sample "
                              "cannot be coupled (make it a pyro.sample site)")
        world = found[0]._world
        target = _written(name, args, kwargs)
        if target is not None and not isinstance(target, Alternative):
            raise Unsupported(f"the in-place {name} writes a value a jump reaches into a tensor that does not "
                              "carry one")
        if name in CONVERSIONS and args and not isinstance(args[0], Alternative):
            return func(*first_args[0], **first_args[1])  # takes only the carried value's dtype
        first = func(*first_args[0], **first_args[1])
        if target is None and not _holds_tensor(first):
            if name in METADATA:  # a shape, a dtype: the first path's serves every path
                return first
            raise Unsupported(f"Python reads a value ({name}) that a jump reaches, so the program could "
                              "branch otherwise on an alternative path")
        alternative_args = _unwrapped((args, kwargs), "_alt", [])
        try:
            alternative = world.call(func, name, *alternative_args, [value._alt for value in found], target is not None)
        except Exception as error:  # the first path ran as the first run did: only the alternative failed
            raise Unsupported(f"{name} fails on the alternative path ({first_line(error)})") from error
        if target is not None:
            return target if first is not None else None
        return _paired(first, alternative, world, name)


#: Conversions that take only a dtype (or device) from a tensor argument: on a plain
#: receiver their result does not depend on the carried value.
CONVERSIONS = frozenset({"to", "type_as"})


#: Elementwise operations (with broadcasting): on stacked paths they need no vmap when
#: every other tensor has no more dims than the paths' values (:func:`_broadcast_alike`).
POINTWISE = frozenset(
    f"{prefix}{op}{suffix}" for op in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "and", "or", "xor",
                                       "lshift", "rshift")
    for prefix, suffix in (("__", "__"), ("__r", "__"), ("__i", "__"))
) | frozenset(
    f"{op}{suffix}" for op in (
        "add", "sub", "subtract", "mul", "multiply", "div", "divide", "true_divide", "floor_divide", "remainder",
        "fmod", "pow", "neg", "negative", "exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "sqrt", "rsqrt",
        "square", "reciprocal", "abs", "sign", "sigmoid", "logit", "tanh", "sin", "cos", "relu", "clamp", "clamp_min",
        "clamp_max", "clip", "floor", "ceil", "round", "trunc", "frac", "minimum", "maximum", "fmin", "fmax", "eq",
        "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "logical_not", "logical_xor", "bitwise_and",
        "bitwise_or", "bitwise_xor", "bitwise_not", "lgamma", "digamma", "erf", "erfc", "xlogy", "atan2", "hypot",
        "lerp", "addcmul", "addcdiv", "masked_fill", "nan_to_num", "copysign")
    for suffix in ("", "_")
) | frozenset({"__neg__", "__abs__", "__invert__", "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__",
               "where", "isnan", "isinf", "isfinite", "softplus", "to", "float", "double", "long", "int", "bool",
               "half", "type_as", "clone", "detach", "contiguous", "broadcast_tensors"})


#: Operations along given dims of one tensor: on stacked paths they need no vmap when
#: every dim is counted from the right (:func:`_negative_dims`).
ALONG_DIMS = frozenset({"sum", "mean", "prod", "amax", "amin", "logsumexp", "any", "all", "cumsum", "cumprod",
                        "softmax", "log_softmax", "nansum", "std", "var", "count_nonzero"})


def _negative_dims(rest: tuple, kwargs: dict, ndim: int) -> bool:
    """Whether an operation's arguments after its tensor name only dims counted from the
    right (a negative int or a tuple of them, positionally or as ``dim``) among the first
    path's ``ndim`` dims, and perhaps ``keepdim`` and ``dtype``."""
    if set(kwargs) - {"dim", "keepdim", "dtype"}:
        return False
    dims = list(rest[:1]) + ([kwargs["dim"]] if "dim" in kwargs else [])
    if len(dims) != 1 or len(rest) > 2 or (len(rest) == 2 and type(rest[1]) is not bool):
        return False
    dim = dims[0]
    found = dim if isinstance(dim, (tuple, list)) else (dim,)
    return len(found) > 0 and all(type(d) is int and -ndim <= d < 0 for d in found)


#: Elementwise operations whose mask must fit their receiver: direct only on a carried
#: receiver (a plain one takes a carried mask through vmap). A plain receiver converted
#: like a carried value never gets here (:data:`CONVERSIONS`).
FROM_RECEIVER = frozenset({"masked_fill", "masked_fill_"})


def _broadcast_alike(args: tuple, kwargs: dict, alternatives: List[torch.Tensor]) -> bool:
    """Whether broadcasting stacked ``alternatives`` (each ``(paths, *first)``, among
    ``args``) against the other tensors gives vmap's result: the firsts have one number of
    dims, and no other tensor has more (so the paths' dim stays leftmost and apart)."""
    dims = {t.dim() for t in alternatives}
    if len(dims) != 1:
        return False
    most = dims.pop() - 1
    for value in (*args, *kwargs.values()):
        if torch.is_tensor(value) and not any(value is t for t in alternatives) and value.dim() > most:
            return False
        if isinstance(value, (tuple, list, dict)):
            return False
    return True


def _holds_tensor(value: Any) -> bool:
    return torch.is_tensor(value) or (isinstance(value, (tuple, list)) and any(map(_holds_tensor, value)))


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


def _paired(first: Any, alternative: Any, world: World, name: str) -> Any:
    """An operation's result on both paths, carried. A value a jump reaches stays
    carried even where every path agrees with the first: whether a run can be carried
    (a read, a write into a plain tensor) must not depend on the run's own random
    choices, or keeping its estimate only where it could would bias it."""
    if torch.is_tensor(first):
        if not torch.is_tensor(alternative) or alternative.shape != world.shape_of(first.shape):
            raise Unsupported(f"{name} gives a value whose shape differs on the alternative path")
        if alternative is first:
            return first  # the operation ignored the carried value
        world.check(first, f"the value of {name}")
        return Alternative(first, alternative, world)
    if isinstance(first, (tuple, list)) and isinstance(alternative, (tuple, list)) and len(first) == len(alternative):
        items = [_paired(a, b, world, name) for a, b in zip(first, alternative)]
        if hasattr(first, "_fields"):
            return type(first)(*items)
        return type(first)(items)
    raise Unsupported(f"{name} gives a value that Python could read ({type(first).__name__}) from a value a jump "
                      "reaches")


def _coupled(first_fn: Any, first: torch.Tensor, fn: Any) -> torch.Tensor:
    """A draw from ``fn`` coupled to ``first ~ first_fn`` (drawn anew where the family changed)."""
    redrawn = redrawn_where_changed(first_fn, first, fn)
    return fn.sample() if redrawn is None else redrawn


def holds_alternative(fn: Any) -> bool:
    """Whether a distribution's parameters (or its base's) carry an alternative."""
    return any(isinstance(value, Alternative) for value in held_values(fn))


class LazyPruning(Messenger):
    """Runs the program on the first run's draws (``trace``) with the alternative paths
    beside it, pruning the jumps of ``table`` as their sites come, on each path
    independently (module docs)."""

    def __init__(self, trace: Trace, table: Jumps, rows: Rows, world: World):
        super().__init__()
        self.trace, self.rows, self.world = trace, rows, world
        n = world.chains
        #: Per chain: the summed weight of the jumps that competed while alive, the kept
        #: jump's column (-1: none).
        self.weight = torch.zeros(n, dtype=table.share.dtype)
        self.kept = torch.full((n,), -1, dtype=torch.long)
        # Plain tensors: the first run's coefficients may carry provenance, whose tracking
        # would follow every value of this run. Per particle: every path shares them.
        self.weights, self.share = plain(table.size * table.share), plain(table.share)
        #: Each chain's particle.
        self.row_of = torch.arange(world.chains) % world.rows
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
            alternative = self._redrawn(name, msg["fn"], first_site["fn"], first)
        offers = self.offers.get(name)
        if offers:
            alternative = self._compete(offers, first, alternative, len(msg["fn"].event_shape))
        msg["value"] = first if alternative is first else Alternative(first, alternative.clone(), self.world)

    def _redrawn(self, name: str, fn: Any, first_fn: Any, first: torch.Tensor) -> torch.Tensor:
        """Each path's draw from its distribution ``fn``, coupled to the first draw."""
        shape = self.world.shape_of(first.shape)
        # The first run's distribution without its provenance (tracking it costs more
        # than the draw).
        first_fn = without_provenance(first_fn)
        try:
            if not self.world.stacked or isinstance(leaf_distribution(fn), dist.Bernoulli):
                # Stacked paths stack the parameters too (the batch shape is still the first
                # path's): a Bernoulli's draw on common random numbers is elementwise.
                redrawn = _coupled(first_fn, first.expand(shape), replaced_tensors(fn, Alternative, lambda v: v._alt))
            else:
                redrawn = self._on_each_path(fn, first_fn, first)
        except Unsupported:
            raise
        except Exception as error:
            raise Unsupported(f"site '{name}' ({describe(fn)}) cannot be redrawn on the alternative paths "
                              f"({first_line(error)})") from error
        if redrawn.shape != shape and (self.world.stacked or torch.broadcast_shapes(redrawn.shape, shape) != shape):
            raise Unsupported(f"site '{name}' ({describe(fn)}) draws {tuple(redrawn.shape)} on the alternative "
                              f"paths, not one draw per path {tuple(shape)}")
        return redrawn.to(first.dtype).expand(shape)

    def _on_each_path(self, fn: Any, first_fn: Any, first: torch.Tensor) -> torch.Tensor:
        """Each path's draw from its own distribution, by vmap over the paths (path by
        path where vmap cannot batch the sampler, a Multinomial's scatter, say)."""
        carried = [value for value in held_values(fn) if isinstance(value, Alternative)]
        index = {id(value): i for i, value in enumerate(carried)}
        alternatives = [value._alt for value in carried]

        def on_path(*values):
            return _coupled(first_fn, first, replaced_tensors(fn, Alternative, lambda v: values[index[id(v)]]))

        try:
            return torch.vmap(on_path, randomness="different")(*alternatives)
        except Exception as error:
            if recording():  # the failed attempt's operations would stay in the recording
                raise Unsupported(f"vmap cannot draw from {describe(fn)} on every path ({first_line(error)})") \
                    from error
            return torch.stack([on_path(*(t[k] for t in alternatives)) for k in range(self.world.paths)])

    def _on_paths(self, block: torch.Tensor, first: torch.Tensor, event_dim: int) -> torch.Tensor:
        """A ``(chains, elements of a row)`` block shaped like the alternatives of ``first``."""
        if not self.world.stacked:
            return self.rows.elements(block, first, event_dim)
        layout = self.rows.layout
        if layout.dim is not None and first.dim() == event_dim - layout.dim:  # particles lead: a reshape
            return block.reshape(self.world.shape_of(first.shape))
        return torch.stack([self.rows.elements(part, first, event_dim) for part in block.chunk(self.world.paths)])

    def _compete(self, offers, first: torch.Tensor, carried: torch.Tensor, event_dim: int) -> torch.Tensor:
        """The site's alternative draws after its jumps compete with the carried ones."""
        a, b = offers[0][1], offers[-1][2]
        weights = self.weights[:, a:b].repeat(self.world.paths, 1)  # (chains, the site's jumps)
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
            mask = self._on_paths(picked[:, start - a:stop - a], first, event_dim)
            moved = torch.where(mask, plain(offer.value).to(first.dtype), moved)
        taken = self._on_paths(take.unsqueeze(1).expand(-1, max(1, first.numel() // self.world.rows)), first,
                               event_dim)
        return torch.where(taken, moved, carried)

    def kept_jumps(self, f: Any) -> Kept:
        """The kept jumps' ``c/π · Δf`` up to sign (``W/share · Δf``), the paths' mean."""
        chains = self.world.chains
        delta = (f._alt - f._t) if isinstance(f, Alternative) else torch.zeros(chains)
        delta = torch.as_tensor(delta).to(self.weight.dtype).reshape(chains).detach()
        has = self.kept >= 0
        column = self.kept.clamp(min=0)
        tiny = torch.finfo(self.weight.dtype).tiny
        share = self.share[self.row_of, column].clamp(min=tiny)
        amount = torch.where(has, self.weight / share * delta, torch.zeros_like(delta)) / self.world.paths
        # Summed into each particle's row: no (chains, jumps) table, and no indexing by a
        # mask, whose size would follow the values (a recorded step replays shapes).
        table = torch.zeros(self.weights.shape, dtype=amount.dtype)
        return Kept(table.index_put_((self.row_of, column), amount, accumulate=True))


def lazily_pruned(program: Callable, args: tuple, kwargs: dict, trace: Trace, table: Jumps, rows: Rows,
                  dim: Optional[int], num: int, paths: int = 1) -> Kept:
    """Run ``program`` beside its first run ``trace`` (particles at ``dim``, ``num`` of
    them; looped when ``dim`` is None) with ``paths`` alternative paths per particle and
    keep one jump per path lazily; raises :class:`Unsupported` where the alternative
    paths cannot be carried."""
    world = World(num if dim is not None else None, paths)
    handler = LazyPruning(trace, table, rows, world)
    # The first run validated the first path's distributions; checking the alternatives'
    # would read values a jump reaches into Python.
    with torch.no_grad(), pyro.validation_enabled(False), handler:
        if dim is not None:
            with pyro.plate(PARTICLES, num, dim=dim):
                f = program(*args, **kwargs)
        else:
            f = program(*args, **kwargs)
        return handler.kept_jumps(f)
