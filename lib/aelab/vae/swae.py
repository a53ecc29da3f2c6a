"""The sliced-Wasserstein autoencoder, SWAE (Kolouri, Pope, Martin & Rohde 2019, "Sliced Wasserstein
Auto-Encoders"), and its energy-distance variant.

A deterministic autoencoder whose codes are pushed towards the prior by a distance between two
samples, the batch of codes and as many prior draws:

    loss = E c(x, G(E(x)))  +  lambda * SW_p^p({E(x_i)}, {z_i}),   z_i ~ p(z) = N(0, I).

The sliced Wasserstein distance projects both samples on random directions, where optimal
transport in 1-D is a sort, so it needs neither an adversary (WAE-GAN) nor a kernel (WAE-MMD).
``distance="energy"`` replaces it by the energy distance 2E|X-Y| - E|X-X'| - E|Y-Y'|, which the
Cramér–Wold / Radon view shows to be, up to a constant, an average of 1-D distances between the
projected CDFs over all directions: the Radon–Sobolev flavour of the same idea (Turinici 2021,
"Radon–Sobolev Variational Auto-Encoders"), with no projections to sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from aelab.functional import bernoulli_log_likelihood, energy_distance, sliced_wasserstein, squared_error
from aelab.nn.backbone import make_decoder, make_encoder
from aelab.nn.base import Loss, Model
from aelab.registry import register

COSTS = ("squared", "bce")
DISTANCES = ("sliced", "energy")


@dataclass
class SWAEConfig:
    input_shape: tuple[int, ...] = (1, 28, 28)
    """Shape of one example (C, H, W) or (D,)."""
    latent_dim: int = 8
    """Number of latent dimensions d of z."""
    backbone: str = "mlp"
    """"mlp" or "conv" (conv needs (C, 28, 28) or (C, 64, 64) inputs)."""
    hidden: tuple[int, ...] = (512, 256)
    """MLP hidden sizes (the decoder mirrors them); for conv the last one is the dense layer width."""
    channels: int = 32
    """Conv channels per layer (conv backbone only)."""
    cost: str = "bce"
    """Reconstruction cost summed over pixels: "bce" (cross-entropy on logits, x in [0, 1]) or "squared".
    BCE follows Kolouri et al.'s MNIST code (which adds an L1 term); WAE-MMD defaults to the squared
    error of Tolstikhin et al. Costs on different scales give lambda different meanings, so compare
    the models' reconstructions in one unit (e.g. squared error of ``decode``), not by their losses."""
    lambda_: float = 10.0
    """Weight lambda of the distance between the codes and the prior draws. Kolouri et al.'s code uses
    10 with the cross-entropy *averaged* over pixels, which against this summed cost weighs the
    distance about 784 times more; such weights cost reconstruction quality in short runs here, and 10
    already pulls the codes close to N(0, I) at the default latent size (raise it for a closer match)."""
    distance: str = "sliced"
    """"sliced": sliced Wasserstein SW_p^p (Kolouri et al. 2019); "energy": the energy distance."""
    n_projections: int = 50
    """Random directions per step for the sliced Wasserstein distance."""
    p: int = 2
    """Order p of SW_p^p."""

    def __post_init__(self) -> None:
        if self.cost not in COSTS:
            raise ValueError(f"cost must be one of {COSTS}, got {self.cost!r}")
        if self.distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {self.distance!r}")
        if self.latent_dim < 1 or self.n_projections < 1 or self.p < 1:
            raise ValueError(f"latent_dim, n_projections and p must be >= 1, got {self.latent_dim}, {self.n_projections}, {self.p}")
        if self.lambda_ < 0:
            raise ValueError(f"lambda_ must be >= 0, got {self.lambda_}")


@dataclass
class SWAEOutput:
    """What ``SWAE.forward`` returns."""

    recon: Tensor
    """Decoder output (logits for the "bce" cost), (B, *input_shape)."""
    z: Tensor
    """The codes, (B, latent_dim)."""
    z_prior: Tensor
    """Draws from p(z) = N(0, I), as many as codes, (B, latent_dim)."""


@register("swae")
class SWAE(Model):
    """A deterministic autoencoder regularised by the sliced Wasserstein (or energy) distance to N(0, I)."""

    Config = SWAEConfig

    def __init__(self, config: SWAEConfig):
        super().__init__(config)
        self.encoder = make_encoder(config, config.latent_dim)
        self.decoder = make_decoder(config)

    def encode(self, x: Tensor) -> Tensor:
        """(B, *input_shape) -> (B, latent_dim)."""
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        """(B, latent_dim) -> (B, *input_shape) in data space."""
        return self.mean(self.decoder(z))

    def mean(self, recon: Tensor) -> Tensor:
        """Decoder output -> data space: sigmoid of logits for the "bce" cost, identity for "squared"."""
        return torch.sigmoid(recon) if self.config.cost == "bce" else recon

    def forward(self, x: Tensor) -> SWAEOutput:
        z = self.encode(self.check_input(x))
        return SWAEOutput(recon=self.decoder(z), z=z, z_prior=torch.randn_like(z))

    def cost(self, x: Tensor, recon: Tensor) -> Tensor:
        """Reconstruction cost summed over pixels: (B, *input_shape) twice -> (B,)."""
        if self.config.cost == "bce":
            return -bernoulli_log_likelihood(x, recon)
        return squared_error(x, recon)

    def distance(self, z: Tensor, z_prior: Tensor) -> Tensor:
        """The configured distance between the codes and the prior draws, one number for the batch."""
        if self.config.distance == "energy":
            return energy_distance(z, z_prior)
        return sliced_wasserstein(z, z_prior, n_projections=self.config.n_projections, p=self.config.p)

    def loss(self, batch, out: SWAEOutput) -> Loss:
        """Reconstruction cost (sum over pixels, batch mean) + lambda * distance(codes, prior draws).

        terms: ``recon`` (batch mean) and ``sliced_wasserstein`` or ``energy`` (one number for the
        batch; the sliced one averages over the matched pairs and the random directions).
        """
        recon = self.cost(self.inputs(batch), out.recon).mean()
        dist = self.distance(out.z, out.z_prior)
        name = "sliced_wasserstein" if self.config.distance == "sliced" else "energy"
        return Loss(recon + self.config.lambda_ * dist, {"recon": recon, name: dist})

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Decode n draws from the prior: (n, *input_shape) in data space."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.config.latent_dim, generator=generator, device=device)
        return self.decode(z)
