"""Benchmarks: ``python -m aelab.bench [--quick] [--json FILE] [--device cuda]`` (``make bench``, ``make bench-gpu``).

Each benchmark times aelab against a baseline run in the same process on the same data and reports
the ratio, so the numbers compare across machines; nothing here is asserted in tests. The table
(Markdown) names the machine, torch version, thread count and device.

1. MNIST VAE epoch: ``aelab.fit`` vs the loop of PyTorch's VAE example (torchvision's MNIST
   dataset with ``ToTensor``, read from IDX files written from the same images, a DataLoader,
   batch 128, the 784-400-20 MLP VAE), same model, optimiser and batch size.
2. SAE training throughput (tokens/s) at d_in 384, 4096 latents, batch 4096: TopK (k 32), ReLU + L1
   and JumpReLU through ``aelab.fit`` in fp32 and, where ``bf16_is_fast``, bf16 autocast, vs a dense
   implementation written as tutorials write it (fp32). Each step's time is also given relative to
   one encoder matmul (4096 x 384 @ 384 x 4096) in the same precision (``--quick``: batch 1024), the
   fastest of its timings before and after the steps.
   These start from initialisation, where half of a ReLU or JumpReLU code fires; two more rows start
   both loops from the same weights with an L0 of about 64, the sparsity training reaches, where
   aelab's ReLU and JumpReLU steps use only the code's non-zeros after the encoder product.
   SAELens's TopK training step runs on the same activations when ``sae_lens`` is importable
   (``make bench-saelens`` runs this part from an environment that has it).
3. dSprites conv VAE images/s (``aelab.fit`` vs a DataLoader loop), and activation collection
   tokens/s for SmolLM2 (the forward stopped at the hooked layer vs the full forward) when
   ``aelab.data.lm`` and its weights are installed.

The baselines and aelab run one after the other in two fresh processes of the same run (``--side``),
so that a process-wide setting aelab makes (``fit`` keeps freed CPU memory for reuse,
``aelab.train.optim.tune_cpu_allocator``) cannot speed up a baseline measured after it. An
ablation row runs the tutorial SAE loop under that setting, to show how much of the gain it is.

``--device cuda`` runs both sides on the GPU (data, models and the baselines' loops there; each
timer waits for the device to finish, ``torch.cuda.synchronize``), and the table then checks the
H100 goals of the course (``GPU_GOALS``): SAE TopK in bf16 at 5M tokens/s or more, an MNIST VAE
epoch in 0.3 s or less.

``--avx2`` starts both sides' processes with torch, oneDNN and MKL limited to AVX2 and bf16 off
(``aelab.train.precision.AVX2_ENV``): on a server CPU, the speed-ups a laptop without AVX-512 or AMX
would see (fp32 rows only).

A full run measures each side ``--repeats`` times (3; ``--quick``: 1), alternating baseline and
aelab processes so that a slow spell of a shared machine falls on both; the table gives each
side's median and their ratio, and with several runs the range of the ratios of the runs
(baseline run r against aelab run r, measured next to each other). The JSON keeps every run's value.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn

import aelab
from aelab.functional import kl_normal
from aelab.train.precision import AVX2_ENV, cpu_name


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


def _write_idx(path: str, array, magic: int) -> None:
    """An MNIST IDX file: big-endian magic number and dimensions, then the uint8 values."""
    import numpy as np

    array = np.ascontiguousarray(array, dtype=np.uint8)
    with open(path, "wb") as f:
        f.write(np.array([magic, *array.shape], dtype=">i4").tobytes())
        f.write(array.tobytes())


def example_dataset(x, y, root: str):
    """The training images as PyTorch's VAE example reads them: ``torchvision.datasets.MNIST(root, train=True,
    transform=ToTensor())``, one PIL image converted per item. The IDX files it reads are written to
    ``root`` from ``x`` (N, 1, 28, 28) in [0, 1] and ``y`` (nothing is downloaded); without torchvision,
    a per-item dataset over the tensors."""
    try:
        from torchvision import datasets, transforms
    except ImportError:
        return _ItemDataset(x, y)
    raw = os.path.join(root, "MNIST", "raw")
    os.makedirs(raw, exist_ok=True)
    images = (x.reshape(-1, 28, 28) * 255).round().to(torch.uint8).numpy()
    for split, (imgs, labels) in {"train": (images, y.numpy()), "t10k": (images[:1], y[:1].numpy())}.items():
        _write_idx(os.path.join(raw, f"{split}-images-idx3-ubyte"), imgs, 0x803)
        _write_idx(os.path.join(raw, f"{split}-labels-idx1-ubyte"), labels, 0x801)
    return datasets.MNIST(root, train=True, download=False, transform=transforms.ToTensor())


def _clock(device: str | torch.device) -> float:
    """``time.perf_counter()`` once the device's queued work is done, so that a difference of two
    readings times the work between them (on a CPU, the plain clock)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def baseline_epoch(x, y, batch_size: int, device: str | torch.device = "cpu") -> tuple[float, float]:
    """(seconds, mean loss per example) of one epoch of the example-style loop."""
    model = ExampleVAE().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with tempfile.TemporaryDirectory() as root:
        return _example_epoch(model, opt, example_dataset(x, y, root), batch_size, device)


