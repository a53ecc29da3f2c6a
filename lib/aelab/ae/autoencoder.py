"""The deterministic autoencoder of lecture 01: linear, deep, denoising and sparse (L1 or top-k).

x -> [corrupt] -> encoder -> z -> [top-k] -> decoder -> x_hat, trained to reconstruct the clean x.

* linear=True, no bias effects aside, spans the same subspace as PCA (Baldi & Hornik 1989).
* noise_std / mask_prob > 0: the denoising autoencoder (Vincent et al. 2008).
* l1 > 0: an L1 penalty on the code (sparse autoencoder); k: keep the k largest code units, the
  k-sparse autoencoder (Makhzani & Frey 2013).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from aelab.functional import bernoulli_log_likelihood, squared_error, topk_activation
from aelab.nn.backbone import make_decoder, make_encoder
from aelab.nn.base import Loss, Model
from aelab.registry import register


@dataclass
class AEConfig:
    input_shape: tuple[int, ...] = (1, 28, 28)
    """Shape of one example (C, H, W) or (D,)."""
    latent_dim: int = 32
    """Size of the code z."""
    backbone: str = "mlp"
    """"mlp" or "conv" (conv needs (C, 28, 28) or (C, 64, 64) inputs)."""
    hidden: tuple[int, ...] = (512, 256)
    """MLP hidden sizes (the decoder mirrors them); for conv the last one is the dense layer width."""
    channels: int = 32
    """Conv channels per layer (conv backbone only)."""
    linear: bool = False
    """No nonlinearities at all (MLP only): the linear autoencoder that PCA solves in closed form."""
    likelihood: str = "bernoulli"
    """Reconstruction loss: "bernoulli" (cross-entropy on logits, x in [0, 1]) or "gaussian" (squared error)."""
    noise_std: float = 0.0
    """Std of Gaussian noise added to the input during training (denoising AE)."""
    mask_prob: float = 0.0
    """Probability of zeroing each input pixel during training (masking-noise denoising AE)."""
    l1: float = 0.0
    """Weight of the L1 penalty on the code, summed over units, averaged over the batch."""
    k: int | None = None
    """Keep only the k largest code units of each example (k-sparse AE); None keeps all."""

    def __post_init__(self) -> None:
        if self.likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(f"likelihood must be 'bernoulli' or 'gaussian', got {self.likelihood!r}")
        if self.k is not None and not 1 <= self.k <= self.latent_dim:
            raise ValueError(f"k must be between 1 and latent_dim={self.latent_dim}, got {self.k}")
        if self.linear and self.backbone != "mlp":
            raise ValueError("linear=True needs backbone='mlp'")


@dataclass
class AEOutput:
    """What ``Autoencoder.forward`` returns."""

    recon: Tensor
    """Decoder output before the output nonlinearity (logits for Bernoulli), (B, *input_shape)."""
    z: Tensor
    """The code, after top-k if k is set, (B, latent_dim)."""
    x_in: Tensor
    """The (possibly corrupted) input the encoder saw, (B, *input_shape)."""


@register("ae")
class Autoencoder(Model):
    """A deterministic autoencoder; see the module docstring for its variants."""

    Config = AEConfig

    def __init__(self, config: AEConfig):
        super().__init__(config)
        self.encoder = make_encoder(config, config.latent_dim)
        self.decoder = make_decoder(config)

    def corrupt(self, x: Tensor) -> Tensor:
        """Training-time input noise of the denoising AE; identity in eval mode."""
        if not self.training:
            return x
        if self.config.noise_std > 0:
            x = x + self.config.noise_std * torch.randn_like(x)
        if self.config.mask_prob > 0:
            x = x * (torch.rand_like(x) >= self.config.mask_prob)
        return x

    def encode(self, x: Tensor) -> Tensor:
        """(B, *input_shape) -> (B, latent_dim)."""
        z = self.encoder(x)
        return topk_activation(z, self.config.k) if self.config.k else z

    def decode(self, z: Tensor) -> Tensor:
        """(B, latent_dim) -> (B, *input_shape), in data space (sigmoid applied for Bernoulli)."""
        return self.mean(self.decoder(z))

    def mean(self, recon: Tensor) -> Tensor:
        """Map decoder output to data space."""
        return torch.sigmoid(recon) if self.config.likelihood == "bernoulli" else recon

    def forward(self, x: Tensor) -> AEOutput:
        x_in = self.corrupt(self.check_input(x))
        z = self.encode(x_in)
        return AEOutput(recon=self.decoder(z), z=z, x_in=x_in)

    def loss(self, batch, out: AEOutput) -> Loss:
        """Reconstruction of the clean x (summed over pixels) + l1 * |z|_1 (summed over units); batch mean.

        Bernoulli: binary cross-entropy with logits. Gaussian: squared error (a unit-variance
        Gaussian negative log-likelihood without its constant).
        """
        x = self.inputs(batch)
        if self.config.likelihood == "bernoulli":
            recon = -bernoulli_log_likelihood(x, out.recon)
        else:
            recon = squared_error(x, out.recon)
        terms = {"recon": recon.mean()}
        total = terms["recon"]
        if self.config.l1 > 0:
            terms["l1"] = out.z.abs().sum(1).mean()
            total = total + self.config.l1 * terms["l1"]
        return Loss(total, terms)
