"""Sparsity operators and objectives for sparse autoencoders.

Activations: top-k per row (Makhzani & Frey 2013; Gao et al. 2024), top-(k B) over a batch
(Bussmann et al. 2024), the JumpReLU and its Heaviside step with the straight-through
pseudo-derivatives of Rajamanoharan et al. 2024 ("Jumping Ahead"). Objectives: squared
reconstruction error, the L1 penalty weighted by decoder norms, nested (Matryoshka) prefix
reconstructions. Geometry: the geometric median by Weiszfeld's algorithm, and the gradient
projection that keeps decoder rows on the unit sphere.

Reductions: per-example functions return ``(B,)``; the docstring of each says what is summed.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from aelab.functional._device import as_tensor_like, index_counts


def topk_activation(pre: Tensor, k: int) -> Tensor:
    """Keep the k largest entries of each row, zero the rest: (B, d) -> (B, d).

    The k-sparse autoencoder nonlinearity (Makhzani & Frey 2013); gradients flow only through the
    kept entries. Ties are broken by ``torch.topk``'s order.
    """
    if not 1 <= k <= pre.shape[-1]:
        raise ValueError(f"k must be in [1, {pre.shape[-1]}] (the code size), got {k}")
    values, indices = torch.topk(pre, k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, indices, values)


def _row_topk(pre: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """``torch.topk(pre, k, dim=-1)`` for a (B, d_sae) CPU tensor, by a first pass over groups.

    The columns are split into G = 8k groups of d_sae / G adjacent columns; only the k groups with
    the largest maxima can hold a top-k entry (a group outside them with an entry above the k-th
    largest value would make k + 1 group maxima above it). The smallest of those k maxima, t, is at
    most the k-th largest value (the k maxima are k entries >= t), so the top k are among the
    entries >= t of those k groups: at least k of them (the maxima), typically a few more. One pass
    for the groups' maxima, a top-k of the G maxima, a copy of the k groups (whole rows of the
    (B G, d_sae / G) view, so contiguous runs), and a top-k over each row's entries >= t, packed
    into a (B, w) buffer (w the largest count, padded with -inf), give the same values, in the same
    order; among tied values the indices may differ. Used for fp32 and fp64, where ties are rare
    (bf16 and fp16 codes tie often, and their indices should not depend on the path); falls back to
    ``torch.topk`` there, off the CPU, and where the shape does not split (d_sae not a multiple of G,
    or fewer than 4 entries per group); the last step falls back to a top-k over all d_sae k / G
    entries of the k groups when a t is not finite (a NaN or infinite pre-activation).
    """
    B, d_sae = pre.shape
    G = 8 * k
    if (pre.device.type != "cpu" or pre.dtype not in (torch.float32, torch.float64) or d_sae % G or d_sae // G < 4
            or not pre.is_contiguous() or B == 0):
        return torch.topk(pre, k, dim=-1)
    per_group = d_sae // G  # group c: columns c per_group ... (c + 1) per_group - 1, row b G + c of the view below
    # the groups' maxima (a NaN propagates either way): torch's max over a last dimension of fewer than 32 is
    # not vectorised (10 ms for 16 at 4096 x 4096, against 4 ms for a max pooling); a max pooling's window of 64
    # is slower still (43 ms at 4096 x 16384, against 14 ms)
    if per_group >= 32:
        group_max = pre.view(B, G, per_group).amax(2)
    else:
        group_max = torch.nn.functional.max_pool1d(pre.view(B, 1, d_sae), per_group).view(B, G)
    maxima, groups = torch.topk(group_max, k, dim=-1, sorted=False)  # (B, k)
    rows = groups + torch.arange(0, B * G, G, device=pre.device).unsqueeze(1)
    candidates = pre.view(B * G, per_group).index_select(0, rows.view(-1)).view(B, k * per_group)
    t = maxima.amin(1, keepdim=True)
    if not bool(torch.isfinite(t).all()):
        values, pos = torch.topk(candidates, k, dim=-1)
    else:
        entries = _Code((candidates >= t).view(-1).nonzero().squeeze(1), k * per_group, B)  # row-major, with each row's run start
        E = entries.flat.numel()
        w = int(torch.diff(entries.offsets, append=entries.offsets.new_tensor([E])).max())
        slot = entries.examples * w + torch.arange(E, device=pre.device) - entries.offsets[entries.examples]
        packed = candidates.new_full((B * w,), float("-inf")).index_put_((slot,), candidates.view(-1).take(entries.flat))
        values, s = torch.topk(packed.view(B, w), k, dim=-1)  # every row has >= k entries > -inf (t finite): s < its count
        pos = entries.latents.take(entries.offsets.unsqueeze(1) + s)  # the entry in slot s of row b is entry offsets[b] + s
    return values, groups.gather(1, torch.div(pos, per_group, rounding_mode="floor")) * per_group + pos % per_group


class _Entries:
    """Entries (b, j) of a sparse (B, d_sae) code: ``examples`` b and ``latents`` j (E,), and their flat
    positions b d_sae + j, made when first read."""

    examples: Tensor
    latents: Tensor
    d_sae: int
    _flat: Tensor | None = None

    @property
    def flat(self) -> Tensor:
        if self._flat is None:
            self._flat = self.examples * self.d_sae + self.latents
        return self._flat


class _Code(_Entries):
    """The entries of a sparse (B, d_sae) code in row-major order: their flat positions b d_sae + j (E,),
    each one's example b and latent j, its value (or None), and the offsets (B,) where each example's
    run starts (the bags of an embedding bag). ``by_latent(width)`` puts them in the backward's order, once.
    Made from the flat positions, or from ``examples`` and ``latents`` (``flat=None``)."""

    def __init__(self, flat: Tensor | None, d_sae: int, B: int, values: Tensor | None = None,
                 examples: Tensor | None = None, offsets: Tensor | None = None, latents: Tensor | None = None):
        self._flat, self.values, self.d_sae, self.B = flat, values, d_sae, B
        self.examples = torch.div(flat, d_sae, rounding_mode="floor") if examples is None else examples
        self.latents = flat - self.examples * d_sae if latents is None else latents
        if offsets is None:
            offsets = torch.zeros(B, dtype=torch.long, device=flat.device)
            torch.cumsum(torch.bincount(self.examples, minlength=B)[:-1], 0, out=offsets[1:])
        self.offsets = offsets
        self._by_latent = None

    @classmethod
    def nonzeros(cls, acts: Tensor) -> _Code:
        """The non-zeros of ``acts`` (B, d_sae). nonzero runs over the bits as integers: about half the
        time of a bool mask and its nonzero. A -0.0 counts as an entry; it adds 0 to every sum, and the
        backward masks it (value > 0) like the ReLU's."""
        B, d_sae = acts.shape
        flat = acts.view(_SAME_SIZE_INT[acts.element_size()]).view(-1).nonzero().squeeze(1)
        return cls(flat, d_sae, B, acts.view(-1).take(flat))

    @classmethod
    def top_k(cls, indices: Tensor, d_sae: int, values: Tensor | None = None) -> _Code:
        """The k entries per example of a top-k code, from its indices (B, k) (and values (B, k))."""
        B, k = indices.shape
        examples = torch.arange(B, device=indices.device).repeat_interleave(k)
        return cls(None, d_sae, B, None if values is None else values.flatten(), examples=examples,
                   offsets=torch.arange(0, B * k, k, device=indices.device), latents=indices.flatten())

    def by_latent(self, width: int) -> _ByLatent:
        """The entries in the order of the backward's sums against (B, ``width``) dense operands."""
        if self._by_latent is None or self._by_latent.width != width:
            self._by_latent = _ByLatent(self, width)
        return self._by_latent


