"""Fully connected encoders and decoders."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def mlp(sizes: Sequence[int], activation: type[nn.Module] | None = nn.ReLU, last_activation: bool = False) -> nn.Sequential:
    """Linear layers of the given sizes with ``activation`` in between (and after the last if asked).

    ``activation=None`` gives a purely linear map (a linear autoencoder spans the PCA subspace).
    """
    if len(sizes) < 2:
        raise ValueError(f"an MLP needs at least input and output sizes, got {list(sizes)}")
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        is_last = i == len(sizes) - 2
        if activation is not None and (not is_last or last_activation):
            layers.append(activation())
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """Flatten an image and map it to ``out_dim`` features: (B, *input_shape) -> (B, out_dim)."""

    def __init__(self, input_shape: Sequence[int], hidden: Sequence[int], out_dim: int, linear: bool = False):
        super().__init__()
        d_in = int(torch.Size(input_shape).numel())
        self.net = mlp([d_in, *hidden, out_dim], activation=None if linear else nn.ReLU)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1))


class MLPDecoder(nn.Module):
    """Map a code to an image of ``output_shape``: (B, latent) -> (B, *output_shape), no final nonlinearity."""

    def __init__(self, latent_dim: int, hidden: Sequence[int], output_shape: Sequence[int], linear: bool = False):
        super().__init__()
        self.output_shape = tuple(output_shape)
        d_out = int(torch.Size(output_shape).numel())
        self.net = mlp([latent_dim, *hidden, d_out], activation=None if linear else nn.ReLU)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).view(z.shape[0], *self.output_shape)
