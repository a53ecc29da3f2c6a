"""The benchmark harness: its baselines compute the same objectives, and it prints a table and JSON.

Timings themselves are never asserted: ``make bench`` measures them.
"""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

import aelab
from aelab import bench
from aelab.train.precision import AVX2_ENV


def test_naive_topk_sae_computes_the_aelab_objective():
    torch.manual_seed(0)
    naive = bench.NaiveSAE("topk", d_in=16, d_sae=64, k=4)
    ours = aelab.build("sae_topk", d_in=16, d_sae=64, k=4, auxk_coefficient=0.0)
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(ours, name).copy_(getattr(naive, name) + 0.1 * torch.randn_like(getattr(naive, name)))
            getattr(naive, name).copy_(getattr(ours, name))
    x = torch.randn(32, 16)
    torch.testing.assert_close(naive.loss(x), ours.loss(x, ours(x)).total)


def test_naive_relu_sae_computes_the_aelab_objective():
    torch.manual_seed(0)
    naive = bench.NaiveSAE("relu", d_in=16, d_sae=64, l1=1e-2)
    ours = aelab.build("sae_relu", d_in=16, d_sae=64, l1_coefficient=1e-2)
    ours.load_state_dict({k: getattr(naive, k).detach() for k in ("W_enc", "b_enc", "W_dec", "b_dec")}, strict=False)
    x = torch.randn(32, 16)
    torch.testing.assert_close(naive.loss(x), ours.loss(x, ours(x)).total)


@pytest.mark.parametrize("kind", ["relu", "jumprelu"])
def test_trained_start_is_sparse_deterministic_and_shared_by_the_baseline(kind):
    x = torch.randn(256, 16)
    a, b = bench.trained_sae(kind, x, 128, 256, l0=8), bench.trained_sae(kind, x, 128, 256, l0=8)
    for name, p in a.state_dict().items():
        assert torch.equal(p, b.state_dict()[name]), f"{name}: both sides must start from the same weights"
    with torch.no_grad():
        l0 = (a(x[:128]).acts != 0).sum(-1).float().mean().item()
    assert l0 == 8.0, "each latent fires on l0 / d_sae of the examples, so the mean L0 is l0"
    bench.naive_sae_steps(kind, x, 128, 1, 256, 4, start=a)  # runs from the shared start
    if kind == "relu":  # the same objective from the same weights (the tutorial JumpReLU has its own L0 weight)
        naive = bench.NaiveSAE("relu", 16, 256)
        with torch.no_grad():
            for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
                getattr(naive, name).copy_(getattr(a, name))
        torch.testing.assert_close(naive.loss(x[:128]), a.loss(x[:128], a(x[:128])).total)


def test_table_and_json(tmp_path, monkeypatch, capsys):
    def fake(quick, side, device):
        value = 10.0 if side == "baseline" else 25.0
        return [bench._measure("fake", "fake", "slow loop", "items/s", value, "a note" if side == "aelab" else ""),
                bench._measure("skipped", "skipped", "other", "items/s", None, "skipped: no weights" if side == "aelab" else "")]

    monkeypatch.setattr(bench, "BENCHMARKS", {"fake": fake})
    out = tmp_path / "bench.json"
    bench.main(["--quick", "--same-process", "--json", str(out)])
    text = capsys.readouterr().out
    assert "torch: " + torch.__version__ in text and "threads: " in text and "device: cpu" in text
    assert "| fake | slow loop | items/s | 10.0 | 25.0 | 2.5x | a note |" in text
    assert "| skipped | other | items/s | — | — | — | skipped: no weights |" in text
    saved = json.loads(out.read_text())
    assert saved["quick"] and saved["machine"]["torch"] == torch.__version__
    assert [r["speedup"] for r in saved["results"]] == [2.5, None]


def test_one_side_writes_its_measurements(tmp_path, monkeypatch):
    sides = []
    monkeypatch.setattr(bench, "BENCHMARKS", {"fake": lambda quick, side, device: sides.append(side) or [bench._measure("k", "b", "base", "u", 1.0, "")]})
    out = tmp_path / "side.json"
    bench.main(["--side", "baseline", "--json", str(out)])
    assert sides == ["baseline"] and json.loads(out.read_text())[0]["value"] == 1.0


