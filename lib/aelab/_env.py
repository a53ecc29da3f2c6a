"""Process-wide settings: seeds, the device, fast/full budgets and the data cache folder."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def seed_everything(seed: int = 0) -> int:
    """Seed Python's, NumPy's and PyTorch's generators (CPU and every CUDA device); return the seed."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return seed


def is_fast() -> bool:
    """True when ``AELAB_FAST`` is set to 1/true/yes/on (tests and CI run notebooks this way)."""
    return os.environ.get("AELAB_FAST", "").strip().lower() in _TRUE


def bf16_allowed() -> bool:
    """False when ``AELAB_BF16`` is set to 0/false/no/off: ``aelab.train.bf16_is_fast()`` then says False
    everywhere, so lectures train in fp32 (as on a CPU without native bf16)."""
    return os.environ.get("AELAB_BF16", "").strip().lower() not in _FALSE


def host_sync_is_cheap(device: torch.device | str) -> bool:
    """Whether reading a value of a tensor on ``device`` from Python (``bool``, ``.item()``) costs
    only the read: True on the CPU. On CUDA it makes the host wait until the device has run all it
    was given, so training code keeps such checks on the device there (see ``aelab.fit``)."""
    return torch.device(device).type == "cpu"


def budget(full: T, fast: T) -> T:
    """Pick a size for the run: ``fast`` under ``AELAB_FAST=1`` (tests), ``full`` otherwise (students).

    >>> epochs = budget(full=10, fast=1)
    """
    return fast if is_fast() else full


def device(prefer: str | None = None) -> torch.device:
    """The device to compute on: ``AELAB_DEVICE`` if set, else ``prefer``, else cuda > mps > cpu."""
    name = os.environ.get("AELAB_DEVICE") or prefer
    if name:
        dev = torch.device(name)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(
                f"device {name!r} was asked for (AELAB_DEVICE or argument) but CUDA is not available; "
                "unset AELAB_DEVICE or set it to 'cpu'"
            )
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise RuntimeError(f"device {name!r} was asked for but MPS is not available; use 'cpu'")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def data_dir() -> Path:
    """The local data cache: ``$AELAB_DATA`` or ``~/.cache/aelab`` (created on first use)."""
    root = Path(os.environ.get("AELAB_DATA") or Path.home() / ".cache" / "aelab").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root
