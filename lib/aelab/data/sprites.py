"""dSprites (Matthey et al. 2017), regenerated: the exact 3x6x40x32x32 factor grid of binary 64x64 images.

Every image is one of 720 (shape, scale, orientation) sprites shifted to its position, so only the
sprite bank is rendered (once, then cached); images are cut out on demand by index. Sprite centres
sit on integer pixels ``16 + 31 * pos`` (``pos`` in [0, 1]), which makes a position step exactly
one pixel.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import torch

from aelab._env import data_dir

from ._common import check_array, corrupt, load_npz, register_preparer, save_npz, sha256

FACTOR_NAMES = ("shape", "scale", "orientation", "posX", "posY")
FACTOR_SIZES = (3, 6, 40, 32, 32)
SHAPES = ("square", "ellipse", "heart")
IMAGE_SIZE = 64
PATCH = 33  # sprite canvas; its centre pixel is index 16, so patches at offsets 0..31 fit in 64
RADIUS = 10.0  # half-width in pixels of a sprite at scale 1 (about 20 px across)
SUBSAMPLES = 4  # per axis: a pixel is on when at least half of its 16 sample points are inside
# sha256 of the (720, 33, 33) uint8 bank this rasteriser makes; a change of the renderer must update it.
SPRITES_SHA256 = "f6eacd0574f430fb7a1454a78e61e08d837ea12dfb8fa1f80eec30260d4145a5"
_BANK_FILE = "sprites_v1.npz"
# mixed-radix strides, posY fastest: (245760, 40960, 1024, 32, 1)
_STRIDES = np.cumprod((1,) + FACTOR_SIZES[:0:-1])[::-1].copy()


def _inside(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test in the sprite's own frame, unit size (y up): square, ellipse (2:1) or heart."""
    if shape == 0:
        return np.maximum(np.abs(u), np.abs(v)) <= 1.0
    if shape == 1:
        return u**2 + (v / 0.5) ** 2 <= 1.0
    # heart: (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0 spans x in [-1.139, 1.139], y in [-1, 1.2365]; centre and fit it
    x = 1.139 * u
    y = 1.139 * v + 0.118
    return (x**2 + y**2 - 1.0) ** 3 - x**2 * y**3 <= 0.0


