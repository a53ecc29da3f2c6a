"""beta-TCVAE (Chen, Li, Grosse & Duvenaud 2018, "Isolating Sources of Disentanglement in VAEs").

Same networks and likelihoods as the VAE. The averaged KL term of the ELBO splits into index-code
mutual information, total correlation and dimension-wise KL (Chen et al., eq. 2; see
``aelab.functional.total_correlation``); beta-TCVAE weighs them separately and minimises

    E[-log p(x|z)] + alpha * I_q(z; n) + beta * KL(q(z) || prod_k q(z_k)) + gamma * sum_k KL(q(z_k) || p(z_k)),

with the aggregate posterior q(z) estimated from the minibatch by minibatch weighted sampling
("mws") or minibatch stratified sampling ("mss"); both need the data set size N. Penalising the
total correlation (beta > 1) pushes the aggregate posterior towards independent dimensions
without squeezing the information the code carries about x, which a larger KL weight does.
alpha = beta = gamma = 1 is the VAE (with a one-sample KL estimate).

MWS weighs every posterior of the batch by 1/(N M), M the batch size: its density is the batch
mixture divided by N, a lower bound on q(z) as Chen et al. derive it. Its logged terms are offset
accordingly; with the whole data set as the batch, exactly by +log N (``mi``), +(d - 1) log N
(``tc``) and -d log N (``dim_kl``). That constant does not change the gradients (the weight MWS
gives each example's own posterior, 1/(N M) against MSS's 1/N, does); compare the numbers of MSS,
whose density estimate is unbiased, with published values.
"""

from __future__ import annotations

from dataclasses import dataclass

from aelab.functional import kl_decomposition, kl_normal
from aelab.functional.total_correlation import ESTIMATORS
from aelab.nn.base import Loss
from aelab.registry import register
from aelab.vae.beta_vae import DSpritesVAEConfig
from aelab.vae.vae import VAE, VAEOutput

DSPRITES_SIZE = 737_280


@dataclass
class BetaTCVAEConfig(DSpritesVAEConfig):
    alpha: float = 1.0
    """Weight of the index-code mutual information I_q(z; n)."""
    beta: float = 6.0
    """Weight of the total correlation KL(q(z) || prod_k q(z_k)) (Chen et al.'s beta; 1 is the VAE)."""
    gamma: float = 1.0
    """Weight of the dimension-wise KL sum_k KL(q(z_k) || p(z_k))."""
    estimator: str = "mss"
    """Minibatch estimator of log q(z): "mss" (stratified sampling) or "mws" (weighted sampling), Chen et al. appendix C."""
    dataset_size: int = DSPRITES_SIZE
    """Number N of training examples that q(z) averages over (737,280 for the full dSprites grid)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        if self.dataset_size < 1:
            raise ValueError(f"dataset_size must be the number of training examples (>= 1), got {self.dataset_size}")
        if min(self.alpha, self.beta, self.gamma) < 0:
            raise ValueError(f"alpha, beta and gamma must be >= 0, got {self.alpha}, {self.beta}, {self.gamma}")


@register("beta_tcvae")
class BetaTCVAE(VAE):
    """A VAE whose KL term is split into MI, TC and dimension-wise KL, each with its own weight."""

    Config = BetaTCVAEConfig

    def loss(self, batch, out: VAEOutput) -> Loss:
        """recon + alpha * mi + beta * tc + gamma * dim_kl, each per example, then the batch mean.

        recon is summed over pixels; the three KL terms are one-sample estimates at z (summed over
        latent dimensions) with q(z) estimated from this batch. terms: ``recon``, ``mi``, ``tc``,
        ``dim_kl`` (batch means; mi + tc + dim_kl is the Monte Carlo KL) and ``kl``, the closed-form
        KL(q(z|x) || p(z)) for comparison.
        """
        cfg = self.config
        recon = -self.log_likelihood(out.x, out.recon)  # (B,)
        terms = kl_decomposition(out.z, out.mu, out.logvar, cfg.dataset_size, cfg.estimator)
        total = recon + cfg.alpha * terms.mi + cfg.beta * terms.tc + cfg.gamma * terms.dim_kl
        logged = {
            "recon": recon.mean(),
            "mi": terms.mi.mean(),
            "tc": terms.tc.mean(),
            "dim_kl": terms.dim_kl.mean(),
            "kl": kl_normal(out.mu, out.logvar).mean(),
        }
        return Loss(total.mean(), logged)
