"""medigan_iso: medigan's generative medical-image models, each in its own virtualenv and subprocess.

The host never imports model code, torch or TensorFlow: every model runs in an env of its own
(``medigan_iso.envs``) behind a narrow msgpack pipe (``medigan_iso_runner.protocol``).
"""

from __future__ import annotations

from medigan_iso.errors import (
    CatalogueError,
    CatalogueSourceError,
    CatalogueValidationError,
    EnvBuildError,
    EnvError,
    EnvNotBuiltError,
    InterpreterNotFoundError,
    MediganIsoError,
    ModelError,
    PackageDownloadError,
    PackageError,
    PackageIntegrityError,
    PackageLayoutError,
    ProtocolError,
    ResolutionError,
    RunnerCrashedError,
    RunnerError,
    RunnerStartError,
    RunnerTimeoutError,
    SandboxError,
    UnknownModelError,
    UnpinnedPackageError,
    UnsafeArchiveError,
)

__version__ = "0.1.0"

__all__ = [
    "CatalogueError",
    "CatalogueSourceError",
    "CatalogueValidationError",
    "EnvBuildError",
    "EnvError",
    "EnvNotBuiltError",
    "InterpreterNotFoundError",
    "MediganIsoError",
    "ModelError",
    "PackageDownloadError",
    "PackageError",
    "PackageIntegrityError",
    "PackageLayoutError",
    "ProtocolError",
    "ResolutionError",
    "RunnerCrashedError",
    "RunnerError",
    "RunnerStartError",
    "RunnerTimeoutError",
    "SandboxError",
    "UnknownModelError",
    "UnpinnedPackageError",
    "UnsafeArchiveError",
    "__version__",
]
