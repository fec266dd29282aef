"""Central finite differences, the baseline every autodiff estimator is measured against."""

from dataclasses import dataclass
import torch

from pyro_grad.baselines import FrozenAverages
from pyro_grad.diagnostics.gradient_samples import Draws, GradientTask, primal_of, replaced
from pyro_grad.errors import EstimatorError


@dataclass(frozen=True)
class FiniteDifferences:
    """``ĝ_j = (f(θ + ε e_j) − f(θ − ε e_j)) / 2ε``, one draw per pair of program runs.

    With independent random numbers (``common_random_numbers=False``) the two runs are
    uncorrelated and the variance grows like ``Var f / 2ε²`` as ε shrinks (the
    tutorial's first figure); with common random numbers both runs replay the same
    draws. Biased by O(ε²) in general (exact for quadratics): ``unbiased=False``.
    Cost: 2 evaluations per parameter element for one draw of the whole gradient. A whole-program candidate for
    :func:`~pyro_grad.compare_estimators`, not a per-site estimator.
    """

    epsilon: float
    common_random_numbers: bool = False

    unbiased = False

    def __post_init__(self) -> None:
        if not self.epsilon > 0:
            raise EstimatorError(f"FiniteDifferences(epsilon={self.epsilon!r}): epsilon must be positive")

    def draws(self, task: GradientTask, num_samples: int, seed: int) -> Draws:
        """``num_samples`` draws of the central difference of every argument and param target."""
        samples, elements = {}, 0
        for target in task.targets:
            if target.kind == "site":
                continue
            primal = primal_of(target, task.args, task.params)
            columns = []
            elements += max(1, primal.numel())
            for j in range(max(1, primal.numel())):
                step = torch.zeros(primal.numel())
                step[j] = self.epsilon
                step = step.view(primal.shape)
                values = []
                for sign, run_seed in ((1, seed), (-1, seed if self.common_random_numbers else seed + 1)):
                    with torch.random.fork_rng(), FrozenAverages(), torch.no_grad():
                        torch.manual_seed(run_seed)
                        with replaced(target, task.args, primal + sign * step) as moved_args:
                            values.append(task.estimates(moved_args, num_samples).values.detach())
                columns.append((values[0] - values[1]) / (2 * self.epsilon))
            samples[target.name] = torch.stack(columns, -1).reshape((num_samples,) + primal.shape)
        # Two runs per parameter element make one draw of the whole gradient.
        return Draws(samples, {}, {}, "vectorized", evaluations=2 * elements)
