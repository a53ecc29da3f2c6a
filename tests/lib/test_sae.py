"""Sparse autoencoders: the sparsity math of aelab.functional and each SAE's defining property.

Activations and pseudo-gradients against their formulas and brute force, losses against hand
computations, the training-time plumbing (decoder constraint, normalisation folding, dead latents,
resampling, warm-up) through ``train_step``, and ground-truth feature recovery on a toy dictionary.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.optimize
import scipy.stats
import torch
import torch.nn.functional as F

import aelab
from aelab.functional import (
    batch_topk_activation,
    dead_topk_activation,
    geometric_median,
    heaviside_step,
    jumprelu,
    l1_penalty,
    prefix_reconstructions,
    rectangle,
    remove_parallel_grad,
    squared_error,
    topk_activation,
)
from aelab.sae.base import SAE
from aelab.train.loop import StepContext


def step_ctx(model, step=0, lr=1e-2):
    """A StepContext like the one fit() passes, with one Adam over the model's parameters."""
    return StepContext(model=model, optimizers=model.configure_optimizers(lr), step=step)


def sparse_data(n=512, d_in=8, n_true=16, p=0.1, seed=0):
    """Activations built from a known dictionary: (n, d_in) and the true directions (n_true, d_in)."""
    toy = aelab.data.toy_features(n, n_true, sparsity=1 - p, d=d_in, seed=seed)
    return toy.x, toy.directions


# -- activations -----------------------------------------------------------------------------------

def test_batch_topk_keeps_the_k_times_batch_largest_entries_of_the_batch():
    torch.manual_seed(0)
    pre = torch.randn(6, 10)
    out = batch_topk_activation(pre, 3)
    keep = pre.flatten().sort(descending=True).values[18]  # the 19th largest is the first one dropped
    assert (out != 0).sum() == 18
    assert torch.equal(out, torch.where(pre > keep, pre, torch.zeros(())))
    assert not torch.equal((out != 0).sum(1), torch.full((6,), 3))  # per-example counts vary
    with pytest.raises(ValueError, match="k must be"):
        batch_topk_activation(pre, 11)
    with pytest.raises(ValueError, match=r"\(batch, d\)"):
        batch_topk_activation(pre[0], 2)


def test_dead_topk_uses_only_dead_latents_and_relu():
    pre = torch.tensor([[5.0, 1.0, -2.0, 3.0, 0.5], [4.0, -1.0, -3.0, -0.5, 2.0]])
    dead = torch.tensor([False, True, True, True, False])
    out = dead_topk_activation(pre, dead, 2)
    # row 0: dead values 1, -2, 3 -> keep 3 and 1; row 1: -1, -3, -0.5 -> top two are negative -> 0
    assert torch.equal(out, torch.tensor([[0.0, 1.0, 0.0, 3.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]]))
    assert torch.equal(dead_topk_activation(pre, dead, 10), torch.relu(pre) * dead)  # k > #dead keeps all dead
    assert torch.equal(dead_topk_activation(pre, torch.zeros(5, dtype=torch.bool), 2), torch.zeros_like(pre))


def test_rectangle_kernel_is_the_open_unit_interval():
    u = torch.tensor([-0.5, -0.4999, 0.0, 0.4999, 0.5, 2.0])
    assert torch.equal(rectangle(u), torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0, 0.0]))


def test_jumprelu_and_step_forward_and_pseudo_gradients_match_the_paper():
    # Rajamanoharan et al. 2024, eqs. 11-12, with the rectangle kernel of bandwidth eps.
    torch.manual_seed(0)
    eps = 0.2
    theta = torch.tensor([0.3, 0.5, 0.1, 1.0], dtype=torch.float64)
    z = theta + torch.tensor([[-0.15, 0.05, 0.3, -0.05], [0.09, -0.11, -0.5, 0.2], [0.5, 0.0999, 0.02, -0.3]], dtype=torch.float64)
    upstream = torch.randn(3, 4, dtype=torch.float64)
    kernel = ((z - theta).abs() < eps / 2).double()
    step = (z > theta).double()

    zz, tt = z.clone().requires_grad_(), theta.clone().requires_grad_()
    out = jumprelu(zz, tt, eps)
    assert torch.equal(out, z * step)
    out.backward(upstream)
    assert torch.allclose(zz.grad, upstream * step)
    assert torch.allclose(tt.grad, (upstream * -(theta / eps) * kernel).sum(0))

    zz, tt = z.clone().requires_grad_(), theta.clone().requires_grad_()
    h = heaviside_step(zz, tt, eps)
    assert torch.equal(h, step)
    h.backward(upstream)
    assert torch.equal(zz.grad, torch.zeros_like(z))
    assert torch.allclose(tt.grad, (upstream * -(1 / eps) * kernel).sum(0))
    assert kernel.sum() >= 4 and kernel.sum() < kernel.numel()  # the case has points in and out of the window

    with pytest.raises(ValueError, match="bandwidth"):
        jumprelu(z, theta, 0.0)
    with pytest.raises(ValueError, match="one threshold per latent"):
        heaviside_step(z, theta[:3], eps)


