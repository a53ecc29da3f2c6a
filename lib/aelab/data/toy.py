"""Sparse synthetic features of Elhage et al. 2022, 'Toy Models of Superposition', with known directions."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch


class ToyFeatures(NamedTuple):
    """Sparse features, their importance, and (optionally) the ground-truth embedding."""

    features: torch.Tensor  # (n, F) float32: 0 with probability `sparsity`, else U[0, 1]
    importance: torch.Tensor  # (F,) float32 weights of each feature in the reconstruction loss
    directions: torch.Tensor | None  # (F, d) float32 unit-norm rows, or None
    x: torch.Tensor | None  # (n, d) float32 = features @ directions, or None


def geometric_importance(n_features: int, ratio: float = 0.9) -> torch.Tensor:
    """Importance decaying geometrically, I_i = ratio**i for i = 0..F-1 (the paper's 0.9**i): (F,) float32."""
    return torch.from_numpy(ratio ** np.arange(n_features, dtype=np.float64)).to(torch.float32)


def toy_features(
    n: int,
    n_features: int,
    sparsity: float,
    importance: torch.Tensor | np.ndarray | None = None,
    d: int | None = None,
    seed: int = 0,
) -> ToyFeatures:
    """``n`` samples of ``n_features`` features: each is 0 with probability ``sparsity``, else U[0, 1].

    ``importance`` (F,) defaults to ones (see ``geometric_importance``). With ``d``, also draws
    ``n_features`` random unit directions in R^d (Gaussian, normalised) and returns the dense
    activations x = features @ directions (n, d) that a sparse autoencoder should take apart.
    """
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity is a probability of being zero, got {sparsity}")
    rng = np.random.Generator(np.random.PCG64(seed))
    directions = None
    if d is not None:  # drawn first, so the directions for a seed do not depend on n
        g = rng.standard_normal((n_features, d))
        directions = torch.from_numpy(g / np.linalg.norm(g, axis=1, keepdims=True)).to(torch.float32)
    values = rng.uniform(0.0, 1.0, size=(n, n_features))
    active = rng.uniform(0.0, 1.0, size=(n, n_features)) >= sparsity
    features = torch.from_numpy(np.where(active, values, 0.0)).to(torch.float32)
    if importance is None:
        weight = torch.ones(n_features)
    else:
        weight = torch.as_tensor(importance, dtype=torch.float32)
        if weight.shape != (n_features,):
            raise ValueError(f"importance must have shape ({n_features},), got {tuple(weight.shape)}")
    x = features @ directions if directions is not None else None
    return ToyFeatures(features=features, importance=weight, directions=directions, x=x)
