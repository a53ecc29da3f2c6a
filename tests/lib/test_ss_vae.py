"""The semi-supervised VAE (M2): the enumerated ELBO against brute force, the labelled and mixed
objectives against hand-written formulas, the label helpers, accuracy and style transfer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import aelab
from aelab.functional import bernoulli_log_likelihood, categorical_entropy, categorical_kl_uniform, enumerated_elbo, kl_normal
from aelab.vae.ss_vae import hide_labels, kingma_alpha, oversample_labelled

SMALL = dict(hidden=(32,), classifier_hidden=(16,), latent_dim=3)


def model_and_batch(n=6, seed=0, **cfg):
    torch.manual_seed(seed)
    model = aelab.build("ss_vae", **(SMALL | cfg))
    x = torch.rand(n, 1, 28, 28)
    return model, x


def test_enumerated_elbo_is_the_expectation_plus_entropy(float64):
    torch.manual_seed(0)
    e, logits = torch.randn(5, 4) * 3, torch.randn(5, 4)
    q = logits.softmax(-1)
    brute = sum(q[:, k] * e[:, k] for k in range(4)) - sum(q[:, k] * q[:, k].log() for k in range(4))
    assert torch.allclose(enumerated_elbo(e, logits), brute)
    assert torch.allclose(categorical_entropy(logits), -(q * q.log()).sum(1))
    assert torch.allclose(categorical_kl_uniform(logits), (q * (q.log() + math.log(4))).sum(1))
    # the bound is tight exactly when q(y|x) is the posterior softmax(ELBO_k): then it equals log sum_k exp(ELBO_k)
    assert torch.allclose(enumerated_elbo(e, e), torch.logsumexp(e, 1))
    assert (enumerated_elbo(e, logits) <= torch.logsumexp(e, 1) + 1e-12).all()
    with pytest.raises(ValueError, match="must both be"):
        enumerated_elbo(e, logits[:, :3])


def brute_force_class_elbos(model, x, eps):
    """ELBO(x_b, y = k) for every example and class with given noise eps (B, K, d), written from scratch."""
    k = model.config.n_classes
    out = torch.empty(x.shape[0], k)
    for c in range(k):
        y = F.one_hot(torch.full((x.shape[0],), c), k).float()
        h = torch.cat([x.flatten(1), y], 1)
        mu, logvar = model.encoder(h).chunk(2, -1)
        z = mu + (0.5 * logvar).exp() * eps[:, c]
        logits = model.decoder(torch.cat([z, y], 1))
        log_px = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
        kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(1)
        out[:, c] = log_px - kl - math.log(k)
    return out


def test_unlabelled_loss_equals_brute_force_sum_over_classes():
    model, x = model_and_batch()
    y = torch.full((6,), -1)
    torch.manual_seed(5)
    out = model(x, y)
    torch.manual_seed(5)
    eps = torch.randn(6 * 10, 3).view(6, 10, 3)  # the same draws: one per (example, class), example-major
    per_class = brute_force_class_elbos(model, x, eps)  # (B, K)
    q = model.classify(x).softmax(-1)
    elbo_u = (q * per_class).sum(1) - (q * q.log()).sum(1)
    loss = model.loss((x, y), out)
    assert torch.allclose(loss.total, -elbo_u.mean(), rtol=1e-5)
    assert loss.terms["class"] == 0 and loss.terms["labelled"] == 0


def test_all_labelled_loss_is_the_labelled_formula():
    model, x = model_and_batch(alpha=7.0)
    y = torch.tensor([0, 3, 9, 3, 1, 2])
    out = model(x, y)
    log_px = bernoulli_log_likelihood(x, out.recon)
    kl = kl_normal(out.mu, out.logvar)
    ce = F.cross_entropy(out.y_logits, y, reduction="none")
    expected = (-(log_px - kl - math.log(10)) + 7.0 * ce).mean()
    loss = model.loss((x, y), out)
    assert torch.allclose(loss.total, expected, rtol=1e-5)
    assert torch.allclose(loss.terms["neg_elbo"] + 7.0 * loss.terms["class"], loss.total, rtol=1e-5)
    assert torch.equal(out.pair_index, torch.arange(6))  # labelled examples are decoded once, at their class


def test_mixed_batch_divides_both_parts_by_the_batch_size():
    model, x = model_and_batch(alpha=3.0)
    y = torch.tensor([-1, 4, -1, -1, 7, -1])
    torch.manual_seed(2)
    out = model(x, y)
    lab, unl = torch.tensor([1, 4]), torch.tensor([0, 2, 3, 5])
    assert torch.equal(out.pair_index, torch.cat([lab, unl.repeat_interleave(10)]))
    log_px = bernoulli_log_likelihood(x[out.pair_index], out.pair_recon)
    elbo = log_px - kl_normal(out.pair_mu, out.pair_logvar) - math.log(10)  # (P,)
    labelled = -elbo[:2] + 3.0 * F.cross_entropy(out.y_logits[lab], y[lab], reduction="none")
    unlabelled = -enumerated_elbo(elbo[2:].view(4, 10), out.y_logits[unl])
    expected = (labelled.sum() + unlabelled.sum()) / 6
    assert torch.allclose(model.loss((x, y), out).total, expected, rtol=1e-5)
    # the picture fields: labelled examples at their class, unlabelled ones at the most probable class
    best = out.y_logits[unl].argmax(1)
    assert torch.equal(out.recon[unl], out.pair_recon[2 + torch.arange(4) * 10 + best])


@pytest.mark.parametrize("unsupervised", ["enumerate", "relaxed"])
def test_gradients_are_finite_and_unlabelled_data_train_the_classifier(unsupervised):
    model, x = model_and_batch(unsupervised=unsupervised)
    loss = model.loss((x, torch.full((6,), -1)), model(x, torch.full((6,), -1)))
    loss.total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    clf_grad = sum(p.grad.abs().sum() for p in model.classifier.parameters())
    assert clf_grad > 0, "the unlabelled ELBO must reach q(y|x)"


def test_relaxed_loss_uses_the_categorical_kl():
    model, x = model_and_batch(unsupervised="relaxed", temperature=0.3)
    y = torch.full((6,), -1)
    out = model(x, y)
    assert torch.allclose(out.pair_y.sum(1), torch.ones(6)) and out.pair_y.shape == (6, 10)
    log_px = bernoulli_log_likelihood(x, out.pair_recon)
    expected = -(log_px - kl_normal(out.pair_mu, out.pair_logvar) - categorical_kl_uniform(out.y_logits)).mean()
    assert torch.allclose(model.loss((x, y), out).total, expected, rtol=1e-5)


def test_bad_labels_get_clear_errors():
    model, x = model_and_batch()
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\) or -1"):
        model(x, torch.tensor([0, 1, 2, 3, 4, 10]))
    with pytest.raises(ValueError, match="integer labels"):
        model(x, torch.zeros(6, 10))
    with pytest.raises(ValueError, match="6 labels for a batch of 5"):
        model(x[:5], torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match="unsupervised must be one of"):
        aelab.build("ss_vae", unsupervised="sample")


def test_hide_labels_keeps_a_balanced_subset():
    y = torch.arange(10).repeat(50)[torch.randperm(500)]
    hidden = hide_labels(y, 30, seed=1)
    kept = hidden >= 0
    assert kept.sum() == 30 and torch.equal(hidden[kept], y[kept])
    assert torch.bincount(hidden[kept], minlength=10).tolist() == [3] * 10
    assert torch.equal(hide_labels(y, 30, seed=1), hidden) and not torch.equal(hide_labels(y, 30, seed=2), hidden)
    with pytest.raises(ValueError, match="multiple of the 10 classes"):
        hide_labels(y, 25)
    with pytest.raises(ValueError, match="fewer than"):
        hide_labels(y, 510)


def test_oversample_labelled_reaches_the_share():
    x = torch.rand(1000, 2)
    y = hide_labels(torch.arange(10).repeat(100), 20)
    split = oversample_labelled(x, y, share=0.2)
    lab = split.y >= 0
    assert abs(lab.float().mean().item() - 0.2) < 0.01
    assert (~lab).sum() == 980  # the unlabelled examples once each
    assert set(split.x[lab].flatten().tolist()) == set(x[y >= 0].flatten().tolist())
    assert kingma_alpha(60_000, 100) == pytest.approx(60.0)


def test_accuracy_and_style_transfer():
    model, x = model_and_batch()
    model.eval()
    with torch.no_grad():
        pred = model.classify(x).argmax(1)
    assert torch.equal(model.predict(x, batch_size=4), pred)
    y = pred.clone()
    y[:3] = (y[:3] + 1) % 10
    assert model.accuracy(x, y) == pytest.approx(0.5)
    grid = model.style_transfer(x[:2], torch.tensor([4, 7]))
    assert grid.shape == (2, 10, 1, 28, 28)
    mu, _ = model.encode(x[:1], F.one_hot(torch.tensor([4]), 10).float())
    expected = model.decode(mu, F.one_hot(torch.tensor([2]), 10).float())
    assert torch.allclose(grid[0, 2], expected[0], atol=1e-6)


def test_fit_learns_to_classify_with_few_labels():
    # two well-separated classes of 16-d vectors: 2 labels per class and 300 unlabelled examples; a
    # 1-d style, since a wider z can explain the two clusters without y (M2's known failure mode)
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(2, 16, generator=g) * 3
    y = torch.randint(0, 2, (400,), generator=g)
    x = centers[y] + torch.randn(400, 16, generator=g)
    aelab.seed_everything(0)
    model = aelab.build("ss_vae", input_shape=(16,), n_classes=2, hidden=(32,), classifier_hidden=(32,), latent_dim=1,
                        likelihood="gaussian", sigma=1.0, alpha=kingma_alpha(300, 4))
    train = oversample_labelled(x[:300], hide_labels(y[:300], 4, seed=0), share=0.1)
    aelab.fit(model, train, epochs=10, batch_size=50, lr=3e-3, progress=False, device="cpu")
    assert model.accuracy(x[300:], y[300:]) > 0.9