def test_jumprelu_gradcheck_in_z_and_the_threshold_pseudo_gradient_is_not_the_true_one():
    theta = torch.tensor([0.3, 0.5, 0.1], dtype=torch.float64)
    z = (theta + torch.tensor([[-0.4, 0.3, 0.25], [0.6, -0.2, 0.5]], dtype=torch.float64)).requires_grad_()
    # away from the jump, d/dz is the true derivative: gradcheck passes
    assert torch.autograd.gradcheck(lambda v: jumprelu(v, theta, 0.01), (z,))
    # with z within eps/2 of theta, the threshold pseudo-derivative is non-zero where the true one is 0
    near = (theta + torch.tensor([[0.001, -0.002, 0.003]], dtype=torch.float64))
    t = theta.clone().requires_grad_()
    assert not torch.autograd.gradcheck(lambda v: jumprelu(near, v, 0.05), (t,), raise_exception=False, eps=1e-4)
    assert not torch.autograd.gradcheck(lambda v: heaviside_step(near, v, 0.05), (t,), raise_exception=False, eps=1e-4)


def test_threshold_pseudo_gradients_estimate_the_derivative_of_the_expectation():
    # For z ~ N(0, 1): d/dtheta E[H(z - theta)] = -phi(theta) and d/dtheta E[z H(z - theta)] = -theta phi(theta).
    # With the rectangle kernel the expected pseudo-gradients are exactly -(Phi(theta + eps/2) - Phi(theta - eps/2)) / eps
    # (times theta for JumpReLU): a finite difference of the true curve. Quantiles of N(0, 1) stand in for samples.
    n, eps, th = 200_000, 0.1, 0.7
    z = torch.from_numpy(scipy.stats.norm.ppf((np.arange(n) + 0.5) / n))[:, None]
    window = (scipy.stats.norm.cdf(th + eps / 2) - scipy.stats.norm.cdf(th - eps / 2)) / eps
    for fn, expected, exact in ((heaviside_step, -window, -scipy.stats.norm.pdf(th)),
                                (jumprelu, -th * window, -th * scipy.stats.norm.pdf(th))):
        theta = torch.tensor([th], dtype=torch.float64, requires_grad=True)
        fn(z, theta, eps).mean().backward()
        assert math.isclose(theta.grad.item(), expected, rel_tol=1e-3)
        assert math.isclose(theta.grad.item(), exact, rel_tol=5e-3)


# -- losses and geometry ---------------------------------------------------------------------------

def test_squared_error_and_l1_penalty_reductions():
    x, r = torch.tensor([[1.0, 2.0], [0.0, -1.0]]), torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    assert torch.equal(squared_error(x, r), torch.tensor([5.0, 4.0]))
    acts, norms = torch.tensor([[1.0, 0.0, 2.0], [0.5, 3.0, 0.0]]), torch.tensor([2.0, 0.5, 1.0])
    assert torch.equal(l1_penalty(acts), torch.tensor([3.0, 3.5]))
    assert torch.equal(l1_penalty(acts, norms), torch.tensor([4.0, 2.5]))
    with pytest.raises(ValueError, match="same shape"):
        squared_error(x, r[:, :1])
    with pytest.raises(ValueError, match=r"decoder_norms must have shape \(3,\)"):
        l1_penalty(acts, norms[:2])


