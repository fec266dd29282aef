"""The common shape of a benchmark: a stochastic program with its defaults and exact answer."""

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch


@dataclass(frozen=True)
class Benchmark:
    """A stochastic program ready for ``pg.expectation``, ``pg.diagnose`` and SVI.

    ``program(*default_args)`` returns one scalar cost per particle.
    ``reference_gradient(*args)`` returns the exact ``∇E[program(*args)]`` as a dict
    from argument name to tensor, or is None where no exact gradient is known.
    """

    name: str
    description: str
    program: Callable
    default_args: Tuple[Any, ...]
    arg_names: Tuple[str, ...]
    reference_gradient: Optional[Callable[..., Dict[str, Any]]] = None
    guide: Optional[Callable] = None
    #: Restores any state the program keeps outside Pyro's param store (a network's
    #: weights), so that every use of the benchmark starts from the same point.
    reset: Optional[Callable[[], None]] = None

    def applicable_estimators(self) -> List[Tuple[str, Any, int]]:
        """(label, estimator, particles) for every registered estimator that applies to all
        latent sites (of the guide, for an ELBO), plus leave-one-out with 4 particles
        beside the score function. Enumerate is left out where a site has more than one
        element per particle (a plate), which it refuses."""
        import pyro.poutine as poutine

        import pyro_grad as pg

        from pyro.poutine.util import prune_subsample_sites

        with poutine.block():
            trace = prune_subsample_sites(poutine.trace(self.guide or self.program).get_trace(*self.arguments()))
        sites = [s for s in trace.nodes.values() if s["type"] == "sample" and not s["is_observed"]]
        candidates = []
        for cls in pg.paths.REGISTRY:
            if not all(cls.applies_to(s["fn"]) for s in sites):
                continue
            if cls is pg.Enumerate and any(s["fn"].batch_shape.numel() > 1 for s in sites):
                continue
            if cls is pg.GumbelSoftmax and self.guide is not None:
                # An ELBO scores the discrete value: only the hard relaxation fits.
                candidates.append(("GumbelSoftmax(hard)", pg.GumbelSoftmax(hard=True), 1))
                continue
            examples = {repr(cls.example_for(s["fn"])) for s in sites}
            example = cls.example_for(sites[0]["fn"]) if len(examples) == 1 else cls.example()
            candidates.append((cls.__name__, example, 1))
            if cls is pg.Score:
                candidates.append(("Score(loo), K=4", pg.Score("loo"), 4))
        return candidates

    def arguments(self) -> Tuple[Any, ...]:
        """The default arguments, each number as a fresh tensor that requires grad (the
        parameters to differentiate); tensors (data, or inputs that already require grad)
        as they are. Calls ``reset`` first."""
        if self.reset is not None:
            self.reset()
        return tuple(
            torch.tensor(float(a), requires_grad=True) if isinstance(a, (int, float)) else a
            for a in self.default_args
        )
