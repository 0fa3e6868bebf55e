"""Generators.visualize and medigan_iso.visualize under matplotlib's Agg backend, with real runners."""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

# tox installs matplotlib (dev extra); in CI its absence is a failure, not a skip
matplotlib = (
    importlib.import_module("matplotlib")
    if os.environ.get("CI")
    else pytest.importorskip("matplotlib", reason="matplotlib is the medigan-iso[viz] extra")
)
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from _facade_world import CONDITIONAL_ID, PLAIN_ID, facade_world  # noqa: E402

from medigan_iso import Generators  # noqa: E402
from medigan_iso import visualize as medigan_visualize  # noqa: E402
from medigan_iso.errors import CatalogueError  # noqa: E402

DEMO = "demo-numpy"


@pytest.fixture(scope="module")
def generators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Generators]:
    root = tmp_path_factory.mktemp("viz-world")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in facade_world(root).items():
            patch.setenv(key, value)
        patch.delenv("MEDIGAN_ISO_BUILD", raising=False)
        with Generators() as g:
            yield g


@pytest.fixture(autouse=True)
def no_figures_left() -> Iterator[None]:
    yield
    leftover = plt.get_fignums()
    plt.close("all")
    assert leftover == []


def test_visualize_renders_once_under_agg_and_returns(generators: Generators) -> None:
    assert not medigan_visualize.is_interactive_backend()
    assert generators.visualize(DEMO) is None  # medigan's return value; the figure is closed
    assert generators.is_model_executor_already_added(DEMO)


def test_show_draws_the_first_sample_with_grouped_sliders(generators: Generators) -> None:
    shown = medigan_visualize.show(generators.session, DEMO, slider_grouper=25, seed=1)
    assert shown.requests == 1
    assert len(shown.sliders) == 4  # 100 latent values in groups of 25
    assert shown.image is not None and shown.image.shape == (64, 64)
    assert shown.z.shape == (1, 100, 1, 1)  # as medigan's visualiser passes it
    assert shown.condition_slider is None and shown.mask is None


def test_every_slider_move_asks_the_runner_for_one_sample(generators: Generators) -> None:
    viz = medigan_visualize.Visualizer(generators.session, DEMO, slider_grouper=10, seed=2)
    fig = viz.build()
    try:
        first = viz.image.copy()
        viz.sliders[3].set_val(2.5)
        assert viz.requests == 2
        assert np.all(viz.z[0, 30:40] == np.float32(2.5))
        assert not np.array_equal(viz.image, first)
        moved = viz.image.copy()
        viz.offset_slider.set_val(1.0)  # moves all ten sliders: one sample, not ten
        assert viz.requests == 3
        assert viz.sliders[3].val == pytest.approx(3.0)  # clipped at the slider's range
        assert not np.array_equal(viz.image, moved)
        before_seed = viz.z.copy()
        viz.seed_button._observers.process("clicked", None)  # what a click on "Seed" runs
        assert viz.requests == 4
        assert not np.array_equal(viz.z, before_seed)
        assert viz.offset_slider.val == 0.0
    finally:
        plt.close(fig)


def test_a_conditional_model_gets_a_condition_slider_and_shows_its_mask(generators: Generators) -> None:
    viz = medigan_visualize.Visualizer(generators.session, CONDITIONAL_ID, slider_grouper=5, seed=3)
    fig = viz.build()
    try:
        assert viz.conditional and viz.condition_slider is not None
        assert len(viz.sliders) == 4
        assert viz.mask is not None and viz.mask.shape == (6, 6, 3)
        assert viz.label == "benign"
        assert len(fig.axes[0].images) == 1 and len(fig.axes[1].images) == 1  # image and mask
        viz.condition_slider.set_val(1)
        assert viz.condition == 1 and viz.requests == 2
    finally:
        plt.close(fig)


def test_a_model_without_a_latent_size_cannot_be_visualised(generators: Generators) -> None:
    with pytest.raises(CatalogueError, match="has no input_latent_vector_size") as info:
        generators.visualize(PLAIN_ID)
    assert info.value.remedy is not None and "input_latent_vector_size" in info.value.remedy


def test_slider_grouper_must_be_positive(generators: Generators) -> None:
    with pytest.raises(ValueError, match="slider_grouper must be a positive int"):
        medigan_visualize.Visualizer(generators.session, DEMO, slider_grouper=0)


def test_demo_models_accept_the_visualisers_latent_shape(generators: Generators, tmp_path: Path) -> None:
    z = np.random.default_rng(4).standard_normal((2, 100, 1, 1)).astype(np.float32)
    nchw = generators.generate(DEMO, num_samples=2, save_images=False, input_latent_vector=z, output="float")
    flat = generators.generate(
        DEMO, num_samples=2, save_images=False, input_latent_vector=z[:, :, 0, 0], output="float"
    )
    assert len(nchw) == 2 and np.array_equal(np.stack(nchw), np.stack(flat))


def test_visualize_surface_is_pinned() -> None:
    assert sorted(medigan_visualize.__all__) == [
        "MAX_INPUT_VALUE",
        "Visualizer",
        "is_interactive_backend",
        "show",
    ]
    assert all(hasattr(medigan_visualize, name) for name in medigan_visualize.__all__)
