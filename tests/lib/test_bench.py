"""The benchmark harness: its baselines compute the same objectives, and it prints a table and JSON.

Timings themselves are never asserted: ``make bench`` measures them.
"""

from __future__ import annotations

import json

import torch

import aelab
from aelab import bench


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


def test_table_and_json(tmp_path, monkeypatch, capsys):
    rows = [bench._row("fake", "slow loop", "items/s", 10.0, 25.0, "a note"),
            bench._row("skipped", "other", "items/s", None, None, "skipped: no weights")]
    monkeypatch.setattr(bench, "BENCHMARKS", {"fake": lambda quick: rows})
    out = tmp_path / "bench.json"
    bench.main(["--quick", "--json", str(out)])
    text = capsys.readouterr().out
    assert "torch: " + torch.__version__ in text and "threads: " in text and "device: cpu" in text
    assert "| fake | slow loop | items/s | 10.0 | 25.0 | 2.5x | a note |" in text
    assert "| skipped | other | items/s | — | — | — | skipped: no weights |" in text
    saved = json.loads(out.read_text())
    assert saved["quick"] and saved["results"] == rows and saved["machine"]["torch"] == torch.__version__
