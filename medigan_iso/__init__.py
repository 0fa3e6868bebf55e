"""medigan_iso: medigan's generative medical-image models, each in its own virtualenv and subprocess.

The host never imports model code, torch or TensorFlow: every model runs in an env of its own
(``medigan_iso.envs``) behind a narrow msgpack pipe (``medigan_iso_runner.protocol``).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from medigan_iso._version import __version__

if TYPE_CHECKING:
    from medigan_iso.api import ModelInfo, SearchResult, info, list_models, search
    from medigan_iso.catalogue import Catalogue, ModelEntry, load_catalogue
    from medigan_iso.compat import Generators
    from medigan_iso.errors import (
        BundleError,
        CatalogueError,
        CatalogueSourceError,
        CatalogueValidationError,
        ConfigKeyError,
        ContributionError,
        DirectReferenceError,
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
        ProvenanceError,
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
    from medigan_iso.verify import VerifyReport, verify

# PEP 562: each public name is imported from its module on first use (issue 17: importing the package for
# `medigan-iso --version` loaded the catalogue, generation, compat, requests and jsonschema).
_LAZY = {
    **dict.fromkeys(("ModelInfo", "SearchResult", "info", "list_models", "search"), "medigan_iso.api"),
    **dict.fromkeys(("Catalogue", "ModelEntry", "load_catalogue"), "medigan_iso.catalogue"),
    "Generators": "medigan_iso.compat",
    **dict.fromkeys(("Session", "generate", "stream"), "medigan_iso.generation"),
    **dict.fromkeys(("VerifyReport", "verify"), "medigan_iso.verify"),
}


class _Package(types.ModuleType):
    """This package's module type: ``search`` and ``verify`` stay the functions of the public API.

    They share their names with the submodules medigan_iso.search and medigan_iso.verify; importing a
    submodule sets it as an attribute of the package, which the eager imports used to overwrite with the
    function right away. Lazily, nothing would: so a submodule is not bound over those names (it stays in
    sys.modules, where ``from medigan_iso.search import ...`` finds it).
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SHADOWING_SUBMODULES and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


_SHADOWING_SUBMODULES = frozenset({"search", "verify"})
sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None and name in __all__ and name.endswith("Error"):
        module = "medigan_iso.errors"
    if module is None:
        raise AttributeError(f"module 'medigan_iso' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "BundleError",
    "Catalogue",
    "CatalogueError",
    "CatalogueSourceError",
    "CatalogueValidationError",
    "ConfigKeyError",
    "ContributionError",
    "DirectReferenceError",
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
    "ProvenanceError",
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
    "VerifyReport",
    "__version__",
    "generate",
    "info",
    "list_models",
    "load_catalogue",
    "search",
    "stream",
    "verify",
]
