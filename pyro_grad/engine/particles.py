"""Running a program for K particles, and putting every per-particle tensor on axis 0.

Vectorized, all particles run in one pass inside an outermost ``pyro.plate`` to the
left of the program's own plates (as Pyro's ``vectorize_particles``). Looped, each
particle is its own run. Either way the objectives see tensors of shape ``(K, ...)``.
"""

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer.util import is_validation_enabled
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import prune_subsample_sites
from pyro.util import check_site_shape

from pyro_grad.engine.control_flow import READ, watched_reads
from pyro_grad.engine.jumps import Jump

#: Key in a pathwise site's ``infer``: the reads of its value into Python (jumps).
READ_JUMPS = "_pyro_grad_read_jumps"

PARTICLES = "_pyro_grad_particles"
#: The plates that hold particles: ours, and the one Pyro's ELBOs vectorize over.
PARTICLE_PLATES = (PARTICLES, "num_particles_vectorized")


def guess_max_plate_nesting(fn: Callable, args: tuple, kwargs: dict) -> int:
    """Run ``fn`` once (hidden from outer handlers) and return its deepest plate nesting."""
    with poutine.block():
        trace = prune_subsample_sites(poutine.trace(fn).get_trace(*args, **kwargs))
    sites = [s for s in trace.nodes.values() if s["type"] == "sample"]
    if is_validation_enabled():
        trace.compute_log_prob()
        for site in sites:
            check_site_shape(site, max_plate_nesting=float("inf"))
    return plate_depth([trace])


def plate_depth(traces: Sequence[Trace]) -> int:
    """How deep the vectorized plates of the sample sites of ``traces`` nest."""
    return max((-frame.dim for trace in traces for site in trace.nodes.values() if site["type"] == "sample"
                for frame in site["cond_indep_stack"] if frame.vectorized), default=0)


def particle_traces(
    fn: Callable,
    args: tuple,
    kwargs: dict,
    num_particles: int,
    vectorize: bool,
    max_plate_nesting: Optional[int] = None,
    watched: bool = True,
    pathwise: Optional[Callable[[dict], bool]] = None,
) -> Tuple[List[Trace], Optional[int]]:
    """Traces of ``fn`` for ``num_particles`` particles, and the particle dim (None when looped).

    Non-reparameterized sites' values carry provenance (as in ``TraceGraph_ELBO``), so
    that every term of f knows which sites it depends on; a site whose value the program
    reads into Python is marked (:mod:`pyro_grad.engine.control_flow`). ``max_plate_nesting``
    is guessed by one extra run when not given. ``watched=False`` skips provenance and
    the read watch, for re-runs whose only use is their value of f (provenance
    tracking takes longer than many programs themselves). ``pathwise`` (a predicate of
    the site message) also watches the pathwise draws it accepts for jumps
    (:mod:`pyro_grad.engine.jumps`); their reads are marked under :data:`READ_JUMPS`.
    """
    def trace(fn, args, kwargs, batched):
        if watched:
            return watched_trace(fn, args, kwargs, batched, pathwise)
        return plain_trace(fn, args, kwargs, batched)

    batched = vectorize and num_particles > 1
    if batched:
        if max_plate_nesting is None:
            max_plate_nesting = guess_max_plate_nesting(fn, args, kwargs)
        dim = -max_plate_nesting - 1
        with pyro.plate(PARTICLES, num_particles, dim=dim):
            return [trace(fn, args, kwargs, batched=True)], dim
    return [trace(fn, args, kwargs, batched=False) for _ in range(num_particles)], None


def plain_trace(fn: Callable, args: tuple, kwargs: dict, batched: bool) -> Trace:
    """One trace of ``fn``, with no provenance and no read watch."""
    return poutine.trace(fn).get_trace(*args, **kwargs)