def _example_epoch(model, opt, dataset, batch_size: int, device: str | torch.device = "cpu") -> tuple[float, float]:
    # on a GPU, the example's loader settings: one worker process and pinned memory
    cuda = torch.device(device).type == "cuda"
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                         **(dict(num_workers=1, pin_memory=True) if cuda else {}))
    total, n = 0.0, 0
    t = _clock(device)
    for xb, _ in loader:
        xb = xb.to(device)
        logits, mu, logvar = model(xb)
        bce = F.binary_cross_entropy_with_logits(logits, xb.view(-1, 784), reduction="sum")
        loss = bce + kl_normal(mu, logvar).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        total, n = total + loss.item(), n + len(xb)
    return _clock(device) - t, total / n


def aelab_epoch(x, y, batch_size: int, device: str | torch.device = "cpu") -> tuple[float, float]:
    """(seconds, mean loss per example) of one epoch of aelab.fit on the same architecture (data given on the host)."""
    model = aelab.build("vae", hidden=(400,), latent_dim=20)
    t = _clock(device)
    h = aelab.fit(model, (x, y), epochs=1, batch_size=batch_size, device=device, progress=False, log_every=10**9)
    return _clock(device) - t, h.logs[-1]["recon"] + h.logs[-1]["kl"]


def vae_measure(quick: bool, side: str, device: str = "cpu") -> list[dict]:
    train = aelab.data.mnist("train")
    n = 10_000 if quick else len(train.x)
    x, y = train.x[:n], train.y[:n]
    aelab.seed_everything(0)
    epoch = baseline_epoch if side == "baseline" else aelab_epoch
    epoch(x[:512], y[:512], 128, device)  # warm-up of allocators and kernels
    seconds, loss = epoch(x, y, 128, device)
    return [_measure("vae", f"MNIST VAE epoch ({n} images, batch 128)", "PyTorch example loop (torchvision MNIST, ToTensor, DataLoader)", "images/s",
                     n / seconds, f"{side}: epoch {seconds:.2f} s, loss/example {loss:.1f}")]


# -- 2. sparse autoencoders ------------------------------------------------------------------------

