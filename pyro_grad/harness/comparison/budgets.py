"""Equal budgets: each config trains for the program evaluations the cheapest config's
``num_steps`` steps take, so that a comparison is at equal work."""

from typing import Dict, Optional, Tuple

from pyro_grad.handler import with_config
from pyro_grad.harness.comparison.autoguide import AutoGuide
from pyro_grad.harness.comparison.svi_fit import evaluations_per_particle


def equal_evaluations(model, guide, args, kwargs, configs, num_steps, num_particles,
                      diagnose_every, objective) -> Dict[str, Tuple[int, Optional[int]]]:
    """Per config, (steps, diagnose_every) that spend the evaluations of ``num_steps``
    steps of the cheapest config."""
    base = guide if guide is not None else AutoGuide(model)
    costs = {label: num_particles * evaluations_per_particle(model, with_config(base, config), args, kwargs,
                                                             objective, num_particles)
             for label, config in configs.items()}
    budget = num_steps * min(costs.values())
    schedules = {}
    for label, cost in costs.items():
        steps = max(1, budget // cost)
        every = None if diagnose_every is None else max(1, round(diagnose_every * steps / num_steps))
        schedules[label] = (steps, every)
    return schedules
