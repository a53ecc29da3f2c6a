"""Fixtures shared by the package tests."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode


@pytest.fixture
def float64():
    """Closed-form comparisons in double precision with a fixed seed; the default dtype is restored."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(old)


class HostReads(TorchDispatchMode):
    """Records each operator that reads a tensor's value on the host, or sizes its output by the values
    (``bool(t)``, ``.item()``, ``nonzero``, ``bincount``, ...): on a CUDA tensor each one makes the host
    wait until the device has run everything queued before it. Seen at the dispatcher, so the
    operators of backward passes count too. Copies of host values to the device (``torch.tensor(v,
    device="cuda")``), which wait too, look like CPU work here: the ``gpu`` tests' sync debug mode sees them."""

    WAITS = {"_local_scalar_dense", "nonzero", "bincount", "masked_select", "unique", "_unique", "_unique2",
             "unique_consecutive", "unique_dim", "histc", "repeat_interleave"}

    MASK_INDEXED = {"index", "index_put", "index_put_", "_index_put_impl_"}  # t[mask]: lists the mask's non-zeros

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in self.WAITS or (name in self.MASK_INDEXED and any(
                isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in args[1])):
            self.calls.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.fixture
def as_on_cuda(monkeypatch):
    """Run the code paths taken on CUDA, on the CPU: checks stay on the device, torch.topk selects."""
    import aelab._env
    from aelab.functional import sparsity

    monkeypatch.setattr(aelab._env, "host_sync_is_cheap", lambda device: False)
    monkeypatch.setattr(sparsity, "_row_topk", lambda pre, k: torch.topk(pre, k, dim=-1))


@pytest.fixture
def host_reads():
    """A fresh ``HostReads`` mode: enter it (``with host_reads:``) around the code to watch."""
    return HostReads()
