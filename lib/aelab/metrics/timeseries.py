"""Scores of generated time series against real ones (Yoon et al. 2019, TimeGAN; used by Desai et al. 2021).

- ``discriminative_score``: train a post-hoc GRU classifier to tell real windows from generated ones
  on 80% of each, report |accuracy - 0.5| on the held-out 20%. 0: indistinguishable; 0.5: always told apart.
- ``predictive_score``: train a post-hoc GRU on *generated* windows to predict, at every step, the
  next value of the last feature from the other features so far; report its mean absolute error on
  *real* windows ("train on synthetic, test on real"). Lower is better; compare with the same network
  trained on real data.
- ``embed_real_and_fake``: the 2-d PCA or t-SNE embedding of both sets for an overlay plot, each
  window first averaged over its features as in TimeGAN's figures.

All windows are (N, T, D) arrays or tensors with values scaled to about [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from aelab.nn.sequence import GRUHead


def _windows(x: Any, name: str) -> Tensor:
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x).detach().float().cpu()
    if x.dim() != 3:
        raise ValueError(f"{name} must be windows of shape (N, seq_len, n_features), got {tuple(x.shape)}")
    if x.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 windows, got {x.shape[0]}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _pair(real: Any, fake: Any) -> tuple[Tensor, Tensor]:
    real, fake = _windows(real, "real"), _windows(fake, "fake")
    if real.shape[1:] != fake.shape[1:]:
        raise ValueError(f"real and fake windows differ in shape: {tuple(real.shape[1:])} vs {tuple(fake.shape[1:])}")
    return real, fake


def _batches(n: int, batch_size: int, steps: int, gen: torch.Generator):
    for _ in range(steps):
        yield torch.randint(0, n, (min(batch_size, n),), generator=gen)


@dataclass
class DiscriminativeResult:
    """The discriminative score and the held-out accuracies it comes from."""

    score: float
    """|accuracy - 0.5| on the held-out windows, in [0, 0.5]."""
    accuracy: float
    """Held-out accuracy over real and fake windows together."""
    real_accuracy: float
    """Fraction of held-out real windows classified real."""
    fake_accuracy: float
    """Fraction of held-out fake windows classified fake."""


def discriminative_score(
    real: Any,
    fake: Any,
    *,
    hidden: int | None = None,
    steps: int = 2000,
    batch_size: int = 128,
    lr: float = 1e-3,
    train_fraction: float = 0.8,
    seed: int = 0,
) -> DiscriminativeResult:
    """Post-hoc GRU classifier of real (label 1) vs fake (label 0) windows: |held-out accuracy - 0.5|.

    real (N, T, D), fake (M, T, D). Each set is split ``train_fraction`` / rest at random; a one-layer
    GRU with ``hidden`` units (default max(1, D // 2), TimeGAN's) reads a window and one logit comes
    from its last state; Adam for ``steps`` steps on batches of ``batch_size`` real plus as many fake
    windows (TimeGAN: 2000 steps of 128). Accuracy is the mean over the held-out windows of both sets.
    Runs on the CPU, seeded: the same inputs give the same score.
    """
    real, fake = _pair(real, fake)
    gen = torch.Generator().manual_seed(seed)
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        d = real.shape[2]
        net = GRUHead(d, hidden or max(1, d // 2), 1)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        splits = []
        for x in (real, fake):
            order = torch.randperm(len(x), generator=gen)
            cut = min(max(1, int(round(train_fraction * len(x)))), len(x) - 1)
            splits.append((x[order[:cut]], x[order[cut:]]))
        (real_train, real_test), (fake_train, fake_test) = splits
        for i_real, i_fake in zip(_batches(len(real_train), batch_size, steps, gen), _batches(len(fake_train), batch_size, steps, gen)):
            logits = net(torch.cat([real_train[i_real], fake_train[i_fake]])).squeeze(1)
            target = torch.cat([torch.ones(len(i_real)), torch.zeros(len(i_fake))])
            loss = F.binary_cross_entropy_with_logits(logits, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            real_acc = (net(real_test).squeeze(1) > 0).float().mean().item()
            fake_acc = (net(fake_test).squeeze(1) <= 0).float().mean().item()
    finally:
        torch.random.set_rng_state(torch_state)
    n_r, n_f = len(real_test), len(fake_test)
    accuracy = (real_acc * n_r + fake_acc * n_f) / (n_r + n_f)
    return DiscriminativeResult(abs(accuracy - 0.5), accuracy, real_acc, fake_acc)


def _next_step_task(x: Tensor) -> tuple[Tensor, Tensor]:
    """TimeGAN's predictive task: inputs x[:, :-1, :D-1], targets x[:, 1:, D-1] (D = 1: the feature itself)."""
    d = x.shape[2]
    inputs = x[:, :-1, : d - 1] if d > 1 else x[:, :-1, :]
    return inputs, x[:, 1:, d - 1 :]


def predictive_score(
    train: Any,
    test: Any,
    *,
    hidden: int | None = None,
    steps: int = 5000,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
) -> float:
    """Mean absolute error on ``test`` of a GRU trained on ``train`` to predict the next step of the last feature.

    train (M, T, D): the generated windows (train on synthetic); test (N, T, D): the real ones (test on
    real). At every step t < T the GRU (``hidden`` units, default max(1, D // 2)) reads features
    0..D-2 of steps 0..t and predicts feature D-1 at step t+1 (TimeGAN's task; with D = 1 it reads the
    feature itself) through a sigmoid, as the data lie in [0, 1]. Trained with the L1 loss by Adam for
    ``steps`` steps (TimeGAN: 5000 of 128). The
    score is the absolute error averaged over test windows and their T-1 predicted steps.
    Passing real windows as ``train`` gives the reference the generated data should approach.
    """
    train, test = _pair(train, test)
    if train.shape[1] < 2:
        raise ValueError(f"the predictive score needs seq_len >= 2, got {train.shape[1]}")
    gen = torch.Generator().manual_seed(seed)
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        d = train.shape[2]
        inputs, targets = _next_step_task(train)
        net = GRUHead(inputs.shape[2], hidden or max(1, d // 2), 1, every_step=True)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        for idx in _batches(len(train), batch_size, steps, gen):
            loss = (torch.sigmoid(net(inputs[idx])) - targets[idx]).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            test_in, test_target = _next_step_task(test)
            mae = (torch.sigmoid(net(test_in)) - test_target).abs().mean().item()
    finally:
        torch.random.set_rng_state(torch_state)
    return mae


def embed_real_and_fake(real: Any, fake: Any, method: str = "pca", n: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """2-d embeddings (n_real, 2), (n_fake, 2) of up to ``n`` windows of each set, for an overlay plot.

    As in TimeGAN's figures each window (T, D) is averaged over its D features into a (T,) vector.
    "pca": principal components fitted on the real windows, applied to both; "tsne": one t-SNE
    (perplexity 40) of both sets together.
    """
    if method not in ("pca", "tsne"):
        raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")
    real, fake = _pair(real, fake)
    rng = np.random.default_rng(seed)
    r = real[rng.permutation(len(real))[:n]].mean(2).numpy()  # (n, T)
    f = fake[rng.permutation(len(fake))[:n]].mean(2).numpy()
    if method == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2).fit(r)
        return pca.transform(r), pca.transform(f)
    from sklearn.manifold import TSNE

    both = TSNE(n_components=2, perplexity=min(40.0, (len(r) + len(f) - 1) / 3), init="pca", random_state=seed).fit_transform(np.concatenate([r, f]))
    return both[: len(r)], both[len(r):]
