"""SVI comparisons: ``compare``, ``AutoGuide``, ``Comparison``."""

from pyro_grad.harness.comparison.autoguide import AutoGuide
from pyro_grad.harness.comparison.svi_compare import compare
from pyro_grad.harness.comparison.results import Comparison

__all__ = ["AutoGuide", "Comparison", "compare"]