def test_decoder_norm_l1_is_invariant_to_rescaling_a_latent_and_plain_l1_is_not():
    # f_i -> c f_i, W_dec,i -> W_dec,i / c leaves the reconstruction unchanged; only the weighted
    # penalty sees the same code (the plain one is the known-wrong objective for a free decoder).
    torch.manual_seed(0)
    acts, W = torch.rand(4, 5), torch.randn(5, 3)
    c = torch.tensor([10.0, 1.0, 0.1, 1.0, 1.0])
    assert torch.allclose((acts * c) @ (W / c[:, None]), acts @ W, atol=1e-6)
    assert torch.allclose(l1_penalty(acts * c, (W / c[:, None]).norm(dim=1)), l1_penalty(acts, W.norm(dim=1)))
    assert not torch.allclose(l1_penalty(acts * c), l1_penalty(acts))


def test_prefix_reconstructions_match_slicing_by_hand():
    torch.manual_seed(0)
    acts, W, b = torch.rand(3, 7), torch.randn(7, 4), torch.randn(4)
    out = prefix_reconstructions(acts, W, b, (2, 5, 7))
    assert out.shape == (3, 3, 4)
    for g, m in enumerate((2, 5, 7)):
        assert torch.allclose(out[g], acts[:, :m] @ W[:m] + b, atol=1e-6)
    with pytest.raises(ValueError, match="increase strictly"):
        prefix_reconstructions(acts, W, b, (5, 2, 7))
    with pytest.raises(ValueError, match="increase strictly"):
        prefix_reconstructions(acts, W, b, (2, 8))


def test_geometric_median_by_weiszfeld():
    # 1-D: the median; symmetric points: their centre; in general: the minimiser of the sum of distances.
    x = torch.tensor([[0.0], [1.0], [2.0], [10.0], [50.0]], dtype=torch.float64)
    assert abs(geometric_median(x, iters=1000).item() - 2.0) < 1e-3
    square = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]], dtype=torch.float64) + 3.0
    assert torch.allclose(geometric_median(square), torch.full((2,), 3.0, dtype=torch.float64))
    torch.manual_seed(0)
    pts = torch.cat([torch.randn(30, 3, dtype=torch.float64), torch.full((3, 3), 100.0, dtype=torch.float64)])
    med = geometric_median(pts, iters=500, tol=1e-12)

    def cost(y):
        return np.linalg.norm(pts.numpy() - y, axis=1).sum()

    best = scipy.optimize.minimize(cost, pts.mean(0).numpy(), method="Nelder-Mead",
                                   options=dict(xatol=1e-10, fatol=1e-12, maxiter=20_000))
    assert cost(med.numpy()) <= best.fun + 1e-6
    assert np.allclose(med.numpy(), best.x, atol=1e-3)
    assert med.norm() < 1.0 < pts.mean(0).norm()  # robust to the outliers, unlike the mean
    with pytest.raises(ValueError, match=r"\(N, d\)"):
        geometric_median(torch.zeros(0, 3))


def test_remove_parallel_grad_projects_each_row_gradient_onto_the_sphere():
    torch.manual_seed(0)
    W = F.normalize(torch.randn(5, 4), dim=1).requires_grad_()
    g = torch.randn(5, 4)
    out = remove_parallel_grad(W)
    assert torch.equal(out, W)
    (out * g).sum().backward()
    assert torch.allclose(W.grad, g - (g * W).sum(1, keepdim=True) * W.detach(), atol=1e-6)
    assert torch.allclose((W.grad * W).sum(1), torch.zeros(5), atol=1e-6)


def test_remove_parallel_grad_on_rows_of_any_norm_matches_the_unit_vector_formula():
    """Rows off the sphere (and a zero row, whose gradient passes unchanged): g - (g . u) u, u = W / ||W||, in fp64."""
    torch.manual_seed(0)
    W = (torch.randn(6, 5, dtype=torch.float64) * torch.tensor([0.1, 1.0, 3.0, 1e-3, 10.0, 0.0])[:, None]).requires_grad_()
    g = torch.randn(6, 5, dtype=torch.float64)
    (remove_parallel_grad(W) * g).sum().backward()
    unit = W.detach() / W.detach().norm(dim=1, keepdim=True).clamp_min(1e-12)
    torch.testing.assert_close(W.grad, g - (g * unit).sum(1, keepdim=True) * unit, rtol=1e-12, atol=1e-12)
    assert torch.equal(W.grad[5], g[5])


