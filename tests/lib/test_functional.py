"""aelab.functional against closed forms, Monte Carlo and independent formulas; reductions pinned."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from aelab.functional import (
    bernoulli_log_likelihood,
    elbo,
    gaussian_log_likelihood,
    kl_normal,
    log_normal,
    reparameterize,
    topk_activation,
)

pytestmark = pytest.mark.usefixtures("float64")  # see conftest.py


def test_kl_standard_normal_closed_form_values():
    # KL(N(1, 1) || N(0, 1)) = 0.5 per dimension; KL(N(0, e) || N(0, 1)) = 0.5 (e - 1 - 1).
    mu = torch.ones(3, 4)
    assert torch.allclose(kl_normal(mu, torch.zeros(3, 4)), torch.full((3,), 2.0))
    lv = torch.ones(2, 5)
    assert torch.allclose(kl_normal(torch.zeros(2, 5), lv), torch.full((2,), 5 * 0.5 * (math.e - 2)))
    assert torch.allclose(kl_normal(torch.zeros(2, 3), torch.zeros(2, 3)), torch.zeros(2))


def test_kl_matches_torch_distributions_both_forms():
    mu, lv, mu_p, lv_p = torch.randn(4, 7, 6).unbind(0)
    q, p = Normal(mu, (0.5 * lv).exp()), Normal(mu_p, (0.5 * lv_p).exp())
    assert torch.allclose(kl_normal(mu, lv, mu_p, lv_p), kl_divergence(q, p).sum(-1))
    std = Normal(torch.zeros_like(mu), torch.ones_like(mu))
    assert torch.allclose(kl_normal(mu, lv), kl_divergence(q, std).sum(-1))


def test_kl_reduction_sums_latents_keeps_batch():
    mu, lv = torch.randn(5, 3), torch.randn(5, 3)
    out = kl_normal(mu, lv)
    assert out.shape == (5,)
    per_dim = torch.stack([kl_normal(mu[:, i:i + 1], lv[:, i:i + 1]) for i in range(3)], 1)
    assert torch.allclose(out, per_dim.sum(1))
    # images of latents are flattened: (B, C, H, W) sums over all of C, H, W
    assert kl_normal(torch.randn(2, 2, 3, 3), torch.zeros(2, 2, 3, 3)).shape == (2,)


def test_kl_monte_carlo():
    mu, lv = torch.tensor([[0.3, -1.0]]), torch.tensor([[-0.5, 0.4]])
    z = reparameterize(mu.expand(200_000, 2), lv.expand(200_000, 2))
    mc = (log_normal(z, mu, lv) - log_normal(z)).mean()
    assert abs(mc.item() - kl_normal(mu, lv).item()) < 0.01


def test_reparameterize_moments_gradients_and_eps():
    mu, lv = torch.tensor([1.5, -2.0], requires_grad=True), torch.tensor([0.0, math.log(4.0)], requires_grad=True)
    z = reparameterize(mu.expand(100_000, 2), lv.expand(100_000, 2))
    assert torch.allclose(z.mean(0), mu.detach(), atol=0.03)
    assert torch.allclose(z.std(0), torch.tensor([1.0, 2.0]), atol=0.03)
    z.sum().backward()
    assert mu.grad is not None and lv.grad is not None
    eps = torch.randn(3, 2)
    assert torch.allclose(reparameterize(mu.detach(), lv.detach(), eps), mu.detach() + (0.5 * lv.detach()).exp() * eps)


def test_bernoulli_log_likelihood_matches_distribution_and_is_stable():
    logits = torch.randn(4, 1, 5, 5) * 3
    x = torch.bernoulli(torch.full((4, 1, 5, 5), 0.5))
    ref = Bernoulli(logits=logits).log_prob(x).flatten(1).sum(1)
    assert torch.allclose(bernoulli_log_likelihood(x, logits), ref)
    big = torch.tensor([[1000.0, -1000.0]])
    out = bernoulli_log_likelihood(torch.tensor([[1.0, 0.0]]), big)
    assert torch.isfinite(out).all() and abs(out.item()) < 1e-6


def test_gaussian_log_likelihood_fixed_and_learned_variance():
    x, mean = torch.randn(3, 2, 4), torch.randn(3, 2, 4)
    for logvar in (0.0, math.log(0.01), torch.randn(2, 4)):
        std = torch.as_tensor(logvar).mul(0.5).exp()
        ref = Normal(mean, std).log_prob(x).flatten(1).sum(1)
        assert torch.allclose(gaussian_log_likelihood(x, mean, logvar), ref)
    # one pixel at its mean with unit variance: -0.5 log(2 pi)
    one = gaussian_log_likelihood(torch.zeros(1, 1), torch.zeros(1, 1))
    assert math.isclose(one.item(), -0.5 * math.log(2 * math.pi), rel_tol=1e-12)


def test_likelihood_shape_errors_are_clear():
    with pytest.raises(ValueError, match="same shape"):
        bernoulli_log_likelihood(torch.zeros(2, 784), torch.zeros(2, 1, 28, 28))
    with pytest.raises(ValueError, match="per-example"):
        elbo(torch.zeros(2, 3), torch.zeros(2))


def test_elbo_is_loglik_minus_beta_kl_per_example():
    ll, kl = torch.randn(6), torch.rand(6)
    assert torch.allclose(elbo(ll, kl), ll - kl)
    assert torch.allclose(elbo(ll, kl, beta=4.0), ll - 4 * kl)


def test_elbo_bounds_log_marginal_of_a_linear_gaussian_model():
    # p(z) = N(0, 1), p(x|z) = N(z, s2): log p(x) = log N(x; 0, 1 + s2); the ELBO with the exact
    # posterior equals it, any other q gives less.
    s2, x = 0.5, torch.tensor([[0.7]])
    log_px = Normal(0.0, math.sqrt(1 + s2)).log_prob(x).sum()
    post_var = s2 / (1 + s2)
    post_mu = x / (1 + s2)

    def mc_elbo(mu, var, n=400_000):
        z = reparameterize(mu.expand(n, 1), torch.log(torch.tensor(var)).expand(n, 1))
        ll = gaussian_log_likelihood(x.expand(n, 1), z, math.log(s2))
        return elbo(ll, kl_normal(mu.expand(n, 1), torch.log(torch.tensor(var)).expand(n, 1))).mean()

    assert abs(mc_elbo(post_mu, post_var).item() - log_px.item()) < 5e-3
    assert mc_elbo(post_mu + 0.5, post_var).item() < log_px.item() - 0.05


def test_topk_activation_keeps_k_largest():
    pre = torch.tensor([[0.1, 3.0, -1.0, 2.0], [5.0, 4.0, 3.0, 2.0]])
    out = topk_activation(pre, 2)
    assert torch.equal(out, torch.tensor([[0.0, 3.0, 0.0, 2.0], [5.0, 4.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="k must be"):
        topk_activation(pre, 5)
