"""Disentanglement metrics on synthetic codes with known answers, against brute-force counts and
second formulas, and the sampling metrics on toy data sets whose observations are the factors.

Known answers: codes equal to the factors score (near) 1; a permuted, rescaled and shifted copy
scores the same where the metric is invariant to that; random codes score (near) chance; codes
that rotate pairs of factors into each other land in between.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import scipy.stats
import torch

import aelab
from aelab.metrics import (
    beta_vae_score,
    dci,
    discretize,
    explicitness,
    factor_entropies,
    factor_vae_score,
    mean_representation,
    mig,
    modularity,
    mutual_information_matrix,
    sap,
)

SIZES = (4, 5, 3)


def make_factors(n=2000, sizes=SIZES, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, s, n) for s in sizes], axis=1)


def rotation45():
    """Rotates factors 0 and 1 into each other by 45 degrees, keeps factor 2."""
    c = s = math.sqrt(0.5)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def code_sets(factors, seed=1):
    """The four kinds of codes of the tests, (N, 3) each."""
    rng = np.random.default_rng(seed)
    standard = (factors - factors.mean(0)) / factors.std(0)
    return {
        "identity": factors.astype(np.float64),
        "permuted_rescaled": factors[:, [2, 0, 1]] * np.array([3.0, -0.5, 10.0]) + 7.0,
        "random": rng.normal(size=factors.shape),
        "rotated": standard @ rotation45().T,
    }


@pytest.fixture(scope="module")
def data():
    factors = make_factors()
    return factors, code_sets(factors)


# -- counting: discretisation, MI, entropy, MIG ------------------------------------------------------

def brute_force_mi(a, b):
    """I(a; b) in nats by counting pairs with a Counter."""
    n = len(a)
    pa, pb, pab = Counter(a), Counter(b), Counter(zip(a, b))
    return sum(c / n * math.log((c / n) / (pa[x] / n * pb[y] / n)) for (x, y), c in pab.items())


def brute_force_entropy(a):
    n = len(a)
    return -sum(c / n * math.log(c / n) for c in Counter(a).values())


def test_discretize_uses_equal_width_bins_per_dimension():
    codes = np.array([[0.0, 5.0, 1.0], [1.3, 5.0, 2.0], [2.6, 5.0, 2.5], [4.0, 5.0, 3.0]])
    out = discretize(codes, bins=4)
    assert out.tolist() == [[0, 0, 0], [1, 0, 2], [2, 0, 3], [3, 0, 3]]  # constant column -> bin 0, max -> last bin
    affine = discretize(codes * np.array([-2.0, 1.0, 3.0]) + 1.0, bins=4)
    assert (affine[:, 0] == 3 - out[:, 0]).all()  # a negative scale reverses the bins (values off the edges)
    with pytest.raises(ValueError, match="bins must be >= 2"):
        discretize(codes, bins=1)


def test_mig_agrees_with_brute_force_counting():
    rng = np.random.default_rng(3)
    n = 400
    factors = np.stack([rng.integers(0, 3, n), rng.choice(4, n, p=[0.5, 0.2, 0.2, 0.1])], axis=1)
    codes = np.stack([
        factors[:, 0],  # a copy of factor 0
        np.where(rng.random(n) < 0.7, factors[:, 1] % 3, rng.integers(0, 3, n)),  # noisy view of factor 1
        rng.integers(0, 3, n),  # noise
        (factors[:, 0] + factors[:, 1]) % 3,  # a mixture
    ], axis=1).astype(np.float64)
    assert (discretize(codes, bins=3) == codes).all()  # three bins keep the three values apart
    result = mig(codes, factors, bins=3)
    mi = np.array([[brute_force_mi(codes[:, j].tolist(), factors[:, k].tolist()) for k in range(2)] for j in range(4)])
    h = np.array([brute_force_entropy(factors[:, k].tolist()) for k in range(2)])
    assert np.allclose(result.mutual_information, mi) and np.allclose(result.entropy, h)
    assert np.allclose(factor_entropies(factors), h)
    gaps = [(sorted(mi[:, k])[-1] - sorted(mi[:, k])[-2]) / h[k] for k in range(2)]
    assert np.allclose(result.per_factor, gaps) and math.isclose(result.score, np.mean(gaps))
    # a known-wrong normalisation, by the largest possible entropy log C_k, differs for the skewed factor 1
    wrong = (sorted(mi[:, 1])[-1] - sorted(mi[:, 1])[-2]) / math.log(4)
    assert not math.isclose(result.per_factor[1], wrong, rel_tol=1e-3)


def test_mig_known_answers(data):
    factors, codes = data
    scores = {name: mig(c, factors).score for name, c in codes.items()}
    assert scores["identity"] > 0.98
    assert math.isclose(scores["permuted_rescaled"], scores["identity"], rel_tol=1e-9)
    assert scores["random"] < 0.02
    assert 0.15 < scores["rotated"] < 0.8


def test_mutual_information_matrix_shapes_and_bias_scale(data):
    factors, codes = data
    mi = mutual_information_matrix(codes["random"], factors)
    assert mi.shape == (3, 3) and (mi >= 0).all()
    # plug-in bias of independent variables is about (bins - 1)(C - 1) / (2N)
    expected = np.array([(20 - 1) * (s - 1) / (2 * len(factors)) for s in SIZES])
    assert (mi < 4 * expected[None, :]).all()


# -- DCI -------------------------------------------------------------------------------------------

def dci_from_importance(r):
    """D and C from an importance matrix with scipy's entropy: a second formula for the same numbers."""
    d, k = r.shape
    d_j = np.array([1 - scipy.stats.entropy(row, base=k) if row.sum() > 0 else 0.0 for row in r])
    c_k = np.array([1 - scipy.stats.entropy(col, base=d) if col.sum() > 0 else 0.0 for col in r.T])
    rho = r.sum(1) / r.sum()
    return float((rho * d_j).sum()), float(c_k.mean())


