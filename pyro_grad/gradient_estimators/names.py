"""Estimators by name, for the command line: ``reparam``, ``score``, ``score:loo``, ``score:0.5``."""

from dataclasses import fields

from pyro_grad.errors import EstimatorError
from pyro_grad.gradient_estimators.base import Estimator
from pyro_grad.gradient_estimators.registry import registered_names


def parse_estimator(text: str) -> Estimator:
    """``NAME`` or ``NAME:ARG``: the estimator class by (case-insensitive) name, with an
    optional first argument (a number when it parses as one, else a string)."""
    name, _, arg = text.partition(":")
    classes = registered_names()
    cls = classes.get(name.strip().lower())
    if cls is None:
        raise EstimatorError(f"unknown estimator {name!r}; known: {', '.join(sorted(classes))}")
    if not arg:
        return cls()
    settings = [f.name for f in fields(cls)]
    if not settings:
        raise EstimatorError(f"estimator {text!r}: {cls.__name__} takes no argument; write {name.strip()!r}")
    try:
        value = float(arg)
    except ValueError:
        value = arg
    # The estimator's own checks name the setting and what it accepts.
    return cls(value)
