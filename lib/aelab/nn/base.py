"""The base class of every aelab model and the named loss it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from aelab.train.loop import StepContext


@dataclass
class Loss:
    """A scalar objective to minimise and its named parts (for logs and plots).

    ``total`` is a 0-dim tensor (the batch mean of the per-example objective, unless a model says
    otherwise); ``terms`` maps names to 0-dim tensors, detached or not.
    """

    total: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)


class Model(nn.Module):
    """An autoencoder: ``Config`` dataclass, ``forward -> named output``, ``loss(batch, out) -> Loss``.

    Subclasses set ``input_shape`` from their config (the shape of one example, without batch) so
    that wrong inputs get a clear error before any matmul does. Models that need more than one
    optimizer or non-gradient updates override ``configure_optimizers`` and/or ``train_step``.
    """

    name: ClassVar[str] = "model"
    Config: ClassVar[type]

    def __init__(self, config: Any):
        super().__init__()
        self.config = config

    # -- inputs ---------------------------------------------------------------------------------
    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, without the batch dimension."""
        return tuple(self.config.input_shape)

    def inputs(self, batch: Tensor | tuple | list) -> Tensor:
        """The model input of a batch: the batch itself, or its first tensor for (x, y, ...) tuples."""
        return batch[0] if isinstance(batch, (tuple, list)) else batch

    def forward_args(self, batch: Tensor | tuple | list) -> tuple:
        """The positional arguments of ``forward`` for a batch: ``(x,)``, so ``out = model(*model.forward_args(batch))``.

        Conditional models override it to pass more of the batch (the CVAE returns ``(x, y)``);
        ``train_step`` and the tests call the model this way, so no loop needs to know which is which.
        """
        return (self.inputs(batch),)

    def check_input(self, x: Tensor) -> Tensor:
        """Raise a ValueError naming the expected and the received shape when they differ."""
        if not isinstance(x, Tensor):
            raise TypeError(f"{self.name} expects a torch.Tensor, got {type(x).__name__}")
        expected = self.input_shape
        if x.dim() != len(expected) + 1 or tuple(x.shape[1:]) != expected:
            hint = ""
            if x.numel() and x[0].numel() == torch.Size(expected).numel():
                hint = f"; reshape with x.view(-1, {', '.join(map(str, expected))})"
            raise ValueError(
                f"{self.name} expects input of shape (batch, {', '.join(map(str, expected))}), "
                f"got {tuple(x.shape)}{hint}"
            )
        if not x.is_floating_point():
            raise TypeError(f"{self.name} expects a floating-point tensor, got {x.dtype}; use x.float() / 255")
        return x

    # -- training hooks ------------------------------------------------------------------------
    def configure_optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        """One Adam over every parameter (fused where supported: ``aelab.train.optim.adam``); override for several optimizers."""
        from aelab.train.optim import adam  # aelab.train imports this module

        return [adam(self.parameters(), lr=lr)]

    def loss(self, batch: Any, out: Any) -> Loss:  # pragma: no cover - every model overrides it
        raise NotImplementedError

    def train_step(self, batch: Any, ctx: StepContext) -> Loss:
        """One optimisation step on a batch: forward, loss, backward, update. ``fit`` calls this."""
        with ctx.autocast():
            out = ctx.model(*self.forward_args(batch))
            loss = self.loss(batch, out)
        ctx.update(loss.total)
        return loss

    def export_state_dict(self) -> dict[str, Tensor]:
        """The weights ``aelab.save`` writes: the state dict, unless a model folds something into it first.

        Sparse autoencoders trained on normalised activations fold the normalisation into their
        weights here, so a saved SAE reads raw activations. Training checkpoints keep the live state.
        """
        return self.state_dict()

    def extra_repr(self) -> str:
        return f"name={self.name!r}"
