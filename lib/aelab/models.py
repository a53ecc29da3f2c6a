"""Import every model module so that each registers itself (used by ``aelab.list_models``)."""

from aelab.ae import autoencoder  # noqa: F401
from aelab.vae import cvae, info_vae, iwae, swae, vae, vq_vae, wae  # noqa: F401
