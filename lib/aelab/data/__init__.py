"""Data sets of the course, offline first: cache (``$AELAB_DATA``), then an installed package, then a download.

Fill the cache once with ``python -m aelab.data prepare --all``; later loads take well under a second.
"""

from ._common import PREPARERS, CorruptDataError, DataUnavailableError, prepare
from .images import FASHION_MNIST_CLASSES, Split, fashion_mnist, mnist, read_idx
from .lm import (
    ActivationBatches,
    ActivationCache,
    CacheMismatchError,
    LanguageModel,
    LatentStats,
    SpliceResult,
    activations,
    collect_activations,
    latent_stats,
    load_lm,
    next_token_loss,
    patched_logits,
    splice_eval,
    token_windows,
)
from .series import TimeSeries, sines, timeseries
from .sprites import DSprites, dsprites
from .text import AUSTEN_BOOKS, Corpus, text_corpus
from .toy import ToyFeatures, geometric_importance, toy_features
from .video import MovingMNIST, moving_mnist

__all__ = [
    "ActivationBatches",
    "ActivationCache",
    "CacheMismatchError",
    "LanguageModel",
    "LatentStats",
    "SpliceResult",
    "activations",
    "collect_activations",
    "latent_stats",
    "load_lm",
    "next_token_loss",
    "patched_logits",
    "splice_eval",
    "token_windows",
    "AUSTEN_BOOKS",
    "FASHION_MNIST_CLASSES",
    "PREPARERS",
    "Corpus",
    "CorruptDataError",
    "DSprites",
    "DataUnavailableError",
    "MovingMNIST",
    "Split",
    "TimeSeries",
    "ToyFeatures",
    "dsprites",
    "fashion_mnist",
    "geometric_importance",
    "mnist",
    "moving_mnist",
    "prepare",
    "read_idx",
    "sines",
    "text_corpus",
    "timeseries",
    "toy_features",
]
