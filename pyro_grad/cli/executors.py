"""Where ``pyro-grad compare`` computes its fits: here, on local processes
(``--workers``), or on a running Dask scheduler's workers (``--scheduler``)."""

import concurrent.futures as cf
import contextlib
from typing import Any, Iterator, Optional

import torch

from pyro_grad.cli.usage import UsageError
from pyro_grad.errors import first_line


@contextlib.contextmanager
def executor_for(workers: Optional[int], scheduler: Optional[str]) -> Iterator[Optional[cf.Executor]]:
    """``--workers N``: N local processes; ``--scheduler ADDRESS``: a running Dask
    scheduler's workers; neither: None (this process computes every fit).

    Every fit, here or on a worker, uses this process's torch thread count, since its
    bits depend on it. With workers it is set, while they run, to one worker's share of
    the cores (local processes), or to 1, the thread Dask gives each task
    (OMP_NUM_THREADS=1), so that the workers do not compete for cores."""
    if workers is None and scheduler is None:
        yield None
        return
    from pyro_grad.harness.comparison.executor import local_pool, usable_cores

    previous = torch.get_num_threads()
    try:
        if workers is not None:
            torch.set_num_threads(max(1, usable_cores() // workers))
            with local_pool(workers) as pool:
                yield pool
        else:
            torch.set_num_threads(1)
            with dask_client(scheduler) as client:
                yield client.get_executor()
    finally:
        torch.set_num_threads(previous)


def dask_client(scheduler: str) -> Any:
    try:
        import distributed
    except ImportError:
        raise UsageError("--scheduler needs Dask's distributed: pip install 'pyro-grad[dask]'") from None
    try:
        return distributed.Client(scheduler, timeout=30)
    except (OSError, ValueError) as error:  # unreachable (TimeoutError is an OSError), or not an address
        raise UsageError(f"cannot reach the Dask scheduler at {scheduler}: {first_line(error)}") from None
