"""A fit's identity: a digest of everything that determines its result.

Two fits with the same digest are the same computation (same program source, data,
estimators, settings, seed and versions), so a stored fit is reused only when its digest
matches. The digest is built from a deterministic description of each ingredient:
tensors by their bytes; functions by their qualified name, source, bytecode, captured
variables and the module globals they read (constants and helper functions, followed
through the user's own code; a library's functions by name, with the library's
version); estimators field by field; modules by their weights; other objects by their
class and public attributes. Memory addresses and hash order never enter it, so it is
the same in every process.
"""

import functools
import hashlib
import inspect
import pickle
import sys
import sysconfig
import types
from importlib import metadata
from typing import Any, Iterator, Mapping, Optional, Tuple

import numpy as np
import torch

#: Bump when the meaning of a stored record changes.
FORMAT = "pyro_grad fit 2"


def _tokens(obj: Any, seen: set) -> Iterator[str]:
    """A deterministic token stream describing ``obj``."""
    from pyro_grad.gradient_estimators import Estimator

    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
        yield f"{type(obj).__name__}:{obj!r}"
        return
    if isinstance(obj, torch.Tensor):
        data = obj.detach().cpu().contiguous()
        yield f"tensor:{data.dtype}:{tuple(data.shape)}:{hashlib.sha256(data.numpy().tobytes()).hexdigest()}"
        return
    if isinstance(obj, np.ndarray):
        yield f"array:{obj.dtype}:{obj.shape}:{hashlib.sha256(np.ascontiguousarray(obj).tobytes()).hexdigest()}"
        return
    if isinstance(obj, types.ModuleType):
        yield f"module:{obj.__name__}"
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
    elif isinstance(obj, (set, frozenset)):
        # Iteration order depends on the process's hash seed: sort the items' descriptions.
        yield f"set:{len(obj)}"
        yield from sorted("|".join(_tokens(item, seen)) for item in obj)
    elif isinstance(obj, Estimator):
        # Field by field: a baseline network's weights, not its repr.
        yield f"estimator:{type(obj).__name__}"
        yield from _tokens(dict(vars(obj)), seen)
    elif isinstance(obj, torch.nn.Module):
        yield f"module:{_qualified(type(obj))}"
        yield from _source(type(obj))
        yield from _tokens(dict(obj.state_dict()), seen)
    elif isinstance(obj, functools.partial):
        yield "partial"
        yield from _tokens((obj.func, obj.args, obj.keywords), seen)
    elif inspect.ismethod(obj):
        yield "method"
        yield from _tokens((obj.__func__, obj.__self__), seen)
    elif inspect.isfunction(obj):
        yield from _function_tokens(obj, seen)
    elif inspect.isclass(obj) or inspect.isbuiltin(obj) or inspect.isroutine(obj):
        yield f"named:{_qualified(obj)}"
    else:
        # Any other object (a callable guide, an optimizer): its class and its public
        # attributes; private ones hold derived state (caches, a prototype trace).
        yield f"object:{_qualified(type(obj))}"
        public = {k: v for k, v in getattr(obj, "__dict__", {}).items() if not k.startswith("_")}
        if not _is_library(type(obj)):
            yield from _source(type(obj))
            yield from _tokens(public, seen)
        elif public:
            yield from _tokens(public, seen)
        else:  # a library's object that keeps its state privately (a DataFrame)
            yield from _opaque(obj)


def _opaque(obj: Any) -> Iterator[str]:
    try:
        yield hashlib.sha256(pickle.dumps(obj)).hexdigest()
    except Exception:  # unpicklable: its repr, unless that is only an address
        text = repr(obj)
        yield text if " at 0x" not in text else "unidentified"


def _function_tokens(fn: Any, seen: set) -> Iterator[str]:
    """A function by its name, source and code (two lambdas on one line share a source
    line, not their code), its defaults, captured variables, and the module globals its
    code reads (constants, helper functions), unless it is a library's."""
    yield f"function:{_qualified(fn)}"
    if _is_library(fn):
        return  # identified by the library's version
    yield from _source(fn)
    yield from _code_tokens(fn.__code__)
    yield from _tokens(fn.__defaults__ or (), seen)
    yield from _tokens(fn.__kwdefaults__ or {}, seen)
    yield from _tokens([cell.cell_contents for cell in (fn.__closure__ or ()) if _filled(cell)], seen)
    names = sorted(_global_names(fn.__code__))
    yield from _tokens({name: fn.__globals__[name] for name in names if name in fn.__globals__}, seen)


def _code_tokens(code: types.CodeType) -> Iterator[str]:
    yield hashlib.sha256(code.co_code).hexdigest()
    yield repr(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_tokens(const)
        else:
            yield repr(const)


def _global_names(code: types.CodeType) -> set:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def _is_library(obj: Any) -> bool:
    """Whether ``obj`` comes from an installed package or the standard library (whose
    versions identify it), rather than from the user's own code."""
    module = sys.modules.get(getattr(obj, "__module__", None) or "")
    path = getattr(module, "__file__", None)
    if path is None:
        return getattr(module, "__name__", "") == "builtins"
    return "site-packages" in path or path.startswith(sysconfig.get_paths()["stdlib"])


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
        pass  # defined where no source is kept (python -c, exec): the code tokens identify it


def versions() -> str:
    """The versions that can change a fit's numbers."""
    found = []
    for package in ("pyro-grad", "pyro-ppl", "torch"):
        try:
            found.append(f"{package}=={metadata.version(package)}")
        except metadata.PackageNotFoundError:
            found.append(f"{package} not installed")
    return ",".join(found)


class FitIdentity:
    """The digest of the parts every fit of one :func:`~pyro_grad.compare` call shares,
    extended per (config, seed) by :meth:`digest`."""

    def __init__(self, **shared: Any):
        self._hash = hashlib.sha256(FORMAT.encode())
        for token in _tokens({"versions": versions(), **shared}, set()):
            self._hash.update(token.encode())
            self._hash.update(b"\0")

    def digest(self, config: Any, seed: int, schedule: Optional[Tuple[int, Optional[int]]] = None) -> str:
        """The fit's digest; ``schedule``: its own (steps, diagnose_every) where a budget
        in evaluations gives each config its own."""
        h = self._hash.copy()
        extra = {} if schedule is None else {"schedule": schedule}
        for token in _tokens({"config": config, "seed": seed, **extra}, set()):
            h.update(token.encode())
            h.update(b"\0")
        return h.hexdigest()
