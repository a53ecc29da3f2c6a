"""The vector-quantised VAE, VQ-VAE (van den Oord, Vinyals & Kavukcuoglu 2017, "Neural Discrete
Representation Learning").

The encoder maps an image to a grid of D-dim vectors z_e (7x7 for 28x28 images with the conv
backbone; a row of ``n_vectors`` vectors with the MLP backbone); each is replaced by its nearest
code of a learned codebook e_1..e_K, and the decoder reconstructs from the quantised grid z_q.
argmin has no gradient, so the straight-through estimator copies the decoder's gradient with
respect to z_q onto z_e. The loss (van den Oord et al. 2017, eq. 3) is

    -log p(x|z_q)  +  |sg[z_e] - e|^2  +  beta |z_e - sg[e]|^2,

reconstruction, codebook (moves codes towards the encoder outputs) and commitment (keeps the
encoder close to its codes), sg = stop-gradient.

Two non-gradient updates live in ``train_step``, after the optimizer step, under no_grad:

* ``ema=True`` (appendix A.1): the codebook is a buffer updated as an exponential moving average
  of the vectors assigned to each code (``aelab.functional.ema_codebook_update``), instead of by the
  codebook loss;
* ``dead_code_steps=N``: a code that no vector chose for N consecutive steps is re-initialised to a
  random encoder output of the current batch (a common remedy for codebook collapse, not part of
  the paper). The counters start at N, so the first training step already replaces every code the
  first batch left unused: a data-dependent initialisation of the codebook.

The prior over code grids (a PixelCNN in the paper) is not part of this model; ``decode_indices``
decodes any grid of code indices.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import Tensor, nn

from aelab.functional import (
    bernoulli_log_likelihood,
    codebook_perplexity,
    ema_codebook_update,
    quantize,
    squared_error,
    straight_through,
)
from aelab.nn.backbone import BACKBONES, make_decoder, make_encoder
from aelab.nn.base import Loss, Model
from aelab.nn.conv import ConvGridDecoder, ConvGridEncoder
from aelab.registry import register

LIKELIHOODS = ("bernoulli", "gaussian")


@dataclass
class VQVAEConfig:
    input_shape: tuple[int, ...] = (1, 28, 28)
    """Shape of one example (C, H, W) or (D,)."""
    backbone: str = "conv"
    """"conv": a grid of vectors (7x7 for 28x28, 4x4 for 64x64); "mlp": a row of ``n_vectors`` vectors."""
    channels: int = 64
    """Conv channels per layer (conv backbone only)."""
    hidden: tuple[int, ...] = (512, 256)
    """MLP hidden sizes, the decoder mirrors them (mlp backbone only)."""
    n_vectors: int = 16
    """Number of code vectors per example (mlp backbone only)."""
    embedding_dim: int = 16
    """Dimension D of each code vector."""
    codebook_size: int = 128
    """Number K of codes in the codebook."""
    beta: float = 0.25
    """Weight of the commitment loss (van den Oord et al. use 0.25)."""
    likelihood: str = "bernoulli"
    """Reconstruction term: "bernoulli" (cross-entropy on logits, x in [0, 1]) or "gaussian" (squared error)."""
    ema: bool = False
    """Update the codebook by exponential moving averages in ``train_step`` instead of the codebook loss."""
    decay: float = 0.99
    """EMA decay gamma (ema=True only)."""
    epsilon: float = 1e-5
    """Laplace smoothing of the EMA cluster sizes (ema=True only)."""
    dead_code_steps: int = 50
    """Re-initialise a code unused for this many consecutive training steps from a random encoder output
    (and every code unused by the first batch); 0 disables."""

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        if min(self.n_vectors, self.embedding_dim, self.codebook_size) < 1:
            raise ValueError("n_vectors, embedding_dim and codebook_size must be >= 1")
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {self.decay}")
        if self.dead_code_steps < 0:
            raise ValueError(f"dead_code_steps must be >= 0, got {self.dead_code_steps}")


@dataclass
class VQVAEOutput:
    """What ``VQVAE.forward`` returns. Grids are channels-first: (B, D, *grid), grid = (7, 7) or (n_vectors,)."""

    recon: Tensor
    """Decoder output (logits for Bernoulli), (B, *input_shape)."""
    z_e: Tensor
    """Encoder output before quantisation, (B, D, *grid)."""
    z_q: Tensor
    """The nearest codes, differentiable with respect to the codebook only, (B, D, *grid)."""
    indices: Tensor
    """Index of the chosen code at each grid position, (B, *grid), long."""


@register("vq_vae")
class VQVAE(Model):
    """An autoencoder with a discrete bottleneck: nearest-code quantisation and a straight-through gradient."""

    Config = VQVAEConfig

    def __init__(self, config: VQVAEConfig):
        super().__init__(config)
        d, k = config.embedding_dim, config.codebook_size
        if config.backbone == "conv":
            self.encoder = ConvGridEncoder(config.input_shape, d, channels=config.channels)
            self.decoder = ConvGridDecoder(d, config.input_shape, channels=config.channels)
        else:
            self.encoder = make_encoder(config, config.n_vectors * d)
            flat = SimpleNamespace(backbone="mlp", input_shape=config.input_shape, hidden=config.hidden, latent_dim=config.n_vectors * d)
            self.decoder = make_decoder(flat)
        codebook = torch.empty(k, d).uniform_(-1.0 / k, 1.0 / k)
        if config.ema:  # a buffer: moved by train_step, not by the optimizer
            self.register_buffer("codebook", codebook)
            self.register_buffer("ema_cluster_size", torch.ones(k))
            self.register_buffer("ema_embed_sum", codebook.clone())
        else:
            self.codebook = nn.Parameter(codebook)
        # training steps since each code was last chosen; starting at the threshold makes the first
        # step reset every code the first batch does not use (data-dependent initialisation)
        self.register_buffer("steps_unused", torch.full((k,), config.dead_code_steps, dtype=torch.long))

    # -- grids of vectors <-> rows ------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        """(B, *input_shape) -> z_e (B, D, *grid)."""
        z = self.encoder(x)
        return z if self.config.backbone == "conv" else z.view(x.shape[0], self.config.embedding_dim, self.config.n_vectors)

    def decode(self, z_q: Tensor) -> Tensor:
        """(B, D, *grid) -> (B, *input_shape) in data space (sigmoid applied for Bernoulli)."""
        return self.mean(self._decoder(z_q))

    def decode_indices(self, indices: Tensor) -> Tensor:
        """A grid of code indices (B, *grid) -> images (B, *input_shape) in data space."""
        return self.decode(self.codebook[indices].movedim(-1, 1))

    def mean(self, recon: Tensor) -> Tensor:
        """Decoder output -> data space."""
        return torch.sigmoid(recon) if self.config.likelihood == "bernoulli" else recon

    def _decoder(self, z_q: Tensor) -> Tensor:
        return self.decoder(z_q if self.config.backbone == "conv" else z_q.flatten(1))

    @staticmethod
    def _rows(z: Tensor) -> Tensor:
        """(B, D, *grid) -> (B * prod(grid), D)."""
        return z.movedim(1, -1).reshape(-1, z.shape[1])

    # -- model ----------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> VQVAEOutput:
        z_e = self.encode(self.check_input(x))
        grid = (z_e.shape[0], *z_e.shape[2:])
        z_q, indices = quantize(self._rows(z_e), self.codebook)
        z_q = z_q.view(*grid, -1).movedim(-1, 1)
        recon = self._decoder(straight_through(z_e, z_q))
        return VQVAEOutput(recon=recon, z_e=z_e, z_q=z_q, indices=indices.view(grid))

    def loss(self, batch, out: VQVAEOutput) -> Loss:
        """recon (sum over pixels) + codebook + beta * commitment (squared errors summed over D and grid); batch means.

        With ``ema=True`` there is no codebook term (the EMA moves the codes). ``perplexity`` (the
        effective number of codes used in the batch) is reported, not optimised.
        """
        x = self.inputs(batch)
        if self.config.likelihood == "bernoulli":
            recon = -bernoulli_log_likelihood(x, out.recon)
        else:
            recon = squared_error(x, out.recon)
        commitment = squared_error(out.z_e, out.z_q.detach()).mean()
        terms = {"recon": recon.mean(), "commitment": commitment}
        total = terms["recon"] + self.config.beta * commitment
        if not self.config.ema:
            terms["codebook"] = squared_error(out.z_q, out.z_e.detach()).mean()
            total = total + terms["codebook"]
        terms["perplexity"] = codebook_perplexity(out.indices, self.config.codebook_size)
        return Loss(total, terms)

    # -- non-gradient updates -------------------------------------------------------------------
    def train_step(self, batch, ctx) -> Loss:
        """The default step (forward, loss, backward, update), then the EMA codebook and dead-code updates."""
        with ctx.autocast():
            out = ctx.model(*self.forward_args(batch))
            loss = self.loss(batch, out)
        ctx.update(loss.total)
        with torch.no_grad():
            z = self._rows(out.z_e.detach()).float()
            indices = out.indices.flatten()
            if self.config.ema:
                self.update_codebook_ema(z, indices)
            if self.config.dead_code_steps:
                self.reset_dead_codes(z, indices)
        return loss

    @torch.no_grad()
    def update_codebook_ema(self, z: Tensor, indices: Tensor) -> None:
        """Move the codes to the moving average of their assigned vectors: z (N, D), indices (N,)."""
        size, total, codebook = ema_codebook_update(self.ema_cluster_size, self.ema_embed_sum, z, indices,
                                                    decay=self.config.decay, epsilon=self.config.epsilon)
        self.ema_cluster_size.copy_(size)
        self.ema_embed_sum.copy_(total)
        self.codebook.copy_(codebook)

    @torch.no_grad()
    def reset_dead_codes(self, z: Tensor, indices: Tensor) -> Tensor:
        """Count the steps since each code was last used; re-initialise those unused for ``dead_code_steps``.

        A dead code gets a random row of z (N, D), this batch's encoder outputs; its EMA statistics
        restart as one vector of that value. Returns the (K,) bool mask of the reset codes.

        No value is read on the host (on CUDA, no wait for the device): every code draws a row and
        only the dead ones take it, K D copies per step instead of a list of the dead codes.
        """
        used = torch.zeros_like(self.steps_unused, dtype=torch.bool)
        used[indices] = True
        self.steps_unused.add_(1).masked_fill_(used, 0)
        dead = self.steps_unused >= self.config.dead_code_steps
        if z.shape[0] == 0:  # no encoder output to copy: the dead codes wait for the next batch
            return torch.zeros_like(dead)
        fresh = z[torch.randint(0, z.shape[0], dead.shape, device=z.device)]
        take = dead.unsqueeze(1)
        self.codebook.copy_(torch.where(take, fresh.to(self.codebook.dtype), self.codebook))
        if self.config.ema:
            self.ema_cluster_size.masked_fill_(dead, 1.0)
            self.ema_embed_sum.copy_(torch.where(take, fresh.to(self.ema_embed_sum.dtype), self.ema_embed_sum))
        self.steps_unused.masked_fill_(dead, 0)
        return dead
