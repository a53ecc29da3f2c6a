"""The ReLU sparse autoencoder with an L1 penalty (Bricken et al. 2023, "Towards Monosemanticity").

    f = ReLU((x - b_dec) W_enc + b_enc),   x_hat = f W_dec + b_dec,
    L = ||x - x_hat||^2 + lambda sum_i f_i ||W_dec,i||.

The L1 penalty alone can be cheated by shrinking f and growing W_dec; either the decoder rows are
held at unit norm (Bricken et al. 2023; ``unit_norm_decoder``) or the penalty weights each latent by
its decoder norm (Anthropic's April 2024 update; ``decoder_norm_l1``).

Dead-latent resampling (Bricken et al. 2023, "neuron resampling"), every ``resample_every`` steps:
each dead latent gets the direction of an input drawn with probability proportional to the square
of its reconstruction loss (the input as the encoder sees it, x - b_dec), its encoder column that
direction times 0.2 times the mean norm of the alive encoder columns, its encoder bias 0, and the
optimiser's moment estimates for those weights are reset.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from aelab.functional import l1_penalty, relu_sae_code
from aelab.nn.base import Loss
from aelab.registry import register
from aelab.train import distributed
from aelab.sae.base import SAE, SAEConfig, SAEOutput


@dataclass
class ReLUSAEConfig(SAEConfig):
    l1_coefficient: float = 0.3
    """lambda, the weight of the L1 penalty (on the normalised scale)."""
    decoder_norm_l1: bool = False
    """Weight each latent's |f_i| by ||W_dec,i|| (needed when ``unit_norm_decoder`` is False)."""
    resample_every: int = 0
    """Resample the dead latents every this many training steps; 0 disables."""
    resample_encoder_scale: float = 0.2
    """A resampled encoder column has this times the mean norm of the alive columns (Bricken et al.: 0.2)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.l1_coefficient < 0:
            raise ValueError(f"l1_coefficient must be >= 0, got {self.l1_coefficient}")
        if not (self.unit_norm_decoder or self.decoder_norm_l1):
            raise ValueError("with unit_norm_decoder=False the L1 penalty can be driven to 0 by scaling f down and W_dec "
                             "up; set decoder_norm_l1=True (or keep unit_norm_decoder=True)")
        if self.resample_every < 0:
            raise ValueError(f"resample_every must be >= 0, got {self.resample_every}")


@register("sae_relu")
class ReLUSAE(SAE):
    """ReLU SAE with an L1 penalty, optional decoder-norm weighting and dead-latent resampling."""

    Config = ReLUSAEConfig

    fused_kernel: bool = True
    """Run the forward pass through ``aelab.functional.relu_sae_code`` (one function with a hand-written
    backward: five (B, d_in, d_sae) products per step instead of six, fewer passes over the code).
    False: the plain ``SAE.forward`` with autograd. Same numbers either way."""

    sparse_below: float = 0.05
    """With the fused kernel on a CPU in fp32 / fp64: once at most this fraction of the code is non-zero
    (as after a little training), steps use only its non-zeros after the encoder product (see
    ``relu_sae_code``). 0 turns it off. Same numbers either way."""

    def activation(self, pre: Tensor) -> Tensor:
        return torch.relu(pre)

    def l1_weights(self, W_dec: Tensor | None = None) -> Tensor | None:
        """Per-latent weights of the L1 penalty: the norms of the rows of ``W_dec`` (default
        ``decoder_weight()``) with ``decoder_norm_l1``, else None (all 1)."""
        if not self.config.decoder_norm_l1:
            return None
        return (self.decoder_weight() if W_dec is None else W_dec).norm(dim=1)

    def forward(self, x: Tensor) -> SAEOutput:
        if not self.fused_kernel:
            return super().forward(x)
        x_n = self.normalize(self.check_input(x))
        W_dec = self.decoder_weight()
        pre, acts, decoded, l1, l0, fired = relu_sae_code(x_n, self.b_dec, self.W_enc, self.b_enc, W_dec, self.l1_weights(W_dec),
                                                          self.config.pre_encoder_bias, self.sparse_below, counts=True)
        return SAEOutput(recon=self.reconstruction(decoded), acts=acts, pre_acts=pre, l1=l1, l0=l0, fired=fired)

    def loss(self, batch, out: SAEOutput, sparsity_scale: float = 1.0) -> Loss:
        """||x - x_hat||^2 + lambda * sum_i f_i (||W_dec,i||): summed over d_in and latents, mean over the batch.

        terms: ``recon``, ``l1`` (batch means, on the normalised scale), ``l0``, ``fvu``.
        """
        x = self.inputs(batch)
        err = self.reconstruction_error(x, out.recon)
        l1 = (out.l1 if out.l1 is not None else l1_penalty(out.acts, self.l1_weights())).mean()
        terms = self.common_terms(x, out, err)
        terms["l1"] = l1
        return Loss(err.mean() + sparsity_scale * self.config.l1_coefficient * l1, terms)

    def after_step(self, x: Tensor, out: SAEOutput, ctx) -> None:
        super().after_step(x, out, ctx)
        every = self.config.resample_every
        if every and (ctx.step + 1) % every == 0:
            self.resample_dead_latents(x, out, ctx.optimizers[0])
            distributed.broadcast_(self.W_dec, self.W_enc, self.b_enc)  # the draw is random: rank 0's wins

    @torch.no_grad()
    def resample_dead_latents(self, x: Tensor, out: SAEOutput, optimizer: torch.optim.Optimizer | None = None) -> Tensor:
        """Re-initialise the dead latents towards inputs with a high loss (module docstring); returns their indices.

        x (B, d_in) raw inputs and ``out`` their forward pass supply the candidates; with an
        ``optimizer``, its per-parameter state (Adam's moments) is zeroed for the new weights.
        """
        dead = self.dead_latents().nonzero().squeeze(1)
        if dead.numel() == 0:
            return dead
        loss = self.reconstruction_error(x, out.recon.detach()).float()
        weights = loss.pow(2) if loss.pow(2).sum() > 0 else torch.ones_like(loss)
        pick = torch.multinomial(weights, dead.numel(), replacement=True)
        directions = F.normalize(self.encoder_input(self.normalize(x[pick])).float(), dim=1)  # (n_dead, d_in)
        alive = torch.ones_like(self.b_enc, dtype=torch.bool)
        alive[dead] = False
        enc_norm = self.W_enc[:, alive].norm(dim=0).mean() if alive.any() else torch.tensor(1.0)
        self.W_dec[dead] = directions.to(self.W_dec.dtype)
        self.W_enc[:, dead] = (directions.T * self.config.resample_encoder_scale * enc_norm).to(self.W_enc.dtype)
        self.b_enc[dead] = 0.0
        self.steps_since_fired[dead] = 0
        if optimizer is not None:
            for param, dim in ((self.W_dec, 0), (self.W_enc, 1), (self.b_enc, 0)):
                for value in optimizer.state.get(param, {}).values():
                    if torch.is_tensor(value) and value.shape == param.shape:
                        value.index_fill_(dim, dead, 0.0)
        return dead
