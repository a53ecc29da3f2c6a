"""Plots the lectures share: image grids, reconstructions, latent spaces, traversals, training curves,
and ipywidgets explorers. Each function returns the matplotlib figure or axes it drew on.
"""

from aelab.viz.images import compare_reconstructions, image_rows, make_grid, show_features, show_images
from aelab.viz.latents import hinton, latent_grid, latent_scatter, plot_history, traversal_grid
from aelab.viz.widgets import TraversalExplorer, traversal_explorer

__all__ = [
    "TraversalExplorer",
    "compare_reconstructions",
    "hinton",
    "image_rows",
    "latent_grid",
    "latent_scatter",
    "make_grid",
    "plot_history",
    "show_features",
    "show_images",
    "traversal_explorer",
    "traversal_grid",
]
