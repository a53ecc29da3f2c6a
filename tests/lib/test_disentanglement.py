"""Disentanglement objectives and models: the minibatch estimators of q(z), the KL decomposition,
permute_dims, beta-VAE with capacity annealing, beta-TCVAE and FactorVAE with its second optimizer.

The aggregate posterior is checked against a brute-force sum over a whole small data set; what each
estimator should equal is stated where it is tested (MWS: the exact density divided by N when the
batch is the data set; MSS: the exact density on average over uniformly drawn batches).
"""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from torch.distributions import MultivariateNormal, Normal

import aelab
from aelab.functional import (
    bernoulli_log_likelihood,
    kl_decomposition,
    kl_normal,
    log_aggregate_posterior,
    log_density_gaussian,
    minibatch_log_weights,
    permute_dims,
)
from aelab.train import StepContext


# -- brute force over a whole data set -------------------------------------------------------------

def exact_log_qz(z, mu_all, logvar_all):
    """log q(z) and each log q(z_k) with q(z) = (1/N) sum_n N(z; mu_n, diag var_n), by a loop over n."""
    n_data = mu_all.shape[0]
    joint, marginal = [], []
    for n in range(n_data):
        comp = Normal(mu_all[n], (0.5 * logvar_all[n]).exp()).log_prob(z)  # (B, d)
        joint.append(comp.sum(1))
        marginal.append(comp)
    joint = torch.logsumexp(torch.stack(joint), 0) - math.log(n_data)
    marginal = torch.logsumexp(torch.stack(marginal), 0) - math.log(n_data)
    return joint, marginal  # (B,), (B, d)