# -- the SAEs --------------------------------------------------------------------------------------

ALL_SAES = ["sae_relu", "sae_topk", "sae_batch_topk", "sae_jumprelu", "sae_gated", "sae_matryoshka", "ksparse_ae"]
K_SAES = {"sae_topk", "sae_batch_topk", "sae_matryoshka", "ksparse_ae"}


def build(name, **cfg):
    base = dict(d_in=8, d_sae=32)
    if name in K_SAES:
        base["k"] = 3
    return aelab.build(name, **{**base, **cfg})


@pytest.mark.parametrize("name", ALL_SAES)
def test_every_sae_has_the_shared_parameters_encode_and_decode(name):
    torch.manual_seed(0)
    model = build(name).eval()
    params = dict(model.named_parameters())
    shapes = {"W_enc": (8, 32), "b_enc": (32,), "W_dec": (32, 8), "b_dec": (8,)}
    assert {k: tuple(params[k].shape) for k in shapes} == shapes
    assert torch.allclose(model.W_dec.norm(dim=1), torch.ones(32)) and torch.equal(model.W_enc, model.W_dec.T)
    assert model.input_shape == (8,)
    x = torch.randn(5, 8)
    out = model(x)
    assert out.recon.shape == (5, 8) and out.acts.shape == (5, 32) and out.pre_acts.shape == (5, 32)
    assert torch.equal(model.encode(x), out.acts)
    assert torch.allclose(model.decode(out.acts), out.recon)
    assert torch.allclose(out.recon, out.acts @ model.W_dec + model.b_dec, atol=1e-6)


def test_topk_keeps_exactly_k_latents_per_example():
    torch.manual_seed(0)
    model = build("sae_topk", k=4, d_sae=64)
    out = model(torch.randn(50, 8))
    assert torch.equal((out.acts != 0).sum(1), torch.full((50,), 4))
    assert torch.equal(out.acts, torch.relu(topk_activation(out.pre_acts, 4)))
    # a kept pre-activation <= 0 is zeroed by the ReLU: never more than k, fewer possible
    model.b_enc.data.fill_(-100.0)
    assert (model(torch.randn(50, 8)).acts != 0).sum() == 0


def test_batch_topk_has_k_times_batch_nonzeros_in_training_and_uses_the_threshold_in_eval():
    torch.manual_seed(0)
    model = build("sae_batch_topk", k=3)
    x = torch.randn(20, 8)
    out = model(x)
    assert (out.acts != 0).sum() == 60 and not torch.equal((out.acts != 0).sum(1), torch.full((20,), 3))
    assert torch.equal(out.acts, batch_topk_activation(torch.relu(out.pre_acts), 3))
    model.eval()  # no threshold estimated yet: falls back to BatchTopK
    assert torch.equal(model(x).acts, out.acts)
    model.threshold.fill_(0.4)
    eval_out = model(x)
    assert torch.equal(eval_out.acts, out.pre_acts * (out.pre_acts > 0.4))
    assert torch.allclose(model(x[:1]).acts, eval_out.acts[:1], atol=1e-6)  # an example's code no longer depends on its batch


def test_batch_topk_threshold_is_a_running_average_of_the_smallest_kept_activation():
    torch.manual_seed(0)
    model = build("sae_batch_topk", k=3, threshold_momentum=0.25)
    ctx = step_ctx(model)
    x1, x2 = torch.randn(16, 8), torch.randn(16, 8)
    model.train_step(x1, ctx)
    first = model.threshold.item()
    assert first > 0
    with torch.no_grad():
        acts = model(x2).acts
    smallest = acts[acts > 0].min().item()
    model.train_step(x2, ctx)
    assert math.isclose(model.threshold.item(), 0.75 * first + 0.25 * smallest, rel_tol=1e-5)


