"""Shared fixtures and the statistics every test's tolerance comes from.

Tolerances are in standard errors: a mean is within ``Z`` standard errors of its exact
value, a variance within ``Z`` standard errors of the sample variance (estimated from
the sample's fourth central moment). Seeds are fixed, so every test is deterministic.
"""

import math

import pyro
import pytest
import torch

# The suite runs on two pytest-xdist workers on two cores: one torch thread each.
torch.set_num_threads(1)

#: Standard errors of tolerance for every statistical assertion.
Z = 4.0
#: float32 rounding, relative to max(1, |exact|): the floor of a zero-variance estimate's error.
ROUNDING = 1e-5


@pytest.fixture(autouse=True)
def fresh_pyro():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()


def standard_error_of_mean(x: torch.Tensor) -> float:
    return float(x.double().std() / math.sqrt(x.numel()))


def standard_error_of_variance(x: torch.Tensor) -> float:
    x = x.double().reshape(-1)
    n = x.numel()
    centered = x - x.mean()
    m2, m4 = centered.pow(2).mean(), centered.pow(4).mean()
    return float(((m4 - m2**2 * (n - 3) / (n - 1)) / n).clamp(min=0).sqrt())


def assert_mean(x: torch.Tensor, exact: float, z: float = Z) -> None:
    """The sample mean of ``x`` is within ``z`` standard errors of ``exact``."""
    mean, se = float(x.double().mean()), standard_error_of_mean(x)
    tolerance = z * se + ROUNDING * max(1.0, abs(exact))
    assert abs(mean - exact) <= tolerance, f"mean {mean:.5g} vs exact {exact:.5g} (se {se:.3g})"


def assert_variance(x: torch.Tensor, exact: float, z: float = Z) -> None:
    """The sample variance of ``x`` is within ``z`` standard errors of ``exact``."""
    var, se = float(x.double().var()), standard_error_of_variance(x)
    tolerance = z * se + ROUNDING * max(1.0, abs(exact)) ** 2 * 1e-5
    assert abs(var - exact) <= tolerance, f"variance {var:.5g} vs exact {exact:.5g} (se {se:.3g})"
