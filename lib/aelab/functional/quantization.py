"""Vector quantisation (van den Oord et al. 2017, "Neural Discrete Representation Learning").

Vectors are rows: ``z (N, D)``, a codebook ``(K, D)`` of K codes. Models with a grid of vectors
(B, D, H, W) flatten it to (B * H * W, D) first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from aelab.functional._device import index_counts


def _check(z: Tensor, codebook: Tensor) -> None:
    if z.dim() != 2 or codebook.dim() != 2 or z.shape[1] != codebook.shape[1]:
        raise ValueError(f"expected vectors (N, D) and a codebook (K, D) with the same D, got {tuple(z.shape)} and {tuple(codebook.shape)}")


def quantize(z: Tensor, codebook: Tensor) -> tuple[Tensor, Tensor]:
    """Replace each vector by its nearest code (Euclidean): z (N, D) -> z_q (N, D), indices (N,) long.

    ``z_q = codebook[indices]`` is differentiable with respect to the codebook only (argmin has no
    gradient); pass it through ``straight_through`` to reach the encoder. Ties go to the lowest index.
    """
    _check(z, codebook)
    with torch.no_grad():
        d2 = z.pow(2).sum(1, keepdim=True) - 2.0 * z @ codebook.T + codebook.pow(2).sum(1)  # (N, K)
        indices = d2.argmin(dim=1)
    return codebook[indices], indices


def straight_through(z_e: Tensor, z_q: Tensor) -> Tensor:
    """The straight-through estimator: the value of z_q, the gradient of z_e (identity backward).

    ``z_e + (z_q - z_e).detach()``: the decoder sees the quantised vectors while the gradient of
    the reconstruction with respect to them is copied onto the encoder output (van den Oord et al.
    2017, section 3.2). Any shapes, equal.
    """
    return z_e + (z_q - z_e).detach()


def codebook_perplexity(indices: Tensor, n_codes: int) -> Tensor:
    """exp(entropy) of the code usage in a batch: indices (any shape) -> 0-dim tensor in [1, n_codes].

    1 when every vector picks the same code, n_codes when all codes are used equally: the effective
    number of codes in use.
    """
    p = index_counts(indices, n_codes) / indices.numel()
    return torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())


def ema_codebook_update(
    cluster_size: Tensor,
    embed_sum: Tensor,
    z: Tensor,
    indices: Tensor,
    decay: float = 0.99,
    epsilon: float = 1e-5,
) -> tuple[Tensor, Tensor, Tensor]:
    """One exponential-moving-average codebook step (van den Oord et al. 2017, appendix A.1).

    With n_i the number of vectors of z assigned to code i and s_i their sum:

        N_i <- decay * N_i + (1 - decay) * n_i,     m_i <- decay * m_i + (1 - decay) * s_i,
        e_i = m_i / N~_i,   N~_i = (N_i + epsilon) / (sum_j N_j + K epsilon) * sum_j N_j

    where N~ is N with Laplace (add-epsilon) smoothing so that a code nobody uses never divides by
    zero. With decay = 0 and epsilon -> 0 each used code moves to the mean of its assigned vectors.

    Shapes: cluster_size (K,), embed_sum (K, D), z (N, D), indices (N,) -> new cluster_size (K,),
    embed_sum (K, D) and codebook (K, D). Pure: the inputs are not modified.
    """
    _check(z, embed_sum)
    k = cluster_size.shape[0]
    onehot = F.one_hot(indices, k).to(z.dtype)  # (N, K)
    cluster_size = decay * cluster_size + (1.0 - decay) * onehot.sum(0)
    embed_sum = decay * embed_sum + (1.0 - decay) * onehot.T @ z
    n = cluster_size.sum()
    smoothed = (cluster_size + epsilon) / (n + k * epsilon) * n
    return cluster_size, embed_sum, embed_sum / smoothed.unsqueeze(1)
