"""Disentanglement metrics: how well codes separate the ground-truth factors of a data set.

Metrics on a sample of codes and their factors, ``codes (N, d)`` (any real numbers) and
``factors (N, K)`` (class indices of discrete factors, as ``DSprites.factors`` gives them):

* ``mig``: mutual information gap (Chen et al. 2018), on codes discretised into equal-width bins.
* ``dci``: disentanglement, completeness, informativeness (Eastwood & Williams 2018), from the
  importance matrix of lasso or gradient-boosted-tree regressors.
* ``sap``: separated attribute predictability (Kumar, Sattigeri & Balakrishnan 2018).
* ``modularity`` and ``explicitness`` (Ridgeway & Mozer 2018).

Metrics that generate their own data take ``represent(x) -> codes (n, d)`` and a data set that
draws observations with chosen factors (``FactorDataset``: ``factor_sizes`` and ``images_of``):

* ``factor_vae_score`` (Kim & Mnih 2018): majority vote on the least-variant normalised dimension.
* ``beta_vae_score`` (Higgins et al. 2017): linear classifier on mean absolute code differences.

Every function returns a dataclass with the score and its parts, and is deterministic given
``seed``. Scores are in [0, 1], higher is better, except DCI's informativeness (an error). Chance
levels differ: about 0 for MIG, DCI, SAP; about 1/K for the two classifier scores; 0.5 for
explicitness (an AUC); and modularity is well above 0 for random codes (it only asks that each code
depend mainly on one factor, however weakly).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

Represent = Callable[[torch.Tensor], Any]


# -- inputs ------------------------------------------------------------------------------------------

def _codes(codes: Any) -> np.ndarray:
    """Codes as a float64 array (N, d); torch tensors are detached and moved to the CPU."""
    if isinstance(codes, torch.Tensor):
        codes = codes.detach().cpu().numpy()
    codes = np.asarray(codes, dtype=np.float64)
    if codes.ndim != 2:
        raise ValueError(f"codes must have shape (N, d), got {codes.shape}; use codes.reshape(len(codes), -1)")
    if not np.isfinite(codes).all():
        raise ValueError("codes contain NaN or infinite values")
    return codes


def _factors(factors: Any, n: int | None = None) -> np.ndarray:
    """Factors as int64 class labels 0..C_k - 1 per column (N, K), whatever integers they held."""
    if isinstance(factors, torch.Tensor):
        factors = factors.detach().cpu().numpy()
    factors = np.asarray(factors)
    if factors.ndim != 2:
        raise ValueError(f"factors must have shape (N, K), one column per factor, got {factors.shape}")
    if n is not None and factors.shape[0] != n:
        raise ValueError(f"codes and factors must describe the same N examples, got {n} and {factors.shape[0]}")
    if not np.issubdtype(factors.dtype, np.integer):
        if not np.issubdtype(factors.dtype, np.floating) or not np.array_equal(factors, np.round(factors)):
            raise TypeError(
                f"factors must be discrete class indices (integers), got {factors.dtype} values; "
                "pass the factor classes (e.g. DSprites.factors), not their continuous values"
            )
    return np.stack([np.unique(col, return_inverse=True)[1].reshape(-1) for col in factors.T], axis=1).astype(np.int64)


def _inputs(codes: Any, factors: Any) -> tuple[np.ndarray, np.ndarray]:
    c = _codes(codes)
    f = _factors(factors, c.shape[0])
    if c.shape[0] < 2:
        raise ValueError(f"need at least 2 examples, got {c.shape[0]}")
    return c, f


def _split(n: int, train_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A random train/test split of n indices."""
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must lie in (0, 1), got {train_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    cut = min(max(int(round(train_fraction * n)), 1), n - 1)
    return order[:cut], order[cut:]


def _standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Z-score columns with the training split's mean and std (constant columns are only centred)."""
    mean, std = train.mean(0), train.std(0)
    std = np.where(std > 0, std, 1.0)
    return [(a - mean) / std for a in (train, *others)]


# -- information by counting -------------------------------------------------------------------------

def discretize(codes: Any, bins: int = 20) -> np.ndarray:
    """Equal-width binning of each code dimension over its range: (N, d) floats -> (N, d) ints in [0, bins).

    Bin b of dimension j holds values in [min_j + b w_j, min_j + (b + 1) w_j), w_j = (max_j - min_j) / bins,
    the maximum going to the last bin; a constant dimension falls in bin 0. Affine maps of a dimension
    (a x + c, a != 0) keep its partition of the examples, except that a value lying exactly on a bin
    edge may change sides (bins are closed on the left; a negative a reverses them).
    """
    c = _codes(codes)
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    lo, hi = c.min(0), c.max(0)
    width = np.where(hi > lo, hi - lo, 1.0)
    return np.clip(np.floor((c - lo) / width * bins), 0, bins - 1).astype(np.int64)


def _mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """I(a; b) in nats of two label arrays (N,) from their joint histogram (plug-in estimate)."""
    na, nb = a.max() + 1, b.max() + 1
    joint = np.bincount(a * nb + b, minlength=na * nb).reshape(na, nb) / a.shape[0]
    pa, pb = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / (pa @ pb)[nz])).sum())


