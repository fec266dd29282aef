"""Decisions on values that a recorded step assumes (:mod:`pyro_grad.engine.recording`).

The engine decides some things by looking at values: whether a re-run changed a later
site's distribution (replay it, or redraw it on common random numbers). A recorded
step cannot read values into Python, so while a step is recorded such a decision is
read without being traced and kept as an *assumption*: the condition itself stays in the
graph, and every later run of the recording checks that it comes out the same. One that
does not is run again uncompiled, from the same random state, and recorded anew.
"""

import contextlib
import contextvars
from typing import Iterator, List, Tuple

import torch
from torch.fx.experimental.proxy_tensor import disable_proxy_modes_tracing

#: The assumptions of the step being recorded (None: no step is being recorded).
_RECORDED: contextvars.ContextVar = contextvars.ContextVar("pyro_grad_assumptions", default=None)


def decided(condition: torch.Tensor) -> bool:
    """``bool(condition)``, a one-element tensor: kept as an assumption while recording."""
    assumed = _RECORDED.get()
    if assumed is None:
        return bool(condition)
    with disable_proxy_modes_tracing():
        value = bool(condition)
    assumed.append((condition, value))
    return value


def recording() -> bool:
    """Whether a step is being recorded: a failure caught to fall back would leave the
    failed attempt's operations in the recording, so the caller refuses it instead."""
    return _RECORDED.get() is not None


@contextlib.contextmanager
def assumptions() -> Iterator[List[Tuple[torch.Tensor, bool]]]:
    """Collects the decisions (condition, value) taken inside the block."""
    assumed: List[Tuple[torch.Tensor, bool]] = []
    token = _RECORDED.set(assumed)
    try:
        yield assumed
    finally:
        _RECORDED.reset(token)
