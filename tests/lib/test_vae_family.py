"""Model-specific checks of the VAE family: Laplace VAE, CVAE, IWAE, InfoVAE, WAE-MMD, SWAE, VQ-VAE."""

from __future__ import annotations

import math

import pytest
import torch

import aelab
from aelab.functional import bernoulli_log_likelihood, kl_normal, laplace_log_likelihood, log_normal
from aelab.train import StepContext


def images(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


# -- VAE with a Laplace decoder --------------------------------------------------------------------

@pytest.mark.parametrize("learn", [False, True])
def test_laplace_vae_loss_is_l1_likelihood_plus_kl(learn):
    torch.manual_seed(0)
    model = aelab.build("vae", hidden=(32,), latent_dim=3, likelihood="laplace", sigma=0.2, learn_sigma=learn)
    x, _ = images()
    out = model(x)
    loss = model.loss(x, out)
    expected = -laplace_log_likelihood(x, out.recon, math.log(0.2)) + kl_normal(out.mu, out.logvar)
    assert torch.allclose(loss.total, expected.mean())  # the learned log-scale starts at log(sigma)
    loss.total.backward()
    if learn:
        assert model.decoder_log_scale.shape == (1, 28, 28) and model.decoder_log_scale.grad.abs().sum() > 0
    else:
        assert not hasattr(model, "decoder_log_scale")


# -- CVAE ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backbone", ["mlp", "conv"])
def test_cvae_samples_depend_on_the_label(backbone):
    torch.manual_seed(0)
    model = aelab.build("cvae", backbone=backbone, hidden=(32,), channels=4, latent_dim=2).eval()
    labels = torch.tensor([0, 3, 7])
    a = model.sample(labels, generator=torch.Generator().manual_seed(1))
    b = model.sample(labels, generator=torch.Generator().manual_seed(1))
    c = model.sample(torch.tensor([1, 4, 8]), generator=torch.Generator().manual_seed(1))
    assert a.shape == (3, 1, 28, 28) and torch.equal(a, b)
    assert (a - c).abs().flatten(1).amax(1).min() > 1e-4  # same z, other label: another image
    one_hot = torch.nn.functional.one_hot(labels, 10).float()
    assert torch.equal(model.sample(one_hot, generator=torch.Generator().manual_seed(1)), a)
    x, _ = images(3)
    mu0, _ = model.encode(x, model.one_hot(labels, 3))
    mu1, _ = model.encode(x, model.one_hot(labels + 1, 3))
    assert not torch.allclose(mu0, mu1)  # the encoder sees the label too


def test_cvae_trains_on_labelled_batches_and_explains_bad_labels():
    torch.manual_seed(0)
    model = aelab.build("cvae", hidden=(32,), latent_dim=2)
    x, y = images(16)
    history = aelab.fit(model, (x, y), epochs=2, batch_size=8, progress=False, device="cpu")
    assert set(history.terms) == {"recon", "kl"}
    with pytest.raises(TypeError, match=r"\(x, y\) batches"):
        aelab.fit(model, x, max_steps=1, progress=False, device="cpu")
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\)"):
        model(x, y + 10)
    with pytest.raises(ValueError, match="got 3 labels for a batch of 16"):
        model(x, y[:3])
    with pytest.raises(ValueError, match=r"one-hot \(B, 10\)"):
        model(x, torch.rand(16, 4))


# -- IWAE ------------------------------------------------------------------------------------------