def test_merge_pairs_the_sides_by_key_and_keeps_the_order():
    base = [bench._measure("a", "A", "loop", "u", 2.0, "base note"), bench._measure("b", "B", "loop", "u", 4.0, "")]
    ours = [bench._measure("b", "B", "loop", "u", 8.0, "ours"), bench._measure("c", "C", "loop", "u", 1.0, "")]
    rows = bench.merge(base, ours)
    assert [(r["benchmark"], r["baseline_value"], r["aelab_value"], r["speedup"]) for r in rows] == [
        ("A", 2.0, None, None), ("B", 4.0, 8.0, 2.0), ("C", None, 1.0, None)]
    assert rows[0]["note"] == "base note" and rows[1]["note"] == "ours"


def test_median_run_takes_each_keys_middle_run_and_keeps_every_value():
    runs = [[bench._measure("a", "A", "loop", "u", 3.0, "first"), bench._measure("s", "S", "loop", "u", None, "skipped")],
            [bench._measure("a", "A", "loop", "u", 1.0, "second"), bench._measure("s", "S", "loop", "u", None, "skipped")],
            [bench._measure("a", "A", "loop", "u", 2.0, "third"), bench._measure("b", "B", "loop", "u", 5.0, "late")]]
    a, s, b = bench.median_run(runs)
    assert (a["value"], a["note"], a["runs"]) == (2.0, "third", [3.0, 1.0, 2.0]), "the median run, with its own note"
    assert (s["value"], s["runs"]) == (None, [None, None, None])
    assert (b["value"], b["runs"]) == (5.0, [None, None, 5.0])
    even = bench.median_run(runs[:2])[0]
    assert even["value"] == 1.0, "of two middle runs, the lower"


def test_repeats_alternate_the_sides_and_report_medians_with_the_range(tmp_path, monkeypatch, capsys):
    calls = []
    values = {"baseline": iter([10.0, 14.0, 12.0]), "aelab": iter([25.0, 21.0, 36.0])}

    def fake(quick, side, device):
        calls.append(side)
        return [bench._measure("fake", "fake", "slow loop", "items/s", next(values[side]), "")]

    monkeypatch.setattr(bench, "BENCHMARKS", {"fake": fake})
    out = tmp_path / "bench.json"
    bench.main(["--same-process", "--repeats", "3", "--json", str(out)])
    assert calls == ["baseline", "aelab"] * 3, "the sides alternate, so a slow spell falls on both"
    text = capsys.readouterr().out
    assert "runs per side: 3" in text
    # medians 12 and 25; the runs' own ratios are 2.5, 1.5 and 3.0
    assert "| fake | slow loop | items/s | 12.0 | 25.0 | 2.08x (1.5–3.0) |  |" in text
    row = json.loads(out.read_text())["results"][0]
    assert row["baseline_runs"] == [10.0, 14.0, 12.0] and row["aelab_runs"] == [25.0, 21.0, 36.0]
    assert row["speedup_range"] == [1.5, 3.0]
    with pytest.raises(SystemExit):
        bench.main(["--same-process", "--repeats", "0"])


def test_the_example_dataset_serves_the_same_images(tmp_path):
    x = torch.randint(0, 256, (5, 1, 28, 28)).float() / 255
    y = torch.tensor([3, 1, 4, 1, 5])
    ds = bench.example_dataset(x, y, str(tmp_path))
    assert len(ds) == 5
    for i in range(5):
        image, label = ds[i]
        assert torch.equal(image, x[i]) and int(label) == int(y[i])


def test_saelens_row_says_why_when_it_is_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "sae_lens", None)  # import sae_lens raises ImportError
    seconds, why = bench.saelens_topk_steps(torch.randn(8, 4), batch=4, steps=1, d_sae=16, k=2)
    assert seconds is None and why.startswith("SAELens not measured: ") and "make bench-saelens" in why


def test_cuda_runs_both_sides_there_and_checks_the_gpu_goals(tmp_path, monkeypatch, capsys):
    devices = []

    def fake(quick, side, device):
        devices.append(device)
        fast = side == "aelab"
        return [bench._measure("sae-topk-bf16", "topk", "loop", "tokens/s", 6e6 if fast else 1e6, ""),
                bench._measure("vae", "vae", "loop", "images/s", 1e5 if fast else 5e4, "")]

    monkeypatch.setattr(bench, "BENCHMARKS", {"fake": fake})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(bench, "machine", lambda device="cpu": {"device": "a GPU"})
    out = tmp_path / "gpu.json"
    bench.main(["--quick", "--same-process", "--device", "cuda", "--json", str(out)])
    assert devices == ["cuda", "cuda"]
    text = capsys.readouterr().out
    assert "Goals on an H100:" in text
    assert "at least 5,000,000 tokens/s; measured 6,000,000 tokens/s: met" in text
    assert "at least 200,000 images/s; measured 100,000 images/s: not met" in text
    saved = json.loads(out.read_text())
    assert [g["status"] for g in saved["goals"]] == ["met", "not met"]


