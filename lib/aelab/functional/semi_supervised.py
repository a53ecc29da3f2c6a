"""Objectives of semi-supervised generative models with a discrete latent y (Kingma et al. 2014, M2).

For an unlabelled x the class y is a latent variable with a categorical posterior q(y|x). The ELBO
of the pair (x, y) is known for every class, and the unlabelled ELBO takes its expectation under
q(y|x) plus the entropy of q(y|x) (Kingma et al. 2014, eq. 7):

    ELBO(x) = sum_y q(y|x) ELBO(x, y) + H(q(y|x)) = sum_y q(y|x) [ELBO(x, y) - log q(y|x)].

Reductions: one value per example, (B,); the classes are summed over, nothing is averaged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_logits(logits: Tensor) -> None:
    if logits.dim() != 2:
        raise ValueError(f"class logits must be (B, n_classes), got {tuple(logits.shape)}")


def categorical_entropy(logits: Tensor) -> Tensor:
    """H(q) = -sum_k q_k log q_k of the categorical q = softmax(logits): (B, K) -> (B,), summed over classes."""
    _check_logits(logits)
    log_q = F.log_softmax(logits, dim=-1)
    return -(log_q.exp() * log_q).sum(-1)


def categorical_kl_uniform(logits: Tensor) -> Tensor:
    """KL(q || Uniform(K)) = log K - H(q) for q = softmax(logits): (B, K) -> (B,), summed over classes."""
    return math.log(logits.shape[-1]) - categorical_entropy(logits)


def enumerated_elbo(elbo_per_class: Tensor, logits: Tensor) -> Tensor:
    """The ELBO of an unlabelled example, summing out y exactly: sum_k q_k ELBO_k + H(q).

    elbo_per_class (B, K): ELBO(x_b, y = k) of each example for each class, including log p(y);
    logits (B, K): the logits of q(y|x). Returns (B,): the classes are summed over (an exact
    expectation, no sampling). Gradients reach both the per-class ELBOs and the classifier.
    """
    _check_logits(logits)
    if elbo_per_class.shape != logits.shape:
        raise ValueError(
            f"elbo_per_class {tuple(elbo_per_class.shape)} and logits {tuple(logits.shape)} must both be (B, n_classes)"
        )
    log_q = F.log_softmax(logits, dim=-1)
    return (log_q.exp() * (elbo_per_class - log_q)).sum(-1)