@pytest.mark.parametrize("regressor", ["lasso", "gbt"])
def test_dci_known_answers(data, regressor):
    factors, codes = data
    kw = dict(regressor=regressor, n_estimators=30) if regressor == "gbt" else {}
    n = 1000 if regressor == "gbt" else len(factors)  # fewer examples keep the trees fast
    res = {name: dci(c[:n], factors[:n], **kw) for name, c in codes.items() if name != "permuted_rescaled" or regressor == "lasso"}
    ident = res["identity"]
    assert ident.disentanglement > 0.98 and ident.completeness > 0.98 and ident.informativeness < 0.1
    assert ident.importance.shape == (3, 3) and (np.argmax(ident.importance, 0) == [0, 1, 2]).all()
    assert res["random"].disentanglement < 0.1 and res["random"].completeness < 0.1
    assert res["random"].informativeness > 0.9  # nothing to predict from: about the factor's std
    rot = res["rotated"]
    assert 0.1 < rot.disentanglement < 0.9 and 0.1 < rot.completeness < 0.9
    assert rot.informativeness < 0.2  # a rotation keeps the information, only spreads it
    for r in res.values():
        if r.importance.sum() > 0:
            d, c = dci_from_importance(r.importance)
            assert math.isclose(r.disentanglement, d, abs_tol=1e-9) and math.isclose(r.completeness, c, abs_tol=1e-9)
    if regressor == "lasso":
        perm = res["permuted_rescaled"]
        assert np.allclose(perm.importance, ident.importance[[2, 0, 1]])  # rows follow the codes
        assert math.isclose(perm.disentanglement, ident.disentanglement) and math.isclose(perm.completeness, ident.completeness)


def test_dci_is_deterministic_and_rejects_bad_input(data):
    factors, codes = data
    a = dci(codes["rotated"][:500], factors[:500], regressor="gbt", n_estimators=10, seed=3)
    b = dci(codes["rotated"][:500], factors[:500], regressor="gbt", n_estimators=10, seed=3)
    assert np.array_equal(a.importance, b.importance)
    with pytest.raises(ValueError, match="regressor must be"):
        dci(codes["identity"], factors, regressor="forest")
    with pytest.raises(ValueError, match="at least 2 code dimensions and 2 factors"):
        dci(codes["identity"][:, :1], factors)
    with pytest.raises(ValueError, match="constant on the training split"):
        dci(codes["identity"], np.concatenate([factors, np.zeros((len(factors), 1), dtype=int)], 1))


# -- SAP -------------------------------------------------------------------------------------------

