"""aelab: the course package of "Autoencoders and representations — from VAEs to sparse autoencoders".

Every model, objective, metric, data set and the training loop the lectures and assignments use::

    import aelab
    aelab.seed_everything(0)
    model = aelab.build("vae", latent_dim=16)
    history = aelab.fit(model, aelab.data.mnist("train"), epochs=aelab.budget(full=10, fast=1))
"""

from aelab import functional
from aelab._env import budget, data_dir, device, is_fast, seed_everything
from aelab.nn.base import Loss, Model
from aelab.registry import build, list_models, load, register, save
from aelab.train import History, fit

__version__ = "0.1.0"

__all__ = [
    "History",
    "Loss",
    "Model",
    "budget",
    "build",
    "data",
    "data_dir",
    "device",
    "fit",
    "functional",
    "is_fast",
    "list_models",
    "load",
    "register",
    "save",
    "seed_everything",
]


def __getattr__(name: str):
    # Submodules that pull in heavier dependencies load on first use: ``aelab.data``, ``aelab.viz``.
    if name in {"data", "viz", "metrics", "testing"}:
        import importlib

        return importlib.import_module(f"aelab.{name}")
    raise AttributeError(f"module 'aelab' has no attribute {name!r}")