def test_iwae_with_one_sample_is_the_vae_objective():
    torch.manual_seed(0)
    vae = aelab.build("vae", hidden=(32,), latent_dim=3)
    iwae = aelab.build("iwae", hidden=(32,), latent_dim=3, k=1)
    iwae.load_state_dict(vae.state_dict())
    x, _ = images()
    torch.manual_seed(5)
    v_out = vae(x)
    v_loss = vae.loss(x, v_out)
    torch.manual_seed(5)
    i_out = iwae(x)
    i_loss = iwae.loss(x, i_out)
    assert torch.equal(i_out.z[0], v_out.z)  # same weights, same eps
    # the reported one-sample ELBO is exactly the VAE's objective
    assert torch.allclose(-i_loss.terms["elbo"], v_loss.total)
    # the k = 1 bound is that ELBO with the KL estimated by the sample: log q(z|x) - log p(z)
    log_px = bernoulli_log_likelihood(x, v_out.recon)
    mc_kl = log_normal(v_out.z, v_out.mu, v_out.logvar) - log_normal(v_out.z)
    assert torch.allclose(i_loss.total, -(log_px - mc_kl).mean())
    # ... which is the VAE's objective in expectation over eps: E[log p(z) - log q(z|x)] = -KL
    xs = x.repeat(500, 1, 1, 1)
    with torch.no_grad():
        out = iwae(xs)
        gap = iwae.log_weights(out)[0] - (bernoulli_log_likelihood(xs, out.recon) - kl_normal(out.mu, out.logvar))
    assert gap.std() > 0.1 and abs(gap.mean()) < 4 * gap.std() / math.sqrt(gap.numel())


def test_iwae_bound_is_above_the_elbo_and_uses_given_eps():
    torch.manual_seed(0)
    model = aelab.build("iwae", hidden=(32,), latent_dim=3, k=16).eval()
    x, _ = images(4)
    eps = torch.randn(16, 4, 3)
    out = model(x, eps=eps)
    assert out.z.shape == (16, 4, 3) and out.recons.shape == (16, 4, 1, 28, 28)
    assert torch.equal(out.recon, out.recons[0])
    assert torch.allclose(out.z, out.mu + (0.5 * out.logvar).exp() * eps)
    lw = model.log_weights(out)
    assert lw.shape == (16, 4)
    terms = model.loss(x, out).terms
    # L_k >= mean of the k one-sample bounds (Jensen), exactly, sample by sample
    assert terms["iwae_bound"] >= lw.mean(0).mean()
    with pytest.raises(ValueError, match="no KL weight"):
        aelab.build("iwae", beta=4.0)


def test_importance_sampled_nll_runs_on_vae_family_models():
    torch.manual_seed(0)
    x, _ = images(4)
    for name in ("vae", "iwae", "info_vae"):
        model = aelab.build(name, hidden=(32,), latent_dim=2)
        nll = aelab.functional.importance_sampled_nll(model, x, k=20, chunk=7)
        assert nll.shape == (4,) and torch.isfinite(nll).all()
        elbo_nll = aelab.functional.importance_sampled_nll(model, x.repeat(50, 1, 1, 1), k=1).view(50, 4).mean(0)
        assert (nll < elbo_nll + 1.0).all()  # in expectation k samples are no worse than one


# -- InfoVAE ---------------------------------------------------------------------------------------

def test_info_vae_objective_weights_and_the_elbo_special_case():
    torch.manual_seed(0)
    vae = aelab.build("vae", hidden=(32,), latent_dim=3)
    info = aelab.build("info_vae", hidden=(32,), latent_dim=3, alpha=0.0, lambda_=1.0)
    info.load_state_dict(vae.state_dict())
    x, _ = images()
    torch.manual_seed(2)
    v = vae.loss(x, vae(x))
    torch.manual_seed(2)
    i = info.loss(x, info(x))
    assert torch.allclose(i.total, v.total)  # alpha = 0, lambda = 1: the ELBO, the MMD has weight 0
    weighted = aelab.build("info_vae", hidden=(32,), latent_dim=3, alpha=0.25, lambda_=10.0)
    weighted.load_state_dict(vae.state_dict())
    loss = weighted.loss(x, weighted(x))
    t = loss.terms
    assert torch.allclose(loss.total, t["recon"] + 0.75 * t["kl"] + 9.25 * t["mmd"])
    # the defaults (alpha = 0, lambda = 100): the ELBO's KL with weight 1 plus 99 MMD^2
    default = aelab.build("info_vae", hidden=(32,), latent_dim=3)
    default.load_state_dict(vae.state_dict())
    loss = default.loss(x, default(x))
    t = loss.terms
    assert torch.allclose(loss.total, t["recon"] + t["kl"] + 99.0 * t["mmd"])
    with pytest.raises(ValueError, match="alpha must be <= 1"):
        aelab.build("info_vae", alpha=1.5)
    with pytest.raises(ValueError, match="MMD weight"):
        aelab.build("info_vae", alpha=0.0, lambda_=0.5)


