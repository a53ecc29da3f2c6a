"""Importance-sampling estimators of log p(x): importance weights, the IWAE bound, the test NLL.

Layout: with K samples z_1..z_K ~ q(z|x) per example, every per-sample quantity has shape
``(K, B)``, **sample dimension first**, so that ``z`` of shape ``(K, B, d)`` lines up with it and a
reduction over samples is a reduction over dim 0. Results are per example ``(B,)``, in nats.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor

from aelab.functional.distributions import log_normal


def log_importance_weights(log_px_z: Tensor, log_pz: Tensor, log_qz_x: Tensor) -> Tensor:
    """log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x), one per sample and example: (K, B).

    Each argument is ``(K, B)``: K samples (dim 0) of B examples (dim 1), each already summed over
    pixels or latent units. Averaging exp(log w) over k gives an unbiased estimate of p(x).
    """
    shapes = {tuple(log_px_z.shape), tuple(log_pz.shape), tuple(log_qz_x.shape)}
    if len(shapes) != 1 or log_px_z.dim() != 2:
        raise ValueError(
            "log_px_z, log_pz and log_qz_x must all have shape (K, B) (samples first, summed over "
            f"pixels / latent units), got {tuple(log_px_z.shape)}, {tuple(log_pz.shape)}, {tuple(log_qz_x.shape)}"
        )
    return log_px_z + log_pz - log_qz_x


def iwae_bound(log_w: Tensor) -> Tensor:
    """The importance-weighted bound L_K = log (1/K) sum_k w_k (Burda et al. 2015): (K, B) -> (B,).

    Computed as ``logsumexp_k log w_k - log K``, stable for log-weights of any size. K = 1 is the
    ELBO (with the KL estimated by the same sample); E[L_K] grows with K towards log p(x).
    Reduction: log-mean-exp over samples (dim 0); no mean over the batch.
    """
    if log_w.dim() != 2:
        raise ValueError(f"log_w must have shape (K, B) with the samples first, got {tuple(log_w.shape)}")
    return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])


class LatentVariableModel(Protocol):
    """What ``importance_sampled_nll`` needs: a Gaussian encoder, a decoder and a likelihood.

    The prior is the standard normal N(0, I). ``aelab``'s VAE and its subclasses fit this protocol.
    """

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, *input_shape) -> mu, logvar of q(z|x), each (B, d)."""
        ...

    def decoder(self, z: Tensor) -> Tensor:
        """(N, d) -> decoder output (N, *input_shape), the ``recon`` that ``log_likelihood`` takes."""
        ...

    def log_likelihood(self, x: Tensor, recon: Tensor) -> Tensor:
        """log p(x|z) summed over pixels: (N, *input_shape) twice -> (N,)."""
        ...


@torch.no_grad()
def importance_sampled_nll(
    model: LatentVariableModel,
    x: Tensor,
    k: int = 1000,
    batch_size: int = 100,
    chunk: int = 100,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Test negative log-likelihood -log p(x) in nats per example by importance sampling: (N, ...) -> (N,).

    -log p(x) ~= -log (1/k) sum_k p(x|z_k) p(z_k) / q(z_k|x),  z_k ~ q(z|x),  the encoder being the
    proposal (the evaluation of Burda et al. 2015 used k = 5000). This is minus the IWAE bound with
    k samples: in expectation it overestimates the NLL, and it converges to it as k grows.

    Memory stays bounded: examples go ``batch_size`` at a time and samples ``chunk`` at a time, so at
    most ``batch_size * chunk`` decoder evaluations are alive; the chunks are combined with a running
    log-sum-exp. The model is put in eval mode for the call (and restored). No mean over examples.
    """
    if k < 1 or batch_size < 1 or chunk < 1:
        raise ValueError(f"k, batch_size and chunk must be >= 1, got {k}, {batch_size}, {chunk}")
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        nll = []
        for xb in x.split(batch_size):
            mu, logvar = model.encode(xb)  # (B, d) each
            total: Tensor | None = None  # running logsumexp over the samples so far, (B,)
            for start in range(0, k, chunk):
                kc = min(chunk, k - start)
                eps = torch.randn((kc, *mu.shape), generator=generator, device=mu.device, dtype=mu.dtype)
                z = (mu + torch.exp(0.5 * logvar) * eps).flatten(0, 1)  # (kc * B, d), sample-major
                x_rep = xb.expand(kc, *xb.shape).flatten(0, 1)
                log_px_z = model.log_likelihood(x_rep, model.decoder(z)).view(kc, -1)
                log_pz = log_normal(z).view(kc, -1)
                log_qz = log_normal(z, mu.repeat(kc, 1), logvar.repeat(kc, 1)).view(kc, -1)
                lse = torch.logsumexp(log_importance_weights(log_px_z, log_pz, log_qz), dim=0)
                total = lse if total is None else torch.logaddexp(total, lse)
            assert total is not None
            nll.append(math.log(k) - total)
        return torch.cat(nll)
    finally:
        if hasattr(model, "train"):
            model.train(was_training)
