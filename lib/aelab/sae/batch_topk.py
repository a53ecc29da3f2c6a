"""The BatchTopK sparse autoencoder (Bussmann, Leask & Nanda 2024, "BatchTopK Sparse Autoencoders").

In training, the k * B largest activations of the whole batch are kept instead of k per example:

    f = BatchTopK(ReLU((x - b_dec) W_enc + b_enc)),

so the average L0 is k while each example uses as many latents as it needs. A batch-level rule
cannot encode one example alone, so at inference the SAE becomes a JumpReLU with one global
threshold theta, f = ReLU(pre) * 1[pre > theta]; theta is a running average, over training steps,
of the smallest activation BatchTopK kept. Loss and AuxK as in the TopK SAE.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from aelab.functional import batch_topk_activation
from aelab.registry import register
from aelab.sae.base import SAEOutput
from aelab.sae.topk import TopKSAE, TopKSAEConfig


@dataclass
class BatchTopKSAEConfig(TopKSAEConfig):
    threshold_momentum: float = 0.01
    """Weight of the newest batch in the running average of the inference threshold (the first batch sets it)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.threshold_momentum <= 1.0:
            raise ValueError(f"threshold_momentum must be in (0, 1], got {self.threshold_momentum}")


@register("sae_batch_topk")
class BatchTopKSAE(TopKSAE):
    """BatchTopK in training, a global activation threshold in eval mode."""

    Config = BatchTopKSAEConfig
    sparse_kernels = False  # the number of latents kept varies per example: no fixed (B, k) code

    def __init__(self, config: BatchTopKSAEConfig):
        super().__init__(config)
        # the inference threshold; negative until training has estimated it (eval then uses BatchTopK)
        self.register_buffer("threshold", torch.full((), -1.0))

    def activation(self, pre: Tensor) -> Tensor:
        if self.training or self.threshold < 0:
            return batch_topk_activation(torch.relu(pre), self.config.k)
        return torch.relu(pre) * (pre > self.threshold)

    @torch.no_grad()
    def update_threshold(self, acts: Tensor) -> None:
        """Move theta towards the smallest positive activation kept in this training batch, acts (B, d_sae)."""
        # in tensor operations only, so CUDA never waits to read a value: inf where nothing fired (theta kept),
        # the first estimate where theta is still unset (negative), else the moving average
        smallest = torch.where(acts > 0, acts, float("inf")).amin().float()
        moved = torch.where(self.threshold < 0, smallest, torch.lerp(self.threshold, smallest, self.config.threshold_momentum))
        self.threshold.copy_(torch.where(torch.isinf(smallest), self.threshold, moved))

    def after_step(self, x: Tensor, out: SAEOutput, ctx) -> None:
        super().after_step(x, out, ctx)
        self.update_threshold(out.acts.detach())
