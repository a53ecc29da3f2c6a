"""Evaluating sparse autoencoders and the toy model of superposition.

Sparsity and fidelity of a code (L0, MSE, fraction of variance unexplained), latent health over a
window of activations (dead and dense fractions, the feature density histogram), recovery of known
features (mean max cosine similarity, fraction recovered), the language-model loss with the SAE
spliced in (CE-loss recovered, KL to the clean logits), and the feature geometry of Elhage et al.
2022 (feature norms, superposition, feature dimensionality).

Every function returns a 0-dim tensor unless its docstring gives a shape; the reduction is stated.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_2d(name: str, t: Tensor) -> None:
    if t.dim() != 2 or t.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (N, d) tensor (one row per example or feature), got shape {tuple(t.shape)}")


def _check_same(x: Tensor, recon: Tensor) -> None:
    _check_2d("x", x)
    if recon.shape != x.shape:
        raise ValueError(f"x and recon must have the same shape, got {tuple(x.shape)} and {tuple(recon.shape)}")


# -- sparsity and reconstruction -------------------------------------------------------------------

def l0(acts: Tensor) -> Tensor:
    """Mean number of non-zero latents per example: acts (N, d_sae) -> 0-dim (mean over examples)."""
    _check_2d("acts", acts)
    return (acts != 0).sum(-1).float().mean()


def mse(x: Tensor, recon: Tensor) -> Tensor:
    """Mean squared error, averaged over examples and features: (N, d), (N, d) -> 0-dim."""
    _check_same(x, recon)
    return (x - recon).pow(2).mean()


def fvu(x: Tensor, recon: Tensor) -> Tensor:
    """Fraction of variance unexplained: sum ||x - x_hat||^2 / sum ||x - mean(x)||^2.

    Both sums run over examples and features; mean(x) (d,) is the batch mean, so FVU = 1 for the
    reconstruction that always outputs the mean and 0 for a perfect one. x, recon (N, d), N >= 2.
    """
    _check_same(x, recon)
    if x.shape[0] < 2:
        raise ValueError("fvu needs at least two examples to measure the variance around their mean")
    total = (x - x.mean(0)).pow(2).sum()
    if total == 0:
        raise ValueError("fvu is undefined for inputs with zero variance (all rows equal)")
    return (x - recon).pow(2).sum() / total


# -- latent health over a window -------------------------------------------------------------------

def feature_density(acts: Tensor) -> Tensor:
    """Firing frequency of each latent, the fraction of examples where it is non-zero: (N, d_sae) -> (d_sae,)."""
    _check_2d("acts", acts)
    return (acts != 0).float().mean(0)


def dead_fraction(acts: Tensor) -> Tensor:
    """Fraction of latents that never fire in the window: acts (N, d_sae) -> 0-dim.

    "Dead" is relative to the window: pass enough examples (Gao et al. 2024 use 10M tokens) that a
    rare but alive latent fires at least once.
    """
    return (feature_density(acts) == 0).float().mean()


def dense_fraction(acts: Tensor, threshold: float = 0.1) -> Tensor:
    """Fraction of latents firing on more than ``threshold`` of the examples: acts (N, d_sae) -> 0-dim.

    Dense latents (firing on more than 10% of tokens, say) are rarely interpretable features.
    """
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold is a firing frequency in [0, 1), got {threshold}")
    return (feature_density(acts) > threshold).float().mean()


class DensityHistogram(NamedTuple):
    """Histogram of log10 firing frequencies of the latents that fired at least once."""

    counts: Tensor
    """Number of latents per bin, (bins,) long."""
    edges: Tensor
    """Bin edges in log10(frequency), (bins + 1,)."""
    log10_density: Tensor
    """log10 of each latent's firing frequency, -inf for dead latents, (d_sae,)."""
    n_dead: int
    """Latents that never fired in the window (not in any bin)."""


