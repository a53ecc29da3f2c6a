"""The TopK sparse autoencoder (Gao et al. 2024, "Scaling and evaluating sparse autoencoders").

    f = ReLU(TopK((x - b_pre) W_enc + b_enc)),   x_hat = f W_dec + b_pre,

with exactly the k largest pre-activations kept per example (fewer if some of them are negative):
the L0 is set directly, no sparsity penalty is needed. b_pre is b_dec here, initialised at the
geometric median; decoder rows stay at unit norm.

AuxK (Gao et al. 2024, appendix A.2) revives dead latents: the k_aux largest pre-activations
among the dead latents reconstruct the main model's residual e = x - x_hat,

    L = ||x - x_hat||^2 + alpha ||e - e_hat||^2,   e_hat = TopK_aux(pre[dead]) W_dec,

with e a constant (no gradient into the main path) and alpha = 1/32. With no dead latent the
term is exactly 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from aelab.functional import dead_topk_activation, squared_error, topk_activation, topk_sae_code
from aelab.nn.base import Loss
from aelab.registry import register
from aelab.sae.base import SAE, SAEConfig, SAEOutput


@dataclass
class TopKSAEConfig(SAEConfig):
    k: int = 32
    """Number of latents kept per example (the L0)."""
    k_aux: int | None = None
    """Dead latents used by the AuxK loss per example; None: d_in // 2 (Gao et al.: about d_model / 2)."""
    auxk_coefficient: float = 1 / 32
    """alpha, the weight of the AuxK loss; 0 disables it."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.k <= self.d_sae:
            raise ValueError(f"k must be between 1 and d_sae={self.d_sae}, got {self.k}")
        if self.k_aux is not None and self.k_aux < 0:
            raise ValueError(f"k_aux must be >= 0, got {self.k_aux}")
        if self.auxk_coefficient < 0:
            raise ValueError(f"auxk_coefficient must be >= 0, got {self.auxk_coefficient}")

    @property
    def aux_k(self) -> int:
        """k_aux with its default filled in."""
        return max(1, self.d_in // 2) if self.k_aux is None else self.k_aux


@register("sae_topk")
class TopKSAE(SAE):
    """TopK SAE with the AuxK loss on dead latents."""

    Config = TopKSAEConfig

    sparse_kernels: bool | None = None
    """Encode and decode through the (B, k) code (``aelab.functional.topk_sae_code``): None (default)
    does so when k <= d_sae / 8, where it is faster; True / False force it on / off. Same numbers either way."""

    def activation(self, pre: Tensor) -> Tensor:
        return torch.relu(topk_activation(pre, self.config.k))

    def uses_sparse_kernels(self) -> bool:
        """Whether ``forward`` takes the sparse path (see ``sparse_kernels``)."""
        if self.sparse_kernels is None:
            return 8 * self.config.k <= self.config.d_sae
        return self.sparse_kernels

    def forward(self, x: Tensor) -> SAEOutput:
        if not self.uses_sparse_kernels():
            return super().forward(x)
        x_n = self.normalize(self.check_input(x))
        pre, values, indices, decoded = topk_sae_code(x_n, self.b_dec, self.W_enc, self.b_enc, self.decoder_weight(),
                                                      self.config.k, self.config.pre_encoder_bias)
        recon = self.reconstruction(decoded)
        # acts=None: the dense (B, d_sae) code is scattered from (indices, values) only if something reads it
        return SAEOutput(recon=recon, acts=None, pre_acts=pre, indices=indices, values=values)

    def auxk_loss(self, x: Tensor, out: SAEOutput) -> Tensor:
        """||e - e_hat||^2 per example, summed over d_in on the normalised scale: (B,); zeros when no latent is dead."""
        if self.config.aux_k == 0 or self.surely_no_dead_latents():
            return torch.zeros(x.shape[0], device=x.device, dtype=out.recon.dtype)
        dead = self.dead_latents()
        residual = (self.normalize(x) - self.normalize(out.recon)).detach()
        aux_acts = dead_topk_activation(out.pre_acts, dead, self.config.aux_k)
        # times dead.any(): where "may be dead" turns out false (CUDA, without a wait), exactly 0 as above
        return squared_error(residual, aux_acts @ self.decoder_weight()) * dead.any()

    def loss(self, batch, out: SAEOutput, sparsity_scale: float = 1.0) -> Loss:
        """||x - x_hat||^2 + alpha AuxK: summed over d_in, mean over the batch (``sparsity_scale`` is unused).

        terms: ``recon``, ``auxk`` (batch means on the normalised scale), ``l0``, ``fvu``, ``dead``
        (the fraction of latents currently counted dead).
        """
        x = self.inputs(batch)
        err = self.reconstruction_error(x, out.recon)
        aux = self.auxk_loss(x, out).mean()
        terms = self.common_terms(x, out, err)
        terms["auxk"] = aux
        terms["dead"] = self.dead_latents().float().mean()
        return Loss(err.mean() + self.config.auxk_coefficient * aux, terms)
