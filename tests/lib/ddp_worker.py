"""Training runs that tests/lib/test_distributed.py does in one process and under torchrun.

``python ddp_worker.py OUT_DIR`` (started by torchrun) writes each run's parameters and logged
losses to ``OUT_DIR/<run>-rank<r>.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import aelab

RUNS = {
    # deterministic models: N processes must follow the single-process run
    "ae": dict(model=dict(name="ae", input_shape=(12,), hidden=(16,), latent_dim=3, likelihood="gaussian"), n=48),
    "sae_topk": dict(model=dict(name="sae_topk", d_in=12, d_sae=48, k=4, dead_steps=2, normalize_activations=True), n=48),
    # two optimizers, the second one's backward outside DDP: parameters must still agree across processes
    "factor_vae": dict(model=dict(name="factor_vae", input_shape=(12,), backbone="mlp", hidden=(16,), latent_dim=3,
                                  likelihood="gaussian", disc_hidden=(8,)), n=48),
}


def run(name: str, device: str = "cpu") -> dict:
    """Train the run ``name`` on fixed data; return its parameters and buffers, logged losses and the batch sizes its forward saw."""
    spec = RUNS[name]
    aelab.seed_everything(0)
    cfg = dict(spec["model"])
    model = aelab.build(cfg.pop("name"), **cfg)
    x = torch.randn(spec["n"], 12, generator=torch.Generator().manual_seed(1))
    seen: list[int] = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]) if torch.is_grad_enabled() else None)
    h = aelab.fit(model, x, epochs=3, batch_size=16, lr=1e-2, device=device, progress=False, log_every=1)
    return {"params": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "logs": h.logs, "batch_sizes": seen}


if __name__ == "__main__":
    from aelab.train import distributed

    out = Path(sys.argv[1])
    device = sys.argv[2] if len(sys.argv) > 2 else "cpu"
    for name in RUNS:
        torch.save(run(name, device), out / f"{name}-rank{distributed.rank()}.pt")