def feature_density_histogram(acts: Tensor, bins: int = 50, low: float | None = None) -> DensityHistogram:
    """Data for the feature density plot of Bricken et al. 2023: acts (N, d_sae).

    Bins log10(firing frequency) of the latents that fired between ``low`` (default log10(1/N),
    the rarest frequency the window can show) and 0 (firing on every example).
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    density = feature_density(acts)
    log_density = torch.log10(density)
    alive = density > 0
    lo = math.log10(1.0 / acts.shape[0]) if low is None else float(low)
    if lo >= 0:
        raise ValueError(f"low is a log10 frequency and must be < 0, got {lo}")
    counts = torch.histc(log_density[alive].clamp(lo, 0.0), bins=bins, min=lo, max=0.0).long()
    edges = torch.linspace(lo, 0.0, bins + 1)
    return DensityHistogram(counts=counts, edges=edges, log10_density=log_density, n_dead=int((~alive).sum()))


# -- recovery of known features --------------------------------------------------------------------

def max_cosine_similarity(learned: Tensor, true: Tensor) -> Tensor:
    """For each true feature, the largest cosine similarity to any learned one: (n, d), (m, d) -> (m,).

    Rows are directions (SAE decoder rows W_dec (d_sae, d_in); true features (F, d_in)).
    """
    _check_2d("learned", learned)
    _check_2d("true", true)
    if learned.shape[1] != true.shape[1]:
        raise ValueError(f"learned and true features need the same dimension, got {learned.shape[1]} and {true.shape[1]}")
    cos = F.normalize(true, dim=1) @ F.normalize(learned, dim=1).T  # (m, n)
    return cos.max(1).values


def mmcs(learned: Tensor, true: Tensor) -> Tensor:
    """Mean max cosine similarity (Sharkey et al. 2022): mean over true features of their best match.

    learned (n, d), true (m, d) -> 0-dim; 1 when every true direction is among the learned ones.
    """
    return max_cosine_similarity(learned, true).mean()


def fraction_recovered(learned: Tensor, true: Tensor, threshold: float = 0.9) -> Tensor:
    """Fraction of true features whose best-matching learned feature has cosine > ``threshold``: 0-dim."""
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {threshold}")
    return (max_cosine_similarity(learned, true) > threshold).float().mean()


# -- the language model with the SAE spliced in ----------------------------------------------------

def ce_loss_recovered(clean: float | Tensor, spliced: float | Tensor, zero_ablated: float | Tensor) -> Tensor:
    """(L_zero - L_sae) / (L_zero - L_clean): the share of the loss gap closed by the SAE.

    Three mean next-token cross-entropies of the language model: ``clean`` (unchanged activations),
    ``spliced`` (the SAE reconstruction in place of the activations at the layer) and
    ``zero_ablated`` (zeros in place of them). 1: as good as clean; 0: as bad as zero-ablation;
    it can leave [0, 1] (a reconstruction worse than zeros is negative).
    """
    clean, spliced, zero = (torch.as_tensor(v, dtype=torch.float64) for v in (clean, spliced, zero_ablated))
    if not (clean.dim() == spliced.dim() == zero.dim() == 0):
        raise ValueError("ce_loss_recovered takes three scalar losses (means over tokens)")
    if torch.isclose(zero, clean, rtol=0.0, atol=1e-12):
        raise ValueError(f"zero-ablation loss {float(zero)} equals the clean loss: the layer does not matter, "
                         "and the recovered fraction is undefined")
    return (zero - spliced) / (zero - clean)


def kl_to_clean(clean_logits: Tensor, logits: Tensor) -> Tensor:
    """KL(p_clean || p) of next-token distributions: logits (..., V) -> 0-dim.

    Summed over the vocabulary, averaged over every other dimension (batch and positions).
    """
    if clean_logits.shape != logits.shape or clean_logits.dim() < 1:
        raise ValueError(f"clean_logits and logits need the same (..., vocab) shape, got {tuple(clean_logits.shape)} "
                         f"and {tuple(logits.shape)}")
    log_p = F.log_softmax(clean_logits.float(), dim=-1)
    log_q = F.log_softmax(logits.float(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


# -- feature geometry of the toy model (Elhage et al. 2022) ----------------------------------------

def _features(W: Tensor) -> Tensor:
    if W.dim() < 2:
        raise ValueError(f"W must be (..., n_hidden, n_features) (features as columns), got shape {tuple(W.shape)}")
    return W.transpose(-1, -2)  # (..., F, H): one row per feature


def feature_norms(W: Tensor) -> Tensor:
    """||W_i||, the length of each feature's embedding: W (..., n_hidden, F) -> (..., F).

    Elhage et al. 2022: ||W_i|| near 1 means feature i is represented, near 0 that it is dropped.
    """
    return _features(W).norm(dim=-1)


def _interference(W: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(sum_j (W_hat_i . W_j)^2 over all j, ||W_i||^2), each (..., F)."""
    feats = _features(W)
    sq_norms = feats.pow(2).sum(-1)
    unit = feats / sq_norms.sqrt().clamp_min(eps).unsqueeze(-1)
    overlaps = unit @ feats.transpose(-1, -2)  # (..., F, F): W_hat_i . W_j
    return overlaps.pow(2).sum(-1), sq_norms


def superposition(W: Tensor, eps: float = 1e-8) -> Tensor:
    """sum_{j != i} (W_hat_i . W_j)^2: how much other features interfere with feature i: (..., H, F) -> (..., F).

    Elhage et al. 2022 ("Toy Models of Superposition", the superposition plot): 0 when feature i
    has a dimension to itself, large when it shares directions. A dropped feature (W_i = 0) gets 0.
    """
    total, sq_norms = _interference(W, eps)
    return (total - sq_norms * (sq_norms > eps**2)).clamp_min(0.0)


