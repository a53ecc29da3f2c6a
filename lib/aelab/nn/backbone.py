"""Pick an encoder/decoder pair from a config's ``backbone``, ``hidden`` and ``channels`` fields."""

from __future__ import annotations

from typing import Any

from torch import nn

from aelab.nn.conv import ConvDecoder, ConvEncoder
from aelab.nn.mlp import MLPDecoder, MLPEncoder

BACKBONES = ("mlp", "conv")


def _check(config: Any) -> None:
    if config.backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {config.backbone!r}")


def make_encoder(config: Any, out_dim: int) -> nn.Module:
    """(B, *input_shape) -> (B, out_dim)."""
    _check(config)
    if config.backbone == "mlp":
        return MLPEncoder(config.input_shape, config.hidden, out_dim, linear=getattr(config, "linear", False))
    return ConvEncoder(config.input_shape, out_dim, channels=config.channels, hidden=config.hidden[-1])


def make_decoder(config: Any) -> nn.Module:
    """(B, latent_dim) -> (B, *input_shape)."""
    _check(config)
    if config.backbone == "mlp":
        return MLPDecoder(config.latent_dim, tuple(reversed(config.hidden)), config.input_shape, linear=getattr(config, "linear", False))
    return ConvDecoder(config.latent_dim, config.input_shape, channels=config.channels, hidden=config.hidden[-1])
