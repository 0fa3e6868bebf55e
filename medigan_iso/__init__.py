"""medigan_iso: medigan's generative medical-image models, each in its own virtualenv and subprocess.

The host never imports model code, torch or TensorFlow: every model runs in an env of its own
(``medigan_iso.envs``) behind a narrow msgpack pipe (``medigan_iso_runner.protocol``).
"""

from __future__ import annotations

from medigan_iso.api import ModelInfo, SearchResult, info, list_models, search
from medigan_iso.catalogue import Catalogue, ModelEntry, load_catalogue
from medigan_iso.compat import Generators
from medigan_iso.errors import (
    CatalogueError,
    CatalogueSourceError,
    CatalogueValidationError,
    ConfigKeyError,
    ContributionError,
    EnvBuildError,
    EnvError,
    EnvNotBuiltError,
    ExploreError,
    ExploreRequestError,
    InterpreterNotFoundError,
    MediganIsoError,
    ModelBusyError,
    ModelError,
    ModelTestError,
    OutputExistsError,
    PackageDownloadError,
    PackageError,
    PackageIntegrityError,
    PackageLayoutError,
    ProtocolError,
    RemoteServiceError,
    ResolutionError,
    ResourceLimitError,
    RunnerCrashedError,
    RunnerError,
    RunnerStartError,
    RunnerTimeoutError,
    SandboxError,
    SandboxPolicyError,
    UnknownModelError,
    UnpinnedPackageError,
    UnsafeArchiveError,
)
from medigan_iso.generation import Session, generate, stream

__version__ = "0.1.0"

__all__ = [
    "Catalogue",
    "CatalogueError",
    "CatalogueSourceError",
    "CatalogueValidationError",
    "ConfigKeyError",
    "ContributionError",
    "EnvBuildError",
    "EnvError",
    "EnvNotBuiltError",
    "ExploreError",
    "ExploreRequestError",
    "Generators",
    "InterpreterNotFoundError",
    "MediganIsoError",
    "ModelBusyError",
    "ModelEntry",
    "ModelError",
    "ModelInfo",
    "ModelTestError",
    "OutputExistsError",
    "PackageDownloadError",
    "PackageError",
    "PackageIntegrityError",
    "PackageLayoutError",
    "ProtocolError",
    "RemoteServiceError",
    "ResolutionError",
    "ResourceLimitError",
    "RunnerCrashedError",
    "RunnerError",
    "RunnerStartError",
    "RunnerTimeoutError",
    "SandboxError",
    "SandboxPolicyError",
    "SearchResult",
    "Session",
    "UnknownModelError",
    "UnpinnedPackageError",
    "UnsafeArchiveError",
    "__version__",
    "generate",
    "info",
    "list_models",
    "load_catalogue",
    "search",
    "stream",
]
