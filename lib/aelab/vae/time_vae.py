"""TimeVAE (Desai et al. 2021, "TimeVAE: A Variational Auto-Encoder for Multivariate Time Series Generation").

A VAE for windows x of shape (T, D) (time, features). The encoder is a stack of stride-2 conv1d
layers; the decoder is a *sum of interpretable blocks*, each a function of the same code z:

    x_hat = level(z) + trend(z) + sum_s seasonal_s(z) + residual(z),             all (B, T, D)

- level: one value per feature, constant over time (a dense net z -> D);
- trend: a polynomial in scaled time, trend[t, d] = sum_{p=1}^{P} theta_dp(z) (t / T)^p (the constant
  p = 0 is the level's); ``trend_degree`` = P;
- seasonal: for each (n_seasons, season_length) in ``seasons`` a table of n_seasons values per
  feature, season[t, d] = table_d[(t // season_length) mod n_seasons]: periodic with period
  n_seasons * season_length (e.g. 7 seasons of 24 hourly steps: a weekly pattern of daily values);
- residual: the conv1d-transpose decoder of the base TimeVAE, for what the others cannot express.

The objective (Desai et al.'s code) is a weighted squared error plus the KL, per window:

    recon_weight * sum_{t,d} (x_td - x_hat_td)^2 + KL(q(z|x) || N(0, I)),

averaged over the batch: a Gaussian decoder with variance 1 / (2 recon_weight) up to a constant.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from aelab.functional import kl_normal, reparameterize, squared_error
from aelab.nn.base import Loss, Model
from aelab.nn.sequence import Conv1dDecoder, Conv1dEncoder
from aelab.registry import register


@dataclass
class TimeVAEConfig:
    input_shape: tuple[int, ...] = (24, 5)
    """Shape of one window (seq_len T, n_features D); the sines of TimeGAN are (24, 5)."""
    latent_dim: int = 8
    """Number of latent dimensions d of z (Desai et al. use 8)."""
    channels: tuple[int, ...] = (50, 100, 200)
    """Widths of the encoder's stride-2 conv1d layers (the residual decoder mirrors them); Desai et al.'s."""
    trend_degree: int = 0
    """Degree P of the trend polynomial (terms (t/T)^1 .. (t/T)^P); 0: no trend block."""
    seasons: tuple[tuple[int, int], ...] = ()
    """One seasonal block per pair (n_seasons, season_length); period = n_seasons * season_length steps."""
    use_level: bool = False
    """Add the level block (a constant per feature). Desai et al. use it with the trend and seasonal blocks."""
    use_residual: bool = True
    """Add the residual conv decoder (the base TimeVAE when no other block is on)."""
    recon_weight: float = 3.0
    """Weight of the summed squared error against the KL (Desai et al.'s default is 3)."""

    def __post_init__(self) -> None:
        self.input_shape = tuple(int(v) for v in self.input_shape)
        self.channels = tuple(int(c) for c in self.channels)
        self.seasons = tuple(tuple(int(v) for v in s) for s in self.seasons)  # JSON gives lists back
        if len(self.input_shape) != 2 or min(self.input_shape) < 1:
            raise ValueError(f"input_shape must be (seq_len, n_features) with both >= 1, got {self.input_shape}")
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {self.latent_dim}")
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"channels must be a non-empty tuple of widths >= 1, got {self.channels}")
        if self.trend_degree < 0:
            raise ValueError(f"trend_degree must be >= 0, got {self.trend_degree}")
        for s in self.seasons:
            if len(s) != 2 or min(s) < 1:
                raise ValueError(f"each season must be a pair (n_seasons >= 1, season_length >= 1), got {s}")
        if not (self.use_level or self.use_residual or self.trend_degree or self.seasons):
            raise ValueError("the decoder needs at least one block: use_level, use_residual, trend_degree > 0 or seasons")
        if self.recon_weight <= 0:
            raise ValueError(f"recon_weight must be > 0, got {self.recon_weight}")


class LevelBlock(nn.Module):
    """z -> one value per feature, repeated over time: (B, d) -> (B, T, D)."""

    def __init__(self, latent_dim: int, seq_len: int, n_features: int):
        super().__init__()
        self.seq_len = seq_len
        self.net = nn.Sequential(nn.Linear(latent_dim, n_features), nn.ReLU(), nn.Linear(n_features, n_features))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).unsqueeze(1).expand(-1, self.seq_len, -1)