def test_jumprelu_sae_forward_loss_and_threshold_gradient():
    torch.manual_seed(0)
    model = build("sae_jumprelu", l0_coefficient=0.1, bandwidth=0.5, init_threshold=0.2)
    with torch.no_grad():
        model.log_threshold.copy_(torch.linspace(-3, 0, 32))
    x = torch.randn(10, 8)
    out = model(x)
    theta = model.log_threshold.exp()
    assert torch.equal(out.acts, out.pre_acts * (out.pre_acts > theta))
    assert torch.allclose(out.pre_acts, x @ model.W_enc + model.b_enc)  # no pre-encoder bias by default
    loss = model.loss(x, out)
    recon = (x - out.recon).pow(2).sum(1).mean()
    l0 = (out.pre_acts > theta).sum(1).float().mean()
    assert torch.allclose(loss.total, recon + 0.1 * l0) and torch.allclose(loss.terms["l0"], l0)
    loss.total.backward()
    # chain rule through theta = exp(log_threshold): d/dlog(theta) = theta * d/dtheta, with d/dtheta from the
    # reconstruction (through f, eq. 11) and from the L0 (eq. 12)
    pre = out.pre_acts.detach()
    kernel = ((pre - theta).abs() < 0.25).float()
    d_recon_d_f = (2 * (out.recon - x) @ model.W_dec.T / 10).detach()  # d recon / d f, (B, d_sae)
    d_theta = (d_recon_d_f * -(theta / 0.5) * kernel).sum(0) + 0.1 * (-(1 / 0.5) * kernel).sum(0) / 10
    assert kernel.sum() > 0
    assert torch.allclose(model.log_threshold.grad, (theta * d_theta).detach(), atol=1e-5)


def test_gated_sae_shares_gate_and_magnitude_weights():
    torch.manual_seed(0)
    model = build("sae_gated", l1_coefficient=0.5)
    with torch.no_grad():
        model.r_mag.copy_(torch.randn(32))
        model.b_mag.copy_(torch.randn(32))
        model.b_enc.copy_(torch.randn(32) * 0.1)
        model.b_dec.copy_(torch.randn(8) * 0.1)
    x = torch.randn(12, 8)
    out = model(x)
    centred = x - model.b_dec
    gate = centred @ model.W_enc + model.b_enc
    mag = centred @ (model.W_enc * model.r_mag.exp()) + model.b_mag
    assert torch.allclose(out.pre_acts, gate) and torch.allclose(out.mag_pre_acts, mag)
    assert torch.allclose(out.acts, (gate > 0).float() * torch.relu(mag))
    # the magnitude path is the gate's weights times exp(r_mag): one column scaled, one latent's magnitude scaled
    with torch.no_grad():
        model.r_mag[3] += math.log(2.0)
    again = model(x)
    assert torch.allclose(again.mag_pre_acts[:, 3] - model.b_mag[3], 2 * (mag[:, 3] - model.b_mag[3]), atol=1e-5)
    assert torch.equal(again.pre_acts, out.pre_acts)

    loss = model.loss(x, again)
    recon = (x - again.recon).pow(2).sum(1).mean()
    l1 = torch.relu(again.pre_acts).sum(1).mean()
    aux = (x - (torch.relu(again.pre_acts) @ model.W_dec + model.b_dec)).pow(2).sum(1).mean()
    assert torch.allclose(loss.total, recon + 0.5 * l1 + aux)

    # the reconstruction trains the gate's weights only through the magnitude path (the gate bias gets nothing),
    # the auxiliary term reaches the encoder but never the (frozen) decoder
    model.zero_grad()
    model.loss(x, model(x)).terms["recon"].backward()
    assert model.b_enc.grad is None and model.W_enc.grad.abs().sum() > 0
    model.zero_grad()
    model.loss(x, model(x)).terms["aux"].backward()
    assert model.W_dec.grad is None and model.b_dec.grad.abs().sum() > 0  # b_dec: through the centring only
    assert model.b_enc.grad.abs().sum() > 0


def test_matryoshka_loss_is_the_sum_of_prefix_losses():
    torch.manual_seed(0)
    model = build("sae_matryoshka", k=4, group_sizes=(4, 12, 16))
    assert model.config.prefix_sizes == (4, 16, 32)
    x = torch.randn(10, 8)
    out = model(x)
    loss = model.loss(x, out)
    by_hand = [(x - (out.acts[:, :m] @ model.W_dec[:m] + model.b_dec)).pow(2).sum(1).mean() for m in (4, 16, 32)]
    assert torch.allclose(loss.total, sum(by_hand))  # no dead latent yet: AuxK is 0
    assert torch.allclose(loss.terms["recon"], by_hand[-1]) and torch.allclose(loss.terms["recon_4"], by_hand[0])
    assert torch.allclose(out.recon, out.acts @ model.W_dec + model.b_dec, atol=1e-6)
    assert build("sae_matryoshka", d_sae=64).config.prefix_sizes == (8, 16, 32, 64)
    with pytest.raises(ValueError, match="sum to d_sae"):
        build("sae_matryoshka", group_sizes=(4, 4))
    topk = build("sae_matryoshka", k=2, activation="topk")
    assert torch.equal((topk(x).acts != 0).sum(1), torch.full((10,), 2))


