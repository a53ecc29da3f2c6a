"""fit(): batching, history, evaluation, checkpoints and exact resumption, NaN handling, precision."""

from __future__ import annotations

import pytest
import torch

import aelab
from aelab.train import NonFiniteLossError, linear_ramp, warmup_cosine
from aelab.train.checkpoint import load_checkpoint


def small_vae(**kw):
    return aelab.build("vae", hidden=(32,), latent_dim=3, **kw)


def data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_history_rows_steps_and_epochs():
    aelab.seed_everything(0)
    model = small_vae()
    h = aelab.fit(model, data()[0], epochs=2, batch_size=32, log_every=2, progress=False)
    assert [r["step"] for r in h.logs] == [2, 4, 6]
    assert [r["epoch"] for r in h.logs] == [0, 1, 1]
    assert set(h.terms) == {"recon", "kl"} and h["kl"].shape == (3,)
    with pytest.raises(KeyError, match="logged keys"):
        h["nope"]


def test_named_tuple_batches_and_max_steps():
    from typing import NamedTuple

    class Pair(NamedTuple):
        x: torch.Tensor
        y: torch.Tensor

    seen = []

    class Spy(type(small_vae())):
        def train_step(self, batch, ctx):
            seen.append(type(batch))
            return super().train_step(batch, ctx)

    model = Spy(small_vae().config)
    aelab.fit(model, Pair(*data()), max_steps=5, batch_size=10, progress=False)
    assert len(seen) == 5 and all(t is Pair for t in seen)


def test_dataloader_input_and_length_errors():
    x, y = data(40)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    h = aelab.fit(small_vae(), loader, epochs=2, log_every=5, progress=False)
    assert h.logs[-1]["step"] == 10
    with pytest.raises(ValueError, match="same first"):
        aelab.fit(small_vae(), (x, y[:3]), progress=False)
    with pytest.raises(ValueError, match="precision"):
        aelab.fit(small_vae(), x, precision="fp8", progress=False)


def test_eval_callback_runs_in_eval_mode_without_grad():
    modes = []

    def ev(model):
        modes.append((model.training, torch.is_grad_enabled()))
        return {"score": 1.5}

    h = aelab.fit(small_vae(), data()[0], epochs=2, batch_size=48, eval_fn=ev, progress=False)
    assert modes == [(False, False), (False, False)]
    assert [r["step"] for r in h.evals] == [2, 4] and h["score"].tolist() == [1.5, 1.5]


def test_schedule_sets_learning_rate_and_helpers():
    lrs = []
    aelab.fit(small_vae(), data()[0], max_steps=4, batch_size=8, lr=0.1, schedule=lambda s: 1 / (s + 1),
              callbacks=[lambda ctx, loss: lrs.append(ctx.optimizers[0].param_groups[0]["lr"])], progress=False)
    assert lrs == pytest.approx([0.1, 0.05, 0.1 / 3, 0.025])
    f = warmup_cosine(100, 10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0) and f(100) == pytest.approx(0.0)
    g = linear_ramp(4, 0.0, 2.0)
    assert [g(s) for s in range(6)] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0]


def small_conv_vae():  # trained in the channels-last layout on a CPU
    return aelab.build("beta_vae", input_shape=(1, 28, 28), channels=4, hidden=(16,), latent_dim=3)


@pytest.mark.parametrize("small_vae", [small_vae, small_conv_vae], ids=["mlp", "conv"])
def test_resume_continues_exactly_where_training_stopped(tmp_path, small_vae):
    x = data()[0]
    aelab.seed_everything(1)
    straight = small_vae()
    h_straight = aelab.fit(straight, x, epochs=3, batch_size=20, log_every=1, progress=False)

    # The same run, interrupted after 7 steps (mid-epoch: 5 batches per epoch), then resumed.
    aelab.seed_everything(1)
    model = small_vae()
    ckpt = tmp_path / "run.safetensors"
    aelab.fit(model, x, epochs=3, batch_size=20, max_steps=7, log_every=1, checkpoint=ckpt, checkpoint_every=1, progress=False)
    torch.manual_seed(12345)  # whatever happens in between must not matter
    resumed = small_vae()
    h = aelab.fit(resumed, x, epochs=3, batch_size=20, log_every=1, checkpoint=ckpt, progress=False)
    assert torch.equal(params(resumed), params(straight))
    assert [r["step"] for r in h.logs] == list(range(1, 16))
    assert h["recon"][7:] == pytest.approx(h_straight["recon"][7:], rel=1e-6)
    assert h.seconds > 0 and h_straight.seconds > 0, "the history records the training time"
    # Finished: calling again does nothing more, and reports the time the training took.
    again = small_vae()
    h_again = aelab.fit(again, x, epochs=3, batch_size=20, checkpoint=ckpt, progress=False)
    assert torch.equal(params(again), params(straight))
    assert h.seconds <= h_again.seconds < h.seconds + 0.5


