"""Building blocks shared by the models: the ``Model`` base class, ``Loss``, encoders and decoders."""

from aelab.nn.base import Loss, Model
from aelab.nn.conv import ConvDecoder, ConvEncoder, ConvGridDecoder, ConvGridEncoder
from aelab.nn.mlp import MLPDecoder, MLPEncoder, mlp

__all__ = ["ConvDecoder", "ConvEncoder", "ConvGridDecoder", "ConvGridEncoder", "Loss", "MLPDecoder", "MLPEncoder", "Model", "mlp"]
