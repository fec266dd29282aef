"""``PythonReads``: track which draws every value depends on, and find the sites whose
values a program reads into Python.

Rao-Blackwellizing by provenance (as ``TraceGraph_ELBO`` does) follows a draw's value
through tensor operations only. A program that reads a draw into Python (``.item()``,
``if b:``, ``int(n)``, ``range(n)``, ``.tolist()``) can make anything after the read
depend on it — which sites exist, how often a loop runs — and provenance sees none of
it. So these reads are watched: a site read this way (and every site its distribution
depends on) has its score multiply every term of f that comes after it, not only the terms
its value flows into.

With vectorized particles one Python control flow serves all particles, which is
wrong whatever the estimator, so a read there is an error.

The values are :class:`WatchedTensor`\\ s: Pyro's ``ProvenanceTensor`` (so Pyro's
``get_provenance`` and ``detach_provenance`` read them) with a faster dispatch. Pyro's
dispatch flattens every call's arguments with ``torch.utils._pytree`` twice, which took longer
than the 784–200–784 VAE's own step; a call's arguments are almost always tensors,
numbers and flat lists of them, which are unwrapped directly here, and anything nested
deeper takes Pyro's general path. A read into Python is a tensor call too, so the
value itself reports it to its watch: no ``TorchFunctionMode`` taxes every other
tensor operation of the program.
"""

import contextlib
import functools
import os
import sys
from typing import Any, Callable, Dict, FrozenSet, Iterator, List, Optional, Set

import pyro
import torch
from pyro.ops.provenance import ProvenanceTensor
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample
from torch.utils._pytree import tree_flatten, tree_map

from pyro_grad.engine.jumps import ALMOST_SURELY_CONSTANT, PER_ARGUMENT, Jump, jump_marks, jumps_in, read_jump
from pyro_grad.engine.provenance import NONE, plain, provenance_of
from pyro_grad.errors import EstimatorError
from pyro_grad.distributions import describe

#: Tensor methods that hand a tensor's values to Python.
PYTHON_READS = frozenset(
    {
        torch.Tensor.item,
        torch.Tensor.tolist,
        torch.Tensor.numpy,
        torch.Tensor.__bool__,
        torch.Tensor.__int__,
        torch.Tensor.__float__,
        torch.Tensor.__index__,
        torch.Tensor.__array__,
        # comparisons whose answer is a Python bool
        torch.equal,
        torch.Tensor.equal,
        torch.allclose,
        torch.Tensor.allclose,
        torch.is_nonzero,
        torch.Tensor.is_nonzero,
        torch.Tensor.__contains__,
    }
)

#: torch's own complaints when a batched value is read into Python.
BATCHED_READ_ERRORS = (
    "cannot be converted to Scalar",
    "Boolean value of Tensor with more than one value is ambiguous",
    "only one element tensors can be converted to Python scalars",
    "only integer tensors of a single element can be converted to an index",
)

#: Key in a site's ``infer``: set when the site's value was read into Python.
READ = "_pyro_grad_read_into_python"


#: Code whose reads are not the program's control flow (argument validation, say).
VALIDATING_LIBRARIES = tuple(os.path.dirname(m.__file__) + os.sep for m in (torch, pyro))
#: torch's own Python shims between a read and its caller.
SHIMS = tuple(os.path.join(os.path.dirname(torch.__file__), f) for f in ("overrides.py", "_tensor.py"))


def read_by_program(frame: Any) -> bool:
    """Whether the code that made a read (``frame``, skipping torch's shims) is the
    program's own, rather than torch's or Pyro's (which read values only to validate)."""
    while frame is not None and frame.f_code.co_filename in SHIMS:
        frame = frame.f_back
    return frame is not None and not frame.f_code.co_filename.startswith(VALIDATING_LIBRARIES)


class _Nested(Exception):
    """An argument nested deeper than a flat list: Pyro's general path unwraps it."""


def _unwrap(x: Any, found: list) -> Any:
    """``x`` with its provenance removed (collected into ``found``), for a tensor, a
    number or a flat list/tuple of them."""
    if isinstance(x, ProvenanceTensor):
        found.append(x)
        return x._t
    kind = type(x)
    if kind is tuple or kind is list:
        parts = None
        for i, part in enumerate(x):
            if isinstance(part, ProvenanceTensor):
                parts = list(x) if parts is None else parts
                parts[i] = part._t
                found.append(part)
            elif isinstance(part, (tuple, list, dict)):
                raise _Nested
        return x if parts is None else kind(parts)
    if kind is dict:
        raise _Nested
    return x


