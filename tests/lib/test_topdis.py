"""TopDis: the quantile shift, the RTD term on decoders with known behaviour, the loss composition."""

from __future__ import annotations

import pytest
import torch

import aelab
from aelab.vae.topdis import shift_in_quantiles, topdis_term

normal = torch.distributions.Normal(0.0, 1.0)


def test_shift_moves_the_quantile_by_exactly_the_shift():
    z = torch.randn(500, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    shifted, valid = shift_in_quantiles(z, dim=1, shift=0.2)
    assert torch.equal(shifted[:, [0, 2]], z[:, [0, 2]])  # other coordinates untouched
    u, u2 = normal.cdf(z[valid, 1]), normal.cdf(shifted[valid, 1])
    assert torch.allclose(u2 - u, torch.full_like(u, 0.2), atol=1e-4)
    assert torch.equal(valid, normal.cdf(z[:, 1]) + 0.2 < 1 - 1e-4)  # exactly the codes pushed past the top quantile are dropped
    assert torch.equal(shifted[~valid, 1], z[~valid, 1])


def test_shifted_codes_stay_standard_normal_in_distribution():
    # Phi(z) ~ U(0, 1); keeping Phi(z) < 1 - C and adding C gives U(C, 1): z' has the N(0, 1) law truncated below
    z = torch.randn(20_000, 1, generator=torch.Generator().manual_seed(1))
    shifted, valid = shift_in_quantiles(z, 0, 0.25)
    u = normal.cdf(shifted[valid, 0])
    assert abs(u.min().item() - 0.25) < 0.01 and abs(u.mean().item() - 0.625) < 0.01
    naive = z[:, 0] + 0.25 * 4  # a plain shift by a comparable amount leaves the prior's bulk
    assert (naive > 3).float().mean() > 10 * (shifted[valid, 0] > 3).float().mean()


def test_topdis_term_is_zero_when_the_decoder_ignores_the_shifted_coordinate():
    weight = torch.randn(1, 10, generator=torch.Generator().manual_seed(2))

    def decode(z):  # uses z_1 only
        return torch.tanh(z[:, 1:2] @ weight)

    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(3))
    seen = set()
    for seed in range(6):
        torch.manual_seed(seed)
        dim = int(torch.randint(2, ()))
        torch.manual_seed(seed)
        value = topdis_term(decode, z, shift=0.2, kind="full")
        seen.add(dim)
        if dim == 0:
            assert value.item() == 0.0
        else:
            assert value.item() > 0.0
    assert seen == {0, 1}


@pytest.mark.parametrize("kind", ["h0", "full"])
def test_topdis_gradient_reaches_the_decoder(kind):
    torch.manual_seed(0)
    model = aelab.build("topdis", input_shape=(1, 28, 28), backbone="mlp", hidden=(32,), latent_dim=3, rtd=kind, topdis_points=16)
    x = torch.rand(16, 1, 28, 28)
    out = model(x)
    term = model.topdis(out.z)
    assert term.item() > 0
    term.backward()
    grads = [p.grad for p in model.decoder.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


def test_loss_is_the_base_loss_plus_the_weighted_term():
    torch.manual_seed(0)
    cfg = dict(input_shape=(1, 28, 28), backbone="mlp", hidden=(32,), latent_dim=3)
    model = aelab.build("topdis", topdis_weight=2.5, beta=3.0, **cfg)
    base = aelab.build("beta_vae", beta=3.0, **cfg)
    base.load_state_dict(model.state_dict())
    x = torch.rand(16, 1, 28, 28)
    out = model(x)
    torch.manual_seed(7)
    loss = model.loss(x, out)
    torch.manual_seed(7)
    term = model.topdis(out.z)
    assert torch.allclose(loss.total, base.loss(x, out).total + 2.5 * term)
    assert torch.allclose(loss.terms["topdis"], term)


def test_topdis_on_factor_vae_adds_to_its_loss():
    torch.manual_seed(0)
    model = aelab.build("topdis_factor_vae", input_shape=(1, 28, 28), backbone="mlp", hidden=(32,), latent_dim=3, disc_hidden=(8,))
    x = torch.rand(16, 1, 28, 28)
    out = model(x)
    loss = model.loss(x, out)
    assert {"recon", "kl", "tc", "topdis"} <= set(loss.terms)


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="shift"):
        aelab.build("topdis", shift=1.5)
    with pytest.raises(ValueError, match="rtd must be one of"):
        aelab.build("topdis", rtd="h2")
    with pytest.raises(ValueError, match="topdis_weight"):
        aelab.build("topdis_factor_vae", topdis_weight=-1.0)