class NaiveSAE(nn.Module):
    """A dense SAE as tutorials write it: dense code, dense decoder matmul, renormalise W_dec after the step."""

    def __init__(self, kind: str, d_in: int, d_sae: int, k: int = 32, l1: float = 1e-3, l0: float = 1e-3):
        super().__init__()
        W = F.normalize(torch.randn(d_sae, d_in), dim=1)
        self.W_enc, self.b_enc = nn.Parameter(W.T.clone()), nn.Parameter(torch.zeros(d_sae))
        self.W_dec, self.b_dec = nn.Parameter(W.clone()), nn.Parameter(torch.zeros(d_in))
        self.log_threshold = nn.Parameter(torch.full((d_sae,), math.log(1e-3)))
        self.kind, self.k, self.l1, self.l0 = kind, k, l1, l0

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        pre = (x - self.b_dec) @ self.W_enc + self.b_enc
        mse_penalty = 0.0
        if self.kind == "topk":
            top = torch.topk(pre, self.k, dim=-1)
            acts = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
        elif self.kind == "relu":
            acts = torch.relu(pre)
            mse_penalty = self.l1 * acts.abs().sum(-1).mean()
        else:  # jumprelu with a straight-through estimator of the threshold's gradient
            theta = self.log_threshold.exp()
            acts = _NaiveJump.apply(pre, theta)
            mse_penalty = self.l0 * _NaiveStep.apply(pre, theta).sum(-1).mean()
        recon = acts @ self.W_dec + self.b_dec
        return (recon - x).pow(2).sum(-1).mean() + mse_penalty


class _NaiveJump(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, theta):
        ctx.save_for_backward(z, theta)
        return z * (z > theta)

    @staticmethod
    def backward(ctx, g):
        z, theta = ctx.saved_tensors
        near = ((z - theta).abs() < 5e-4).float()
        return g * (z > theta), (-(theta / 1e-3) * near * g).sum(0)


class _NaiveStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, theta):
        ctx.save_for_backward(z, theta)
        return (z > theta).float()

    @staticmethod
    def backward(ctx, g):
        z, theta = ctx.saved_tensors
        near = ((z - theta).abs() < 5e-4).float()
        return torch.zeros_like(z), (-(1 / 1e-3) * near * g).sum(0)


