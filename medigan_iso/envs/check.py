"""The import check: every declared dependency of an env is imported inside the env, confined.

Resolving is not working: a 2021 model's pins can resolve and then fail at import (numpy 2 under
nibabel 3.2, a setuptools without ``pkg_resources`` under pytorch-lightning 1.4). The check runs
``medigan_iso_runner.importcheck`` with the env's interpreter under the same sandbox as a runner
(dependency code runs there, never on the host unconfined) and returns one row per distribution.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from medigan_iso.envs._common import STAMP_NAME, _read_json
from medigan_iso.envs.store import ModelEnv
from medigan_iso.errors import EnvBuildError
from medigan_iso.sandbox import PRIVATE_DIR_PLACEHOLDER, SandboxConfig, plan_launch, resolve_policy

__all__ = ["CHECK_TIMEOUT_S", "ImportCheck", "check_env", "check_imports", "failed_checks"]

CHECK_TIMEOUT_S = 600.0  # importing torch and TensorFlow cold on a loaded machine takes a while
_PASSED_VARIABLES = ("PATH", "LANG", "LC_ALL", "SYSTEMROOT")


@dataclass(frozen=True)
class ImportCheck:
    """One declared distribution: its version, import names, and ok or the failing line."""

    distribution: str
    version: str | None
    imports: tuple[str, ...]
    ok: bool
    error: str | None


def failed_checks(rows: Sequence[ImportCheck]) -> list[ImportCheck]:
    return [row for row in rows if not row.ok]


def _distributions(requirements: Sequence[str]) -> list[str]:
    names: list[str] = []
    for text in requirements:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue  # the host's view of markers; the env's interpreter may differ (rare for checks)
        name = canonicalize_name(req.name)
        if name not in names and name != "setuptools":
            names.append(name)
    return names


def check_imports(
    python: Path,
    requirements: Sequence[str],
    *,
    model_id: str | None = None,
    sandbox: str | SandboxConfig | None = None,
    timeout_s: float = CHECK_TIMEOUT_S,
) -> list[ImportCheck]:
    """Import every distribution named in ``requirements`` inside the env of ``python``."""
    config = resolve_policy(sandbox)
    plan = plan_launch(config, python=python, package_root=None, output_dir=None, model_id=model_id)
    with tempfile.TemporaryDirectory(prefix="medigan-iso-check-") as private:
        env = {k: os.environ[k] for k in _PASSED_VARIABLES if k in os.environ}
        env.update({"HOME": private, "TMPDIR": private, "PYTHONDONTWRITEBYTECODE": "1"})
        for key, value in plan.env_overrides.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        prefix = [part.replace(PRIVATE_DIR_PLACEHOLDER, private) for part in plan.command_prefix]
        argv = [
            *prefix,
            os.fspath(python),
            "-I",
            "-m",
            "medigan_iso_runner.importcheck",
            json.dumps(_distributions(requirements)),
        ]
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                env=env,
                cwd=private,
                timeout=timeout_s,
                check=False,
                start_new_session=True,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise EnvBuildError(
                model_id,
                f"the import check could not run: {exc}",
                remedy="rebuild the env (`medigan-iso env build MODEL --rebuild`)",
            ) from exc
    last = done.stdout.strip().splitlines()[-1:] if done.stdout.strip() else []
    try:
        rows = json.loads(last[0]) if last else None
    except ValueError:
        rows = None
    if not isinstance(rows, list):
        raise EnvBuildError(
            model_id,
            f"the import check crashed (exit code {done.returncode})",
            log_tail=done.stderr[-2000:],
            remedy="rebuild the env (`medigan-iso env build MODEL --rebuild`)",
        )
    return [
        ImportCheck(
            distribution=str(row.get("distribution")),
            version=row.get("version"),
            imports=tuple(str(n) for n in row.get("imports") or ()),
            ok=bool(row.get("ok")),
            error=row.get("error"),
        )
        for row in rows
        if isinstance(row, dict)
    ]


def check_env(
    env: ModelEnv, *, model_id: str | None = None, sandbox: str | SandboxConfig | None = None
) -> list[ImportCheck]:
    """The import check of a built env: its declared requirements (from its stamp), imported inside it."""
    stamp = _read_json(env.path / STAMP_NAME) or {}
    requirements = [str(r) for r in stamp.get("requirements") or ()]
    return check_imports(env.python, requirements, model_id=model_id or stamp.get("name"), sandbox=sandbox)
