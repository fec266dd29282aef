"""``PythonReads``: find the sites whose values a program reads into Python.

Rao-Blackwellizing by provenance (as ``TraceGraph_ELBO`` does) follows a draw's value
through tensor operations only. A program that reads a draw into Python (``.item()``,
``if b:``, ``int(n)``, ``range(n)``, ``.tolist()``) can make anything after the read
depend on it — which sites exist, how often a loop runs — and provenance sees none of
it. So these reads are watched: a site read this way (and every site its distribution
depends on) has its score multiply every cost that comes after it, not only the costs
its value flows into.

With vectorized particles one Python control flow serves all particles, which is
wrong whatever the estimator, so a read there is an error.
"""

import contextlib
import os
import sys
from typing import Any, Dict, FrozenSet, Iterator, Optional, Set

import pyro
import torch
from pyro.infer.tracegraph_elbo import TrackNonReparam
from pyro.ops.provenance import get_provenance
from pyro.poutine.messenger import Messenger
from torch.overrides import TorchFunctionMode

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
LIBRARIES = tuple(os.path.dirname(m.__file__) + os.sep for m in (torch, pyro))
#: torch's own Python shims between a read and its caller.
SHIMS = tuple(os.path.join(os.path.dirname(torch.__file__), f) for f in ("overrides.py", "_tensor.py"))


def read_by_program(frame: Any) -> bool:
    """Whether the code that made a read (``frame``, skipping torch's shims) is the
    program's own, rather than torch's or Pyro's (which read values only to validate)."""
    while frame is not None and frame.f_code.co_filename in SHIMS:
        frame = frame.f_back
    return frame is not None and not frame.f_code.co_filename.startswith(LIBRARIES)


class _Mode(TorchFunctionMode):
    def __init__(self, watch: "PythonReads") -> None:
        super().__init__()
        self.watch = watch

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in PYTHON_READS and args:
            sites = get_provenance(args[0])
            if sites and read_by_program(sys._getframe(1)):
                self.watch.read(sites)
        return func(*args, **(kwargs or {}))


class PythonReads(Messenger):
    """Records which sites' values the program reads into Python.

    The watch starts only once a site with provenance is drawn, so a program with
    only reparameterized sites pays nothing. With ``batched=True`` (vectorized
    particles, K ≥ 2) a read raises :class:`~pyro_grad.errors.EstimatorError`.
    """

    def __init__(self, batched: bool = False) -> None:
        super().__init__()
        self.batched = batched
        self.sites: Set[str] = set()
        self._fns: Dict[str, Any] = {}
        self._mode = None

    def __enter__(self):
        self.sites, self._fns, self._mode = set(), {}, None
        return super().__enter__()

    def __exit__(self, *exc):
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self._mode = None
        return super().__exit__(*exc)

    def _pyro_post_sample(self, msg: dict) -> None:
        self._fns.setdefault(msg["name"], msg["fn"])
        if self._mode is None and get_provenance(msg["value"]):
            self._mode = _Mode(self)
            self._mode.__enter__()

    def read(self, sites: FrozenSet[str]) -> None:
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
        self.sites |= sites


@contextlib.contextmanager
def watched_reads(batched: bool) -> Iterator[PythonReads]:
    """Run a program with provenance on non-reparameterized values (as
    ``TraceGraph_ELBO``) and its Python reads of them watched; torch's own error for a
    batched read becomes one clear :class:`~pyro_grad.errors.EstimatorError`."""
    reads = PythonReads(batched=batched)
    try:
        with TrackNonReparam(), reads:
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
