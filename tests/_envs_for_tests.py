"""Real model envs for the runner tests and benchmarks, built by the project's own envs module.

``build_runner_env(home, requirements, python_requires=None)`` returns the python of an env holding the
requirements plus the runner, built with uv under ``home`` (the uv cache stays shared through
``$MEDIGAN_ISO_UV_CACHE``). Online, so a cold cache still works; pip's settings (find-links for
``torch==2.13.0``) are translated by the envs module.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from medigan_iso.envs import EnvSpec, ensure_env


def build_runner_env(home: Path, requirements: Sequence[str], *, python_requires: str | None = None) -> Path:
    env = ensure_env(
        EnvSpec(list(requirements), python_requires=python_requires, name="runner-tests"),
        home=home,
        offline=False,
    )
    return env.python
