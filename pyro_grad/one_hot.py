"""``one_hot``: torch's ``one_hot`` without reading the indices into Python.

``torch.nn.functional.one_hot`` checks its indices' range by reading them into Python,
which a recorded step (``compile=``, :mod:`pyro_grad.engine.recording`) cannot do; a
scatter gives the same tensor from the tensor operations alone. The indices come from
our own draws and choices, always in range.
"""

import torch


def one_hot(index: torch.Tensor, classes: int, dtype: torch.dtype = torch.bool) -> torch.Tensor:
    """``torch.nn.functional.one_hot(index, classes).to(dtype)``: a new last dim of size
    ``classes``, 1 at each index."""
    index = index.long().unsqueeze(-1)
    return torch.zeros(index.shape[:-1] + (classes,), dtype=dtype).scatter_(-1, index, 1)
