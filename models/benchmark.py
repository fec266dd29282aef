"""The common shape of a benchmark: a stochastic program with its defaults and exact answer."""

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple


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
    tags: Tuple[str, ...] = field(default=())
