"""Atomic, validated file I/O for weights and checkpoints (safetensors only, no pickle)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as serialize


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file next to ``path``; on success move it onto ``path`` with one ``os.replace``.

    Readers see the old file or the new one, never half of one; an interrupted write leaves nothing
    behind (the temporary file is removed).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; keep the usual permissions of a new file
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Save a flat dict of tensors with string metadata to ``path`` atomically."""
    # safetensors refuses shared or non-contiguous storage; cloning makes each tensor its own.
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    payload = serialize(flat, metadata=metadata)
    with atomic_open(path) as f:
        f.write(payload)


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read tensors and metadata; a missing or corrupt file gets an error that says so and what to do."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no model or checkpoint file at {path}")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(
            f"{path} is not a readable safetensors file ({err}); it may be truncated or corrupt: "
            "delete it and save or train again"
        ) from err
    return tensors, meta
