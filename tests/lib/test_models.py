"""Every registered model: shapes, finite loss, learning, save/load, clear errors on bad input."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import aelab
from aelab.registry import get

# Small configurations per model so the whole file stays fast; a model without an entry is built
# with its defaults. Each model must accept the input shape of its Config.
SMALL: dict[str, list[dict]] = {
    "ae": [dict(hidden=(64,), latent_dim=8), dict(backbone="conv", hidden=(32,), channels=8, latent_dim=4, k=2),
           dict(linear=True, hidden=(), latent_dim=5, likelihood="gaussian"), dict(hidden=(32,), l1=0.1, noise_std=0.2, mask_prob=0.1)],
    "vae": [dict(hidden=(64,), latent_dim=4), dict(backbone="conv", hidden=(32,), channels=8, latent_dim=3),
            dict(hidden=(64,), latent_dim=2, likelihood="gaussian", learn_sigma=True),
            dict(hidden=(32,), input_shape=(1, 64, 64), backbone="conv", channels=4, binarize=True),
            dict(hidden=(32,), latent_dim=2, likelihood="laplace"), dict(hidden=(32,), latent_dim=2, likelihood="laplace", learn_sigma=True)],
    "cvae": [dict(hidden=(32,), latent_dim=3), dict(backbone="conv", hidden=(16,), channels=4, latent_dim=2, n_classes=10)],
    "iwae": [dict(hidden=(32,), latent_dim=3, k=4), dict(hidden=(16,), latent_dim=2, k=2, likelihood="laplace", learn_sigma=True)],
    "info_vae": [dict(hidden=(32,), latent_dim=3, lambda_=100.0), dict(hidden=(32,), latent_dim=2, alpha=0.5, lambda_=10.0, kernel="imq", kernel_scales=(0.5, 1.0))],
    "wae_mmd": [dict(hidden=(32,), latent_dim=3), dict(hidden=(16,), latent_dim=2, stochastic=True, kernel="rbf", cost="bce")],
    "swae": [dict(hidden=(32,), latent_dim=3, n_projections=8), dict(hidden=(32,), latent_dim=2, distance="energy", cost="squared")],
    "vq_vae": [dict(channels=4, embedding_dim=4, codebook_size=16),
               dict(backbone="mlp", hidden=(32,), n_vectors=4, embedding_dim=3, codebook_size=8, ema=True, dead_code_steps=3)],
    "ss_vae": [dict(hidden=(32,), classifier_hidden=(16,), latent_dim=3),
               dict(backbone="conv", hidden=(16,), classifier_hidden=(16,), channels=4, latent_dim=2, unsupervised="relaxed")],
    "drnet": [dict(frame_shape=(1, 8, 8), n_frames=4, content_dim=6, pose_dim=2, channels=4, disc_hidden=(8,)),
              dict(frame_shape=(1, 16, 16), n_frames=3, content_dim=4, pose_dim=3, channels=4, adv_weight=0.0)],
    "drnet_lstm": [dict(frame_shape=(1, 8, 8), n_frames=5, content_dim=6, pose_dim=2, channels=4, lstm_hidden=8, n_past=2)],
    # disentanglement models
    "beta_vae": [dict(input_shape=(1, 28, 28), backbone="mlp", hidden=(32,), latent_dim=3),
                 dict(channels=4, hidden=(16,), latent_dim=3, anneal_capacity=True, gamma=10.0, capacity_max=5.0, capacity_steps=1000)],
    "beta_tcvae": [dict(input_shape=(1, 28, 28), backbone="mlp", hidden=(32,), latent_dim=3, dataset_size=64),
                   dict(channels=4, hidden=(16,), latent_dim=3, estimator="mws", dataset_size=1000)],
    "factor_vae": [dict(input_shape=(1, 28, 28), backbone="mlp", hidden=(32,), latent_dim=3, gamma=5.0, disc_hidden=(16, 16)),
                   dict(channels=4, hidden=(16,), latent_dim=2, disc_hidden=(8,))],
    "topdis": [dict(input_shape=(1, 28, 28), backbone="mlp", hidden=(32,), latent_dim=3, topdis_weight=1.0),
               dict(input_shape=(1, 28, 28), backbone="mlp", hidden=(16,), latent_dim=2, rtd="full", topdis_points=8)],
    "topdis_factor_vae": [dict(input_shape=(1, 28, 28), backbone="mlp", hidden=(32,), latent_dim=3, gamma=5.0, disc_hidden=(16,))],
    # time series
    "time_vae": [dict(input_shape=(12, 3), latent_dim=3, channels=(8, 16)),
                 dict(input_shape=(10, 2), latent_dim=2, channels=(4,), trend_degree=2, seasons=((2, 3), (4, 1)),
                      use_level=True, use_residual=False)],
    # sparse autoencoders and the toy model of superposition
    "toy_superposition": [dict(n_features=5, n_hidden=2, n_instances=3),
                          dict(n_features=4, n_hidden=2, n_instances=2, feature_probability=(0.3,),
                               importance=((1.0, 0.5, 0.25, 0.1), (1.0, 1.0, 1.0, 1.0)))],
    "sae_relu": [dict(d_in=16, d_sae=32),
                 dict(d_in=16, d_sae=32, unit_norm_decoder=False, decoder_norm_l1=True, normalize_activations=True,
                      sparsity_warmup_steps=4, resample_every=3, dead_steps=2, init_b_dec="mean")],
    "sae_topk": [dict(d_in=16, d_sae=32, k=4), dict(d_in=16, d_sae=32, k=3, k_aux=8, dead_steps=2, normalize_activations=True)],
    "sae_batch_topk": [dict(d_in=16, d_sae=32, k=4), dict(d_in=16, d_sae=32, k=2, dead_steps=2, threshold_momentum=0.5)],
    "sae_jumprelu": [dict(d_in=16, d_sae=32, l0_coefficient=1e-3),
                     dict(d_in=16, d_sae=32, pre_encoder_bias=True, bandwidth=0.05, init_threshold=0.05,
                          sparsity_warmup_steps=5, normalize_activations=True)],
    "sae_gated": [dict(d_in=16, d_sae=32), dict(d_in=16, d_sae=32, unit_norm_decoder=False, decoder_norm_l1=True, init_b_dec="zeros")],
    "sae_matryoshka": [dict(d_in=16, d_sae=32, k=4, group_sizes=(4, 12, 16)), dict(d_in=16, d_sae=32, k=3, activation="topk", dead_steps=2)],
    "ksparse_ae": [dict(d_in=16, d_sae=32, k=4, k_schedule_steps=6), dict(d_in=16, d_sae=32, k=2, k_start=16, k_schedule_steps=8, test_alpha=2.0)],
}


def cases():
    for name in aelab.list_models():
        for i, cfg in enumerate(SMALL.get(name, [{}])):
            yield pytest.param(name, cfg, id=f"{name}-{i}")


def batch_for(model, n=16, seed=0):
    """A labelled batch (x, y) like aelab.data's splits: every model reads what it needs from it."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *model.input_shape, generator=g), torch.randint(0, 10, (n,), generator=g)