def _entropy(labels: np.ndarray) -> float:
    """H(labels) in nats (plug-in)."""
    p = np.bincount(labels) / labels.shape[0]
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def mutual_information_matrix(codes: Any, factors: Any, bins: int = 20) -> np.ndarray:
    """I(code_j; factor_k) in nats for every pair, codes discretised by ``discretize``: (d, K).

    Plug-in estimates from counts over the N examples (biased upwards by about (bins - 1)(C_k - 1) / (2N)).
    """
    c, f = _inputs(codes, factors)
    binned = discretize(c, bins)
    return np.array([[_mutual_information(binned[:, j], f[:, k]) for k in range(f.shape[1])] for j in range(c.shape[1])])


def factor_entropies(factors: Any) -> np.ndarray:
    """H(factor_k) in nats of each factor's empirical distribution: (N, K) -> (K,)."""
    f = _factors(factors)
    return np.array([_entropy(f[:, k]) for k in range(f.shape[1])])


# -- MIG -----------------------------------------------------------------------------------------------

@dataclass
class MIGResult:
    """The mutual information gap and what it is made of."""

    score: float
    """Mean over factors of the normalised gap, in [0, 1]."""
    per_factor: np.ndarray
    """(I(top code; v_k) - I(second code; v_k)) / H(v_k) for each factor, (K,)."""
    mutual_information: np.ndarray
    """I(code_j; factor_k) in nats, (d, K)."""
    entropy: np.ndarray
    """H(factor_k) in nats, (K,)."""


def mig(codes: Any, factors: Any, bins: int = 20) -> MIGResult:
    """Mutual information gap (Chen et al. 2018, eq. 6), with codes discretised into ``bins`` equal-width bins.

    MIG = (1/K) sum_k (I(z_(1); v_k) - I(z_(2); v_k)) / H(v_k), where z_(1), z_(2) are the two code
    dimensions with the largest mutual information with factor v_k. Chen et al. estimate I(z_j; v_k)
    from the posterior q(z|x); here it is counted on binned codes, as in Locatello et al. 2019.
    codes (N, d), factors (N, K) class indices -> a mean over factors.
    """
    c, f = _inputs(codes, factors)
    if c.shape[1] < 2:
        raise ValueError("MIG needs at least 2 code dimensions (it is a gap between the best two)")
    mi = mutual_information_matrix(c, f, bins)
    h = np.array([_entropy(f[:, k]) for k in range(f.shape[1])])
    if (h == 0).any():
        raise ValueError(
            f"factor(s) {np.flatnonzero(h == 0).tolist()} take a single value in this sample: their entropy is 0 "
            "and MIG is undefined; drop them or sample more examples"
        )
    top = np.sort(mi, axis=0)[::-1]  # (d, K), descending per factor
    gap = (top[0] - top[1]) / h
    return MIGResult(score=float(gap.mean()), per_factor=gap, mutual_information=mi, entropy=h)


