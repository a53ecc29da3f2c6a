"""The toy model of superposition (Elhage et al. 2022, "Toy Models of Superposition").

n features x in [0, 1]^F, each present with probability p (sparsity S = 1 - p), are compressed
into m < F hidden dimensions by one matrix W (m, F) and read back with its transpose:

    h = W x,    x' = ReLU(W^T h + b),

trained on the importance-weighted squared error sum_i I_i (x_i - x'_i)^2. Dense features give a
PCA-like solution (the m most important features, orthogonal, the rest dropped); sparse features
are stored in superposition, more features than dimensions, with the ReLU filtering out the
interference.

Many such models ("instances"), differing in feature probability or importance, train at once as
one batched model: W (n_instances, n_hidden, n_features), b_final (n_instances, n_features),
inputs (B, n_instances, n_features). The instances share no parameter and the loss sums over them,
so each gets exactly the gradient it would get trained alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from aelab.data.toy import ToyBatches, toy_batch
from aelab.nn.base import Loss, Model
from aelab.registry import register


@dataclass
class ToySuperpositionConfig:
    n_features: int = 5
    """Number F of input features."""
    n_hidden: int = 2
    """Number m of hidden dimensions (m < F for superposition to matter)."""
    n_instances: int = 8
    """Number of independent models trained side by side."""
    feature_probability: tuple[float, ...] = ()
    """Probability p = 1 - S that a feature is present: one value for every instance or one per
    instance. Empty: geometric from 1 (dense) down to ``min_feature_probability`` across instances."""
    min_feature_probability: float = 0.05
    """The sparsest instance's p when ``feature_probability`` is empty (the paper's 1/20)."""
    importance: tuple[float, ...] | tuple[tuple[float, ...], ...] = ()
    """Importance I of each feature: F values shared by every instance, or n_instances rows of F
    (a per-instance importance, as in the phase diagrams). Empty: ``importance_decay ** i``."""
    importance_decay: float = 0.9
    """Importance I_i = importance_decay ** i when ``importance`` is empty (the paper's 0.9)."""

    def __post_init__(self) -> None:
        if min(self.n_features, self.n_hidden, self.n_instances) < 1:
            raise ValueError("n_features, n_hidden and n_instances must be >= 1, got "
                             f"{self.n_features}, {self.n_hidden}, {self.n_instances}")
        self.feature_probability = tuple(float(p) for p in self.feature_probability)
        if len(self.feature_probability) not in (0, 1, self.n_instances):
            raise ValueError(f"feature_probability needs 1 or n_instances={self.n_instances} values, "
                             f"got {len(self.feature_probability)}")
        if any(not 0.0 < p <= 1.0 for p in self.feature_probability) or not 0.0 < self.min_feature_probability <= 1.0:
            raise ValueError("feature probabilities must be in (0, 1] (a feature that is never present cannot be learned)")
        # JSON gives lists of lists back; keep tuples so a loaded config equals the saved one
        rows = tuple(tuple(float(v) for v in r) if isinstance(r, (tuple, list)) else float(r) for r in self.importance)
        self.importance = rows
        if rows:
            nested = isinstance(rows[0], tuple)
            shape_ok = (len(rows) == self.n_instances and all(isinstance(r, tuple) and len(r) == self.n_features for r in rows)) \
                if nested else len(rows) == self.n_features and not any(isinstance(r, tuple) for r in rows)
            if not shape_ok:
                raise ValueError(f"importance needs n_features={self.n_features} values or n_instances={self.n_instances} "
                                 f"rows of n_features values, got {rows}")
        if self.importance_decay <= 0:
            raise ValueError(f"importance_decay must be > 0, got {self.importance_decay}")

    @property
    def input_shape(self) -> tuple[int, int]:
        return (self.n_instances, self.n_features)

    def probabilities(self) -> Tensor:
        """Feature probability of each instance, (n_instances,)."""
        if self.feature_probability:
            return torch.tensor(self.feature_probability).expand(self.n_instances).clone()
        steps = torch.linspace(0.0, 1.0, self.n_instances) if self.n_instances > 1 else torch.zeros(1)
        return self.min_feature_probability ** steps

    def importances(self) -> Tensor:
        """Importance of each feature in each instance, (n_instances, n_features)."""
        if self.importance:
            imp = torch.tensor(self.importance, dtype=torch.float32)
        else:
            imp = self.importance_decay ** torch.arange(self.n_features, dtype=torch.float32)
        return imp.expand(self.n_instances, self.n_features).clone()


@dataclass
class ToySuperpositionOutput:
    """What ``ToySuperposition.forward`` returns."""

    recon: Tensor
    """x' = ReLU(W^T W x + b), (B, n_instances, n_features)."""
    hidden: Tensor
    """h = W x, (B, n_instances, n_hidden)."""


@register("toy_superposition")
class ToySuperposition(Model):
    """n_instances toy models h = W x, x' = ReLU(W^T h + b) trained at once; see the module docstring."""

    Config = ToySuperpositionConfig

    def __init__(self, config: ToySuperpositionConfig):
        super().__init__(config)
        i, m, f = config.n_instances, config.n_hidden, config.n_features
        # Xavier-normal per instance: std sqrt(2 / (fan_in + fan_out))
        self.W = nn.Parameter(torch.randn(i, m, f) * math.sqrt(2.0 / (m + f)))
        self.b_final = nn.Parameter(torch.zeros(i, f))
        # derived from the config, so not saved with the weights
        self.register_buffer("feature_probability", config.probabilities(), persistent=False)
        self.register_buffer("importance", config.importances(), persistent=False)

    def forward(self, x: Tensor) -> ToySuperpositionOutput:
        x = self.check_input(x)
        hidden = torch.einsum("imf,bif->bim", self.W, x)
        recon = torch.relu(torch.einsum("imf,bim->bif", self.W, hidden) + self.b_final)
        return ToySuperpositionOutput(recon=recon, hidden=hidden)

    def instance_losses(self, x: Tensor, recon: Tensor) -> Tensor:
        """sum_f I_if (x_bif - x'_bif)^2, averaged over the batch: (B, I, F), (B, I, F) -> (n_instances,)."""
        return (self.importance * (x - recon).pow(2)).sum(-1).mean(0)

    def loss(self, batch, out: ToySuperpositionOutput) -> Loss:
        """Importance-weighted squared error: summed over features, mean over the batch, summed over instances.

        Summing over instances (rather than averaging) gives each instance the gradient it would get
        alone, so n_instances models in one batch train exactly like n_instances separate runs.
        terms: ``recon`` (the total) and ``mean_instance`` (total / n_instances, comparable
        across runs with different instance counts).
        """
        per_instance = self.instance_losses(self.inputs(batch), out.recon)
        total = per_instance.sum()
        return Loss(total, {"recon": total.detach(), "mean_instance": per_instance.mean().detach()})

    # -- data --------------------------------------------------------------------------------------
    def generate_batch(self, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        """Sparse features for every instance with its own feature probability: (batch_size, I, F)."""
        return toy_batch(batch_size, self.feature_probability.cpu(), self.config.n_features, generator=generator,
                         device=self.W.device)

    def batches(self, n_batches: int, batch_size: int = 1024, seed: int = 0) -> ToyBatches:
        """A seeded stream of batches for ``aelab.fit(model, model.batches(steps))``: one batch per step."""
        return ToyBatches(self.feature_probability.cpu(), self.config.n_features, batch_size, n_batches, seed)

    # -- geometry ------------------------------------------------------------------------------
    def feature_norms(self) -> Tensor:
        """||W_i|| of each feature in each instance, (n_instances, n_features)."""
        from aelab.metrics.sae import feature_norms  # metrics load on first use, like aelab.metrics

        return feature_norms(self.W.detach())

    def superposition(self) -> Tensor:
        """sum_{j != i} (W_hat_i . W_j)^2 per feature and instance, (n_instances, n_features)."""
        from aelab.metrics.sae import superposition

        return superposition(self.W.detach())

    def feature_dimensionality(self) -> Tensor:
        """D_i = ||W_i||^2 / sum_j (W_hat_i . W_j)^2 per feature and instance, (n_instances, n_features)."""
        from aelab.metrics.sae import feature_dimensionality

        return feature_dimensionality(self.W.detach())