def small_dataset(n=5, d=3, seed=0):
    """Posterior parameters of n examples and one sample z_n ~ q(z | x_n) each (float64)."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(n, d, generator=g)
    logvar = torch.randn(n, d, generator=g) * 0.3 - 0.5
    z = mu + (0.5 * logvar).exp() * torch.randn(n, d, generator=g)
    return z, mu, logvar


# -- log_density_gaussian and the weights ------------------------------------------------------------

def test_log_density_gaussian_covers_every_pair(float64):
    z, mu, logvar = torch.randn(4, 3), torch.randn(5, 3), torch.randn(5, 3)
    out = log_density_gaussian(z, mu, logvar)
    assert out.shape == (4, 5, 3)
    for i in range(4):
        for j in range(5):
            ref = Normal(mu[j], (0.5 * logvar[j]).exp()).log_prob(z[i])
            assert torch.allclose(out[i, j], ref)
    with pytest.raises(ValueError, match=r"z \(B, d\) and mu, logvar \(M, d\)"):
        log_density_gaussian(z, mu[:, :2], logvar[:, :2])


def test_minibatch_weights_mws_and_mss(float64):
    n, m = 10, 4
    mws = minibatch_log_weights(m, n, "mws")
    assert torch.allclose(mws, torch.full((m, m), -math.log(n * m)))
    w = minibatch_log_weights(m, n, "mss").exp()
    assert torch.allclose(w.sum(1), torch.ones(m))  # each row is a mixture: weights sum to 1
    assert torch.allclose(w.diag(), torch.full((m,), 1 / n))
    for i in range(m):
        last = (i + 1) % m
        assert math.isclose(w[i, last].item(), (n - m + 1) / (n * (m - 1)))
        others = [j for j in range(m) if j not in (i, last)]
        assert torch.allclose(w[i, others], torch.full((m - 2,), 1 / (m - 1)))
    # two examples of a two-example data set: the exact mixture, 1/2 and 1/2
    assert torch.allclose(minibatch_log_weights(2, 2, "mss").exp(), torch.full((2, 2), 0.5))
    with pytest.raises(ValueError, match="at least 2 examples"):
        minibatch_log_weights(1, n, "mss")
    with pytest.raises(ValueError, match=r"dataset_size \(3\) must be at least the batch size \(4\)"):
        minibatch_log_weights(4, 3, "mws")
    with pytest.raises(ValueError, match="estimator must be one of"):
        minibatch_log_weights(4, 10, "iwae")


# -- the estimators against the aggregate posterior of a whole data set -----------------------------

def test_mws_on_the_whole_data_set_is_the_exact_density_divided_by_n(float64):
    # MWS weighs every posterior of the batch by 1/(N M): with the batch = the N examples its density
    # is q(z)/N, not q(z) (Chen et al. derive it as a lower bound). Exactly so, for every point:
    z, mu, logvar = small_dataset(n=6, d=3)
    perm = torch.randperm(6)
    est = log_aggregate_posterior(z[perm], mu[perm], logvar[perm], dataset_size=6, estimator="mws")
    joint, marginal = exact_log_qz(z[perm], mu, logvar)
    assert torch.allclose(est.log_qz, joint - math.log(6))
    assert torch.allclose(est.log_qz_marginals, marginal - math.log(6))


def test_mws_averaged_over_batches_is_the_papers_lower_bound(float64):
    # Chen et al., appendix C.1: a batch holds example n and M - 1 others drawn i.i.d. from the data.
    # Averaged over all N^(M-1) such batches the MWS density is (q(z|n) + (M - 1) q(z)) / (N M) <= q(z).
    n_data, m = 4, 3
    z, mu, logvar = small_dataset(n=n_data, d=2, seed=1)
    joint, _ = exact_log_qz(z, mu, logvar)
    for n in range(n_data):
        densities = []
        for others in itertools.product(range(n_data), repeat=m - 1):
            idx = torch.tensor([n, *others])
            est = log_aggregate_posterior(z[idx], mu[idx], logvar[idx], n_data, "mws")
            densities.append(est.log_qz[0].exp())
        own = Normal(mu[n], (0.5 * logvar[n]).exp()).log_prob(z[n]).sum().exp()
        expected = (own + (m - 1) * joint[n].exp()) / (n_data * m)
        assert torch.allclose(torch.stack(densities).mean(), expected)
        assert expected <= joint[n].exp()


@pytest.mark.parametrize("m", [2, 3, 5])
def test_mss_is_unbiased_over_uniformly_drawn_batches(float64, m):
    # Batches drawn uniformly without replacement (every ordered M-subset of a 5-example data set):
    # the MSS density at z_n, averaged over the batches that hold n, is exactly q(z_n), for the joint
    # and for every marginal. With M = N the batch is the whole data set and only its order varies.
    n_data = 5
    z, mu, logvar = small_dataset(n=n_data, d=3, seed=2)
    joint, marginal = exact_log_qz(z, mu, logvar)
    sums, sums_marg, counts = torch.zeros(n_data), torch.zeros(n_data, 3), torch.zeros(n_data)
    for batch in itertools.permutations(range(n_data), m):
        idx = torch.tensor(batch)
        est = log_aggregate_posterior(z[idx], mu[idx], logvar[idx], n_data, "mss")
        sums.index_add_(0, idx, est.log_qz.exp())
        sums_marg.index_add_(0, idx, est.log_qz_marginals.exp())
        counts.index_add_(0, idx, torch.ones(m))
    assert torch.allclose(sums / counts, joint.exp(), rtol=1e-10)
    assert torch.allclose(sums_marg / counts[:, None], marginal.exp(), rtol=1e-10)


def test_known_wrong_weights_are_biased(float64):
    # The batch mixture with weight 1/M each (no 1/N for the own posterior) is not unbiased: over the
    # same batches as above it misses q(z) for a data set larger than the batch.
    n_data, m = 5, 3
    z, mu, logvar = small_dataset(n=n_data, d=3, seed=2)
    joint, _ = exact_log_qz(z, mu, logvar)
    sums, counts = torch.zeros(n_data), torch.zeros(n_data)
    for batch in itertools.permutations(range(n_data), m):
        idx = torch.tensor(batch)
        wrong = torch.logsumexp(log_density_gaussian(z[idx], mu[idx], logvar[idx]).sum(-1), 1) - math.log(m)
        sums.index_add_(0, idx, wrong.exp())
        counts.index_add_(0, idx, torch.ones(m))
    assert not torch.allclose(sums / counts, joint.exp(), rtol=1e-3)


# -- the decomposition -------------------------------------------------------------------------------

@pytest.mark.parametrize("estimator", ["mws", "mss"])
def test_decomposition_telescopes_to_the_monte_carlo_kl(float64, estimator):
    z, mu, logvar = small_dataset(n=8, d=4, seed=3)
    terms = kl_decomposition(z, mu, logvar, dataset_size=100, estimator=estimator)
    assert all(t.shape == (8,) for t in terms)
    log_q = Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(1)
    log_p = Normal(0.0, 1.0).log_prob(z).sum(1)
    assert torch.allclose(terms.mi + terms.tc + terms.dim_kl, log_q - log_p)


def test_decomposition_sum_estimates_the_closed_form_kl(float64):
    # the telescoped sum is log q(z|x) - log p(z) at z ~ q(z|x): its mean over samples is the KL
    _, mu, logvar = small_dataset(n=4, d=3, seed=4)
    draws = torch.stack([
        sum(kl_decomposition(mu + (0.5 * logvar).exp() * torch.randn_like(mu), mu, logvar, 50, "mss"))
        for _ in range(1000)
    ])  # (S, B)
    se = draws.std(0) / math.sqrt(draws.shape[0])
    assert ((draws.mean(0) - kl_normal(mu, logvar)).abs() < 4 * se).all()


def test_mws_terms_on_the_whole_data_set_are_the_exact_terms_shifted(float64):
    # q_mws = q / N for the joint and every marginal, so MI gains log N, TC gains (d - 1) log N and
    # the dimension-wise KL loses d log N; the sum is unchanged.
    n_data, d = 7, 3
    z, mu, logvar = small_dataset(n=n_data, d=d, seed=5)
    joint, marginal = exact_log_qz(z, mu, logvar)
    log_q = Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(1)
    log_p = Normal(0.0, 1.0).log_prob(z).sum(1)
    mws = kl_decomposition(z, mu, logvar, n_data, "mws")
    log_n = math.log(n_data)
    assert torch.allclose(mws.mi, log_q - joint + log_n)
    assert torch.allclose(mws.tc, joint - marginal.sum(1) + (d - 1) * log_n)
    assert torch.allclose(mws.dim_kl, marginal.sum(1) - log_p - d * log_n)


def grid_dataset():
    """Posterior means on a product grid with per-dimension variances shared by all examples: q(z)
    is then exactly the product of its marginals, so the total correlation is 0 at every z."""
    grids = [torch.tensor([-1.5, 0.0, 1.5]), torch.tensor([-1.0, 1.0]), torch.tensor([-2.0, 0.0, 2.0])]
    mu = torch.cartesian_prod(*grids)  # (18, 3)
    logvar = torch.log(torch.tensor([0.5, 0.6, 0.4]) ** 2).expand_as(mu).clone()
    z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
    return z, mu, logvar


def test_total_correlation_is_near_zero_for_a_factorised_aggregate_posterior(float64):
    z, mu, logvar = grid_dataset()
    n_data, d = mu.shape
    joint, marginal = exact_log_qz(z, mu, logvar)
    assert torch.allclose(joint, marginal.sum(1), atol=1e-12)  # exact TC = 0 pointwise
    tcs = []
    for _ in range(20):
        perm = torch.randperm(n_data)
        tcs.append(kl_decomposition(z[perm], mu[perm], logvar[perm], n_data, "mss").tc.mean())
        mws = kl_decomposition(z[perm], mu[perm], logvar[perm], n_data, "mws").tc
        assert torch.allclose(mws, torch.full_like(mws, (d - 1) * math.log(n_data)))  # 0 + (d - 1) log N
    tcs = torch.stack(tcs)
    assert tcs.abs().max() < 0.1 and tcs.mean().abs() < 0.02


def test_total_correlation_is_positive_for_correlated_posteriors(float64):
    # posterior means along the diagonal: the dimensions of q(z) move together
    g = torch.Generator().manual_seed(6)
    n_data, d = 400, 3
    t = torch.randn(n_data, generator=g)
    mu = torch.stack([t, t + 0.1 * torch.randn(n_data, generator=g), t], 1)
    logvar = torch.full((n_data, d), math.log(0.2**2))
    z = mu + 0.2 * torch.randn(n_data, d, generator=g)
    joint, marginal = exact_log_qz(z, mu, logvar)
    exact_tc = joint - marginal.sum(1)
    assert exact_tc.mean() > 2.0
    idx = torch.randperm(n_data, generator=g)[:100]
    mss = kl_decomposition(z[idx], mu[idx], logvar[idx], n_data, "mss").tc.mean()
    assert abs(mss - exact_tc[idx].mean()) < 0.3
    factorised = kl_decomposition(*grid_dataset(), 18, "mss").tc.mean()
    assert mss > factorised + 2.0


# -- permute_dims ------------------------------------------------------------------------------------

def test_permute_dims_keeps_each_column_and_breaks_dependence():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(4000, generator=g)
    z = torch.stack([t, 2 * t, -t + 0.1 * torch.randn(4000, generator=g)], 1)  # strongly dependent columns
    out = permute_dims(z, generator=torch.Generator().manual_seed(1))
    assert out.shape == z.shape
    for k in range(3):
        assert torch.equal(out[:, k].sort().values, z[:, k].sort().values)  # same multiset per column
    assert torch.corrcoef(z.T).abs().min() > 0.99
    corr = torch.corrcoef(out.T)
    assert (corr - torch.eye(3)).abs().max() < 0.08
    # reproducible with a generator, and the columns get different permutations
    again = permute_dims(z, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    assert not torch.equal(out, permute_dims(z, generator=torch.Generator().manual_seed(2)))
    rows = torch.arange(6.0)[:, None].expand(6, 50)  # every column 0..5: permutations are visible directly
    perms = permute_dims(rows.contiguous(), generator=torch.Generator().manual_seed(3))
    assert len({tuple(perms[:, k].tolist()) for k in range(50)}) > 1


def test_permute_dims_gradient_and_errors():
    z = torch.randn(5, 2, requires_grad=True)
    permute_dims(z).sum().backward()
    assert torch.equal(z.grad, torch.ones(5, 2))
    with pytest.raises(ValueError, match=r"\(B, d\)"):
        permute_dims(torch.randn(5))


# -- beta-VAE and capacity annealing -----------------------------------------------------------------

def small_beta_vae(**kw):
    return aelab.build("beta_vae", input_shape=(1, 28, 28), backbone="mlp", hidden=(32,), latent_dim=3, **kw)


def images(n=16, side=28, seed=0):
    return torch.rand(n, 1, side, side, generator=torch.Generator().manual_seed(seed))


def test_dsprites_defaults_shared_by_the_disentanglement_models():
    for name in ("beta_vae", "beta_tcvae", "factor_vae"):
        cfg = aelab.build(name, channels=4, hidden=(8,)).config
        assert cfg.input_shape == (1, 64, 64) and cfg.backbone == "conv"
        assert cfg.likelihood == "bernoulli" and cfg.latent_dim == 10
    model = aelab.build("beta_vae", channels=4, hidden=(8,))
    out = model(images(2, side=64))
    assert out.recon.shape == (2, 1, 64, 64) and out.mu.shape == (2, 10)
    assert model.config.beta == 4.0 and not model.config.anneal_capacity


def test_beta_vae_loss_weighs_the_kl_and_pins_the_reduction():
    torch.manual_seed(0)
    model = small_beta_vae(beta=4.0)
    x = images()
    out = model(x)
    loss = model.loss(x, out)
    recon = -bernoulli_log_likelihood(x, out.recon)  # summed over pixels, (B,)
    kl = kl_normal(out.mu, out.logvar)  # summed over latents, (B,)
    assert torch.allclose(loss.total, (recon + 4.0 * kl).mean())
    assert set(loss.terms) == {"recon", "kl"}
    assert torch.allclose(loss.terms["recon"], recon.mean()) and torch.allclose(loss.terms["kl"], kl.mean())


def test_capacity_objective_and_linear_schedule():
    torch.manual_seed(0)
    model = small_beta_vae(anneal_capacity=True, gamma=100.0, capacity_start=1.0, capacity_max=21.0, capacity_steps=10)
    assert [model.capacity(s) for s in (0, 5, 10, 50)] == [1.0, 11.0, 21.0, 21.0]
    assert model.capacity() == 1.0 and int(model.step) == 0
    x = images()
    out = model(x)
    loss = model.loss(x, out)
    recon = -bernoulli_log_likelihood(x, out.recon).mean()
    kl = kl_normal(out.mu, out.logvar).mean()
    # |KL - C| of the batch-mean KL, not the mean of per-example |KL_b - C|
    assert torch.allclose(loss.total, recon + 100.0 * (kl - 1.0).abs())
    assert loss.terms["capacity"].item() == 1.0
    model.step.fill_(5)
    assert torch.allclose(model.loss(x, out).total, recon + 100.0 * (kl - 11.0).abs())
    kl_b = kl_normal(out.mu, out.logvar).detach()
    c = float(kl_b.median())  # a capacity inside the batch's KLs: the two reductions now differ
    mid = small_beta_vae(anneal_capacity=True, gamma=100.0, capacity_start=c, capacity_max=c)
    mid.load_state_dict(model.state_dict())
    assert torch.allclose(mid.loss(x, out).total, recon + 100.0 * (kl - c).abs())
    assert not torch.allclose(mid.loss(x, out).total, recon + 100.0 * (kl_b - c).abs().mean())
    assert small_beta_vae(anneal_capacity=True, capacity_steps=0, capacity_max=7.0).capacity(0) == 7.0


def test_capacity_follows_the_training_steps_and_survives_checkpoints(tmp_path):
    kw = dict(anneal_capacity=True, gamma=10.0, capacity_max=8.0, capacity_steps=8)
    x = images(24)
    aelab.seed_everything(0)
    straight = small_beta_vae(**kw)
    h = aelab.fit(straight, x, max_steps=6, batch_size=8, log_every=1, progress=False, device="cpu")
    assert int(straight.step) == 6
    assert h["capacity"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]  # C at the step each row was taken
    assert "step" not in dict(straight.named_parameters())

    aelab.seed_everything(0)
    ckpt = tmp_path / "run.safetensors"
    first = small_beta_vae(**kw)
    aelab.fit(first, x, max_steps=3, batch_size=8, log_every=1, checkpoint=ckpt, checkpoint_every=1, progress=False, device="cpu")
    resumed = small_beta_vae(**kw)
    h2 = aelab.fit(resumed, x, max_steps=6, batch_size=8, log_every=1, checkpoint=ckpt, progress=False, device="cpu")
    assert int(resumed.step) == 6 and h2["capacity"].tolist() == h["capacity"].tolist()
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)

    loaded = aelab.load(aelab.save(straight, tmp_path / "m.safetensors"))
    assert int(loaded.step) == 6 and loaded.capacity() == 6.0


def test_beta_vae_config_errors():
    with pytest.raises(ValueError, match="capacity_steps must be >= 0"):
        small_beta_vae(capacity_steps=-1)
    with pytest.raises(ValueError, match="capacity is a KL in nats"):
        small_beta_vae(capacity_max=-1.0)
    with pytest.raises(ValueError, match="beta and gamma must be >= 0"):
        small_beta_vae(gamma=-1.0)


# -- beta-TCVAE --------------------------------------------------------------------------------------

def small_tcvae(**kw):
    kw = dict(dict(input_shape=(1, 28, 28), backbone="mlp", hidden=(32,), latent_dim=3, dataset_size=1000), **kw)
    return aelab.build("beta_tcvae", **kw)


@pytest.mark.parametrize("estimator", ["mws", "mss"])
def test_beta_tcvae_with_unit_weights_is_the_vae_with_a_sampled_kl(estimator):
    torch.manual_seed(0)
    model = small_tcvae(alpha=1.0, beta=1.0, gamma=1.0, estimator=estimator)
    x = images()
    out = model(x)
    loss = model.loss(x, out)
    recon = -bernoulli_log_likelihood(x, out.recon)
    std = (0.5 * out.logvar).exp()
    mc_kl = Normal(out.mu, std).log_prob(out.z).sum(1) - Normal(0.0, 1.0).log_prob(out.z).sum(1)
    assert torch.allclose(loss.total, (recon + mc_kl).mean(), rtol=1e-5)
    assert set(loss.terms) == {"recon", "mi", "tc", "dim_kl", "kl"}
    assert torch.allclose(loss.terms["kl"], kl_normal(out.mu, out.logvar).mean())


def test_beta_tcvae_weights_each_term():
    torch.manual_seed(0)
    model = small_tcvae(alpha=0.5, beta=6.0, gamma=2.0)
    x = images()
    out = model(x)
    loss = model.loss(x, out)
    t = loss.terms
    assert torch.allclose(loss.total, t["recon"] + 0.5 * t["mi"] + 6.0 * t["tc"] + 2.0 * t["dim_kl"], rtol=1e-5)
    ref = kl_decomposition(out.z, out.mu, out.logvar, 1000, "mss")
    assert torch.allclose(t["tc"], ref.tc.mean()) and torch.allclose(t["mi"], ref.mi.mean())
    mws = small_tcvae(estimator="mws")
    mws.load_state_dict(model.state_dict())
    t2 = mws.loss(x, out).terms
    assert not torch.allclose(t2["tc"], t["tc"])
    assert torch.allclose(t2["mi"] + t2["tc"] + t2["dim_kl"], t["mi"] + t["tc"] + t["dim_kl"], rtol=1e-4)


def test_beta_tcvae_errors_name_the_fix():
    with pytest.raises(ValueError, match="estimator must be one of"):
        small_tcvae(estimator="iwae")
    with pytest.raises(ValueError, match="dataset_size"):
        small_tcvae(dataset_size=0)
    model = small_tcvae(dataset_size=8)
    x = images(16)
    with pytest.raises(ValueError, match=r"dataset_size \(8\) must be at least the batch size \(16\)"):
        model.loss(x, model(x))
    one = images(1)
    with pytest.raises(ValueError, match="at least 2 examples per batch"):
        small_tcvae().loss(one, small_tcvae()(one))


# -- FactorVAE and its second optimizer --------------------------------------------------------------

def small_factor_vae(**kw):
    kw = dict(dict(input_shape=(1, 28, 28), backbone="mlp", hidden=(32,), latent_dim=3, gamma=10.0, disc_hidden=(16, 16)), **kw)
    return aelab.build("factor_vae", **kw)


def test_factor_vae_optimizers_split_the_parameters():
    model = small_factor_vae(disc_lr=2e-4, disc_betas=(0.5, 0.9))
    vae_opt, disc_opt = model.configure_optimizers(1e-3)
    vae_ids = {id(p) for g in vae_opt.param_groups for p in g["params"]}
    disc_ids = {id(p) for g in disc_opt.param_groups for p in g["params"]}
    assert not vae_ids & disc_ids
    assert vae_ids | disc_ids == {id(p) for p in model.parameters()}
    assert disc_ids == {id(p) for p in model.discriminator.parameters()}
    assert vae_opt.param_groups[0]["lr"] == 1e-3
    assert disc_opt.param_groups[0]["lr"] == 2e-4 and disc_opt.param_groups[0]["betas"] == (0.5, 0.9)
    linears = [m for m in model.discriminator if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [16, 16, 2]  # hidden widths, then two logits
    assert sum(isinstance(m, torch.nn.Linear) for m in aelab.build("factor_vae").discriminator) == 6


def test_factor_vae_loss_uses_the_density_ratio():
    torch.manual_seed(0)
    model = small_factor_vae()
    x = images()
    out = model(x)
    loss = model.loss(x, out)
    logits = model.discriminator(out.z)
    d_real = torch.softmax(logits, 1)[:, 0]
    tc = torch.log(d_real / (1 - d_real)).mean()  # log D / (1 - D), as Kim & Mnih write it
    recon = -bernoulli_log_likelihood(x, out.recon)
    kl = kl_normal(out.mu, out.logvar)
    assert torch.allclose(loss.terms["tc"], tc, atol=1e-5)
    assert torch.allclose(loss.total, (recon + kl).mean() + 10.0 * tc, atol=1e-4)


def test_discriminator_loss_is_the_cross_entropy_on_codes_and_permuted_codes():
    torch.manual_seed(0)
    model = small_factor_vae()
    z, z2 = torch.randn(6, 3), torch.randn(6, 3)
    loss, acc = model.discriminator_loss(z, z2, generator=torch.Generator().manual_seed(4))
    fake = permute_dims(z2, generator=torch.Generator().manual_seed(4))
    log_real = torch.log_softmax(model.discriminator(z), 1)[:, 0]
    log_fake = torch.log_softmax(model.discriminator(fake), 1)[:, 1]
    assert torch.allclose(loss, -0.5 * (log_real.mean() + log_fake.mean()))
    pred = torch.cat([model.discriminator(z), model.discriminator(fake)]).argmax(1)
    assert torch.allclose(acc, (pred == torch.tensor([0] * 6 + [1] * 6)).float().mean())


def test_factor_vae_train_step_is_two_separate_adam_steps():
    # train_step must equal, by hand: Adam on the VAE loss over the VAE's parameters, then Adam on
    # the discriminator loss (first half real, second half permuted) over the discriminator's only.
    torch.manual_seed(0)
    model = small_factor_vae()
    by_hand = copy.deepcopy(model)
    x = images(10)
    ctx = StepContext(model=model, optimizers=model.configure_optimizers(1e-2))
    torch.manual_seed(1)
    loss = model.train_step(x, ctx)
    assert {"recon", "kl", "tc", "disc_loss", "disc_acc"} <= set(loss.terms)

    vae_opt, disc_opt = by_hand.configure_optimizers(1e-2)
    torch.manual_seed(1)
    out = by_hand(x)
    vae_opt.zero_grad()
    by_hand.loss(x, out).total.backward()
    vae_opt.step()
    z = out.z.detach()
    disc_loss, _ = by_hand.discriminator_loss(z[:5], z[5:10])
    disc_opt.zero_grad()
    disc_loss.backward()
    disc_opt.step()
    for (name, a), b in zip(model.named_parameters(), by_hand.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert torch.allclose(loss.terms["disc_loss"], disc_loss.detach())
    with pytest.raises(ValueError, match="at least 2 examples per batch"):
        model.train_step(images(1), ctx)


def test_step_context_steps_the_optimizer_it_is_given():
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))
    ctx = StepContext(model=torch.nn.Linear(1, 1), optimizers=[torch.optim.SGD([a], lr=1.0), torch.optim.SGD([b], lr=1.0)],
                      grad_clip=1.0)
    ctx.update((a * torch.tensor([1.0, 2.0, 2.0])).sum(), optimizer=0)
    ctx.update((b * torch.tensor([30.0, 0.0, 40.0])).sum(), optimizer=1)
    assert torch.allclose(a, -torch.tensor([1.0, 2.0, 2.0]) / 3)  # clipped to norm 1
    assert torch.allclose(b, -torch.tensor([0.6, 0.0, 0.8]))  # its own gradient, clipped to norm 1


def test_factor_vae_fit_logs_both_steps_and_resumes_exactly(tmp_path):
    x = images(24)
    aelab.seed_everything(0)
    straight = small_factor_vae()
    h = aelab.fit(straight, x, max_steps=6, batch_size=8, log_every=1, progress=False, device="cpu")
    assert {"recon", "kl", "tc", "disc_loss", "disc_acc"} <= set(h.terms)
    aelab.seed_everything(0)
    ckpt = tmp_path / "run.safetensors"
    aelab.fit(small_factor_vae(), x, max_steps=3, batch_size=8, checkpoint=ckpt, checkpoint_every=1, progress=False, device="cpu")
    resumed = small_factor_vae()
    aelab.fit(resumed, x, max_steps=6, batch_size=8, checkpoint=ckpt, progress=False, device="cpu")
    for (name, a), b in zip(straight.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name  # both optimizers' states came back from the checkpoint


@pytest.mark.parametrize("rho", [0.0, 0.8])
def test_trained_discriminator_estimates_the_total_correlation(rho):
    # codes from a 2-d Gaussian with correlation rho: TC = -0.5 log(1 - rho^2) nats (0.51 for 0.8)
    torch.manual_seed(0)
    model = aelab.build("factor_vae", input_shape=(4,), backbone="mlp", hidden=(8,), latent_dim=2, disc_hidden=(32, 32))
    codes = MultivariateNormal(torch.zeros(2), torch.tensor([[1.0, rho], [rho, 1.0]]))
    opt = torch.optim.Adam(model.discriminator.parameters(), lr=3e-3)
    for _ in range(300):
        loss, _ = model.discriminator_loss(codes.sample((256,)), codes.sample((256,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        logits = model.discriminator(codes.sample((20000,)))
    estimate = (logits[:, 0] - logits[:, 1]).mean().item()
    assert abs(estimate - (-0.5 * math.log(1 - rho**2))) < 0.15  # the fixed seed gives 0.005 and 0.46