# -- DCI -----------------------------------------------------------------------------------------------

@dataclass
class DCIResult:
    """Disentanglement, completeness and informativeness (Eastwood & Williams 2018)."""

    disentanglement: float
    """sum_j rho_j D_j: how much each code is devoted to one factor, weighted by its total importance, in [0, 1]."""
    completeness: float
    """Mean over factors of C_k: how much each factor is captured by one code, in [0, 1]."""
    informativeness: float
    """Mean over factors of the test NRMSE of the regressor (RMSE / training std of the factor):
    an error, lower is better; 0 perfect, about 1 for codes that say nothing about the factor."""
    importance: np.ndarray
    """R_jk: importance of code j for predicting factor k, (d, K)."""
    disentanglement_per_code: np.ndarray
    """D_j = 1 - H_K(P_j.), (d,)."""
    code_weights: np.ndarray
    """rho_j = sum_k R_jk / sum_jk R_jk, (d,)."""
    completeness_per_factor: np.ndarray
    """C_k = 1 - H_d(P~_.k), (K,)."""
    informativeness_per_factor: np.ndarray
    """Test NRMSE per factor, (K,)."""


def _normalised_entropy(p: np.ndarray, axis: int, base: int) -> np.ndarray:
    """Entropy of the distributions along ``axis`` of nonnegative weights, in log base ``base``; all-zero -> 1."""
    total = p.sum(axis=axis, keepdims=True)
    q = np.where(total > 0, p / np.where(total > 0, total, 1.0), 1.0 / p.shape[axis])
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(q > 0, q * np.log(q), 0.0)
    return -terms.sum(axis=axis) / np.log(base)


def dci(
    codes: Any,
    factors: Any,
    regressor: str = "lasso",
    alpha: float = 0.05,
    n_estimators: int = 50,
    max_depth: int = 3,
    train_fraction: float = 0.8,
    seed: int = 0,
) -> DCIResult:
    """DCI (Eastwood & Williams 2018): an importance matrix R (d, K) from one regressor per factor, then

        D_j = 1 - H_K(P_j.),  P_jk = R_jk / sum_k R_jk;     D = sum_j rho_j D_j,  rho_j = sum_k R_jk / sum_jk R_jk
        C_k = 1 - H_d(P~_.k), P~_jk = R_jk / sum_j R_jk;   C = mean_k C_k
        I   = mean_k NRMSE_k on a held-out split,

    H_K the entropy in log base K. ``regressor``: "lasso" (R = |weights| of a lasso on standardised
    codes and factors) or "gbt" (R = impurity importances of gradient-boosted trees, ``n_estimators``
    trees of ``max_depth``; a few seconds for a few thousand examples). Factor class indices are
    regressed as numbers. Regressors are fitted on a ``train_fraction`` split; NRMSE is measured on
    the rest. ``alpha`` is scikit-learn's lasso penalty, (1/2n)|y - Xw|^2 + alpha |w|_1: on
    standardised data a code keeps a weight when it correlates with the factor (beyond the other
    codes) by more than about alpha; random codes of n examples correlate by about 1/sqrt(n), so the
    default 0.05 gives them no importance at all from n of a few thousand (then D = C = 0).
    """
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.linear_model import Lasso

    if regressor not in ("lasso", "gbt"):
        raise ValueError(f"regressor must be 'lasso' or 'gbt', got {regressor!r}")
    c, f = _inputs(codes, factors)
    d, k = c.shape[1], f.shape[1]
    if d < 2 or k < 2:
        raise ValueError(f"DCI needs at least 2 code dimensions and 2 factors (entropies in base d and K), got d={d}, K={k}")
    train, test = _split(c.shape[0], train_fraction, seed)
    x_train, x_test = _standardize(c[train], c[test])
    importance = np.zeros((d, k))
    nrmse = np.zeros(k)
    for j in range(k):
        y = f[:, j].astype(np.float64)
        mean, std = y[train].mean(), y[train].std()
        if std == 0:
            raise ValueError(f"factor {j} is constant on the training split: DCI needs every factor to vary")
        y_train, y_test = (y[train] - mean) / std, (y[test] - mean) / std
        if regressor == "lasso":
            model = Lasso(alpha=alpha).fit(x_train, y_train)
            importance[:, j] = np.abs(model.coef_)
        else:
            model = GradientBoostingRegressor(n_estimators=n_estimators, max_depth=max_depth, random_state=seed)
            model.fit(x_train, y_train)
            importance[:, j] = model.feature_importances_
        nrmse[j] = float(np.sqrt(np.mean((model.predict(x_test) - y_test) ** 2)))
    d_per_code = 1.0 - _normalised_entropy(importance, axis=1, base=k)
    c_per_factor = 1.0 - _normalised_entropy(importance, axis=0, base=d)
    total = importance.sum()
    rho = importance.sum(1) / total if total > 0 else np.zeros(d)
    return DCIResult(
        disentanglement=float((rho * d_per_code).sum()),
        completeness=float(c_per_factor.mean()),
        informativeness=float(nrmse.mean()),
        importance=importance,
        disentanglement_per_code=d_per_code,
        code_weights=rho,
        completeness_per_factor=c_per_factor,
        informativeness_per_factor=nrmse,
    )