def test_checkpoint_of_another_model_is_refused(tmp_path):
    ckpt = tmp_path / "c.safetensors"
    aelab.fit(small_vae(), data()[0], max_steps=1, batch_size=8, checkpoint=ckpt, progress=False)
    other = aelab.build("vae", hidden=(32,), latent_dim=5)
    with pytest.raises(ValueError, match="written for model 'vae'.*resume=False"):
        aelab.fit(other, data()[0], max_steps=2, batch_size=8, checkpoint=ckpt, progress=False)
    aelab.fit(other, data()[0], max_steps=2, batch_size=8, checkpoint=ckpt, resume=False, progress=False)
    state, _, _ = load_checkpoint(ckpt, other, other.configure_optimizers(1e-3))
    assert state.step == 2
    # a checkpoint is also a loadable model
    assert isinstance(aelab.load(ckpt), type(other))


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    ckpt = tmp_path / "c.safetensors"
    model = small_vae()
    aelab.fit(model, data()[0], max_steps=2, batch_size=8, checkpoint=ckpt, progress=False)
    good = ckpt.read_bytes()

    from aelab import io as aelab_io

    def crash(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(aelab_io, "serialize", crash)
    with pytest.raises(KeyboardInterrupt):
        aelab.fit(model, data()[0], max_steps=4, batch_size=8, checkpoint=ckpt, progress=False)
    assert ckpt.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"], "no temporary files left behind"


def test_nan_loss_stops_with_step_and_last_checkpoint(tmp_path):
    x = data()[0]
    ckpt = tmp_path / "c.safetensors"
    bad_step = 5

    class Exploding(type(small_vae())):
        def loss(self, batch, out):
            loss = super().loss(batch, out)
            if self.calls == bad_step:
                loss.total = loss.total * float("nan")
            self.calls += 1
            return loss

    model = Exploding(small_vae().config)
    model.calls = 0
    with pytest.raises(NonFiniteLossError, match=rf"became nan at step {bad_step} .*last good checkpoint is .*c.safetensors"):
        aelab.fit(model, x, epochs=3, batch_size=32, checkpoint=ckpt, progress=False)
    model.calls = 0
    with pytest.raises(NonFiniteLossError, match="no checkpoint was saved"):
        aelab.fit(model, x, epochs=3, batch_size=32, progress=False)


def test_bf16_autocast_runs_and_learns():
    aelab.seed_everything(0)
    model = small_vae()
    x = data(64)[0]
    h = aelab.fit(model, x, epochs=10, batch_size=32, precision="bf16", log_every=2, progress=False)
    assert h["recon"][-1] < h["recon"][0]


def test_budget_device_seed(monkeypatch):
    monkeypatch.setenv("AELAB_FAST", "1")
    assert aelab.budget(full=10, fast=1) == 1 and aelab.is_fast()
    monkeypatch.setenv("AELAB_FAST", "0")
    assert aelab.budget(full=10, fast=1) == 10
    monkeypatch.setenv("AELAB_DEVICE", "cpu")
    assert aelab.device().type == "cpu"
    if not torch.cuda.is_available():
        monkeypatch.setenv("AELAB_DEVICE", "cuda")
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            aelab.device()
    aelab.seed_everything(3)
    a = torch.rand(3)
    aelab.seed_everything(3)
    assert torch.equal(a, torch.rand(3))
    with pytest.raises(ValueError):
        aelab.seed_everything(-1)


@pytest.mark.gpu
def test_fit_on_cuda_matches_interface():
    model = small_vae()
    h = aelab.fit(model, data()[0], epochs=1, batch_size=32, device="cuda", precision="bf16", progress=False)
    assert next(model.parameters()).is_cuda and len(h.logs) >= 1


def test_drop_last_skips_the_short_batch():
    seen = []

    class Recorder(aelab.Model):
        def train_step(self, batch, ctx):
            seen.append(len(batch))
            return aelab.Loss(torch.zeros(()))

    model = Recorder(None)
    model.p = torch.nn.Parameter(torch.zeros(1))
    aelab.fit(model, torch.randn(10, 3), epochs=2, batch_size=4, drop_last=True, progress=False, device="cpu")
    assert seen == [4, 4, 4, 4]
    seen.clear()
    aelab.fit(model, torch.randn(10, 3), epochs=1, batch_size=4, progress=False, device="cpu")
    assert seen == [4, 4, 2]
    with pytest.raises(ValueError, match="leaves no batch"):
        aelab.fit(model, torch.randn(3, 3), batch_size=4, drop_last=True, progress=False, device="cpu")


def test_cpu_name_and_flags_come_from_the_first_processor_in_cpuinfo(monkeypatch):
    from aelab.train import precision

    text = ("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu avx2 fma\n\n"
            "processor\t: 1\nmodel name\t: Other CPU\nflags\t\t: fpu avx512f\n")
    fields = precision._first_cpu(text)
    assert fields["model name"] == "AMD EPYC 7B13" and fields["flags"] == "fpu avx2 fma" and fields["processor"] == "0"
    assert precision._first_cpu("") == {}
    monkeypatch.setattr(precision, "_cpuinfo", lambda: precision._first_cpu(text))
    assert precision.cpu_name() == "AMD EPYC 7B13"
    assert precision._cpu_flags() == frozenset({"fpu", "avx2", "fma"})
    monkeypatch.setattr(precision, "_cpuinfo", lambda: {})  # no /proc/cpuinfo (not Linux)
    assert precision._cpu_flags() == frozenset() and precision.cpu_name()


def test_bf16_is_fast_reads_the_cpu_flags(monkeypatch):
    from aelab.train import precision

    monkeypatch.delenv("AELAB_BF16", raising=False)
    monkeypatch.setattr(precision.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx2", "amx_bf16"}))
    assert precision.bf16_is_fast("cpu")
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert not precision.bf16_is_fast("cpu")
    assert not precision.bf16_is_fast("meta")


@pytest.mark.parametrize("value, allowed", [("0", False), ("off", False), ("False", False), ("1", True), ("", True)])
def test_aelab_bf16_0_turns_bf16_off_where_it_would_be_fast(monkeypatch, value, allowed):
    from aelab.train import precision

    monkeypatch.setattr(precision.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx2", "amx_bf16"}))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setenv("AELAB_BF16", value)
    assert precision.bf16_is_fast("cpu") is allowed
    assert precision.bf16_is_fast("cuda") is allowed
