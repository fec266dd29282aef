"""Summary statistics of gradient draws: draws in, one row per element out (vectorized).

Tolerances are in standard errors: an element's bias is a candidate for a flag when it
is at least :data:`FLAG_Z` standard errors from the reference, or when the mean is
confidently (at least :data:`FLAG_Z` standard errors) on the other side of zero from
it; it is flagged only when it is also significant after Holm's correction across every
element of the report (family-wise false-alarm rate :data:`FAMILY_ALPHA`), so that a
table of thousands of elements does not flag an unbiased estimator by chance.
"""

import math
from typing import Dict, List, Optional

import numpy as np
import pandas as pd
import torch
from scipy.special import erfc

#: Standard errors at which a bias, or a wrong sign, is flagged (before the correction).
FLAG_Z = 4.0
#: Family-wise false-alarm rate of a report's bias flags (Holm across its elements).
FAMILY_ALPHA = 1e-3
#: Rounding error allowed, relative to max(1, |reference|), added to the standard error.
EXACT_TOLERANCE = 1e-5


def element_labels(name: str, shape: tuple) -> List[str]:
    """``name[i,j]`` for every element of a tensor of ``shape`` (``name`` for a scalar)."""
    if not shape:
        return [name]
    # Broadcast string pieces (object arrays concatenate in C): a network's 300,000
    # weights took 20 s formatted one by one.
    grids = np.meshgrid(*(np.arange(n).astype(str).astype(object) for n in shape), indexing="ij")
    labels = grids[0]
    for grid in grids[1:]:
        labels = labels + "," + grid
    return (f"{name}[" + labels.reshape(-1) + "]").tolist()


def element_table(name: str, draws: torch.Tensor, reference: Optional[torch.Tensor] = None) -> pd.DataFrame:
    """Per-element statistics of ``draws`` ``(N, *shape)``, one row per element, against
    ``reference`` if given (computed for all elements at once)."""
    n = draws.shape[0]
    flat = draws.double().reshape(n, -1)
    means = flat.mean(0)
    variances = flat.var(0) if n > 1 else torch.zeros_like(means)
    se = (variances / n).sqrt()
    snr = torch.where(variances > 0, means.abs() / variances.sqrt(), torch.full_like(means, math.inf))
    table = pd.DataFrame({
        "param": name,
        "element": element_labels(name, tuple(draws.shape[1:])),
        "mean": means.numpy(),
        "variance": variances.numpy(),
        "std. error": se.numpy(),
        "SNR": snr.numpy(),
    })
    if reference is None:
        return table
    refs = torch.as_tensor(reference, dtype=torch.double).expand(draws.shape[1:]).reshape(-1)
    bias = means - refs
    # Floating-point rounding bounds how exact a zero-variance estimate can be.
    scale = torch.hypot(se, EXACT_TOLERANCE * refs.abs().clamp(min=1.0))
    z = bias / scale
    # A reference within rounding of zero has no sign to get wrong.
    signed = refs.abs() > EXACT_TOLERANCE * refs.abs().clamp(min=1.0)
    wrong_sign = signed & (means != 0) & (means.sign() != refs.sign()) & (means.abs() >= FLAG_Z * scale)
    table = table.assign(reference=refs.numpy(), bias=bias.numpy(), z=z.numpy(), **{"wrong sign": wrong_sign.numpy()})
    return with_flags(table)


def with_flags(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` (rows with ``z`` and ``wrong sign``) with ``flagged`` set across all its
    rows: at least :data:`FLAG_Z` standard errors off (or a confident wrong sign), and
    rejected by Holm's step-down test at :data:`FAMILY_ALPHA` over every row."""
    if "z" not in table or not len(table):
        return table
    z = table["z"].to_numpy(dtype=float)
    p = erfc(np.abs(np.nan_to_num(z, nan=0.0)) / math.sqrt(2))  # two-sided: 2 P(Z > |z|)
    candidate = (np.abs(z) >= FLAG_Z) | table["wrong sign"].to_numpy(dtype=bool)
    return table.assign(flagged=candidate & holm_rejects(p, FAMILY_ALPHA))


def holm_rejects(p: np.ndarray, alpha: float) -> np.ndarray:
    """Holm's step-down test: the i-th smallest p-value is rejected when it and every
    smaller one is at most alpha / (m − i + 1). (statsmodels' ``multipletests`` gives the
    same answer but runs a full garbage collection per call, 0.2 s, for every report.)"""
    m = len(p)
    order = np.argsort(p, kind="stable")
    passed = p[order] <= alpha / (m - np.arange(m))
    accepted = np.flatnonzero(~passed)
    stop = accepted[0] if len(accepted) else m
    rejected = np.zeros(m, dtype=bool)
    rejected[order[:stop]] = True
    return rejected


def covariance_share(parts: torch.Tensor, draws: torch.Tensor) -> float:
    """``Σ_j Cov(part_j, g_j) / Σ_j Var(g_j)``: the share of the total variance of the draws
    ``g`` carried by the component ``part`` (shares of components summing to ``g`` sum to 1)."""
    g = draws.double().reshape(draws.shape[0], -1)
    p = parts.double().reshape(parts.shape[0], -1)
    total = g.var(0).sum()
    if total <= 0:
        return 0.0
    cov = ((p - p.mean(0)) * (g - g.mean(0))).sum(0) / (g.shape[0] - 1)
    return float(cov.sum() / total)


def paired_z(draws: Dict[str, torch.Tensor], reference: Dict[str, torch.Tensor]) -> np.ndarray:
    """Per element of every parameter both hold, ``mean(d) / se(d)`` of the paired
    differences ``d_g = draws_g − reference_g`` (draw g of each used the same seed, so
    common random numbers make the pairs close where the estimators agree). Elements
    whose differences are all zero have z = 0; a constant nonzero difference d, about
    d / 1e-5 (the rounding floor, :data:`EXACT_TOLERANCE`, stands in for a zero spread)."""
    zs = []
    for name in sorted(set(draws) & set(reference)):
        a, b = draws[name].double(), reference[name].double()
        n = min(a.shape[0], b.shape[0])
        d = (a[:n] - b[:n]).reshape(n, -1)
        mean = d.mean(0)
        se = (d.var(0) / n).sqrt() if n > 1 else torch.zeros_like(mean)
        tolerance = EXACT_TOLERANCE * torch.maximum(a[:n].abs().mean(0), b[:n].abs().mean(0)).reshape(-1).clamp(min=1.0)
        zs.append((mean / torch.hypot(se, tolerance)).numpy())
    return np.concatenate(zs) if zs else np.zeros(0)


def disagreeing(zs: List[np.ndarray], alpha: float = FAMILY_ALPHA) -> List[bool]:
    """Which of several candidates' paired z's (:func:`paired_z`, one array each) show a
    mean that differs from the reference's: at least :data:`FLAG_Z` standard errors
    off, and rejected by Holm's test at ``alpha`` across every element of every candidate."""
    if not zs or not sum(len(z) for z in zs):
        return [False] * len(zs)
    z = np.abs(np.nan_to_num(np.concatenate(zs), nan=0.0))
    rejected = holm_rejects(erfc(z / math.sqrt(2)), alpha) & (z >= FLAG_Z)
    bounds = np.cumsum([0] + [len(x) for x in zs])
    return [bool(rejected[lo:hi].any()) for lo, hi in zip(bounds[:-1], bounds[1:])]