class TrendBlock(nn.Module):
    """A polynomial trend: trend[b, t, d] = sum_{p=1}^{P} theta[b, d, p] (t / T)^p, theta = linear(z)."""

    def __init__(self, latent_dim: int, seq_len: int, n_features: int, degree: int):
        super().__init__()
        self.n_features, self.degree = n_features, degree
        self.coefficients = nn.Linear(latent_dim, n_features * degree)  # theta, flattened (D, P)
        t = torch.arange(seq_len, dtype=torch.float32) / seq_len
        self.register_buffer("basis", torch.stack([t ** (p + 1) for p in range(degree)]), persistent=False)  # (P, T)

    def forward(self, z: Tensor) -> Tensor:
        theta = self.coefficients(z).view(z.shape[0], self.n_features, self.degree)  # (B, D, P)
        return (theta @ self.basis).transpose(1, 2)  # (B, T, D)


class SeasonalBlock(nn.Module):
    """n_seasons values per feature, each held for season_length steps, repeating: (B, d) -> (B, T, D)."""

    def __init__(self, latent_dim: int, seq_len: int, n_features: int, n_seasons: int, season_length: int):
        super().__init__()
        self.n_features, self.n_seasons, self.season_length = n_features, n_seasons, season_length
        self.values = nn.Linear(latent_dim, n_features * n_seasons)
        index = (torch.arange(seq_len) // season_length) % n_seasons  # the season of each step, (T,)
        self.register_buffer("index", index, persistent=False)

    @property
    def period(self) -> int:
        return self.n_seasons * self.season_length

    def forward(self, z: Tensor) -> Tensor:
        table = self.values(z).view(z.shape[0], self.n_features, self.n_seasons)  # (B, D, S)
        return table[:, :, self.index].transpose(1, 2)  # (B, T, D)


@dataclass
class TimeVAEOutput:
    """What ``TimeVAE.forward`` returns."""

    recon: Tensor
    """Reconstruction, the sum of the components, (B, T, D)."""
    mu: Tensor
    """Posterior mean, (B, latent_dim)."""
    logvar: Tensor
    """Posterior log-variance, (B, latent_dim)."""
    z: Tensor
    """The reparameterised sample, (B, latent_dim)."""
    x: Tensor
    """The input, (B, T, D)."""
    components: dict[str, Tensor]
    """Each decoder block's output, (B, T, D): "level", "trend", "season_0", ..., "residual"; they sum to recon."""


@register("time_vae")
class TimeVAE(Model):
    """A VAE for (T, D) windows: conv1d encoder, decoder = level + trend + seasonal blocks + residual conv."""

    Config = TimeVAEConfig

    def __init__(self, config: TimeVAEConfig):
        super().__init__(config)
        seq_len, n_features = config.input_shape
        d = config.latent_dim
        self.encoder = Conv1dEncoder(seq_len, n_features, config.channels, 2 * d)
        blocks: dict[str, nn.Module] = {}
        if config.use_level:
            blocks["level"] = LevelBlock(d, seq_len, n_features)
        if config.trend_degree:
            blocks["trend"] = TrendBlock(d, seq_len, n_features, config.trend_degree)
        for i, (n_seasons, length) in enumerate(config.seasons):
            blocks[f"season_{i}"] = SeasonalBlock(d, seq_len, n_features, n_seasons, length)
        if config.use_residual:
            blocks["residual"] = Conv1dDecoder(d, seq_len, n_features, config.channels)
        self.blocks = nn.ModuleDict(blocks)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, D) -> mu, logvar, each (B, latent_dim)."""
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return mu, logvar

    def components(self, z: Tensor) -> dict[str, Tensor]:
        """Each block's output for codes z (B, latent_dim): name -> (B, T, D)."""
        return {name: block(z) for name, block in self.blocks.items()}

    def decode(self, z: Tensor) -> Tensor:
        """(B, latent_dim) -> the sum of the blocks, (B, T, D)."""
        return torch.stack(list(self.components(z).values())).sum(0)

    def forward(self, x: Tensor) -> TimeVAEOutput:
        x = self.check_input(x)
        mu, logvar = self.encode(x)
        z = reparameterize(mu, logvar)
        parts = self.components(z)
        recon = torch.stack(list(parts.values())).sum(0)
        return TimeVAEOutput(recon=recon, mu=mu, logvar=logvar, z=z, x=x, components=parts)

    def loss(self, batch, out: TimeVAEOutput) -> Loss:
        """recon_weight * squared error summed over (T, D) + KL summed over latents; both batch means.

        terms: ``recon`` (the summed squared error, unweighted) and ``kl``, batch means, so
        total = recon_weight * recon + kl.
        """
        recon = squared_error(out.x, out.recon).mean()
        kl = kl_normal(out.mu, out.logvar).mean()
        return Loss(self.config.recon_weight * recon + kl, {"recon": recon, "kl": kl})

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Decode n draws from the prior: (n, T, D)."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.config.latent_dim, generator=generator, device=device)
        return self.decode(z)