def feature_dimensionality(W: Tensor, eps: float = 1e-8) -> Tensor:
    """D_i = ||W_i||^2 / sum_j (W_hat_i . W_j)^2, the fraction of a dimension feature i gets: (..., H, F) -> (..., F).

    Elhage et al. 2022, "feature dimensionality": 1 for a feature with its own dimension, 1/2 for
    an antipodal pair, 2/5 in a pentagon, 0 for a dropped feature. The sum j runs over all
    features, i included.
    """
    total, sq_norms = _interference(W, eps)
    return torch.where(sq_norms > eps**2, sq_norms / total.clamp_min(eps**2), torch.zeros_like(sq_norms))


def dimensions_per_feature(W: Tensor) -> Tensor:
    """D* = n_hidden / ||W||_F^2 (Elhage et al. 2022): hidden dimensions per represented feature: (..., H, F) -> (...)."""
    if W.dim() < 2:
        raise ValueError(f"W must be (..., n_hidden, n_features), got shape {tuple(W.shape)}")
    return W.shape[-2] / W.pow(2).sum((-1, -2))


# -- disentanglement of SAE latents against known features (the bridge to lecture 06) -------------

def activity_levels(acts: Tensor, levels: int = 4) -> Tensor:
    """Discretise sparse activations into classes: 0 where a column is 0, else 1..``levels`` by magnitude.

    acts (N, d) -> (N, d) long. The non-zero values of each column are cut at their quantiles into
    ``levels`` equally filled classes, so the classes depend only on the order of the values: any
    increasing rescaling of a column (an SAE latent's scale, a shrunk magnitude) gives the same classes.
    """
    _check_2d("acts", acts)
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    acts = acts.detach().float().cpu()
    out = torch.zeros(acts.shape, dtype=torch.long)
    for j in range(acts.shape[1]):
        on = acts[:, j] != 0
        if on.any():
            ranks = acts[on, j].argsort().argsort().float()  # 0 .. n_on - 1
            out[on, j] = 1 + (ranks * levels / on.sum()).long().clamp(max=levels - 1)
    return out


class SAEDisentanglement(NamedTuple):
    """MIG and DCI of SAE latents against a toy model's true features (``sae_disentanglement``)."""

    mig: object
    """``aelab.metrics.MIGResult`` of the discretised live latents against the discretised features."""
    dci: object
    """``aelab.metrics.DCIResult`` of the live latents (continuous, lasso) against the discretised features."""
    live: Tensor
    """Indices of the latents that fired in the sample (the codes both scores use), (d_live,) long."""


def sae_disentanglement(latents: Tensor, true_features: Tensor, levels: int = 4, dci_alpha: float = 0.05) -> SAEDisentanglement:
    """How disentangled SAE latents are with respect to known features: MIG and DCI (Chen et al. 2018;
    Eastwood & Williams 2018, lecture 06) with the true features as the factors.

    latents (N, d_sae): the SAE code of N examples; true_features (N, F): the true feature
    activations of the same examples (``ToyFeatures.features``). Each feature becomes a factor with
    ``levels + 1`` classes (``activity_levels``: off, then magnitude quantiles). MIG uses the latents
    discretised the same way, so a latent that fires exactly when its feature does, increasing in its
    magnitude, carries all of the feature's information; DCI regresses the factors on the continuous
    latents with a lasso. Latents that never fire in the sample are left out (they carry nothing, and
    would only change the entropy base of the completeness). One latent per feature gives MIG, D and
    C near 1 and a low informativeness error; a code unrelated to the features gives MIG near 0 and
    an informativeness error near 1 (its importance matrix is about 0, so D and C mean nothing there).
    """
    from aelab.metrics.disentanglement import dci, mig

    _check_2d("latents", latents)
    _check_2d("true_features", true_features)
    if latents.shape[0] != true_features.shape[0]:
        raise ValueError(f"latents and true_features must describe the same examples, got {latents.shape[0]} and "
                         f"{true_features.shape[0]} rows")
    silent = (true_features != 0).sum(0) == 0
    if silent.any():
        raise ValueError(f"true feature(s) {silent.nonzero().flatten().tolist()[:10]} never fire in these "
                         f"{true_features.shape[0]} examples: their factor is constant; pass more examples")
    live = ((latents != 0).any(0)).nonzero().flatten()
    if live.numel() < 2:
        raise ValueError(f"only {live.numel()} latent(s) fire in these examples; MIG and DCI need at least 2")
    codes = latents.detach().float().cpu()[:, live]
    factors = activity_levels(true_features, levels)
    return SAEDisentanglement(
        mig=mig(activity_levels(codes, levels).double(), factors, bins=levels + 1),
        dci=dci(codes, factors, alpha=dci_alpha),
        live=live,
    )