def run(model, batch):
    """Call the model on a batch the way train_step does."""
    return model(*model.forward_args(batch))


def test_every_model_has_small_configs():
    missing = set(aelab.list_models()) - set(SMALL)
    assert not missing, f"add small test configs for {sorted(missing)} to SMALL"


@pytest.mark.parametrize("name,cfg", list(cases()))
def test_forward_shapes_and_finite_loss(name, cfg):
    torch.manual_seed(0)
    model = aelab.build(name, **cfg)
    batch = batch_for(model)
    x = batch[0]
    out = run(model, batch)
    assert dataclasses.is_dataclass(out), "forward must return a named output (a dataclass)"
    loss = model.loss(batch, out)
    assert loss.total.dim() == 0 and torch.isfinite(loss.total)
    assert loss.terms and all(v.dim() == 0 for v in loss.terms.values())
    assert out.recon.shape == x.shape


@pytest.mark.parametrize("name,cfg", list(cases()))
def test_a_few_steps_lower_the_loss(name, cfg):
    torch.manual_seed(0)
    model = aelab.build(name, **cfg)
    batch = batch_for(model, n=32)
    model.eval()
    torch.manual_seed(1)
    before = model.loss(batch, run(model, batch)).total.item()
    aelab.fit(model, batch, epochs=12, batch_size=32, lr=3e-3, progress=False, device="cpu")
    torch.manual_seed(1)
    after = model.loss(batch, run(model, batch)).total.item()
    assert after < before, f"{name}: loss {before:.3f} -> {after:.3f} did not decrease"


