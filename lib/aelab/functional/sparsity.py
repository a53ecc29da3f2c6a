"""Sparsity operators for sparse autoencoders."""

from __future__ import annotations

import torch
from torch import Tensor


def topk_activation(pre: Tensor, k: int) -> Tensor:
    """Keep the k largest entries of each row, zero the rest: (B, d) -> (B, d).

    The k-sparse autoencoder nonlinearity (Makhzani & Frey 2013); gradients flow only through the
    kept entries. Ties are broken by ``torch.topk``'s order.
    """
    if not 1 <= k <= pre.shape[-1]:
        raise ValueError(f"k must be in [1, {pre.shape[-1]}] (the code size), got {k}")
    values, indices = torch.topk(pre, k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, indices, values)
