"""The weights of every ``nn.Module`` in a comparison's configs (a Score baseline
network), saved once so that every fit starts from them, and restored at the end."""

import copy
from typing import Any, List, Mapping

import torch

from pyro_grad.gradient_estimators import Estimator


class ModuleStates:
    """The weights of every ``nn.Module`` in the configs (a Score baseline network),
    saved once so that each fit can start from them."""

    def __init__(self, configs: Mapping[str, Any]):
        self.saved = [(m, copy.deepcopy(m.state_dict())) for m in _modules(list(configs.values()))]

    def restore(self) -> None:
        for module, state in self.saved:
            module.load_state_dict(state)


def _modules(obj: Any) -> List[torch.nn.Module]:
    if isinstance(obj, torch.nn.Module):
        return [obj]
    if isinstance(obj, Mapping):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [m for item in obj for m in _modules(item)]
    if isinstance(obj, Estimator):
        return _modules(list(vars(obj).values()))
    return []
