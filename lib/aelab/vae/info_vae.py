"""InfoVAE with the MMD divergence, the MMD-VAE (Zhao, Song & Ermon 2017, "InfoVAE: Information
Maximizing Variational Autoencoders").

Same networks as the VAE. Zhao et al. maximise, over the data distribution p_D,

    L_InfoVAE = E_pD E_q(z|x)[log p(x|z)] - (1 - alpha) E_pD KL(q(z|x) || p(z))
                - (alpha + lambda - 1) D(q(z) || p(z)),

where q(z) = E_pD q(z|x) is the aggregate posterior. alpha trades the mutual information between
x and z (alpha = 1 stops penalising it), lambda weighs the match of q(z) to the prior; alpha = 0,
lambda = 1 is the ELBO. With D = MMD (this model) the divergence is estimated from the batch: the
posterior samples z of the batch are samples of q(z), compared to as many prior draws. The loss is
-L_InfoVAE: per example recon + (1 - alpha) KL, batch mean, plus (alpha + lambda - 1) MMD^2 of
the batch.

Defaults: alpha = 0, as in Zhao et al.'s experiments (the per-example KL keeps weight 1, so the
objective is the ELBO minus (lambda - 1) MMD^2), and lambda = 100, ten times smaller than their
1000. In 5-epoch MNIST runs (20k images, likelihood summed over pixels, Adam 1e-3, 2-D and 16-D
latents) lambda = 1000 collapsed q(z|x) onto the prior, or nearly (mean posterior std 1.0 and 0.84;
squared reconstruction error 58 and 46 per image, against 53 for predicting the mean image), while
lambda = 100 kept an informative code and lowered the MMD of the test codes to N(0, I) by a quarter
(2-D) to a half (16-D) relative to the VAE, for 2 % (2-D) to 14 % (16-D) more reconstruction
error. alpha = 1 drops the KL term, so the encoder is free to become deterministic; in the same
runs its aggregate posterior was no closer to the prior than the VAE's (wide tails, presumably
because the single-scale Gaussian kernel barely pulls codes far from the prior draws). Pass
alpha=1.0 for that MMD-only objective.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from aelab.functional import elbo, kernel_scales, kl_normal, mmd
from aelab.nn.base import Loss
from aelab.registry import register
from aelab.vae.vae import VAE, VAEConfig, VAEOutput


@dataclass
class InfoVAEConfig(VAEConfig):
    alpha: float = 0.0
    """alpha of Zhao et al.: the KL term has weight 1 - alpha (must be <= 1; 0 keeps the ELBO's KL, 1 drops it)."""
    lambda_: float = 100.0
    """lambda of Zhao et al.: the MMD term has weight alpha + lambda - 1 (must be >= 0); see the module docstring."""
    kernel: str = "rbf"
    """MMD kernel: "rbf" (the Gaussian kernel of Zhao et al.) or "imq"."""
    kernel_scales: tuple[float, ...] = (1.0,)
    """Multiples of the base scale 2 * latent_dim (see ``aelab.functional.kernel_scales``); several: a sum of kernels."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta != 1.0:
            raise ValueError("InfoVAE weighs the KL by 1 - alpha: set alpha, leave beta = 1")
        if self.alpha > 1:
            raise ValueError(f"alpha must be <= 1 (the KL weight is 1 - alpha), got {self.alpha}")
        if self.alpha + self.lambda_ - 1 < 0:
            raise ValueError(f"alpha + lambda_ - 1 is the MMD weight and must be >= 0, got {self.alpha + self.lambda_ - 1}")
        kernel_scales(self.kernel, self.latent_dim, self.kernel_scales)  # validates the kernel name


@dataclass
class InfoVAEOutput(VAEOutput):
    """What ``InfoVAE.forward`` returns: the VAE's outputs and prior draws to compare the codes with."""

    z_prior: Tensor
    """Draws from p(z) = N(0, I), as many as codes, (B, latent_dim)."""


@register("info_vae")
class InfoVAE(VAE):
    """A VAE whose aggregate posterior is pulled to the prior by an MMD penalty (MMD-VAE)."""

    Config = InfoVAEConfig

    def forward(self, x: Tensor) -> InfoVAEOutput:
        out = super().forward(x)
        return InfoVAEOutput(**vars(out), z_prior=torch.randn_like(out.z))

    def loss(self, batch, out: InfoVAEOutput) -> Loss:
        """-L_InfoVAE: recon (sum over pixels) + (1 - alpha) KL (sum over latents), batch mean, + (alpha + lambda - 1) MMD^2.

        terms: ``recon``, ``kl`` (batch means) and ``mmd`` (the unbiased MMD^2 between the batch's
        codes and the prior draws, one number for the batch).
        """
        cfg = self.config
        log_px = self.log_likelihood(out.x, out.recon)
        kl = kl_normal(out.mu, out.logvar)
        scales = kernel_scales(cfg.kernel, cfg.latent_dim, cfg.kernel_scales)
        divergence = mmd(out.z, out.z_prior, kernel=cfg.kernel, scale=scales)
        total = -elbo(log_px, kl, beta=1.0 - cfg.alpha).mean() + (cfg.alpha + cfg.lambda_ - 1.0) * divergence
        return Loss(total, {"recon": -log_px.mean(), "kl": kl.mean(), "mmd": divergence})
