"""Benchmarks: ``python -m aelab.bench [--quick] [--json FILE]`` (``make bench``).

Each benchmark times aelab against a baseline run in the same process on the same data and reports
the ratio, so the numbers compare across machines; nothing here is asserted in tests.

1. MNIST VAE epoch: ``aelab.fit`` vs the loop of PyTorch's VAE example (a DataLoader over a
   per-item dataset, batch 128, the 784-400-20 MLP VAE), same model, optimiser and batches.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
import torch.nn.functional as F
from torch import nn

import aelab
from aelab.functional import kl_normal


class ExampleVAE(nn.Module):
    """The 784-400-20 MLP VAE of PyTorch's examples (vae/main.py), written independently."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)
        self.fc3, self.fc4 = nn.Linear(20, 400), nn.Linear(400, 784)

    def forward(self, x):
        h = F.relu(self.fc1(x.view(-1, 784)))
        mu, logvar = self.fc21(h), self.fc22(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.fc4(F.relu(self.fc3(z))), mu, logvar


class _ItemDataset(torch.utils.data.Dataset):
    """One example at a time, as torchvision's datasets serve MNIST."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def baseline_epoch(x, y, batch_size: int) -> tuple[float, float]:
    """(seconds, mean loss per example) of one epoch of the example-style loop."""
    model = ExampleVAE()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(_ItemDataset(x, y), batch_size=batch_size, shuffle=True)
    total, n = 0.0, 0
    t = time.perf_counter()
    for xb, _ in loader:
        logits, mu, logvar = model(xb)
        bce = F.binary_cross_entropy_with_logits(logits, xb.view(-1, 784), reduction="sum")
        loss = bce + kl_normal(mu, logvar).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        total, n = total + loss.item(), n + len(xb)
    return time.perf_counter() - t, total / n


def aelab_epoch(x, y, batch_size: int) -> tuple[float, float]:
    """(seconds, mean loss per example) of one epoch of aelab.fit on the same architecture."""
    model = aelab.build("vae", hidden=(400,), latent_dim=20)
    t = time.perf_counter()
    h = aelab.fit(model, (x, y), epochs=1, batch_size=batch_size, device="cpu", progress=False, log_every=10**9)
    return time.perf_counter() - t, h.logs[-1]["recon"] + h.logs[-1]["kl"]


def run(quick: bool) -> list[dict]:
    train = aelab.data.mnist("train")
    n = 10_000 if quick else len(train.x)
    x, y = train.x[:n], train.y[:n]
    rows = []
    aelab.seed_everything(0)
    aelab_epoch(x[:512], y[:512], 128)  # warm-up of allocators and kernels
    base_s, base_loss = baseline_epoch(x, y, 128)
    ours_s, ours_loss = aelab_epoch(x, y, 128)
    rows.append({
        "benchmark": f"MNIST VAE epoch ({n} images, batch 128)",
        "baseline": "PyTorch example loop (DataLoader)",
        "baseline_s": round(base_s, 3),
        "aelab_s": round(ours_s, 3),
        "speedup": round(base_s / ours_s, 2),
        "note": f"loss/example baseline {base_loss:.1f}, aelab {ours_loss:.1f} (last log interval)",
    })
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, about a minute")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    rows = run(args.quick)
    machine = f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, cpu"
    print(f"machine: {machine}\n")
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