# -- WAE-MMD and SWAE ------------------------------------------------------------------------------

@pytest.mark.parametrize("kernel", ["imq", "rbf"])
def test_wae_mmd_term_vanishes_when_codes_are_prior_samples(kernel):
    torch.manual_seed(0)
    model = aelab.build("wae_mmd", hidden=(32,), latent_dim=4, kernel=kernel)
    x, _ = images(400)
    out = model(x)
    out.z = torch.randn(400, 4)  # codes distributed exactly like the prior
    near = model.loss(x, out).terms["mmd"]
    out.z = torch.randn(400, 4) * 0.5 + 1.0
    far = model.loss(x, out).terms["mmd"]
    assert abs(near) < 0.02 * far and far > 0


def test_wae_loss_is_cost_plus_lambda_mmd():
    torch.manual_seed(0)
    model = aelab.build("wae_mmd", hidden=(32,), latent_dim=3, lambda_=7.0)
    x, _ = images()
    out = model(x)
    loss = model.loss(x, out)
    assert torch.allclose(loss.terms["recon"], (out.recon - x).pow(2).flatten(1).sum(1).mean())
    assert torch.allclose(loss.total, loss.terms["recon"] + 7.0 * loss.terms["mmd"])
    assert out.logvar is None and torch.equal(out.z, out.mu)  # the deterministic encoder
    stochastic = aelab.build("wae_mmd", hidden=(32,), latent_dim=3, stochastic=True)(x)
    assert stochastic.logvar.shape == (8, 3) and not torch.equal(stochastic.z, stochastic.mu)
    assert model.sample(5).shape == (5, 1, 28, 28)


@pytest.mark.parametrize("distance,term", [("sliced", "sliced_wasserstein"), ("energy", "energy")])
def test_swae_distance_is_small_for_prior_codes_and_large_for_shifted_ones(distance, term):
    torch.manual_seed(0)
    model = aelab.build("swae", hidden=(32,), latent_dim=4, distance=distance, lambda_=3.0)
    x, _ = images(300)
    out = model(x)
    loss = model.loss(x, out)
    assert set(loss.terms) == {"recon", term}
    assert torch.allclose(loss.total, loss.terms["recon"] + 3.0 * loss.terms[term])
    out.z = torch.randn(300, 4)
    near = model.loss(x, out).terms[term]
    out.z = torch.randn(300, 4) + 2.0
    far = model.loss(x, out).terms[term]
    assert near < 0.05 * far


# -- VQ-VAE ----------------------------------------------------------------------------------------

def vq(**kw):
    return aelab.build("vq_vae", **{"channels": 8, "embedding_dim": 4, "codebook_size": 16, **kw})


def test_vq_vae_grid_shapes_and_decode_indices():
    torch.manual_seed(0)
    model = vq().eval()
    x, _ = images(3)
    out = model(x)
    assert out.z_e.shape == (3, 4, 7, 7) and out.z_q.shape == (3, 4, 7, 7) and out.indices.shape == (3, 7, 7)
    assert torch.equal(out.z_q, model.codebook[out.indices].movedim(-1, 1))
    assert torch.allclose(model.decode_indices(out.indices), torch.sigmoid(out.recon), atol=1e-6)
    flat = aelab.build("vq_vae", backbone="mlp", hidden=(32,), n_vectors=5, embedding_dim=3, codebook_size=8)(x)
    assert flat.z_e.shape == (3, 3, 5) and flat.indices.shape == (3, 5)


def test_vq_straight_through_gradient_reaches_the_encoder():
    torch.manual_seed(0)
    model = vq()
    x, _ = images(4)
    out = model(x)
    loss = model.loss(x, out)
    recon_only = loss.terms["recon"]
    grads = torch.autograd.grad(recon_only, [model.encoder.net[0].weight, model.codebook], allow_unused=True)
    assert grads[0] is not None and grads[0].abs().sum() > 0  # through the straight-through estimator
    assert grads[1] is None or grads[1].abs().sum() == 0  # the reconstruction does not move the codes
    codebook_grad = torch.autograd.grad(loss.terms["codebook"], model.codebook)[0]
    assert codebook_grad.abs().sum() > 0
    assert torch.allclose(loss.total, loss.terms["recon"] + loss.terms["codebook"] + 0.25 * loss.terms["commitment"])


