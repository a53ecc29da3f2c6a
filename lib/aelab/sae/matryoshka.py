"""The Matryoshka sparse autoencoder (Bussmann et al. 2025, "Learning Multi-Level Features with
Matryoshka Sparse Autoencoders"; Nabeshima 2024).

The latents are split into nested groups; the prefixes m_1 < m_2 < ... < m_G = d_sae each have to
reconstruct the input on their own:

    L = sum_g ||x - (f[:m_g] W_dec[:m_g] + b_dec)||^2  (+ alpha AuxK),

so the first latents learn general, frequently useful features and later ones refine them instead
of absorbing them (feature absorption). The code f comes from BatchTopK over all latents (or
TopK, ``activation="topk"``); the inference threshold and AuxK work as in those SAEs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from aelab.functional import prefix_reconstructions, squared_error, topk_activation
from aelab.nn.base import Loss
from aelab.registry import register
from aelab.sae.base import SAEOutput
from aelab.sae.batch_topk import BatchTopKSAE, BatchTopKSAEConfig

ACTIVATIONS = ("batch_topk", "topk")


@dataclass
class MatryoshkaSAEConfig(BatchTopKSAEConfig):
    group_sizes: tuple[int, ...] = ()
    """Sizes of the nested groups, summing to d_sae. Empty: prefixes of d_sae/8, d_sae/4, d_sae/2 and d_sae."""
    activation: str = "batch_topk"
    """"batch_topk" (Bussmann et al. 2025) or "topk" (k per example)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.group_sizes = tuple(int(g) for g in self.group_sizes)
        if self.group_sizes and (min(self.group_sizes) < 1 or sum(self.group_sizes) != self.d_sae):
            raise ValueError(f"group_sizes must be positive and sum to d_sae={self.d_sae}, got {self.group_sizes}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")

    @property
    def prefix_sizes(self) -> tuple[int, ...]:
        """The nested prefix lengths m_1 < ... < m_G = d_sae."""
        if self.group_sizes:
            sizes, total = [], 0
            for g in self.group_sizes:
                total += g
                sizes.append(total)
            return tuple(sizes)
        return tuple(sorted({max(1, self.d_sae // 8), max(1, self.d_sae // 4), max(1, self.d_sae // 2), self.d_sae}))


@register("sae_matryoshka")
class MatryoshkaSAE(BatchTopKSAE):
    """BatchTopK (or TopK) SAE trained on the sum of its nested prefix reconstruction losses."""

    Config = MatryoshkaSAEConfig

    def activation(self, pre: Tensor) -> Tensor:
        if self.config.activation == "topk":
            return torch.relu(topk_activation(pre, self.config.k))
        return super().activation(pre)

    def update_threshold(self, acts: Tensor) -> None:
        if self.config.activation == "batch_topk":  # TopK needs no inference threshold
            super().update_threshold(acts)

    def prefix_errors(self, x: Tensor, out: SAEOutput) -> Tensor:
        """||x - x_hat_{m_g}||^2 per prefix and example, summed over d_in on the normalised scale: (G, B)."""
        recons = prefix_reconstructions(out.acts, self.decoder_weight(), self.b_dec, self.config.prefix_sizes)
        x_n = self.normalize(x)
        return torch.stack([squared_error(x_n, r) for r in recons])

    def loss(self, batch, out: SAEOutput, sparsity_scale: float = 1.0) -> Loss:
        """sum_g ||x - x_hat_{m_g}||^2 + alpha AuxK: summed over prefixes and d_in, mean over the batch.

        terms: ``recon`` (the full reconstruction, the last prefix), ``recon_{m}`` for each prefix
        length m, ``auxk``, ``dead``, ``l0``, ``fvu``.
        """
        x = self.inputs(batch)
        errors = self.prefix_errors(x, out)  # (G, B)
        aux = self.auxk_loss(x, out).mean()
        terms = self.common_terms(x, out, errors[-1])
        for m, e in zip(self.config.prefix_sizes, errors):
            terms[f"recon_{m}"] = e.mean().detach()
        terms["auxk"] = aux
        terms["dead"] = self.dead_latents().float().mean()
        return Loss(errors.sum(0).mean() + self.config.auxk_coefficient * aux, terms)
