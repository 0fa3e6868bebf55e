"""Testing a contributed package the way users will run it: from its zip, in its own env, sandboxed.

This module owns the test step: a one-entry catalogue written beside the built zip (pinned by its
sha256, so what is tested is byte for byte what is deposited), a :class:`~medigan_iso.generation.Session`
that fetches, extracts and builds the model's env as for any catalogue model, a few samples generated
under ``sandbox="require"`` for every confining layer this machine supports (``auto`` with a warning
where bubblewrap cannot run), and the samples checked against the entry's declared ``image_size`` (and
channels, its third value). Every failure becomes :class:`~medigan_iso.errors.ModelTestError`, except a
sandbox that cannot be set up (not the package's fault). It never prints.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medigan_iso.catalogue import Catalogue, load_catalogue
from medigan_iso.contribute.packaging import BuiltPackage
from medigan_iso.errors import MediganIsoError, ModelTestError, SandboxError
from medigan_iso.generation import Session
from medigan_iso.sandbox import CONFINING_LAYERS, SandboxConfig, probe_host
from medigan_iso.untrusted import get_logger, neutralise

__all__ = ["DEFAULT_TEST_SAMPLES", "ModelTestReport", "check_samples", "contribution_sandbox", "test_package"]

logger = get_logger(__name__)

DEFAULT_TEST_SAMPLES = 3


@dataclass(frozen=True)
class ModelTestReport:
    model_id: str
    num_samples: int
    shapes: tuple[tuple[int, ...], ...]
    sandbox_policy: str
    sandbox_layers: tuple[str, ...]


def contribution_sandbox() -> SandboxConfig:
    """``require`` for every confining layer this machine can apply; ``auto`` when bubblewrap cannot run."""
    support = probe_host()
    layers = tuple(layer for layer in CONFINING_LAYERS if support.available(layer))
    if "bubblewrap" not in layers:
        logger.warning(
            "bubblewrap cannot run here (%s): the package is tested without it (sandbox=auto)",
            support.layers["bubblewrap"].detail,
        )
        return SandboxConfig(policy="auto")
    return SandboxConfig(policy="require", layers=layers)


def _first_image(sample: Any) -> np.ndarray | None:
    if isinstance(sample, np.ndarray):
        return sample
    if isinstance(sample, (tuple, list)):
        for item in sample:
            if isinstance(item, np.ndarray):
                return item
    return None


def check_samples(
    model_id: str, samples: Sequence[Any], entry: Mapping[str, Any], num_samples: int
) -> tuple[tuple[int, ...], ...]:
    """Count and shapes against the entry: ``image_size`` [H, W] or [H, W, C] (uint8 H×W×C upstream)."""
    if len(samples) < num_samples:
        raise ModelTestError(model_id, f"asked for {num_samples} samples, the model returned {len(samples)}")
    size = [int(v) for v in entry.get("execution", {}).get("image_size") or []]
    shapes: list[tuple[int, ...]] = []
    for index, sample in enumerate(samples):
        image = _first_image(sample)
        if image is None:
            raise ModelTestError(
                model_id,
                f"sample {index} holds no image array (got {neutralise(type(sample).__name__)})",
                remedy="return a list of arrays or (image, mask, ..., label) tuples, as medigan's models do",
            )
        shapes.append(tuple(int(d) for d in image.shape))
        if len(size) >= 2:
            height, width = (image.shape[0], image.shape[1]) if image.ndim >= 2 else (None, None)
            channels = image.shape[2] if image.ndim == 3 else 1 if image.ndim == 2 else None
            if (height, width) != (size[0], size[1]):
                raise ModelTestError(
                    model_id,
                    f"sample {index} is {height}x{width}, the entry declares image_size {size}",
                    remedy="fix the model or the entry's execution.image_size",
                )
            if len(size) >= 3 and channels != size[2]:
                raise ModelTestError(
                    model_id,
                    f"sample {index} has {channels} channel(s) (shape {image.shape}), "
                    f"the entry declares {size[2]}",
                    remedy="fix the model or the third value of execution.image_size",
                )
    return tuple(shapes)


def test_package(
    model_id: str,
    entry: Mapping[str, Any],
    package: BuiltPackage,
    *,
    home: str | os.PathLike[str] | None = None,
    sandbox: SandboxConfig | str | None = None,
    num_samples: int = DEFAULT_TEST_SAMPLES,
    offline: bool | None = None,
) -> ModelTestReport:
    """Generate ``num_samples`` from the built zip in the model's own env and check them."""
    config = contribution_sandbox() if sandbox is None else sandbox
    tested = json.loads(json.dumps(entry))
    tested["execution"]["package_link"] = str(package.path.resolve())
    tested["execution"]["package_sha256"] = package.sha256
    with tempfile.TemporaryDirectory(prefix="medigan-iso-contribute-") as tmp:
        catalogue_file = Path(tmp) / "catalogue.json"
        catalogue_file.write_text(json.dumps({model_id: tested}), encoding="utf-8")
        catalogue: Catalogue = load_catalogue(
            str(catalogue_file), home=home, offline=True, official_url="", bundled_catalogue=None
        )
        try:
            with Session(
                config=catalogue, home=home, sandbox=config, install_dependencies=True, offline=offline
            ) as session:
                samples = session.generate(model_id, num_samples, seed=0)
                hello = session.runner_info(model_id)
        except SandboxError:
            raise
        except MediganIsoError as exc:
            raise ModelTestError(
                model_id, f"{type(exc).__name__}: {neutralise(exc.message, max_chars=1500)}"
            ) from exc
    shapes = check_samples(model_id, samples, tested, num_samples)
    policy = config.policy if isinstance(config, SandboxConfig) else str(config)
    logger.info(
        "%s: test passed (%d samples, shapes %s, sandbox %s)", model_id, len(samples), shapes[:3], policy
    )
    return ModelTestReport(
        model_id=model_id,
        num_samples=len(samples),
        shapes=shapes,
        sandbox_policy=policy,
        sandbox_layers=_layers(hello),
    )


def _layers(hello: Mapping[str, Any]) -> tuple[str, ...]:
    """The confining layers the model's runner reported (empty when it did not say)."""
    layers = hello.get("sandbox_layers")
    return tuple(str(layer) for layer in layers) if isinstance(layers, list) else ()
