"""Diagnostics: the variance, SNR, cost and bias of every site's and parameter's gradient."""

from pyro_grad.diagnostics.diagnose import compare_estimators, diagnose
from pyro_grad.diagnostics.finite_differences import FiniteDifferences
from pyro_grad.diagnostics.report import EstimatorComparison, GradientReport

__all__ = ["EstimatorComparison", "FiniteDifferences", "GradientReport", "compare_estimators", "diagnose"]
