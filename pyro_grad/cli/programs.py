"""Programs named on the command line: a registry name or ``MODULE:FUNCTION``, their
arguments, and estimators configs written as ``SITE=ESTIMATOR[:ARG]``."""

import importlib
import inspect
import os
import sys
from typing import Any, Callable, Dict, List, NamedTuple, Optional

import torch

from pyro_grad.cli.usage import UsageError
from pyro_grad.gradient_estimators import parse_estimator


def import_from_here(module_name: str) -> Any:
    """Import ``module_name`` looking in the current directory first, as ``python -m``
    does (the console script's own ``sys.path[0]`` is its bin directory); the search
    path is left as it was."""
    here = os.getcwd()
    added = here not in sys.path
    if added:
        sys.path.insert(0, here)
    try:
        return importlib.import_module(module_name)
    finally:
        if added:
            sys.path.remove(here)


def import_object(spec: str) -> Any:
    """``MODULE:NAME`` → the object, or a one-line :class:`UsageError`."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UsageError(f"expected MODULE:FUNCTION, got {spec!r}")
    try:
        return getattr(import_from_here(module_name), attr)
    except ImportError as error:
        raise UsageError(f"cannot import module {module_name!r}: {error}") from None
    except AttributeError:
        raise UsageError(f"module {module_name!r} has no attribute {attr!r}") from None


class Program(NamedTuple):
    """A program named on the command line, with what its benchmark (if any) supplies."""

    fn: Callable
    args: tuple
    reference: Optional[Callable]
    guide: Optional[Callable]
    reset: Optional[Callable]


def load_program(spec: str, overrides: List[str]) -> Program:
    """A registry name or ``MODULE:NAME`` → the program, its arguments, and its
    benchmark's exact reference, guide and reset (each None without a benchmark).

    NAME may be a :class:`pyro_grad.harness.models.Benchmark` or a program function; a function that a
    registered benchmark runs takes that benchmark's defaults and guide. Arguments come
    from the function's numeric defaults and ``--arg NAME=VALUE``; each number becomes a
    tensor that requires grad.
    """
    from pyro_grad.harness.models import Benchmark, registry

    benchmarks = registry()
    if spec in benchmarks:
        obj = benchmarks[spec]
    elif ":" not in spec:
        raise UsageError(f"unknown program {spec!r}; the registry has {sorted(benchmarks)}, or give MODULE:FUNCTION")
    else:
        obj = import_object(spec)
    bench = obj if isinstance(obj, Benchmark) else next(
        (b for b in benchmarks.values() if b.program is obj), None
    )
    if bench is not None:
        names, values = list(bench.arg_names), dict(zip(bench.arg_names, bench.default_args))
        program, reference, guide, reset = bench.program, bench.reference_gradient, bench.guide, bench.reset
        if reset is not None:
            reset()
    elif callable(obj):
        params = [p for p in inspect.signature(obj).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        names = [p.name for p in params]
        values = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
        program, reference, guide, reset = obj, None, None, None
    else:
        raise UsageError(f"{spec} is neither a program nor a benchmark")
    for item in overrides:
        name, _, value = item.partition("=")
        if name not in names:
            raise UsageError(f"--arg {item!r}: the program's arguments are {names}")
        if name in values and not isinstance(values[name], (int, float)):
            raise UsageError(f"--arg {item!r}: {name} is {type(values[name]).__name__} data, not a number")
        try:
            values[name] = float(value)
        except ValueError:
            raise UsageError(f"--arg {item!r}: {value!r} is not a number") from None
    missing = [n for n in names if n not in values]
    if missing:
        raise UsageError(f"{spec} needs --arg for {missing}")
    args = tuple(
        torch.tensor(float(values[n]), requires_grad=True) if isinstance(values[n], (int, float)) else values[n]
        for n in names
    )
    return Program(program, args, reference, guide, reset)


def parse_config(items: List[str], option: str = "--estimator") -> Any:
    """``SITE=ESTIMATOR[:ARG]`` items → {site: estimator}; one lone ``ESTIMATOR[:ARG]``
    sets every site's. The one grammar of ``--estimator`` and of ``--config``'s list."""
    config: Dict[str, Any] = {}
    for item in items:
        site, sep, name = item.partition("=")
        if not sep:
            if len(items) == 1:
                return parse_estimator(site)
            raise UsageError(f"{option} takes SITE=ESTIMATOR[:ARG] items, or one ESTIMATOR[:ARG] for "
                             f"every site; got {items}")
        if not site or not name:
            raise UsageError(f"{option} {item!r}: expected SITE=ESTIMATOR[:ARG]")
        config[site] = parse_estimator(name)
    return config or None


def parse_configs(items: List[str]) -> Dict[str, Any]:
    """``NAME=SITE=ESTIMATOR[:ARG],...`` or ``NAME=ESTIMATOR[:ARG]`` (every site) → configs."""
    configs: Dict[str, Any] = {}
    for item in items:
        name, sep, spec = item.partition("=")
        if not sep or not name or not spec:
            raise UsageError(f"--config {item!r}: expected NAME=SITE=ESTIMATOR[:ARG],... or NAME=ESTIMATOR[:ARG]")
        configs[name] = parse_config(spec.split(","), option=f"--config {name}=")
    return configs
