"""Shared plumbing of the data loaders: errors, the cache folder, atomic writes, checksums, prepare registry."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import urllib.request
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


# Pinned Debian packages that ship data (bookworm). Used when `apt-get download` is unavailable or
# fails (no apt, empty package lists, not Debian): the .deb is fetched from the mirror and checked.
DEBIAN_MIRROR = os.environ.get("AELAB_DEBIAN_MIRROR", "http://deb.debian.org/debian")
DEBIAN_PINS: dict[str, tuple[str, str]] = {
    "dataset-fashion-mnist": (
        "pool/main/d/dataset-fashion-mnist/dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb",
        "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0",
    ),
    "r-cran-janeaustenr": (
        "pool/main/r/r-cran-janeaustenr/r-cran-janeaustenr_1.0.0-1_all.deb",
        "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95",
    ),
}


def _fetch_pinned_deb(package: str, folder: Path) -> Path:
    """Download the pinned .deb of ``package`` from the Debian mirror and check its sha256."""
    if package not in DEBIAN_PINS:
        raise DataUnavailableError(f"no pinned download of the Debian package {package}")
    pool_path, digest = DEBIAN_PINS[package]
    url = f"{DEBIAN_MIRROR.rstrip('/')}/{pool_path}"
    target = folder / Path(pool_path).name
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(target, "wb") as f:
            shutil.copyfileobj(resp, f)
    except OSError as e:
        raise DataUnavailableError(f"downloading {url} failed ({e})") from e
    if sha256_file(target) != digest:
        raise CorruptDataError(f"{url} does not have the pinned sha256 {digest}; the mirror may be wrong (AELAB_DEBIAN_MIRROR)")
    return target


def extract_deb(deb: Path, root: Path) -> None:
    """Unpack a .deb's data archive into ``root`` (what ``dpkg -x`` does), in pure Python.

    A .deb is an ar archive whose member ``data.tar.{xz,gz,bz2}`` holds the installed tree.
    """
    blob = deb.read_bytes()
    if not blob.startswith(b"!<arch>\n"):
        raise CorruptDataError(f"{deb} is not a Debian package (no ar header)")
    pos = 8
    while pos + 60 <= len(blob):
        header = blob[pos:pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        pos += 60
        if name.startswith("data.tar"):
            with tarfile.open(fileobj=io.BytesIO(blob[pos:pos + size]), mode="r:*") as tar:
                tar.extractall(root, filter="data")
            return
        pos += size + (size % 2)
    raise CorruptDataError(f"{deb} has no data.tar member")


@contextmanager
def debian_package(package: str) -> Iterator[Path]:
    """Fetch a Debian package and unpack it into a temporary folder (no root needed).

    Tries ``apt-get download`` (the system's configured mirror), then the pinned .deb from the
    Debian mirror (checked by sha256), so it also works where apt is missing or has no package
    lists. Yields the folder holding the unpacked tree (``usr/...``); it is deleted afterwards.
    """
    with tempfile.TemporaryDirectory(prefix="aelab-deb-") as tmp:
        tmp_path = Path(tmp)
        errors = []
        deb = None
        if shutil.which("apt-get"):
            try:
                run_tool(["apt-get", "download", package], cwd=tmp_path, what=f"fetching the Debian package {package}")
                deb = next(iter(sorted(tmp_path.glob("*.deb"))), None)
            except DataUnavailableError as e:
                errors.append(str(e))
        if deb is None:
            try:
                deb = _fetch_pinned_deb(package, tmp_path)
            except DataUnavailableError as e:
                errors.append(str(e))
                raise DataUnavailableError(f"could not fetch the Debian package {package}: " + "; ".join(errors)) from e
        root = tmp_path / "root"
        extract_deb(deb, root)
        yield root