# -- SAP -----------------------------------------------------------------------------------------------

@dataclass
class SAPResult:
    """Separated attribute predictability (Kumar et al. 2018)."""

    score: float
    """Mean over factors of the gap between the two most predictive codes, in [0, 1]."""
    per_factor: np.ndarray
    """S_(1)k - S_(2)k for each factor, (K,)."""
    scores: np.ndarray
    """S_jk: how well code j alone predicts factor k, (d, K)."""


def _binned_classifier_score(code: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, bins: int) -> float:
    """Chance-corrected balanced test accuracy of predicting y from one code by the majority class per bin."""
    lo, hi = code[train].min(), code[train].max()
    width = hi - lo if hi > lo else 1.0
    b = np.clip(np.floor((code - lo) / width * bins), 0, bins - 1).astype(np.int64)
    n_classes = int(y.max()) + 1
    counts = np.zeros((bins, n_classes))
    np.add.at(counts, (b[train], y[train]), 1.0)
    majority = np.bincount(y[train], minlength=n_classes).argmax()  # for bins no training example fell in
    predict = np.where(counts.sum(1) > 0, counts.argmax(1), majority)[b[test]]
    present = np.unique(y[test])
    balanced = np.mean([(predict[y[test] == cls] == cls).mean() for cls in present])
    chance = 1.0 / len(present)
    return float((balanced - chance) / (1.0 - chance)) if len(present) > 1 else 0.0


def sap(
    codes: Any,
    factors: Any,
    discrete: Sequence[int] = (),
    bins: int = 20,
    train_fraction: float = 0.8,
    seed: int = 0,
) -> SAPResult:
    """SAP (Kumar, Sattigeri & Balakrishnan 2018): mean over factors of the gap S_(1)k - S_(2)k between
    the two codes that predict factor k best, each code on its own.

    S_jk for ordinal factors (the default, factor indices regressed as numbers) is the R^2 of a
    linear regression of factor k on code j, i.e. corr(z_j, v_k)^2. Factors listed in ``discrete``
    (categorical ones, such as dSprites' shape) are scored by the balanced accuracy on a held-out
    split of a per-bin majority-class predictor from code j, rescaled so that chance is 0 and a
    perfect prediction 1 (our choice, which puts both kinds of score on one scale).
    """
    c, f = _inputs(codes, factors)
    d, k = c.shape[1], f.shape[1]
    if d < 2:
        raise ValueError("SAP needs at least 2 code dimensions (it is a gap between the best two)")
    bad = [j for j in discrete if not 0 <= j < k]
    if bad:
        raise ValueError(f"discrete lists factor indices {bad} outside [0, {k})")
    scores = np.zeros((d, k))
    train, test = _split(c.shape[0], train_fraction, seed)
    for j in range(k):
        y = f[:, j]
        for i in range(d):
            if j in discrete:
                scores[i, j] = _binned_classifier_score(c[:, i], y, train, test, bins)
            elif c[:, i].std() > 0 and y.std() > 0:
                scores[i, j] = np.corrcoef(c[:, i], y)[0, 1] ** 2
    top = np.sort(scores, axis=0)[::-1]
    gap = top[0] - top[1]
    return SAPResult(score=float(gap.mean()), per_factor=gap, scores=scores)