def test_sap_known_answers_and_score_matrix(data):
    factors, codes = data
    res = {name: sap(c, factors) for name, c in codes.items()}
    assert res["identity"].score > 0.98
    assert math.isclose(res["permuted_rescaled"].score, res["identity"].score, rel_tol=1e-9)
    assert res["random"].score < 0.02
    assert 0.15 < res["rotated"].score < 0.8
    # S_jk is the R^2 of the one-variable linear regression
    c = codes["rotated"]
    r2 = np.array([[scipy.stats.linregress(c[:, j], factors[:, k]).rvalue ** 2 for k in range(3)] for j in range(3)])
    assert np.allclose(res["rotated"].scores, r2)


def test_sap_discrete_factors_use_chance_corrected_balanced_accuracy(data):
    factors, codes = data
    ident = sap(codes["identity"], factors, discrete=(0, 1, 2))
    assert ident.scores[[0, 1, 2], [0, 1, 2]].min() > 0.99  # the matching code predicts perfectly
    assert np.abs(ident.scores[~np.eye(3, dtype=bool)]).max() < 0.1  # the others at chance: about 0
    assert ident.score > 0.9
    assert abs(sap(codes["random"], factors, discrete=(0, 1, 2)).score) < 0.1
    with pytest.raises(ValueError, match="outside"):
        sap(codes["identity"], factors, discrete=(3,))


# -- modularity and explicitness -------------------------------------------------------------------

def test_modularity_known_answers_and_formula(data):
    factors, codes = data
    res = {name: modularity(c, factors) for name, c in codes.items()}
    assert res["identity"].score > 0.98
    assert math.isclose(res["permuted_rescaled"].score, res["identity"].score, rel_tol=1e-9)
    # each random code still depends "mostly" on one factor, however weakly: well above 0, below aligned codes
    assert res["random"].score < res["identity"].score - 0.2
    assert res["rotated"].score < res["identity"].score - 0.1
    m = res["rotated"].mutual_information
    for j in range(3):  # Ridgeway & Mozer, eq. 2, term by term
        theta = m[j].max()
        delta = sum((m[j, k] - (theta if k == m[j].argmax() else 0.0)) ** 2 for k in range(3)) / (theta**2 * 2)
        assert math.isclose(res["rotated"].per_code[j], 1 - delta)
    constant = np.concatenate([codes["identity"], np.zeros((len(factors), 1))], 1)
    out = modularity(constant, factors)
    assert np.isnan(out.per_code[3]) and math.isclose(out.score, res["identity"].score)


def test_explicitness_known_answers(data):
    factors, codes = data
    res = {name: explicitness(c, factors) for name, c in codes.items()}
    assert res["identity"].score > 0.95
    assert abs(res["permuted_rescaled"].score - res["identity"].score) < 1e-3
    assert abs(res["random"].score - 0.5) < 0.05  # an AUC: chance is 0.5
    # a rotation keeps every factor linearly decodable: explicitness does not see entanglement
    assert res["rotated"].score > 0.95
    assert res["identity"].per_factor.shape == (3,)


def test_metrics_reject_bad_input(data):
    factors, codes = data
    with pytest.raises(ValueError, match=r"codes must have shape \(N, d\)"):
        mig(codes["identity"][:, 0], factors)
    with pytest.raises(ValueError, match="same N examples"):
        sap(codes["identity"][:10], factors)
    with pytest.raises(TypeError, match="discrete class indices"):
        modularity(codes["identity"], factors + 0.5)
    with pytest.raises(ValueError, match="single value"):
        mig(codes["identity"], np.concatenate([factors, np.ones((len(factors), 1), dtype=int)], 1))
    torch_codes = torch.from_numpy(codes["identity"]).float()
    assert math.isclose(mig(torch_codes, torch.from_numpy(factors)).score, mig(codes["identity"], factors).score)


# -- sampling metrics on a toy data set ----------------------------------------------------------------

class ToyFactors:
    """Observations are the factor indices themselves, as floats: represent(x) decides the codes."""

    factor_sizes = SIZES

    def __init__(self):
        self.calls = []

    def images_of(self, factors):
        self.calls.append(len(factors))
        return factors.double()


REPRESENTATIONS = {
    "identity": lambda x: x,
    "permuted_rescaled": lambda x: x[:, [2, 0, 1]] * torch.tensor([3.0, -0.5, 10.0], dtype=x.dtype) + 7.0,
    "rotated": lambda x: x @ torch.tensor(rotation45().T),
}


def random_codes(seed=0):
    g = torch.Generator().manual_seed(seed)
    return lambda x: torch.randn(x.shape[0], 3, generator=g)


