"""The k-sparse autoencoder (Makhzani & Frey 2013, "k-Sparse Autoencoders").

    z = x W_enc + b_enc,   f = the k largest entries of z (others 0),   x_hat = f W_dec + b_dec,

linear hidden units, no sparsity penalty, squared error. Starting at a small k leaves many units
that never win and never learn (dead), so k starts large and decreases linearly to its target
(the paper: over the first half of training), ``k_start`` -> ``k`` over ``k_schedule_steps``
steps. At test time the paper keeps alpha k units (alpha >= 1) for classification features;
``test_alpha`` is that alpha, 1 for reconstruction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from aelab.functional import topk_activation
from aelab.nn.base import Loss
from aelab.registry import register
from aelab.sae.base import SAE, SAEConfig, SAEOutput


@dataclass
class KSparseAEConfig(SAEConfig):
    pre_encoder_bias: bool = False
    """Subtract b_dec before encoding (the paper does not)."""
    unit_norm_decoder: bool = False
    """Keep decoder rows at unit norm (the paper does not; without a penalty nothing rewards shrinking f)."""
    k: int = 32
    """Units kept per example at the end of the schedule (and at test time, times test_alpha)."""
    k_start: int | None = None
    """k at the first training step; None: min(d_sae, 4 k)."""
    k_schedule_steps: int = 1000
    """Steps over which k decreases linearly from k_start to k; 0 uses k from the start."""
    test_alpha: float = 1.0
    """In eval mode keep round(test_alpha * k) units (at most d_sae)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.k <= self.d_sae:
            raise ValueError(f"k must be between 1 and d_sae={self.d_sae}, got {self.k}")
        if self.k_start is not None and not self.k <= self.k_start <= self.d_sae:
            raise ValueError(f"k_start must be between k={self.k} and d_sae={self.d_sae}, got {self.k_start}")
        if self.k_schedule_steps < 0:
            raise ValueError(f"k_schedule_steps must be >= 0, got {self.k_schedule_steps}")
        if self.test_alpha < 1.0:
            raise ValueError(f"test_alpha must be >= 1, got {self.test_alpha}")

    @property
    def first_k(self) -> int:
        """k_start with its default filled in."""
        return min(self.d_sae, 4 * self.k) if self.k_start is None else self.k_start


@register("ksparse_ae")
class KSparseAE(SAE):
    """Linear encoder, top-k code, linear decoder; k follows a decreasing schedule in training."""

    Config = KSparseAEConfig

    def __init__(self, config: KSparseAEConfig):
        super().__init__(config)
        # the k of the current training step (set by train_step), saved so a resumed run continues
        self.register_buffer("k_current", torch.tensor(config.first_k if config.k_schedule_steps else config.k))

    def k_schedule(self, step: int) -> int:
        """k at a training step: linear from k_start at step 0 to k at ``k_schedule_steps``, then k."""
        c = self.config
        if c.k_schedule_steps == 0 or step >= c.k_schedule_steps:
            return c.k
        return round(c.first_k + (c.k - c.first_k) * step / c.k_schedule_steps)

    def current_k(self) -> int:
        """The k forward uses: the schedule's in training, round(test_alpha k) in eval mode."""
        if self.training:
            return int(self.read_buffer("k_current"))
        return min(self.config.d_sae, round(self.config.test_alpha * self.config.k))

    def activation(self, pre: Tensor) -> Tensor:
        return topk_activation(pre, self.current_k())

    def before_step(self, x: Tensor, ctx) -> None:
        self.fill_buffer("k_current", self.k_schedule(ctx.step))

    def loss(self, batch, out: SAEOutput, sparsity_scale: float = 1.0) -> Loss:
        """||x - x_hat||^2: summed over d_in, mean over the batch (no sparsity term; ``sparsity_scale`` is unused).

        terms: ``recon``, ``l0``, ``fvu`` and ``k`` (the k in use).
        """
        x = self.inputs(batch)
        err = self.reconstruction_error(x, out.recon)
        terms = self.common_terms(x, out, err)
        terms["k"] = torch.full((), float(self.current_k()), device=x.device)  # a fill, not a copy from the host
        return Loss(err.mean(), terms)
