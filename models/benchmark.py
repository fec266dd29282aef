"""The common shape of a benchmark: a stochastic program with its defaults and exact answer."""

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

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
    #: log p(x) of an SVI benchmark whose guide family holds the posterior: the ELBO's
    #: maximum, drawn as a line in its ELBO plot. None where it is not known.
    log_evidence: Optional[Callable[[], float]] = None

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