def test_auxk_is_zero_without_dead_latents_and_reconstructs_the_residual_otherwise():
    torch.manual_seed(0)
    model = build("sae_topk", k=2, k_aux=3, auxk_coefficient=0.5, dead_steps=5)
    x = torch.randn(10, 8)
    out = model(x)
    assert torch.equal(model.auxk_loss(x, out), torch.zeros(10))
    assert torch.allclose(model.loss(x, out).total, (x - out.recon).pow(2).sum(1).mean())
    dead = torch.zeros(32, dtype=torch.bool)
    dead[[1, 5, 7, 20, 30]] = True
    model.steps_since_fired[dead] = 5
    assert torch.equal(model.dead_latents(), dead)
    aux_acts = torch.relu(topk_activation(out.pre_acts.masked_fill(~dead, -1e9), 3))
    expected = ((x - out.recon) - aux_acts @ model.W_dec).pow(2).sum(1)
    aux = model.auxk_loss(x, out)
    assert torch.allclose(aux, expected.detach(), atol=1e-5)
    loss = model.loss(x, out)
    assert torch.allclose(loss.total, (x - out.recon).pow(2).sum(1).mean() + 0.5 * expected.mean())
    # the residual is a constant: AuxK moves only the dead latents' encoder columns
    model.zero_grad()
    model.auxk_loss(x, out).mean().backward()
    assert torch.equal(model.W_enc.grad[:, ~dead], torch.zeros(8, 27)) and model.W_enc.grad[:, dead].abs().sum() > 0


def test_dead_latents_are_counted_in_training_steps():
    torch.manual_seed(0)
    model = build("sae_relu", dead_steps=2)
    with torch.no_grad():
        model.b_enc[:4] = -100.0  # these never fire
    ctx = step_ctx(model, lr=1e-4)
    for step in range(3):
        ctx.step = step
        model.train_step(torch.randn(64, 8), ctx)
    assert torch.equal(model.steps_since_fired[:4], torch.full((4,), 3))
    assert model.dead_latents()[:4].all() and not model.dead_latents()[4:].any()


def test_unit_norm_decoder_projects_gradients_and_stays_unit_norm_after_steps():
    torch.manual_seed(0)
    for name in ALL_SAES:
        model = build(name) if name != "ksparse_ae" else build(name, unit_norm_decoder=True)
        x = torch.randn(32, 8) * 3
        model.zero_grad()
        model.loss(x, model(x)).total.backward()
        radial = (model.W_dec.grad * model.W_dec).sum(1) / model.W_dec.grad.norm(dim=1).clamp_min(1e-12)
        assert radial.abs().max() < 1e-5, f"{name}: decoder gradient has a radial component"
        aelab.fit(model, x, epochs=5, batch_size=8, lr=1e-2, progress=False, device="cpu")
        assert torch.allclose(model.W_dec.norm(dim=1), torch.ones(32), atol=1e-5), name
    # without the constraint (the paper's k-sparse AE) the rows drift
    free = build("ksparse_ae")
    aelab.fit(free, torch.randn(32, 8) * 3, epochs=5, batch_size=8, lr=1e-2, progress=False, device="cpu")
    assert not torch.allclose(free.W_dec.norm(dim=1), torch.ones(32), atol=1e-3)


def test_first_training_step_initialises_scale_and_decoder_bias():
    torch.manual_seed(0)
    x = torch.randn(64, 8) * 5 + 2
    model = build("sae_relu", normalize_activations=True, l1_coefficient=0.0)
    model.train_step(x, step_ctx(model, lr=1e-12))
    s = model.input_scale
    assert torch.allclose((x * s).pow(2).sum(1).mean(), torch.tensor(1.0), atol=1e-5)
    assert torch.allclose(model.b_dec, geometric_median(x * s), atol=1e-5)
    before = model.b_dec.detach().clone()
    model.train_step(torch.randn(64, 8), step_ctx(model, lr=1e-12))  # only the first batch initialises
    assert torch.allclose(model.b_dec, before, atol=1e-6) and bool(model.initialized)
    mean_init = build("sae_relu", init_b_dec="mean")
    mean_init.initialize(x)
    assert torch.allclose(mean_init.b_dec, x.mean(0), atol=1e-6) and mean_init.input_scale == 1


