"""medigan's latent-vector explorer over a model's warm runner (extra ``medigan-iso[viz]``: matplotlib).

This module owns the interactive figure of ``Generators.visualize``; it is a client of
:class:`~medigan_iso.generation.Session` only, imports matplotlib at its top (nothing imports this module
until ``visualize`` is called) and never prints.

Layout and controls follow medigan 1.0's ``ModelVisualizer``: the generated image (and its mask when the
model returns one), an "offset" slider adding a constant to every latent value, one slider per group of
``slider_grouper`` latent values (moving it sets the whole group), a condition slider (0/1) when the
model's ``custom`` arguments declare ``condition``, and "Seed" (new latent vector) and "Reset" buttons.
Every change asks the warm runner for one sample with ``input_latent_vector`` shaped
``(1, size, 1, 1)``, as medigan passes it. Differences from medigan, deliberate:

- slider ``i`` sets latent values ``i*g .. i*g+g-1`` (medigan's wrote ``z[i + j]``, overlapping groups and
  ignoring ``slider_grouper`` after the first);
- "Seed" really changes the latent vector the sliders start from (medigan's kept the first seed for the
  groups' values and could not place more than one value per slider);
- with a non-interactive backend (``MPLBACKEND=Agg``) or ``auto_close`` the figure is drawn once, closed,
  and :func:`show` returns (medigan showed it for a second with ``plt.pause(1)``);
- a model without ``input_latent_vector_size`` raises CatalogueError naming what is missing (medigan:
  ValueError).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import matplotlib
import matplotlib.backends
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.widgets import Button, Slider

from medigan_iso.errors import CatalogueError, RunnerError
from medigan_iso.generation import Session
from medigan_iso.untrusted import get_logger, neutralise

__all__ = ["MAX_INPUT_VALUE", "Visualizer", "is_interactive_backend", "show"]

logger = get_logger(__name__)

MAX_INPUT_VALUE = 3.0  # latent sliders span [-3, 3], the offset slider [-6, 6] (medigan's ranges)


def is_interactive_backend() -> bool:
    """Whether matplotlib's current backend shows windows (False for Agg, pdf, svg, ...)."""
    backend = str(matplotlib.get_backend()).lower()
    registry: Any = getattr(matplotlib.backends, "backend_registry", None)
    if registry is not None:
        names = registry.list_builtin(matplotlib.backends.BackendFilter.INTERACTIVE)  # type: ignore[attr-defined]
    else:  # matplotlib < 3.9
        names = getattr(matplotlib.rcsetup, "interactive_bk", [])
    interactive = [str(name).lower() for name in names]
    return backend in interactive or (backend.startswith("module://") and "inline" not in backend)


def _unpack(sample: Any) -> tuple[np.ndarray, np.ndarray | None, str | None]:
    """(image, mask or None, label or None) of one sample, squeezed for imshow."""
    mask = label = None
    if isinstance(sample, (tuple, list)):
        parts = list(sample)
        image = np.asarray(parts[0])
        for part in parts[1:]:
            if isinstance(part, str) and label is None:
                label = part
            elif isinstance(part, np.ndarray) and mask is None:
                mask = np.asarray(part).squeeze()
    else:
        image = np.asarray(sample)
    return image.squeeze(), mask, label


def _limits(array: np.ndarray) -> tuple[float, float]:
    if array.dtype == np.uint8:
        return 0.0, 255.0
    low, high = float(np.nanmin(array)), float(np.nanmax(array))
    return (low, high) if high > low else (low, low + 1.0)


