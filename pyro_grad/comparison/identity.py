"""A run's identity: a digest of everything that determines its result.

Two runs with the same digest are the same computation (same program source, data,
estimators, settings, seed and versions), so a stored run is reused only when its digest
matches. The digest is built from a deterministic description of each ingredient:
tensors by their bytes, functions by their qualified name and source (their bytecode
when the source is unavailable) and any captured variables, estimators field by field,
modules by their weights. Memory addresses never enter it, so it is the same in every
process.

State a program keeps outside its arguments (a global network) is identified only by
the source of the functions that use and ``reset`` it.
"""

import functools
import hashlib
import inspect
from importlib import metadata
from typing import Any, Iterator, Mapping

import numpy as np
import pyro.optim
import torch

#: Bump when the meaning of a stored record changes.
FORMAT = "pyro_grad run 2"


def _tokens(obj: Any, seen: set) -> Iterator[str]:
    """A deterministic token stream describing ``obj``."""
    from pyro_grad.paths import Estimator

    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        yield f"{type(obj).__name__}:{obj!r}"
        return
    if isinstance(obj, torch.Tensor):
        data = obj.detach().cpu().contiguous()
        yield f"tensor:{data.dtype}:{tuple(data.shape)}:{hashlib.sha256(data.numpy().tobytes()).hexdigest()}"
        return
    if isinstance(obj, np.ndarray):
        yield f"array:{obj.dtype}:{obj.shape}:{hashlib.sha256(np.ascontiguousarray(obj).tobytes()).hexdigest()}"
        return
    if id(obj) in seen:  # a cycle (a function that refers to itself)
        yield "seen"
        return
    seen = seen | {id(obj)}
    if isinstance(obj, Mapping):
        yield f"mapping:{len(obj)}"
        for key in sorted(obj, key=repr):
            yield from _tokens(key, seen)
            yield from _tokens(obj[key], seen)
    elif isinstance(obj, (list, tuple)):
        yield f"{type(obj).__name__}:{len(obj)}"
        for item in obj:
            yield from _tokens(item, seen)
    elif isinstance(obj, Estimator):
        # Field by field: a baseline network's weights, not its repr.
        yield f"estimator:{type(obj).__name__}"
        yield from _tokens(dict(vars(obj)), seen)
    elif isinstance(obj, torch.nn.Module):
        yield f"module:{_qualified(type(obj))}"
        yield from _source(type(obj))
        yield from _tokens(dict(obj.state_dict()), seen)
    elif isinstance(obj, pyro.optim.PyroOptim):
        yield f"optim:{_qualified(obj.pt_optim_constructor)}"
        yield from _tokens(obj.pt_optim_args, seen)
    elif isinstance(obj, functools.partial):
        yield "partial"
        yield from _tokens((obj.func, obj.args, obj.keywords), seen)
    elif inspect.ismethod(obj):
        yield "method"
        yield from _tokens((obj.__func__, obj.__self__), seen)
    elif inspect.isfunction(obj):
        yield f"function:{_qualified(obj)}"
        yield from _source(obj)
        yield from _tokens(obj.__defaults__ or (), seen)
        cells = [cell.cell_contents for cell in (obj.__closure__ or ()) if _filled(cell)]
        yield from _tokens(cells, seen)
    elif inspect.isclass(obj) or inspect.isbuiltin(obj):
        yield f"named:{_qualified(obj)}"
    else:
        # Any other object: its class, and its repr unless that is just an address.
        yield f"object:{_qualified(type(obj))}"
        yield from _source(type(obj))
        text = repr(obj)
        if " at 0x" not in text:
            yield text


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents
    except ValueError:  # an empty cell: a variable not yet assigned
        return False
    return True


def _qualified(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"


def _source(obj: Any) -> Iterator[str]:
    try:
        yield inspect.getsource(obj)
    except (OSError, TypeError):
        code = getattr(obj, "__code__", None)
        if code is not None:  # defined where no source is kept (python -c, exec)
            yield hashlib.sha256(code.co_code).hexdigest()
            yield repr(code.co_consts)


def versions() -> str:
    """The versions that can change a run's numbers."""
    found = []
    for package in ("pyro-grad", "pyro-ppl", "torch"):
        try:
            found.append(f"{package}=={metadata.version(package)}")
        except metadata.PackageNotFoundError:
            found.append(f"{package} not installed")
    return ",".join(found)


class RunIdentity:
    """The digest of the parts every run of one :func:`~pyro_grad.compare` call shares,
    extended per (config, seed) by :meth:`digest`."""

    def __init__(self, **shared: Any):
        self._hash = hashlib.sha256(FORMAT.encode())
        for token in _tokens({"versions": versions(), **shared}, set()):
            self._hash.update(token.encode())
            self._hash.update(b"\0")

    def digest(self, config: Any, seed: int) -> str:
        h = self._hash.copy()
        for token in _tokens({"config": config, "seed": seed}, set()):
            h.update(token.encode())
            h.update(b"\0")
        return h.hexdigest()