def naive_sae_steps(kind: str, x: torch.Tensor, batch: int, steps: int, d_sae: int, k: int,
                    start: nn.Module | None = None) -> float:
    """Seconds per step of the tutorial loop (after one warm-up step) on x's device; ``start``: an SAE whose
    weights it starts from."""
    model = NaiveSAE(kind, x.shape[1], d_sae, k).to(x.device)
    if start is not None:
        with torch.no_grad():
            for name in ("W_enc", "b_enc", "W_dec", "b_dec", "log_threshold"):
                if hasattr(start, name):
                    getattr(model, name).copy_(getattr(start, name))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step(i):
        xb = x[(i * batch) % len(x):][:batch]
        loss = model.loss(xb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.W_dec.data = model.W_dec / model.W_dec.norm(dim=1, keepdim=True)

    step(0)
    t = _clock(x.device)
    for i in range(steps):
        step(i + 1)
    return (_clock(x.device) - t) / steps


def aelab_sae_steps(name: str | nn.Module, x: torch.Tensor, batch: int, steps: int, precision: str, **cfg) -> float:
    """Seconds per step of ``aelab.fit`` on an initialised SAE (after a warm-up run) on x's device; ``name`` may
    be the SAE itself."""
    if isinstance(name, nn.Module):
        model = name.to(x.device)
    else:
        model = aelab.build(name, d_in=x.shape[1], **cfg).to(x.device)
        model.initialize(x[:batch])  # b_dec's geometric median is a one-off cost, not a step's
    fit_kw = dict(batch_size=batch, device=x.device, precision=precision, progress=False, log_every=10**9, shuffle=False)
    aelab.fit(model, x[:batch], max_steps=1, **fit_kw)
    t = _clock(x.device)
    aelab.fit(model, x[: batch * steps], max_steps=steps, **fit_kw)
    return (_clock(x.device) - t) / steps


def trained_sae(kind: str, x: torch.Tensor, batch: int, d_sae: int, l0: int) -> nn.Module:
    """A ReLU or JumpReLU SAE at the sparsity training brings its code to: initialised on ``x[:batch]``,
    then each latent's b_enc (ReLU) or threshold (JumpReLU) set so that it fires on l0 / d_sae of
    those examples (an L0 of about ``l0``). Deterministic, so both sides of the benchmark start from
    the same weights."""
    aelab.seed_everything(1)
    cfg = dict(l1_coefficient=1e-3) if kind == "relu" else {}
    model = aelab.build(f"sae_{kind}", d_in=x.shape[1], d_sae=d_sae, normalize_activations=False, **cfg)
    model.initialize(x[:batch])
    with torch.no_grad():
        pre = model.pre_activations(x[:batch])
        above = max(1, round(batch * l0 / d_sae))  # examples on which each latent fires
        quantile = torch.kthvalue(pre, batch - above, dim=0).values
        if kind == "relu":
            model.b_enc -= quantile
        else:  # thresholds must stay > 0: a latent whose quantile is below 1e-3 fires a little more often
            model.log_threshold.copy_(quantile.clamp_min(1e-3).log())
    return model


def matmul_seconds(batch: int, d_in: int, d_sae: int, precision: str, reps: int = 5,
                   device: str | torch.device = "cpu") -> float:
    """One encoder matmul (batch, d_in) @ (d_in, d_sae) in that precision (autocast for bf16) on ``device``:
    the fastest of ``reps`` timed products (after one untimed), so that a slow spell of the machine
    cannot make the reference longer and the steps measured in it look shorter."""
    device = torch.device(device)
    a, b = torch.randn(batch, d_in, device=device), torch.randn(d_in, d_sae, device=device)
    cast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    best = math.inf
    with cast:
        a @ b
        for _ in range(reps):
            t = _clock(device)
            a @ b
            best = min(best, _clock(device) - t)
    return best


def saelens_topk_steps(x: torch.Tensor, batch: int, steps: int, d_sae: int, k: int) -> tuple[float | None, str]:
    """Seconds per step of SAELens's TopK SAE training step, or (None, why not)."""
    try:
        import sae_lens  # noqa: F401
        from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
        from sae_lens.saes.sae import TrainStepInput
    except Exception as e:  # not installed, or installed with a dependency missing or an API this code does not know
        if isinstance(e, ModuleNotFoundError) and e.name == "sae_lens":
            return None, "SAELens not measured: sae_lens is not installed here (`make bench-saelens` runs this part where it is)"
        return None, f"SAELens not measured: {type(e).__name__}: {e}".splitlines()[0][:160]
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=x.shape[1], d_sae=d_sae, k=k, device=str(x.device)))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4)

    def step(i):
        xb = x[(i * batch) % len(x):][:batch]
        out = sae.training_forward_pass(TrainStepInput(sae_in=xb, coefficients={}, dead_neuron_mask=None, n_training_steps=i, is_logging_step=False))
        opt.zero_grad()
        out.loss.backward()
        opt.step()

    step(0)
    t = _clock(x.device)
    for i in range(steps):
        step(i + 1)
    return (_clock(x.device) - t) / steps, f"sae_lens {sae_lens.__version__}"


