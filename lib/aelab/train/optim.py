"""Optimisers and memory settings that make a CPU training step cheaper without changing its numbers.

* ``adam``: ``Adam``, torch's Adam with its fused kernel (one vectorised pass over each parameter,
  on CPU since torch 2.4 and on CUDA) wherever every parameter allows it, else the default
  implementation. Same update rule; the two agree to rounding (``tests/lib/test_fast_paths.py``).
  For the 650k-parameter MNIST VAE the fused step takes about 0.6 ms on 2 cores against 3 ms.
  ``Adam`` hands the fused kernel every tensor in memory order: a transposed parameter (an SAE's
  W_enc is a clone of W_dec^T) is updated in place, without the copy in and out torch's kernel
  makes of a non-contiguous tensor (2.0 ms against 0.6 ms for a (384, 4096) W_enc), and a
  gradient laid out unlike its parameter is copied into the parameter's layout first (torch
  2.15's fused CPU kernel otherwise pairs the wrong elements).
* ``tune_cpu_allocator``: a training step on a CPU allocates and frees the same large buffers
  every step (a (4096, 4096) fp32 pre-activation is 64 MB). glibc serves blocks above 32 MB with a
  fresh ``mmap`` and returns them with ``munmap``, so every step pays a page fault for each 4 kB of
  each buffer: writing a fresh (4096, 4096) tensor costs about 15 ms where reusing memory costs
  3 ms. Keeping freed memory in the heap (no ``mmap`` for allocations, trim only above
  ``keep_bytes`` of free memory) removes that cost, as jemalloc or tcmalloc would.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from collections.abc import Iterable

import torch
from torch import Tensor, nn

_FUSED_DEVICES = ("cpu", "cuda")


def fused_is_supported(params: Iterable[nn.Parameter]) -> bool:
    """Whether torch's fused Adam accepts these parameters: all floating point, on a CPU or a CUDA device."""
    params = list(params)
    return bool(params) and all(p.is_floating_point() and p.device.type in _FUSED_DEVICES for p in params)


def _memory_order(t: Tensor) -> list[int] | None:
    """The permutation of t's dimensions that makes it contiguous (a view, no copy), or None if there is none
    (t already contiguous, overlapping or with gaps)."""
    if t.is_contiguous():
        return None
    order = sorted(range(t.dim()), key=lambda d: (-t.stride(d), -t.shape[d]))
    return order if t.permute(order).is_contiguous() else None


def _like(t: Tensor, p: Tensor) -> Tensor:
    """t with p's strides: itself if it has them, else a copy laid out as p is."""
    return t if t.stride() == p.stride() else torch.empty_like(p, dtype=t.dtype).copy_(t)


class Adam(torch.optim.Adam):
    """``torch.optim.Adam`` that gives its fused kernel each parameter, gradient and state in memory order.

    The update rule, options, state and ``state_dict`` are torch's. Only with ``fused=True``, before the
    kernel runs: a gradient (or a state tensor loaded from elsewhere) laid out unlike its parameter is
    copied into the parameter's layout, and a parameter that is contiguous once its dimensions are
    permuted (a transposed matrix) is passed, with its gradient and state, as that permuted view. The
    kernel is elementwise, so the update is the same; it writes into the parameter's own memory.
    """

    def _init_group(self, group, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps):
        has_complex = super()._init_group(group, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps)
        if not group["fused"]:
            return has_complex
        moments = {"exp_avg": exp_avgs, "exp_avg_sq": exp_avg_sqs}
        if group["amsgrad"]:
            moments["max_exp_avg_sq"] = max_exp_avg_sqs
        for i, p in enumerate(params):  # every step: only stride comparisons unless a layout differs
            stride = p.stride()
            if grads[i].stride() != stride:
                grads[i] = _like(grads[i], p)
            for key, lst in moments.items():  # lst[i] is self.state[p][key]: replaced there once, for good
                if lst[i].stride() != stride:
                    self.state[p][key] = lst[i] = _like(lst[i], p)
            order = _memory_order(p)
            if order is not None:
                params[i], grads[i] = p.permute(order), grads[i].permute(order)
                for lst in moments.values():
                    lst[i] = lst[i].permute(order)
        return has_complex


def adam(params, lr: float, **kwargs) -> Adam:
    """``Adam(params, lr, **kwargs)``, fused where ``fused_is_supported`` (pass ``fused=False`` to opt out)."""
    params = list(params)
    flat = [p for g in params for p in g["params"]] if params and isinstance(params[0], dict) else params
    kwargs.setdefault("fused", fused_is_supported(flat) or None)
    return Adam(params, lr=lr, **kwargs)


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_tuned = False


def tune_cpu_allocator(keep_bytes: int = 1 << 30) -> bool:
    """Keep large freed CPU buffers for reuse instead of returning them to the OS (glibc on Linux only).

    ``fit`` calls it once per process when it trains on a CPU. Memory a step frees stays with the
    process (up to ``keep_bytes`` of free memory at the top of the heap) for the next step to
    reuse. It changes no numbers. Returns whether the allocator is tuned; set the environment
    variable ``AELAB_CPU_ALLOCATOR=default`` to leave it alone (e.g. when running under jemalloc).
    """
    global _tuned
    if _tuned:
        return True
    if os.environ.get("AELAB_CPU_ALLOCATOR", "").lower() == "default" or platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _tuned = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, min(keep_bytes, 2**31 - 1)))
    return _tuned