def _ctx(model, lr=0.0):
    return StepContext(model=model, optimizers=model.configure_optimizers(lr))


def test_vq_ema_update_moves_codes_to_the_mean_of_their_vectors():
    torch.manual_seed(0)
    model = vq(ema=True, decay=0.0, epsilon=1e-12, dead_code_steps=0)
    assert "codebook" not in dict(model.named_parameters())  # a buffer, moved by train_step only
    x, _ = images(6)
    model.train()
    with torch.no_grad():
        out = model(x)
    before = model.codebook.clone()
    loss = model.train_step(x, _ctx(model))  # lr = 0: the encoder is unchanged, only the EMA acts
    assert "codebook" not in loss.terms and "perplexity" in loss.terms
    rows = out.z_e.movedim(1, -1).reshape(-1, 4)
    idx = out.indices.flatten()
    for code in idx.unique():
        assert torch.allclose(model.codebook[code], rows[idx == code].mean(0), atol=1e-5)
    # decay gamma: the moving averages of counts and sums, from their initial values (1 and the code)
    smooth = vq(ema=True, decay=0.9, epsilon=0.0, dead_code_steps=0).train()
    with torch.no_grad():
        out = smooth(x)
    start = smooth.codebook.clone()
    smooth.train_step(x, _ctx(smooth))
    idx = out.indices.flatten()
    rows = out.z_e.movedim(1, -1).reshape(-1, 4)
    counts = torch.bincount(idx, minlength=16).float()
    sums = torch.zeros(16, 4).index_add_(0, idx, rows)
    size = 0.9 + 0.1 * counts
    assert torch.allclose(smooth.codebook, (0.9 * start + 0.1 * sums) / size[:, None], atol=1e-5)
    assert not torch.equal(before, model.codebook)


def test_vq_dead_codes_are_reset_to_encoder_outputs():
    torch.manual_seed(0)
    model = vq(dead_code_steps=2)
    x, _ = images(4)
    model.train()
    ctx = _ctx(model)  # lr = 0: the encoder outputs do not change between steps
    with torch.no_grad():
        rows = model._rows(model(x).z_e)
        first = model(x).indices.unique()
    assert (model.steps_unused == 2).all()
    model.train_step(x, ctx)  # the counters start at the threshold: every code the batch left unused is reset
    unused = torch.ones(16, dtype=torch.bool)
    unused[first] = False
    for code in unused.nonzero().flatten():
        assert (model.codebook[code] - rows).abs().amax(1).min() < 1e-5  # a copy of one encoder output
    assert (model.steps_unused == 0).all()
    with torch.no_grad():
        model.codebook[5] = 100.0  # far from every encoder output: never chosen again
    model.train_step(x, ctx)
    assert model.steps_unused[5] == 1 and model.codebook[5, 0] == 100.0  # unused for 1 step < 2: kept
    model.train_step(x, ctx)
    assert model.steps_unused[5] == 0 and (model.codebook[5] - rows).abs().amax(1).min() < 1e-5
    ema = vq(ema=True, dead_code_steps=1)
    ema.train()
    ema.train_step(x, _ctx(ema))
    with torch.no_grad():
        ema.codebook[2] = 100.0
        ema.ema_embed_sum[2] = 100.0
    ema.train_step(x, _ctx(ema))
    assert ema.codebook[2, 0] < 100.0 and ema.ema_cluster_size[2] == 1.0
    assert torch.equal(ema.ema_embed_sum[2], ema.codebook[2])
    off = vq(dead_code_steps=0).train()
    before = off.codebook.clone()
    off.train_step(x, _ctx(off))
    assert torch.equal(off.codebook, before)  # 0 disables resets (and lr = 0 leaves the codes alone)