@pytest.mark.parametrize("name,cfg", list(cases()))
def test_save_load_round_trip(name, cfg, tmp_path):
    torch.manual_seed(0)
    model = aelab.build(name, **cfg).eval()
    path = aelab.save(model, tmp_path / "m.safetensors")
    loaded = aelab.load(path)
    assert type(loaded) is type(model) and loaded.config == model.config
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    batch = batch_for(model)
    torch.manual_seed(3)
    a = run(model, batch)
    torch.manual_seed(3)
    b = run(loaded.eval(), batch)
    assert torch.equal(a.recon, b.recon)


@pytest.mark.parametrize("name,cfg", list(cases()))
def test_seeded_cpu_fits_are_deterministic(name, cfg):
    def trained():
        aelab.seed_everything(0)
        model = aelab.build(name, **cfg)
        aelab.fit(model, batch_for(model, n=16), max_steps=3, batch_size=8, lr=3e-3, progress=False, device="cpu")
        return model.state_dict()

    a, b = trained(), trained()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{name}: {key} differs between two runs seeded alike"


@pytest.mark.parametrize("name", aelab.list_models())
def test_wrong_input_shape_gets_a_clear_error(name):
    model = aelab.build(name, **SMALL[name][0])
    y = torch.zeros(4, dtype=torch.long)
    if len(model.input_shape) == 1:  # a flat vector is the right input here: check a wrong size and a wrong rank
        (d,) = model.input_shape
        with pytest.raises(ValueError, match=rf"expects input of shape \(batch, {d}\), got \(4, {d + 2}\)"):
            run(model, (torch.rand(4, d + 2), y))
        with pytest.raises(ValueError, match=rf"expects input of shape \(batch, {d}\), got \(4, 1, {d}\).*reshape"):
            run(model, (torch.rand(4, 1, d), y))
    else:
        flat = torch.rand(4, torch.Size(model.input_shape).numel())
        with pytest.raises(ValueError, match=r"expects input of shape \(batch, .*got \(4, \d+\).*reshape"):
            run(model, (flat, y))
        c, *rest = model.input_shape
        with pytest.raises(ValueError, match=rf"expects input of shape \(batch, {c}, .*got \(4, {c + 2}, "):
            run(model, (torch.rand(4, c + 2, *rest), y))
    with pytest.raises(TypeError, match="floating-point"):
        run(model, ((torch.rand(4, *model.input_shape) * 255).to(torch.uint8), y))


def test_build_rejects_unknown_names_and_fields():
    with pytest.raises(KeyError, match="known models"):
        aelab.build("no_such_model")
    with pytest.raises(TypeError, match="unknown config field.*latent_dims.*valid fields"):
        aelab.build("vae", latent_dims=3)
    with pytest.raises(ValueError, match="likelihood"):
        aelab.build("vae", likelihood="poisson")