def test_loss_is_measured_on_the_normalised_scale():
    torch.manual_seed(0)
    model = build("sae_relu", normalize_activations=True, l1_coefficient=0.2)
    x = torch.randn(16, 8) * 4
    model.initialize(x)
    out = model(x)
    s = model.input_scale
    recon = ((x - out.recon) * s).pow(2).sum(1).mean()
    assert torch.allclose(model.loss(x, out).total, recon + 0.2 * out.acts.sum(1).mean(), rtol=1e-5)


@pytest.mark.parametrize("name", ALL_SAES)
def test_folding_the_normalisation_keeps_outputs_on_raw_activations(name):
    torch.manual_seed(0)
    model = build(name, normalize_activations=True)
    x = torch.randn(64, 8) * 7 + 1
    aelab.fit(model, x, epochs=3, batch_size=16, lr=1e-2, progress=False, device="cpu")
    assert model.input_scale.item() < 0.5
    with torch.no_grad():
        before = model(x)
        model.fold_normalisation()
        after = model(x)
    assert model.input_scale.item() == 1.0
    assert torch.allclose(after.pre_acts, before.pre_acts, atol=1e-4)
    assert torch.equal(after.acts != 0, before.acts != 0)
    assert torch.allclose(after.acts, before.acts, atol=1e-4)
    assert torch.allclose(after.recon, before.recon, atol=1e-4)


