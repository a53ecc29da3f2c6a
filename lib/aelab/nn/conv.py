"""Convolutional encoders and decoders for 28x28 (MNIST) and 64x64 (dSprites) images.

28x28: two stride-2 convs (28 -> 14 -> 7). 64x64: four stride-2 convs (64 -> 32 -> 16 -> 8 -> 4),
the architecture of Higgins et al. 2017 / Burgess et al. 2018 for dSprites.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

_PLANS = {28: (2, 7), 64: (4, 4)}  # image side -> (number of stride-2 layers, final side)


def _plan(input_shape: Sequence[int]) -> tuple[int, int, int]:
    c, h, w = input_shape
    if h != w or h not in _PLANS:
        raise ValueError(f"conv backbones support (C, 28, 28) and (C, 64, 64) images, got {tuple(input_shape)}")
    n, side = _PLANS[h]
    return c, n, side


def _down(in_channels: int, channels: int, n: int) -> list[nn.Module]:
    """n stride-2 4x4 convs with ReLUs: each halves the side."""
    layers: list[nn.Module] = []
    for i in range(n):
        layers += [nn.Conv2d(in_channels if i == 0 else channels, channels, 4, stride=2, padding=1), nn.ReLU()]
    return layers


def _up(channels: int, out_channels: int, n: int) -> list[nn.Module]:
    """n stride-2 4x4 transposed convs, ReLUs between them, none after the last: each doubles the side."""
    layers: list[nn.Module] = []
    for i in range(n):
        last = i == n - 1
        layers.append(nn.ConvTranspose2d(channels, out_channels if last else channels, 4, stride=2, padding=1))
        if not last:
            layers.append(nn.ReLU())
    return layers


class ConvEncoder(nn.Module):
    """Stride-2 4x4 convs then a linear layer: (B, C, H, W) -> (B, out_dim)."""

    def __init__(self, input_shape: Sequence[int], out_dim: int, channels: int = 32, hidden: int = 256):
        super().__init__()
        c, n, side = _plan(input_shape)
        self.conv = nn.Sequential(*_down(c, channels, n))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(channels * side * side, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.conv(x))


class ConvDecoder(nn.Module):
    """Linear layer then stride-2 transposed convs: (B, latent) -> (B, C, H, W), no final nonlinearity."""

    def __init__(self, latent_dim: int, output_shape: Sequence[int], channels: int = 32, hidden: int = 256):
        super().__init__()
        c, n, side = _plan(output_shape)
        self.channels, self.side = channels, side
        self.head = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, channels * side * side), nn.ReLU())
        self.deconv = nn.Sequential(*_up(channels, c, n))

    def forward(self, z: Tensor) -> Tensor:
        h = self.head(z).view(z.shape[0], self.channels, self.side, self.side)
        return self.deconv(h)


class ConvGridEncoder(nn.Module):
    """Stride-2 4x4 convs that keep the spatial grid: (B, C, H, W) -> (B, out_channels, side, side).

    No dense layer: each cell of the output grid (7x7 for 28x28 inputs, 4x4 for 64x64) is a vector
    describing its receptive field, as VQ-VAE quantises them one by one.
    """

    def __init__(self, input_shape: Sequence[int], out_channels: int, channels: int = 32):
        super().__init__()
        c, n, _ = _plan(input_shape)
        head = [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(), nn.Conv2d(channels, out_channels, 1)]
        self.net = nn.Sequential(*_down(c, channels, n), *head)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ConvGridDecoder(nn.Module):
    """The mirror of ``ConvGridEncoder``: (B, in_channels, side, side) -> (B, C, H, W), no final nonlinearity."""

    def __init__(self, in_channels: int, output_shape: Sequence[int], channels: int = 32):
        super().__init__()
        c, n, _ = _plan(output_shape)
        self.net = nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1), nn.ReLU(), *_up(channels, c, n))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)
