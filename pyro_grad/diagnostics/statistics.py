"""Summary statistics of gradient draws: draws in, one row per element out (vectorized).

Tolerances are in standard errors: a bias is flagged when it is at least
:data:`FLAG_Z` standard errors from the reference, or when the mean is confidently
(at least :data:`FLAG_Z` standard errors) on the other side of zero from it.
"""

import math
from typing import List, Optional

import numpy as np
import pandas as pd
import torch

#: Standard errors at which a bias, or a wrong sign, is flagged.
FLAG_Z = 4.0
#: Rounding error allowed, relative to max(1, |reference|), added to the standard error.
EXACT_TOLERANCE = 1e-5


def element_labels(name: str, shape: tuple) -> List[str]:
    """``name[i,j]`` for every element of a tensor of ``shape`` (``name`` for a scalar)."""
    if not shape:
        return [name]
    indices = np.stack(np.unravel_index(np.arange(int(np.prod(shape))), shape), 1)
    return [f"{name}[{','.join(map(str, index))}]" for index in indices.tolist()]


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
    return table.assign(
        reference=refs.numpy(), bias=bias.numpy(), z=z.numpy(), flagged=((z.abs() >= FLAG_Z) | wrong_sign).numpy()
    )


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
