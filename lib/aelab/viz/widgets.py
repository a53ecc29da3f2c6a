"""Interactive explorers built on ipywidgets: move a slider, see the decoded image change.

Where widgets are not rendered (a notebook executed by nbclient, viewed on a web page or exported
to slides) the explorer still displays: next to the widget it offers a PNG of its current image,
which such viewers show instead.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Sequence

import ipywidgets as widgets
import numpy as np
import torch
from torch import Tensor

from aelab.viz.images import _as_images, make_grid


def _png(image: np.ndarray, scale: int) -> bytes:
    """(H, W) or (H, W, 3) floats in [0, 1] -> PNG bytes, each pixel blown up to scale x scale."""
    from PIL import Image

    a = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    img = Image.fromarray(a)
    img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


class TraversalExplorer(widgets.VBox):
    """One FloatSlider per latent dimension and the live decoded image of the code they spell.

    ``explorer.z`` is the current code (1, latent_dim); ``explorer.image`` the decoded image
    (C, H, W); ``explorer.reset()`` puts every slider back to ``z0``.
    """

    def __init__(
        self,
        decode_fn: Callable[[Tensor], Tensor],
        latent_dim: int,
        lim: float = 3.0,
        step: float = 0.05,
        z0: Tensor | None = None,
        names: Sequence[str] | None = None,
        scale: int = 6,
        device: str | torch.device | None = None,
    ):
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
        base = torch.zeros(latent_dim) if z0 is None else torch.as_tensor(z0).detach().float().flatten().cpu()
        if base.shape != (latent_dim,):
            raise ValueError(f"z0 must hold latent_dim={latent_dim} values, got shape {tuple(base.shape)}")
        if names is not None and len(names) != latent_dim:
            raise ValueError(f"names must name all {latent_dim} latent dimensions, got {len(names)}")
        self._decode_fn, self._base, self._scale, self._device = decode_fn, base, scale, device
        self.sliders = [
            widgets.FloatSlider(
                value=float(base[i]),
                min=-lim,
                max=lim,
                step=step,
                description=names[i] if names is not None else f"z{i + 1}",
                continuous_update=True,
                readout_format=".2f",
                layout=widgets.Layout(width="320px"),
            )
            for i in range(latent_dim)
        ]
        self.view = widgets.Image(format="png")
        button = widgets.Button(description="reset", layout=widgets.Layout(width="80px"))
        button.on_click(lambda _: self.reset())
        for s in self.sliders:
            s.observe(self._update, names="value")
        controls = widgets.VBox([*self.sliders, button])
        super().__init__([widgets.HBox([controls, self.view])])
        self._update()

    @property
    def z(self) -> Tensor:
        """The code the sliders spell, (1, latent_dim)."""
        return torch.tensor([[s.value for s in self.sliders]], dtype=torch.float32)

    @property
    def image(self) -> Tensor:
        """The decoded image of ``z``, (C, H, W) on the CPU."""
        with torch.no_grad():
            z = self.z if self._device is None else self.z.to(self._device)
            return _as_images(self._decode_fn(z))[0]

    def reset(self) -> None:
        """Move every slider back to z0."""
        for s, v in zip(self.sliders, self._base.tolist()):
            s.value = v

    def _update(self, change=None) -> None:
        self.view.value = _png(make_grid(self.image[None], nrow=1, padding=0), self._scale)

    def _repr_mimebundle_(self, **kwargs):
        bundle = super()._repr_mimebundle_(**kwargs)
        if isinstance(bundle, tuple):  # (data, metadata) in some ipywidgets versions
            bundle = bundle[0]
        # Viewers without a widget manager pick the PNG of the current image instead of the text repr
        # (notebook JSON stores binary outputs base64-encoded).
        return {**(bundle or {}), "image/png": base64.b64encode(self.view.value).decode("ascii")}


def traversal_explorer(decode_fn: Callable[[Tensor], Tensor], latent_dim: int, **options) -> TraversalExplorer:
    """A slider per latent dimension and the live decoded image; returns the widget (display it).

    ``decode_fn``: codes (1, latent_dim) -> images (1, C, H, W) in [0, 1], e.g. ``model.decode``.
    ``options`` are ``TraversalExplorer``'s: ``lim`` (sliders span [-lim, lim]), ``step``, ``z0``
    (start, default zeros), ``names`` (slider labels), ``scale`` (image zoom), ``device`` (codes
    are sent there first). Executed without a widget frontend (nbclient, nbconvert), it runs
    without error and shows a PNG of its starting image.
    """
    return TraversalExplorer(decode_fn, latent_dim, **options)
