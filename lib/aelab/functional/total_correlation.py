"""The aggregate posterior q(z) from a minibatch, the KL decomposition of beta-TCVAE, ``permute_dims``.

Chen et al. 2018 ("Isolating Sources of Disentanglement in VAEs", eq. 2) split the average KL term
of the ELBO over the data set {x_1..x_N}, with q(z) = (1/N) sum_n q(z|x_n) the aggregate posterior:

    E_n KL(q(z|x_n) || p(z)) =  I_q(z; n)                          index-code mutual information
                              + KL(q(z) || prod_k q(z_k))          total correlation (TC)
                              + sum_k KL(q(z_k) || p(z_k))         dimension-wise KL

Each term is an expectation over z ~ q(z|x_n), n uniform, of differences of log q(z|x), log q(z),
sum_k log q(z_k) and log p(z). log q(z) needs all N examples; from a minibatch of M examples it is
estimated by a weighted mixture of the batch's posteriors, log q(z_i) ~= log sum_j w_ij q(z_i|x_j),
with one of two weightings (appendix C):

* minibatch weighted sampling (MWS, C.1): w_ij = 1 / (N M) for every j, the batch mixture divided
  by N. Chen et al. obtain it as a lower bound: over batches whose other M - 1 members are drawn
  i.i.d. from the data its density averages (q(z_i|x_i) + (M - 1) q(z_i)) / (N M) <= q(z_i), and with
  the whole data set as the batch it is exactly q(z_i) / N.
* minibatch stratified sampling (MSS, C.2): w_ii = 1 / N for the example's own posterior; of the
  other M - 1, one "last stratum" member gets (N - M + 1) / (N (M - 1)) and M - 2 get 1 / (M - 1)
  each (rows sum to 1). Here the last-stratum member of row i is the next example in the batch,
  (i + 1) mod M. For batches drawn uniformly without replacement (a shuffled data set) the MSS
  density is an unbiased estimate of q(z_i) (its log is, by Jensen, biased low).

The same weights estimate every marginal q(z_ik) from the per-dimension densities.

Shapes: z, mu, logvar (B, d); pairwise log-densities (B, B, d), entry [i, j, k] = log q(z_ik | x_j).
Results are per example (B,) or per example and dimension (B, d); no mean over the batch.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from aelab.functional.distributions import LOG_2PI, log_normal

ESTIMATORS = ("mws", "mss")


def log_density_gaussian(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(z_ik; mu_jk, exp(logvar_jk)) for every pair (i, j) and dimension k: (B, d), (M, d) -> (B, M, d).

    Entry [i, j, k] is the density of sample i's k-th coordinate under example j's posterior, so
    ``.sum(-1)`` gives log q(z_i | x_j) and ``[i, i]`` is sample i under its own posterior. Nothing is
    summed or averaged.
    """
    if z.dim() != 2 or mu.dim() != 2 or mu.shape != logvar.shape or z.shape[1] != mu.shape[1]:
        raise ValueError(
            "log_density_gaussian expects z (B, d) and mu, logvar (M, d) with the same d, got "
            f"{tuple(z.shape)}, {tuple(mu.shape)}, {tuple(logvar.shape)}"
        )
    z, mu, logvar = z[:, None, :], mu[None], logvar[None]  # (B, 1, d), (1, M, d)
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar))


def _check_sizes(batch_size: int, dataset_size: int, estimator: str) -> None:
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if dataset_size < batch_size:
        raise ValueError(
            f"dataset_size ({dataset_size}) must be at least the batch size ({batch_size}): "
            "pass the number of training examples N"
        )
    if estimator == "mss" and batch_size < 2:
        raise ValueError(
            "minibatch stratified sampling needs at least 2 examples per batch, got 1: choose a batch_size "
            "that leaves no last batch of one example, or use estimator='mws'"
        )


