"""The beta-VAE (Higgins et al. 2017, "beta-VAE: Learning Basic Visual Concepts with a Constrained
Variational Framework") and its capacity-annealed variant (Burgess et al. 2018, "Understanding
disentangling in beta-VAE").

Same networks and likelihoods as the VAE. Higgins et al. weigh the KL term by beta > 1:

    L = E_q[log p(x|z)] - beta * KL(q(z|x) || p(z)),

pushing the posterior towards the factorised prior at the cost of reconstructions. Burgess et al.
instead let the KL grow to a target capacity C (in nats) that rises during training,

    L = E_q[log p(x|z)] - gamma * | KL(q(z|x) || p(z)) - C |,

with C increased linearly from ``capacity_start`` to ``capacity_max`` over ``capacity_steps``
optimisation steps, so the code gains information gradually, one factor after another, with
better reconstructions at the end. The step counter is a buffer of the model that ``train_step``
advances, so a checkpoint (and ``aelab.save``) keeps the schedule where it was.

``DSpritesVAEConfig`` holds the defaults that the disentanglement models share: the 64x64 conv
network of Higgins et al. / Burgess et al., a Bernoulli decoder and 10 latent dimensions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aelab.functional import kl_normal
from aelab.nn.base import Loss
from aelab.registry import register
from aelab.train.schedules import linear_ramp
from aelab.vae.vae import VAE, VAEConfig, VAEOutput


@dataclass
class DSpritesVAEConfig(VAEConfig):
    """The VAE's config with defaults for binary 64x64 dSprites images."""

    input_shape: tuple[int, ...] = (1, 64, 64)
    """Shape of one example (C, H, W) or (D,); dSprites images are (1, 64, 64)."""
    latent_dim: int = 10
    """Number of latent dimensions d of z (10, as in the papers' dSprites experiments; dSprites has 5 factors)."""
    backbone: str = "conv"
    """"mlp" or "conv" (conv needs (C, 28, 28) or (C, 64, 64) inputs): four stride-2 convs for 64x64."""
    hidden: tuple[int, ...] = (256,)
    """MLP hidden sizes (the decoder mirrors them); for conv the last one is the dense layer width."""


@dataclass
class BetaVAEConfig(DSpritesVAEConfig):
    beta: float = 4.0
    """Weight of the KL term (Higgins et al. use 4 on dSprites); not used when anneal_capacity is True."""
    anneal_capacity: bool = False
    """Train on recon + gamma |KL - C| with a rising capacity C (Burgess et al. 2018) instead of recon + beta KL."""
    gamma: float = 1000.0
    """Weight of |KL - C| (anneal_capacity only; Burgess et al. use 1000 on dSprites)."""
    capacity_start: float = 0.0
    """Capacity C in nats at step 0 (anneal_capacity only)."""
    capacity_max: float = 25.0
    """Capacity C in nats reached after capacity_steps and kept afterwards (anneal_capacity only)."""
    capacity_steps: int = 100_000
    """Optimisation steps over which C rises linearly from capacity_start to capacity_max (0: capacity_max at once)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta < 0 or self.gamma < 0:
            raise ValueError(f"beta and gamma must be >= 0, got beta={self.beta}, gamma={self.gamma}")
        if self.capacity_steps < 0:
            raise ValueError(f"capacity_steps must be >= 0, got {self.capacity_steps}")
        if min(self.capacity_start, self.capacity_max) < 0:
            raise ValueError(
                f"the capacity is a KL in nats and must be >= 0, got capacity_start={self.capacity_start}, "
                f"capacity_max={self.capacity_max}"
            )


@register("beta_vae")
class BetaVAE(VAE):
    """A VAE with a weighted KL (beta-VAE) or a KL pulled to a linearly rising capacity (Burgess et al.)."""

    Config = BetaVAEConfig

    def __init__(self, config: BetaVAEConfig):
        super().__init__(config)
        # optimisation steps taken so far: a buffer, so checkpoints and saved models keep the schedule
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def capacity(self, step: int | None = None) -> float:
        """The capacity C in nats at ``step`` (default: the model's own step counter)."""
        cfg = self.config
        step = int(self.step) if step is None else step
        return linear_ramp(cfg.capacity_steps, cfg.capacity_start, cfg.capacity_max)(step)

    def loss(self, batch, out: VAEOutput) -> Loss:
        """recon + beta * KL, or recon + gamma * |KL - C|; recon summed over pixels, KL over latents.

        Both recon and KL are batch means before they are combined, so the capacity objective is
        gamma * |mean_b KL_b - C| (the batch's average KL is held at C, not each example's).
        terms: ``recon``, ``kl`` and, with anneal_capacity, ``capacity`` (C at the current step).
        """
        cfg = self.config
        recon = -self.log_likelihood(out.x, out.recon).mean()
        kl = kl_normal(out.mu, out.logvar).mean()
        if not cfg.anneal_capacity:
            return Loss(recon + cfg.beta * kl, {"recon": recon, "kl": kl})
        capacity = torch.full((), self.capacity(), dtype=kl.dtype, device=kl.device)  # a fill on the device, not a copy
        total = recon + cfg.gamma * (kl - capacity).abs()
        return Loss(total, {"recon": recon, "kl": kl, "capacity": capacity})

    def train_step(self, batch, ctx) -> Loss:
        """The VAE step (forward, loss, backward, update), then one more step on the capacity counter."""
        loss = super().train_step(batch, ctx)
        self.step.add_(1)
        return loss
