"""The semi-supervised VAE: Kingma, Rezende, Mohamed & Welling 2014 ("Semi-supervised Learning with
Deep Generative Models", model M2), in the partially specified form of Siddharth et al. 2017
("Learning Disentangled Representations with Semi-Supervised Deep Generative Models").

Generative model: a discrete, interpretable latent y (the digit) and a continuous style latent z,

    p(y) = Uniform(K),  p(z) = N(0, I),  p(x | y, z)  (Bernoulli, Gaussian or Laplace, as the VAE).

Inference: a classifier q(y|x) and a style encoder q(z|x, y) = N(mu(x, y), diag exp(logvar(x, y))).
y is *supervised* on a few labelled examples and a latent variable on all the others:

    labelled (x, y):  ELBO(x, y) = E_q(z|x,y)[log p(x|y,z)] - KL(q(z|x,y) || p(z)) + log p(y)
    unlabelled x:     ELBO(x)    = sum_y q(y|x) ELBO(x, y) + H(q(y|x))            (enumeration)

and, since the unlabelled term alone gives the classifier no reason to agree with the labels'
meaning, the labelled examples also train q(y|x) directly (Kingma et al. eq. 9):

    loss = 1/B [ sum_labelled (-ELBO(x, y) - alpha log q(y|x)) + sum_unlabelled -ELBO(x) ].

Kingma et al. weigh the classifier term by alpha = 0.1 N against the ELBOs summed over the N
training examples, with the classifier term an average over the labelled ones: per labelled
example that is 0.1 N / N_labelled (``kingma_alpha``), the convention of ``alpha`` here.

Siddharth et al. write the same objective for any factorisation of q; the unsupervised term may
sum out y exactly (``unsupervised="enumerate"``, the default, exact and K times the decoder cost)
or use one relaxed sample of y, a Gumbel-softmax / Concrete draw (Jang et al. 2017; Maddison et al.
2017) with the categorical KL in closed form (``unsupervised="relaxed"``). When q infers y *after*
z, q(z|x) q(y|z, x), their supervised term needs q(y|x) = E_q(z|x) q(y|z, x), estimated by importance
weights q(y|z, x) / q(y|x); with the encoder order of M2 used here (y first, then z given y), q(y|x)
is the classifier's output and their supervised term reduces to the ELBO at the true y plus
alpha log q(y|x), which is what ``loss`` computes.

Batches are ``(x, y)`` with y = -1 marking an unlabelled example (``hide_labels`` makes such
labels; ``oversample_labelled`` repeats the few labelled examples so that most batches see some),
so ``aelab.fit`` trains the model as it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import Tensor

from aelab.data.images import Split
from aelab.functional import kl_normal, reparameterize
from aelab.functional.semi_supervised import categorical_kl_uniform, enumerated_elbo
from aelab.nn.backbone import make_encoder
from aelab.nn.base import Loss
from aelab.registry import register
from aelab.vae.cvae import CVAE, CVAEConfig
from aelab.vae.vae import VAEOutput

UNSUPERVISED = ("enumerate", "relaxed")


@dataclass
class SSVAEConfig(CVAEConfig):
    latent_dim: int = 16
    """Dimensions of the continuous style latent z (Kingma et al. use 50 on MNIST)."""
    classifier_hidden: tuple[int, ...] = (512, 256)
    """Hidden widths of the classifier q(y|x) (an MLP; for conv the last one is the dense layer width)."""
    alpha: float = 10.0
    """Weight of -log q(y|x) per labelled example, against its ELBO's weight 1 (Kingma et al.'s
    alpha = 0.1 N is 0.1 N / N_labelled per labelled example: ``kingma_alpha``)."""
    unsupervised: str = "enumerate"
    """How the unlabelled ELBO treats y: "enumerate" (exact sum over the classes, M2) or "relaxed"
    (one Gumbel-softmax sample at ``temperature``, the categorical KL in closed form)."""
    temperature: float = 0.5
    """Temperature of the Gumbel-softmax relaxation (unsupervised="relaxed" only)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_classes < 2:
            raise ValueError(f"a semi-supervised model needs n_classes >= 2, got {self.n_classes}")
        if self.unsupervised not in UNSUPERVISED:
            raise ValueError(f"unsupervised must be one of {UNSUPERVISED}, got {self.unsupervised!r}")
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


