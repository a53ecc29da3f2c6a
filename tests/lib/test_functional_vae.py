"""aelab.functional for the VAE family: estimators, kernels, quantisation, the Laplace likelihood.

Each against a closed form, a brute-force loop, SciPy or Monte Carlo; shapes and reductions pinned.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
from torch.distributions import Laplace, MultivariateNormal, Normal

import aelab
from aelab.functional import (
    codebook_perplexity,
    ema_codebook_update,
    energy_distance,
    importance_sampled_nll,
    imq_kernel,
    iwae_bound,
    kernel_scales,
    laplace_log_likelihood,
    log_importance_weights,
    mmd,
    quantize,
    random_directions,
    rbf_kernel,
    sliced_wasserstein,
    straight_through,
)


pytestmark = pytest.mark.usefixtures("float64")  # see conftest.py


# -- Laplace likelihood ----------------------------------------------------------------------------

def test_laplace_log_likelihood_matches_distribution_fixed_and_learned_scale():
    x, loc = torch.randn(3, 2, 4), torch.randn(3, 2, 4)
    for log_scale in (0.0, math.log(0.1), torch.randn(2, 4)):
        scale = torch.as_tensor(log_scale).exp()
        ref = Laplace(loc, scale).log_prob(x).flatten(1).sum(1)
        out = laplace_log_likelihood(x, loc, log_scale)
        assert out.shape == (3,) and torch.allclose(out, ref)
    # one pixel at its location with b = 1: -log 2
    assert math.isclose(laplace_log_likelihood(torch.zeros(1, 1), torch.zeros(1, 1)).item(), -math.log(2.0))
    with pytest.raises(ValueError, match="same shape"):
        laplace_log_likelihood(torch.zeros(2, 784), torch.zeros(2, 1, 28, 28))


# -- importance weights and the IWAE bound ---------------------------------------------------------

def test_log_importance_weights_shape_value_and_errors():
    a, b, c = torch.randn(3, 5, 4).unbind(0)
    lw = log_importance_weights(a, b, c)
    assert lw.shape == (5, 4) and torch.allclose(lw, a + b - c)
    with pytest.raises(ValueError, match=r"\(K, B\)"):
        log_importance_weights(a, b, c.T)
    with pytest.raises(ValueError, match=r"\(K, B\)"):
        log_importance_weights(a[0], b[0], c[0])


def test_iwae_bound_is_log_mean_exp_over_samples_and_stable():
    lw = torch.randn(7, 3)
    assert torch.allclose(iwae_bound(lw), torch.log(lw.exp().mean(0)))
    assert torch.equal(iwae_bound(lw[:1]), lw[0])  # k = 1: the (one-sample) ELBO itself
    huge = torch.tensor([[-1e4, 2e4], [-1e4 + math.log(3.0), 2e4]])
    out = iwae_bound(huge)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, torch.tensor([-1e4 + math.log(2.0), 2e4]))
    with pytest.raises(ValueError, match=r"\(K, B\)"):
        iwae_bound(torch.randn(5))


def _linear_gaussian_1d(x: float, s2: float):
    """p(z) = N(0, 1), p(x|z) = N(z, s2): exact log p(x) and the exact posterior (mean, variance)."""
    return Normal(0.0, math.sqrt(1 + s2)).log_prob(torch.tensor(x)).item(), x / (1 + s2), s2 / (1 + s2)


def test_iwae_bound_grows_with_k_in_expectation_towards_exact_log_marginal():
    # Burda et al. 2015, theorem 1: E L_1 <= E L_k <= E L_m <= log p(x) for k <= m.
    x, s2 = 1.3, 0.4
    log_px, post_mu, post_var = _linear_gaussian_1d(x, s2)
    q_mu, q_var = post_mu + 0.6, 2.0 * post_var  # a mismatched proposal

    def bound(k: int, reps: int = 4000):
        z = q_mu + math.sqrt(q_var) * torch.randn(k, reps)
        lw = log_importance_weights(
            Normal(z, math.sqrt(s2)).log_prob(torch.tensor(x)), Normal(0.0, 1.0).log_prob(z), Normal(q_mu, math.sqrt(q_var)).log_prob(z)
        )
        b = iwae_bound(lw)
        return b.mean().item(), b.std().item() / math.sqrt(reps)

    (l1, e1), (l5, e5), (l50, e50), (l1000, e1000) = bound(1), bound(5), bound(50), bound(1000, reps=400)
    assert l1 + 3 * (e1 + e5) < l5 and l5 + 3 * (e5 + e50) < l50 and l50 < log_px + 3 * e50
    assert abs(l1000 - log_px) < 0.01
    # the k = 1 bound is the ELBO: log p(x) - KL(q || posterior)
    kl = math.log(math.sqrt(post_var / q_var)) + (q_var + (q_mu - post_mu) ** 2) / (2 * post_var) - 0.5
    assert abs(l1 - (log_px - kl)) < 4 * e1


# -- importance-sampled NLL on a linear-Gaussian VAE -----------------------------------------------

D, d, S = 4, 2, 0.5  # data dim, latent dim, decoder std


def linear_gaussian_vae(mean_shift: float = 0.0, var_factor: float = 1.0):
    """aelab's VAE with linear maps set by hand: p(x) = N(b, W W^T + S^2 I) in closed form.

    W has orthogonal columns, so the exact posterior is a diagonal Gaussian and the encoder can
    represent it: mean A (x - b), A = Sigma W^T / S^2, Sigma = (I + W^T W / S^2)^-1. The proposal
    is that posterior, its mean shifted and its variance scaled when asked.
    """
    model = aelab.build("vae", input_shape=(D,), hidden=(), latent_dim=d, likelihood="gaussian", sigma=S).eval()
    q = torch.linalg.qr(torch.randn(D, D)).Q
    w = q[:, :d] * torch.tensor([1.5, 0.7])
    b = torch.randn(D)
    sigma_post = torch.linalg.inv(torch.eye(d) + w.T @ w / S**2)
    assert torch.allclose(sigma_post, torch.diag(sigma_post.diagonal()))
    a = sigma_post @ w.T / S**2
    enc, dec = model.encoder.net[0], model.decoder.net[0]
    with torch.no_grad():
        dec.weight.copy_(w)
        dec.bias.copy_(b)
        enc.weight.zero_()
        enc.weight[:d] = a
        enc.bias[:d] = -a @ b + mean_shift
        enc.bias[d:] = torch.log(sigma_post.diagonal() * var_factor)
    marginal = MultivariateNormal(b, w @ w.T + S**2 * torch.eye(D))
    return model, marginal


def test_nll_is_exact_with_the_exact_posterior_as_proposal():
    # With q(z|x) = p(z|x) every weight equals p(x): one sample gives the exact value.
    model, marginal = linear_gaussian_vae()
    x = marginal.sample((6,))
    exact = -marginal.log_prob(x)
    for k, chunk in ((1, 1), (7, 3)):
        nll = importance_sampled_nll(model, x, k=k, batch_size=4, chunk=chunk)
        assert nll.shape == (6,) and torch.allclose(nll, exact, atol=1e-9)


def test_nll_converges_to_the_exact_value_with_a_mismatched_proposal():
    model, marginal = linear_gaussian_vae(mean_shift=0.3, var_factor=1.5)
    x = marginal.sample((5,))
    exact = -marginal.log_prob(x)
    g = torch.Generator().manual_seed(1)
    one = torch.stack([importance_sampled_nll(model, x, k=1, generator=g) for _ in range(300)]).mean(0)
    assert (one > exact + 0.05).all()  # k = 1 is minus the ELBO: too high by KL(q || posterior)
    many = importance_sampled_nll(model, x, k=20000, batch_size=5, chunk=2500, generator=g)
    assert (many - exact).abs().max() < 0.02


def test_nll_combines_chunks_exactly_and_restores_training_mode():
    model, marginal = linear_gaussian_vae(mean_shift=0.3, var_factor=1.5)
    x = marginal.sample((3,))

    class Spy:
        """Only the protocol (no nn.Module): encode, decoder, log_likelihood; records every z."""

        def __init__(self):
            self.zs = []

        def encode(self, x):
            return model.encode(x)

        def decoder(self, z):
            self.zs.append(z.clone())
            return model.decoder(z)

        def log_likelihood(self, x, recon):
            return model.log_likelihood(x, recon)

    spy = Spy()
    k = 10
    nll = importance_sampled_nll(spy, x, k=k, batch_size=2, chunk=4)
    assert [z.shape[0] for z in spy.zs] == [8, 8, 4, 4, 4, 2]  # batches of 2 then 1 example; chunks 4, 4, 2
    mu, logvar = model.encode(x)
    for i in range(3):
        batch, row = (0, i) if i < 2 else (1, 0)
        n_ex = 2 if batch == 0 else 1
        chunks = spy.zs[3 * batch:3 * batch + 3]
        z = torch.cat([c.view(-1, n_ex, d)[:, row] for c in chunks])  # (k, d) samples of example i
        assert z.shape == (k, d)
        xi = x[i].expand(k, D)
        lw = (Normal(model.decoder(z), S).log_prob(xi).sum(1) + Normal(0.0, 1.0).log_prob(z).sum(1)
              - Normal(mu[i], (0.5 * logvar[i]).exp()).log_prob(z).sum(1))
        brute = -(torch.logsumexp(lw, 0) - math.log(k))
        assert torch.allclose(nll[i], brute)
    model.train()
    importance_sampled_nll(model, x, k=2)
    assert model.training
    with pytest.raises(ValueError, match="k, batch_size and chunk"):
        importance_sampled_nll(model, x, k=0)


# -- kernels and MMD -------------------------------------------------------------------------------

def _brute_mmd(x, y, k, unbiased):
    n, m = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if not (unbiased and i == j))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if not (unbiased and i == j))
    kxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m))
    nxx, nyy = (n * (n - 1), m * (m - 1)) if unbiased else (n * n, m * m)
    return kxx / nxx + kyy / nyy - 2 * kxy / (n * m)


def test_kernel_matrices_and_mmd_against_a_double_loop():
    x, y = torch.randn(5, 3), torch.randn(4, 3) + 0.5
    rbf = lambda a, b, h: sum(math.exp(-float(((a - b) ** 2).sum()) / (2 * s * s)) for s in h)  # noqa: E731
    imq = lambda a, b, c: sum(s / (s + float(((a - b) ** 2).sum())) for s in c)  # noqa: E731
    hs, cs = (0.5, 2.0), (1.0, 6.0)
    assert rbf_kernel(x, y, hs).shape == (5, 4)
    assert torch.allclose(rbf_kernel(x, y, hs), torch.tensor([[rbf(a, b, hs) for b in y] for a in x]))
    assert torch.allclose(imq_kernel(x, y, cs), torch.tensor([[imq(a, b, cs) for b in y] for a in x]))
    assert torch.allclose(rbf_kernel(x, y, 1.3), torch.tensor([[rbf(a, b, (1.3,)) for b in y] for a in x]))
    for unbiased in (True, False):
        got = mmd(x, y, kernel="rbf", scale=hs, unbiased=unbiased)
        assert got.dim() == 0
        assert math.isclose(got.item(), _brute_mmd(x, y, lambda a, b: rbf(a, b, hs), unbiased), rel_tol=1e-10)
        got = mmd(x, y, kernel="imq", scale=cs, unbiased=unbiased)
        assert math.isclose(got.item(), _brute_mmd(x, y, lambda a, b: imq(a, b, cs), unbiased), rel_tol=1e-10)
    # defaults: bandwidth sqrt(d) for RBF, C = 2 d for IMQ; a callable kernel is used as given
    assert torch.allclose(mmd(x, y, "rbf"), mmd(x, y, "rbf", scale=math.sqrt(3)))
    assert torch.allclose(mmd(x, y, "imq"), mmd(x, y, lambda a, b: imq_kernel(a, b, 6.0)))
    with pytest.raises(ValueError, match="kernel must be"):
        mmd(x, y, kernel="laplacian")
    with pytest.raises(ValueError, match="same d"):
        mmd(x, torch.randn(4, 2))
    with pytest.raises(ValueError, match="positive"):
        rbf_kernel(x, y, 0.0)


def test_kernel_scales_follow_the_2_d_prior_var_convention():
    assert kernel_scales("imq", 8, (0.5, 1.0, 2.0)) == (8.0, 16.0, 32.0)
    h = kernel_scales("rbf", 8, (1.0,), prior_var=2.0)[0]
    assert math.isclose(2 * h * h, 2 * 8 * 2.0)
    with pytest.raises(ValueError, match="kernel must be"):
        kernel_scales("rbff", 3)


def test_unbiased_mmd_is_zero_in_expectation_for_one_distribution_and_positive_for_two():
    reps, n, dim = 300, 20, 3
    same_u = torch.stack([mmd(torch.randn(n, dim), torch.randn(n, dim), "imq") for _ in range(reps)])
    same_v = torch.stack([mmd(torch.randn(n, dim), torch.randn(n, dim), "imq", unbiased=False) for _ in range(reps)])
    se = same_u.std() / math.sqrt(reps)
    assert abs(same_u.mean()) < 3 * se
    assert (same_u < 0).any()  # a U-statistic: unbiased, so sometimes negative
    assert (same_v >= 0).all() and same_v.mean() > 10 * se  # the V-statistic is biased upwards
    diff = torch.stack([mmd(torch.randn(n, dim), torch.randn(n, dim) + 1.0, "imq") for _ in range(50)])
    assert diff.mean() > 20 * se and (diff > 0).all()


def test_rbf_mmd_between_two_gaussians_matches_its_closed_form():
    # X ~ N(m1, s1^2 I), Y ~ N(m2, s2^2 I), k = exp(-|x - y|^2 / (2 h^2)):
    # E k(X, Y) = (h^2 / (h^2 + s1^2 + s2^2))^(d/2) exp(-|m1 - m2|^2 / (2 (h^2 + s1^2 + s2^2))).
    dim, h, s1, s2 = 3, 1.5, 1.0, 0.6
    m1, m2 = torch.zeros(dim), torch.tensor([1.5, -1.0, 0.5])

    def ek(sa, sb, delta):
        v = h * h + sa * sa + sb * sb
        return (h * h / v) ** (dim / 2) * math.exp(-float(delta @ delta) / (2 * v))

    exact = ek(s1, s1, torch.zeros(dim)) + ek(s2, s2, torch.zeros(dim)) - 2 * ek(s1, s2, m1 - m2)
    x, y = m1 + s1 * torch.randn(1000, dim), m2 + s2 * torch.randn(1000, dim)
    assert abs(mmd(x, y, "rbf", scale=h).item() - exact) < 0.1 * exact


# -- sliced Wasserstein and energy distance --------------------------------------------------------

def test_sliced_wasserstein_in_1d_is_the_exact_wasserstein_distance():
    x, y = torch.randn(50, 1), 0.5 * torch.randn(50, 1) + 1.0
    w1 = scipy.stats.wasserstein_distance(x[:, 0].numpy(), y[:, 0].numpy())
    sw = sliced_wasserstein(x, y, n_projections=3, p=1)
    assert sw.dim() == 0 and math.isclose(sw.item(), w1, rel_tol=1e-12)
    w2sq = ((x[:, 0].sort().values - y[:, 0].sort().values) ** 2).mean()
    assert torch.allclose(sliced_wasserstein(x, y, n_projections=3, p=2), w2sq)


def test_sliced_wasserstein_between_gaussians_with_equal_covariance():
    # theta.X ~ N(theta.m1, theta^T C theta), theta.Y the same shifted by theta.delta:
    # W_2^2 = (theta.delta)^2 per direction, and E_theta (theta.delta)^2 = |delta|^2 / d.
    dim, n = 5, 2000
    delta = torch.tensor([1.0, -0.5, 0.3, 0.0, 0.8])
    sq = float(delta @ delta)
    l = torch.randn(dim, dim) * 0.4
    x = torch.randn(n, dim) @ l.T
    # the same sample shifted: every projection is shifted exactly, so W_2^2 = (theta.delta)^2 exactly
    theta = random_directions(300, dim, torch.Generator().manual_seed(0))
    assert torch.allclose(theta.norm(dim=1), torch.ones(300))
    given = sliced_wasserstein(x, x + delta, directions=theta)
    assert given.dim() == 0 and torch.allclose(given, ((theta @ delta) ** 2).mean())
    sw = sliced_wasserstein(x, x + delta, n_projections=300, generator=torch.Generator().manual_seed(1))
    theta = random_directions(300, dim, torch.Generator().manual_seed(1))  # the directions it drew
    assert torch.allclose(sw, ((theta @ delta) ** 2).mean())
    # averaged over the sphere the directions give |delta|^2 / d
    many = random_directions(100_000, dim, torch.Generator().manual_seed(2))
    assert abs(((many @ delta) ** 2).mean().item() - sq / dim) < 0.01 * sq / dim
    # two independent samples: the same value up to sampling noise
    y = torch.randn(n, dim) @ l.T + delta
    sw = sliced_wasserstein(x, y, n_projections=2000, generator=torch.Generator().manual_seed(3))
    assert abs(sw.item() - sq / dim) < 0.12 * sq / dim
    with pytest.raises(ValueError, match="equal size"):
        sliced_wasserstein(x, y[:10])


def test_energy_distance_matches_scipy_and_vanishes_for_identical_samples():
    x, y = torch.randn(40, 1), torch.rand(30, 1) * 2
    ref = scipy.stats.energy_distance(x[:, 0].numpy(), y[:, 0].numpy())
    ed = energy_distance(x, y)
    assert ed.dim() == 0 and math.isclose(ed.item(), ref**2, rel_tol=1e-10)  # SciPy returns the square root
    z = torch.randn(25, 4, requires_grad=True)
    same = energy_distance(z, z.detach().clone())
    assert same.item() == 0.0
    same.backward()
    assert torch.isfinite(z.grad).all()  # zero distances must not give NaN gradients
    assert energy_distance(torch.randn(30, 4), torch.randn(30, 4) + 1).item() > 0


def test_energy_distance_is_an_average_of_projected_1d_energy_distances():
    # Cramér–Wold / Radon: |v| = c_d E_theta |theta.v| with c_d = sqrt(pi) Gamma((d+1)/2) / Gamma(d/2),
    # so the d-dim energy distance is c_d times the mean over directions of the 1-D ones.
    dim = 3
    x, y = torch.randn(40, dim), torch.randn(30, dim) * 1.5 + 0.5
    theta = random_directions(5000, dim, torch.Generator().manual_seed(0))
    px, py = x @ theta.T, y @ theta.T  # (n, L)
    one_d = (2 * (px[:, None] - py[None]).abs().mean((0, 1)) - (px[:, None] - px[None]).abs().mean((0, 1))
             - (py[:, None] - py[None]).abs().mean((0, 1)))
    c = math.sqrt(math.pi) * math.gamma((dim + 1) / 2) / math.gamma(dim / 2)
    assert abs(c * one_d.mean().item() - energy_distance(x, y).item()) < 0.03 * energy_distance(x, y).item()


# -- vector quantisation ---------------------------------------------------------------------------

def test_quantize_picks_the_nearest_code_and_straight_through_copies_gradients():
    z, codebook = torch.randn(30, 3), torch.randn(7, 3)
    z_q, idx = quantize(z, codebook)
    brute = torch.tensor([min(range(7), key=lambda j: float(((v - codebook[j]) ** 2).sum())) for v in z])
    assert idx.dtype == torch.long and torch.equal(idx, brute) and torch.equal(z_q, codebook[brute])
    z_e = z.clone().requires_grad_(True)
    out = straight_through(z_e, z_q)
    assert torch.allclose(out, z_q)
    weights = torch.randn(30, 3)
    (out * weights).sum().backward()
    assert torch.equal(z_e.grad, weights)  # identity backward
    with pytest.raises(ValueError, match="same D"):
        quantize(z, torch.randn(7, 2))


def test_codebook_perplexity_counts_effective_codes():
    assert math.isclose(codebook_perplexity(torch.arange(8).repeat(3), 8).item(), 8.0, rel_tol=1e-6)
    assert math.isclose(codebook_perplexity(torch.full((5, 2), 3), 8).item(), 1.0, rel_tol=1e-6)
    two = codebook_perplexity(torch.tensor([0, 0, 0, 1]), 4).item()
    p = np.array([0.75, 0.25])
    assert math.isclose(two, math.exp(-(p * np.log(p)).sum()), rel_tol=1e-6)


def test_ema_codebook_update_closed_form():
    z = torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, -1.0]])
    idx = torch.tensor([0, 0, 2])
    size0, sum0 = torch.tensor([1.0, 2.0, 1.0]), torch.tensor([[1.0, 1.0], [2.0, 2.0], [0.0, 0.0]])
    gamma, eps = 0.9, 1e-3
    size, total, codebook = ema_codebook_update(size0, sum0, z, idx, decay=gamma, epsilon=eps)
    exp_size = gamma * size0 + (1 - gamma) * torch.tensor([2.0, 0.0, 1.0])
    exp_sum = gamma * sum0 + (1 - gamma) * torch.tensor([[2.0, 4.0], [0.0, 0.0], [4.0, -1.0]])
    n = exp_size.sum()
    smoothed = (exp_size + eps) / (n + 3 * eps) * n
    assert torch.allclose(size, exp_size) and torch.allclose(total, exp_sum)
    assert torch.allclose(codebook, exp_sum / smoothed[:, None])
    assert torch.equal(size0, torch.tensor([1.0, 2.0, 1.0]))  # pure: inputs untouched
    # decay 0, no smoothing: each used code is the mean of its assigned vectors
    _, _, means = ema_codebook_update(size0, sum0, z, idx, decay=0.0, epsilon=0.0)
    assert torch.allclose(means[0], torch.tensor([1.0, 2.0])) and torch.allclose(means[2], z[2])

