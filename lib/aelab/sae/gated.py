"""The gated sparse autoencoder (Rajamanoharan et al. 2024, "Improving Dictionary Learning with Gated Sparse Autoencoders").

The encoder separates which latents fire (the gate) from how strongly (the magnitude):

    pi_gate = (x - b_dec) W_gate + b_gate,        pi_mag = (x - b_dec) W_mag + b_mag,
    f = 1[pi_gate > 0] * ReLU(pi_mag),            W_mag = W_gate * exp(r_mag)   (columnwise),

so the two paths share their directions and differ by a per-latent scale exp(r_mag) and bias
(W_enc is W_gate, b_enc is b_gate here). The L1 penalty acts on the gate only, so it no longer
shrinks the magnitudes; the Heaviside gate has no gradient, so an auxiliary reconstruction from
ReLU(pi_gate) through a frozen copy of the decoder trains the gate path:

    L = ||x - x_hat(f)||^2 + lambda ||ReLU(pi_gate)||_1 + ||x - x_hat_frozen(ReLU(pi_gate))||^2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from aelab.functional import l1_penalty, squared_error
from aelab.nn.base import Loss
from aelab.registry import register
from aelab.sae.base import SAE, SAEConfig


@dataclass
class GatedSAEConfig(SAEConfig):
    l1_coefficient: float = 0.3
    """lambda, the weight of the L1 penalty on ReLU(pi_gate) (on the normalised scale)."""
    decoder_norm_l1: bool = False
    """Weight each gate activation by ||W_dec,i|| (needed when ``unit_norm_decoder`` is False)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.l1_coefficient < 0:
            raise ValueError(f"l1_coefficient must be >= 0, got {self.l1_coefficient}")
        if not (self.unit_norm_decoder or self.decoder_norm_l1):
            raise ValueError("with unit_norm_decoder=False the L1 penalty can be driven to 0 by scaling the gate down "
                             "and W_dec up; set decoder_norm_l1=True (or keep unit_norm_decoder=True)")


@dataclass
class GatedSAEOutput:
    """What ``GatedSAE.forward`` returns."""

    recon: Tensor
    """The reconstruction x_hat in the input's own scale, (B, d_in)."""
    acts: Tensor
    """The sparse code f = 1[pi_gate > 0] ReLU(pi_mag), (B, d_sae)."""
    pre_acts: Tensor
    """Gate pre-activations pi_gate, (B, d_sae)."""
    mag_pre_acts: Tensor
    """Magnitude pre-activations pi_mag, (B, d_sae)."""


@register("sae_gated")
class GatedSAE(SAE):
    """Gated SAE: a gate path with the L1 penalty, a magnitude path sharing its weights up to exp(r_mag)."""

    Config = GatedSAEConfig

    def __init__(self, config: GatedSAEConfig):
        super().__init__(config)
        self.r_mag = nn.Parameter(torch.zeros(config.d_sae))
        self.b_mag = nn.Parameter(torch.zeros(config.d_sae))

    def gate_and_magnitude(self, x_n: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised inputs (B, d_in) -> pi_gate, pi_mag, each (B, d_sae)."""
        centred = self.encoder_input(x_n)
        pi_gate = centred @ self.W_enc + self.b_enc
        pi_mag = centred @ (self.W_enc * self.r_mag.exp()) + self.b_mag
        return pi_gate, pi_mag

    @staticmethod
    def combine(pi_gate: Tensor, pi_mag: Tensor) -> Tensor:
        """f = 1[pi_gate > 0] * ReLU(pi_mag), (B, d_sae)."""
        return (pi_gate > 0).to(pi_mag.dtype) * torch.relu(pi_mag)

    def encode(self, x: Tensor) -> Tensor:
        return self.combine(*self.gate_and_magnitude(self.normalize(self.check_input(x))))

    def forward(self, x: Tensor) -> GatedSAEOutput:
        pi_gate, pi_mag = self.gate_and_magnitude(self.normalize(self.check_input(x)))
        acts = self.combine(pi_gate, pi_mag)
        return GatedSAEOutput(recon=self.decode(acts), acts=acts, pre_acts=pi_gate, mag_pre_acts=pi_mag)

    def loss(self, batch, out: GatedSAEOutput, sparsity_scale: float = 1.0) -> Loss:
        """recon + lambda L1(ReLU(pi_gate)) + aux recon: each summed over d_in or latents, mean over the batch.

        The auxiliary reconstruction ReLU(pi_gate) W_dec + b_dec uses detached decoder weights, so
        it trains the gate path only. terms: ``recon``, ``l1``, ``aux`` (batch means on the
        normalised scale), ``l0``, ``fvu``.
        """
        x = self.inputs(batch)
        err = self.reconstruction_error(x, out.recon)
        gate = torch.relu(out.pre_acts)
        norms = self.decoder_weight().norm(dim=1) if self.config.decoder_norm_l1 else None
        l1 = l1_penalty(gate, norms).mean()
        aux = squared_error(self.normalize(x), gate @ self.W_dec.detach() + self.b_dec.detach()).mean()
        terms = self.common_terms(x, out, err)
        terms.update(l1=l1, aux=aux)
        return Loss(err.mean() + sparsity_scale * self.config.l1_coefficient * l1 + aux, terms)
