"""The JumpReLU sparse autoencoder (Rajamanoharan et al. 2024, "Jumping Ahead"; Lieberum et al. 2024, Gemma Scope).

    f = JumpReLU_theta(x W_enc + b_enc) = pre * H(pre - theta),   x_hat = f W_dec + b_dec,
    L = ||x - x_hat||^2 + lambda ||f||_0,   ||f||_0 = sum_i H(pre_i - theta_i).

Each latent has its own threshold theta_i = exp(log_threshold_i) > 0. The L0 and the jump have no
useful gradient with respect to theta, so both go through straight-through pseudo-derivatives with
a rectangle kernel of bandwidth epsilon (``aelab.functional.jumprelu``, ``heaviside_step``): an
estimate of the gradient of the expected loss, in which only pre-activations within epsilon / 2
of a threshold move it. Gemma Scope encodes x directly (no pre-encoder bias) and uses
epsilon = 0.001 and initial thresholds 0.001.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from aelab.functional import heaviside_step, jumprelu, jumprelu_sae_code
from aelab.nn.base import Loss
from aelab.registry import register
from aelab.sae.base import SAE, SAEConfig, SAEOutput


@dataclass
class JumpReLUSAEConfig(SAEConfig):
    pre_encoder_bias: bool = False
    """Subtract b_dec before encoding (Gemma Scope does not)."""
    l0_coefficient: float = 0.01
    """lambda, the weight of the L0 penalty (on the normalised scale)."""
    bandwidth: float = 0.001
    """epsilon, the width of the rectangle kernel of the pseudo-derivatives."""
    init_threshold: float = 0.001
    """Initial threshold theta of every latent."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.l0_coefficient < 0:
            raise ValueError(f"l0_coefficient must be >= 0, got {self.l0_coefficient}")
        if self.bandwidth <= 0 or self.init_threshold <= 0:
            raise ValueError(f"bandwidth and init_threshold must be > 0, got {self.bandwidth} and {self.init_threshold}")


@register("sae_jumprelu")
class JumpReLUSAE(SAE):
    """JumpReLU SAE trained on reconstruction + L0 through straight-through estimators."""

    Config = JumpReLUSAEConfig

    def __init__(self, config: JumpReLUSAEConfig):
        super().__init__(config)
        self.log_threshold = nn.Parameter(torch.full((config.d_sae,), math.log(config.init_threshold)))

    @property
    def threshold(self) -> Tensor:
        """theta = exp(log_threshold), (d_sae,)."""
        return self.log_threshold.exp()

    fused_kernel: bool = True
    """Run the forward pass through ``aelab.functional.jumprelu_sae_code`` (one function with a
    hand-written backward, which also returns the L0 penalty); False: the plain ``SAE.forward`` and
    ``heaviside_step`` in the loss, with autograd. Same numbers either way."""

    sparse_below: float = 0.05
    """With the fused kernel on a CPU in fp32 / fp64: once at most this fraction of the code is non-zero
    (as after some training), steps use only its non-zeros after the encoder product and the kernel
    window's entries for the thresholds (see ``jumprelu_sae_code``). 0 turns it off. Same numbers either way."""

    def activation(self, pre: Tensor) -> Tensor:
        return jumprelu(pre, self.threshold, self.config.bandwidth)

    def forward(self, x: Tensor) -> SAEOutput:
        if not self.fused_kernel:
            return super().forward(x)
        x_n = self.normalize(self.check_input(x))
        pre, acts, decoded, l0, fired = jumprelu_sae_code(x_n, self.b_dec, self.W_enc, self.b_enc, self.decoder_weight(),
                                                          self.threshold, self.config.bandwidth, self.config.pre_encoder_bias,
                                                          self.sparse_below, counts=True)
        return SAEOutput(recon=self.reconstruction(decoded), acts=acts, pre_acts=pre, l0=l0, fired=fired)

    def loss(self, batch, out: SAEOutput, sparsity_scale: float = 1.0) -> Loss:
        """||x - x_hat||^2 + lambda sum_i H(pre_i - theta_i): summed over d_in and latents, mean over the batch.

        terms: ``recon`` (batch mean on the normalised scale), ``l0`` (the penalised L0, equal to
        the count of non-zero latents), ``fvu``.
        """
        x = self.inputs(batch)
        err = self.reconstruction_error(x, out.recon)
        if out.l0 is None:
            l0 = heaviside_step(out.pre_acts, self.threshold, self.config.bandwidth).sum(-1).mean()
        else:  # the fused forward's L0, with the same pseudo-gradient
            l0 = out.l0.mean()
        terms = self.common_terms(x, out, err)
        return Loss(err.mean() + sparsity_scale * self.config.l0_coefficient * l0, terms)
