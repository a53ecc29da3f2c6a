"""Distances between two samples of points: MMD with RBF/IMQ kernels, sliced Wasserstein, energy distance.

These compare *distributions* through samples, e.g. the codes of a batch (samples of the aggregate
posterior q(z)) against draws from the prior p(z), as WAE, InfoVAE and SWAE do. Inputs are two
samples ``x (N, d)`` and ``y (M, d)``; every divergence here returns one number for the pair, a
0-dim tensor (it is a property of the two samples, not of single examples).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

KERNELS = ("rbf", "imq")


def _check_pair(x: Tensor, y: Tensor) -> None:
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"expected two samples (N, d) and (M, d) with the same d, got {tuple(x.shape)} and {tuple(y.shape)}")


def _scales(scale: float | Sequence[float]) -> list[float]:
    values = [float(scale)] if isinstance(scale, (int, float)) else [float(s) for s in scale]
    if not values or min(values) <= 0:
        raise ValueError(f"kernel scales must be positive, got {scale!r}")
    return values


def pairwise_distances(x: Tensor, y: Tensor) -> Tensor:
    """Euclidean distances |x_i - y_j|: (N, d), (M, d) -> (N, M).

    Computed from the differences, not from |x|^2 + |y|^2 - 2 x.y, so identical points are exactly
    0 apart; the gradient at a zero distance is 0 (``torch.cdist``'s convention), not NaN.
    """
    _check_pair(x, y)
    return torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist")


def rbf_kernel(x: Tensor, y: Tensor, bandwidth: float | Sequence[float]) -> Tensor:
    """Gaussian (RBF) kernel matrix k(x_i, y_j) = exp(-|x_i - y_j|^2 / (2 h^2)): (N, d), (M, d) -> (N, M).

    A sequence of bandwidths h gives the sum of one kernel per bandwidth (a multi-scale kernel).
    """
    d2 = pairwise_distances(x, y).pow(2)
    return sum(torch.exp(-d2 / (2.0 * h * h)) for h in _scales(bandwidth))


def imq_kernel(x: Tensor, y: Tensor, scale: float | Sequence[float]) -> Tensor:
    """Inverse multiquadratics kernel k(x_i, y_j) = C / (C + |x_i - y_j|^2): (N, d), (M, d) -> (N, M).

    Its heavy tails keep gradients alive for codes far from the prior's mass (Tolstikhin et al.
    2018, who take C = 2 d sigma_z^2 for a N(0, sigma_z^2 I) prior and sum over several multiples of
    it). A sequence of scales C gives the sum of one kernel per scale.
    """
    d2 = pairwise_distances(x, y).pow(2)
    return sum(c / (c + d2) for c in _scales(scale))


def kernel_scales(kernel: str, dim: int, multipliers: Sequence[float] = (1.0,), prior_var: float = 1.0) -> tuple[float, ...]:
    """Kernel scales for comparing d-dim codes with a N(0, prior_var I) prior.

    The base is C = 2 d prior_var, the expected squared distance of two prior draws, as in
    Tolstikhin et al. 2018. IMQ takes C * m for each multiplier m; RBF takes the bandwidth
    h = sqrt(C * m / 2), so that both kernels divide |x - y|^2 by the same C * m.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    base = 2.0 * dim * prior_var
    if kernel == "imq":
        return tuple(base * m for m in multipliers)
    return tuple(math.sqrt(base * m / 2.0) for m in multipliers)


