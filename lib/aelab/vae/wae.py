"""The Wasserstein autoencoder with an MMD penalty, WAE-MMD (Tolstikhin, Bousquet, Gelly & Schölkopf
2018, "Wasserstein Auto-Encoders").

A WAE minimises a relaxation of the optimal-transport cost between the data and the model:

    min  E_pX E_q(z|x) c(x, G(z))  +  lambda * D_Z(q(z), p(z)),

a reconstruction cost plus a penalty that pulls the *aggregate* posterior q(z) = E_pX q(z|x), not
each q(z|x), to the prior. Individual codes may therefore be sharp (a deterministic encoder is
allowed, and is the default here). With D_Z = MMD the penalty is estimated from a batch: its codes
are samples of q(z), compared to as many prior draws with the unbiased MMD^2 (Tolstikhin et al.
2018, algorithm 2) and an inverse multiquadratics kernel summed over several scales.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from aelab.functional import bernoulli_log_likelihood, kernel_scales, mmd, reparameterize, squared_error
from aelab.nn.backbone import make_decoder, make_encoder
from aelab.nn.base import Loss, Model
from aelab.registry import register

COSTS = ("squared", "bce")


@dataclass
class WAEConfig:
    input_shape: tuple[int, ...] = (1, 28, 28)
    """Shape of one example (C, H, W) or (D,)."""
    latent_dim: int = 8
    """Number of latent dimensions d of z (Tolstikhin et al. use 8 for MNIST)."""
    backbone: str = "mlp"
    """"mlp" or "conv" (conv needs (C, 28, 28) or (C, 64, 64) inputs)."""
    hidden: tuple[int, ...] = (512, 256)
    """MLP hidden sizes (the decoder mirrors them); for conv the last one is the dense layer width."""
    channels: int = 32
    """Conv channels per layer (conv backbone only)."""
    cost: str = "squared"
    """Reconstruction cost c(x, x_hat), summed over pixels: "squared" (|x - x_hat|^2, the paper's) or
    "bce" (cross-entropy with the decoder output as logits, x in [0, 1])."""
    lambda_: float = 10.0
    """Weight lambda of the MMD penalty: the paper's 10 for MNIST. (Tolstikhin et al.'s released code
    multiplies the summed squared error by 0.05, which makes its lambda = 10 weigh the penalty like
    lambda = 200 against the unscaled cost used here.)"""
    kernel: str = "imq"
    """MMD kernel: "imq" (the paper's) or "rbf"."""
    kernel_scales: tuple[float, ...] = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
    """Multiples of the base scale C = 2 * latent_dim (prior variance 1); the kernel is summed over them."""
    stochastic: bool = False
    """Gaussian encoder q(z|x) = N(mu, diag exp(logvar)) sampled by reparameterisation, instead of z = mu(x)."""

    def __post_init__(self) -> None:
        if self.cost not in COSTS:
            raise ValueError(f"cost must be one of {COSTS}, got {self.cost!r}")
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {self.latent_dim}")
        if self.lambda_ < 0:
            raise ValueError(f"lambda_ must be >= 0, got {self.lambda_}")
        kernel_scales(self.kernel, self.latent_dim, self.kernel_scales)  # validates the kernel name


@dataclass
class WAEOutput:
    """What ``WAE.forward`` returns."""

    recon: Tensor
    """Decoder output (logits for the "bce" cost), (B, *input_shape)."""
    z: Tensor
    """The codes, samples of the aggregate posterior q(z), (B, latent_dim)."""
    z_prior: Tensor
    """Draws from p(z) = N(0, I), as many as codes, (B, latent_dim)."""
    mu: Tensor
    """Encoder mean, (B, latent_dim) (equal to z for the deterministic encoder)."""
    logvar: Tensor | None
    """Encoder log-variance (B, latent_dim) with ``stochastic=True``, else None."""


@register("wae_mmd")
class WAE(Model):
    """An autoencoder whose aggregate posterior is matched to N(0, I) by an MMD penalty."""

    Config = WAEConfig

    def __init__(self, config: WAEConfig):
        super().__init__(config)
        self.encoder = make_encoder(config, (2 if config.stochastic else 1) * config.latent_dim)
        self.decoder = make_decoder(config)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """(B, *input_shape) -> mu (B, latent_dim) and logvar (B, latent_dim), or None when deterministic."""
        h = self.encoder(x)
        if self.config.stochastic:
            mu, logvar = h.chunk(2, dim=-1)
            return mu, logvar
        return h, None

    def decode(self, z: Tensor) -> Tensor:
        """(B, latent_dim) -> (B, *input_shape) in data space."""
        return self.mean(self.decoder(z))

    def mean(self, recon: Tensor) -> Tensor:
        """Decoder output -> data space: sigmoid of logits for the "bce" cost, identity for "squared"."""
        return torch.sigmoid(recon) if self.config.cost == "bce" else recon

    def forward(self, x: Tensor) -> WAEOutput:
        x = self.check_input(x)
        mu, logvar = self.encode(x)
        z = mu if logvar is None else reparameterize(mu, logvar)
        return WAEOutput(recon=self.decoder(z), z=z, z_prior=torch.randn_like(z), mu=mu, logvar=logvar)

    def cost(self, x: Tensor, recon: Tensor) -> Tensor:
        """c(x, x_hat) summed over pixels: (B, *input_shape) twice -> (B,)."""
        if self.config.cost == "bce":
            return -bernoulli_log_likelihood(x, recon)
        return squared_error(x, recon)

    def loss(self, batch, out: WAEOutput) -> Loss:
        """Reconstruction cost (sum over pixels, batch mean) + lambda * MMD^2(codes, prior draws) of the batch.

        terms: ``recon`` (batch mean) and ``mmd`` (the unbiased MMD^2, one number for the batch).
        """
        cfg = self.config
        recon = self.cost(self.inputs(batch), out.recon).mean()
        scales = kernel_scales(cfg.kernel, cfg.latent_dim, cfg.kernel_scales)
        divergence = mmd(out.z, out.z_prior, kernel=cfg.kernel, scale=scales, unbiased=True)
        return Loss(recon + cfg.lambda_ * divergence, {"recon": recon, "mmd": divergence})

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Decode n draws from the prior: (n, *input_shape) in data space."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.config.latent_dim, generator=generator, device=device)
        return self.decode(z)
