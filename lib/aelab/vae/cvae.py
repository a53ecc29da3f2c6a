"""The conditional VAE (Sohn, Lee & Yan 2015, "Learning Structured Output Representation using Deep
Conditional Generative Models"), conditioned on a class label.

q(z|x, y) = N(mu(x, y), diag exp(logvar(x, y))),  p(z) = N(0, I),  p(x|z, y) as in the VAE.
The label enters both networks as a one-hot vector: concatenated to the flattened image (MLP) or
as n_classes constant feature maps stacked on the image channels (conv), and concatenated to z for
the decoder. The objective is the VAE's ELBO with everything conditioned on y, so the code z is
free to describe what the label does not (style, for digits), and ``sample(y)`` draws images of a
chosen class. (Sohn et al. also let the prior depend on the input, p(z|x); with labels as the
condition a fixed N(0, I) prior is the common choice and is what this model uses.)

Batches are ``(x, y)`` tuples (a Split of ``aelab.data`` works as is): ``forward(x, y)`` takes
the images and the labels, and ``forward_args(batch)`` unpacks a batch for ``train_step``, so
``aelab.fit(model, (x, y))`` trains it with the default training step.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aelab.functional import reparameterize
from aelab.nn.backbone import make_decoder, make_encoder
from aelab.registry import register
from aelab.vae.vae import VAE, VAEConfig, VAEOutput


@dataclass
class CVAEConfig(VAEConfig):
    latent_dim: int = 2
    """Number of latent dimensions d of z. Small by default: a large z also carries the class (the
    encoder sees x) and samples follow the label only after long training; with d = 2 they follow it
    within a few epochs on MNIST, and the 2-D code is a picture of style."""
    n_classes: int = 10
    """Number of classes; labels are integers in [0, n_classes) or one-hot rows (B, n_classes)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_classes < 1:
            raise ValueError(f"n_classes must be >= 1, got {self.n_classes}")


@dataclass
class CVAEOutput(VAEOutput):
    """What ``CVAE.forward`` returns: the VAE's outputs and the label the networks saw."""

    y: Tensor
    """The condition as one-hot rows, (B, n_classes)."""


@register("cvae")
class CVAE(VAE):
    """A VAE whose encoder and decoder both see the one-hot class label."""

    Config = CVAEConfig

    def networks(self, config: CVAEConfig) -> tuple[nn.Module, nn.Module]:
        """Encoder of [x, onehot(y)] -> (B, 2 * latent_dim); decoder of [z, onehot(y)] -> (B, *input_shape)."""
        shape = tuple(config.input_shape)
        if config.backbone == "conv":  # labels as constant channels
            enc_shape = (shape[0] + config.n_classes, *shape[1:])
        else:  # labels appended to the flattened image
            enc_shape = (int(torch.Size(shape).numel()) + config.n_classes,)
        enc = SimpleNamespace(backbone=config.backbone, input_shape=enc_shape, hidden=config.hidden, channels=config.channels)
        dec = SimpleNamespace(backbone=config.backbone, input_shape=shape, hidden=config.hidden, channels=config.channels,
                              latent_dim=config.latent_dim + config.n_classes)
        return make_encoder(enc, 2 * config.latent_dim), make_decoder(dec)

    def forward_args(self, batch) -> tuple[Tensor, Tensor]:
        """A batch is ``(x, y, ...)``: the model is called as ``forward(x, y)``."""
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise TypeError(
                f"{self.name} trains on (x, y) batches with class labels y; got {type(batch).__name__}. "
                "Pass fit(model, (x, y)) or a labelled split such as aelab.data.mnist('train')"
            )
        return batch[0], batch[1]

    def one_hot(self, y: Tensor, batch: int) -> Tensor:
        """Integer labels (B,) or one-hot rows (B, n_classes) -> float one-hot rows (B, n_classes)."""
        n = self.config.n_classes
        if not isinstance(y, Tensor):
            raise TypeError(f"{self.name} expects labels as a tensor, got {type(y).__name__}")
        if y.dim() == 1 and not y.is_floating_point():
            if y.numel() and (y.min() < 0 or y.max() >= n):
                raise ValueError(f"labels must be in [0, {n}), got values in [{int(y.min())}, {int(y.max())}]")
            y = F.one_hot(y, n)
        elif y.dim() != 2 or y.shape[1] != n:
            raise ValueError(f"{self.name} expects labels (B,) of integers or one-hot (B, {n}), got {tuple(y.shape)}")
        if y.shape[0] != batch:
            raise ValueError(f"got {y.shape[0]} labels for a batch of {batch}")
        return y.float()

    def encode(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """(B, *input_shape), one-hot (B, n_classes) -> mu, logvar of q(z|x, y), each (B, latent_dim)."""
        if self.config.backbone == "conv":
            maps = y[:, :, None, None].expand(-1, -1, *x.shape[2:])
            h = torch.cat([x, maps.to(x.dtype)], dim=1)
        else:
            h = torch.cat([x.flatten(1), y.to(x.dtype)], dim=1)
        return self.encoder(h).chunk(2, dim=-1)

    def decode(self, z: Tensor, y: Tensor) -> Tensor:
        """(B, latent_dim), one-hot (B, n_classes) -> mean of p(x|z, y) in data space."""
        return self.mean(self.decoder(torch.cat([z, y.to(z.dtype)], dim=1)))

    def forward(self, x: Tensor, y: Tensor) -> CVAEOutput:
        x = self.check_input(x)
        y = self.one_hot(y, x.shape[0])
        if self.training and self.config.binarize:
            x = torch.bernoulli(x)
        mu, logvar = self.encode(x, y)
        z = reparameterize(mu, logvar)
        recon = self.decoder(torch.cat([z, y.to(z.dtype)], dim=1))
        return CVAEOutput(recon=recon, mu=mu, logvar=logvar, z=z, x=x, y=y)

    # loss: the VAE's negative ELBO, read from the output (recon, mu, logvar, x).

    @torch.no_grad()
    def sample(self, y: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Draw one image per label: z ~ N(0, I), x = E[x|z, y]. Labels (n,) or one-hot (n, n_classes) -> (n, *input_shape)."""
        if not isinstance(y, Tensor):
            raise TypeError(f"{self.name}.sample takes the labels to draw, e.g. torch.arange(10), not {type(y).__name__}")
        device = next(self.parameters()).device
        y = self.one_hot(y.to(device), y.shape[0])
        z = torch.randn(y.shape[0], self.config.latent_dim, generator=generator, device=device)
        return self.decode(z, y)
