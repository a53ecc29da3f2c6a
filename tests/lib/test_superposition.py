"""The toy model of superposition (Elhage et al. 2022): batching, the loss reduction, and the two regimes.

Dense features and fewer hidden dimensions than features give the PCA-like solution (the most
important features, orthogonal, the rest dropped); sparse features are stored in superposition.
"""

from __future__ import annotations

import math

import pytest
import torch

import aelab
from aelab.data.toy import ToyBatches, toy_batch


def batched_and_singles(seed=0):
    """One 3-instance model and three 1-instance models holding the same weights."""
    torch.manual_seed(seed)
    imp = ((1.0, 0.5, 0.2, 0.1), (1.0, 1.0, 1.0, 1.0), (0.3, 0.9, 0.6, 0.1))
    probs = (1.0, 0.3, 0.05)
    batched = aelab.build("toy_superposition", n_features=4, n_hidden=2, n_instances=3, feature_probability=probs, importance=imp)
    with torch.no_grad():
        batched.b_final.normal_()
    singles = []
    for i in range(3):
        single = aelab.build("toy_superposition", n_features=4, n_hidden=2, n_instances=1, feature_probability=(probs[i],),
                             importance=imp[i])
        single.load_state_dict({"W": batched.W[i:i + 1].detach().clone(), "b_final": batched.b_final[i:i + 1].detach().clone()})
        singles.append(single)
    return batched, singles


def test_batched_instances_equal_independent_single_models():
    batched, singles = batched_and_singles()
    x = torch.rand(64, 3, 4)
    out = batched(x)
    loss = batched.loss(x, out)
    loss.total.backward()
    for i, single in enumerate(singles):
        o = single(x[:, i:i + 1])
        assert torch.allclose(out.recon[:, i:i + 1], o.recon, atol=1e-6)
        assert torch.allclose(out.hidden[:, i:i + 1], o.hidden, atol=1e-6)
        single.loss(x[:, i:i + 1], o).total.backward()
        assert torch.allclose(batched.W.grad[i:i + 1], single.W.grad, atol=1e-5)
        assert torch.allclose(batched.b_final.grad[i:i + 1], single.b_final.grad, atol=1e-5)
    assert torch.allclose(loss.total, sum(s.loss(x[:, i:i + 1], s(x[:, i:i + 1])).total for i, s in enumerate(singles)))


def test_training_the_batch_equals_training_each_instance_alone():
    batched, singles = batched_and_singles(seed=1)
    x = torch.rand(48, 3, 4)
    aelab.fit(batched, x, epochs=3, batch_size=16, shuffle=False, lr=1e-2, progress=False, device="cpu")
    for i, single in enumerate(singles):
        aelab.fit(single, x[:, i:i + 1].contiguous(), epochs=3, batch_size=16, shuffle=False, lr=1e-2, progress=False, device="cpu")
        assert torch.allclose(batched.W[i:i + 1], single.W, atol=1e-5)
        assert torch.allclose(batched.b_final[i:i + 1], single.b_final, atol=1e-5)


def test_loss_is_importance_weighted_sum_over_features_mean_over_batch_sum_over_instances():
    model = aelab.build("toy_superposition", n_features=2, n_hidden=1, n_instances=2, importance=((1.0, 0.5), (2.0, 0.0)))
    x = torch.tensor([[[1.0, 0.0], [0.5, 0.5]], [[0.0, 1.0], [1.0, 1.0]]])  # (B=2, I=2, F=2)
    recon = torch.zeros_like(x)
    out = type(model(x))(recon=recon, hidden=torch.zeros(2, 2, 1))
    # instance 0: example 0 -> 1 * 1, example 1 -> 0.5 * 1; mean 0.75. instance 1: (2 * 0.25, 2 * 1) -> mean 1.25
    assert torch.allclose(model.instance_losses(x, recon), torch.tensor([0.75, 1.25]))
    loss = model.loss(x, out)
    assert math.isclose(loss.total.item(), 2.0) and math.isclose(loss.terms["mean_instance"].item(), 1.0)


def test_config_probabilities_importances_and_errors():
    cfg = aelab.build("toy_superposition", n_instances=3, min_feature_probability=0.04).config
    assert torch.allclose(cfg.probabilities(), torch.tensor([1.0, 0.2, 0.04]))
    assert torch.allclose(cfg.importances()[2], 0.9 ** torch.arange(5.0))
    shared = aelab.build("toy_superposition", n_features=3, n_instances=2, feature_probability=(0.1,), importance=(3.0, 2.0, 1.0))
    assert torch.equal(shared.feature_probability, torch.full((2,), 0.1))
    assert torch.equal(shared.importance, torch.tensor([[3.0, 2.0, 1.0]] * 2))
    with pytest.raises(ValueError, match="feature_probability needs 1 or n_instances=4"):
        aelab.build("toy_superposition", n_instances=4, feature_probability=(0.1, 0.2))
    with pytest.raises(ValueError, match="importance needs n_features=5"):
        aelab.build("toy_superposition", importance=(1.0, 0.5))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        aelab.build("toy_superposition", feature_probability=(0.0,))
    with pytest.raises(ValueError, match=r"expects input of shape \(batch, 8, 5\), got \(4, 5\)"):
        aelab.build("toy_superposition")(torch.rand(4, 5))


def test_generated_batches_have_each_instances_sparsity():
    gen = torch.Generator().manual_seed(0)
    batch = toy_batch(20_000, torch.tensor([1.0, 0.3, 0.05]), 6, generator=gen)
    assert batch.shape == (20_000, 3, 6) and batch.dtype == torch.float32
    present = (batch > 0).float().mean((0, 2))
    assert torch.allclose(present, torch.tensor([1.0, 0.3, 0.05]), atol=0.01)
    assert batch.min() >= 0 and batch.max() <= 1
    model = aelab.build("toy_superposition", n_instances=2, feature_probability=(0.5, 0.1))
    assert model.generate_batch(7).shape == (7, 2, 5)
    stream = model.batches(4, batch_size=3, seed=2)
    assert isinstance(stream, ToyBatches) and len(stream) == 4
    first, again = list(stream), list(stream)
    assert all(torch.equal(a, b) for a, b in zip(first, again))  # a pass replays the same seeded batches
    with pytest.raises(ValueError, match="one probability in"):
        toy_batch(2, torch.tensor([1.5]), 3)


def test_dense_features_give_pca_and_sparse_features_give_superposition():
    aelab.seed_everything(0)
    model = aelab.build("toy_superposition", n_features=5, n_hidden=2, n_instances=2, feature_probability=(1.0, 0.05),
                        importance_decay=0.7)
    aelab.fit(model, model.batches(400, batch_size=256), lr=3e-2, progress=False, device="cpu")
    norms = model.feature_norms()
    # dense: the two most important features, orthogonal, the rest dropped
    assert (norms[0, :2] > 0.95).all() and (norms[0, 2:] < 0.1).all()
    kept = model.W[0, :, :2].detach()
    assert torch.allclose(kept.T @ kept, torch.eye(2), atol=0.1)
    assert torch.allclose(model.feature_dimensionality()[0, :2], torch.ones(2), atol=0.05)
    # sparse: more features than dimensions, each with a fraction of a dimension
    represented = norms[1] > 0.5
    assert represented.sum() >= 4
    dims = model.feature_dimensionality()[1]
    assert (dims[represented] < 0.6).all() and dims.sum() <= 2.1
    assert (model.superposition()[1, represented] > 0.5).all()