_SAME_SIZE_INT = {2: torch.int16, 4: torch.int32, 8: torch.int64}

_BLOCK_BYTES = 3 << 19
"""1.5 MiB of dense fp32 rows per block of ``_ByLatent``: what a core's L2 cache holds with room to spare
(2 MiB per core on the course's reference machine). At the benchmark's shape, blocks of 512, 1024 and
2048 rows took 12.2, 11.0 and 13.9 ms for the sort, the per-entry gradient and both products."""


class _ByLatent(_Entries):
    """The entries of a sparse code in the order of the backward pass: by block of examples, then by
    latent, then by example. A (d_sae, B) sparse matrix in CSR form, one per block, sorted once.

    ``examples``, ``latents``, ``values`` (and ``flat``) are the code's, permuted by ``order`` (each entry's
    position in the code's row-major list); ``take`` permutes any per-entry tensor the same way, and
    ``row_major`` permutes back. Per-entry quantities are computed in this order, so the CSR products
    use them without a permutation.

    ``sum(weights, dense)`` is sum over the entries e with latent j of weights[e] dense[example of e],
    (d_sae, d): the gradient of W_dec (weights the code, dense the reconstruction's gradient) or of
    W_enc^T (weights the code's gradient, dense the encoder input); weights in this order. One CSR
    product per block, E d multiply-adds instead of the B d_sae d of a dense product; the sort is
    shared by both.

    Why blocks: each product reads one dense row per entry, scattered over the whole (B, d) operand.
    On a CPU the examples are split into blocks of ``_BLOCK_BYTES // (4 width)`` rows (1024 at
    d_in 384), so that a block's dense rows stay in the L2 cache while its product reads them. The
    per-entry dot products with W_dec's rows (``_bag_weight_grad``) gain as well: in this order
    they read W_dec's rows in order within a block. At B 4096, d_in 384, d_sae 4096, k 32 (a 6 MiB
    dense operand), the sort, the per-entry gradient and both products took 11 ms instead of 16.4
    (the per-entry gradient 2.2 ms instead of 4.3). One block on other devices. The blocks' partial
    sums add up in block order, so the sums' rounding differs from one product's.
    """

    def __init__(self, code: _Code, width: int):
        self.code, self.width, self.d_sae = code, width, code.d_sae
        B, d_sae, E = code.B, code.d_sae, code.latents.numel()
        rows = max(1, _BLOCK_BYTES // (4 * max(1, width))) if code.latents.device.type == "cpu" else max(1, B)
        n = max(1, -(-B // rows))
        key = code.latents if n == 1 else code.latents + d_sae * torch.div(code.examples, rows, rounding_mode="floor")
        # int32 indices where they fit: the sort is faster, and the CSR product needs no conversion
        index = torch.int32 if max(E, B, n * d_sae) < 2**31 else torch.long
        self.order = torch.argsort(key.to(index), stable=True)
        self.examples, self.latents = code.examples[self.order], code.latents[self.order]
        self.values = None if code.values is None else code.values[self.order]
        self.offsets = code.offsets  # the bags' starts, for embedding-bag kernels: they read each entry's example
        crow = torch.zeros(n * d_sae + 1, dtype=index, device=code.latents.device)
        torch.cumsum(index_counts(key, n * d_sae, index), 0, out=crow[1:])
        bounds = crow[::d_sae].tolist() if n > 1 else [0, E]  # each block's first entry (one block: no read of the device)
        self.cols = (self.examples if n == 1 else self.examples % rows).to(index)  # the example within its block
        self.blocks = [(c * rows, min(B, (c + 1) * rows), crow[c * d_sae:(c + 1) * d_sae + 1] - bounds[c], bounds[c], bounds[c + 1])
                       for c in range(n)]

    def take(self, per_entry: Tensor) -> Tensor:
        """A per-entry tensor in the code's row-major order (any shape with E elements) -> (E,) in this order."""
        return per_entry.reshape(-1)[self.order]

    def row_major(self, per_entry: Tensor) -> Tensor:
        """The inverse of ``take``: (E,) in this order -> (E,) in the code's row-major order."""
        return torch.empty_like(per_entry).index_copy_(0, self.order, per_entry)

    def sum(self, weights: Tensor, dense: Tensor) -> Tensor:
        weights, dense = weights.to(dense.dtype), dense.contiguous()
        out = dense.new_empty(self.d_sae, dense.shape[1])
        with warnings.catch_warnings():  # torch calls its CSR layout beta; this use is covered by tests against dense products
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            for c, (first, end, crow, start, stop) in enumerate(self.blocks):
                A = torch.sparse_csr_tensor(crow, self.cols[start:stop], weights[start:stop], (self.d_sae, end - first),
                                            check_invariants=False)
                # beta 0 for the first block: out's contents are not read (addmm's rule), so no zero fill; then accumulate
                torch.addmm(out, A, dense[first:end], beta=0 if c == 0 else 1, out=out)
        return out


def _bag_weight_grad(grad: Tensor, W: Tensor, entries: _Code | _ByLatent) -> Tensor:
    """grad[b] . W[j] for every entry (b, j), in the entries' order: (B, d), (n, d) -> (E,), in W's dtype.

    The gradient of an embedding bag's per-sample weights, by the kernel torch's own backward calls
    (one dot product per entry, with its example's row of grad: any order of the entries): no (E, d)
    gather, no second forward pass.
    """
    return torch.ops.aten._embedding_bag_per_sample_weights_backward(
        grad.to(W.dtype).contiguous(), W, entries.latents, entries.offsets, entries.examples, 0)


def _weight_grad(x_in: Tensor, g: Tensor, W: Tensor) -> Tensor:
    """x_in^T g (d_in, d_sae), the gradient of W in x_in W, laid out in memory as W is: autograd then takes
    it as W's gradient without a copy, and the fused Adam step needs none either (an SAE's W_enc starts as
    a clone of W_dec^T, so latent-major). The same products either way."""
    if W.dim() == 2 and W.shape[1] > 1 and W.stride() == (1, W.shape[0]):
        return (g.T @ x_in).T
    return x_in.T @ g


def _encoder_grads(needs, x_in: Tensor, W: Tensor, entries: _ByLatent, g: Tensor,
                   grad_pre: Tensor | None) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients of (x_in, W, b) for pre = x_in W + b when the loss reads pre at the code's entries.

    g (E,) is the gradient at those entries, in their ``_ByLatent`` order and the accumulation dtype; ``needs`` says which of the
    three to make. With ``grad_pre`` (something, e.g. the AuxK loss, read the dense pre-activations)
    one dense backward; else the sparse one: an embedding bag for x_in, a CSR product for W, an
    index sum for b.
    """
    need_x, need_W, need_b = needs
    dt = g.dtype
    if grad_pre is not None:
        dense = grad_pre.to(dt, copy=True)
        dense.view(-1).index_add_(0, entries.flat, g)
        return (dense @ W.to(dt).T if need_x else None, _weight_grad(x_in.to(dt), dense, W) if need_W else None,
                dense.sum(0) if need_b else None)
    grad_x = grad_W = grad_b = None
    if need_x:  # grad_x[b] = sum over b's entries (b, j) of g W[:, j]
        code = entries.code  # an embedding bag's bags are runs of entries: the row-major order
        grad_x = torch.nn.functional.embedding_bag(code.latents, W.to(dt).T.contiguous(), code.offsets,
                                                   per_sample_weights=entries.row_major(g), mode="sum")
    if need_W:  # grad_W[:, j] = sum over the entries (b, j) of g x[b]
        grad_W = entries.sum(g, x_in.to(dt)).T
    if need_b:
        grad_b = torch.zeros(entries.d_sae, dtype=dt, device=g.device).index_add_(0, entries.latents, g)
    return grad_x, grad_W, grad_b


def _cast(t: Tensor | None, like: Tensor | None) -> Tensor | None:
    return None if t is None else t.to(like.dtype)


class _TopKEncode(torch.autograd.Function):
    """pre = x W + b and its k largest entries per row; backward exploits that only k per row are used."""

    @staticmethod
    def forward(ctx, x: Tensor, W: Tensor, b: Tensor, k: int):
        pre = torch.addmm(b, x, W)  # the operation of the dense path (SAE.pre_activations), so the same numbers
        values, indices = torch.topk(pre, k, dim=-1)
        ctx.save_for_backward(x, W, indices)
        ctx.mark_non_differentiable(indices)
        ctx.set_materialize_grads(False)
        return pre, values, indices

    @staticmethod
    def backward(ctx, grad_pre: Tensor | None, grad_values: Tensor | None, _):
        x, W, indices = ctx.saved_tensors
        dt = torch.promote_types(W.dtype, torch.float32)  # bf16 / fp16 gradients accumulate in fp32
        entries = _Code.top_k(indices, W.shape[1]).by_latent(x.shape[1])
        g = entries.take(grad_values.to(dt)) if grad_values is not None else torch.zeros(indices.numel(), dtype=dt, device=x.device)
        grad_x, grad_W, grad_b = _encoder_grads(ctx.needs_input_grad[:3], x, W, entries, g, grad_pre)
        return _cast(grad_x, x), _cast(grad_W, W), _cast(grad_b, W), None


def topk_encode(x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Pre-activations x W_enc + b_enc and their k largest entries per row, with a sparse backward.

    x (B, d_in), W_enc (d_in, d_sae), b_enc (d_sae,) -> pre (B, d_sae), values (B, k), indices (B, k);
    ``values`` equals ``torch.topk(pre, k).values`` and has the same gradient. When only ``values``
    reaches the loss, the backward pass touches the B k kept entries (a sparse-dense product for
    W_enc, an embedding bag for x) instead of two dense (B, d_sae) products; when ``pre`` is used
    too (the AuxK loss), it falls back to the dense backward. Gradients are computed in fp32 (fp64 for fp64 inputs).
    """
    if not 1 <= k <= W_enc.shape[-1]:
        raise ValueError(f"k must be in [1, {W_enc.shape[-1]}] (the code size), got {k}")
    return _TopKEncode.apply(x, W_enc, b_enc, k)


class _SparseDecode(torch.autograd.Function):
    """sum_s values[b, s] W[indices[b, s]] by an embedding bag; the W gradient as a sparse-dense product."""

    @staticmethod
    def forward(ctx, values: Tensor, indices: Tensor, W: Tensor) -> Tensor:
        ctx.save_for_backward(values, indices, W)
        return torch.nn.functional.embedding_bag(indices, W, per_sample_weights=values.to(W.dtype), mode="sum")

    @staticmethod
    def backward(ctx, grad: Tensor):
        values, indices, W = ctx.saved_tensors
        grad_values = grad_W = None
        entries = _Code.top_k(indices, W.shape[0], values).by_latent(W.shape[1])
        if ctx.needs_input_grad[0]:  # grad_values[b, s] = grad[b] . W[idx[b, s]]
            grad_values = entries.row_major(_bag_weight_grad(grad, W, entries)).view(indices.shape).to(values.dtype)
        if ctx.needs_input_grad[2]:  # grad_W[j] = sum over (b, s) with idx[b, s] = j of values[b, s] grad[b]
            grad_W = entries.sum(entries.values, grad.to(W.dtype))
        return grad_values, None, grad_W


def sparse_decode(values: Tensor, indices: Tensor, W_dec: Tensor) -> Tensor:
    """f W_dec for a code given by its non-zeros: values, indices (B, k), W_dec (d_sae, d_in) -> (B, d_in).

    Equals ``torch.zeros(B, d_sae).scatter(-1, indices, values) @ W_dec`` (indices distinct within a
    row) with B k d_in multiply-adds instead of B d_sae d_in, forward and backward; the sum runs
    over the k entries of each row. Computed in W_dec's dtype.
    """
    if values.shape != indices.shape or values.dim() != 2:
        raise ValueError(f"values and indices must be (B, k) tensors of the same shape, got {tuple(values.shape)} and {tuple(indices.shape)}")
    return _SparseDecode.apply(values, indices, W_dec)


class _TopKSAECode(torch.autograd.Function):
    """Encoder, top-k code and sparse decoder product of a TopK SAE in one function, with a hand-written backward."""

    @staticmethod
    def forward(ctx, x_n, b_dec, W_enc, b_enc, W_dec, k: int, pre_bias: bool):
        x_in = x_n - b_dec if pre_bias else x_n
        pre = torch.addmm(b_enc, x_in, W_enc)  # as SAE.pre_activations (bf16 under autocast), so the same numbers
        values, indices = _row_topk(pre, k)
        values = torch.relu(values)
        decoded = torch.nn.functional.embedding_bag(indices, W_dec, per_sample_weights=values.to(W_dec.dtype), mode="sum")
        ctx.save_for_backward(x_in, W_enc, W_dec, indices, values)
        ctx.pre_bias = pre_bias
        ctx.mark_non_differentiable(indices)
        ctx.set_materialize_grads(False)
        return pre, values, indices, decoded

    @staticmethod
    def backward(ctx, grad_pre, grad_values, _, grad_decoded):
        x_in, W_enc, W_dec, indices, values = ctx.saved_tensors
        dt = torch.promote_types(W_enc.dtype, torch.float32)  # sums over the batch accumulate in fp32 (fp64 for fp64)
        # one sort serves both weight gradients; every per-entry quantity below is in its order
        entries = _Code.top_k(indices, W_enc.shape[1], values).by_latent(x_in.shape[1])
        g = torch.zeros(indices.numel(), dtype=dt, device=indices.device)
        grad_W_dec = None
        if grad_decoded is not None:  # d loss / d values[b, s] = grad_decoded[b] . W_dec[idx[b, s]]
            g += _bag_weight_grad(grad_decoded, W_dec, entries)
            if ctx.needs_input_grad[4]:
                grad_W_dec = entries.sum(entries.values, grad_decoded.to(dt))
        if grad_values is not None:
            g += entries.take(grad_values)
        g = torch.where(entries.values > 0, g, 0)  # the ReLU after the top-k
        grad_x, grad_W_enc, grad_b_enc = _encoder_grads(
            (ctx.needs_input_grad[0], ctx.needs_input_grad[2], ctx.needs_input_grad[3] or ctx.pre_bias),
            x_in, W_enc, entries, g, grad_pre)
        # the pre-encoder bias: d/d b_dec of (x - b_dec) W_enc summed over the batch is -(sum_b g_b) W_enc^T
        grad_b_dec = -(grad_b_enc @ W_enc.to(dt).T) if ctx.pre_bias and ctx.needs_input_grad[1] else None
        grad_b_enc = grad_b_enc if ctx.needs_input_grad[3] else None
        return (_cast(grad_x, x_in), _cast(grad_b_dec, W_enc), _cast(grad_W_enc, W_enc), _cast(grad_b_enc, W_enc),
                _cast(grad_W_dec, W_dec), None, None)


def topk_sae_code(x_n: Tensor, b_dec: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, k: int,
                  pre_encoder_bias: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The TopK SAE's forward pass in one function: (pre, values, indices, f W_dec).

    pre = (x_n - b_dec) W_enc + b_enc (without ``- b_dec`` if not ``pre_encoder_bias``) (B, d_sae);
    values, indices (B, k) = ReLU of ``torch.topk(pre, k)``'s values, and its indices; f W_dec (B, d_in)
    for the code f with those non-zeros. Values and gradients equal ``topk_encode`` followed by ReLU and
    ``sparse_decode``, and the backward touches only the B k kept entries unless ``pre`` itself reaches
    the loss: the two weight gradients share one sort of the indices, the per-entry gradient comes
    from the embedding bag's own kernel, and b_dec's gradient from the batch sum, -(sum_b g_b) W_enc^T,
    rather than from a (B, d_in) product. Gradients are computed in fp32 (fp64 for fp64 inputs).
    """
    if not 1 <= k <= W_enc.shape[-1]:
        raise ValueError(f"k must be in [1, {W_enc.shape[-1]}] (the code size), got {k}")
    return _TopKSAECode.apply(x_n, b_dec, W_enc, b_enc, W_dec, k, pre_encoder_bias)


SPARSE_STEP_MIN_PRODUCT = 1 << 24
"""The sparse ReLU / JumpReLU step runs only where B d_in d_sae is at least this: below it (e.g.
512 x 32 x 256) the dense products take well under a millisecond and listing the non-zeros costs more."""


def _takes_sparse_path(pre: Tensor, W_enc: Tensor, sparse_below: float, threshold: Tensor | None = None) -> bool:
    """Whether the code of ``pre`` (ReLU, or JumpReLU at ``threshold``) is sparse enough for the sparse
    step: on a CPU, outside autocast, for a product of at least ``SPARSE_STEP_MIN_PRODUCT``
    multiply-adds, with at most ``sparse_below`` of it non-zero on a sample of up to 256 rows."""
    if sparse_below <= 0 or pre.device.type != "cpu" or pre.dtype != W_enc.dtype or pre.dim() != 2 or pre.numel() == 0:
        return False
    if pre.numel() * W_enc.shape[0] < SPARSE_STEP_MIN_PRODUCT:
        return False
    sample = pre[:: max(1, pre.shape[0] // 256)]
    fires = _above(sample, 0.0 if threshold is None else threshold)  # 0/1 floats: several times faster than count_nonzero
    return float(fires.sum(dtype=torch.float32)) <= sparse_below * sample.numel()


def _sparse_code_backward(ctx, grad_pre, grad_acts, grad_decoded, grad_penalty):
    """The backward from the E non-zeros of a ReLU or JumpReLU code: per-entry gradients, CSR products
    for W_enc and W_dec, index sums for b_enc, the L1 weights and the thresholds (these over the
    entries in the kernel window); the dense fallback only for ``grad_pre``."""
    x_in, W_enc, W_dec, threshold, aux, pre, _ = ctx.saved_tensors
    entries = ctx.code.by_latent(x_in.shape[1])  # every per-entry quantity below is in its order
    grad_threshold = None
    if threshold is not None:
        aux = None  # the bandwidth is ctx.bandwidth; the penalty (the L0) reaches only the thresholds
        if ctx.needs_input_grad[5]:
            grad_threshold = _window_threshold_grad(pre, threshold, ctx.bandwidth, grad_acts, grad_decoded, grad_penalty, W_dec)
        grad_penalty = None
    d_sae = W_enc.shape[1]
    dt = torch.promote_types(W_enc.dtype, torch.float32)
    g = torch.zeros_like(entries.values, dtype=dt)
    grad_W_dec = grad_aux = None
    if grad_decoded is not None:  # d loss / d f_e = grad_decoded[b] . W_dec[j] for the entry e = (b, j)
        g += _bag_weight_grad(grad_decoded, W_dec, entries)
        if ctx.needs_input_grad[4]:
            grad_W_dec = entries.sum(entries.values, grad_decoded.to(dt))
    if grad_acts is not None:
        g += grad_acts.reshape(-1).take(entries.flat)
    if grad_penalty is not None:  # the L1: sum_j f_bj w_j, and f >= 0
        per_entry = grad_penalty.to(dt)[entries.examples]
        g += per_entry if aux is None else per_entry * aux.to(dt)[entries.latents]
        if aux is not None and ctx.needs_input_grad[6]:
            grad_aux = torch.zeros(d_sae, dtype=dt, device=g.device).index_add_(0, entries.latents, entries.values.to(dt) * per_entry)
    g = torch.where(entries.values > 0, g, 0)  # the ReLU's own mask (a -0.0 entry; JumpReLU codes are > theta > 0)
    grad_x, grad_W_enc, grad_b_enc = _encoder_grads(
        (ctx.needs_input_grad[0], ctx.needs_input_grad[2], ctx.needs_input_grad[3] or ctx.pre_bias), x_in, W_enc, entries, g, grad_pre)
    grad_b_dec = -(grad_b_enc @ W_enc.to(dt).T) if ctx.pre_bias and ctx.needs_input_grad[1] else None
    return (_cast(grad_x, x_in), _cast(grad_b_dec, W_enc), _cast(grad_W_enc, W_enc), _cast(grad_b_enc, W_enc),
            _cast(grad_W_dec, W_dec), _cast(grad_threshold, threshold), _cast(grad_aux, aux), None, None, None)


def _window_threshold_grad(pre, threshold, eps, grad_acts, grad_decoded, grad_penalty, W_dec) -> Tensor:
    """The thresholds' pseudo-gradient over the entries with |pre - theta| < eps / 2 (the rectangle
    kernel's support), found once: -(theta / eps) sum_b g_bj - (1 / eps) sum_b grad_penalty_b over them,
    with g the code's gradient there (jumprelu) and grad_penalty the L0's (heaviside_step)."""
    B, d_sae = pre.shape
    acc = torch.promote_types(threshold.dtype, torch.float32)
    # listed from 0/1 floats: a comparison written into a float tensor and its non-zeros took 17 ms at
    # 4096 x 4096, against 29 ms through a bool mask
    window = _Code.nonzeros(_in_window(pre, threshold, eps, as_float=True))
    per_entry = torch.zeros(window.flat.shape, dtype=acc, device=pre.device)
    if grad_decoded is not None or grad_acts is not None:
        g = torch.zeros_like(per_entry)
        if grad_decoded is not None:
            g += _bag_weight_grad(grad_decoded, W_dec, window)
        if grad_acts is not None:
            g += grad_acts.reshape(-1).take(window.flat)
        per_entry += (threshold.to(acc)[window.latents] / eps) * g
    if grad_penalty is not None:
        per_entry += grad_penalty.to(acc)[window.examples] / eps
    return -torch.zeros(d_sae, dtype=acc, device=pre.device).index_add_(0, window.latents, per_entry)


def _row_counts(on: Tensor, dtype: torch.dtype) -> Tensor:
    """Row sums of a 0/1 float matrix (B, d): exact counts (B,) in ``dtype``.

    A bf16 / fp16 ``sum(dtype=float32)`` converts the whole matrix first; there the counts come from
    one matrix-vector product over blocks of 256 columns (every partial sum is an integer of at most
    256, exact in either type, whatever the order of accumulation), summed in ``dtype``. In fp32 and
    fp64 one matrix-vector product, exact for the same reason (every partial sum an integer below 2^24)."""
    B, d = on.shape
    if on.dtype in (torch.bfloat16, torch.float16) and B and d % 256 == 0:
        return (on.view(-1, 256) @ on.new_ones(256)).view(B, -1).sum(-1, dtype=dtype)
    if on.dtype == dtype and dtype in (torch.float32, torch.float64) and d < 2**24:  # integers below 2^24: exact
        return on @ on.new_ones(d)  # a matrix-vector product reads the matrix faster than sum(-1)
    return on.sum(-1, dtype=dtype)


def _column_sums(t: Tensor) -> Tensor:
    """``t.sum(0)`` of a (B, d) matrix as a vector-matrix product with ones: it reads the matrix about
    twice as fast on a CPU (in bf16 several times, accumulating in fp32 and rounding once like ``sum``);
    the same sums up to the order of the additions."""
    return t.new_ones(t.shape[0]) @ t if t.dtype in (torch.bfloat16, torch.float32, torch.float64) else t.sum(0)


def _columns_fired(on: Tensor) -> Tensor:
    """Columns of a non-negative (B, d) matrix with a non-zero entry, (d,) bool: a vector-matrix product
    with ones (a sum of non-negative terms is 0 only if every term is), faster than a max over dim 0."""
    return (on.new_ones(on.shape[0]) @ on) > 0


def _above(a: Tensor, b: Tensor) -> Tensor:
    """a > b as 0/1 in a's dtype and shape: on a CPU a comparison written into a float tensor is several
    times faster than one that makes a bool mask (and float masks multiply without a conversion)."""
    return torch.gt(a, b, out=torch.empty_like(a))


def _jumprelu_code(pre: Tensor, threshold: Tensor) -> tuple[Tensor, Tensor]:
    """(H(pre - theta) as 0/1 in pre's dtype, the JumpReLU code where(pre > theta, pre, 0)) for
    thresholds theta > 0: the code is |pre| times the mask (pre > theta > 0 where it is 1), so its
    zeros are +0.0 as torch.where writes them, in a third of the time on a CPU."""
    on = _above(pre, threshold)
    return on, pre.abs().mul_(on)


class _DenseSAECode(torch.autograd.Function):
    """Encoder, code, decoder product and sparsity penalty of a dense-code SAE, with a hand-written backward.

    ``threshold`` None: the ReLU code and its weighted L1, ``aux`` the per-latent L1 weights.
    Otherwise the JumpReLU code at ``threshold`` and its L0 through the Heaviside step, with the
    rectangle-kernel pseudo-derivatives of bandwidth ``aux`` for the thresholds.
    """

    @staticmethod
    def forward(ctx, x_n, b_dec, W_enc, b_enc, W_dec, threshold, aux, pre_bias: bool, sparse_below: float = 0.0,
                counts: bool = False):
        x_in = x_n - b_dec if pre_bias else x_n
        pre = torch.addmm(b_enc, x_in, W_enc)  # under autocast: bf16, like the plain path
        ctx.pre_bias = pre_bias
        ctx.set_materialize_grads(False)
        ctx.code = None
        B, d_sae = pre.shape
        count_dtype = torch.promote_types(pre.dtype, torch.float32)
        if _takes_sparse_path(pre, W_enc, sparse_below, threshold):
            acts = torch.relu(pre) if threshold is None else _jumprelu_code(pre, threshold)[1]
            code = ctx.code = _Code.nonzeros(acts)
            decoded = torch.nn.functional.embedding_bag(code.latents, W_dec.to(acts.dtype), code.offsets,
                                                        per_sample_weights=code.values, mode="sum")
            on = code.values > 0  # (a -0.0 entry is no firing)
            l0 = torch.zeros(B, dtype=count_dtype, device=acts.device).index_add_(0, code.examples, on.to(pre.dtype))
            fired = torch.bincount(code.latents[on], minlength=d_sae) > 0
            if threshold is None:
                weighted = code.values if aux is None else code.values * aux.to(acts.dtype)[code.latents]
                penalty = acts.new_zeros(B).index_add_(0, code.examples, weighted)
                ctx.save_for_backward(x_in, W_enc, W_dec, None, aux, None, None)
                ctx.mark_non_differentiable(l0, fired)
                return pre, acts, decoded, penalty, l0, fired
            ctx.save_for_backward(x_in, W_enc, W_dec, threshold, None, pre, None)
            ctx.bandwidth = aux
            ctx.mark_non_differentiable(fired)
            return pre, acts, decoded, l0, None, fired  # the L0 is the penalty (with its gradient for theta)
        l0 = fired = None
        if threshold is None:
            acts = torch.relu(pre)
            # acts >= 0, so sum_i |f_i| w_i is a matrix-vector product (with ones without weights: faster than sum(-1))
            penalty = acts @ (acts.new_ones(d_sae) if aux is None else aux.to(acts.dtype))
            if counts:  # sign(acts): 1 where the code fired, else 0, in one float pass (a bool mask sums slower)
                on = torch.sign(acts)
                l0, fired = _row_counts(on, count_dtype), _columns_fired(on)
                ctx.mark_non_differentiable(l0, fired)
        else:  # compared with theta in the compute dtype, as the plain path does (and without converting pre)
            on, acts = _jumprelu_code(pre, threshold.to(pre.dtype))
            penalty = _row_counts(on, count_dtype)  # the L0: sum_i H(pre_i - theta_i)
            if counts:
                fired = _columns_fired(on)
                ctx.mark_non_differentiable(fired)
        decoded = acts @ W_dec.to(acts.dtype)
        if threshold is None:  # the L1 weights are a tensor; the ReLU's backward needs no pre-activations
            ctx.save_for_backward(x_in, W_enc, W_dec, None, aux, None, acts)
        else:  # the bandwidth is a number; the thresholds' window needs the pre-activations
            ctx.save_for_backward(x_in, W_enc, W_dec, threshold, None, pre, acts)
            ctx.bandwidth = aux
        return pre, acts, decoded, penalty, l0, fired

    @staticmethod
    def backward(ctx, grad_pre, grad_acts, grad_decoded, grad_penalty, _l0=None, _fired=None):
        if ctx.code is not None:
            return _sparse_code_backward(ctx, grad_pre, grad_acts, grad_decoded, grad_penalty)
        x_in, W_enc, W_dec, threshold, aux, pre, acts = ctx.saved_tensors
        if threshold is not None:
            aux = ctx.bandwidth
        cdt, B = acts.dtype, acts.shape[0]  # the forward's compute dtype (bf16 under autocast)
        acc = torch.promote_types(W_enc.dtype, torch.float32)  # sums over the batch accumulate in fp32 (fp64 for fp64)
        G = grad_decoded.to(cdt) if grad_decoded is not None else acts.new_zeros(B, W_dec.shape[1])
        # d loss / d acts = G W_dec^T (+ what reached acts directly)
        Wd = W_dec.to(cdt)
        l1_rows = threshold is None and aux is None and grad_penalty is not None and grad_acts is None
        if l1_rows:  # the unweighted L1 adds grad_penalty[b] to row b: the product's broadcast input, no extra pass
            g = torch.addmm(grad_penalty.to(cdt)[:, None], G, Wd.T)
        else:
            g = G @ Wd.T if grad_acts is None else torch.addmm(grad_acts.to(cdt), G, Wd.T)
        grad_threshold = grad_aux = None
        if threshold is None:
            if grad_penalty is not None and not l1_rows:  # the L1 term
                if aux is None:
                    g += grad_penalty.to(cdt)[:, None]
                else:  # weighted: a rank-one update in place
                    g.addr_(grad_penalty.to(cdt), aux.to(cdt))
                    grad_aux = acts.T @ grad_penalty.to(cdt) if ctx.needs_input_grad[6] else None
        elif ctx.needs_input_grad[5]:  # the thresholds, through the pseudo-derivatives of jumprelu and heaviside_step
            # -(1 / eps) (theta_j sum_b K_bj g_bj + sum_b K_bj grad_penalty_b), K the window as 0/1 in the
            # compute dtype (compared as the plain path does): one (B, d_sae) buffer, multiplied by g in place
            theta = threshold.to(cdt)
            window = _in_window(pre, theta, aux, as_float=True)
            from_penalty = None if grad_penalty is None else grad_penalty.to(cdt) @ window
            grad_threshold = theta.to(acc) * _column_sums(window.mul_(g)).to(acc)
            if from_penalty is not None:
                grad_threshold += from_penalty.to(acc)
            grad_threshold.mul_(-1.0 / aux)
        # no gradient where the code is 0 (for JumpReLU, theta > 0): masked in place
        g = torch.ops.aten.threshold_backward.grad_input(g, acts, 0, grad_input=g)
        if grad_pre is not None:
            g += grad_pre.to(cdt)
        grad_b_enc = _column_sums(g).to(acc)  # in a bf16 step, rounded to bf16 like autograd's (and without an fp32 copy of g)
        grad_W_enc = _weight_grad(x_in.to(cdt), g, W_enc)
        grad_x = g @ W_enc.to(cdt).T if ctx.needs_input_grad[0] else None
        # the pre-encoder bias: d/d b_dec of (x - b_dec) W_enc summed over the batch is -(sum_b g_b) W_enc^T,
        # one vector-matrix product instead of the (B, d_in) gradient of x_in
        grad_b_dec = -(grad_b_enc @ W_enc.to(acc).T) if ctx.pre_bias and ctx.needs_input_grad[1] else None
        grad_W_dec = acts.T @ G if ctx.needs_input_grad[4] else None
        cast = lambda t, like: None if t is None else t.to(like.dtype)  # noqa: E731
        return (cast(grad_x, x_in), cast(grad_b_dec, W_enc), cast(grad_W_enc, W_enc), cast(grad_b_enc, W_enc),
                cast(grad_W_dec, W_dec), cast(grad_threshold, threshold), cast(grad_aux, aux), None, None, None)


_DENSE_CODE_DOC = """Values and gradients equal those lines written with autograd, with fewer passes over the
    (B, d_sae) code: the backward makes the gradient of the code once, masks it in one pass, and gets
    b_dec's gradient from the batch sum rather than from a (B, d_in) product, so a training step costs
    five (B, d_in, d_sae) products where autograd makes six."""


def relu_sae_code(x_n: Tensor, b_dec: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, weights: Tensor | None,
                  pre_encoder_bias: bool = True, sparse_below: float = 0.05, counts: bool = False) -> tuple:
    """The ReLU SAE's forward pass in one function: (pre, acts, acts W_dec, L1 per example).

    pre = (x_n - b_dec) W_enc + b_enc (without ``- b_dec`` if not ``pre_encoder_bias``), acts = ReLU(pre),
    and l1 = sum_i acts_i weights_i per example (B,), with x_n (B, d_in), W_enc (d_in, d_sae),
    W_dec (d_sae, d_in), weights (d_sae,) (the decoder norms) or None (all 1). The L1 term's
    gradient joins the code's as the broadcast input of its product (no weights) or as an in-place
    rank-one update.

    Sparse step: on a CPU outside autocast, for B d_in d_sae of at least ``SPARSE_STEP_MIN_PRODUCT``
    (2^24), when at most ``sparse_below`` of the code is non-zero (estimated on up to 256 rows; 0 turns
    it off), as once training has made the code sparse, only the
    E non-zeros are used after the encoder product: the decoder product is an embedding bag and the
    gradients of W_dec and W_enc are sparse-dense products, E d_in multiply-adds each instead of
    B d_sae d_in. Same values and gradients.

    ``counts``: also return the L0 per example (B,) float and the latents that fired on some example
    (d_sae,) bool: from the non-zeros when the sparse step ran (almost free there), else from one
    float pass over the code, sign(acts), and its two sums (cheaper than a bool mask's).
    """
    out = _DenseSAECode.apply(x_n, b_dec, W_enc, b_enc, W_dec, None, weights, pre_encoder_bias, sparse_below, counts)
    return out if counts else out[:4]


def jumprelu_sae_code(x_n: Tensor, b_dec: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, threshold: Tensor,
                      bandwidth: float, pre_encoder_bias: bool = False, sparse_below: float = 0.05,
                      counts: bool = False) -> tuple:
    """The JumpReLU SAE's forward pass in one function: (pre, acts, acts W_dec, L0 per example).

    pre as in ``relu_sae_code``, acts = ``jumprelu(pre, threshold, bandwidth)`` and l0 =
    ``heaviside_step(pre, threshold, bandwidth).sum(-1)`` (B,), with the same straight-through
    pseudo-derivatives for ``threshold`` (d_sae,), which must be > 0. The rectangle-kernel window
    is computed once for both.

    Sparse step as in ``relu_sae_code`` (``sparse_below``): the non-zeros drive the decoder product
    and the weight gradients, and the thresholds' pseudo-gradient is summed over the entries in the
    kernel window only. ``counts``: also return the latents that fired (d_sae,) bool, counted from the
    non-zeros when the sparse step ran, else from the mask pre > theta.
    """
    if bandwidth <= 0:
        raise ValueError(f"the kernel bandwidth epsilon must be > 0, got {bandwidth}")
    out = _DenseSAECode.apply(x_n, b_dec, W_enc, b_enc, W_dec, threshold, float(bandwidth), pre_encoder_bias, sparse_below,
                              counts)
    return (*out[:4], out[5]) if counts else out[:4]


relu_sae_code.__doc__ += "\n    " + _DENSE_CODE_DOC + "\n"
jumprelu_sae_code.__doc__ += "\n    " + _DENSE_CODE_DOC + "\n"


def batch_topk_activation(pre: Tensor, k: int) -> Tensor:
    """Keep the k * B largest entries of the whole batch, zero the rest: (B, d) -> (B, d).

    BatchTopK (Bussmann, Leask & Nanda 2024): the sparsity budget is k per example on average, so
    one example may use more latents than another. Gradients flow only through the kept entries.
    """
    if pre.dim() != 2:
        raise ValueError(f"batch_topk_activation expects a (batch, d) tensor, got shape {tuple(pre.shape)}")
    if not 1 <= k <= pre.shape[-1]:
        raise ValueError(f"k must be in [1, {pre.shape[-1]}] (the code size), got {k}")
    flat = pre.flatten()
    values, indices = torch.topk(flat, k * pre.shape[0])
    return torch.zeros_like(flat).scatter(0, indices, values).view_as(pre)


def dead_topk_activation(pre: Tensor, dead: Tensor, k: int) -> Tensor:
    """ReLU of the k largest pre-activations among the dead latents of each row: (B, d) -> (B, d).

    The code of the AuxK loss (Gao et al. 2024, appendix A.2): only latents with ``dead`` (d,) True
    take part, and min(k, number of dead latents) are kept per row. No dead latent: all zeros.
    """
    if dead.shape != pre.shape[-1:]:
        raise ValueError(f"dead must be a (d,) mask for pre-activations of shape {tuple(pre.shape)}, got {tuple(dead.shape)}")
    if k < 1:
        return torch.zeros_like(pre)
    # the live latents are -inf, and ReLU(-inf) = 0: where fewer than k are dead, the extra picks add
    # zeros, so the count of dead latents is never read (on CUDA that read would make the host wait)
    masked = pre.masked_fill(~dead, float("-inf"))
    values, indices = torch.topk(masked, min(k, pre.shape[-1]), dim=-1)
    return torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))


def rectangle(u: Tensor) -> Tensor:
    """The rectangle kernel K(u) = 1 for -1/2 < u < 1/2, else 0 (same shape and dtype as u)."""
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    """z H(z - theta) with the pseudo-derivative d/dtheta = -(theta / eps) K((z - theta) / eps)."""

    @staticmethod
    def forward(ctx, z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return torch.where(z > threshold, z, 0)

    @staticmethod
    def backward(ctx, grad: Tensor):
        z, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_z = torch.where(z > threshold, grad, 0)  # the true derivative away from the jump
        # theta is constant over the dimensions it broadcasts along, so its factor comes out of the sum
        grad_theta = -(threshold / eps) * _sum_to(torch.where(_in_window(z, threshold, eps), grad, 0), threshold.shape)
        return grad_z, grad_theta, None


class _HeavisideStep(torch.autograd.Function):
    """H(z - theta) with d/dz = 0 and the pseudo-derivative d/dtheta = -(1 / eps) K((z - theta) / eps)."""

    @staticmethod
    def forward(ctx, z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return (z > threshold).to(z.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        z, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_theta = -(1.0 / eps) * _sum_to(torch.where(_in_window(z, threshold, eps), grad, 0), threshold.shape)
        return z.new_zeros(()).expand_as(z), grad_theta, None  # d/dz = 0, as a broadcast zero (no (B, d) fill)


def _in_window(z: Tensor, threshold: Tensor, eps: float, as_float: bool = False) -> Tensor:
    """K((z - theta) / eps) != 0: |(z - theta) / eps| < 1/2, the support of ``rectangle``, in fewer passes;
    a bool mask, or with ``as_float`` 0/1 in the dtype of z - theta (written over its buffer)."""
    u = (z - threshold).div_(eps).abs_()
    return torch.lt(u, 0.5, out=u) if as_float else u < 0.5


def _sum_to(grad: Tensor, shape: torch.Size) -> Tensor:
    """Sum a broadcast gradient back to the shape of the tensor it belongs to."""
    while grad.dim() > len(shape):
        grad = grad.sum(0)
    for i, n in enumerate(shape):
        if n == 1 and grad.shape[i] != 1:
            grad = grad.sum(i, keepdim=True)
    return grad


def _check_threshold(z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    if bandwidth <= 0:
        raise ValueError(f"the kernel bandwidth epsilon must be > 0, got {bandwidth}")
    threshold = as_tensor_like(threshold, z)
    try:
        torch.broadcast_shapes(z.shape, threshold.shape)
    except RuntimeError:
        raise ValueError(f"threshold of shape {tuple(threshold.shape)} does not broadcast against {tuple(z.shape)}; "
                         "give one threshold per latent, shape (d,)") from None
    return threshold


def jumprelu(z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """JumpReLU_theta(z) = z H(z - theta): (B, d) with threshold (d,) -> (B, d).

    Rajamanoharan et al. 2024, "Jumping Ahead: Improving Reconstruction Fidelity with JumpReLU
    Sparse Autoencoders", eqs. 4 and 11: the derivative with respect to z is H(z - theta); with
    respect to theta, where the true derivative is 0 almost everywhere, the straight-through
    pseudo-derivative -(theta / epsilon) K((z - theta) / epsilon) with the rectangle kernel K of
    bandwidth epsilon. Elementwise, no reduction.
    """
    return _JumpReLU.apply(z, _check_threshold(z, threshold, bandwidth), float(bandwidth))


def heaviside_step(z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """H(z - theta), 1 where z > theta else 0: (B, d) with threshold (d,) -> (B, d).

    Rajamanoharan et al. 2024 ("Jumping Ahead"), eq. 12: the derivative with respect to z is 0 (as
    the true one) and with respect to theta the pseudo-derivative -(1 / epsilon) K((z - theta) /
    epsilon). Summed over latents it is the L0 norm whose gradient trains the thresholds.
    Elementwise, no reduction.
    """
    return _HeavisideStep.apply(z, _check_threshold(z, threshold, bandwidth), float(bandwidth))


class _ScaledSquaredError(torch.autograd.Function):
    """s^2 ||x - r||^2 per row from one saved difference: one pass and one read forward, one pass backward."""

    @staticmethod
    def forward(ctx, x: Tensor, recon: Tensor, scale: Tensor) -> Tensor:
        diff = x - recon
        ctx.save_for_backward(diff, scale)
        return torch.linalg.vector_norm(diff, dim=-1).square_().mul_(scale.square())

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        diff, scale = ctx.saved_tensors
        per_row = (2 * scale.square()) * grad  # (B,)
        grad_x = diff * per_row[:, None].to(diff.dtype) if ctx.needs_input_grad[0] else None
        grad_recon = None
        if ctx.needs_input_grad[1]:
            grad_recon = -grad_x if grad_x is not None else diff * (-per_row)[:, None].to(diff.dtype)
        return grad_x, grad_recon, None


def scaled_squared_error(x: Tensor, recon: Tensor, scale: Tensor | float = 1.0) -> Tensor:
    """||s x - s x_hat||^2 = s^2 ||x - x_hat||^2 per example, summed over d: (B, d) twice -> (B,).

    The SAE reconstruction error on the normalised scale (s the activation normalisation) without
    forming s x and s x_hat: the difference is made once and kept for the backward pass, about a
    third of the passes over (B, d) of ``squared_error(s * x, s * recon)``, which it equals. s is a
    constant (no gradient), and the gradient is not differentiable again. No mean over the batch.
    """
    if x.shape != recon.shape or x.dim() != 2:
        raise ValueError(f"x and its reconstruction must be (B, d) tensors of the same shape, got {tuple(x.shape)} and {tuple(recon.shape)}")
    scale = as_tensor_like(scale, x, torch.promote_types(x.dtype, recon.dtype))
    return _ScaledSquaredError.apply(x, recon, scale)


def l1_penalty(acts: Tensor, decoder_norms: Tensor | None = None) -> Tensor:
    """sum_i |f_i| ||W_dec,i|| per example: (B, d_sae) and optional norms (d_sae,) -> (B,).

    Without ``decoder_norms`` the plain L1 norm of the code. Weighting by the decoder row norms
    (Anthropic, "Towards Monosemanticity" follow-up, April 2024) makes the penalty invariant to
    moving scale between a latent and its decoder row.
    """
    if decoder_norms is None:
        return acts.abs().sum(-1)
    if decoder_norms.shape != acts.shape[-1:]:
        raise ValueError(f"decoder_norms must have shape ({acts.shape[-1]},), got {tuple(decoder_norms.shape)}")
    return (acts.abs() * decoder_norms).sum(-1)


def prefix_reconstructions(acts: Tensor, W_dec: Tensor, b_dec: Tensor, prefix_sizes: Sequence[int]) -> Tensor:
    """Reconstructions from the first m latents for each m in ``prefix_sizes``: (G, B, d_in).

    x_hat_m = f[:, :m] W_dec[:m] + b_dec (Matryoshka SAEs: Bussmann et al. 2025; Nabeshima 2024).
    acts (B, d_sae), W_dec (d_sae, d_in), b_dec (d_in,); prefix sizes strictly increasing in
    [1, d_sae]. Built as a cumulative sum of the groups' contributions, one matmul per group.
    """
    sizes = list(prefix_sizes)
    if not sizes or any(b <= a for a, b in zip([0, *sizes], sizes)) or sizes[-1] > acts.shape[-1]:
        raise ValueError(f"prefix_sizes must increase strictly within [1, {acts.shape[-1]}], got {tuple(sizes)}")
    starts = [0, *sizes[:-1]]
    parts = torch.stack([acts[:, a:b] @ W_dec[a:b] for a, b in zip(starts, sizes)])  # (G, B, d_in)
    return parts.cumsum(0) + b_dec


def geometric_median(x: Tensor, iters: int = 100, tol: float = 1e-7, eps: float = 1e-8) -> Tensor:
    """The point minimising the sum of Euclidean distances to the rows of x: (N, d) -> (d,).

    Weiszfeld's algorithm (1937): y <- sum_n x_n / |x_n - y| / sum_n 1 / |x_n - y|, started at the
    mean, distances clamped below by ``eps`` so that an iterate landing on a data point does not
    divide by zero. Stops after ``iters`` steps or when y moves less than ``tol`` (relative).
    Used to initialise the SAE decoder bias (Bricken et al. 2023).
    """
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"geometric_median expects a non-empty (N, d) tensor, got shape {tuple(x.shape)}")
    y = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - y).norm(dim=1).clamp_min(eps)  # (N,)
        new = (w[:, None] * x).sum(0) / w.sum()
        moved = (new - y).norm() <= tol * new.norm().clamp_min(1.0)
        y = new
        if moved:
            break
    return y


class _RemoveParallelGrad(torch.autograd.Function):
    """Identity forward; backward removes from each row's gradient its component along that row."""

    @staticmethod
    def forward(ctx, W: Tensor) -> Tensor:
        ctx.save_for_backward(W)
        return W.view_as(W)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (W,) = ctx.saved_tensors
        # (g . u) u with u = W / ||W|| is ((g . W) / ||W||^2) W: two row-wise dot products and one
        # multiply-add, without the unit rows (a zero row keeps its gradient, as 0 / eps)
        norms = W.norm(dim=-1)
        coef = torch.linalg.vecdot(grad, W) / (norms * norms).clamp_min(1e-24)
        return torch.addcmul(grad, coef.unsqueeze(-1), W, value=-1)


def remove_parallel_grad(W: Tensor) -> Tensor:
    """W itself, but the gradient reaching W loses, row by row, its component parallel to the row.

    For decoders whose rows W_i (d_sae, d_in) are kept at unit norm: the gradient g_i becomes
    g_i - (g_i . w_i) w_i with w_i = W_i / ||W_i||, the tangent direction of the sphere (Bricken
    et al. 2023), so a step moves the row along the sphere to first order and renormalising after
    the step only corrects second-order drift.
    """
    return _RemoveParallelGrad.apply(W)
