"""Distributions for latent-variable models: reparameterisation, KL divergences, log-likelihoods.

Conventions used everywhere in aelab:

* Gaussian parameters are ``mu`` and ``logvar`` (log of the variance, not of the std).
* Every function returns one value per example, shape ``(B,)``: it **sums** over every non-batch
  dimension (latent units, pixels, channels, time steps). Averaging over the batch is the caller's
  job, so that ``-elbo(...).mean()`` is "sum over pixels, mean over batch" (Kingma & Welling 2013).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from aelab.functional._device import as_tensor_like

LOG_2PI = math.log(2.0 * math.pi)


def _sum_except_batch(t: Tensor) -> Tensor:
    """Sum over every dimension but the first: (B, ...) -> (B,)."""
    return t.reshape(t.shape[0], -1).sum(dim=1)


def reparameterize(mu: Tensor, logvar: Tensor, eps: Tensor | None = None) -> Tensor:
    """Sample z ~ N(mu, exp(logvar)) as z = mu + exp(logvar / 2) * eps, eps ~ N(0, I).

    The sample is a differentiable function of (mu, logvar): the reparameterisation trick
    (Kingma & Welling 2013, eq. 10). Pass ``eps`` to make it deterministic.

    Shapes: mu, logvar, eps (..., d) -> z (..., d).
    """
    if eps is None:
        eps = torch.randn_like(mu)
    return mu + torch.exp(0.5 * logvar) * eps


def kl_normal(
    mu: Tensor,
    logvar: Tensor,
    mu_p: Tensor | None = None,
    logvar_p: Tensor | None = None,
) -> Tensor:
    """KL(N(mu, diag exp(logvar)) || N(mu_p, diag exp(logvar_p))), summed over latent dimensions.

    With the prior omitted it is the standard normal N(0, I) and the closed form is
    ``0.5 * sum(exp(logvar) + mu**2 - 1 - logvar)`` (Kingma & Welling 2013, appendix B). In general
    ``0.5 * sum(logvar_p - logvar + (exp(logvar) + (mu - mu_p)**2) / exp(logvar_p) - 1)``.

    Shapes: mu, logvar (B, d) (or (B, ...)), prior parameters broadcastable to them -> (B,).
    Reduction: sum over every non-batch dimension; no mean over the batch.
    """
    if mu_p is None and logvar_p is None:
        kl = 0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar)
    else:
        mu_p = torch.zeros_like(mu) if mu_p is None else mu_p
        logvar_p = torch.zeros_like(logvar) if logvar_p is None else logvar_p
        kl = 0.5 * (logvar_p - logvar + (logvar.exp() + (mu - mu_p).pow(2)) / logvar_p.exp() - 1.0)
    return _sum_except_batch(kl)


def log_normal(z: Tensor, mu: Tensor | float = 0.0, logvar: Tensor | float = 0.0) -> Tensor:
    """log N(z; mu, diag exp(logvar)), summed over every non-batch dimension: (B, ...) -> (B,)."""
    mu, logvar = as_tensor_like(mu, z), as_tensor_like(logvar, z)
    lp = -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar))
    return _sum_except_batch(torch.broadcast_tensors(lp, z)[0])  # a float mu/logvar still sums over z's shape


def bernoulli_log_likelihood(x: Tensor, logits: Tensor) -> Tensor:
    """log p(x | logits) of independent Bernoulli pixels, summed over pixels: (B, ...) -> (B,).

    ``x * logits - softplus(logits)``, i.e. minus binary cross-entropy with logits; stable for large
    |logits|. ``x`` may be in [0, 1] (the "continuous Bernoulli-free" cross-entropy used for greyscale
    MNIST) but is a true log-probability only for binary x.
    """
    if x.shape != logits.shape:
        raise ValueError(f"x and logits must have the same shape, got {tuple(x.shape)} and {tuple(logits.shape)}")
    return -_sum_except_batch(F.binary_cross_entropy_with_logits(logits, x, reduction="none"))


def gaussian_log_likelihood(x: Tensor, mean: Tensor, logvar: Tensor | float = 0.0) -> Tensor:
    """log N(x; mean, exp(logvar)) per pixel, summed over pixels: (B, ...) -> (B,).

    ``logvar`` is a tensor broadcastable to x (learned variance) or a float (fixed variance).
    Includes the constant ``-0.5 * log(2 pi)`` per pixel, so it is a true log-density.
    """
    if x.shape != mean.shape:
        raise ValueError(f"x and mean must have the same shape, got {tuple(x.shape)} and {tuple(mean.shape)}")
    return log_normal(x, mean, logvar)


def laplace_log_likelihood(x: Tensor, loc: Tensor, log_scale: Tensor | float = 0.0) -> Tensor:
    """log Laplace(x; loc, b) per pixel with scale b = exp(log_scale), summed over pixels: (B, ...) -> (B,).

    The density is ``exp(-|x - loc| / b) / (2 b)``, so the log-likelihood is
    ``-|x - loc| / b - log 2 - log b``: an L1 reconstruction error plus a normaliser (the variance
    is ``2 b**2``). ``log_scale`` is a tensor broadcastable to x (learned scale) or a float (fixed).
    """
    if x.shape != loc.shape:
        raise ValueError(f"x and loc must have the same shape, got {tuple(x.shape)} and {tuple(loc.shape)}")
    log_scale = as_tensor_like(log_scale, x)
    if log_scale.dim() > x.dim():
        raise ValueError(f"log_scale of shape {tuple(log_scale.shape)} does not broadcast to x of shape {tuple(x.shape)}")
    lp = -(x - loc).abs() * torch.exp(-log_scale) - math.log(2.0) - log_scale  # (B, ...): x's shape
    return _sum_except_batch(lp)


def squared_error(x: Tensor, recon: Tensor) -> Tensor:
    """||x - x_hat||^2 per example, summed over every non-batch dimension: (B, ...) twice -> (B,).

    The reconstruction cost of deterministic autoencoders (WAE, SWAE, VQ-VAE, SAEs); a Gaussian
    log-likelihood up to its scale and constant. No mean over the batch.
    """
    if x.shape != recon.shape:
        raise ValueError(f"x and its reconstruction must have the same shape, got {tuple(x.shape)} and {tuple(recon.shape)}")
    return (x - recon).pow(2).flatten(1).sum(1)


def elbo(log_likelihood: Tensor, kl: Tensor, beta: float = 1.0) -> Tensor:
    """The evidence lower bound per example: E_q[log p(x|z)] - beta * KL(q(z|x) || p(z)).

    Takes the one-sample reconstruction term and the KL, both (B,), and returns (B,) (no batch
    mean). ``beta`` = 1 is the ELBO of Kingma & Welling 2013; beta != 1 is the beta-VAE objective.
    """
    if log_likelihood.shape != kl.shape:
        raise ValueError(
            f"log_likelihood and kl must both be per-example (B,), got {tuple(log_likelihood.shape)} "
            f"and {tuple(kl.shape)}: sum over pixels / latent dims first"
        )
    return log_likelihood - beta * kl
