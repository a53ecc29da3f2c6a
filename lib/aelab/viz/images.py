"""Image grids: a batch of images, originals against reconstructions, learned features as images.

Every function draws on a matplotlib ``Axes`` (its own new figure unless ``ax`` is given) and
returns the axes or the figure; nothing here touches pyplot's global state beyond creating figures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor


def _as_images(x: Tensor | np.ndarray) -> Tensor:
    """Any batch of images as a float CPU tensor (N, C, H, W); (N, H, W) gets C = 1."""
    x = torch.as_tensor(x).detach().to("cpu", torch.float32)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4:
        raise ValueError(f"expected images of shape (N, C, H, W) or (N, H, W), got {tuple(x.shape)}")
    if x.shape[1] not in (1, 3):
        raise ValueError(f"expected 1 (grey) or 3 (RGB) channels, got C = {x.shape[1]} in {tuple(x.shape)}")
    return x


def make_grid(x: Tensor | np.ndarray, nrow: int = 8, padding: int = 2, pad_value: float = 1.0) -> np.ndarray:
    """Tile images into one array, ``nrow`` images per row, ``padding`` pixels of ``pad_value`` between.

    Shapes: x (N, C, H, W) -> (rows * (H + p) + p, nrow * (W + p) + p) for C = 1, with a trailing
    channel axis of 3 for C = 3. Values are copied as they are (no clipping or rescaling).
    """
    x = _as_images(x)
    n, c, h, w = x.shape
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    ncol = min(nrow, max(n, 1))
    nrows = max(1, math.ceil(n / ncol))
    grid = np.full((c, nrows * (h + padding) + padding, ncol * (w + padding) + padding), pad_value, dtype=np.float32)
    for i in range(n):
        r, col = divmod(i, ncol)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top:top + h, left:left + w] = x[i].numpy()
    return grid[0] if c == 1 else grid.transpose(1, 2, 0)


def show_images(
    x: Tensor | np.ndarray,
    nrow: int = 8,
    title: str | None = None,
    ax=None,
    padding: int = 2,
    cmap: str = "gray",
    figsize: tuple[float, float] | None = None,
):
    """Show a batch of images in [0, 1] as one grid, ``nrow`` per row; returns the axes.

    Shapes: x (N, C, H, W) with C = 1 or 3 (or (N, H, W)). Values outside [0, 1] are clipped.
    """
    import matplotlib.pyplot as plt

    x = _as_images(x)
    grid = np.clip(make_grid(x, nrow=nrow, padding=padding), 0.0, 1.0)
    if ax is None:
        if figsize is None:
            h, w = grid.shape[:2]
            scale = 6.0 / max(h, w)
            figsize = (max(1.5, w * scale), max(1.0, h * scale + (0.4 if title else 0.0)))
        _, ax = plt.subplots(figsize=figsize)
    ax.imshow(grid, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def image_rows(
    rows: Mapping[str, Tensor],
    n: int | None = None,
    title: str | None = None,
    width: float = 8.0,
):
    """Labelled rows of images: one row of ``n`` images per entry of ``rows``; returns the figure.

    ``rows`` maps a label to images (N, C, H, W) in [0, 1], all of the same (C, H, W); the first
    ``n`` of each are shown (default: as many as the longest row has), shorter rows end in blank
    space. The figure has one axes per row, labelled on the left.
    """
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("rows is empty: pass e.g. {'original': x, 'model': x_hat}")
    images = {label: _as_images(x) for label, x in rows.items()}
    sizes = {tuple(x.shape[1:]) for x in images.values()}
    if len(sizes) != 1:
        raise ValueError(f"every row needs images of the same (C, H, W), got { {k: tuple(v.shape) for k, v in images.items()} }")
    n = max(x.shape[0] for x in images.values()) if n is None else n
    _, c, h, w = next(iter(images.values())).shape
    row_height = width / n * h / w
    fig, axes = plt.subplots(len(images), 1, figsize=(width + 1.2, row_height * len(images) + (0.4 if title else 0.1)), squeeze=False)
    for ax, (label, x) in zip(axes[:, 0], images.items()):
        x = x[:n]
        if x.shape[0] < n:  # blank (white) images keep every row's columns aligned
            x = torch.cat([x, torch.ones(n - x.shape[0], c, h, w)])
        ax.imshow(np.clip(make_grid(x, nrow=n, padding=1), 0, 1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for side in ax.spines.values():
            side.set_visible(False)
        ax.set_ylabel(label, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title)
    fig.tight_layout(pad=0.3)
    return fig


def compare_reconstructions(
    rows: Mapping[str, Tensor],
    n: int | None = None,
    title: str | None = None,
    width: float = 8.0,
):
    """Originals against several models' reconstructions: one row of ``n`` images per entry.

    ``rows`` maps a label to images (N, C, H, W) in [0, 1], e.g. ``{"original": x, "PCA": x_pca,
    "deep AE": x_ae}``, the same N examples in the same order in every row, so that each column is
    one example. Returns the figure, which has one axes per row (see ``image_rows``).
    """
    return image_rows(rows, n=n, title=title, width=width)


def show_features(
    weights: Tensor | np.ndarray,
    image_shape: tuple[int, int] = (28, 28),
    nrow: int = 8,
    title: str | None = None,
    ax=None,
    figsize: tuple[float, float] | None = None,
):
    """Show learned features (decoder columns, encoder rows) as images on a diverging colour map.

    Shapes: weights (K, H * W), one feature per row (pass ``W_dec.T`` for a decoder ``nn.Linear``
    of weight (H * W, K)). Each feature is scaled by its own largest absolute value so that white
    is 0, red positive and blue negative. Returns the axes.
    """
    import matplotlib.pyplot as plt

    w = torch.as_tensor(weights).detach().to("cpu", torch.float32)
    h, wd = image_shape
    if w.dim() != 2 or w.shape[1] != h * wd:
        raise ValueError(f"expected weights of shape (K, {h * wd}) for {image_shape} images, got {tuple(w.shape)}")
    w = w / w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
    grid = make_grid(w.view(-1, 1, h, wd), nrow=nrow, padding=1, pad_value=0.0)
    if ax is None:
        rows = math.ceil(w.shape[0] / min(nrow, w.shape[0]))
        _, ax = plt.subplots(figsize=figsize or (min(nrow, w.shape[0]) * 0.75, rows * 0.75 + (0.4 if title else 0)))
    ax.imshow(grid, cmap="RdBu_r", vmin=-1.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax
