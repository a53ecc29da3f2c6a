"""The TimeGAN scores: known answers on easy cases, clear errors, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aelab.data.series import sines
from aelab.metrics import discriminative_score, embed_real_and_fake, predictive_score
from aelab.metrics.timeseries import _next_step_task


@pytest.fixture(scope="module")
def waves():
    return sines(n=1200, seq_len=12, n_features=3, seed=0).x  # (1200, 12, 3)


def test_discriminative_score_real_vs_real_is_near_zero(waves):
    result = discriminative_score(waves[:600], waves[600:], steps=200, hidden=4)
    assert result.score < 0.08, result


def test_discriminative_score_real_vs_noise_is_near_half(waves):
    noise = torch.rand(600, 12, 3, generator=torch.Generator().manual_seed(1))
    result = discriminative_score(waves[:600], noise, steps=600, hidden=4, lr=3e-3)
    assert result.score > 0.45, result
    assert result.real_accuracy > 0.9 and result.fake_accuracy > 0.9
    assert math.isclose(result.accuracy, 0.5 + result.score)


def test_discriminative_score_is_seeded_and_leaves_the_global_rng_alone(waves):
    torch.manual_seed(5)
    before = torch.rand(1)
    torch.manual_seed(5)
    a = discriminative_score(waves[:200], waves[200:400] * 0.9, steps=20)
    after = torch.rand(1)
    b = discriminative_score(waves[:200], waves[200:400] * 0.9, steps=20)
    assert a == b and torch.equal(before, after)


def test_next_step_task_is_timegans():
    x = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    inputs, targets = _next_step_task(x)
    assert torch.equal(inputs, x[:, :3, :2]) and torch.equal(targets, x[:, 1:, 2:])
    one = x[:, :, :1]
    inputs, targets = _next_step_task(one)
    assert torch.equal(inputs, one[:, :3]) and torch.equal(targets, one[:, 1:])


def test_predictive_score_is_finite_and_real_data_beats_noise(waves):
    real_train, real_test = waves[:600], waves[600:]
    on_real = predictive_score(real_train, real_test, steps=300)
    on_noise = predictive_score(torch.rand(600, 12, 3, generator=torch.Generator().manual_seed(1)), real_test, steps=300)
    assert np.isfinite(on_real) and 0 <= on_real < on_noise, (on_real, on_noise)


def test_embeddings_have_one_point_per_window(waves):
    r, f = embed_real_and_fake(waves[:100], waves[100:160], method="pca")
    assert r.shape == (100, 2) and f.shape == (60, 2)
    r, f = embed_real_and_fake(waves[:40], waves[40:70], method="tsne", n=30)
    assert r.shape == (30, 2) and f.shape == (30, 2)


def test_bad_inputs_get_clear_errors(waves):
    with pytest.raises(ValueError, match=r"\(N, seq_len, n_features\)"):
        discriminative_score(waves[:, :, 0], waves[:, :, 0])
    with pytest.raises(ValueError, match="differ in shape"):
        predictive_score(waves, waves[:, :5])
    with pytest.raises(ValueError, match="NaN"):
        discriminative_score(waves, waves * float("nan"))
    with pytest.raises(ValueError, match="method"):
        embed_real_and_fake(waves, waves, method="umap")
