"""aelab.metrics.sae on hand-computed cases: sparsity, fidelity, latent health, recovery, CE loss, geometry."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from aelab.metrics.sae import (
    ce_loss_recovered,
    dead_fraction,
    dense_fraction,
    dimensions_per_feature,
    feature_density,
    feature_density_histogram,
    feature_dimensionality,
    feature_norms,
    fraction_recovered,
    fvu,
    kl_to_clean,
    l0,
    max_cosine_similarity,
    mmcs,
    mse,
    superposition,
)

ACTS = torch.tensor([
    [0.0, 2.0, 0.0, 1.0],
    [0.0, 0.5, 0.0, 0.0],
    [0.0, 1.0, 0.0, 0.0],
    [0.0, 3.0, 0.1, 0.0],
])  # latent 0 dead; latent 1 fires on all 4; latent 2 on 1/4; latent 3 on 1/4


def test_l0_counts_nonzeros_per_example_then_averages():
    assert l0(ACTS).item() == (2 + 1 + 1 + 2) / 4
    assert l0(-ACTS).item() == 1.5  # negative codes (k-sparse AE) count too


def test_mse_and_fvu_by_hand():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 0.0]])
    recon = torch.tensor([[1.0, 1.0], [3.0, 4.0], [4.0, 0.0]])
    assert mse(x, recon).item() == pytest.approx(2.0 / 6)
    # total variance around the batch mean (3, 2): (4 + 0 + 4) + (0 + 4 + 4) = 16; residuals 1 + 1 = 2
    assert fvu(x, recon).item() == pytest.approx(2.0 / 16)
    assert fvu(x, x.mean(0).expand_as(x)).item() == pytest.approx(1.0)  # predicting the mean explains nothing
    assert fvu(x, x).item() == 0.0
    with pytest.raises(ValueError, match="same shape"):
        fvu(x, recon[:2])
    with pytest.raises(ValueError, match="zero variance"):
        fvu(torch.ones(3, 2), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="at least two"):
        fvu(x[:1], recon[:1])


def test_density_dead_and_dense_fractions():
    assert torch.equal(feature_density(ACTS), torch.tensor([0.0, 1.0, 0.25, 0.25]))
    assert dead_fraction(ACTS).item() == 0.25
    assert dense_fraction(ACTS).item() == 0.75  # three latents fire on more than 10%
    assert dense_fraction(ACTS, threshold=0.5).item() == 0.25
    with pytest.raises(ValueError, match="firing frequency"):
        dense_fraction(ACTS, threshold=1.0)


def test_feature_density_histogram_bins_log_frequencies_and_counts_dead_latents():
    acts = torch.zeros(100, 5)
    acts[:, 0] = 1.0  # frequency 1 -> log10 = 0
    acts[:10, 1] = 1.0  # 0.1 -> -1
    acts[:1, 2] = 1.0  # 0.01 -> -2
    acts[:10, 3] = 1.0  # -1
    hist = feature_density_histogram(acts, bins=4)
    assert hist.n_dead == 1 and torch.isinf(hist.log10_density[4])
    assert torch.allclose(hist.edges, torch.tensor([-2.0, -1.5, -1.0, -0.5, 0.0]))
    assert hist.counts.tolist() == [1, 0, 2, 1] and hist.counts.sum() == 4
    with pytest.raises(ValueError, match="bins"):
        feature_density_histogram(acts, bins=0)


def test_mmcs_and_fraction_recovered_by_hand():
    true = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    learned = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, -1.0]])
    # true e1: best cos 1 (row 0); true e2: best cos 1/sqrt(2) (row 1; row 2 is anti-aligned)
    assert torch.allclose(max_cosine_similarity(learned, true), torch.tensor([1.0, 1 / math.sqrt(2)]))
    assert mmcs(learned, true).item() == pytest.approx((1 + 1 / math.sqrt(2)) / 2)
    assert fraction_recovered(learned, true, 0.9).item() == 0.5
    assert fraction_recovered(learned, true, 0.7).item() == 1.0
    torch.manual_seed(0)
    dictionary = F.normalize(torch.randn(6, 4), dim=1)
    shuffled = dictionary[torch.randperm(6)] * torch.rand(6, 1).add(0.5)  # order and scale do not matter
    assert mmcs(shuffled, dictionary).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same dimension"):
        mmcs(torch.ones(2, 3), torch.ones(2, 4))


def test_ce_loss_recovered_formula_and_errors():
    assert ce_loss_recovered(2.0, 2.5, 7.0).item() == pytest.approx(0.9)
    assert ce_loss_recovered(2.0, 2.0, 7.0).item() == 1.0
    assert ce_loss_recovered(2.0, 7.0, 7.0).item() == 0.0
    assert ce_loss_recovered(torch.tensor(2.0), torch.tensor(8.0), torch.tensor(7.0)).item() == pytest.approx(-0.2)
    with pytest.raises(ValueError, match="undefined"):
        ce_loss_recovered(3.0, 3.1, 3.0)
    with pytest.raises(ValueError, match="scalar"):
        ce_loss_recovered(torch.ones(2), 1.0, 2.0)


def test_kl_to_clean_against_torch_distributions():
    torch.manual_seed(0)
    clean, other = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    p = torch.distributions.Categorical(logits=clean)
    q = torch.distributions.Categorical(logits=other)
    assert torch.allclose(kl_to_clean(clean, other), torch.distributions.kl_divergence(p, q).mean())
    assert kl_to_clean(clean, clean + 5.0).abs().item() < 1e-6  # a shift of the logits changes nothing
    with pytest.raises(ValueError, match="same"):
        kl_to_clean(clean, other[:, :2])


def test_feature_geometry_of_known_configurations():
    # columns are features: orthogonal pair + dropped feature; antipodal pair; regular pentagon in 2-D
    orth = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert torch.allclose(feature_norms(orth), torch.tensor([1.0, 1.0, 0.0]))
    assert torch.allclose(feature_dimensionality(orth), torch.tensor([1.0, 1.0, 0.0]))
    assert torch.allclose(superposition(orth), torch.zeros(3))
    anti = torch.tensor([[1.0, -1.0]])
    assert torch.allclose(feature_dimensionality(anti), torch.tensor([0.5, 0.5]))
    assert torch.allclose(superposition(anti), torch.ones(2))
    angles = 2 * math.pi * torch.arange(5) / 5
    pentagon = torch.stack([angles.cos(), angles.sin()])  # (2, 5)
    assert torch.allclose(feature_dimensionality(pentagon), torch.full((5,), 0.4), atol=1e-6)
    assert torch.allclose(superposition(pentagon), torch.full((5,), 1.5), atol=1e-6)  # sum of cos^2 over the others
    assert dimensions_per_feature(pentagon).item() == pytest.approx(2 / 5)
    batched = torch.stack([torch.cat([orth[:, :2], torch.zeros(2, 3)], 1), torch.cat([pentagon, torch.zeros(0, 5)])])
    assert feature_dimensionality(batched).shape == (2, 5)
    assert torch.allclose(feature_dimensionality(batched)[1], torch.full((5,), 0.4), atol=1e-6)
    # D_i is a ratio of squared lengths: a global scale of W leaves it unchanged
    assert torch.allclose(feature_dimensionality(pentagon * 3.0), feature_dimensionality(pentagon), atol=1e-6)
    with pytest.raises(ValueError, match="n_hidden"):
        feature_norms(torch.ones(3))


# -- MIG and DCI of SAE latents against known features ---------------------------------------------

def test_activity_levels_classes_and_invariance() -> None:
    from aelab.metrics.sae import activity_levels

    acts = torch.tensor([[0.0, 1.0], [0.2, 0.0], [0.4, 3.0], [0.6, 2.0], [0.8, 0.0]])
    assert activity_levels(acts, levels=2).tolist() == [[0, 1], [1, 0], [1, 2], [2, 1], [2, 0]]
    rescaled = torch.where(acts != 0, 5 * acts.pow(3) + 1, 0.0)  # increasing map of the non-zero values
    assert torch.equal(activity_levels(rescaled, 2), activity_levels(acts, 2))
    with pytest.raises(ValueError, match="levels"):
        activity_levels(acts, 0)


def test_sae_disentanglement_perfect_and_random_codes() -> None:
    from aelab.data import toy_features
    from aelab.metrics.sae import sae_disentanglement

    truth = toy_features(3000, 8, sparsity=0.8, seed=0).features                      # (N, 8)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    perfect = torch.zeros(3000, 20)                                                   # 8 live latents, 12 dead
    perfect[:, 3:11] = truth[:, perm] * torch.linspace(0.5, 4.0, 8)                   # permuted and rescaled
    good = sae_disentanglement(perfect, truth)
    assert good.live.tolist() == list(range(3, 11))
    assert good.mig.score > 0.95 and good.dci.disentanglement > 0.9 and good.dci.completeness > 0.9
    unrelated = toy_features(3000, 20, sparsity=0.8, seed=1).features
    bad = sae_disentanglement(unrelated, truth)
    assert good.dci.informativeness < 0.5
    # nothing to regress on: the lasso keeps (almost) no weight, the error is that of the mean, and
    # D and C of an all-but-zero importance matrix say nothing
    assert bad.mig.score < 0.02 and bad.dci.informativeness > 0.9 and bad.dci.importance.sum() < 0.05
    with pytest.raises(ValueError, match="never fire"):
        sae_disentanglement(perfect, torch.cat([truth, torch.zeros(3000, 1)], 1))
    with pytest.raises(ValueError, match="same examples"):
        sae_disentanglement(perfect[:10], truth)