def mmd(
    x: Tensor,
    y: Tensor,
    kernel: str | Callable[[Tensor, Tensor], Tensor] = "rbf",
    scale: float | Sequence[float] | None = None,
    unbiased: bool = True,
) -> Tensor:
    """Squared maximum mean discrepancy MMD^2(P, Q) from samples x ~ P (N, d), y ~ Q (M, d): a 0-dim tensor.

    MMD^2 = E k(x, x') + E k(y, y') - 2 E k(x, y) (Gretton et al. 2012). ``unbiased=True`` is the
    U-statistic: the within-sample means skip the diagonal (i = j), so the estimate is 0 in
    expectation when P = Q and can be negative. ``unbiased=False`` is the V-statistic: plain means
    over all pairs, always >= 0, biased upwards by O(1/N).

    kernel: "rbf" (``scale`` = bandwidth(s) h, default sqrt(d)), "imq" (``scale`` = C, default 2 d),
    or a callable ``(x, y) -> (N, M)`` kernel matrix (then ``scale`` must be None).
    """
    _check_pair(x, y)
    if callable(kernel):
        if scale is not None:
            raise ValueError("pass the scale inside a callable kernel, not as scale=")
        k = kernel
    elif kernel == "rbf":
        h = math.sqrt(x.shape[1]) if scale is None else scale
        k = lambda a, b: rbf_kernel(a, b, h)  # noqa: E731
    elif kernel == "imq":
        c = 2.0 * x.shape[1] if scale is None else scale
        k = lambda a, b: imq_kernel(a, b, c)  # noqa: E731
    else:
        raise ValueError(f"kernel must be one of {KERNELS} or a callable, got {kernel!r}")
    n, m = x.shape[0], y.shape[0]
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    if not unbiased:
        return kxx.mean() + kyy.mean() - 2.0 * kxy.mean()
    if n < 2 or m < 2:
        raise ValueError(f"the unbiased MMD needs at least 2 points per sample, got {n} and {m}")
    within_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    within_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return within_x + within_y - 2.0 * kxy.mean()


def random_directions(n: int, dim: int, generator: torch.Generator | None = None, device=None, dtype=None) -> Tensor:
    """n directions drawn uniformly on the unit sphere S^(dim-1): normalised Gaussian vectors, (n, dim)."""
    theta = torch.randn(n, dim, generator=generator, device=device, dtype=dtype)
    return theta / theta.norm(dim=1, keepdim=True)


def sliced_wasserstein(
    x: Tensor,
    y: Tensor,
    n_projections: int = 50,
    p: int = 2,
    generator: torch.Generator | None = None,
    directions: Tensor | None = None,
) -> Tensor:
    """Sliced Wasserstein distance to the power p, SW_p^p(P, Q), from equal-size samples (N, d): 0-dim.

    SW_p^p = E_theta W_p^p(theta.P, theta.Q) over directions theta uniform on the sphere (Kolouri
    et al. 2019): project both samples on each direction, where the 1-D optimal transport matches
    the sorted projections, so W_p^p = mean_i |sort(theta.x)_i - sort(theta.y)_i|^p. Reduction: mean
    over the N matched pairs and over the ``n_projections`` directions (or the given ``directions``,
    (L, d) unit vectors). For d = 1 and p = 1 it is exactly the 1-D Wasserstein-1 distance.
    """
    _check_pair(x, y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"sliced_wasserstein matches sorted projections and needs samples of equal size, got {x.shape[0]} and {y.shape[0]}")
    if directions is None:
        directions = random_directions(n_projections, x.shape[1], generator, device=x.device, dtype=x.dtype)
    px = (x @ directions.T).sort(dim=0).values  # (N, L)
    py = (y @ directions.T).sort(dim=0).values
    return (px - py).abs().pow(p).mean()


def energy_distance(x: Tensor, y: Tensor) -> Tensor:
    """Energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| between samples x (N, d) and y (M, d): 0-dim.

    Székely's energy distance, estimated with V-statistics (means over all pairs, so identical
    samples give exactly 0); it is >= 0 and 0 only for equal distributions. It is the MMD^2 of the
    distance-induced kernel, and by the Cramér–Wold / Radon view it is, up to a constant depending on
    d, the average over directions of the 1-D energy distances of the projections, each of which is
    2 * integral (F - G)^2 of the projected CDFs. SciPy's ``energy_distance`` returns the square root
    of the 1-D value.
    """
    return 2.0 * pairwise_distances(x, y).mean() - pairwise_distances(x, x).mean() - pairwise_distances(y, y).mean()