def minibatch_log_weights(batch_size: int, dataset_size: int, estimator: str = "mss",
                          dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> Tensor:
    """log w_ij of the minibatch estimate q(z_i) ~= sum_j w_ij q(z_i | x_j): (M, M), row i for sample i.

    "mws": every entry -log(N M). "mss": log(1/N) on the diagonal, log((N - M + 1) / (N (M - 1)))
    at column (i + 1) mod M, log(1 / (M - 1)) elsewhere (Chen et al. 2018, appendix C.2).
    """
    _check_sizes(batch_size, dataset_size, estimator)
    m, n = batch_size, dataset_size
    if estimator == "mws":
        return torch.full((m, m), -math.log(n * m), dtype=dtype, device=device)
    w = torch.full((m, m), 1.0 / (m - 1), dtype=torch.float64)
    rows = torch.arange(m)
    w[rows, (rows + 1) % m] = (n - m + 1) / (n * (m - 1))
    w[rows, rows] = 1.0 / n
    return w.log().to(dtype=dtype or torch.get_default_dtype(), device=device)


class AggregatePosterior(NamedTuple):
    """Minibatch estimates of the aggregate posterior at the batch's samples."""

    log_qz: Tensor
    """log q(z_i), (B,)."""
    log_qz_marginals: Tensor
    """log q(z_ik) for each dimension k, (B, d); ``.sum(1)`` is log prod_k q(z_ik)."""


def log_aggregate_posterior(z: Tensor, mu: Tensor, logvar: Tensor, dataset_size: int, estimator: str = "mss") -> AggregatePosterior:
    """Estimate log q(z_i) and each log q(z_ik) at the batch's own samples by MWS or MSS (Chen et al. 2018, app. C).

    z, mu, logvar: (B, d), sample i drawn from q(z | x_i) (row i of mu, logvar). ``dataset_size`` is
    N, the number of examples q(z) averages over. log q(z_i) = logsumexp_j [log w_ij + log q(z_i | x_j)]
    and log q(z_ik) = logsumexp_j [log w_ij + log q(z_ik | x_j)], weights from ``minibatch_log_weights``.
    """
    if z.shape != mu.shape:
        raise ValueError(f"z and mu must both be (B, d), one sample per posterior, got {tuple(z.shape)} and {tuple(mu.shape)}")
    pairs = log_density_gaussian(z, mu, logvar)  # (B, B, d)
    log_w = minibatch_log_weights(z.shape[0], dataset_size, estimator, dtype=z.dtype, device=z.device)  # (B, B)
    log_qz = torch.logsumexp(log_w + pairs.sum(-1), dim=1)
    log_qz_marginals = torch.logsumexp(log_w[:, :, None] + pairs, dim=1)
    return AggregatePosterior(log_qz, log_qz_marginals)


class KLDecomposition(NamedTuple):
    """The three terms of the averaged KL (Chen et al. 2018, eq. 2), one estimate per sample."""

    mi: Tensor
    """Index-code mutual information, log q(z_i | x_i) - log q(z_i), (B,)."""
    tc: Tensor
    """Total correlation, log q(z_i) - sum_k log q(z_ik), (B,)."""
    dim_kl: Tensor
    """Dimension-wise KL, sum_k log q(z_ik) - log p(z_i), (B,)."""


def kl_decomposition(z: Tensor, mu: Tensor, logvar: Tensor, dataset_size: int, estimator: str = "mss") -> KLDecomposition:
    """Index-code MI, total correlation and dimension-wise KL at the batch's samples (Chen et al. 2018, eq. 2).

    z (B, d) with z_i ~ q(z | x_i) = N(mu_i, diag exp(logvar_i)); p(z) = N(0, I). Returns per-sample
    terms (B,) whose batch means estimate the three expectations. They telescope: for either
    estimator, mi + tc + dim_kl = log q(z_i | x_i) - log p(z_i), the one-sample Monte Carlo estimate
    of KL(q(z | x_i) || p(z)). No mean over the batch.
    """
    log_qz, log_qz_marginals = log_aggregate_posterior(z, mu, logvar, dataset_size, estimator)
    log_prod = log_qz_marginals.sum(1)  # (B,)
    log_qz_x = log_normal(z, mu, logvar)  # (B,)
    log_pz = log_normal(z)  # (B,)
    return KLDecomposition(mi=log_qz_x - log_qz, tc=log_qz - log_prod, dim_kl=log_prod - log_pz)


def permute_dims(z: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Shuffle each latent dimension independently across the batch (Kim & Mnih 2018, algorithm 1): (B, d) -> (B, d).

    Column k of the result is column k of z under its own random permutation, so every marginal
    q(z_k) of the batch is kept and the dependence between dimensions is destroyed: the rows are
    samples of prod_k q(z_k). Differentiable with respect to z (a gather). Pass a ``generator``
    (on z's device) for reproducible permutations.
    """
    if z.dim() != 2:
        raise ValueError(f"permute_dims expects codes of shape (B, d), got {tuple(z.shape)}")
    b, d = z.shape
    # one random key per entry; sorting each column's keys gives an independent uniform permutation per column
    keys = torch.rand(b, d, generator=generator, device=z.device)
    order = keys.argsort(dim=0)  # (B, d)
    return z.gather(0, order)
