"""Summary statistics of gradient draws: draws in, one row per element out.

Tolerances are in standard errors: a bias is flagged when it is at least
:data:`FLAG_Z` standard errors from the reference, or when the mean is confidently
(at least :data:`FLAG_Z` standard errors) on the other side of zero from it.
"""

import math
from typing import Dict, List, Optional

import torch

#: Standard errors at which a bias, or a wrong sign, is flagged.
FLAG_Z = 4.0
#: Rounding error allowed, relative to max(1, |reference|), added to the standard error.
EXACT_TOLERANCE = 1e-5


def element_label(name: str, index: tuple) -> str:
    return name if not index else f"{name}[{','.join(str(i) for i in index)}]"


def element_rows(
    name: str, draws: torch.Tensor, reference: Optional[torch.Tensor] = None
) -> List[Dict[str, object]]:
    """Per-element statistics of ``draws`` ``(N, *shape)``, against ``reference`` if given."""
    n = draws.shape[0]
    flat = draws.double().reshape(n, -1)
    means = flat.mean(0)
    variances = flat.var(0) if n > 1 else torch.zeros_like(means)
    refs = None
    if reference is not None:
        refs = torch.as_tensor(reference, dtype=torch.double).expand(draws.shape[1:]).reshape(-1)
    shape = tuple(draws.shape[1:])
    rows = []
    for j in range(flat.shape[1]):
        index = tuple(int(i) for i in torch.unravel_index(torch.tensor(j), shape)) if shape else ()
        mean, variance = float(means[j]), float(variances[j])
        se = math.sqrt(variance / n)
        row = {
            "param": name,
            "element": element_label(name, index),
            "mean": mean,
            "variance": variance,
            "std. error": se,
            "SNR": abs(mean) / math.sqrt(variance) if variance > 0 else math.inf,
        }
        if refs is not None:
            row.update(bias_columns(mean, se, float(refs[j])))
        rows.append(row)
    return rows


def bias_columns(mean: float, se: float, reference: float) -> Dict[str, object]:
    """Reference, bias, its z-score, and whether the bias or the sign is flagged."""
    bias = mean - reference
    # Floating-point rounding bounds how exact a zero-variance estimate can be.
    scale = math.hypot(se, EXACT_TOLERANCE * max(1.0, abs(reference)))
    z = bias / scale
    wrong_sign = (
        reference != 0 and mean != 0 and math.copysign(1, mean) != math.copysign(1, reference)
        and abs(mean) >= FLAG_Z * se
    )
    return {
        "reference": reference,
        "bias": bias,
        "z": z,
        "flagged": bool(abs(z) >= FLAG_Z or wrong_sign),
    }


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
