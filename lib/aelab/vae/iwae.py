"""The importance-weighted autoencoder (Burda, Grosse & Salakhutdinov 2015, "Importance Weighted Autoencoders").

Same model as the VAE (q(z|x) Gaussian, p(z) = N(0, I), the VAE's decoders); a tighter objective.
With k samples z_1..z_k ~ q(z|x) and weights w_i = p(x|z_i) p(z_i) / q(z_i|x),

    L_k(x) = E[ log (1/k) sum_i w_i ]  <=  log p(x),

and L_1 is the ELBO, L_k grows with k and tends to log p(x) (Burda et al. 2015, theorem 1). The
loss is -L_k, estimated with one set of k reparameterised samples per example; its gradient
weights each sample by its normalised importance weight, so the encoder is no longer pushed to
cover the posterior with a single sample.

With k = 1 the loss equals the VAE's one-sample objective with the KL estimated by that sample,
log q(z|x) - log p(z), instead of in closed form: the same value in expectation (tests check both).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from aelab.functional import elbo, iwae_bound, kl_normal, log_importance_weights, log_normal, reparameterize
from aelab.nn.base import Loss
from aelab.registry import register
from aelab.vae.vae import VAE, VAEConfig


@dataclass
class IWAEConfig(VAEConfig):
    k: int = 5
    """Importance samples per example (Burda et al. 2015 train with k = 5 and k = 50); k = 1 is the VAE."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.beta != 1.0:
            raise ValueError("the IWAE bound has no KL weight: leave beta = 1 (use the 'vae' model for a beta-VAE)")


@dataclass
class IWAEOutput:
    """What ``IWAE.forward`` returns. Per-sample tensors put the k samples first."""

    recon: Tensor
    """Decoder output of the first sample, (B, *input_shape) (the VAE's ``recon``)."""
    recons: Tensor
    """Decoder outputs of all samples, (k, B, *input_shape)."""
    mu: Tensor
    """Posterior mean, (B, latent_dim)."""
    logvar: Tensor
    """Posterior log-variance, (B, latent_dim)."""
    z: Tensor
    """The k reparameterised samples, (k, B, latent_dim)."""
    x: Tensor
    """The target the likelihood is evaluated on (the binarised input under dynamic binarisation)."""


@register("iwae")
class IWAE(VAE):
    """A VAE trained on the k-sample importance-weighted bound."""

    Config = IWAEConfig

    def forward(self, x: Tensor, eps: Tensor | None = None) -> IWAEOutput:
        """Encode once, draw k samples per example, decode them all. ``eps`` (k, B, latent_dim) fixes the noise."""
        x = self.check_input(x)
        if self.training and self.config.binarize:
            x = torch.bernoulli(x)
        mu, logvar = self.encode(x)
        if eps is None:
            eps = torch.randn(self.config.k, *mu.shape, device=mu.device, dtype=mu.dtype)
        z = reparameterize(mu, logvar, eps)  # (k, B, d)
        recons = self.decoder(z.flatten(0, 1)).unflatten(0, z.shape[:2])
        return IWAEOutput(recon=recons[0], recons=recons, mu=mu, logvar=logvar, z=z, x=x)

    def log_weights(self, out: IWAEOutput) -> Tensor:
        """log w = log p(x|z) + log p(z) - log q(z|x) for every sample: (k, B)."""
        k, b, d = out.z.shape
        z = out.z.flatten(0, 1)  # (k * B, d), sample-major like recons
        log_px_z = self.log_likelihood(out.x.expand(k, *out.x.shape).flatten(0, 1), out.recons.flatten(0, 1))
        log_pz = log_normal(z)
        log_qz = log_normal(z, out.mu.repeat(k, 1), out.logvar.repeat(k, 1))
        return log_importance_weights(log_px_z.view(k, b), log_pz.view(k, b), log_qz.view(k, b))

    def loss(self, batch, out: IWAEOutput) -> Loss:
        """-L_k: minus the importance-weighted bound, log-mean-exp over the k samples, mean over the batch.

        terms: ``iwae_bound`` = L_k (batch mean; higher is better), ``elbo`` = the VAE's one-sample
        ELBO of the first sample with the closed-form KL (for comparison: L_k >= ELBO in
        expectation), ``recon`` = -log p(x|z_1) and ``kl`` = KL(q(z|x) || p(z)), batch means.
        """
        bound = iwae_bound(self.log_weights(out))
        log_px = self.log_likelihood(out.x, out.recon)
        kl = kl_normal(out.mu, out.logvar)
        one_sample = elbo(log_px, kl)
        terms = {"iwae_bound": bound.mean(), "elbo": one_sample.mean(), "recon": -log_px.mean(), "kl": kl.mean()}
        return Loss(-bound.mean(), terms)