def test_registry_refuses_a_second_class_under_a_taken_name():
    with pytest.raises(ValueError, match="already registered"):
        aelab.register("vae")(type("Other", (aelab.Model,), {"Config": get("ae").Config}))


def test_load_rejects_foreign_and_corrupt_files(tmp_path):
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(ValueError, match="not an aelab model"):
        aelab.load(foreign)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="corrupt"):
        aelab.load(bad)
    with pytest.raises(FileNotFoundError):
        aelab.load(tmp_path / "missing.safetensors")


def test_vae_loss_reduction_is_sum_over_pixels_mean_over_batch():
    from aelab.functional import bernoulli_log_likelihood, kl_normal

    torch.manual_seed(0)
    model = aelab.build("vae", hidden=(32,), latent_dim=3)
    x = torch.rand(8, 1, 28, 28)
    out = model(x)
    loss = model.loss(x, out)
    per_example = -bernoulli_log_likelihood(x, out.recon) + kl_normal(out.mu, out.logvar)
    assert torch.allclose(loss.total, per_example.mean())
    assert torch.allclose(loss.terms["recon"] + loss.terms["kl"], loss.total)
    beta = aelab.build("vae", hidden=(32,), latent_dim=3, beta=4.0)
    beta.load_state_dict(model.state_dict())
    lb = beta.loss(x, out)
    assert torch.allclose(lb.total, lb.terms["recon"] + 4.0 * lb.terms["kl"])


def test_ae_linear_spans_pca_subspace_after_training():
    # Baldi & Hornik 1989: the optimal linear AE's decoder spans the top principal subspace.
    torch.manual_seed(0)
    basis = torch.linalg.qr(torch.randn(10, 10)).Q
    scales = torch.tensor([5.0, 3.0, 2.0] + [0.1] * 7)
    x = (torch.randn(2000, 10) * scales) @ basis.T
    model = aelab.build("ae", input_shape=(10,), linear=True, hidden=(), latent_dim=3, likelihood="gaussian")
    aelab.fit(model, x, epochs=60, batch_size=200, lr=1e-2, progress=False, device="cpu")
    w = model.decoder.net[0].weight.detach()  # (10, 3): columns span the decoder's image
    q = torch.linalg.qr(w).Q
    pcs = basis[:, :3]
    cosines = torch.linalg.svdvals(q.T @ pcs)  # cosines of the principal angles
    assert cosines.min() > 0.99


READ_ON_THE_HOST = {
    "cvae": "checks that integer labels lie in [0, n_classes), for a clear error",
    "ss_vae": "splits each batch into its labelled and unlabelled rows",
    "topdis": "draws the latent shift and builds the persistence term's spanning tree on the host",
    "topdis_factor_vae": "draws the latent shift and builds the persistence term's spanning tree on the host",
}
"""Models whose training step reads tensor values on the host (on CUDA, a wait for the device), and why."""


@pytest.mark.parametrize("name", aelab.list_models())
def test_training_steps_on_cuda_do_not_wait_for_the_device(name, as_on_cuda, host_reads):
    """Through ``fit``, after its first step a model's training step reads no tensor value on the host
    (run here on the CPU along the CUDA paths), unless READ_ON_THE_HOST says why it must."""
    aelab.seed_everything(0)
    model = aelab.build(name, **SMALL[name][0])
    per_step: list[list[str]] = []

    def mark(ctx, loss):
        per_step.append(sorted(set(host_reads.calls)))
        host_reads.calls.clear()

    with host_reads:
        aelab.fit(model, batch_for(model, n=64), max_steps=5, batch_size=16, log_every=100, progress=False,
                  callbacks=[mark], device="cpu")
    reads = [calls for calls in per_step[1:] if calls]
    if name in READ_ON_THE_HOST:
        assert reads, f"{name} no longer reads values on the host: remove it from READ_ON_THE_HOST"
    else:
        assert not reads, f"{name}'s training step reads tensor values on the host: {reads[0]}"
