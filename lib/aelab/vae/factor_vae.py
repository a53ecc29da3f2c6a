"""FactorVAE (Kim & Mnih 2018, "Disentangling by Factorising").

Same networks and likelihoods as the VAE, plus a discriminator D on codes. The objective is the
ELBO minus gamma times the total correlation of the aggregate posterior,

    E[-log p(x|z)] + KL(q(z|x) || p(z)) + gamma * KL(q(z) || prod_k q(z_k)),

where the TC is estimated by the density-ratio trick: D(z) is the probability that a code comes from
q(z) rather than from prod_k q(z_k), and for an optimal D, log D(z) / (1 - D(z)) = log q(z) - log
prod_k q(z_k), so TC ~= E_q(z)[log D(z) / (1 - D(z))]. With two logits (column 0: "from q(z)",
column 1: "permuted") that log-ratio is logit_0 - logit_1.

Samples of prod_k q(z_k) come from ``permute_dims``: each latent dimension shuffled independently
across a batch of codes (algorithm 1). The discriminator is trained by its own Adam optimizer
(Kim & Mnih: lr 1e-4, betas (0.5, 0.9)) to tell codes from permuted codes; ``train_step`` does the
VAE step, then the discriminator step. Kim & Mnih draw the permuted codes from a second batch: here
the batch is split in halves, the first half's codes are the real examples and the second half's
codes, permuted, the others (the VAE step still uses the whole batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aelab.functional import elbo, kl_normal, permute_dims
from aelab.nn.base import Loss
from aelab.nn.mlp import mlp
from aelab.registry import register
from aelab.train.optim import adam
from aelab.vae.beta_vae import DSpritesVAEConfig
from aelab.vae.vae import VAE, VAEOutput


@dataclass
class FactorVAEConfig(DSpritesVAEConfig):
    gamma: float = 35.0
    """Weight of the total correlation (Kim & Mnih report dSprites results for gamma between 10 and 100)."""
    disc_hidden: tuple[int, ...] = (1000, 1000, 1000, 1000, 1000)
    """Hidden widths of the discriminator MLP, LeakyReLU(0.2) between layers (Kim & Mnih: 6 layers of 1000 units)."""
    disc_lr: float = 1e-4
    """Learning rate of the discriminator's Adam optimizer (the VAE's comes from ``fit(lr=...)``)."""
    disc_betas: tuple[float, float] = (0.5, 0.9)
    """Adam betas of the discriminator's optimizer."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {self.gamma}")
        if self.disc_lr <= 0:
            raise ValueError(f"disc_lr must be > 0, got {self.disc_lr}")
        if any(h < 1 for h in self.disc_hidden):
            raise ValueError(f"disc_hidden widths must be >= 1, got {self.disc_hidden}")


@dataclass
class FactorVAEOutput(VAEOutput):
    """What ``FactorVAE.forward`` returns: the VAE's outputs and the discriminator's view of z."""

    d_logits: Tensor
    """Discriminator logits of the codes z, (B, 2): column 0 "from q(z)", column 1 "from prod_k q(z_k)"."""


@register("factor_vae")
class FactorVAE(VAE):
    """A VAE with a total-correlation penalty estimated by a discriminator on (codes, permuted codes)."""

    Config = FactorVAEConfig

    def __init__(self, config: FactorVAEConfig):
        super().__init__(config)
        sizes = [config.latent_dim, *config.disc_hidden, 2]
        self.discriminator = mlp(sizes, activation=partial(nn.LeakyReLU, 0.2))

    def vae_parameters(self) -> list[nn.Parameter]:
        """Every parameter but the discriminator's: what the VAE's optimizer updates."""
        disc = {id(p) for p in self.discriminator.parameters()}
        return [p for p in self.parameters() if id(p) not in disc]

    def configure_optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        """[Adam over the VAE at ``lr``, Adam over the discriminator at ``disc_lr`` with ``disc_betas``]."""
        cfg = self.config
        return [
            adam(self.vae_parameters(), lr=lr),
            adam(self.discriminator.parameters(), lr=cfg.disc_lr, betas=tuple(cfg.disc_betas)),
        ]

    def forward(self, x: Tensor) -> FactorVAEOutput:
        out = super().forward(x)
        return FactorVAEOutput(**vars(out), d_logits=self.discriminator(out.z))

    def loss(self, batch, out: FactorVAEOutput) -> Loss:
        """recon + beta * KL + gamma * TC: recon summed over pixels, KL over latents, all batch means.

        TC is the density-ratio estimate mean_b (logit_0 - logit_1) of the codes z. terms: ``recon``,
        ``kl`` and ``tc`` (batch means). The discriminator's loss is not part of it (see ``train_step``).
        """
        log_px = self.log_likelihood(out.x, out.recon)
        kl = kl_normal(out.mu, out.logvar)
        tc = (out.d_logits[:, 0] - out.d_logits[:, 1]).mean()
        total = -elbo(log_px, kl, beta=self.config.beta).mean() + self.config.gamma * tc
        return Loss(total, {"recon": -log_px.mean(), "kl": kl.mean(), "tc": tc})

    def discriminator_loss(self, z: Tensor, z_other: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Cross-entropy of D on codes z (class 0) and permute_dims(z_other) (class 1): (loss, accuracy).

        z (B, d) and z_other (B', d) should be codes of different examples (detach them: this trains
        D only). Returns the mean cross-entropy over the B + B' codes, i.e. minus Kim & Mnih's
        0.5 [E log D(z) + E log(1 - D(z_perm))] when B = B', and the fraction D classifies correctly.
        """
        fake = permute_dims(z_other, generator=generator)
        logits = self.discriminator(torch.cat([z, fake]))  # (B + B', 2)
        target = torch.cat([torch.zeros(z.shape[0]), torch.ones(fake.shape[0])]).long().to(logits.device)
        loss = F.cross_entropy(logits.float(), target)
        accuracy = (logits.argmax(1) == target).float().mean()
        return loss, accuracy

    def train_step(self, batch, ctx) -> Loss:
        """VAE step on the whole batch (optimizer 0), then one discriminator step (optimizer 1).

        The discriminator sees the first half of the batch's codes as real and the second half's,
        permuted, as the product of marginals. Logs ``disc_loss`` and ``disc_acc`` beside the VAE terms.
        """
        x = self.inputs(batch)
        if x.shape[0] < 2:
            raise ValueError(
                "factor_vae needs at least 2 examples per batch (half of them are permuted for the "
                "discriminator): choose a batch_size that leaves no last batch of one example"
            )
        with ctx.autocast():
            out = ctx.model(*self.forward_args(batch))
            loss = self.loss(batch, out)
        ctx.update(loss.total, optimizer=0)
        z = out.z.detach()
        half = z.shape[0] // 2
        with ctx.autocast():
            disc_loss, disc_acc = self.discriminator_loss(z[:half], z[half:2 * half])
        ctx.update(disc_loss, optimizer=1)
        loss.terms.update(disc_loss=disc_loss.detach(), disc_acc=disc_acc)
        return loss
