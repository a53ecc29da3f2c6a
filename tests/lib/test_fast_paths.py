"""Fast paths give the numbers of the plain ones: sparse TopK kernels, the fused ReLU and JumpReLU SAEs, fused Adam, the CPU
allocator setting, on-device batching, bf16 autocast, CUDA.

Each fast path is checked against the plain computation it replaces, values and gradients, in
float64 where the comparison is exact up to summation order.
"""

from __future__ import annotations

import copy
import platform

import pytest
import torch

import aelab
from aelab.functional import (heaviside_step, jumprelu, jumprelu_sae_code, l1_penalty, relu_sae_code, sparse_decode,
                              topk_activation, topk_encode, topk_sae_code)
from aelab.functional import sparsity
from aelab.sae.base import code_fired, code_l0
from aelab.train.loop import StepContext


@pytest.fixture(params=["one block", "a block per example"])
def blocks(request, monkeypatch):
    """Both orders of the backward's entries: one CSR product over the batch, or a product per block of
    examples (what a large batch gets on a CPU), here blocks of one example, so some are empty."""
    if request.param != "one block":
        monkeypatch.setattr(sparsity, "_BLOCK_BYTES", 0)
    return request.param


def test_topk_encode_matches_topk_values_and_gradients(float64, blocks):
    x, W, b = torch.randn(6, 5), torch.randn(5, 20), torch.randn(20)
    for use_pre in (False, True):  # only the kept values reach the loss, or the dense pre-activations too (AuxK)
        leaves = [t.clone().requires_grad_() for t in (x, W, b)]
        pre, values, indices = topk_encode(*leaves, 3)
        ref_leaves = [t.clone().requires_grad_() for t in (x, W, b)]
        ref_pre = torch.addmm(ref_leaves[2], ref_leaves[0], ref_leaves[1])
        ref = torch.topk(ref_pre, 3, dim=-1)
        assert torch.equal(pre, ref_pre) and torch.equal(values, ref.values) and torch.equal(indices, ref.indices)
        w = torch.randn(6, 3)
        extra = (lambda p: p.pow(2).sum()) if use_pre else (lambda p: 0.0)
        ((values * w).sum() + extra(pre)).backward()
        ((ref.values * w).sum() + extra(ref_pre)).backward()
        for got, want, name in zip(leaves, ref_leaves, ("x", "W_enc", "b_enc")):
            torch.testing.assert_close(got.grad, want.grad, msg=f"grad of {name} (pre used: {use_pre})")
    with pytest.raises(ValueError, match="k must be"):
        topk_encode(x, W, b, 21)


def test_sparse_decode_matches_the_dense_product(float64, blocks):
    values, W = torch.randn(7, 4, requires_grad=True), torch.randn(30, 6, requires_grad=True)
    indices = torch.stack([torch.randperm(30)[:4] for _ in range(7)])
    out = sparse_decode(values, indices, W)
    v2, W2 = values.detach().clone().requires_grad_(), W.detach().clone().requires_grad_()
    dense = torch.zeros(7, 30, dtype=torch.float64).scatter(-1, indices, v2) @ W2
    torch.testing.assert_close(out, dense)
    g = torch.randn(7, 6)
    out.backward(g)
    dense.backward(g)
    torch.testing.assert_close(values.grad, v2.grad)
    torch.testing.assert_close(W.grad, W2.grad)
    with pytest.raises(ValueError, match="same shape"):
        sparse_decode(values[:, :3], indices, W)


@pytest.mark.parametrize("pre_bias", [True, False])
@pytest.mark.parametrize("reads", ["decoded", "decoded+values", "decoded+pre", "values"])
def test_topk_sae_code_matches_the_autograd_lines(float64, pre_bias, reads, blocks):
    """Values and every gradient of the fused TopK forward equal topk + ReLU + a dense decoder product with autograd."""
    torch.manual_seed(0)
    B, d_in, d_sae, k = 9, 5, 40, 4
    params = [torch.randn(d_in), torch.randn(d_in, d_sae), -torch.randn(d_sae).abs() - 0.1, torch.randn(d_sae, d_in)]
    x_n = torch.randn(B, d_in)
    x_n[3] = params[0] if pre_bias else 0.0  # pre-activations b_enc < 0 in this row: the ReLU zeroes its top k
    for x_grad in (False, True):
        fused = [x_n.clone().requires_grad_(x_grad)] + [p.clone().requires_grad_() for p in params]
        plain = [x_n.clone().requires_grad_(x_grad)] + [p.clone().requires_grad_() for p in params]
        pre, values, indices, decoded = topk_sae_code(*fused, k, pre_bias)
        xp, bd, We, be, Wd = plain
        ref_pre = torch.addmm(be, xp - bd if pre_bias else xp, We)
        top = torch.topk(ref_pre, k, dim=-1)
        ref_values = torch.relu(top.values)
        ref_decoded = torch.zeros(B, d_sae).scatter(-1, top.indices, ref_values) @ Wd
        assert torch.equal(pre, ref_pre) and torch.equal(indices, top.indices) and torch.equal(values, ref_values)
        assert (values == 0).any(), "the ReLU after the top-k is exercised"
        torch.testing.assert_close(decoded, ref_decoded)
        wd, wv, wp = torch.randn(B, d_in), torch.randn(B, k), torch.randn(B, d_sae)

        def objective(p, v, dec):
            total = (dec * wd).sum() if "decoded" in reads else 0.0
            total = total + ((v * wv).sum() if "values" in reads else 0.0)
            return total + ((p * wp).pow(2).sum() if "pre" in reads else 0.0)  # the AuxK case: dense backward

        objective(pre, values, decoded).backward()
        objective(ref_pre, ref_values, ref_decoded).backward()
        names = ("x_n", "b_dec", "W_enc", "b_enc", "W_dec")
        for got, want, name in zip(fused, plain, names):
            if want.grad is None:
                assert got.grad is None or not got.grad.any(), name
            else:
                torch.testing.assert_close(got.grad, want.grad, msg=f"grad of {name} ({reads}, pre bias {pre_bias})")
    with pytest.raises(ValueError, match="k must be"):
        topk_sae_code(x_n, *params, d_sae + 1)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_topk_sae_sparse_path_trains_like_the_dense_one(precision):
    torch.manual_seed(0)
    # bf16 rounds pre-activations coarsely, so the two paths' trajectories drift apart within a few steps and
    # a tie can then flip a latent between dead and alive: in bf16, latents die after 1 step and 3 steps are compared
    dead_steps, n_steps = (3, 8) if precision == "fp32" else (1, 3)
    model = aelab.build("sae_topk", d_in=16, d_sae=256, k=4, dead_steps=dead_steps, normalize_activations=True)
    assert model.uses_sparse_kernels(), "k <= d_sae / 8 takes the sparse path by default"
    dense, sparse = copy.deepcopy(model), copy.deepcopy(model)
    dense.sparse_kernels, sparse.sparse_kernels = False, True
    x = torch.randn(64, 16)
    ctxs = [StepContext(model=m, optimizers=m.configure_optimizers(1e-2), precision=precision) for m in (dense, sparse)]
    tol = dict(rtol=1e-4, atol=1e-5) if precision == "fp32" else dict(rtol=2e-2, atol=2e-2)
    saw_dead = False
    for step in range(n_steps):  # once latents die, the AuxK term takes the dense backward
        losses = []
        for m, ctx in zip((dense, sparse), ctxs):
            ctx.step = step
            losses.append(m.train_step(x, ctx))
        saw_dead |= bool(dense.dead_latents().any())
        for term, value in losses[0].terms.items():
            torch.testing.assert_close(losses[1].terms[term], value, **tol, msg=f"{term} at step {step}")
    assert saw_dead, "the comparison covers the AuxK loss"
    if precision == "fp32":  # in bf16 the dense backward runs bf16 matmuls, the sparse one fp32 sums: Adam moves
        for (name, p), q in zip(dense.named_parameters(), sparse.parameters()):  # near-zero gradients apart by lr
            torch.testing.assert_close(q, p, **tol, msg=name)
        assert torch.equal(dense.steps_since_fired, sparse.steps_since_fired)
        with torch.no_grad():
            out_d, out_s = dense(x), sparse(x)
        torch.testing.assert_close(out_s.acts, out_d.acts, **tol)
        assert torch.equal(out_s.acts, torch.relu(topk_activation(out_s.pre_acts, 4)))


