"""The importance-weighted bound of K log-weights, ``log (1/K) Σ_k w_k``, computed stably."""

import math

import torch


def log_mean_exp(log_weights: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``log (1/K) Σ_k exp(x_k)`` along ``dim`` (K = its size): the bound of K log-weights."""
    return torch.logsumexp(log_weights, dim) - math.log(log_weights.shape[dim])