@pytest.mark.parametrize("metric", [factor_vae_score, beta_vae_score])
def test_sampling_metrics_known_answers(metric):
    kw = dict(n_train=300, n_eval=200, batch_size=32)
    scores = {name: metric(rep, ToyFactors(), **kw).score for name, rep in REPRESENTATIONS.items()}
    assert scores["identity"] == 1.0 and scores["permuted_rescaled"] == 1.0
    assert abs(metric(random_codes(), ToyFactors(), **kw).score - 1 / 3) < 0.1  # chance: one of K = 3 factors
    assert 1 / 3 + 0.15 < scores["rotated"] < 0.99


def test_factor_vae_score_votes_and_pruning():
    def with_collapsed(x):  # three informative codes and two with (almost) no variance
        return torch.cat([x, 1e-3 * torch.ones(x.shape[0], 2, dtype=x.dtype)], 1)

    res = factor_vae_score(with_collapsed, ToyFactors(), n_train=100, n_eval=50, batch_size=16)
    assert res.active.tolist() == [True, True, True, False, False]
    assert res.votes.shape == (5, 3) and res.votes[3:].sum() == 0 and res.votes.sum() == 100
    assert (np.diag(res.votes[:3]) == res.votes[:3].sum(1)).all()  # code j always voted for factor j
    std = np.array([np.std(np.arange(s), ddof=0) for s in SIZES])
    assert np.allclose(res.global_std[:3], std, rtol=0.1)
    none = factor_vae_score(lambda x: torch.zeros(x.shape[0], 2), ToyFactors(), n_train=10, n_eval=10)
    assert none.score == 0.0 and not none.active.any()


def test_sampling_metrics_are_deterministic_and_chunked():
    rep = REPRESENTATIONS["rotated"]
    a = factor_vae_score(rep, ToyFactors(), n_train=50, n_eval=50, batch_size=8, seed=5)
    b = factor_vae_score(rep, ToyFactors(), n_train=50, n_eval=50, batch_size=8, seed=5)
    assert a.score == b.score and np.array_equal(a.votes, b.votes)
    toy = ToyFactors()
    beta_vae_score(rep, toy, n_train=20, n_eval=10, batch_size=8, seed=5, chunk=64)
    assert max(toy.calls) <= 64 and sum(toy.calls) == 2 * (20 + 10) * 8
    with pytest.raises(TypeError, match="factor_sizes.*images_of"):
        factor_vae_score(rep, object())


# -- on dSprites -----------------------------------------------------------------------------------

def centroid_and_area(x):
    """Hand-made codes of dSprites images: the sprite's centre (x, y) and its area."""
    img = x[:, 0]
    mass = img.sum((1, 2)).clamp_min(1.0)
    r = torch.arange(img.shape[-1], dtype=img.dtype)
    cx = (img.sum(1) * r).sum(1) / mass
    cy = (img.sum(2) * r).sum(1) / mass
    return torch.stack([cx / 10, cy / 10, mass / 100], 1)


def test_dsprites_images_of_and_factor_vae_score():
    ds = aelab.data.dsprites()
    f = ds.sample_factors(6, seed=2)
    assert torch.equal(ds.images_of(f), ds.images(ds.index_of(f)))
    assert torch.equal(ds.images_of(f.numpy()), ds.images_of(f))
    with pytest.raises(ValueError, match=r"shape \(n, 5\)"):
        ds.images_of(f[:, :4])
    with pytest.raises(ValueError, match="must lie in"):
        ds.images_of(torch.tensor([[3, 0, 0, 0, 0]]))
    res = factor_vae_score(centroid_and_area, ds, n_train=100, n_eval=100, batch_size=32, n_variance=1000)
    assert res.score > 0.4  # chance is 0.2: posX and posY are found by the centroid codes
    assert res.votes[0].argmax() == 3 and res.votes[1].argmax() == 4


def test_mean_representation_of_a_vae():
    torch.manual_seed(0)
    model = aelab.build("beta_vae", channels=4, hidden=(8,), latent_dim=3).train()
    represent = mean_representation(model)
    x = torch.rand(5, 1, 64, 64)
    codes = represent(x)
    assert isinstance(codes, np.ndarray) and codes.shape == (5, 3) and codes.dtype == np.float64
    assert np.allclose(codes, model.encode(x)[0].detach().double().numpy(), atol=1e-6)
    assert model.training  # the caller's mode is restored
    assert np.allclose(represent(x), codes)  # the mean, no sampling
