"""``Fits``: everything the fits of one :func:`~pyro_grad.compare` call share, and how to
compute one of them."""

import dataclasses
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from pyro_grad.harness.comparison.module_states import ModuleStates
from pyro_grad.harness.comparison.svi_fit import WARMUP_STEPS, fit_one


@dataclasses.dataclass
class Fits:
    """Pickled whole (by cloudpickle) for an executor's workers, so that a worker
    computes a fit exactly as the calling process would: every fit starts from a cleared
    param store, the configs' networks as given, ``reset``, and its own seed."""

    model: Callable
    guide: Optional[Callable]
    args: tuple
    kwargs: dict
    configs: Mapping[str, Any]
    #: Per config label: (SVI steps, diagnose_every).
    schedules: Dict[str, Tuple[int, Optional[int]]]
    num_particles: int
    optim: Any
    reset: Optional[Callable[[], None]]
    objective: Any
    checkpoint_samples: int
    modules: ModuleStates
    #: The loss's ``compile=``.
    compile: Any = False

    def start_alike(self) -> None:
        self.modules.restore()
        if self.reset is not None:
            self.reset()

    def fit(self, label: str, seed: int, on_step: Optional[Callable[[], None]] = None) -> Dict[str, Any]:
        steps, every = self.schedules[label]
        return fit_one(self.model, self.guide, self.args, self.kwargs, self.configs[label], seed, steps,
                       self.num_particles, self.optim, every, on_step, self.start_alike,
                       objective=self.objective, checkpoint_samples=self.checkpoint_samples, compile=self.compile)

    def warm_up(self, label: str, seed: int) -> None:
        """A few untimed steps: a process's first steps pay one-time start-up time that no
        fit should."""
        fit_one(self.model, self.guide, self.args, self.kwargs, self.configs[label], seed,
                min(WARMUP_STEPS, self.schedules[label][0]), self.num_particles, self.optim, None,
                reset=self.start_alike, posterior=False, objective=self.objective, compile=self.compile)
