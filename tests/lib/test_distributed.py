"""fit() under torchrun: DistributedDataParallel on 2 CPU processes (gloo) against one process.

The runs live in ``ddp_worker.py``. Two processes, each taking half of every batch, must end with
identical parameters (DDP averages the gradients; non-gradient updates are kept in step), and for
deterministic models match the single-process run up to float summation order. The helpers of
``aelab.train.distributed`` are no-ops without a process group.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aelab.train import distributed

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import ddp_worker  # noqa: E402


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", AELAB_DEVICE="cpu")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "ddp_worker.py"), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return {f.stem: torch.load(f) for f in out.glob("*.pt")}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ddp_worker.RUNS))
def test_parameters_stay_identical_across_ranks(two_process_runs, name):
    a, b = two_process_runs[f"{name}-rank0"], two_process_runs[f"{name}-rank1"]
    for key in a["params"]:
        assert torch.equal(a["params"][key], b["params"][key]), f"{name}: {key} differs between the two processes"
    assert a["logs"] == b["logs"], "logged losses are averaged over processes, so every rank logs the same"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ae", "sae_topk"])
def test_two_processes_follow_the_single_process_run(two_process_runs, name, monkeypatch):
    monkeypatch.setenv("AELAB_DEVICE", "cpu")
    single = ddp_worker.run(name)
    ddp = two_process_runs[f"{name}-rank0"]
    assert [r["step"] for r in ddp["logs"]] == [r["step"] for r in single["logs"]] == list(range(1, 10))
    assert set(single["batch_sizes"]) == {16} and set(ddp["batch_sizes"]) == {8}, "each process takes half of every batch"
    for rs, rd in zip(single["logs"], ddp["logs"]):
        for term in set(rs) - {"fvu"}:  # fvu is a ratio of batch sums: logged as the mean of the processes' ratios
            assert rd[term] == pytest.approx(rs[term], rel=1e-4, abs=1e-5), f"{name}: {term} at step {rs['step']}"
    for key, value in single["params"].items():
        if value.is_floating_point():
            torch.testing.assert_close(ddp["params"][key], value, rtol=1e-4, atol=1e-5, msg=f"{name}: {key}")
        else:
            assert torch.equal(ddp["params"][key], value), f"{name}: buffer {key}"


def test_helpers_are_no_ops_in_one_process():
    assert not distributed.active() and distributed.rank() == 0 and distributed.world_size() == 1
    idx = torch.arange(10)
    assert torch.equal(distributed.shard(idx), idx)
    x = torch.randn(4, 3)
    assert distributed.all_gather_rows(x) is x and distributed.mean_across(x) is x
    assert distributed.broadcast_int(7) == 7
    m = torch.nn.Linear(2, 2)
    assert distributed.wrap(m, torch.device("cpu")) is m
    assert distributed.setup(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_two_gpu_processes_agree(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "ddp_worker.py"), str(tmp_path), "cuda"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ddp_worker.RUNS:
        a, b = (torch.load(tmp_path / f"{name}-rank{r}.pt") for r in (0, 1))
        for key in a["params"]:
            assert torch.equal(a["params"][key], b["params"][key]), f"{name}: {key}"
