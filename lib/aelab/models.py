"""Import every model module so that each registers itself (used by ``aelab.list_models``)."""

from aelab.ae import autoencoder  # noqa: F401
from aelab.vae import beta_tcvae, beta_vae, cvae, factor_vae, info_vae, iwae, swae, vae, vq_vae, wae  # noqa: F401
from aelab.sae import batch_topk, gated, jumprelu, ksparse, matryoshka, relu, topk, toy_superposition  # noqa: F401
from aelab.vae import time_vae, topdis  # noqa: F401
from aelab.vae import ss_vae  # noqa: F401
from aelab.vae import drnet  # noqa: F401