class Visualizer:
    """The explorer figure of one model; ``requests`` counts the samples asked of the runner."""

    def __init__(
        self,
        session: Session,
        model_id: str | int,
        *,
        slider_grouper: int = 10,
        seed: int | None = None,
    ) -> None:
        if not isinstance(slider_grouper, int) or isinstance(slider_grouper, bool) or slider_grouper < 1:
            raise ValueError(f"slider_grouper must be a positive int, got {slider_grouper!r}")
        entry = session.resolve(model_id)
        size = entry.input_latent_vector_size
        if not size:
            raise CatalogueError(
                f"model {neutralise(entry.model_id)} has no input_latent_vector_size in its catalogue "
                "entry, so its latent vector cannot be explored",
                remedy="visualize a model whose entry sets "
                "execution.generate_method.input_latent_vector_size",
            )
        self.session = session
        self.model_id = entry.model_id
        self.title = entry.title
        self.size = int(size)
        self.slider_grouper = slider_grouper
        self.conditional = "condition" in entry.custom_defaults
        self.condition: Any = entry.custom_defaults.get("condition")
        self.requests = 0
        self._rng = np.random.default_rng(seed)
        self.z = self._new_latent()
        self.image: np.ndarray | None = None
        self.mask: np.ndarray | None = None
        self.label: str | None = None
        self.fig: Any = None
        self.sliders: list[Slider] = []
        self.offset_slider: Slider | None = None
        self.condition_slider: Slider | None = None
        self.seed_button: Button | None = None
        self.reset_button: Button | None = None
        self._offset_old = 0.0
        self._moving = 0  # > 0 while several sliders move at once (one sample afterwards, not one each)

    def _new_latent(self) -> np.ndarray:
        return self._rng.standard_normal((1, self.size, 1, 1)).astype(np.float32)

    def _group(self, index: int) -> slice:
        return slice(index * self.slider_grouper, (index + 1) * self.slider_grouper)

    def sample(self) -> Any:
        """Ask the warm runner for one sample of the current latent vector (and condition)."""
        kwargs: dict[str, Any] = {"input_latent_vector": self.z}
        if self.conditional:
            kwargs["condition"] = self.condition
        self.requests += 1
        samples = self.session.generate(self.model_id, 1, batch_size=1, **kwargs)
        if not samples:
            raise RunnerError(
                f"model {neutralise(self.model_id)} returned no sample for a latent vector of shape "
                f"{self.z.shape}",
                remedy="check that the model accepts input_latent_vector shaped (n, size, 1, 1)",
            )
        return samples[0]

    def build(self) -> Any:
        """Create the figure, its widgets and the first image; return the figure."""
        self.image, self.mask, self.label = _unpack(self.sample())
        columns = 2 if self.mask is not None else 1
        fig, axes = plt.subplots(ncols=columns)
        axes = np.atleast_1d(axes)
        self.fig = fig
        vmin, vmax = _limits(self.image)
        axes[0].axis("off")
        axes[0].set_title("Generated image")
        self._display = axes[0].imshow(self.image, cmap="gray", vmin=vmin, vmax=vmax)
        self._display_mask = None
        if self.mask is not None:
            axes[1].axis("off")
            axes[1].set_title("Generated mask")
            low, high = _limits(self.mask)
            self._display_mask = axes[1].imshow(self.mask, cmap="gray", vmin=low, vmax=high)
        fig.suptitle(f"Model {self.model_id}", fontsize=15)
        if self.title:
            fig.text(0.5, 0.88, self.title, fontsize=8, ha="center", wrap=True)
        fig.subplots_adjust(left=0.45, bottom=0.3, top=0.8)

        x, y, width, height, padding = 0.1, 0.75, 0.25, 0.02, 0.03
        row = 0
        if self.conditional:
            condition_ax = fig.add_axes((x, y, width, height))
            self.condition_slider = Slider(condition_ax, "", 0, 1, valinit=0.0, valstep=1)
            self._condition_ax = condition_ax
            condition_ax.set_title(f"Input condition: {self.label or self.condition}")
            row += 5
        offset_ax = fig.add_axes((x, y - row * padding, width, height))
        offset_ax.set_title("Input latent vector")
        self.offset_slider = Slider(
            offset_ax, "offset", -2 * MAX_INPUT_VALUE, 2 * MAX_INPUT_VALUE, valinit=0.0, valfmt="%.2f"
        )
        row += 2
        for i in range(self.size // self.slider_grouper):
            ax = fig.add_axes((x, y - (i + row) * padding, width, height))
            start = float(self.z[0, self._group(i)].mean())
            self.sliders.append(
                Slider(ax, f"z{i + 1}", -MAX_INPUT_VALUE, MAX_INPUT_VALUE, valinit=start, valfmt="%.2f")
            )
        legend = fig.add_axes((0.45, 0.19, 0.5, 0.5))
        legend.axis("off")
        legend.text(
            0.0,
            0.0,
            "Offset: add a constant to each latent value\nInput vector: set a group of latent values\n"
            "Seed: draw a new latent vector\nReset: back to the values the sliders started from",
            fontsize=8,
            va="top",
            linespacing=2,
        )
        self.reset_button = Button(fig.add_axes((0.77, 0.22, 0.1, 0.04)), "Reset", hovercolor="0.975")
        self.seed_button = Button(fig.add_axes((0.62, 0.22, 0.1, 0.04)), "Seed", hovercolor="0.975")

        for slider in self.sliders:
            slider.on_changed(self._on_change)
        if self.condition_slider is not None:
            self.condition_slider.on_changed(self._on_change)
        self.offset_slider.on_changed(self._on_offset)
        self.reset_button.on_clicked(self._on_reset)
        self.seed_button.on_clicked(self._on_seed)
        return fig

    def _batched(self, action: Callable[[], None]) -> None:
        """Run ``action`` (which moves several sliders) and then ask for one sample, not one per slider."""
        self._moving += 1
        try:
            action()
        finally:
            self._moving -= 1
        self._on_change(None)

    def _on_change(self, _value: Any) -> None:
        if self._moving:
            return
        for i, slider in enumerate(self.sliders):
            self.z[0, self._group(i)] = slider.val
        if self.condition_slider is not None:
            self.condition = int(self.condition_slider.val)
        self.image, self.mask, self.label = _unpack(self.sample())
        self._display.set_data(self.image)
        if self._display_mask is not None and self.mask is not None:
            self._display_mask.set_data(self.mask)
        if self.conditional and self.label is not None:
            self._condition_ax.set_title(f"Input condition: {self.label}")
        self.fig.canvas.draw_idle()

    def _on_offset(self, _value: Any) -> None:
        assert self.offset_slider is not None
        diff = self.offset_slider.val - self._offset_old
        self._offset_old = self.offset_slider.val

        def move() -> None:
            for slider in self.sliders:
                slider.set_val(float(np.clip(slider.val + diff, -MAX_INPUT_VALUE, MAX_INPUT_VALUE)))

        self._batched(move)

    def _on_reset(self, _event: Any) -> None:
        def move() -> None:
            assert self.offset_slider is not None
            self.offset_slider.reset()
            self._offset_old = 0.0
            for slider in self.sliders:
                slider.reset()

        self._batched(move)

    def _on_seed(self, _event: Any) -> None:
        self.z = self._new_latent()
        for i, slider in enumerate(self.sliders):
            slider.valinit = float(self.z[0, self._group(i)].mean())
        self._on_reset(_event)


def show(
    session: Session,
    model_id: str | int,
    *,
    slider_grouper: int = 10,
    auto_close: bool = False,
    seed: int | None = None,
) -> Visualizer:
    """Build the explorer of ``model_id`` and show it; with a non-interactive backend or ``auto_close``,
    draw it once, close it and return at once. Returns the :class:`Visualizer`."""
    visualizer = Visualizer(session, model_id, slider_grouper=slider_grouper, seed=seed)
    fig = visualizer.build()
    if auto_close or not is_interactive_backend():
        fig.canvas.draw()
        plt.close(fig)
        return visualizer
    plt.show()
    return visualizer
