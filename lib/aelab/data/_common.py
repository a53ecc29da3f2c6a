"""Shared plumbing of the data loaders: errors, the cache folder, atomic writes, checksums, prepare registry."""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from aelab._env import data_dir
from aelab.io import atomic_open

class DataUnavailableError(RuntimeError):
    """A data set is neither cached nor installed, and could not be downloaded; the message says what to run."""


class CorruptDataError(RuntimeError):
    """A cached or shipped file is unreadable or fails its shape/count/checksum test; the message names it."""


def cache_dir(name: str) -> Path:
    """The cache folder of one data set, ``data_dir() / name``, created on first use."""
    path = data_dir() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def prepare_hint(name: str) -> str:
    """The commands that fill the cache for ``name`` (``make data`` fills every one)."""
    return f"`make data` or `python -m aelab.data prepare {name}`"


def sha256(data: bytes | np.ndarray) -> str:
    """Hex sha256 of raw bytes, or of an array's C-order buffer (what the hard-coded checksums are of)."""
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data).data
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write arrays to an uncompressed ``.npz`` atomically (uint8 images load in tens of milliseconds)."""
    with atomic_open(path) as f:
        np.savez(f, **arrays)


def corrupt(path: Path | str, why: str, name: str, fix: str | None = None) -> CorruptDataError:
    """The error for a bad file: names it and says how to rebuild it (by default: delete it, rerun prepare)."""
    fix = fix or f"delete it and run {prepare_hint(name)} to rebuild it"
    return CorruptDataError(f"{path} is corrupt ({why}); {fix}")


def load_npz(path: Path, keys: tuple[str, ...], name: str) -> dict[str, np.ndarray]:
    """Read ``keys`` from a cached ``.npz``; any read failure becomes a ``CorruptDataError`` naming the file."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in keys}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise corrupt(path, f"{type(e).__name__}: {e}", name) from e


def check_array(
    a: np.ndarray,
    *,
    shape: tuple[int, ...],
    dtype: np.dtype | type,
    checksum: str | None,
    what: str,
    path: Path | str,
    name: str,
    fix: str | None = None,
) -> None:
    """Raise ``CorruptDataError`` unless ``a`` has this shape, dtype and (when given) sha256."""
    if a.shape != shape or a.dtype != np.dtype(dtype):
        raise corrupt(path, f"{what} is {a.dtype}{a.shape}, expected {np.dtype(dtype)}{shape}", name, fix)
    if checksum is not None and sha256(a) != checksum:
        raise corrupt(path, f"sha256 of {what} differs from the reference", name, fix)


def can_reach(url: str, timeout: float = 3.0) -> bool:
    """True when a TCP connection to ``url``'s host opens within ``timeout`` seconds (the online test)."""
    parts = urlparse(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


Preparer = Callable[[], str]
PREPARERS: dict[str, Preparer] = {}


def register_preparer(name: str) -> Callable[[Preparer], Preparer]:
    """Register ``fn`` as the step that fills the cache for ``name``; it returns one line saying what it did."""

    def decorate(fn: Preparer) -> Preparer:
        if name in PREPARERS:
            raise ValueError(f"a preparer named {name!r} is already registered")
        PREPARERS[name] = fn
        return fn

    return decorate


def prepare(*names: str) -> dict[str, str]:
    """Fill the cache for the named data sets (all registered ones when none is named).

    Returns ``{name: line}`` describing what each step did; the first failure propagates.
    """
    names = names or tuple(PREPARERS)
    unknown = [n for n in names if n not in PREPARERS]
    if unknown:
        raise ValueError(f"unknown data set(s) {unknown}; choose from {sorted(PREPARERS)}")
    return {n: PREPARERS[n]() for n in names}


def run_tool(cmd: list[str], cwd: Path, what: str) -> None:
    """Run an external command; a missing tool or a failure becomes ``DataUnavailableError`` with its output."""
    if shutil.which(cmd[0]) is None:
        raise DataUnavailableError(f"{what} needs `{cmd[0]}`, which is not on PATH")
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-800:]
        raise DataUnavailableError(f"{what}: `{' '.join(cmd)}` failed (exit {proc.returncode}): {tail}")


@contextmanager
def debian_package(package: str) -> Iterator[Path]:
    """Fetch a Debian package with ``apt-get download`` and unpack it with ``dpkg -x`` (no root needed).

    Yields the folder holding the unpacked tree (``usr/...``); everything is deleted afterwards.
    """
    what = f"fetching the Debian package {package}"
    with tempfile.TemporaryDirectory(prefix="aelab-deb-") as tmp:
        tmp_path = Path(tmp)
        run_tool(["apt-get", "download", package], cwd=tmp_path, what=what)
        debs = sorted(tmp_path.glob("*.deb"))
        if not debs:
            raise DataUnavailableError(f"{what}: `apt-get download` left no .deb file in {tmp_path}")
        root = tmp_path / "root"
        run_tool(["dpkg", "-x", str(debs[0]), str(root)], cwd=tmp_path, what=what)
        yield root