def test_sparsity_coefficient_warms_up_linearly_from_zero():
    torch.manual_seed(0)
    model = build("sae_relu", l1_coefficient=0.5, sparsity_warmup_steps=4)
    assert [model.sparsity_scale(s) for s in (0, 1, 2, 4, 100)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    x = torch.randn(16, 8)
    loss0 = model.train_step(x, step_ctx(model, step=0, lr=1e-12))
    assert torch.allclose(loss0.total, loss0.terms["recon"])
    loss2 = model.train_step(x, step_ctx(model, step=2, lr=1e-12))
    assert torch.allclose(loss2.total, loss2.terms["recon"] + 0.25 * loss2.terms["l1"], atol=1e-6)


def test_relu_l1_weighted_by_decoder_norms_and_config_errors():
    torch.manual_seed(0)
    model = build("sae_relu", unit_norm_decoder=False, decoder_norm_l1=True, l1_coefficient=0.3)
    with torch.no_grad():
        model.W_dec.mul_(torch.rand(32, 1) + 0.5)
    x = torch.randn(8, 8)
    out = model(x)
    l1 = (out.acts * model.W_dec.norm(dim=1)).sum(1).mean()
    assert torch.allclose(model.loss(x, out).total, (x - out.recon).pow(2).sum(1).mean() + 0.3 * l1)
    with pytest.raises(ValueError, match="decoder_norm_l1=True"):
        build("sae_relu", unit_norm_decoder=False)
    with pytest.raises(ValueError, match="k must be between 1 and d_sae=32"):
        build("sae_topk", k=33)
    with pytest.raises(ValueError, match="init_b_dec"):
        build("sae_relu", init_b_dec="median")
    with pytest.raises(ValueError, match=r"expects input of shape \(batch, 8\), got \(4, 9\)"):
        model(torch.randn(4, 9))


def test_resampling_reinitialises_dead_latents_towards_high_loss_inputs():
    torch.manual_seed(0)
    model = build("sae_relu", dead_steps=1, resample_every=1)
    dead = torch.tensor([0, 3, 9])
    with torch.no_grad():
        model.b_enc[dead] = -100.0
    x = torch.randn(64, 8)
    x[7] *= 20  # by far the largest loss: nearly every resampled direction comes from it
    ctx = step_ctx(model)
    model.train_step(x, ctx)  # fits, counts, finds them dead (dead_steps=1) and resamples them
    alive = torch.ones(32, dtype=torch.bool)
    alive[dead] = False
    state = ctx.optimizers[0].state
    assert torch.equal(model.b_enc[dead], torch.zeros(3))
    assert torch.allclose(model.W_dec[dead].norm(dim=1), torch.ones(3))
    target = F.normalize(x[7] - model.b_dec, dim=0)
    assert (model.W_dec[dead] @ target > 0.99).all()
    enc_norms = model.W_enc.norm(dim=0)
    assert torch.allclose(enc_norms[dead], torch.full((3,), 0.2 * enc_norms[alive].mean().item()), rtol=0.05)
    assert torch.equal(state[model.W_dec]["exp_avg"][dead], torch.zeros(3, 8))
    assert torch.equal(state[model.W_enc]["exp_avg_sq"][:, dead], torch.zeros(8, 3))
    assert state[model.W_dec]["exp_avg"][alive].abs().sum() > 0
    assert torch.equal(model.steps_since_fired[dead], torch.zeros(3, dtype=torch.long))
    assert model(x).acts[:, dead].sum() > 0  # they fire again


def test_ksparse_k_schedule_and_eval_alpha():
    torch.manual_seed(0)
    model = build("ksparse_ae", d_sae=32, k=4, k_start=20, k_schedule_steps=8, test_alpha=1.5)
    assert [model.k_schedule(s) for s in (0, 2, 4, 8, 50)] == [20, 16, 12, 4, 4]
    x = torch.randn(16, 8)
    ctx = step_ctx(model)
    for step, k in ((0, 20), (4, 12)):
        ctx.step = step
        loss = model.train_step(x, ctx)
        assert loss.terms["k"] == k and loss.terms["l0"] == k
    out = model.eval()(x)
    assert torch.equal((out.acts != 0).sum(1), torch.full((16,), 6))  # round(1.5 * 4)
    assert torch.equal(out.acts, topk_activation(out.pre_acts, 6))  # linear units: negative values may be kept
    assert build("ksparse_ae", k=3).config.first_k == 12


def test_relu_sae_recovers_the_features_of_a_known_sparse_dictionary():
    aelab.seed_everything(0)
    toy = aelab.data.toy_features(4096, 24, sparsity=0.95, d=12, seed=0)
    model = aelab.build("sae_relu", d_in=12, d_sae=48, l1_coefficient=0.3)
    aelab.fit(model, toy.x, epochs=30, batch_size=256, lr=1e-2, progress=False, device="cpu")
    from aelab.metrics.sae import fraction_recovered, mmcs

    assert mmcs(model.W_dec.detach(), toy.directions) > 0.95
    assert fraction_recovered(model.W_dec.detach(), toy.directions, 0.9) >= 0.85
    # an untrained SAE of the same size does not
    untrained = aelab.build("sae_relu", d_in=12, d_sae=48)
    assert mmcs(untrained.W_dec, toy.directions) < 0.8


def test_save_folds_the_normalisation_and_leaves_the_live_model_alone(tmp_path):
    torch.manual_seed(0)
    model = build("sae_topk", normalize_activations=True)
    x = torch.randn(64, 8) * 7 + 1
    aelab.fit(model, x, epochs=2, batch_size=16, lr=1e-2, progress=False, device="cpu")
    scale = model.input_scale.item()
    assert scale < 0.5
    loaded = aelab.load(aelab.save(model, tmp_path / "sae.safetensors"))
    assert model.input_scale.item() == scale, "saving must not change the model being trained"
    assert loaded.input_scale.item() == 1.0
    with torch.no_grad():
        assert torch.allclose(loaded(x).recon, model(x).recon, atol=1e-4)
        assert torch.equal(loaded(x).acts != 0, model(x).acts != 0)


def test_after_step_puts_the_decoder_rows_back_on_the_sphere_as_f_normalize_does():
    torch.manual_seed(0)
    model = build("sae_topk")
    with torch.no_grad():
        model.W_dec.mul_(torch.rand(model.W_dec.shape[0], 1) * 3)
        model.W_dec[0] = 0.0  # a zero row stays zero
    want = F.normalize(model.W_dec.detach(), dim=1)
    x = torch.randn(4, 8)
    SAE.after_step(model, x, model(x), None)
    assert torch.equal(model.W_dec.detach(), want)
