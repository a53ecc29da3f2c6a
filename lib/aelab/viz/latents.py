"""Pictures of a latent space: codes coloured by class, a decoded 2-D manifold, latent traversals,
training curves one panel per loss term, and Hinton diagrams of code-factor matrices.

``decode_fn`` is any function from codes (B, latent_dim) to images (B, C, H, W) in [0, 1], such as
``model.decode``; it is called under ``torch.no_grad`` with codes on the device of ``z0`` (CPU when
no ``z0`` is given: for a model on a GPU pass ``lambda z: model.decode(z.to(dev))``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from aelab.viz.images import _as_images, make_grid

DecodeFn = Callable[[Tensor], Tensor]


def _decode(decode_fn: DecodeFn, z: Tensor) -> Tensor:
    with torch.no_grad():
        return _as_images(decode_fn(z))


def latent_scatter(
    z2d: Tensor | np.ndarray,
    labels: Tensor | np.ndarray | Sequence[int] | None = None,
    ax=None,
    class_names: Sequence[str] | None = None,
    s: float = 3.0,
    alpha: float = 0.6,
    title: str | None = None,
):
    """Scatter 2-D codes, one colour per class, with a legend; returns the axes.

    Shapes: z2d (N, 2); labels (N,) integer classes (or None for one colour). ``class_names[c]``
    names class c in the legend (default: the class number). For codes with more than two
    dimensions, project first (``torch.pca_lowrank`` or scikit-learn's t-SNE).
    """
    import matplotlib.pyplot as plt

    z = torch.as_tensor(z2d).detach().to("cpu", torch.float32)
    if z.dim() != 2 or z.shape[1] != 2:
        raise ValueError(f"latent_scatter needs codes of shape (N, 2), got {tuple(z.shape)}; project higher-dimensional codes to 2-D first")
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4.2))
    if labels is None:
        ax.scatter(z[:, 0], z[:, 1], s=s, alpha=alpha, linewidths=0)
    else:
        y = np.asarray(torch.as_tensor(labels).cpu())
        if y.shape != (z.shape[0],):
            raise ValueError(f"labels must have shape ({z.shape[0]},) to match z2d, got {y.shape}")
        classes = np.unique(y)
        cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
        for i, c in enumerate(classes):
            keep = y == c
            name = class_names[int(c)] if class_names is not None else str(c)
            ax.scatter(z[keep, 0], z[keep, 1], s=s, alpha=alpha, color=cmap(i % cmap.N), label=name, linewidths=0)
        ax.legend(markerscale=12 / max(s, 1) ** 0.5, fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    if title:
        ax.set_title(title)
    return ax


def latent_grid(
    decode_fn: DecodeFn,
    lim: float | tuple[float, float, float, float] = 3.0,
    n: int = 15,
    ax=None,
    dims: tuple[int, int] = (0, 1),
    z0: Tensor | None = None,
    title: str | None = None,
):
    """Decode an n x n grid of codes spanning a 2-D latent plane: the learned manifold; returns the axes.

    ``lim`` is a half-width (the square [-lim, lim]^2) or (x_min, x_max, y_min, y_max). The grid
    varies latent dimensions ``dims`` of ``z0`` (shape (latent_dim,); default zeros of size
    2); the image at the top-left has the smallest z_dims[0] and the largest z_dims[1], as on a plot.
    """
    import matplotlib.pyplot as plt

    x0, x1, y0, y1 = (-lim, lim, -lim, lim) if np.isscalar(lim) else lim
    base = torch.zeros(2) if z0 is None else torch.as_tensor(z0).detach().flatten().float()
    gx = torch.linspace(x0, x1, n, device=base.device)
    gy = torch.linspace(y1, y0, n, device=base.device)  # top row is the largest y
    z = base.repeat(n * n, 1)
    z[:, dims[0]] = gx.repeat(n)
    z[:, dims[1]] = gy.repeat_interleave(n)
    images = _decode(decode_fn, z)
    grid = np.clip(make_grid(images, nrow=n, padding=0), 0, 1)
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1, extent=(x0, x1, y0, y1), interpolation="nearest")
    ax.set_xlabel(f"$z_{{{dims[0] + 1}}}$")
    ax.set_ylabel(f"$z_{{{dims[1] + 1}}}$")
    if title:
        ax.set_title(title)
    return ax


def traversal_grid(
    decode_fn: DecodeFn,
    z0: Tensor,
    dims: Sequence[int],
    values: Sequence[float] | Tensor,
    ax=None,
    dim_names: Sequence[str] | None = None,
    title: str | None = None,
):
    """Latent traversals: row i decodes z0 with dimension ``dims[i]`` set to each of ``values``.

    Shapes: z0 (latent_dim,) or (1, latent_dim); values (V,); the picture is len(dims) rows by V
    columns. Rows are labelled ``z_d`` (or ``dim_names[i]``). Returns the axes.
    """
    import matplotlib.pyplot as plt

    base = torch.as_tensor(z0).detach().float()
    if base.dim() == 2 and base.shape[0] == 1:
        base = base[0]
    if base.dim() != 1:
        raise ValueError(f"z0 must be one code of shape (latent_dim,) or (1, latent_dim), got {tuple(base.shape)}")
    values = torch.as_tensor(values, dtype=base.dtype, device=base.device).flatten()
    dims = list(dims)
    if not dims or any(not 0 <= d < base.shape[0] for d in dims):
        raise ValueError(f"dims must be a non-empty list of indices in [0, {base.shape[0]}), got {dims}")
    z = base.repeat(len(dims), len(values), 1)  # (rows, V, latent_dim)
    for r, d in enumerate(dims):
        z[r, :, d] = values
    images = _decode(decode_fn, z.view(-1, base.shape[0]))
    _, _, h, w = images.shape
    grid = np.clip(make_grid(images, nrow=len(values), padding=1), 0, 1)
    if ax is None:
        _, ax = plt.subplots(figsize=(0.7 * len(values) + 1.0, 0.7 * len(dims) + (0.5 if title else 0.2)))
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks([1 + r * (h + 1) + h / 2 for r in range(len(dims))])
    ax.set_yticklabels(list(dim_names) if dim_names is not None else [f"$z_{{{d + 1}}}$" for d in dims])
    ax.set_xticks([1 + c * (w + 1) + w / 2 for c in range(len(values))])
    ax.set_xticklabels([f"{v:.3g}" for v in values.tolist()], fontsize="small")
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    if title:
        ax.set_title(title)
    return ax


def plot_history(history, terms: Sequence[str] | None = None, logy: bool = False, smooth: int = 1, ncols: int = 3):
    """Training curves, one panel per loss term (they live on different scales); returns the figure.

    ``history`` is what ``aelab.fit`` returns; ``terms`` defaults to every logged loss term, and
    evaluation results (``history.evals``) of the same name are drawn on the same panel. ``smooth``
    is a moving-average window in log rows. ``History.plot`` draws all terms on one axes instead.
    """
    import matplotlib.pyplot as plt

    eval_keys = [k for k in dict.fromkeys(k for r in history.evals for k in r) if k not in ("step", "epoch")]
    names = list(terms) if terms is not None else list(dict.fromkeys([*history.terms, *eval_keys]))
    if not names:
        raise ValueError("the history has no logged terms: was fit() run with at least one step?")
    ncols = min(ncols, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, 2.5 * nrows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        if history.logs and any(name in r for r in history.logs):
            steps, y = history["step"], np.array([r.get(name, np.nan) for r in history.logs], dtype=float)
            if smooth > 1 and len(y) >= smooth:
                y = np.convolve(y, np.ones(smooth) / smooth, mode="valid")
                steps = steps[smooth - 1:]
            ax.plot(steps, y, label="train")
        rows = [r for r in history.evals if name in r]
        if rows:
            ax.plot([r["step"] for r in rows], [r[name] for r in rows], "o--", label="eval")
            ax.legend(fontsize="small")
        ax.set_title(name)
        ax.set_xlabel("step")
        if logy:
            ax.set_yscale("log")
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def hinton(
    matrix: Tensor | np.ndarray,
    ax=None,
    row_names: Sequence[str] | None = None,
    col_names: Sequence[str] | None = None,
    max_value: float | None = None,
    title: str | None = None,
):
    """Hinton diagram of a matrix (R, C): one square per entry, its area proportional to |value|; returns the axes.

    Positive entries are white squares, negative ones black, on a grey background; the largest
    |value| (or ``max_value``) fills its cell, so a square of side s stands for s^2 * max_value.
    Row r is drawn at height r from the top (as the matrix reads), column c at x = c. Used for the
    DCI importance matrix R (codes x factors): a disentangled code has one square per row, a complete
    one one square per column. ``row_names`` / ``col_names`` label the rows and columns.
    """
    import matplotlib.pyplot as plt
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    m = np.asarray(torch.as_tensor(matrix).detach().cpu(), dtype=np.float64)
    if m.ndim != 2 or 0 in m.shape:
        raise ValueError(f"hinton needs a non-empty 2-D matrix (rows, columns), got shape {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError("hinton: the matrix contains NaN or infinite values")
    rows, cols = m.shape
    for names, n, what in ((row_names, rows, "row_names"), (col_names, cols, "col_names")):
        if names is not None and len(names) != n:
            raise ValueError(f"{what} must name all {n} {what[:3]}s, got {len(names)} names")
    top = float(np.abs(m).max()) if max_value is None else float(max_value)
    if top < 0:
        raise ValueError(f"max_value must be >= 0, got {max_value}")
    if ax is None:
        _, ax = plt.subplots(figsize=(0.45 * cols + 1.2, 0.45 * rows + 0.8))
    ax.set_facecolor("0.55")
    squares, colours = [], []
    for r in range(rows):
        for c in range(cols):
            if m[r, c] == 0 or top == 0:
                continue
            side = math.sqrt(min(abs(m[r, c]) / top, 1.0))  # area, not side, proportional to |value|
            squares.append(Rectangle((c - side / 2, r - side / 2), side, side))
            colours.append("white" if m[r, c] > 0 else "black")
    ax.add_collection(PatchCollection(squares, facecolors=colours, edgecolors="none"))
    ax.set_xlim(-0.5, cols - 0.5)
    ax.set_ylim(rows - 0.5, -0.5)  # row 0 on top
    ax.set_aspect("equal")
    ax.set_xticks(range(cols), list(col_names) if col_names is not None else [str(c) for c in range(cols)])
    ax.set_yticks(range(rows), list(row_names) if row_names is not None else [str(r) for r in range(rows)])
    ax.tick_params(length=0)
    if title:
        ax.set_title(title)
    return ax