def watched_trace(fn: Callable, args: tuple, kwargs: dict, batched: bool,
                  pathwise: Optional[Callable[[dict], bool]] = None) -> Trace:
    """One trace of ``fn`` with provenance on non-reparameterized values, its Python
    reads of drawn values marked in the read sites' ``infer`` (see :func:`particle_traces`)."""
    with watched_reads(batched, pathwise) as reads:
        trace = poutine.trace(fn).get_trace(*args, **kwargs)
    mark_reads(trace, reads.sites)
    mark_read_jumps(trace, reads.jumps)
    return trace


def mark_reads(trace: Trace, sites) -> None:
    for name in sites:
        if name in trace.nodes:
            trace.nodes[name]["infer"][READ] = True


def mark_read_jumps(trace: Trace, jumps: List[Jump]) -> None:
    """Record in each pathwise site of ``trace`` the reads of its value into Python."""
    for jump in jumps:
        if jump.site in trace.nodes:
            trace.nodes[jump.site]["infer"].setdefault(READ_JUMPS, []).append(jump)


def read_sites(trace: Trace) -> List[str]:
    """The sites of ``trace`` whose values the program read into Python, in order."""
    return [name for name, site in trace.nodes.items() if site.get("infer", {}).get(READ)]


def match_dims(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Insert size-1 dims after the particle axis so that ``t`` has ``ndim`` dims.

    The other dims of a per-particle tensor are right-aligned plate dims, so they must
    stay on the right when a tensor with fewer of them meets one with more.
    """
    return t.reshape(t.shape[:1] + (1,) * (ndim - t.dim()) + t.shape[1:])


def concat_particles(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate ``(k_i, ...)`` blocks on axis 0, broadcasting their other dims."""
    if len(parts) == 1:
        return parts[0]
    ndim = max(p.dim() for p in parts)
    parts = [match_dims(p, ndim) for p in parts]
    rest = torch.broadcast_shapes(*(p.shape[1:] for p in parts))
    return torch.cat([p.expand(p.shape[:1] + rest) for p in parts], 0)


@dataclass(frozen=True)
class ParticleLayout:
    """Where the particles are in a site's tensors: at ``dim`` (counted from the right of
    the batch dims) with ``num`` particles, or one particle with no axis (``dim=None``)."""

    dim: Optional[int]
    num: int

    def first(self, t: torch.Tensor, event_dim: int = 0) -> torch.Tensor:
        """``t`` with its particle axis moved to the front and expanded: ``(P, ...)``.
        With no particle axis, ``t`` is one particle's: a leading axis of 1 is added."""
        t = torch.as_tensor(t)
        if self.dim is None:
            return t.unsqueeze(0)
        need = -self.dim + event_dim
        if t.dim() < need:
            t = t.reshape((1,) * (need - t.dim()) + t.shape)
        t = t.movedim(self.dim - event_dim, 0)
        return t.expand((self.num,) + t.shape[1:])

    def natural(self, t: torch.Tensor, like: torch.Tensor, event_dim: int = 0) -> torch.Tensor:
        """Undo :meth:`first`, shaped like ``like``."""
        if self.dim is None:
            return t.squeeze(0).reshape(like.shape)
        return t.movedim(0, self.dim - event_dim).reshape(like.shape)

    def align(self, f: torch.Tensor, event_dim: int = 0) -> torch.Tensor:
        """A per-particle ``(P,)`` f shaped to broadcast against the site's batch dims
        (and ``event_dim`` event dims to their right)."""
        if self.dim is None:
            return f.reshape(())
        return f.reshape((self.num,) + (1,) * (-self.dim - 1 + event_dim))

    def reduce(self, t: torch.Tensor, event_dim: int = 0) -> torch.Tensor:
        """Per-particle sums ``(P,)`` of a tensor with ``event_dim`` event dims."""
        if self.dim is None:
            return torch.as_tensor(t).sum().reshape(1)
        return self.first(t, event_dim).reshape(self.num, -1).sum(1)
