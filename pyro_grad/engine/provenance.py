"""Fast reads of Pyro's provenance (``pyro.ops.provenance``) for the common case.

Pyro's ``get_provenance`` and ``detach_provenance`` flatten their argument as a pytree
even when it is a plain tensor or a ``torch.Size``; called on every attribute of every
distribution in a step, that took longer than the step's own tensor work. These answer a
tensor (or a number, or None) directly and hand anything else to Pyro.
"""

from typing import Any, FrozenSet

import torch
from pyro.ops.provenance import ProvenanceTensor, detach_provenance, get_provenance

NONE: FrozenSet[str] = frozenset()
_ATOMS = (torch.Tensor, torch.Size, int, float, bool, str, type(None))


def provenance_of(x: Any) -> FrozenSet[str]:
    """``pyro.ops.provenance.get_provenance(x)``."""
    if isinstance(x, ProvenanceTensor):
        return x._provenance
    if isinstance(x, _ATOMS):
        return NONE
    return get_provenance(x)


def plain(x: Any) -> Any:
    """``pyro.ops.provenance.detach_provenance(x)``: the same data, with no provenance."""
    if isinstance(x, ProvenanceTensor):
        return x._t
    if isinstance(x, _ATOMS):
        return x
    return detach_provenance(x)