def test_topk_sparse_path_builds_the_dense_code_only_when_read():
    torch.manual_seed(0)
    model = aelab.build("sae_topk", d_in=8, d_sae=128, k=3)
    out = model(torch.randn(5, 8))
    assert vars(out)["acts"] is None, "the forward pass leaves the dense code unbuilt"
    assert vars(out)["acts"] is None and code_l0(out).tolist() == [3.0] * 5 and code_fired(out).sum() <= 15
    dense = out.acts  # first access: scattered from (indices, values) and kept
    assert dense is out.acts and vars(out)["acts"] is dense
    assert torch.equal(dense, torch.relu(topk_activation(out.pre_acts, 3)))
    assert torch.equal(code_fired(out), (dense != 0).any(0)) and torch.equal(code_l0(out), (dense != 0).sum(-1).float())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_row_topk_by_groups_equals_torch_topk(dtype):
    torch.manual_seed(0)
    # groups of 8, 8, 4 (max pooling) and 32 (a max over the last dimension); the last shape falls back (2 per group)
    for B, d_sae, k in [(7, 256, 4), (5, 512, 8), (3, 96, 3), (6, 1024, 4), (4, 64, 4)]:
        pre = torch.randn(B, d_sae, dtype=dtype)
        pre[1] = pre[1].round()  # many ties: the values still agree, in order
        pre[2, : d_sae // 2] = 5.0  # more maxima than k, all in a few groups
        if B > 3:  # the top 2k in adjacent columns: one or two groups
            pre[3, 16: 16 + 2 * k] = 10 + torch.arange(2 * k, dtype=dtype)
        values, indices = sparsity._row_topk(pre, k)
        ref = torch.topk(pre, k, dim=-1)
        assert torch.equal(values, ref.values), (B, d_sae, k)
        assert torch.equal(pre.gather(1, indices), values) and all(len(set(r.tolist())) == k for r in indices)
        for row in (0, 3, 4)[: B - 2]:  # rows without ties give the same indices too
            assert torch.equal(indices[row], ref.indices[row])


@pytest.mark.parametrize("d_sae, k", [(512, 8), (1024, 4)])  # groups of 8 (max pooling) and 32
@pytest.mark.parametrize("special", ["nan", "inf", "-inf", "all -inf"])
def test_row_topk_by_groups_with_non_finite_entries_agrees_with_torch_topk(special, d_sae, k):
    """A NaN or infinite pre-activation makes the threshold of the packed step not finite (or not
    useful): the top-k of the groups' entries is taken directly, with torch.topk's values."""
    torch.manual_seed(1)
    B = 6
    pre = torch.randn(B, d_sae)
    if special == "all -inf":
        pre[3] = float("-inf")
    else:
        pre[3, ::5] = float(special)  # more such entries than k, spread over the groups
    values, indices = sparsity._row_topk(pre, k)
    ref = torch.topk(pre, k, dim=-1)
    torch.testing.assert_close(values, ref.values, equal_nan=True, rtol=0, atol=0)
    torch.testing.assert_close(pre.gather(1, indices), values, equal_nan=True, rtol=0, atol=0)
    assert all(len(set(r.tolist())) == k for r in indices)
    assert torch.equal(indices[[0, 1, 2, 4, 5]], ref.indices[[0, 1, 2, 4, 5]])


def test_row_topk_packs_rows_with_many_entries_above_the_threshold():
    """Rows where many entries reach the k-th largest group maximum (ties, a block of equal values)
    widen the packed buffer; the values stay torch.topk's."""
    torch.manual_seed(2)
    B, d_sae, k = 5, 1024, 16
    pre = torch.randn(B, d_sae)
    pre[0] = (pre[0] * 2).round()  # a handful of distinct values
    pre[1, 100:900] = 3.0  # 800 equal entries above the rest
    pre[2, :] = 1.0  # a constant row
    values, indices = sparsity._row_topk(pre, k)
    ref = torch.topk(pre, k, dim=-1)
    assert torch.equal(values, ref.values)
    assert torch.equal(pre.gather(1, indices), values) and all(len(set(r.tolist())) == k for r in indices)
    assert torch.equal(indices[3:], ref.indices[3:])


def test_scaled_squared_error_matches_squared_error_of_the_scaled_tensors(float64):
    from aelab.functional import scaled_squared_error, squared_error
    x, recon, s = torch.randn(7, 5), torch.randn(7, 5), torch.tensor(0.37)
    g = torch.randn(7)
    for x_grad in (False, True):
        a, r = x.clone().requires_grad_(x_grad), recon.clone().requires_grad_()
        a2, r2 = x.clone().requires_grad_(x_grad), recon.clone().requires_grad_()
        err, ref = scaled_squared_error(a, r, s), squared_error(s * a2, s * r2)
        torch.testing.assert_close(err, ref)
        (err * g).sum().backward()
        (ref * g).sum().backward()
        torch.testing.assert_close(r.grad, r2.grad)
        assert (a.grad is None) == (not x_grad) and (a.grad is None or torch.allclose(a.grad, a2.grad))
    torch.testing.assert_close(scaled_squared_error(x, recon), squared_error(x, recon))
    with pytest.raises(ValueError, match="same shape"):
        scaled_squared_error(x, recon[:, :3], s)


@pytest.fixture
def sparse_steps(monkeypatch):
    """Counts the sparse ReLU / JumpReLU steps taken, with the size floor lifted for these small shapes."""
    steps = []
    nonzeros = sparsity._Code.nonzeros
    monkeypatch.setattr(sparsity._Code, "nonzeros", classmethod(lambda cls, acts: steps.append(1) or nonzeros(acts)))
    monkeypatch.setattr(sparsity, "SPARSE_STEP_MIN_PRODUCT", 0)
    return steps


def test_sparse_step_is_kept_for_products_where_it_pays():
    x, b_dec, W_enc, b_enc, W_dec = torch.randn(64, 8), torch.zeros(8), torch.randn(8, 32), torch.full((32,), -5.0), torch.randn(32, 8)
    assert sparsity._takes_sparse_path(torch.addmm(b_enc, x, W_enc), W_enc, 0.5) is False, "64 x 8 x 32 is below the floor"
    pre = torch.addmm(b_enc, x, W_enc).repeat(1024, 1)  # the same sparse code, 65536 x 8 x 32 = 2^24
    assert sparsity._takes_sparse_path(pre, W_enc, 0.5) and not sparsity._takes_sparse_path(pre, W_enc, 0.0)
    assert not sparsity._takes_sparse_path(pre + 10.0, W_enc, 0.5), "a dense code takes the dense step"


def test_code_nonzeros_lists_entries_in_row_order():
    acts = torch.tensor([[0.0, 2.0, 0.0, 1.5], [0.0, 0.0, 0.0, 0.0], [-0.0, 0.0, 3.0, 0.0]])
    code = sparsity._Code.nonzeros(acts)
    assert code.examples.tolist() == [0, 0, 2, 2] and code.latents.tolist() == [1, 3, 0, 2]
    assert code.values.tolist() == [2.0, 1.5, 0.0, 3.0] and code.offsets.tolist() == [0, 2, 2]
    assert torch.signbit(code.values[2]), "a -0.0 is listed (its gradient is masked in the backward)"
    assert torch.equal(code.flat, torch.tensor([1, 3, 8, 10]))


@pytest.mark.parametrize("rows", [1, 2, 3, 64])
def test_by_latent_orders_entries_by_block_latent_example_and_sums_like_dense_products(float64, monkeypatch, rows):
    """The backward's order of a code's entries, for blocks of ``rows`` examples (uneven, empty, or one block)."""
    B, d_sae, width = 11, 30, 5
    acts = torch.randn(B, d_sae).relu() * (torch.rand(B, d_sae) < 0.2)
    acts[4:7] = 0.0  # examples without entries: with blocks of 1 or 2 rows, whole blocks are empty
    monkeypatch.setattr(sparsity, "_BLOCK_BYTES", 4 * width * rows)
    code = sparsity._Code.nonzeros(acts)
    entries = code.by_latent(width)
    assert len(entries.blocks) == -(-B // rows) and code.by_latent(width) is entries, "sorted once"
    key = [(b // rows, j, b) for b, j in zip(entries.examples.tolist(), entries.latents.tolist())]
    assert key == sorted(key) and len(key) == code.flat.numel()
    assert torch.equal(entries.values, acts.view(-1)[entries.flat]) and torch.equal(entries.flat, code.flat[entries.order])
    assert torch.equal(entries.row_major(entries.take(code.values)), code.values)
    dense, grad, W = torch.randn(B, width), torch.randn(B, width), torch.randn(d_sae, width)
    torch.testing.assert_close(entries.sum(entries.values, dense), acts.T @ dense)
    torch.testing.assert_close(sparsity._bag_weight_grad(grad, W, entries),
                               (grad[entries.examples] * W[entries.latents]).sum(1))
    empty = sparsity._Code.nonzeros(torch.zeros(0, d_sae)).by_latent(width)
    assert torch.equal(empty.sum(empty.values, torch.zeros(0, width)), torch.zeros(d_sae, width))


@pytest.mark.parametrize("pre_bias", [True, False])
@pytest.mark.parametrize("use_pre", [False, True])
@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("path", ["dense", "sparse"])
def test_relu_sae_code_matches_autograd(float64, pre_bias, use_pre, weighted, path, sparse_steps, blocks):
    x, b_dec = torch.randn(9, 6), torch.randn(6)
    W_enc, b_enc, W_dec = torch.randn(6, 40), torch.randn(40), torch.randn(40, 6)
    if path == "sparse":  # about 10% of the code non-zero, and one example with none
        b_enc = b_enc - 4.0
        x[4] = b_dec if pre_bias else 0.0
    w = torch.rand(40) if weighted else torch.ones(40)
    leaves = [t.clone().requires_grad_() for t in (x, b_dec, W_enc, b_enc, W_dec, w)]
    ref_leaves = [t.clone().requires_grad_() for t in (x, b_dec, W_enc, b_enc, W_dec, w)]
    below = 0.0 if path == "dense" else 0.2
    pre, acts, decoded, l1 = relu_sae_code(*leaves[:5], leaves[5] if weighted else None, pre_encoder_bias=pre_bias,
                                           sparse_below=below)
    density = (acts > 0).double().mean().item()
    assert (0 < density < 0.2) if path == "sparse" else density > 0.2, density
    assert len(sparse_steps) == (path == "sparse"), "the step took the path under test"
    assert path == "dense" or not acts[4].any()
    *_, l0, fired = relu_sae_code(*leaves[:5], leaves[5] if weighted else None, pre_encoder_bias=pre_bias,
                                  sparse_below=below, counts=True)
    # counted from the non-zeros (sparse) or from sign(acts) (dense)
    assert l0.dtype == acts.dtype and torch.equal(l0, (acts > 0).sum(-1).to(l0.dtype))
    assert torch.equal(fired, (acts > 0).any(0)) and fired.any()
    rx, rb_dec, rW_enc, rb_enc, rW_dec, rw = ref_leaves
    rpre = torch.addmm(rb_enc, rx - rb_dec if pre_bias else rx, rW_enc)
    racts = torch.relu(rpre)
    rdecoded, rl1 = racts @ rW_dec, (racts.abs() * rw).sum(-1)
    for got, want in zip((pre, acts, decoded, l1), (rpre, racts, rdecoded, rl1)):
        torch.testing.assert_close(got, want)
    gd, g1, ga = torch.randn(9, 6), torch.randn(9), torch.randn(9, 40)
    extra = (lambda p, a: (p.sin() * ga).sum() + (a * ga).sum()) if use_pre else (lambda p, a: 0.0)
    ((decoded * gd).sum() + (l1 * g1).sum() + extra(pre, acts)).backward()
    ((rdecoded * gd).sum() + (rl1 * g1).sum() + extra(rpre, racts)).backward()
    for got, want, name in zip(leaves, ref_leaves, ("x", "b_dec", "W_enc", "b_enc", "W_dec", "weights")):
        if name == "weights" and not weighted:
            continue
        if want.grad is None:
            assert got.grad is None or not got.grad.abs().any(), name
        else:
            torch.testing.assert_close(got.grad, want.grad, msg=f"grad of {name}")


@pytest.mark.parametrize("pre_bias", [True, False])
@pytest.mark.parametrize("use_pre", [False, True])
@pytest.mark.parametrize("path", ["dense", "sparse"])
def test_jumprelu_sae_code_matches_autograd(float64, pre_bias, use_pre, path, sparse_steps, blocks):
    eps = 0.3
    x, b_dec = torch.randn(9, 6), torch.randn(6)
    W_enc, b_enc, W_dec, theta = torch.randn(6, 40), torch.randn(40), torch.randn(40, 6), torch.rand(40) + 0.05
    if path == "sparse":  # thresholds high enough for a code about 10% non-zero, with entries in the window
        theta = theta + 2.5
    leaves = [t.clone().requires_grad_() for t in (x, b_dec, W_enc, b_enc, W_dec, theta)]
    ref_leaves = [t.clone().requires_grad_() for t in (x, b_dec, W_enc, b_enc, W_dec, theta)]
    below = 0.0 if path == "dense" else 0.25
    pre, acts, decoded, l0 = jumprelu_sae_code(*leaves, eps, pre_encoder_bias=pre_bias, sparse_below=below)
    density = (acts != 0).double().mean().item()
    assert (0 < density < 0.25) if path == "sparse" else density > 0.25, density
    assert len(sparse_steps) == (path == "sparse"), "the step took the path under test"
    fired = jumprelu_sae_code(*leaves, eps, pre_encoder_bias=pre_bias, sparse_below=below, counts=True)[-1]
    assert torch.equal(fired, (acts != 0).any(0)) and fired.any()
    assert not torch.signbit(acts).any(), "the code's zeros are +0.0, as torch.where(pre > theta, pre, 0) writes them"
    rx, rb_dec, rW_enc, rb_enc, rW_dec, rtheta = ref_leaves
    rpre = torch.addmm(rb_enc, rx - rb_dec if pre_bias else rx, rW_enc)
    racts = jumprelu(rpre, rtheta, eps)
    rdecoded, rl0 = racts @ rW_dec, heaviside_step(rpre, rtheta, eps).sum(-1)
    for got, want in zip((pre, acts, decoded, l0), (rpre, racts, rdecoded, rl0)):
        torch.testing.assert_close(got, want)
    window = ((rpre - rtheta).abs() < eps / 2).sum().item()
    assert 0 < window < rpre.numel(), "the case has pre-activations in and out of the kernel window"
    gd, g0, ga = torch.randn(9, 6), torch.randn(9), torch.randn(9, 40)
    extra = (lambda p, a: (p.sin() * ga).sum() + (a * ga).sum()) if use_pre else (lambda p, a: 0.0)
    ((decoded * gd).sum() + (l0 * g0).sum() + extra(pre, acts)).backward()
    ((rdecoded * gd).sum() + (rl0 * g0).sum() + extra(rpre, racts)).backward()
    for got, want, name in zip(leaves, ref_leaves, ("x", "b_dec", "W_enc", "b_enc", "W_dec", "threshold")):
        if want.grad is None:
            assert got.grad is None or not got.grad.abs().any(), name
        else:
            torch.testing.assert_close(got.grad, want.grad, msg=f"grad of {name}")
    with pytest.raises(ValueError, match="bandwidth"):
        jumprelu_sae_code(x, b_dec, W_enc, b_enc, W_dec, theta, 0.0)


@pytest.mark.parametrize("start", ["dense", "sparse"])
def test_jumprelu_sae_fused_kernel_trains_like_autograd(start, sparse_steps):
    torch.manual_seed(0)
    model = aelab.build("sae_jumprelu", d_in=16, d_sae=96, l0_coefficient=0.05, bandwidth=0.05, init_threshold=0.05,
                        sparsity_warmup_steps=2, normalize_activations=True)
    x = torch.randn(64, 16)
    if start == "sparse":  # thresholds at each latent's 97th percentile: a code about 3% non-zero, the sparse step
        model.initialize(x)
        with torch.no_grad():
            model.log_threshold.copy_(torch.kthvalue(model.pre_activations(model.normalize(x)), 62, dim=0).values.clamp_min(0.05).log())
    plain, fused = copy.deepcopy(model), copy.deepcopy(model)
    plain.fused_kernel = False
    hist = [aelab.fit(m, x, max_steps=6, batch_size=32, shuffle=False, device="cpu", progress=False, log_every=1) for m in (plain, fused)]
    assert (len(sparse_steps) >= 5) if start == "sparse" else not sparse_steps, len(sparse_steps)
    for (name, p), q in zip(plain.named_parameters(), fused.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5, msg=name)
    assert not torch.equal(model.log_threshold, fused.log_threshold), "the thresholds moved"
    assert list(hist[0]["l0"]) == list(hist[1]["l0"])
    out_p, out_f = plain(x), fused(x)
    for field in ("recon", "acts", "pre_acts"):
        torch.testing.assert_close(getattr(out_f, field), getattr(out_p, field), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out_f.l0, code_l0(out_p))


@pytest.mark.parametrize("cfg", [dict(), dict(unit_norm_decoder=False, decoder_norm_l1=True, normalize_activations=True),
                                 dict(pre_encoder_bias=False, resample_every=2, dead_steps=1)])
@pytest.mark.parametrize("start", ["dense", "sparse"])
def test_relu_sae_fused_kernel_trains_like_autograd(cfg, start, sparse_steps):
    torch.manual_seed(0)
    model = aelab.build("sae_relu", d_in=16, d_sae=96, l1_coefficient=0.05, sparsity_warmup_steps=2, **cfg)
    x = torch.randn(64, 16)
    if start == "sparse":  # a code about 3% non-zero, as after training: the fused model takes the sparse step
        model.initialize(x)
        with torch.no_grad():
            model.b_enc -= torch.kthvalue(model.pre_activations(model.normalize(x)), 62, dim=0).values
    plain, fused = copy.deepcopy(model), copy.deepcopy(model)
    plain.fused_kernel = False
    for m in (plain, fused):
        torch.manual_seed(1)  # the resampling draws
        aelab.fit(m, x, max_steps=5, batch_size=32, shuffle=False, device="cpu", progress=False)
    assert (len(sparse_steps) >= 2) if start == "sparse" else not sparse_steps, len(sparse_steps)  # resampling densifies cfg 3
    for (name, p), q in zip(plain.named_parameters(), fused.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5, msg=name)
    assert torch.equal(plain.steps_since_fired, fused.steps_since_fired)
    out_p, out_f = plain(x), fused(x)
    for field in ("recon", "acts", "pre_acts"):
        torch.testing.assert_close(getattr(out_f, field), getattr(out_p, field), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out_f.l1, l1_penalty(out_p.acts, fused.l1_weights()), rtol=1e-4, atol=1e-5)


def test_fused_adam_steps_like_the_default():
    torch.manual_seed(0)
    model = aelab.build("vae", hidden=(32,), latent_dim=3)
    ref = copy.deepcopy(model)
    opt = model.configure_optimizers(1e-2)[0]
    assert opt.defaults["fused"], "the models' default Adam is the fused kernel on a CPU"
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-2, fused=False, foreach=False)
    x = torch.rand(16, 1, 28, 28)
    for _ in range(5):
        for m, o in ((model, opt), (ref, ref_opt)):
            torch.manual_seed(2)
            o.zero_grad()
            m.loss(x, m(x)).total.backward()
            o.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert not aelab.train.optim.fused_is_supported([torch.zeros(2, dtype=torch.long)])


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("grad_layout", ["like the parameter", "row-major"])
def test_fused_adam_updates_a_transposed_parameter_in_place_whatever_the_gradient_layout(amsgrad, grad_layout):
    """A latent-major W_enc (a clone of W_dec^T) takes the update of torch's unfused Adam, in its own memory:
    no copy in the step when the gradient is laid out like it; a row-major gradient set by hand is
    copied into that layout first (torch's fused kernel alone would pair the wrong elements)."""
    from torch.profiler import profile

    torch.manual_seed(0)
    start = torch.randn(64, 48)
    grads = torch.randn(4, 48, 64)
    params = {}
    for fused in (False, True):
        w = torch.nn.Parameter(start.clone().T)  # (48, 64), strides (1, 48)
        kw = dict(lr=0.1, amsgrad=amsgrad, weight_decay=0.01)
        opt = aelab.train.optim.adam([w], fused=True, **kw) if fused else torch.optim.Adam([w], fused=False, foreach=False, **kw)
        ptr = w.data_ptr()
        for step, g in enumerate(grads):
            w.grad = g.T.contiguous().T if grad_layout == "like the parameter" else g.clone()
            if fused and step == len(grads) - 1:
                with profile(record_shapes=True) as prof:
                    opt.step()
                copies = [e.name for e in prof.events() if e.name in ("aten::copy_", "aten::clone")
                          and [48, 64] in e.input_shapes]  # not the scalar step counter's
                assert bool(copies) == (grad_layout == "row-major"), copies
            else:
                opt.step()
        assert w.stride() == (1, 48) and w.data_ptr() == ptr
        if fused:
            assert all(t.stride() == w.stride() for t in opt.state[w].values() if t.dim() == 2)
        params[fused] = w.detach().clone()
    torch.testing.assert_close(params[True], params[False], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("grad_format", [torch.channels_last, torch.contiguous_format])
def test_fused_adam_steps_a_channels_last_conv_weight_like_the_default(grad_format):
    """A channels-last (N, C, H, W) weight reaches the fused kernel as its (N, H, W, C) view: the same update."""
    torch.manual_seed(0)
    start, grads = torch.randn(8, 4, 3, 3), torch.randn(3, 8, 4, 3, 3)
    out = {}
    for fused in (False, True):
        w = torch.nn.Parameter(start.clone().to(memory_format=torch.channels_last))
        opt = aelab.train.optim.adam([w], lr=0.1) if fused else torch.optim.Adam([w], lr=0.1, fused=False, foreach=False)
        for g in grads:
            w.grad = g.contiguous(memory_format=grad_format)
            opt.step()
        assert w.is_contiguous(memory_format=torch.channels_last)
        out[fused] = w.detach().clone()
    torch.testing.assert_close(out[True], out[False], rtol=1e-5, atol=1e-6)


def test_fused_adam_takes_a_state_laid_out_unlike_its_parameter():
    """A state_dict from torch's Adam on a row-major copy of the parameter (a checkpoint from elsewhere) loads
    into the fused Adam of a latent-major one, and the next steps are the same as torch's unfused ones."""
    torch.manual_seed(0)
    start, grads = torch.randn(16, 32), torch.randn(3, 16, 32)
    ref = torch.nn.Parameter(start.clone())
    ref_opt = torch.optim.Adam([ref], lr=0.05, fused=False, foreach=False)
    ref.grad = grads[0].clone()
    ref_opt.step()
    w = torch.nn.Parameter(ref.detach().T.contiguous().T)  # the same values, latent-major
    ours = aelab.train.optim.adam([w], lr=0.05)
    ours.load_state_dict(copy.deepcopy(ref_opt.state_dict()))  # a copy, as from a file: not the same tensors
    ours.param_groups[0]["fused"] = True  # load_state_dict brought the reference's options along
    assert isinstance(ours, torch.optim.Adam) and ours.state[w]["exp_avg"].stride() != w.stride()
    for g in grads[1:]:
        ref.grad, w.grad = g.clone(), g.T.contiguous().T
        ref_opt.step()
        ours.step()
    torch.testing.assert_close(w.detach(), ref.detach(), rtol=1e-5, atol=1e-6)
    assert ours.state[w]["exp_avg"].stride() == w.stride()


def test_cpu_allocator_tuning_is_idempotent_and_can_be_refused(monkeypatch):
    from aelab.train import optim

    monkeypatch.setattr(optim, "_tuned", False)
    monkeypatch.setenv("AELAB_CPU_ALLOCATOR", "default")
    assert optim.tune_cpu_allocator() is False
    monkeypatch.delenv("AELAB_CPU_ALLOCATOR")
    tuned = optim.tune_cpu_allocator()
    assert tuned == (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
    assert optim.tune_cpu_allocator() is tuned  # a second call changes nothing
    big = torch.ones(1024, 1024, 20)  # an 80 MB block, now from the heap: same values, nothing else changes
    assert big.sum().item() == 1024 * 1024 * 20


def test_batch_topk_keeps_the_dense_path():
    model = aelab.build("sae_batch_topk", d_in=16, d_sae=256, k=4)
    assert not model.uses_sparse_kernels()
    assert not aelab.build("sae_topk", d_in=16, d_sae=16, k=4).uses_sparse_kernels(), "k > d_sae / 8: dense is faster"


def test_in_memory_batching_matches_a_data_loader():
    x = torch.randn(40, 12, generator=torch.Generator().manual_seed(0))
    runs = []
    for data in (x, torch.utils.data.DataLoader(x, batch_size=8, shuffle=False)):
        aelab.seed_everything(0)
        model = aelab.build("ae", input_shape=(12,), hidden=(16,), latent_dim=3, likelihood="gaussian")
        h = aelab.fit(model, data, epochs=2, batch_size=8, shuffle=False, device="cpu", progress=False, log_every=1)
        runs.append((torch.cat([p.detach().flatten() for p in model.parameters()]), h["recon"]))
    assert torch.equal(runs[0][0], runs[1][0])
    assert (runs[0][1] == runs[1][1]).all()


@pytest.mark.parametrize("name, cfg", [("sae_topk", dict(d_in=16, d_sae=256, k=4)), ("vae", dict(hidden=(32,), latent_dim=3))])
def test_bf16_autocast_gives_the_fp32_loss_within_bf16_precision(name, cfg):
    torch.manual_seed(0)
    model = aelab.build(name, **cfg)
    x = torch.rand(32, *model.input_shape)
    if name == "sae_topk":
        model.initialize(x)
    torch.manual_seed(1)
    fp32 = model.loss(x, model(x)).total
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        bf16 = model.loss(x, out).total
    assert abs(bf16.item() - fp32.item()) <= 0.03 * abs(fp32.item())


@pytest.mark.gpu
def test_cuda_paths_match_the_cpu():
    torch.manual_seed(0)
    model = aelab.build("sae_topk", d_in=16, d_sae=256, k=4)
    x = torch.randn(64, 16)
    model.initialize(x)
    gpu = copy.deepcopy(model).cuda()
    out_c, out_g = model(x), gpu(x.cuda())
    torch.testing.assert_close(out_g.recon.cpu(), out_c.recon, rtol=1e-4, atol=1e-4)
    # fit: on-device batching, and data too big for the device kept in pinned host memory
    from aelab.train import loop

    for fits in (True, False):
        m = aelab.build("vae", hidden=(32,), latent_dim=3)
        orig = loop._fits_on
        loop._fits_on = lambda dev, ts, fits=fits: fits
        try:
            h = aelab.fit(m, torch.rand(64, 1, 28, 28), epochs=1, batch_size=16, device="cuda", precision="bf16", progress=False)
        finally:
            loop._fits_on = orig
        assert next(m.parameters()).is_cuda and len(h.logs) >= 1


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["sae_topk", "sae_relu", "sae_jumprelu"])
def test_cuda_sae_steps_match_the_cpu(name):
    """One training step of each fast SAE path (sparse TopK kernels, fused ReLU / JumpReLU) on CUDA, fused Adam included."""
    torch.manual_seed(0)
    cfg = dict(k=4) if name == "sae_topk" else dict(init_threshold=0.05, bandwidth=0.05) if name == "sae_jumprelu" else {}
    model = aelab.build(name, d_in=16, d_sae=256, **cfg)
    x = torch.randn(64, 16)
    model.initialize(x)
    gpu = copy.deepcopy(model)
    for m, dev in ((model, "cpu"), (gpu, "cuda")):
        aelab.fit(m, x, max_steps=2, batch_size=32, shuffle=False, device=dev, progress=False)
    assert next(gpu.parameters()).is_cuda
    for (pname, p), q in zip(model.named_parameters(), gpu.parameters()):
        torch.testing.assert_close(q.cpu(), p, rtol=1e-3, atol=1e-4, msg=pname)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["sae_topk", "vae"])
def test_cuda_training_steps_do_not_wait_for_the_device(name):
    """CUDA's own check: between the first and the last step of ``fit`` no operation synchronises the host
    with the device (``torch.cuda.set_sync_debug_mode("error")`` turns any that does into an error)."""
    aelab.seed_everything(0)
    model = (aelab.build("sae_topk", d_in=16, d_sae=256, k=4, dead_steps=6) if name == "sae_topk"
             else aelab.build("vae", input_shape=(12,), hidden=(16,), latent_dim=3))
    if name == "sae_topk":
        with torch.no_grad():
            model.b_enc[:32] = -50.0  # dead after 6 steps: AuxK runs

    def watch(ctx, loss):
        torch.cuda.set_sync_debug_mode("error" if 0 <= ctx.step < 22 else 0)

    try:
        aelab.fit(model, torch.randn(512, 16) if name == "sae_topk" else torch.rand(512, 12), max_steps=24, batch_size=32,
                  log_every=24, progress=False, callbacks=[watch], device="cuda")
    finally:
        torch.cuda.set_sync_debug_mode(0)


@pytest.mark.parametrize("kind", ["relu", "jumprelu"])
def test_dense_code_counts_an_empty_batch(kind):
    W_enc, b_enc, W_dec, b_dec = torch.randn(6, 40), torch.randn(40), torch.randn(40, 6), torch.randn(6)
    x = torch.randn(0, 6)
    if kind == "relu":
        *_, l0, fired = relu_sae_code(x, b_dec, W_enc, b_enc, W_dec, None, counts=True)
        assert l0.shape == (0,)
    else:
        *_, l0, fired = jumprelu_sae_code(x, b_dec, W_enc, b_enc, W_dec, torch.rand(40) + 0.05, 0.1, counts=True)
    assert fired.shape == (40,) and fired.dtype == torch.bool and not fired.any()


@pytest.mark.parametrize("kind", ["relu", "jumprelu"])
def test_fused_dense_step_in_bf16_matches_the_plain_path(kind):
    """Under bf16 autocast the fused ReLU / JumpReLU forward gives the plain path's code, exact L0 counts
    (rows of about 500 non-zeros: more than bf16 holds exactly) and firing, and gradients within bf16 rounding."""
    torch.manual_seed(0)
    cfg = dict(l1_coefficient=0.1) if kind == "relu" else dict(l0_coefficient=0.1, bandwidth=0.5, init_threshold=0.05)
    model = aelab.build(f"sae_{kind}", d_in=32, d_sae=1024, **cfg)
    x = torch.randn(64, 32)
    model.initialize(x)
    plain, fused = copy.deepcopy(model), copy.deepcopy(model)
    plain.fused_kernel = False
    outs, losses = [], []
    for m in (plain, fused):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(x)
            loss = m.loss(x, out)
        loss.total.backward()
        outs.append(out)
        losses.append(loss)
    (p, f), (lp, lf) = outs, losses
    assert f.acts.dtype == torch.bfloat16 and torch.equal(f.acts, p.acts) and not torch.signbit(f.acts).any()
    l0 = (p.acts != 0).sum(-1)
    assert l0.max() > 256, "the case has counts that bf16 does not hold exactly"
    assert torch.equal(code_l0(f), l0.float()) and torch.equal(code_fired(f), (p.acts != 0).any(0))
    assert lf.terms["l0"].item() == lp.terms["l0"].item()
    torch.testing.assert_close(lf.total, lp.total, rtol=1e-3, atol=0)
    for (name, a), b in zip(plain.named_parameters(), fused.parameters()):
        scale = a.grad.abs().max()
        assert scale > 0, name
        torch.testing.assert_close(b.grad / scale, a.grad / scale, rtol=0, atol=0.02, msg=name)


@pytest.mark.parametrize("latent_major", [True, False])
def test_weight_grad_is_laid_out_like_the_weight(latent_major):
    """x^T g in W's memory layout: an SAE's W_enc (a clone of W_dec^T) gets a gradient autograd need not copy."""
    x, g = torch.randn(9, 6, dtype=torch.float64), torch.randn(9, 40, dtype=torch.float64)
    W = torch.randn(40, 6, dtype=torch.float64).T.clone() if latent_major else torch.randn(6, 40, dtype=torch.float64)
    grad = sparsity._weight_grad(x, g, W)
    torch.testing.assert_close(grad, x.T @ g, rtol=1e-12, atol=1e-12)
    assert grad.stride() == W.stride()
    assert aelab.build("sae_relu", d_in=6, d_sae=40).W_enc.stride() == (1, 6), "SAEs keep W_enc latent-major"


def test_topk_sae_steps_do_not_read_device_values_on_cuda_once_latents_die(as_on_cuda, host_reads):
    """After the first step, the TopK SAE's training step in ``fit`` reads no tensor value on the host (the
    CUDA paths, run here on the CPU): through the sparse kernels, and also once latents are dead and AuxK runs."""
    aelab.seed_everything(0)
    model = aelab.build("sae_topk", d_in=16, d_sae=256, k=4, dead_steps=6)
    assert model.uses_sparse_kernels()
    with torch.no_grad():
        model.b_enc[:32] = -50.0  # these never fire: dead after 6 steps, then AuxK runs
    per_step: list[list[str]] = []

    def mark(ctx, loss):
        per_step.append(list(host_reads.calls))
        host_reads.calls.clear()

    with host_reads:
        history = aelab.fit(model, torch.randn(512, 16), max_steps=24, batch_size=32, log_every=24, progress=False,
                            callbacks=[mark], device="cpu")
    assert len(per_step) == 24
    assert per_step[1:] == [[]] * 23, [(i, c) for i, c in enumerate(per_step) if c]
    assert model.dead_latents()[:32].all() and history.logs[-1]["auxk"] > 0


def test_auxk_is_the_same_when_its_check_stays_on_the_device(monkeypatch):
    """The CUDA path of AuxK (computed where latents may be dead, times dead.any()) gives the CPU path's
    losses and parameters, step for step, through the steps where latents die (up to summation order:
    where AuxK is computed the encoder's backward is the dense one)."""
    results = []
    for on_cuda in (False, True):
        monkeypatch.setattr(aelab._env, "host_sync_is_cheap", lambda device, v=on_cuda: not v)
        aelab.seed_everything(0)
        model = aelab.build("sae_topk", d_in=16, d_sae=256, k=4, dead_steps=6)
        with torch.no_grad():
            model.b_enc[:32] = -50.0
        history = aelab.fit(model, torch.randn(512, 16), max_steps=20, batch_size=32, log_every=1, progress=False,
                            device="cpu")
        results.append((history.logs, model.state_dict()))
    (logs, state), (logs_cuda, state_cuda) = results
    assert [row["auxk"] for row in logs] == [row["auxk"] for row in logs_cuda]
    assert logs[0]["auxk"] == 0 and logs[-1]["auxk"] > 0
    for key in state:
        torch.testing.assert_close(state_cuda[key], state[key], msg=key)


def test_non_finite_loss_is_reported_at_its_step_when_the_check_stays_on_the_device(tmp_path, as_on_cuda):
    """On CUDA the loss check is read at the next log row; the error still names the first bad step,
    and no checkpoint is written after it."""
    aelab.seed_everything(0)
    model = aelab.build("vae", input_shape=(12,), hidden=(16,), latent_dim=3)
    calls = []
    original = type(model).loss

    def loss(self, batch, out):
        result = original(self, batch, out)
        calls.append(1)
        if len(calls) in (7, 9):
            result.total = result.total * float("inf")
        return result

    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(type(model), "loss", loss)
    x = torch.rand(40, 12)  # 4 steps an epoch
    try:
        with pytest.raises(aelab.train.NonFiniteLossError, match=r"became (inf|nan) at step 6 \(epoch 1\); no checkpoint"):
            aelab.fit(model, x, epochs=5, batch_size=10, log_every=5, progress=False, device="cpu")
        assert len(calls) == 10, "stopped at the log row after the bad step"
        calls.clear()
        aelab.seed_everything(0)
        model = aelab.build("vae", input_shape=(12,), hidden=(16,), latent_dim=3)  # the first has non-finite weights now
        ckpt = tmp_path / "c.safetensors"
        with pytest.raises(aelab.train.NonFiniteLossError, match=r"became (inf|nan) at step 6 \(epoch 1\); the last good checkpoint"):
            aelab.fit(model, x, epochs=5, batch_size=10, log_every=5, checkpoint=ckpt, progress=False, device="cpu")
        assert len(calls) == 8, "stopped before the checkpoint of epoch 1"
        kept = aelab.build("vae", input_shape=(12,), hidden=(16,), latent_dim=3)
        assert aelab.train.checkpoint.load_checkpoint(ckpt, kept, kept.configure_optimizers(1e-3))[0].step == 4
        assert all(torch.isfinite(p).all() for p in kept.parameters()), "the checkpoint of epoch 0 is kept"
    finally:
        monkeypatch.undo()


def _conv_vae():
    aelab.seed_everything(0)
    return aelab.build("beta_vae", channels=4, hidden=(16,), latent_dim=3)


def test_channels_last_training_matches_the_default_layout_and_gives_the_model_back_in_it(tmp_path):
    """``fit(channels_last=True)`` trains the conv weights in the channels-last layout (oneDNN's) and returns
    them in the default one; losses and weights are those of the default layout up to summation order."""
    x = torch.rand(64, 1, 64, 64)
    layouts, results = [], {}
    for cl in (False, True):
        model = _conv_vae()
        conv = model.encoder.conv[2].weight  # 4 -> 4 channels (with 1 channel both layouts are the same strides)

        def seen(ctx, loss, conv=conv):
            layouts.append((cl, conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()))

        ckpt = tmp_path / f"{cl}.safetensors"
        history = aelab.fit(model, x, epochs=2, batch_size=16, shuffle=False, progress=False, log_every=1,
                            channels_last=cl, checkpoint=ckpt, callbacks=[seen])
        assert all(p.is_contiguous() for p in model.parameters()), "the model comes back in the default layout"
        reloaded = _conv_vae()
        aelab.train.checkpoint.load_checkpoint(ckpt, reloaded, reloaded.configure_optimizers(1e-3))
        for name, p in model.state_dict().items():
            assert torch.equal(reloaded.state_dict()[name], p), f"checkpoint of {name}"
        results[cl] = ([[v for k, v in row.items() if k not in ("step", "epoch")] for row in history.logs], model.state_dict())
    assert layouts == [(False, False)] * 8 + [(True, True)] * 8, "channels last where asked, in every step"
    torch.testing.assert_close(results[True][0], results[False][0], rtol=1e-4, atol=1e-4)
    for name, p in results[False][1].items():
        torch.testing.assert_close(results[True][1][name], p, rtol=1e-3, atol=1e-4, msg=name)


def test_channels_last_is_the_default_for_conv_models_on_a_cpu_only():
    layouts = []

    def seen(ctx, loss):
        layouts.append(any(p.dim() == 4 and not p.is_contiguous() for p in ctx.model.parameters()))

    aelab.fit(_conv_vae(), torch.rand(16, 1, 64, 64), max_steps=1, batch_size=16, progress=False, callbacks=[seen], device="cpu")
    aelab.fit(_conv_vae(), torch.rand(16, 1, 64, 64), max_steps=1, batch_size=16, progress=False, callbacks=[seen], device="cpu",
              channels_last=False)
    mlp = aelab.build("vae", input_shape=(12,), hidden=(16,), latent_dim=3)
    aelab.fit(mlp, torch.rand(16, 12), max_steps=1, batch_size=16, progress=False, callbacks=[seen], device="cpu")
    assert layouts == [True, False, False]
