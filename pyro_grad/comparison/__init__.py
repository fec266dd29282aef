"""SVI comparisons: ``compare``, ``AutoGuide``, ``Comparison``."""

from pyro_grad.comparison.autoguide import AutoGuide
from pyro_grad.comparison.svi_runs import compare
from pyro_grad.comparison.results import Comparison

__all__ = ["AutoGuide", "Comparison", "compare"]
