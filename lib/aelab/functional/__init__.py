"""Pure tensor math shared by every model: no nn.Module, no state.

Reductions: each function returns one value per example ``(B,)`` unless its docstring says otherwise
(the sample divergences of ``kernels`` return one 0-dim value for a pair of samples).
"""

from aelab.functional.distributions import (
    LOG_2PI,
    bernoulli_log_likelihood,
    elbo,
    gaussian_log_likelihood,
    kl_normal,
    laplace_log_likelihood,
    log_normal,
    reparameterize,
    squared_error,
)
from aelab.functional.estimators import (
    LatentVariableModel,
    importance_sampled_nll,
    iwae_bound,
    log_importance_weights,
)
from aelab.functional.kernels import (
    energy_distance,
    imq_kernel,
    kernel_scales,
    mmd,
    pairwise_distances,
    random_directions,
    rbf_kernel,
    sliced_wasserstein,
)
from aelab.functional.quantization import (
    codebook_perplexity,
    ema_codebook_update,
    quantize,
    straight_through,
)
from aelab.functional.sparsity import (
    batch_topk_activation,
    dead_topk_activation,
    geometric_median,
    heaviside_step,
    jumprelu,
    l1_penalty,
    prefix_reconstructions,
    rectangle,
    remove_parallel_grad,
    topk_activation,
)
from aelab.functional.total_correlation import (
    AggregatePosterior,
    KLDecomposition,
    kl_decomposition,
    log_aggregate_posterior,
    log_density_gaussian,
    minibatch_log_weights,
    permute_dims,
)

__all__ = [
    "AggregatePosterior",
    "KLDecomposition",
    "LOG_2PI",
    "LatentVariableModel",
    "bernoulli_log_likelihood",
    "codebook_perplexity",
    "elbo",
    "ema_codebook_update",
    "energy_distance",
    "gaussian_log_likelihood",
    "importance_sampled_nll",
    "imq_kernel",
    "iwae_bound",
    "kernel_scales",
    "kl_decomposition",
    "kl_normal",
    "laplace_log_likelihood",
    "log_aggregate_posterior",
    "log_density_gaussian",
    "log_importance_weights",
    "log_normal",
    "minibatch_log_weights",
    "mmd",
    "pairwise_distances",
    "permute_dims",
    "quantize",
    "random_directions",
    "rbf_kernel",
    "reparameterize",
    "sliced_wasserstein",
    "straight_through",
    "topk_activation",
    "batch_topk_activation",
    "dead_topk_activation",
    "geometric_median",
    "heaviside_step",
    "jumprelu",
    "l1_penalty",
    "prefix_reconstructions",
    "rectangle",
    "remove_parallel_grad",
    "squared_error",
]