# -- modularity and explicitness -----------------------------------------------------------------------

@dataclass
class ModularityResult:
    """Modularity (Ridgeway & Mozer 2018)."""

    score: float
    """Mean of ``per_code`` over the codes that carry information, in [0, 1]."""
    per_code: np.ndarray
    """1 - delta_j for each code, NaN for a code with no information about any factor, (d,)."""
    mutual_information: np.ndarray
    """I(code_j; factor_k) in nats, (d, K)."""


def modularity(codes: Any, factors: Any, bins: int = 20) -> ModularityResult:
    """Modularity (Ridgeway & Mozer 2018, eq. 2): does each code depend on at most one factor?

    With m_jk = I(z_j; v_k) (binned codes, as in ``mig``), theta_j = max_k m_jk and the template t_j
    that keeps only that maximum, delta_j = sum_k (m_jk - t_jk)^2 / (theta_j^2 (K - 1)) and the
    code's modularity is 1 - delta_j; the score averages it over codes (those with theta_j = 0 left out).
    """
    c, f = _inputs(codes, factors)
    k = f.shape[1]
    if k < 2:
        raise ValueError("modularity needs at least 2 factors")
    mi = mutual_information_matrix(c, f, bins)
    theta = mi.max(1)
    template = np.zeros_like(mi)
    template[np.arange(mi.shape[0]), mi.argmax(1)] = theta
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = ((mi - template) ** 2).sum(1) / (theta**2 * (k - 1))
    per_code = np.where(theta > 0, 1.0 - delta, np.nan)
    informative = ~np.isnan(per_code)
    score = float(per_code[informative].mean()) if informative.any() else 0.0
    return ModularityResult(score=score, per_code=per_code, mutual_information=mi)


@dataclass
class ExplicitnessResult:
    """Explicitness (Ridgeway & Mozer 2018)."""

    score: float
    """Mean over factors of ``per_factor``, in [0.5, 1] for classifiers better than chance."""
    per_factor: np.ndarray
    """Mean one-vs-rest ROC AUC over the factor's values, on the held-out split, (K,)."""