class WatchedTensor(ProvenanceTensor):
    """A value with provenance whose reads into Python are reported to ``_watch``."""

    _watch: Optional["PythonReads"]

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        found: list = []
        try:
            plain_args = [_unwrap(a, found) for a in args]
            plain_kwargs = {k: _unwrap(v, found) for k, v in kwargs.items()} if kwargs else {}
        except _Nested:
            found = [t for t in tree_flatten([args, kwargs])[0] if isinstance(t, ProvenanceTensor)]
            plain_args, plain_kwargs = plain([list(args), kwargs or {}])
        provenance = NONE.union(*(t._provenance for t in found))
        watch = next((t._watch for t in found if getattr(t, "_watch", None) is not None), None)
        if watch is None:
            return watched(func(*plain_args, **plain_kwargs), provenance, watch)
        jumped = provenance & watch.pathwise if watch.pathwise else None
        if jumped and func in ALMOST_SURELY_CONSTANT:  # a finiteness check: no dependence on the draw
            provenance, jumped = provenance - watch.pathwise, None
        if func in PYTHON_READS:
            watch.saw_read(func, provenance, sys._getframe(1))
        result = func(*plain_args, **plain_kwargs)
        if func in PER_ARGUMENT and isinstance(result, (tuple, list)) and len(result) == len(args):
            # broadcast_tensors(k, z): each result is its own argument, with its own provenance.
            return type(result)(watched(r, getattr(a, "_provenance", NONE), watch) for r, a in zip(result, args))
        marks = jump_marks(func, result, jumped, sys._getframe(1), kwargs) if jumped else None
        if args and is_in_place(func):
            added = marks(args[0]) if marks is not None else frozenset()
            if isinstance(args[0], WatchedTensor):  # x[mask] = v, x.add_(v): x now depends on what the call read
                args[0]._provenance = provenance | added
            else:  # written into a tensor made without the draw: its marks are recorded, as a read's
                watch.saw_write(provenance | added)
        if marks is not None:
            return marked(result, provenance, marks, watch)
        return watched(result, provenance, watch)


@functools.lru_cache(maxsize=None)  # called on every watched tensor call; a function's name does not change
def is_in_place(func: Any) -> bool:
    """Whether a tensor call writes into its first argument (``x[i] = v``, ``x.add_(v)``)."""
    name = getattr(func, "__name__", "")
    return name == "__setitem__" or (name.endswith("_") and not name.startswith("_")) or name in IN_PLACE_OPERATORS


#: Python's augmented assignments, as torch names them.
IN_PLACE_OPERATORS = frozenset({"__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__imod__",
                                "__ipow__", "__iand__", "__ior__", "__ixor__"})


def watched(value: Any, provenance: FrozenSet[str], watch: Optional["PythonReads"]) -> Any:
    """``value`` (a tensor or a structure of them) carrying ``provenance``, reporting
    reads to ``watch``."""
    if not provenance:
        return value
    if isinstance(value, torch.Tensor):
        # As ProvenanceTensor.__new__, without its checks: this runs on every op.
        value = plain(value)
        tensor = value.as_subclass(WatchedTensor)
        tensor._t, tensor._provenance, tensor._watch = value, provenance, watch
        return tensor
    kind = type(value)
    if kind is tuple or kind is list:
        return kind(watched(v, provenance, watch) for v in value)
    if isinstance(value, (tuple, list, dict)):  # named tuples, torch.return_types
        return tree_map(lambda v: watched(v, provenance, watch), value)
    return value


def marked(value: Any, provenance: FrozenSet[Any], marks: Callable[[Any], FrozenSet[Any]], watch: "PythonReads") -> Any:
    """``value`` as :func:`watched`, each of its tensors also carrying ``marks(tensor)``."""
    if isinstance(value, torch.Tensor):
        return watched(value, provenance | marks(value), watch)
    kind = type(value)
    if kind is tuple or kind is list:
        return kind(marked(v, provenance, marks, watch) for v in value)
    if isinstance(value, (tuple, list, dict)):
        return tree_map(lambda v: marked(v, provenance, marks, watch), value)
    return value


