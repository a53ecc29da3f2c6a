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


def toy_batch(
    batch_size: int,
    feature_probability: torch.Tensor,
    n_features: int,
    generator: torch.Generator | None = None,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """A batch for many toy models at once: (batch_size, n_instances, n_features) float32.

    Instance i's features are each present with probability ``feature_probability[i]``
    ((n_instances,), 1 - the paper's sparsity S) and then U[0, 1], else 0 (Elhage et al. 2022).
    Drawn with torch on ``generator`` (CPU) so a seeded stream of batches is cheap to regenerate.
    """
    p = torch.as_tensor(feature_probability, dtype=torch.float32).flatten()
    if p.numel() == 0 or (p < 0).any() or (p > 1).any():
        raise ValueError(f"feature_probability must hold one probability in [0, 1] per instance, got {p.tolist()}")
    shape = (batch_size, p.numel(), n_features)
    values = torch.rand(shape, generator=generator)
    present = torch.rand(shape, generator=generator) < p[None, :, None]
    batch = torch.where(present, values, torch.zeros(()))
    return batch.to(device) if device is not None else batch


class ToyBatches:
    """``n_batches`` batches from ``toy_batch``, an iterable with a length that ``aelab.fit`` trains on.

    Each pass draws the same seeded sequence, so a run resumed from a checkpoint replays the
    batches it skipped exactly; use ``n_batches`` equal to the number of steps and one epoch.
    """

    def __init__(self, feature_probability: torch.Tensor, n_features: int, batch_size: int, n_batches: int, seed: int = 0):
        if batch_size < 1 or n_batches < 1:
            raise ValueError(f"need batch_size >= 1 and n_batches >= 1, got {batch_size} and {n_batches}")
        self.feature_probability = torch.as_tensor(feature_probability, dtype=torch.float32).flatten()
        self.n_features, self.batch_size, self.n_batches, self.seed = n_features, batch_size, n_batches, seed

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed)
        for _ in range(self.n_batches):
            yield toy_batch(self.batch_size, self.feature_probability, self.n_features, generator=gen)