def explicitness(codes: Any, factors: Any, train_fraction: float = 0.8, seed: int = 0, C: float = 1.0) -> ExplicitnessResult:
    """Explicitness (Ridgeway & Mozer 2018): how linearly decodable each factor is from the whole code.

    Per factor, a multinomial logistic regression (inverse regularisation ``C``) on standardised codes,
    fitted on a ``train_fraction`` split; its predicted probability of each value is scored by the
    one-vs-rest ROC AUC on the held-out split, averaged over the values present there with both labels.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    c, f = _inputs(codes, factors)
    train, test = _split(c.shape[0], train_fraction, seed)
    x_train, x_test = _standardize(c[train], c[test])
    per_factor = np.zeros(f.shape[1])
    for j in range(f.shape[1]):
        y_train, y_test = f[train, j], f[test, j]
        if np.unique(y_train).size < 2:
            raise ValueError(f"factor {j} takes one value on the training split: explicitness needs every factor to vary")
        model = LogisticRegression(C=C, max_iter=2000).fit(x_train, y_train)
        proba = model.predict_proba(x_test)
        aucs = []
        for col, cls in enumerate(model.classes_):
            positive = y_test == cls
            if 0 < positive.sum() < positive.size:
                aucs.append(roc_auc_score(positive, proba[:, col]))
        per_factor[j] = float(np.mean(aucs)) if aucs else 0.5
    return ExplicitnessResult(score=float(per_factor.mean()), per_factor=per_factor)


# -- metrics that sample observations with chosen factors ------------------------------------------

class FactorDataset(Protocol):
    """What the sampling metrics need: the number of values of each factor and observations with given factors.

    ``aelab.data.DSprites`` is one; any object with these two members works (tests use toy ones).
    """

    factor_sizes: Sequence[int]

    def images_of(self, factors: torch.Tensor) -> Any:
        """Observations (n, ...) with factor class indices ``factors`` (n, K), int64."""
        ...


def mean_representation(model: torch.nn.Module) -> Callable[[torch.Tensor], np.ndarray]:
    """``represent(x)``: the posterior mean mu(x) of a VAE's encoder, in eval mode, without gradients.

    Uses ``model.encode(x) -> (mu, logvar)`` on the model's device and returns a float64 array (n, d).
    """

    @torch.no_grad()
    def represent(x: torch.Tensor) -> np.ndarray:
        was_training = model.training
        model.eval()
        try:
            device = next(model.parameters()).device
            mu = model.encode(torch.as_tensor(x, dtype=torch.float32).to(device))[0]
        finally:
            model.train(was_training)
        return mu.double().cpu().numpy()

    return represent


def _encode(represent: Represent, dataset: FactorDataset, factors: np.ndarray, chunk: int) -> np.ndarray:
    """Codes (n, d) of the observations with the given factors (n, K), ``chunk`` observations at a time."""
    parts = []
    for start in range(0, factors.shape[0], chunk):
        x = dataset.images_of(torch.from_numpy(factors[start:start + chunk]))
        parts.append(_codes(represent(x)))
    return np.concatenate(parts)


def _check_dataset(dataset: Any) -> np.ndarray:
    sizes = getattr(dataset, "factor_sizes", None)
    if sizes is None or not callable(getattr(dataset, "images_of", None)):
        raise TypeError(
            f"the data set must have `factor_sizes` and `images_of(factors)` (as aelab.data.DSprites), got {type(dataset).__name__}"
        )
    return np.asarray(sizes, dtype=np.int64)


def _sample_factors(rng: np.random.Generator, sizes: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Factor class indices drawn uniformly and independently: shape + (K,)."""
    return rng.integers(0, sizes, size=(*shape, sizes.size), dtype=np.int64)


@dataclass
class FactorVAEScoreResult:
    """The FactorVAE disentanglement score (Kim & Mnih 2018)."""

    score: float
    """Accuracy of the majority-vote classifier on the evaluation votes, in [0, 1] (chance: about 1/K)."""
    train_accuracy: float
    """Its accuracy on the votes it was built from."""
    votes: np.ndarray
    """votes[j, k]: training votes where code j had the least normalised variance and factor k was fixed, (d, K)."""
    active: np.ndarray
    """Codes that took part: variance over the data above ``min_variance``, (d,) bool."""
    global_std: np.ndarray
    """Standard deviation of each code over the data, used to normalise, (d,)."""


