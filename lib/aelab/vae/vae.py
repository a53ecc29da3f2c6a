"""The variational autoencoder (Kingma & Welling 2013, "Auto-Encoding Variational Bayes").

q(z|x) = N(mu(x), diag exp(logvar(x))),  p(z) = N(0, I),  p(x|z) Bernoulli, Gaussian or Laplace.
Trained by maximising the ELBO  E_q[log p(x|z)] - beta * KL(q(z|x) || p(z))  with one
reparameterised sample per example; beta = 1 is the VAE, other values the beta-VAE objective.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from aelab.functional import (
    bernoulli_log_likelihood,
    elbo,
    gaussian_log_likelihood,
    kl_normal,
    laplace_log_likelihood,
    reparameterize,
)
from aelab.nn.backbone import make_decoder, make_encoder
from aelab.nn.base import Loss, Model
from aelab.registry import register

LIKELIHOODS = ("bernoulli", "gaussian", "laplace")


@dataclass
class VAEConfig:
    input_shape: tuple[int, ...] = (1, 28, 28)
    """Shape of one example (C, H, W) or (D,)."""
    latent_dim: int = 16
    """Number of latent dimensions d of z."""
    backbone: str = "mlp"
    """"mlp" or "conv" (conv needs (C, 28, 28) or (C, 64, 64) inputs)."""
    hidden: tuple[int, ...] = (512, 256)
    """MLP hidden sizes (the decoder mirrors them); for conv the last one is the dense layer width."""
    channels: int = 32
    """Conv channels per layer (conv backbone only)."""
    likelihood: str = "bernoulli"
    """Decoder distribution p(x|z): "bernoulli" (logits; x in [0, 1]), "gaussian" (mean; see sigma) or
    "laplace" (location; see sigma): an L1 reconstruction error with a normaliser."""
    sigma: float = 0.1
    """Gaussian decoder std, or Laplace decoder scale b: fixed, or the initial value when learn_sigma is True."""
    learn_sigma: bool = False
    """Learn the decoder spread per pixel instead of the fixed sigma: a log-variance (Gaussian,
    parameter ``decoder_logvar``) or a log-scale (Laplace, parameter ``decoder_log_scale``)."""
    beta: float = 1.0
    """Weight of the KL term (1: the ELBO; > 1: beta-VAE)."""
    binarize: bool = False
    """Dynamic binarisation: in training, resample x ~ Bernoulli(x) each time it is seen (Bernoulli only)."""

    def __post_init__(self) -> None:
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {self.latent_dim}")
        if self.sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma}")
        if self.binarize and self.likelihood != "bernoulli":
            raise ValueError("binarize=True only makes sense with likelihood='bernoulli'")


@dataclass
class VAEOutput:
    """What ``VAE.forward`` returns."""

    recon: Tensor
    """Decoder output: Bernoulli logits, Gaussian mean or Laplace location, (B, *input_shape)."""
    mu: Tensor
    """Posterior mean, (B, latent_dim)."""
    logvar: Tensor
    """Posterior log-variance, (B, latent_dim)."""
    z: Tensor
    """The reparameterised sample, (B, latent_dim)."""
    x: Tensor
    """The target the likelihood is evaluated on (the binarised input under dynamic binarisation)."""


@register("vae")
class VAE(Model):
    """A VAE with a diagonal Gaussian posterior, standard normal prior and Bernoulli/Gaussian/Laplace decoder."""

    Config = VAEConfig

    def __init__(self, config: VAEConfig):
        super().__init__(config)
        self.encoder, self.decoder = self.networks(config)
        if config.likelihood == "gaussian" and config.learn_sigma:
            self.decoder_logvar = nn.Parameter(torch.full(tuple(config.input_shape), 2 * math.log(config.sigma)))
        if config.likelihood == "laplace" and config.learn_sigma:
            self.decoder_log_scale = nn.Parameter(torch.full(tuple(config.input_shape), math.log(config.sigma)))

    def networks(self, config: VAEConfig) -> tuple[nn.Module, nn.Module]:
        """Encoder (B, *input_shape) -> (B, 2 * latent_dim) and decoder (B, latent_dim) -> (B, *input_shape).

        Variants whose networks see more than x or z (the CVAE's labels) override this.
        """
        return make_encoder(config, 2 * config.latent_dim), make_decoder(config)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, *input_shape) -> mu, logvar, each (B, latent_dim)."""
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return mu, logvar

    def decode(self, z: Tensor) -> Tensor:
        """(B, latent_dim) -> mean of p(x|z) in data space, (B, *input_shape)."""
        return self.mean(self.decoder(z))

    def mean(self, recon: Tensor) -> Tensor:
        """Decoder output -> E[x|z]: sigmoid of the logits (Bernoulli) or the output itself (Gaussian, Laplace)."""
        return torch.sigmoid(recon) if self.config.likelihood == "bernoulli" else recon

    def forward(self, x: Tensor) -> VAEOutput:
        x = self.check_input(x)
        if self.training and self.config.binarize:
            x = torch.bernoulli(x)
        mu, logvar = self.encode(x)
        z = reparameterize(mu, logvar)
        return VAEOutput(recon=self.decoder(z), mu=mu, logvar=logvar, z=z, x=x)

    def log_likelihood(self, x: Tensor, recon: Tensor) -> Tensor:
        """log p(x|z) summed over pixels, (B,)."""
        if self.config.likelihood == "bernoulli":
            return bernoulli_log_likelihood(x, recon)
        if self.config.likelihood == "laplace":
            log_scale = self.decoder_log_scale if self.config.learn_sigma else math.log(self.config.sigma)
            return laplace_log_likelihood(x, recon, log_scale)
        logvar = self.decoder_logvar if self.config.learn_sigma else 2 * math.log(self.config.sigma)
        return gaussian_log_likelihood(x, recon, logvar)

    def loss(self, batch, out: VAEOutput) -> Loss:
        """Negative ELBO: per example sum over pixels and latent dims, then mean over the batch.

        terms: ``recon`` = -E_q log p(x|z) (one sample), ``kl`` = KL(q(z|x) || N(0, I)), both batch
        means, so total = recon + beta * kl.
        """
        log_px = self.log_likelihood(out.x, out.recon)
        kl = kl_normal(out.mu, out.logvar)
        total = -elbo(log_px, kl, beta=self.config.beta).mean()
        return Loss(total, {"recon": -log_px.mean(), "kl": kl.mean()})

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Decode n draws from the prior: (n, *input_shape) in data space."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.config.latent_dim, generator=generator, device=device)
        return self.decode(z)