def sae_measure(quick: bool, side: str, device: str = "cpu") -> list[dict]:
    d_in, d_sae, k = 384, 4096, 32
    cuda = torch.device(device).type == "cuda"
    batch, steps = (1024, 2) if quick else (4096, 8)
    aelab.seed_everything(0)
    toy = aelab.data.toy_features(batch * (steps + 1), 2 * d_sae, sparsity=1 - 16 / (2 * d_sae), d=d_in, seed=0)
    steps *= 8 if cuda else 1  # a GPU step takes milliseconds: more of them per timing, cycling through the same batches
    x_host = toy.x + 0.01 * torch.randn_like(toy.x)
    x = x_host.to(device)
    precisions = ["fp32", "bf16"] if aelab.train.bf16_is_fast(device) else ["fp32"]
    mm = {p: matmul_seconds(batch, d_in, d_sae, p, device=device) for p in precisions}
    in_mm = []  # (measurement, seconds per step, precision, its note with {} for the step in encoder matmuls)

    def steps_note(measurement: dict, step: float, p: str, template: str) -> dict:
        in_mm.append((measurement, step, p, template))
        return measurement

    def allocator_row(kind: str, naive: float) -> list[dict]:
        """The tutorial loop's rate, as each side's process measured it (the aelab side's runs under the
        allocator setting); on a GPU, where the setting does nothing, no row."""
        if cuda:
            return []
        return [_measure(f"sae-{kind}-allocator", f"ablation: the tutorial {kind} loop with aelab's CPU allocator setting {shape}",
                         "the same loop, default allocator", "tokens/s", batch / naive, "")]

    models = {"topk": ("sae_topk", dict(d_sae=d_sae, k=k)),
              "relu": ("sae_relu", dict(d_sae=d_sae, l1_coefficient=1e-3)),
              "jumprelu": ("sae_jumprelu", dict(d_sae=d_sae))}
    shape = f"({d_in}->{d_sae}, batch {batch})"
    out, seconds = [], {}
    for kind, (name, cfg) in models.items():
        naive = naive_sae_steps(kind, x, batch, steps, d_sae, k)
        if side == "baseline":
            out += [steps_note(_measure(f"sae-{kind}-{p}", f"SAE {kind} training, {p} {shape}", "dense tutorial loop, fp32",
                                        "tokens/s", batch / naive, ""), naive, "fp32", "baseline step = {} encoder matmuls (fp32)")
                    for p in precisions]
            out += allocator_row(kind, naive)
            continue
        for p in precisions:
            ours = seconds[kind, p] = aelab_sae_steps(name, x, batch, steps, p, **cfg)
            out.append(steps_note(_measure(f"sae-{kind}-{p}", f"SAE {kind} training, {p} {shape}", "dense tutorial loop, fp32",
                                           "tokens/s", batch / ours, ""), ours, p, f"aelab step = {{}} encoder matmuls ({p})"))
        out += allocator_row(kind, naive)
    # ReLU and JumpReLU once training has made the code sparse: the same weights on both sides
    l0 = 64
    for kind in ("relu", "jumprelu"):
        start = trained_sae(kind, x_host, batch, d_sae, l0).to(device)
        key = f"sae-{kind}-trained-fp32"
        bench_name = f"SAE {kind} training at a trained code's sparsity (L0 about {l0}), fp32 {shape}"
        if side == "baseline":
            naive = naive_sae_steps(kind, x, batch, steps, d_sae, k, start=start)
            out.append(steps_note(_measure(key, bench_name, "dense tutorial loop, fp32, same weights", "tokens/s", batch / naive, ""),
                                  naive, "fp32", "baseline step = {} encoder matmuls (fp32)"))
        else:
            with torch.no_grad():
                measured = float((start(x[:batch]).acts != 0).sum(-1).float().mean())
            ours = aelab_sae_steps(start, x, batch, steps, "fp32")
            out.append(steps_note(_measure(key, bench_name, "dense tutorial loop, fp32, same weights", "tokens/s", batch / ours, ""),
                                  ours, "fp32", f"aelab step = {{}} encoder matmuls (fp32), L0 at the start {measured:.0f}"))
    if side == "baseline":  # SAELens, when importable, in the baseline's process
        lens, why = saelens_topk_steps(x, batch, steps, d_sae, k)
        out.append(_measure("sae-saelens", f"SAE topk training, fp32 {shape}", f"SAELens TopK step ({why})" if lens else "SAELens TopK step",
                            "tokens/s", None if lens is None else batch / lens, "" if lens else why))
    else:  # the same TopK fp32 step, against SAELens's
        out.append(_measure("sae-saelens", f"SAE topk training, fp32 {shape}", "SAELens TopK step", "tokens/s",
                            batch / seconds["topk", "fp32"], ""))
    # the reference product once more, after the steps: the faster of the two timings counts
    mm = {p: min(mm[p], matmul_seconds(batch, d_in, d_sae, p, device=device)) for p in precisions}
    for measurement, step, p, template in in_mm:
        measurement["note"] = template.format(f"{step / mm[p]:.2f}")  # two decimals: the course's goal for the TopK step is 2.5
    return out


