"""aelab.viz draws without error on the Agg backend, with the expected axes and images."""

import base64

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from aelab import viz  # noqa: E402
from aelab.train import History  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def decode(z):
    """A stand-in decoder: (B, d) -> (B, 1, 8, 8) images whose brightness follows z[:, 0]."""
    return torch.sigmoid(z[:, :1, None, None].expand(-1, 1, 8, 8).clone())


def test_make_grid_shape_and_placement():
    x = torch.zeros(5, 1, 4, 6)
    x[3] = 1.0
    grid = viz.make_grid(x, nrow=3, padding=1, pad_value=0.5)
    assert grid.shape == (2 * 5 + 1, 3 * 7 + 1)
    # image 3 is the first of the second row
    assert (grid[6:10, 1:7] == 1.0).all() and grid[0, 0] == 0.5
    rgb = viz.make_grid(torch.rand(2, 3, 4, 4), nrow=2)
    assert rgb.shape == (8, 14, 3)


def test_show_images_accepts_batches_and_rejects_bad_shapes():
    ax = viz.show_images(torch.rand(10, 1, 28, 28), nrow=5, title="digits")
    assert len(ax.figure.axes) == 1 and len(ax.images) == 1
    assert ax.images[0].get_array().shape == (2 * 30 + 2, 5 * 30 + 2)
    fig, axes = plt.subplots(1, 2)
    assert viz.show_images(np.random.rand(4, 8, 8), ax=axes[1]) is axes[1]
    with pytest.raises(ValueError, match="channels"):
        viz.show_images(torch.rand(4, 2, 8, 8))


def test_compare_reconstructions_one_row_per_entry():
    x = torch.rand(6, 1, 28, 28)
    fig = viz.compare_reconstructions({"original": x, "a": x.flip(0), "b": 1 - x}, n=4)
    assert len(fig.axes) == 3
    assert [ax.get_ylabel() for ax in fig.axes] == ["original", "a", "b"]
    assert all(len(ax.images) == 1 for ax in fig.axes)
    with pytest.raises(ValueError, match="same"):
        viz.compare_reconstructions({"original": x, "other": torch.rand(6, 1, 8, 8)})


def test_image_rows_pads_short_rows():
    fig = viz.image_rows({"three": torch.zeros(3, 1, 8, 8), "five": torch.zeros(5, 1, 8, 8)})
    widths = [ax.images[0].get_array().shape[1] for ax in fig.axes]
    assert widths == [5 * 9 + 1, 5 * 9 + 1]
    assert fig.axes[0].images[0].get_array()[4, -3] == 1.0  # the padded slots are blank (white)


def test_show_features_diverging():
    ax = viz.show_features(torch.randn(12, 64), image_shape=(8, 8), nrow=6)
    img = ax.images[0]
    assert img.get_cmap().name == "RdBu_r" and img.get_clim() == (-1.0, 1.0)
    with pytest.raises(ValueError, match="shape"):
        viz.show_features(torch.randn(12, 63), image_shape=(8, 8))


def test_latent_scatter_legend_per_class():
    z = torch.randn(300, 2)
    y = torch.arange(300) % 4
    ax = viz.latent_scatter(z, y, class_names=["a", "b", "c", "d"])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b", "c", "d"]
    assert len(ax.collections) == 4
    assert viz.latent_scatter(z).get_legend() is None
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        viz.latent_scatter(torch.randn(10, 3), torch.zeros(10))


def test_latent_grid_orientation():
    ax = viz.latent_grid(decode, lim=2.0, n=5)
    grid = ax.images[0].get_array()
    assert grid.shape == (40, 40)
    assert grid[0, 0] < grid[0, -1]  # z_1 grows left to right
    assert ax.images[0].get_extent() == [-2.0, 2.0, -2.0, 2.0]


def test_traversal_grid_rows_and_values():
    values = torch.linspace(-3, 3, 7)
    ax = viz.traversal_grid(decode, torch.zeros(4), dims=[0, 2], values=values)
    grid = ax.images[0].get_array()
    assert grid.shape == (2 * 9 + 1, 7 * 9 + 1)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["$z_{1}$", "$z_{3}$"]
    row0 = [grid[4, 1 + c * 9 + 4] for c in range(7)]
    assert np.all(np.diff(row0) > 0)  # dim 0 drives the brightness
    row1 = [grid[13, 1 + c * 9 + 4] for c in range(7)]
    assert np.allclose(row1, row1[0])  # dim 2 does nothing
    with pytest.raises(ValueError, match="dims"):
        viz.traversal_grid(decode, torch.zeros(4), dims=[4], values=values)


def test_plot_history_one_panel_per_term():
    h = History(
        logs=[{"step": s, "epoch": 0, "recon": 1.0 / s, "l1": 0.1 * s} for s in range(1, 21)],
        evals=[{"step": 20, "epoch": 0, "recon": 0.06}],
    )
    fig = viz.plot_history(h, smooth=3)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["recon", "l1"]
    assert len(visible[0].lines) == 2 and len(visible[1].lines) == 1


def test_traversal_explorer_updates_and_degrades():
    ex = viz.traversal_explorer(decode, latent_dim=3, lim=2.0, names=["a", "b", "c"])
    assert [s.description for s in ex.sliders] == ["a", "b", "c"]
    before = ex.view.value
    assert before[:8] == b"\x89PNG\r\n\x1a\n"
    ex.sliders[0].value = 1.5
    assert torch.equal(ex.z, torch.tensor([[1.5, 0.0, 0.0]]))
    assert ex.view.value != before
    ex.reset()
    assert ex.sliders[0].value == 0.0 and ex.view.value == before
    bundle = ex._repr_mimebundle_()
    assert "text/plain" in bundle
    assert base64.b64decode(bundle["image/png"]) == ex.view.value  # JSON-ready: base64 text
    with pytest.raises(ValueError, match="z0"):
        viz.traversal_explorer(decode, latent_dim=3, z0=torch.zeros(2))


def test_hinton_square_areas_follow_the_values():
    from matplotlib.collections import PatchCollection

    m = np.array([[4.0, 0.0], [-1.0, 1.0], [0.0, 0.0]])
    ax = viz.hinton(m, row_names=["z1", "z2", "z3"], col_names=["a", "b"], title="R")
    (patches,) = [c for c in ax.collections if isinstance(c, PatchCollection)]
    paths = patches.get_paths()
    assert len(paths) == 3  # zeros draw nothing
    sides = sorted(np.ptp(p.vertices[:, 0]) for p in paths)
    assert np.allclose(sides, [0.5, 0.5, 1.0])  # area proportional to |value|: sqrt(1/4), sqrt(1/4), 1
    colours = [tuple(c[:3]) for c in patches.get_facecolors()]
    assert colours.count((0.0, 0.0, 0.0)) == 1  # the one negative entry is black
    assert [t.get_text() for t in ax.get_yticklabels()] == ["z1", "z2", "z3"]
    assert ax.get_ylim()[0] > ax.get_ylim()[1]  # row 0 on top
    with pytest.raises(ValueError, match="2-D"):
        viz.hinton(np.ones(3))
    with pytest.raises(ValueError, match="row_names"):
        viz.hinton(m, row_names=["z1"])
