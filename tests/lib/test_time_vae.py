"""TimeVAE: each decoder block against its closed form, components summing to the output, the loss's reductions."""

from __future__ import annotations

import pytest
import torch

import aelab
from aelab.functional import kl_normal
from aelab.nn.sequence import Conv1dDecoder, Conv1dEncoder, GRUHead, conv1d_length
from aelab.vae.time_vae import LevelBlock, SeasonalBlock, TrendBlock


@pytest.mark.parametrize("seq_len", [24, 7, 1])
def test_conv1d_encoder_and_decoder_shapes(seq_len):
    enc = Conv1dEncoder(seq_len, 5, (8, 16, 32), out_dim=6)
    dec = Conv1dDecoder(3, seq_len, 5, (8, 16, 32))
    x = torch.rand(4, seq_len, 5)
    assert enc(x).shape == (4, 6)
    assert dec(torch.randn(4, 3)).shape == (4, seq_len, 5)
    assert conv1d_length(24, 3) == 3 and conv1d_length(7, 2) == 2


def test_gru_head_shapes():
    x = torch.rand(4, 9, 3)
    assert GRUHead(3, 2, 1)(x).shape == (4, 1)
    assert GRUHead(3, 2, 1, every_step=True)(x).shape == (4, 9, 1)


def test_block_shapes():
    z = torch.randn(5, 4)
    assert LevelBlock(4, 12, 3)(z).shape == (5, 12, 3)
    assert TrendBlock(4, 12, 3, degree=2)(z).shape == (5, 12, 3)
    assert SeasonalBlock(4, 12, 3, n_seasons=4, season_length=2)(z).shape == (5, 12, 3)


def test_level_is_constant_over_time():
    out = LevelBlock(4, 12, 3)(torch.randn(5, 4))
    assert torch.equal(out, out[:, :1].expand_as(out))


def test_trend_block_reproduces_the_polynomial_of_its_coefficients():
    T, D, P = 20, 2, 3
    block = TrendBlock(4, T, D, degree=P)
    coef = torch.tensor([[1.5, -2.0, 0.5], [0.0, 3.0, -1.0]])  # (D, P): theta_dp for p = 1..P
    with torch.no_grad():
        block.coefficients.weight.zero_()
        block.coefficients.bias.copy_(coef.flatten())
    out = block(torch.randn(3, 4))  # the code does not matter with zero weights
    t = torch.arange(T, dtype=torch.float32) / T
    expected = torch.stack([sum(coef[d, p] * t ** (p + 1) for p in range(P)) for d in range(D)], dim=1)  # (T, D)
    assert torch.allclose(out, expected.expand(3, T, D), atol=1e-6)


@pytest.mark.parametrize("n_seasons,length", [(4, 3), (3, 1), (2, 5)])
def test_seasonal_block_is_periodic_with_the_configured_period(n_seasons, length):
    T = 30
    block = SeasonalBlock(4, T, 3, n_seasons=n_seasons, season_length=length)
    out = block(torch.randn(2, 4))  # (2, T, 3)
    period = n_seasons * length
    assert block.period == period
    assert torch.equal(out[:, period:], out[:, : T - period])
    # constant within a season, and the season's value is the table entry (t // length) mod n_seasons
    table = block.values(torch.zeros(1, 4)).view(3, n_seasons)
    zero = block(torch.zeros(1, 4))[0]
    for t in range(T):
        assert torch.equal(zero[t], table[:, (t // length) % n_seasons])
    if period > 1:  # not constant over a whole period (the table entries differ for a random init)
        assert not torch.allclose(out[:, :period], out[:, :1].expand(-1, period, -1))


def test_components_sum_to_the_output_and_decode_agrees():
    torch.manual_seed(0)
    model = aelab.build("time_vae", input_shape=(16, 3), latent_dim=4, channels=(8, 16), trend_degree=2,
                        seasons=((4, 2), (2, 1)), use_level=True, use_residual=True)
    assert list(model.blocks) == ["level", "trend", "season_0", "season_1", "residual"]
    out = model(torch.rand(6, 16, 3))
    assert set(out.components) == {"level", "trend", "season_0", "season_1", "residual"}
    total = sum(out.components.values())
    assert torch.allclose(out.recon, total, atol=1e-6)
    assert torch.allclose(model.decode(out.z), out.recon, atol=1e-6)
    assert model.sample(5).shape == (5, 16, 3)


def test_loss_is_weighted_squared_error_sum_over_time_and_features_mean_over_batch():
    torch.manual_seed(0)
    model = aelab.build("time_vae", input_shape=(12, 2), latent_dim=3, channels=(8,), recon_weight=2.5)
    x = torch.rand(7, 12, 2)
    out = model(x)
    loss = model.loss(x, out)
    per_example = ((x - out.recon) ** 2).sum(dim=(1, 2))
    assert torch.allclose(loss.terms["recon"], per_example.mean())
    assert torch.allclose(loss.terms["kl"], kl_normal(out.mu, out.logvar).mean())
    assert torch.allclose(loss.total, 2.5 * per_example.mean() + loss.terms["kl"])


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="seq_len, n_features"):
        aelab.build("time_vae", input_shape=(1, 24, 5))
    with pytest.raises(ValueError, match="pair"):
        aelab.build("time_vae", seasons=((4,),))
    with pytest.raises(ValueError, match="at least one block"):
        aelab.build("time_vae", use_residual=False)
    with pytest.raises(ValueError, match="trend_degree"):
        aelab.build("time_vae", trend_degree=-1)


def test_learns_a_trend_plus_season_series():
    # windows = a random level + random linear trend + a period-4 pattern: the interpretable decoder fits them well
    g = torch.Generator().manual_seed(0)
    n, T = 512, 16
    t = torch.arange(T) / T
    pattern = torch.tensor([0.1, -0.1, 0.05, -0.05])
    x = (0.5 + 0.2 * torch.rand(n, 1, generator=g) + 0.3 * torch.rand(n, 1, generator=g) * t + pattern[torch.arange(T) % 4]).unsqueeze(2)
    aelab.seed_everything(0)
    model = aelab.build("time_vae", input_shape=(T, 1), latent_dim=2, channels=(8, 16), trend_degree=1,
                        seasons=((4, 1),), use_level=True, use_residual=False, recon_weight=1000.0)
    aelab.fit(model, x, epochs=80, batch_size=64, lr=1e-2, progress=False, device="cpu")
    with torch.no_grad():
        mse = ((model(x).recon - x) ** 2).mean().item()
    spread = ((x - x.mean(0)) ** 2).mean().item()  # the error of predicting the mean window
    assert mse < 0.2 * spread, (mse, spread)