def factor_vae_score(
    represent: Represent,
    dataset: FactorDataset,
    n_train: int = 500,
    n_eval: int = 300,
    batch_size: int = 64,
    n_variance: int = 5000,
    min_variance: float = 0.05,
    seed: int = 0,
    chunk: int = 1024,
) -> FactorVAEScoreResult:
    """FactorVAE score (Kim & Mnih 2018, section 4): a majority vote on the least-variant code.

    Each code is divided by its standard deviation over ``n_variance`` random observations; codes
    whose variance there is at most ``min_variance`` (collapsed VAE dimensions; an absolute threshold
    suited to codes of unit prior variance) are left out. A vote fixes one random factor k at a random
    value, draws ``batch_size`` observations with the other factors random, and takes the active code
    j with the smallest variance of its normalised values; the classifier maps each j to the factor
    it voted for most often over ``n_train`` votes, and the score is its accuracy on ``n_eval`` new
    votes. Locatello et al. 2019 use 10,000 training and 5,000 evaluation votes of 64; the smaller
    defaults keep it to seconds on a CPU.
    """
    sizes = _check_dataset(dataset)
    if min(n_train, n_eval) < 1 or batch_size < 2 or n_variance < 2:
        raise ValueError("need n_train, n_eval >= 1, batch_size >= 2 (a variance) and n_variance >= 2")
    rng = np.random.default_rng(seed)
    k = sizes.size
    codes = _encode(represent, dataset, _sample_factors(rng, sizes, (n_variance,)), chunk)
    variance = codes.var(0, ddof=1)
    std = np.sqrt(variance)
    active = variance > min_variance
    d = codes.shape[1]
    if not active.any():
        return FactorVAEScoreResult(0.0, 0.0, np.zeros((d, k), dtype=np.int64), active, std)

    def votes(n: int) -> tuple[np.ndarray, np.ndarray]:
        fixed = rng.integers(0, k, size=n)  # the factor each vote holds fixed
        f = _sample_factors(rng, sizes, (n, batch_size))  # (n, L, K)
        rows = np.arange(n)
        f[rows, :, fixed] = f[rows, 0, fixed][:, None]  # one value of the fixed factor per vote
        z = _encode(represent, dataset, f.reshape(-1, k), chunk).reshape(n, batch_size, d)
        spread = (z[:, :, active] / std[active]).var(1, ddof=1)  # (n, active dims)
        return np.flatnonzero(active)[spread.argmin(1)], fixed

    dims, fixed = votes(n_train)
    table = np.zeros((d, k), dtype=np.int64)
    np.add.at(table, (dims, fixed), 1)
    classify = table.argmax(1)  # code -> the factor it voted for most often
    train_accuracy = float(table.max(1).sum() / n_train)
    dims, fixed = votes(n_eval)
    score = float((classify[dims] == fixed).mean())
    return FactorVAEScoreResult(score, train_accuracy, table, active, std)


@dataclass
class BetaVAEScoreResult:
    """The beta-VAE disentanglement score (Higgins et al. 2017)."""

    score: float
    """Accuracy of the linear classifier on the evaluation points, in [0, 1] (chance: about 1/K)."""
    train_accuracy: float
    """Its accuracy on the training points."""


def beta_vae_score(
    represent: Represent,
    dataset: FactorDataset,
    n_train: int = 500,
    n_eval: int = 300,
    batch_size: int = 64,
    seed: int = 0,
    chunk: int = 1024,
) -> BetaVAEScoreResult:
    """beta-VAE score (Higgins et al. 2017, section 3): which factor did a pair of observations share?

    A point fixes one random factor k; ``batch_size`` pairs of observations share the value of k
    (each pair its own) with all other factors drawn independently; the point's feature is the mean
    over pairs of |z(x1) - z(x2)| (d,) and its label k. A linear classifier (logistic regression on
    standardised features) is fitted on ``n_train`` points; the score is its accuracy on ``n_eval`` new ones.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    sizes = _check_dataset(dataset)
    if min(n_train, n_eval) < 1 or batch_size < 1:
        raise ValueError("need n_train, n_eval and batch_size >= 1")
    rng = np.random.default_rng(seed)
    k = sizes.size

    def points(n: int) -> tuple[np.ndarray, np.ndarray]:
        fixed = rng.integers(0, k, size=n)
        f1 = _sample_factors(rng, sizes, (n, batch_size))
        f2 = _sample_factors(rng, sizes, (n, batch_size))
        rows = np.arange(n)
        f2[rows, :, fixed] = f1[rows, :, fixed]  # each pair shares the value of the fixed factor
        z1 = _encode(represent, dataset, f1.reshape(-1, k), chunk)
        z2 = _encode(represent, dataset, f2.reshape(-1, k), chunk)
        return np.abs(z1 - z2).reshape(n, batch_size, -1).mean(1), fixed

    x_train, y_train = points(n_train)
    x_eval, y_eval = points(n_eval)
    if np.unique(y_train).size < 2:
        raise ValueError("all training points fixed the same factor: increase n_train")
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x_train, y_train)
    return BetaVAEScoreResult(score=float(model.score(x_eval, y_eval)), train_accuracy=float(model.score(x_train, y_train)))
