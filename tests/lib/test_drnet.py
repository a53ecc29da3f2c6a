"""DRNET and its LSTM predictor: shapes, the three loss terms by hand, the two optimizers, the frozen second stage."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import aelab
from aelab.vae.drnet import DRNETPredictor

SMALL = dict(frame_shape=(1, 16, 16), n_frames=5, content_dim=6, pose_dim=3, channels=4, disc_hidden=(8,))


def model_and_clips(b=4, seed=0, **cfg):
    torch.manual_seed(seed)
    return aelab.build("drnet", **(SMALL | cfg)), torch.rand(b, 5, 1, 16, 16)


def test_shapes_and_the_clip_is_drawn_from_one_content_and_every_pose():
    model, x = model_and_clips()
    out = model(x)
    assert out.recon.shape == x.shape and out.pose.shape == (4, 5, 3)
    assert out.content.shape == out.content_other.shape == (4, 6)
    assert out.scene_logits.shape == (4,) and out.pair_frames.shape == (4, 2)
    assert torch.allclose(out.recon, model.decode(out.content[:, None], out.pose), atol=1e-6)
    assert model.analogy(x[:2, 0], x[0]).shape == (2, 5, 1, 16, 16)
    assert torch.allclose(model.content(x), torch.stack([model.content(x[:, t]) for t in range(5)], 1), atol=1e-6)


def test_loss_terms_by_hand():
    model, x = model_and_clips(sim_weight=2.0, adv_weight=0.5)
    out = model(x)
    recon = F.binary_cross_entropy_with_logits(out.recon_logits, x, reduction="none").sum((2, 3, 4)).mean()  # sum over pixels, mean over frames and clips
    assert torch.allclose(out.recon, torch.sigmoid(out.recon_logits))
    sim = ((out.content - out.content_other) ** 2).sum(1).mean()
    p = torch.sigmoid(out.scene_logits)
    adv = (-0.5 * p.log() - 0.5 * (1 - p).log()).mean()
    loss = model.loss(x, out)
    assert torch.allclose(loss.total, recon + 2.0 * sim + 0.5 * adv, rtol=1e-5)
    assert torch.allclose(loss.terms["adv"], adv, rtol=1e-5)
    squared = aelab.build("drnet", **(SMALL | dict(recon_loss="squared")))
    squared.load_state_dict(model.state_dict())
    mse = ((out.recon - x) ** 2).sum((2, 3, 4)).mean()
    assert torch.allclose(squared.loss(x, out).terms["recon"], mse, rtol=1e-5)


def test_similarity_is_zero_for_identical_content_and_adv_is_log2_at_one_half():
    model, x = model_and_clips()
    still = x[:, :1].expand(-1, 5, -1, -1, -1).contiguous()  # every frame the same: content cannot differ
    out = model(still)
    assert model.loss(still, out).terms["sim"] == 0
    with torch.no_grad():
        model.discriminator[-1].weight.zero_()
        model.discriminator[-1].bias.zero_()
    out = model(x)
    assert torch.allclose(model.loss(x, out).terms["adv"], torch.tensor(math.log(2.0)))


def test_adversarial_term_trains_only_the_pose_encoder():
    model, x = model_and_clips()
    out = model(x)
    F.binary_cross_entropy_with_logits(out.scene_logits, torch.full((4,), 0.5)).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.pose_encoder.parameters())
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.content_encoder.parameters())
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.decoder.parameters())


def test_discriminator_loss_pairs_same_and_other_clips():
    model, _ = model_and_clips()
    pose = torch.randn(3, 5, 3)
    pairs = torch.tensor([[0, 4], [2, 2], [1, 3]])
    loss, acc = model.discriminator_loss(pose, pairs)
    logits = []
    for b in range(3):
        logits.append((model.scene_logits(pose[b, pairs[b, 0]][None], pose[b, pairs[b, 1]][None]), 1.0))
        logits.append((model.scene_logits(pose[b, pairs[b, 0]][None], pose[(b + 1) % 3, pairs[b, 1]][None]), 0.0))
    expected = torch.stack([F.binary_cross_entropy_with_logits(z, torch.tensor([t])) for z, t in logits]).mean()
    assert torch.allclose(loss, expected, rtol=1e-5)
    assert 0 <= acc <= 1
    with pytest.raises(ValueError, match="at least 2 clips"):
        model.discriminator_loss(pose[:1], pairs[:1])


def test_train_step_updates_both_optimizers():
    model, x = model_and_clips()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    history = aelab.fit(model, x, max_steps=1, batch_size=4, progress=False, device="cpu", log_every=1)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("discriminator.") for k in changed), "the discriminator's optimizer did not step"
    assert any(k.startswith("pose_encoder.") for k in changed) and any(k.startswith("decoder.") for k in changed)
    assert {"recon", "sim", "adv", "disc_loss", "disc_acc"} <= set(history.logs[0])
    opts = model.configure_optimizers(1e-3)
    disc = {id(p) for p in model.discriminator.parameters()}
    assert {id(p) for p in opts[1].param_groups[0]["params"]} == disc
    assert not disc & {id(p) for p in opts[0].param_groups[0]["params"]}


def test_bad_inputs_get_clear_errors():
    model, x = model_and_clips()
    with pytest.raises(ValueError, match="power of two"):
        aelab.build("drnet", frame_shape=(1, 28, 28))
    with pytest.raises(ValueError, match=r"expects input of shape \(batch, 5, 1, 16, 16\), got \(4, 5, 1, 8, 8\)"):
        model(torch.rand(4, 5, 1, 8, 8))
    with pytest.raises(ValueError, match=r"frames of shape \(\.\.\., 1, 16, 16\)"):
        model.pose(torch.rand(3, 1, 8, 8))


def test_predictor_is_frozen_drnet_plus_lstm(tmp_path):
    drnet, x = model_and_clips(b=6)
    pred = DRNETPredictor.from_drnet(drnet, lstm_hidden=16, n_past=2)
    assert pred.config.content_dim == 6 and pred.name == "drnet_lstm"
    for k, v in drnet.state_dict().items():
        assert torch.equal(pred.drnet.state_dict()[k], v)
    frozen = {k: v.clone() for k, v in pred.drnet.state_dict().items()}
    lstm_before = pred.lstm.weight_ih_l0.clone()
    aelab.fit(pred, x, epochs=2, batch_size=3, progress=False, device="cpu")
    assert all(torch.equal(frozen[k], v) for k, v in pred.drnet.state_dict().items()), "the DRNET must stay frozen"
    assert not torch.equal(lstm_before, pred.lstm.weight_ih_l0)

    out = pred(x)
    assert out.predicted.shape == (6, 4, 3) and out.recon.shape == x.shape
    # teacher forcing: step t sees the true pose of frame t and the content of frame n_past - 1
    content = drnet.content(x[:, 1])
    one, _ = pred.step_poses(out.pose[:, 2:3], content, None)
    assert one.shape == (6, 1, 3)
    frames = pred.predict(x[:, :3], n_future=4)
    assert frames.shape == (6, 4, 1, 16, 16) and frames.min() >= 0 and frames.max() <= 1
    # the first predicted frame follows from the observed poses alone
    nxt, _ = pred.step_poses(drnet.pose(x[:, :3]), drnet.content(x[:, 2]))
    assert torch.allclose(frames[:, 0], drnet.decode(drnet.content(x[:, 2]), nxt[:, -1]), atol=1e-6)
    with pytest.raises(ValueError, match="n_future >= 1"):
        pred.predict(x[:, :3], 0)
    loaded = aelab.load(aelab.save(pred, tmp_path / "p.safetensors"))
    assert torch.allclose(loaded.predict(x[:, :3], 4), frames)