# -- 3. dSprites and language-model activations -------------------------------------------------------

def dsprites_measure(quick: bool, side: str, device: str = "cpu") -> list[dict]:
    n = 1024 if quick else 16384
    x, _ = aelab.data.dsprites().tensors(n, seed=0)
    precision = "bf16" if aelab.train.bf16_is_fast(device) else "fp32"
    aelab.seed_everything(0)
    model = aelab.build("beta_vae")
    t = _clock(device)
    if side == "baseline":
        model.to(device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        loader = torch.utils.data.DataLoader(_ItemDataset(x, torch.zeros(n)), batch_size=64, shuffle=True)
        for xb, _ in loader:
            xb = xb.to(device)
            loss = model.loss(xb, model(xb)).total
            opt.zero_grad()
            loss.backward()
            opt.step()
    else:
        aelab.fit(model, x, epochs=1, batch_size=64, device=device, precision=precision, progress=False, log_every=10**9)
    seconds = _clock(device) - t
    return [_measure("dsprites", f"dSprites conv beta-VAE epoch ({n} images, batch 64)", "DataLoader loop, fp32", "images/s",
                     n / seconds, "" if side == "baseline" else f"aelab in {precision}")]


def lm_measure(quick: bool, side: str, device: str = "cpu") -> list[dict]:
    label = "SmolLM2 activation collection"
    try:
        from aelab.data import lm as lm_module

        lm = lm_module.load_lm("smollm2", device=device)
    except Exception as e:  # the module or its weights are missing
        return [_measure("lm", label, "full forward", "tokens/s", None, f"skipped: {type(e).__name__}: {e}".splitlines()[0][:160])]
    n, ctx_len, layer = (4, 64, 6) if quick else (16, 128, 6)
    tokens = torch.randint(0, lm.model.config.vocab_size, (n, ctx_len), generator=torch.Generator().manual_seed(0))
    stop = side == "aelab"
    lm_module.activations(lm, tokens[:1], layer, stop=stop)  # warm-up
    t = _clock(device)
    lm_module.activations(lm, tokens, layer, stop=stop)
    seconds = _clock(device) - t
    return [_measure("lm", f"SmolLM2 activations, layer {layer} of {lm.n_layers} ({n}x{ctx_len} tokens)", "full forward",
                     "tokens/s", n * ctx_len / seconds, "forward stopped at the hooked layer" if stop else "")]


# -- the table ---------------------------------------------------------------------------------------

def _row(benchmark: str, baseline: str, unit: str, base: float | None, ours: float | None, note: str,
         base_runs: list[float | None] | None = None, our_runs: list[float | None] | None = None) -> dict:
    """One result; ``base`` and ``ours`` are rates (higher is better), speedup = ours / base.

    ``base_runs`` and ``our_runs``: every run's value of each side, in the order they ran (one each
    without repeats); ``speedup_range`` is the least and greatest ours / base of runs with the same
    index, None unless both sides have at least two such runs."""
    base_runs = [base] if base_runs is None else base_runs
    our_runs = [ours] if our_runs is None else our_runs
    ratios = [o / b for b, o in zip(base_runs, our_runs) if b is not None and o is not None]
    return {"benchmark": benchmark, "baseline": baseline, "unit": unit,
            "baseline_value": None if base is None else round(base, 1),
            "aelab_value": None if ours is None else round(ours, 1),
            "speedup": None if base is None or ours is None else round(ours / base, 2),
            "speedup_range": [round(min(ratios), 2), round(max(ratios), 2)] if len(ratios) > 1 else None,
            "baseline_runs": [None if v is None else round(v, 1) for v in base_runs],
            "aelab_runs": [None if v is None else round(v, 1) for v in our_runs], "note": note}


def _measure(key: str, benchmark: str, baseline: str, unit: str, value: float | None, note: str) -> dict:
    """One side's measurement of a benchmark (a rate, higher is better); ``merge`` pairs the two sides by ``key``."""
    return {"key": key, "benchmark": benchmark, "baseline": baseline, "unit": unit, "value": value, "note": note}


BENCHMARKS = {"vae": vae_measure, "sae": sae_measure, "dsprites": dsprites_measure, "lm": lm_measure}
SIDES = ("baseline", "aelab")


def measure(quick: bool, only: list[str] | None, side: str, device: str = "cpu") -> list[dict]:
    """Run one side of the selected benchmarks in this process, on ``device``."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    if side == "aelab":
        aelab.train.optim.tune_cpu_allocator()  # what fit does: set before anything is timed on this side
    out = []
    for name, fn in BENCHMARKS.items():
        if only and name not in only:
            continue
        t = time.perf_counter()
        out += fn(quick, side, device)
        print(f"[{name}, {side}: {time.perf_counter() - t:.0f} s]", flush=True)
    return out


def median_run(runs: list[list[dict]]) -> list[dict]:
    """One side's measurements over several runs -> one list: for each key, the run with the median
    value (the lower of the two middle ones for an even count; a run without a value only where no
    run has one), with ``runs`` added: every run's value in run order, None where a run lacks it."""
    keys = dict.fromkeys(m["key"] for run in runs for m in run)
    by_run = [{m["key"]: m for m in run} for run in runs]
    out = []
    for key in keys:
        found = [r[key] for r in by_run if key in r]
        valued = sorted((m for m in found if m["value"] is not None), key=lambda m: m["value"])
        pick = valued[(len(valued) - 1) // 2] if valued else found[0]
        out.append({**pick, "runs": [r[key]["value"] if key in r else None for r in by_run]})
    return out


def merge(baseline: list[dict], ours: list[dict]) -> list[dict]:
    """Rows (``_row``) from the two sides' measurements, in the order the benchmarks ran; a key one side lacks has no value there."""
    by_key = {m["key"]: m for m in baseline}
    mine = {m["key"]: m for m in ours}
    rows = []
    for key in dict.fromkeys([*by_key, *mine]):
        b, o = by_key.get(key), mine.get(key)
        first = b if b is not None and b["benchmark"] else o
        note = "; ".join(m["note"] for m in (b, o) if m is not None and m["note"])
        rows.append({"key": key, **_row(first["benchmark"], first["baseline"], first["unit"], b and b["value"], o and o["value"], note,
                                        b and b.get("runs", [b["value"]]), o and o.get("runs", [o["value"]]))})
    return rows


GPU_GOALS = {
    "sae-topk-bf16": ("SAE TopK in bf16 (d_in 384, 4096 latents, k 32, batch 4096)", 5e6, "tokens/s"),
    "vae": ("MNIST VAE epoch in 0.3 s or less (60,000 images)", 60_000 / 0.3, "images/s"),
}
"""The course's goals on an H100, as the least aelab rate of a row (key: description, rate, unit)."""


def goals(rows: list[dict]) -> list[dict]:
    """How the rows with a GPU goal compare with it: met, not met, or not measured."""
    by_key = {r.get("key"): r for r in rows}
    out = []
    for key, (what, least, unit) in GPU_GOALS.items():
        value = by_key[key]["aelab_value"] if key in by_key else None
        status = "not measured" if value is None else ("met" if value >= least else "not met")
        out.append({"key": key, "goal": what, "least": least, "unit": unit, "aelab_value": value, "status": status})
    return out


def run(quick: bool, only: list[str] | None = None, same_process: bool = False, repeats: int = 1,
        device: str = "cpu", avx2: bool = False) -> list[dict]:
    """Both sides and their rows: each side in a fresh Python process (``same_process``: both here,
    baseline first), ``repeats`` times, alternating the sides; each side's median run (``median_run``).
    ``avx2``: the processes compute as on a laptop CPU (``aelab.train.precision.AVX2_ENV``)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if avx2 and same_process:
        raise ValueError("avx2 needs a fresh process for each side (the instruction set is fixed when torch loads)")
    sides: dict[str, list[list[dict]]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            for side in SIDES:
                if repeats > 1:
                    print(f"[run {r + 1} of {repeats}, {side}]", flush=True)
                if same_process:
                    sides[side].append(measure(quick, only, side, device))
                    continue
                path = os.path.join(tmp, f"{side}.json")
                cmd = [sys.executable, "-m", "aelab.bench", "--side", side, "--json", path, "--device", device,
                       *(["--quick"] if quick else []), *(["--only", *only] if only else [])]
                subprocess.run(cmd, check=True, env={**os.environ, **AVX2_ENV} if avx2 else None)
                with open(path) as f:
                    sides[side].append(json.load(f))
    return merge(median_run(sides["baseline"]), median_run(sides["aelab"]))


def machine(device: str = "cpu") -> dict:
    """Where the numbers come from."""
    name = torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else "cpu"
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "device": name, "bf16_is_fast": aelab.train.bf16_is_fast(device)}


def markdown(rows: list[dict], info: dict) -> str:
    """The results as a Markdown table under a line naming the machine."""
    lines = [", ".join(f"{k}: {v}" for k, v in info.items()), "",
             "| benchmark | baseline | unit | baseline | aelab | speedup | note |", "|---|---|---|---:|---:|---:|---|"]
    fmt = lambda v: "—" if v is None else f"{v:,}"  # noqa: E731
    for r in rows:
        speedup = "—" if r["speedup"] is None else f"{r['speedup']}x"
        if r["speedup"] is not None and r.get("speedup_range"):
            speedup += " ({}–{})".format(*r["speedup_range"])
        lines.append(f"| {r['benchmark']} | {r['baseline']} | {r['unit']} | {fmt(r['baseline_value'])} | "
                     f"{fmt(r['aelab_value'])} | {speedup} | {r['note']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, about a minute")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these benchmarks")
    parser.add_argument("--same-process", action="store_true", help="measure both sides in this process (baseline first)")
    parser.add_argument("--repeats", type=int, help="runs of each side, alternating; the table gives medians (default 3, --quick 1)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where both sides run (default cpu)")
    parser.add_argument("--avx2", action="store_true",
                        help="run both sides with torch, oneDNN and MKL limited to AVX2 and bf16 off, as on a laptop CPU")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # one side, for run(): writes measurements to --json
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here (torch.cuda.is_available() is False); "
                     "run it on a machine with an NVIDIA GPU and its driver, or leave --device out to measure the CPU")
    if args.side:
        measurements = measure(args.quick, args.only, args.side, args.device)
        with open(args.json, "w") as f:
            json.dump(measurements, f)
        return
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    if repeats < 1:
        parser.error(f"--repeats must be at least 1, got {repeats}")
    if args.avx2 and (args.same_process or args.device == "cuda"):
        parser.error("--avx2 limits the CPU's instructions in the processes of the two sides: "
                     "leave out --same-process and --device cuda")
    rows = run(args.quick, args.only, args.same_process, repeats, args.device, args.avx2)
    info = {**machine(args.device), "runs per side": repeats}
    if args.avx2:
        info.update(bf16_is_fast=False, instructions="AVX2 (--avx2: torch, oneDNN and MKL limited to it)")
    print()
    print(markdown(rows, info))
    checks = goals(rows) if args.device == "cuda" else []
    if checks:
        print("\nGoals on an H100:")
        for g in checks:
            got = "—" if g["aelab_value"] is None else f"{g['aelab_value']:,.0f} {g['unit']}"
            print(f"- {g['goal']}: at least {g['least']:,.0f} {g['unit']}; measured {got}: {g['status']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "quick": args.quick, "results": rows, "goals": checks}, f, indent=2)
        print(f"\nwritten to {args.json}")


if __name__ == "__main__":
    main()