def test_goals_say_what_was_not_measured():
    rows = bench.merge([], [bench._measure("vae", "vae", "loop", "images/s", 3e5, "")])
    assert [g["status"] for g in bench.goals(rows)] == ["not measured", "met"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given where there is no GPU")
def test_cuda_without_a_gpu_says_so(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--device", "cuda"])
    assert "torch sees no CUDA device here" in capsys.readouterr().err


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("device", DEVICES)
def test_sae_timers_run_on_the_device_of_the_data(device):
    x = torch.randn(3 * 64, 16, device=device)
    assert bench.matmul_seconds(64, 16, 128, "fp32", reps=1, device=device) > 0
    assert bench.naive_sae_steps("topk", x, 64, 2, 128, 4) > 0
    model = aelab.build("sae_topk", d_in=16, d_sae=128, k=4)
    assert bench.aelab_sae_steps(model, x, 64, 2, "fp32") > 0
    assert next(model.parameters()).device.type == device


@pytest.mark.parametrize("side", ["baseline", "aelab"])
def test_steps_are_given_in_the_faster_of_two_timings_of_the_encoder_product(monkeypatch, side):
    """The reference product is timed before and after the steps; a slow spell in one timing cannot shorten the steps."""
    timings = iter([0.004, 0.001])  # the first timing caught a slow spell
    monkeypatch.setattr(bench, "matmul_seconds", lambda *a, **kw: next(timings))
    monkeypatch.setattr(aelab.train, "bf16_is_fast", lambda device=None: False)
    monkeypatch.setattr(bench, "naive_sae_steps", lambda *a, **kw: 0.010)
    monkeypatch.setattr(bench, "aelab_sae_steps", lambda *a, **kw: 0.003)
    monkeypatch.setattr(bench, "trained_sae", lambda kind, x, batch, d_sae, l0: aelab.build(f"sae_{kind}", d_in=x.shape[1], d_sae=d_sae))
    monkeypatch.setattr(bench, "saelens_topk_steps", lambda *a, **kw: (None, "not installed"))
    rows = {m["key"]: m for m in bench.sae_measure(quick=True, side=side)}
    steps = "10.00" if side == "baseline" else "3.00"
    assert rows["sae-topk-fp32"]["note"] == f"{side} step = {steps} encoder matmuls (fp32)"
    assert rows["sae-relu-trained-fp32"]["note"].startswith(f"{side} step = {steps} encoder matmuls (fp32)")


def test_avx2_starts_both_sides_limited_to_avx2_without_bf16(tmp_path, monkeypatch, capsys):
    envs = []

    def fake_run(cmd, check, env):
        envs.append(env)
        side = cmd[cmd.index("--side") + 1]
        with open(cmd[cmd.index("--json") + 1], "w") as f:
            json.dump([bench._measure("fake", "fake", "slow loop", "items/s", 10.0 if side == "baseline" else 30.0, "")], f)

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    out = tmp_path / "bench.json"
    bench.main(["--avx2", "--repeats", "1", "--json", str(out)])
    assert len(envs) == 2 and all(env[k] == v for env in envs for k, v in AVX2_ENV.items())
    assert all(env["PATH"] == os.environ["PATH"] for env in envs), "the rest of the environment is kept"
    assert "| fake | slow loop | items/s | 10.0 | 30.0 | 3.0x |  |" in capsys.readouterr().out
    machine = json.loads(out.read_text())["machine"]
    assert machine["bf16_is_fast"] is False and "AVX2" in machine["instructions"]
    envs.clear()
    bench.main(["--repeats", "1"])
    assert envs == [None, None], "without --avx2 the sides inherit the environment as it is"
    for bad in (["--avx2", "--same-process"], ["--avx2", "--device", "cuda"]):
        with pytest.raises(SystemExit):
            bench.main(bad)
    with pytest.raises(ValueError, match="fresh process"):
        bench.run(quick=True, same_process=True, avx2=True)
