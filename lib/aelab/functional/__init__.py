"""Pure tensor math shared by every model: no nn.Module, no state.

Reductions: each function returns one value per example ``(B,)`` unless its docstring says otherwise.
"""

from aelab.functional.distributions import (
    LOG_2PI,
    bernoulli_log_likelihood,
    elbo,
    gaussian_log_likelihood,
    kl_normal,
    log_normal,
    reparameterize,
)
from aelab.functional.sparsity import topk_activation

__all__ = [
    "LOG_2PI",
    "bernoulli_log_likelihood",
    "elbo",
    "gaussian_log_likelihood",
    "kl_normal",
    "log_normal",
    "reparameterize",
    "topk_activation",
]
