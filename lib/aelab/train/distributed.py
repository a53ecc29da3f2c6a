"""Data-parallel training under ``torchrun``: one process per device, gradients averaged across them.

``fit`` calls ``setup`` first. A script started by ``torchrun --nproc_per_node N`` (which sets
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``) then joins a process group (NCCL on CUDA, gloo on CPU),
takes device ``cuda:LOCAL_RANK`` (or the CPU), and trains a ``DistributedDataParallel`` copy of the
model: every process sees the same shuffled order, takes its slice of each batch, and the gradients
are averaged before each optimiser step, so ``batch_size`` stays the global batch and N processes
follow the single-process run (exactly, up to float summation order, when ``batch_size`` is a
multiple of N and the loss is a batch mean). Without torchrun every function here is a no-op.

Non-gradient updates must agree across processes: ``all_gather_rows`` and ``any_across`` let a
model see the whole batch where it needs to (the SAEs' first-batch initialisation and their
dead-latent counts do); buffers are broadcast from rank 0 at every forward pass.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """Whether a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if active() else 1


def setup(device: torch.device) -> torch.device:
    """Join the process group torchrun describes (once) and return this process's device.

    ``device`` is what the caller asked for; a CUDA device becomes ``cuda:LOCAL_RANK``. Does nothing
    outside torchrun.
    """
    if not launched():
        return device
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed; run a single process")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        atexit.register(_shutdown)
    return device


def _shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel when a process group runs (its parameters broadcast from rank 0), else itself."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # find_unused_parameters: models with several optimizers leave some parameters out of a forward pass
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def shard(batch_index: Tensor) -> Tensor:
    """This process's slice of a global batch's example indices (contiguous, sizes differing by at most 1)."""
    return batch_index.tensor_split(world_size())[rank()] if active() else batch_index


def shard_batch(batch):
    """This process's slice of a batch from a data loader (tensors split along their first dimension)."""
    if not active():
        return batch
    if isinstance(batch, Tensor):
        return batch.tensor_split(world_size())[rank()]
    if isinstance(batch, (tuple, list)):
        parts = [shard_batch(b) for b in batch]
        return type(batch)(*parts) if hasattr(batch, "_fields") else type(batch)(parts)
    if isinstance(batch, dict):
        return {k: shard_batch(v) for k, v in batch.items()}
    return batch


def broadcast_int(value: int) -> int:
    """Rank 0's ``value`` on every process."""
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.long, device=_comm_device())
    dist.broadcast(t, 0)
    return int(t.item())


def mean_across(t: Tensor) -> Tensor:
    """The mean of ``t`` over processes (a new tensor)."""
    if not active():
        return t
    out = t.detach().clone().to(_comm_device())
    dist.all_reduce(out)
    return (out / world_size()).to(t.device)


def any_across(mask: Tensor) -> Tensor:
    """Elementwise OR of a bool tensor over processes."""
    if not active():
        return mask
    out = mask.to(torch.uint8, copy=True).to(_comm_device())
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out.to(mask.device).bool()


def all_gather_rows(x: Tensor) -> Tensor:
    """Every process's rows of x (N_r, ...) concatenated in rank order: the whole global batch."""
    if not active():
        return x
    sizes = [torch.zeros(1, dtype=torch.long, device=_comm_device()) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], device=_comm_device()))
    sizes = [int(s.item()) for s in sizes]
    padded = torch.zeros((max(sizes), *x.shape[1:]), dtype=x.dtype, device=_comm_device())
    padded[: x.shape[0]] = x.detach().to(_comm_device())
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)]).to(x.device)


def average_gradients(params: Iterable[nn.Parameter]) -> None:
    """Average the gradients of ``params`` over processes in place (for backward passes DDP did not see)."""
    if not active():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch._utils._flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= world_size()
    for g, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
        g.copy_(synced)


def broadcast_(*tensors: Tensor) -> None:
    """Overwrite ``tensors`` in place with rank 0's values (after a random, rank-local update)."""
    if not active():
        return
    for t in tensors:
        with torch.no_grad():
            buf = t.detach().to(_comm_device())
            dist.broadcast(buf, 0)
            t.copy_(buf)


def _comm_device() -> torch.device:
    """Where collective buffers live: the current CUDA device under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
