"""Moving MNIST (Srivastava et al. 2015): MNIST digits bouncing inside a square frame, generated with a seed."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from .images import load_uint8

DIGIT = 28


class MovingMNIST(NamedTuple):
    """Videos with their content (digit labels) and pose (trajectories)."""

    video: torch.Tensor  # (N, T, 1, size, size) float32 in [0, 1]
    digits: torch.Tensor  # (N, n_digits) int64 MNIST labels
    positions: torch.Tensor  # (N, T, n_digits, 2) int64 top-left corners (row, column)


def bounce(start: np.ndarray, velocity: np.ndarray, n_frames: int, limit: float) -> np.ndarray:
    """Positions of points moving at constant velocity in [0, limit], reflecting at both ends.

    The straight path ``p = start + v t`` is folded back into the box: with ``q = p mod 2L``,
    the reflected position is ``L - |L - q|``. Shapes: (...,) -> (..., T) with T = ``n_frames``.
    """
    t = np.arange(n_frames, dtype=np.float64)
    q = np.mod(start[..., None] + velocity[..., None] * t, 2 * limit)
    return limit - np.abs(limit - q)


def moving_mnist(
    n_sequences: int,
    n_frames: int = 20,
    size: int = 64,
    n_digits: int = 2,
    seed: int = 0,
    split: str = "train",
    speed: tuple[float, float] = (2.0, 5.0),
) -> MovingMNIST:
    """Generate Moving MNIST: ``n_digits`` 28x28 digits bouncing in a ``size`` x ``size`` frame.

    Each digit (drawn from MNIST ``split``) starts at a uniform position with a uniform direction and
    a speed uniform in ``speed`` pixels per frame, reflects off the edges, and digits are combined
    by pixelwise max. Returns video (N, T, 1, size, size) float32, digits (N, n_digits) int64,
    positions (N, T, n_digits, 2) int64 (row, column of each digit's top-left corner).
    Memory: the video takes N * T * size^2 * 4 bytes.
    """
    if size < DIGIT:
        raise ValueError(f"size must be at least {DIGIT}, got {size}")
    if n_sequences < 0 or n_frames < 1 or n_digits < 1:
        raise ValueError("need n_sequences >= 0, n_frames >= 1 and n_digits >= 1")
    images, labels = load_uint8("mnist", split)  # (M, 28, 28) uint8, (M,) uint8
    rng = np.random.Generator(np.random.PCG64(seed))
    n, k, limit = n_sequences, n_digits, size - DIGIT
    which = rng.integers(0, len(labels), size=(n, k))
    start = rng.uniform(0.0, limit, size=(n, k, 2))
    angle = rng.uniform(0.0, 2 * np.pi, size=(n, k))
    speed_ = rng.uniform(speed[0], speed[1], size=(n, k))
    velocity = speed_[..., None] * np.stack([np.sin(angle), np.cos(angle)], axis=-1)  # (N, K, 2) rows, cols
    path = np.rint(bounce(start, velocity, n_frames, limit)).astype(np.int64)  # (N, K, 2, T)
    positions = path.transpose(0, 3, 1, 2)  # (N, T, K, 2)

    video = np.zeros((n, n_frames, size, size), dtype=np.uint8)
    steps = np.arange(DIGIT)
    seq = np.arange(n)[:, None, None, None]
    frame = np.arange(n_frames)[None, :, None, None]
    for d in range(k):  # one digit at a time: its pixels never collide with themselves, so plain indexing works
        rows = (positions[:, :, d, 0, None] + steps)[..., :, None]  # (N, T, 28, 1)
        cols = (positions[:, :, d, 1, None] + steps)[..., None, :]  # (N, T, 1, 28)
        patch = images[which[:, d]][:, None]  # (N, 1, 28, 28)
        video[seq, frame, rows, cols] = np.maximum(video[seq, frame, rows, cols], patch)
    return MovingMNIST(
        video=torch.from_numpy(video).unsqueeze(2).to(torch.float32).div_(255.0),
        digits=torch.from_numpy(labels[which].astype(np.int64)),
        positions=torch.from_numpy(positions),
    )