def render_sprites() -> np.ndarray:
    """Rasterise the bank: (3, 6, 40, 33, 33) uint8 in {0, 1}, sprite centred on pixel (16, 16).

    Orientation ``theta`` rotates the shape counter-clockwise on screen; cos and sin are rounded to
    12 decimals so that 0 and 2*pi give identical sprites and results do not depend on the libm.
    """
    offsets = (np.arange(SUBSAMPLES) + 0.5) / SUBSAMPLES - 0.5
    d = (np.arange(PATCH)[:, None] - PATCH // 2 + offsets[None, :]).reshape(-1)  # sample coordinates, (33*4,)
    dy, dx = np.meshgrid(d, d, indexing="ij")
    px, py = dx, -dy  # screen to math coordinates (y up)
    scales = np.linspace(0.5, 1.0, FACTOR_SIZES[1])
    thetas = np.linspace(0.0, 2 * np.pi, FACTOR_SIZES[2])
    cos = np.round(np.cos(thetas), 12)[:, None, None]
    sin = np.round(np.sin(thetas), 12)[:, None, None]
    bank = np.zeros((3, 6, 40, PATCH, PATCH), dtype=np.uint8)
    for shape in range(3):
        for k, scale in enumerate(scales):
            r = RADIUS * scale
            u = (cos * px + sin * py) / r  # rotate the sample points by -theta: (40, 132, 132)
            v = (-sin * px + cos * py) / r
            hits = _inside(shape, u, v).reshape(40, PATCH, SUBSAMPLES, PATCH, SUBSAMPLES).sum(axis=(2, 4))
            bank[shape, k] = hits * 2 >= SUBSAMPLES**2
    return bank


def _load_bank() -> np.ndarray:
    """The sprite bank from the cache, rendered and cached when missing: (720, 33, 33) uint8."""
    path = data_dir() / "dsprites" / _BANK_FILE
    if not path.exists():
        _write_bank(path)
    arrays = load_npz(path, ("sprites", "sha256"), "dsprites")
    bank = arrays["sprites"]
    check_array(
        bank, shape=(720, PATCH, PATCH), dtype=np.uint8, checksum=None, what="sprites", path=path, name="dsprites"
    )
    if sha256(bank) != str(arrays["sha256"]):
        raise corrupt(path, "sha256 of the sprites differs from the one stored with them", "dsprites")
    return bank


def _write_bank(path: Path) -> None:
    bank = render_sprites().reshape(720, PATCH, PATCH)
    digest = sha256(bank)
    if digest != SPRITES_SHA256:
        warnings.warn(
            f"the dSprites bank rendered here has sha256 {digest}, not the reference {SPRITES_SHA256}; "
            "images may differ from other machines by a few edge pixels",
            stacklevel=3,
        )
    save_npz(path, sprites=bank, sha256=np.array(digest))


class DSprites:
    """The dSprites grid: 737,280 binary 64x64 images, indexed in the original's mixed-radix order.

    Factors (class indices; values in ``factor_values``): shape {square, ellipse, heart},
    scale linspace(0.5, 1, 6), orientation linspace(0, 2*pi, 40), posX and posY linspace(0, 1, 32).
    ``posX`` moves right, ``posY`` moves down. Index = sum(factor_i * stride_i), posY fastest.
    As in the original, some images coincide: orientation 0 and 2*pi always, and a square turned by
    about a quarter turn (an ellipse by about a half turn) where the 9.2 degree grid cannot resolve it.
    """

    factor_names: tuple[str, ...] = FACTOR_NAMES
    factor_sizes: tuple[int, ...] = FACTOR_SIZES

    def __init__(self, sprites: np.ndarray) -> None:
        self._sprites = torch.from_numpy(sprites)  # (720, 33, 33) uint8
        self._factors: torch.Tensor | None = None
        self.factor_values: list[np.ndarray] = [
            np.array([1.0, 2.0, 3.0]),
            np.linspace(0.5, 1.0, 6),
            np.linspace(0.0, 2 * np.pi, 40),
            np.linspace(0.0, 1.0, 32),
            np.linspace(0.0, 1.0, 32),
        ]
        self.shape_names = SHAPES

    def __len__(self) -> int:
        return int(np.prod(FACTOR_SIZES))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One example, so that a ``DataLoader`` can read it: image (1, 64, 64) float32, factors (5,) int64."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        idx = torch.tensor([index % len(self)])
        return self.images(idx)[0], self.factors_of(idx)[0]

    @property
    def factors(self) -> torch.Tensor:
        """Factor class indices of every image, in index order: (737280, 5) int64 (made on first use)."""
        if self._factors is None:
            self._factors = self.factors_of(torch.arange(len(self)))
        return self._factors

    def index_of(self, factors: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """Mixed-radix index of factor class indices (..., 5) -> (...,); same array type as the input."""
        strides = torch.from_numpy(_STRIDES) if isinstance(factors, torch.Tensor) else _STRIDES
        return (factors * strides).sum(-1)

    def factors_of(self, index: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """Factor class indices (..., 5) of indices (...,); same array type as the input."""
        if isinstance(index, torch.Tensor):
            return torch.stack([(index // s) % n for s, n in zip(_STRIDES.tolist(), FACTOR_SIZES, strict=True)], dim=-1)
        index = np.asarray(index, dtype=np.int64)
        return np.stack([(index // s) % n for s, n in zip(_STRIDES, FACTOR_SIZES, strict=True)], axis=-1)

    def images(self, index: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Images of the given indices: (n,) -> (n, 1, 64, 64) float32 in {0, 1}."""
        idx = torch.as_tensor(index, dtype=torch.int64).reshape(-1)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= len(self)):
            raise IndexError(f"indices must lie in [0, {len(self)})")
        f = self.factors_of(idx)  # (n, 5)
        sprite = (f[:, 0] * 6 + f[:, 1]) * 40 + f[:, 2]
        n = idx.numel()
        steps = torch.arange(PATCH)
        rows = (f[:, 4, None] + steps)[:, :, None]  # top-left corner = position index: (n, 33, 1)
        cols = (f[:, 3, None] + steps)[:, None, :]  # (n, 1, 33)
        out = torch.zeros(n, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.float32)
        out[torch.arange(n)[:, None, None], rows, cols] = self._sprites[sprite].to(torch.float32)
        return out.unsqueeze(1)

    def images_of(self, factors: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Images with the given factor class indices: (n, 5) -> (n, 1, 64, 64) float32 (what sampling metrics call)."""
        factors = torch.as_tensor(factors, dtype=torch.int64)
        if factors.dim() != 2 or factors.shape[1] != len(FACTOR_SIZES):
            raise ValueError(f"factors must have shape (n, {len(FACTOR_SIZES)}), got {tuple(factors.shape)}")
        if factors.numel() and ((factors < 0).any() or (factors >= torch.tensor(FACTOR_SIZES)).any()):
            raise ValueError(f"factor class indices must lie in [0, size) for sizes {FACTOR_SIZES}")
        return self.images(self.index_of(factors))

    def sample_factors(self, n: int, seed: int = 0) -> torch.Tensor:
        """``n`` factor vectors drawn uniformly (with replacement) from the grid: (n, 5) int64."""
        rng = np.random.Generator(np.random.PCG64(seed))
        return torch.from_numpy(rng.integers(0, FACTOR_SIZES, size=(n, len(FACTOR_SIZES)), dtype=np.int64))

    def sample(self, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` images drawn uniformly from the grid: x (n, 1, 64, 64) float32, factors (n, 5) int64."""
        factors = self.sample_factors(n, seed)
        return self.images(self.index_of(factors)), factors

    def tensors(self, n: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """A training set: ``n`` distinct images in random order (all 737,280 in index order when ``n`` is None).

        Returns x (n, 1, 64, 64) float32 and factors (n, 5) int64. All of them take 12 GB as float32.
        """
        if n is None:
            warnings.warn(
                "dsprites().tensors() with n=None makes all 737,280 images: 12 GB as float32; "
                "pass n for a random subset, or index images() batch by batch",
                stacklevel=2,
            )
            idx = torch.arange(len(self))
        else:
            if not 0 <= n <= len(self):
                raise ValueError(f"n must lie in [0, {len(self)}], got {n}")
            rng = np.random.Generator(np.random.PCG64(seed))
            idx = torch.from_numpy(rng.choice(len(self), size=n, replace=False).astype(np.int64))
        return self.images(idx), self.factors_of(idx)


def dsprites() -> DSprites:
    """The dSprites grid (Matthey et al. 2017, 'dSprites: disentanglement testing sprites dataset').

    3 shapes x 6 scales x 40 orientations x 32 x 32 positions = 737,280 binary 64x64 images,
    rendered by our own rasteriser (deterministic; the 720-sprite bank is cached as ``.npz``).
    """
    return DSprites(_load_bank())


@register_preparer("dsprites")
def prepare_dsprites() -> str:
    """Render and cache the dSprites sprite bank."""
    path = data_dir() / "dsprites" / _BANK_FILE
    if path.exists():
        _load_bank()
        return f"dsprites: already cached in {path}"
    start = time.perf_counter()
    _load_bank()
    return f"dsprites: rendered the 720-sprite bank into {path} ({time.perf_counter() - start:.1f} s)"
