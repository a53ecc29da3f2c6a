"""Training checkpoints: model weights, optimizer state, RNG state and history in one safetensors file.

Tensors go in the file body (``model.*``, ``optim{i}.state.{param}.{key}``, ``rng.*``); everything
else (step, epoch, optimizer hyper-parameters, history) goes in the header metadata as JSON. The
file is written atomically, so an interrupted save never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from aelab.io import atomic_save_safetensors, read_safetensors
from aelab.registry import header


@dataclass
class TrainState:
    """Where training stands: the next step to run, its epoch and position in the epoch."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


def _flatten_optimizer(i: int, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim{i}.state.{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(i: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    prefix = f"optim{i}.state."
    for name, value in tensors.items():
        if name.startswith(prefix):
            pid, key = name[len(prefix):].split(".", 1)
            state.setdefault(int(pid), {})[key] = value
    for pid, scalars in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(scalars)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizers: list[torch.optim.Optimizer],
    state: TrainState,
    history: dict[str, Any],
    shuffle_rng: torch.Tensor,
) -> Path:
    """Write everything needed to resume training bit-for-bit, atomically."""
    path = Path(path)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    optim_meta = []
    for i, opt in enumerate(optimizers):
        t, m = _flatten_optimizer(i, opt)
        tensors.update(t)
        optim_meta.append(m)
    tensors["rng.shuffle"] = shuffle_rng
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    meta = header(model) | {
        "kind": "checkpoint",
        "state": json.dumps(state.__dict__),
        "optimizers": json.dumps(optim_meta),
        "history": json.dumps(history),
    }
    atomic_save_safetensors(tensors, path, meta)
    return path


def load_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizers: list[torch.optim.Optimizer],
) -> tuple[TrainState, dict[str, Any], torch.Tensor]:
    """Restore model, optimizers and RNG from ``path``; return (state, history, shuffle RNG state).

    Refuses a checkpoint of another model or config, naming both, rather than loading mismatched weights.
    """
    path = Path(path)
    tensors, meta = read_safetensors(path)
    if meta.get("kind") != "checkpoint":
        raise ValueError(f"{path} is not a training checkpoint written by aelab.fit (no 'kind: checkpoint' metadata)")
    mine = header(model)
    if (meta.get("model"), json.loads(meta.get("config", "{}"))) != (mine["model"], json.loads(mine["config"])):
        raise ValueError(
            f"checkpoint {path} was written for model {meta.get('model')!r} with config {meta.get('config')}, "
            f"but fit() was given {mine['model']!r} with config {mine['config']}; "
            "use another checkpoint path, delete the file, or pass resume=False"
        )
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    optim_meta = json.loads(meta["optimizers"])
    if len(optim_meta) != len(optimizers):
        raise ValueError(f"checkpoint {path} holds {len(optim_meta)} optimizer(s), the model uses {len(optimizers)}")
    for i, (opt, m) in enumerate(zip(optimizers, optim_meta)):
        sd = _unflatten_optimizer(i, tensors, m)
        opt.load_state_dict(sd)
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    state = TrainState(**json.loads(meta["state"]))
    return state, json.loads(meta["history"]), tensors["rng.shuffle"]