@dataclass
class SSVAEOutput(VAEOutput):
    """What ``SSVAE.forward`` returns. recon/mu/logvar/z are those of one class per example (for
    pictures): the true class if labelled, else the most probable class (enumerate) or the relaxed
    sample (relaxed). The loss reads the ``pair_*`` fields: one row per (example, class) pair."""

    y_logits: Tensor
    """Logits of the classifier q(y|x), (B, K)."""
    labels: Tensor
    """The batch's labels, -1 where unlabelled, (B,) int64."""
    pair_index: Tensor
    """Example of each pair, (P,): the L labelled examples first, then each unlabelled example
    K times in a row (enumerate) or once (relaxed)."""
    pair_y: Tensor
    """The class of each pair as a (one-hot or relaxed) row, (P, K)."""
    pair_recon: Tensor
    """Decoder output of each pair, (P, *input_shape)."""
    pair_mu: Tensor
    """Mean of q(z|x, y) of each pair, (P, latent_dim)."""
    pair_logvar: Tensor
    """Log-variance of q(z|x, y) of each pair, (P, latent_dim)."""


def kingma_alpha(n_total: int, n_labelled: int) -> float:
    """Kingma et al.'s alpha = 0.1 N as a weight per labelled example: 0.1 * n_total / n_labelled."""
    if n_labelled < 1 or n_total < n_labelled:
        raise ValueError(f"need 1 <= n_labelled <= n_total, got {n_labelled} and {n_total}")
    return 0.1 * n_total / n_labelled


