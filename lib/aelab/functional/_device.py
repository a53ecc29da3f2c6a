"""Constants made on the device of the tensors they meet."""

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
