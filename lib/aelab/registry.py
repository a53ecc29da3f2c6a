"""The model registry: ``@register("name")`` on a model class, ``build``, ``list_models``, ``save``/``load``.

A saved model is one safetensors file whose header metadata holds the registry name and the config
as JSON, so ``load(path)`` rebuilds the right class with the right sizes and no pickle is involved.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from aelab.io import atomic_save_safetensors, read_safetensors

if TYPE_CHECKING:
    from aelab.nn.base import Model

FORMAT_VERSION = "1"

_REGISTRY: dict[str, type[Model]] = {}
M = TypeVar("M", bound=type)


def register(name: str) -> Callable[[M], M]:
    """Class decorator: make a model buildable as ``aelab.build(name, **config)``."""

    def wrap(cls: M) -> M:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"model name {name!r} is already registered by {_REGISTRY[name].__qualname__}")
        if not dataclasses.is_dataclass(getattr(cls, "Config", None)):
            raise TypeError(f"{cls.__qualname__} needs a dataclass attribute `Config` to be registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def _ensure_models_imported() -> None:
    import aelab.models  # noqa: F401  (importing registers every model)


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    _ensure_models_imported()
    return sorted(_REGISTRY)


def get(name: str) -> type[Model]:
    """The model class registered under ``name``; a clear error lists the known names."""
    _ensure_models_imported()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"no model named {name!r}; known models: {', '.join(sorted(_REGISTRY))}") from None


def make_config(cls: type[Model], config: dict[str, Any]) -> Any:
    """Build ``cls.Config`` from keyword arguments; unknown keys get an error naming the valid ones."""
    fields = {f.name: f for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(config) - set(fields))
    if unknown:
        raise TypeError(
            f"{cls.name}: unknown config field(s) {unknown}; valid fields are {sorted(fields)}"
        )
    # JSON turns tuples into lists: restore tuples where the default is a tuple.
    fixed = {}
    for key, value in config.items():
        default = fields[key].default
        fixed[key] = tuple(value) if isinstance(value, list) and isinstance(default, tuple) else value
    return cls.Config(**fixed)


def build(name: str, **config: Any) -> Model:
    """Build a registered model: ``build("vae", latent_dim=16)``. Fields are those of its ``Config``."""
    cls = get(name)
    return cls(make_config(cls, config))


def config_dict(model: Model) -> dict[str, Any]:
    """The model's config as a JSON-ready dict."""
    return dataclasses.asdict(model.config)


def header(model: Model) -> dict[str, str]:
    """Safetensors metadata that identifies a model: registry name, config JSON, format version."""
    return {
        "aelab_format": FORMAT_VERSION,
        "model": model.name,
        "config": json.dumps(config_dict(model)),
    }


def save(model: Model, path: str | Path) -> Path:
    """Write the model's weights (``model.export_state_dict()``) and config to one safetensors file, atomically."""
    path = Path(path)
    tensors = {k: v.detach() for k, v in model.export_state_dict().items()}
    atomic_save_safetensors(tensors, path, header(model))
    return path


def model_from_header(meta: dict[str, str], path: Path) -> Model:
    """Rebuild an (untrained) model from a file's metadata; clear errors for foreign files."""
    if "model" not in meta or "config" not in meta:
        raise ValueError(
            f"{path} is a safetensors file but not an aelab model (no 'model'/'config' metadata); "
            "save models with aelab.save(model, path)"
        )
    return build(meta["model"], **json.loads(meta["config"]))


def load(path: str | Path, device: str | None = None) -> Model:
    """Load a model saved by ``save`` (or a checkpoint written by ``fit``): class, config and weights."""
    path = Path(path)
    tensors, meta = read_safetensors(path)
    model = model_from_header(meta, path)
    if meta.get("kind") == "checkpoint":  # fit() stores weights under "model." beside optimizer state
        tensors = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    model.load_state_dict(tensors)
    return model.to(device) if device else model