def hide_labels(y: Tensor, n_labels: int, n_classes: int | None = None, seed: int = 0) -> Tensor:
    """Keep ``n_labels`` labels, the same number per class, and set every other one to -1 (unlabelled).

    y (N,) integer labels -> (N,) int64 with n_labels // n_classes labels kept per class, chosen at
    random with ``seed`` (the balanced subsets of Kingma et al. 2014 and Siddharth et al. 2017).
    """
    if y.dim() != 1 or y.is_floating_point():
        raise ValueError(f"hide_labels takes integer labels (N,), got {y.dtype} {tuple(y.shape)}")
    k = int(n_classes if n_classes is not None else int(y.max()) + 1)
    if n_labels < 0 or n_labels % k:
        raise ValueError(f"n_labels must be a non-negative multiple of the {k} classes (a balanced subset), got {n_labels}")
    g = torch.Generator().manual_seed(seed)
    out = torch.full(y.shape, -1, dtype=torch.long)
    for c in range(k):
        where = (y == c).nonzero().squeeze(1)
        if len(where) < n_labels // k:
            raise ValueError(f"class {c} has {len(where)} examples, fewer than the {n_labels // k} labels asked per class")
        out[where[torch.randperm(len(where), generator=g)[: n_labels // k]]] = c
    return out


def oversample_labelled(x: Tensor, y: Tensor, share: float = 0.1) -> Split:
    """Repeat the labelled examples (y >= 0) so that they make up about ``share`` of the examples.

    With 100 labels among 60,000 images a batch of 100 holds a labelled example one time in six;
    repeated, every batch sees a few. The unlabelled examples are kept once. Returns Split(x, y) with
    the labelled copies appended (a labelled copy also counts once more in the ELBO average).
    """
    if not 0 < share < 1:
        raise ValueError(f"share must be in (0, 1), got {share}")
    lab = (y >= 0).nonzero().squeeze(1)
    if len(lab) == 0:
        raise ValueError("no labelled examples (all labels are -1): nothing to oversample")
    n_unlab = len(y) - len(lab)
    repeats = max(1, round(share * n_unlab / ((1 - share) * len(lab))))
    idx = torch.cat([(y < 0).nonzero().squeeze(1), lab.repeat(repeats)])
    return Split(x[idx], y[idx])


@register("ss_vae")
class SSVAE(CVAE):
    """M2 / Siddharth et al.: a classifier q(y|x), a style encoder q(z|x, y), a decoder p(x|y, z)."""

    Config = SSVAEConfig

    def __init__(self, config: SSVAEConfig):
        super().__init__(config)
        clf = SimpleNamespace(backbone=config.backbone, input_shape=tuple(config.input_shape),
                              hidden=config.classifier_hidden, channels=config.channels)
        self.classifier = make_encoder(clf, config.n_classes)

    def check_labels(self, y: Tensor, batch: int) -> Tensor:
        """Labels (B,) of integers in [-1, K), -1 for unlabelled; a clear error otherwise."""
        k = self.config.n_classes
        if not isinstance(y, Tensor) or y.dim() != 1 or y.is_floating_point():
            what = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"{self.name} expects integer labels (B,) with -1 for unlabelled examples, got {what}")
        if y.shape[0] != batch:
            raise ValueError(f"got {y.shape[0]} labels for a batch of {batch}")
        if y.numel() and (y.min() < -1 or y.max() >= k):
            raise ValueError(f"labels must be in [0, {k}) or -1 (unlabelled), got values in [{int(y.min())}, {int(y.max())}]")
        return y.long()

    def classify(self, x: Tensor) -> Tensor:
        """Logits of q(y|x): (B, *input_shape) -> (B, K)."""
        return self.classifier(self.check_input(x))

    def forward(self, x: Tensor, y: Tensor) -> SSVAEOutput:
        x = self.check_input(x)
        y = self.check_labels(y, x.shape[0])
        if self.training and self.config.binarize:
            x = torch.bernoulli(x)
        k = self.config.n_classes
        y_logits = self.classifier(x)  # (B, K)
        lab = (y >= 0).nonzero().squeeze(1)  # (L,)
        unl = (y < 0).nonzero().squeeze(1)  # (U,)
        eye = torch.eye(k, device=x.device, dtype=x.dtype)
        if self.config.unsupervised == "enumerate":
            pair_index = torch.cat([lab, unl.repeat_interleave(k)])  # (L + U K,)
            pair_y = torch.cat([eye[y[lab]], eye.repeat(len(unl), 1)])  # (L + U K, K)
        else:
            soft = F.gumbel_softmax(y_logits[unl].float(), tau=self.config.temperature).to(x.dtype)  # (U, K)
            pair_index = torch.cat([lab, unl])
            pair_y = torch.cat([eye[y[lab]], soft])
        mu, logvar = self.encode(x[pair_index], pair_y)
        z = reparameterize(mu, logvar)
        recon = self.decoder(torch.cat([z, pair_y.to(z.dtype)], dim=1))  # (P, *input_shape)

        # one pair per example for pictures: the true class, else the most probable (or the relaxed sample)
        pick = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
        pick[lab] = torch.arange(len(lab), device=x.device)
        if self.config.unsupervised == "enumerate":
            pick[unl] = len(lab) + torch.arange(len(unl), device=x.device) * k + y_logits[unl].argmax(1)
        else:
            pick[unl] = len(lab) + torch.arange(len(unl), device=x.device)
        return SSVAEOutput(recon=recon[pick], mu=mu[pick], logvar=logvar[pick], z=z[pick], x=x, y_logits=y_logits,
                           labels=y, pair_index=pair_index, pair_y=pair_y, pair_recon=recon, pair_mu=mu, pair_logvar=logvar)

    def pair_elbo(self, out: SSVAEOutput) -> tuple[Tensor, Tensor]:
        """Per pair: (log p(x|y,z) with one z sample, KL(q(z|x,y) || N(0, I))), each (P,), summed over pixels / latent dims."""
        log_px = self.log_likelihood(out.x[out.pair_index], out.pair_recon)
        return log_px, kl_normal(out.pair_mu, out.pair_logvar)

    def loss(self, batch, out: SSVAEOutput) -> Loss:
        """1/B [sum_labelled (-ELBO(x, y) - alpha log q(y|x)) + sum_unlabelled -ELBO(x)].

        Each ELBO sums over pixels and latent dimensions; ELBO(x, y) includes log p(y) = -log K; the
        unlabelled ELBO sums y out (enumerate) or uses one relaxed sample and KL(q(y|x) || p(y)) (relaxed).
        Everything is divided by the batch size B (labelled and unlabelled together). terms:
        ``neg_elbo`` (batch mean of -ELBO), ``recon`` and ``kl_z`` (its parts, expected under q(y|x)
        for unlabelled examples), ``class`` (the sum of -log q(y|x) over the labelled examples / B),
        ``labelled`` (the fraction of labelled examples).
        """
        k, b = self.config.n_classes, out.x.shape[0]
        lab = (out.labels >= 0).nonzero().squeeze(1)
        unl = (out.labels < 0).nonzero().squeeze(1)
        n_lab, n_unl = len(lab), len(unl)
        log_px, kl_z = self.pair_elbo(out)  # (P,) each
        log_py = -math.log(k)
        elbo_lab = log_px[:n_lab] - kl_z[:n_lab] + log_py  # (L,)
        recon_sum, kl_sum = -log_px[:n_lab].sum(), kl_z[:n_lab].sum()
        if self.config.unsupervised == "enumerate":
            logits_u = out.y_logits[unl].float()  # (U, K)
            per_class = (log_px[n_lab:] - kl_z[n_lab:] + log_py).view(n_unl, k)  # (U, K)
            elbo_unl = enumerated_elbo(per_class, logits_u)  # (U,)
            q = logits_u.softmax(-1)
            recon_sum = recon_sum - (q * log_px[n_lab:].view(n_unl, k)).sum()
            kl_sum = kl_sum + (q * kl_z[n_lab:].view(n_unl, k)).sum()
        else:
            elbo_unl = log_px[n_lab:] - kl_z[n_lab:] - categorical_kl_uniform(out.y_logits[unl].float())
            recon_sum, kl_sum = recon_sum - log_px[n_lab:].sum(), kl_sum + kl_z[n_lab:].sum()
        ce = F.cross_entropy(out.y_logits[lab].float(), out.labels[lab], reduction="sum")  # sum over labelled
        neg_elbo = -(elbo_lab.sum() + elbo_unl.sum()) / b
        total = neg_elbo + self.config.alpha * ce / b
        return Loss(total, {"neg_elbo": neg_elbo.detach(), "recon": recon_sum.detach() / b, "kl_z": kl_sum.detach() / b,
                            "class": ce.detach() / b, "labelled": torch.full((), n_lab / b, device=ce.device)})  # with the other terms

    @torch.no_grad()
    def predict(self, x: Tensor, batch_size: int = 1000) -> Tensor:
        """The most probable class under q(y|x): (N, *input_shape) -> (N,) int64, on x's device."""
        was = self.training
        self.eval()
        dev = next(self.parameters()).device
        pred = torch.cat([self.classify(x[i:i + batch_size].to(dev)).argmax(1).to(x.device) for i in range(0, len(x), batch_size)])
        self.train(was)
        return pred

    def accuracy(self, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
        """Fraction of examples whose most probable class under q(y|x) is the label y (N,)."""
        if len(x) != len(y):
            raise ValueError(f"got {len(x)} examples and {len(y)} labels")
        return (self.predict(x, batch_size) == y.to(x.device)).float().mean().item()

    @torch.no_grad()
    def style_transfer(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Keep each example's style, change its class: decode E[z|x, y] with every class.

        x (B, *input_shape); y (B,) the classes to encode the style with (default: the classifier's
        guess). Returns the decoder means (B, K, *input_shape): row b, column k is x_b's style written as class k.
        """
        x = self.check_input(x)
        k = self.config.n_classes
        y = self.classify(x).argmax(1) if y is None else self.check_labels(y, x.shape[0]).clamp_min(0)
        eye = torch.eye(k, device=x.device, dtype=x.dtype)
        mu, _ = self.encode(x, eye[y])  # (B, d): the style
        z = mu.repeat_interleave(k, dim=0)  # (B K, d)
        images = self.decode(z, eye.repeat(x.shape[0], 1))
        return images.view(x.shape[0], k, *x.shape[1:])
