"""Blocks for multivariate time series (B, T, D): a conv1d encoder, its transposed-conv decoder, a GRU head.

Series are stored time-major, ``(batch, seq_len, n_features)``, as ``aelab.data.timeseries`` returns
them; the conv blocks move features to the channel axis internally (``Conv1d`` wants (B, D, T)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn


def conv1d_length(seq_len: int, n_layers: int) -> int:
    """Length after ``n_layers`` stride-2 convs with kernel 3 and padding 1: ceil(T / 2) each time."""
    for _ in range(n_layers):
        seq_len = math.ceil(seq_len / 2)
    return seq_len


class Conv1dEncoder(nn.Module):
    """Stride-2 conv1d layers (kernel 3) with ReLUs, flattened, then a linear map: (B, T, D) -> (B, out_dim).

    TimeVAE's encoder (Desai et al. 2021): each layer halves the length, ``channels`` sets its width.
    """

    def __init__(self, seq_len: int, n_features: int, channels: Sequence[int], out_dim: int):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = n_features
        for c in channels:
            layers += [nn.Conv1d(c_in, c, 3, stride=2, padding=1), nn.ReLU()]
            c_in = c
        self.conv = nn.Sequential(*layers)
        self.head = nn.Linear(c_in * conv1d_length(seq_len, len(channels)), out_dim)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x.transpose(1, 2))  # (B, C, T')
        return self.head(h.flatten(1))


class Conv1dDecoder(nn.Module):
    """The mirror of ``Conv1dEncoder``: (B, latent_dim) -> (B, T, D), no final nonlinearity.

    A linear map to (C_last, T'), stride-2 transposed convs that double the length, then a linear
    map of the flattened result to T * D (TimeVAE's residual decoder; the final dense layer fixes
    the length when T is not a power of two times T').
    """

    def __init__(self, latent_dim: int, seq_len: int, n_features: int, channels: Sequence[int]):
        super().__init__()
        channels = list(channels)
        if not channels:
            raise ValueError("Conv1dDecoder needs at least one channel width")
        self.seq_len, self.n_features = seq_len, n_features
        self.start = (channels[-1], conv1d_length(seq_len, len(channels)))
        self.head = nn.Sequential(nn.Linear(latent_dim, channels[-1] * self.start[1]), nn.ReLU())
        layers: list[nn.Module] = []
        widths = list(reversed(channels))  # e.g. 128, 64, 32
        for a, b in zip(widths, widths[1:] + [n_features]):
            layers += [nn.ConvTranspose1d(a, b, 4, stride=2, padding=1), nn.ReLU()]
        self.deconv = nn.Sequential(*layers[:-1])  # no ReLU after the last
        self.out = nn.Linear(n_features * self.start[1] * 2 ** len(channels), seq_len * n_features)

    def forward(self, z: Tensor) -> Tensor:
        h = self.head(z).view(z.shape[0], *self.start)  # (B, C, T')
        h = self.deconv(h)  # (B, D, T' * 2^n)
        return self.out(h.flatten(1)).view(z.shape[0], self.seq_len, self.n_features)


class GRUHead(nn.Module):
    """A GRU over time then a linear read-out: (B, T, D) -> (B, T, out_dim) per step, or (B, out_dim) from the last.

    The post-hoc networks of TimeGAN's discriminative and predictive scores (Yoon et al. 2019).
    """

    def __init__(self, n_features: int, hidden: int, out_dim: int, num_layers: int = 1, every_step: bool = False):
        super().__init__()
        if hidden < 1 or n_features < 1:
            raise ValueError(f"GRUHead needs n_features >= 1 and hidden >= 1, got {n_features}, {hidden}")
        self.every_step = every_step
        self.gru = nn.GRU(n_features, hidden, num_layers=num_layers, batch_first=True)
        self.out = nn.Linear(hidden, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        h, last = self.gru(x)  # h (B, T, hidden); last (layers, B, hidden)
        return self.out(h) if self.every_step else self.out(last[-1])