class PythonReads(Messenger):
    """Gives every non-reparameterized draw its site's name as provenance (as Pyro's
    ``TrackNonReparam``) and records which sites' values the program reads into Python.

    With ``pathwise`` (a predicate of the site message), the reparameterized draws it
    accepts (those whose estimator is pathwise) carry their site's name too, so that the
    operations that jump in them are marked (:mod:`pyro_grad.engine.jumps`) and their
    reads into Python are recorded in ``jumps``; their names stay off the values of
    later non-reparameterized draws, whose own estimators differentiate their laws.
    Without it, a program with only reparameterized sites makes no watched value and
    pays nothing. With ``batched=True`` (vectorized particles, K ≥ 2) a read raises
    :class:`~pyro_grad.errors.EstimatorError`. Reads after the run ends are not the
    run's, and are ignored.
    """

    def __init__(self, batched: bool = False, pathwise: Optional[Callable[[dict], bool]] = None) -> None:
        super().__init__()
        self.batched = batched
        #: Which reparameterized draws to watch for jumps (a predicate of the site message).
        self.watches_site = pathwise
        self.sites: Set[str] = set()
        #: The watched pathwise sites, and their values' reads into Python.
        self.pathwise: Set[str] = set()
        self.jumps: List[Jump] = []
        self._fns: Dict[str, Any] = {}
        self._running = False

    def __enter__(self):
        self.sites, self.pathwise, self.jumps, self._fns, self._running = set(), set(), [], {}, True
        return super().__enter__()

    def __exit__(self, *exc):
        self._running = False
        return super().__exit__(*exc)

    def _pyro_post_sample(self, msg: dict) -> None:
        self._fns.setdefault(msg["name"], msg["fn"])
        if msg["is_observed"] or isinstance(msg["fn"], _Subsample):
            return
        if getattr(msg["fn"], "has_rsample", False):
            if self.watches_site is not None and self.watches_site(msg):
                self.pathwise.add(msg["name"])
                msg["value"] = watched(plain(msg["value"]), provenance_of(msg["value"]) | {msg["name"]}, self)
            return
        # A pathwise draw reaches this one only through its law, which this site's own
        # estimator differentiates: what the program does with this value is no jump of it.
        provenance = (provenance_of(msg["value"]) - self.pathwise) | {msg["name"]}
        msg["value"] = watched(plain(msg["value"]), provenance, self)

    def saw_write(self, provenance: FrozenSet[Any]) -> None:
        """A call wrote values that jump in a pathwise draw into a tensor this watch does
        not follow (``out = torch.zeros(n); out[z > 0] = 1``): the jumps are recorded as
        found, since the tensor may reach f unseen."""
        if self._running:
            self.jumps += [jump for jump in jumps_in(provenance) if jump not in self.jumps]

    def saw_read(self, func: Any, provenance: FrozenSet[Any], frame: Any) -> None:
        sites = frozenset(p for p in provenance if isinstance(p, str))
        if not self._running or not sites or not read_by_program(frame):
            return
        pathwise = sites & self.pathwise
        self.jumps += [read_jump(site, func, frame) for site in sorted(pathwise)]
        if self.batched:
            named = ", ".join(
                f"'{s}' ({describe(self._fns[s])})" if s in self._fns else f"'{s}'" for s in sorted(sites)
            )
            raise EstimatorError(
                f"the program reads the value of site {named} into Python (.item(), if, int(), "
                "range()); vectorized particles share one Python control flow, so every "
                "estimate would be wrong. Use vectorize=False (pg.expectation) or "
                "vectorize_particles=False (pg.ELBO)"
            )
        # A pathwise read is a jump (above); the score-path sites' reads widen their f.
        self.sites |= sites - pathwise


@contextlib.contextmanager
def watched_reads(batched: bool, pathwise: Optional[Callable[[dict], bool]] = None) -> Iterator[PythonReads]:
    """Run a program with provenance on non-reparameterized values (as
    ``TraceGraph_ELBO``) and its Python reads of them watched, and with ``pathwise``
    the jumps in the pathwise draws it accepts (see :class:`PythonReads`); torch's own
    error for a batched read becomes one clear :class:`~pyro_grad.errors.EstimatorError`."""
    reads = PythonReads(batched=batched, pathwise=pathwise)
    try:
        with reads:
            yield reads
    except RuntimeError as error:
        clear = batched_read_error(error) if batched else None
        if clear is None:
            raise
        raise clear from error


def batched_read_error(error: RuntimeError) -> Optional[EstimatorError]:
    """torch's error for a batched value read into Python, as one clear message; or None."""
    if not any(text in str(error) for text in BATCHED_READ_ERRORS):
        return None
    return EstimatorError(
        f"the program reads a value drawn for all particles at once into Python ({error}); "
        "vectorized particles share one Python control flow. Use vectorize=False "
        "(pg.expectation) or vectorize_particles=False (pg.ELBO)"
    )
