"""Tensor helpers that keep work on the device: constants made there, counts without a read of the indices."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def as_tensor_like(value: Any, like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """``torch.as_tensor(value, dtype, like.device)`` (dtype defaults to like's), a Python number filled in on the device.

    ``torch.as_tensor(0.5, device="cuda")`` copies the number from host memory, and a copy from host
    memory that is not pinned makes the host wait until the device has run everything queued: in a
    training step, once per step. ``torch.full`` writes it on the device instead.
    """
    dtype = like.dtype if dtype is None else dtype
    if isinstance(value, (bool, int, float)):
        return torch.full((), value, dtype=dtype, device=like.device)
    return torch.as_tensor(value, dtype=dtype, device=like.device)


def index_counts(indices: Tensor, n: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """How often each of 0..n-1 occurs in ``indices`` (any shape): (n,) of ``dtype``.

    ``torch.bincount(indices, minlength=n)`` by an index sum: as fast on a CPU, and on CUDA bincount
    first reads the largest index on the host (a wait for the device).
    """
    flat = indices.flatten()
    return torch.zeros(n, dtype=dtype, device=flat.device).index_add_(
        0, flat, torch.ones((), dtype=dtype, device=flat.device).expand(flat.numel()))
