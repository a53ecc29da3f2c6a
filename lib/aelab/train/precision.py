"""Which precision is worth asking ``fit`` for on this machine."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import torch

# CPU flags of native bf16 matrix arithmetic: AMX tiles (Sapphire Rapids and later) and AVX512-BF16.
_NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def _first_cpu(cpuinfo: str) -> dict[str, str]:
    """The fields of the first processor in the text of /proc/cpuinfo (its lines up to the first blank one)."""
    fields = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        name, sep, value = line.partition(":")
        if sep:
            fields.setdefault(name.strip(), value.strip())
    return fields


@functools.cache
def _cpuinfo() -> dict[str, str]:
    """The fields of the first CPU in /proc/cpuinfo (Linux), read once; empty elsewhere."""
    try:
        return _first_cpu(Path("/proc/cpuinfo").read_text())
    except OSError:
        return {}


def _cpu_flags() -> frozenset[str]:
    """The feature flags of the first CPU in /proc/cpuinfo (Linux); empty elsewhere."""
    return frozenset(_cpuinfo().get("flags", "").split())


def cpu_name() -> str:
    """The CPU's model name ("AMD EPYC", "Intel(R) Xeon(R) ..."), from /proc/cpuinfo on Linux, else
    what ``platform`` knows: timings name the machine they come from."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


AVX2_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",  # torch's own vectorised kernels
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN: convolutions, bf16 and some fp32 products
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",  # MKL's matrix products
    "AELAB_BF16": "0",  # bf16_is_fast() says False: fp32 throughout
}
"""Environment variables under which a new process computes as on a CPU with AVX2 and nothing newer
(most laptops): on a server with AVX-512 and AMX, what ``python -m aelab.lectures --avx2`` and
``python -m aelab.bench --avx2`` give their kernels and processes. Read when torch loads, so they
act only on processes started with them."""


def bf16_is_fast(device: str | torch.device | None = None) -> bool:
    """True where bf16 autocast speeds up matmuls: a CUDA device with bf16 support, or a CPU with AMX / AVX512-BF16.

    Elsewhere bf16 on a CPU is emulated and slower than fp32, so lectures pass
    ``precision="bf16" if bf16_is_fast() else "fp32"`` to ``fit``. ``device`` defaults to ``aelab.device()``.
    ``AELAB_BF16=0`` in the environment makes it False everywhere (fp32 throughout).
    """
    from aelab._env import bf16_allowed
    from aelab._env import device as default_device

    if not bf16_allowed():
        return False
    dev = torch.device(device) if device is not None else default_device()
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if dev.type == "cpu":
        return platform.machine().lower() in ("x86_64", "amd64") and any(f in _cpu_flags() for f in _NATIVE_BF16_FLAGS)
    return False
