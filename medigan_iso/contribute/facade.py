"""medigan 1.0's eight contribution methods, as a mixin that ``Generators`` inherits.

Same names, parameters and defaults as medigan 1.0.0 (``add_model_contributor``,
``get_model_contributor_by_id``, ``add_metadata_from_file``, ``add_metadata_from_input``, ``test_model``,
``push_to_zenodo``, ``push_to_github``, ``contribute``), on top of :mod:`medigan_iso.contribute`.
Deliberate differences, all for safety:

- nothing of the contributor's is imported into this interpreter (medigan imported the package to
  "validate" it); the generate function is found by parsing ``__init__.py``;
- ``test_model`` runs a local model from its deterministic zip in an env of its own under the sandbox
  (``install_dependencies`` cannot reach the caller's interpreter, so the env is always built);
  ``push_to_zenodo`` tests first when that zip was not tested yet;
- tokens may be None: then ``$ZENODO_ACCESS_TOKEN`` / ``$GITHUB_TOKEN`` (sent as a header, never in a URL);
- publishing asks for confirmation only in a terminal (medigan's ``input()`` hung in scripts);
  ``assume_yes=True`` (keyword-only, ours) confirms; otherwise a non-terminal run refuses to publish;
- prompts (``fill_more_fields_interactively``) run only when stdin is a terminal;
- errors are typed (ContributionError, ModelTestError, RemoteServiceError) instead of AssertionError.
"""

from __future__ import annotations

import datetime
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medigan_iso.contribute.entry import (
    check_contribution,
    check_model_id,
    entry_from_input,
    fill_interactively,
    finish_entry,
    read_metadata,
)
from medigan_iso.contribute.flow import Contribution, contribute_model, tokens_from_env, verify_published
from medigan_iso.contribute.github import ISSUE_TITLE, GitHubClient, github_repo, github_root, issue_body
from medigan_iso.contribute.packaging import BuiltPackage, build_package
from medigan_iso.contribute.testing import ModelTestReport, check_samples, test_package
from medigan_iso.contribute.zenodo import (
    PublishedDeposition,
    ZenodoClient,
    deposit_package,
    deposition_metadata,
    zenodo_root,
)
from medigan_iso.errors import ContributionError
from medigan_iso.untrusted import get_logger, neutralise

if TYPE_CHECKING:
    from medigan_iso.catalogue import Catalogue
    from medigan_iso.sandbox import SandboxConfig

__all__ = ["ContributorMethods", "ModelContributor"]

logger = get_logger(__name__)


def _interactive() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except ValueError:  # stdin closed
        return False


def _terminal_confirm(question: str) -> bool:
    return input(f"{question}\nTo proceed, type 'Yes': ").strip() == "Yes"


@dataclass
class ModelContributor:
    """One model being contributed (medigan's ``ModelContributor``): its folder and, as it goes, its
    entry, zip, test report and deposition."""

    model_id: str
    init_py_path: str
    package_path: str = ""
    package_name: str = ""
    metadata: dict[str, Any] | None = None
    metadata_file_path: str = ""
    package: BuiltPackage | None = None
    test: ModelTestReport | None = None
    deposition: PublishedDeposition | None = field(default=None)

    def __post_init__(self) -> None:
        check_model_id(self.model_id)
        init_py = Path(self.init_py_path)
        if init_py.name != "__init__.py" or not init_py.is_file():
            raise ContributionError(
                self.model_id,
                f"{self.init_py_path} is not an existing __init__.py",
                remedy="pass the path of the model package's __init__.py",
            )
        folder = init_py.resolve().parent
        self.package_path = self.package_path or str(folder)
        self.package_name = self.package_name or folder.name

    @property
    def entry(self) -> dict[str, Any]:
        if self.metadata is None or not isinstance(self.metadata.get(self.model_id), dict):
            raise ContributionError(
                self.model_id,
                "no metadata yet",
                remedy="call add_metadata_from_file() or add_metadata_from_input() first",
            )
        entry: dict[str, Any] = self.metadata[self.model_id]
        return entry


class ContributorMethods:
    """The contribution half of ``Generators`` (it provides ``catalogue``, ``home`` and the rest)."""

    if TYPE_CHECKING:
        catalogue: Catalogue
        home: str | os.PathLike[str] | None
        model_contributors: list[Any]
        _offline: bool | None
        _sandbox: str | SandboxConfig | None

        def add_model_to_config(
            self,
            model_id: str,
            metadata: Mapping[str, Any],
            is_local_model: bool | None = None,
            overwrite_existing_metadata: bool = False,
            store_new_config: bool = True,
        ) -> bool: ...

        def generate(
            self,
            model_id: str | int,
            num_samples: int = 30,
            output_path: str | os.PathLike[str] | None = None,
            save_images: bool = True,
            is_gen_function_returned: bool = False,
            install_dependencies: bool = False,
            **kwargs: Any,
        ) -> Any: ...

    def _contributor_id(self, model_id: str | int) -> str:
        text = str(model_id)
        return self.catalogue.resolve_id(text) if text in self.catalogue else text

    def _require_contributor(self, model_id: str | int) -> ModelContributor:
        contributor = self.get_model_contributor_by_id(str(model_id))
        if contributor is None:
            raise ContributionError(
                str(model_id),
                "no model contributor for this id",
                remedy="call add_model_contributor(model_id, init_py_path) first",
            )
        return contributor

    def add_model_contributor(self, model_id: str, init_py_path: str | None = None) -> ModelContributor:
        """Add (or return the existing) :class:`ModelContributor` for ``model_id``."""
        model_id = self._contributor_id(model_id)
        existing = self.get_model_contributor_by_id(model_id)
        if existing is not None:
            logger.warning("%s: a ModelContributor already exists; returning it", model_id)
            return existing
        if init_py_path is None:
            raise ContributionError(
                model_id, "init_py_path is required", remedy="pass the model's __init__.py"
            )
        contributor = ModelContributor(model_id=model_id, init_py_path=str(init_py_path))
        self.model_contributors.append(contributor)
        return contributor

    def get_model_contributor_by_id(self, model_id: str) -> ModelContributor | None:
        """The ModelContributor of ``model_id``, or None."""
        model_id = self._contributor_id(model_id)
        for contributor in self.model_contributors:
            if isinstance(contributor, ModelContributor) and contributor.model_id == model_id:
                return contributor
        return None

    def add_metadata_from_file(self, model_id: str, metadata_file_path: str) -> dict[str, Any]:
        """Read the model's entry from a JSON file (``{model_id: entry}`` or the bare entry)."""
        contributor = self._require_contributor(model_id)
        entry = read_metadata(contributor.model_id, metadata_file_path)
        execution = entry.setdefault("execution", {})
        if not str(execution.get("package_link", "")).startswith(("https://", "http://")):
            # medigan points a local model's entry at its folder (validate_and_update_model_weights_path)
            execution["package_link"] = contributor.package_path
        contributor.metadata = {contributor.model_id: entry}
        contributor.metadata_file_path = str(metadata_file_path)
        return contributor.metadata

    def add_metadata_from_input(
        self,
        model_id: str,
        model_weights_name: str,
        model_weights_extension: str,
        generate_method_name: str,
        dependencies: list[str],
        fill_more_fields_interactively: bool = True,
        output_path: str = "config",
    ) -> dict[str, Any]:
        """Build the entry from medigan's template; prompt for the rest in a terminal; store it as
        ``<output_path>/<model_id>.json``."""
        contributor = self._require_contributor(model_id)
        entry = entry_from_input(
            package_name=contributor.package_name,
            package_link=contributor.package_path,
            model_weights_name=model_weights_name,
            model_weights_extension=model_weights_extension,
            generate_method_name=generate_method_name,
            dependencies=list(dependencies or []),
        )
        if fill_more_fields_interactively:
            if _interactive():
                entry = fill_interactively(contributor.model_id, entry, input)
            else:
                logger.info(
                    "%s: stdin is not a terminal: not prompting for more fields", contributor.model_id
                )
        weights = Path(contributor.package_path) / f"{model_weights_name}{model_weights_extension}"
        if not weights.is_file():
            raise ContributionError(
                contributor.model_id,
                f"no weights file {weights}",
                remedy="pass the weights' file name and extension as they are in the package folder",
            )
        contributor.metadata = {contributor.model_id: entry}
        target = Path(output_path) / f"{contributor.model_id}.json"
        from medigan_iso.contribute.flow import _write_json_atomically

        _write_json_atomically(target, contributor.metadata)
        contributor.metadata_file_path = str(target)
        logger.info("%s: metadata stored in %s", contributor.model_id, target)
        return contributor.metadata

    def _built(self, contributor: ModelContributor) -> BuiltPackage:
        folder = Path(contributor.package_path)
        entry = contributor.entry
        package_name = str(entry.get("execution", {}).get("package_name") or contributor.package_name)
        package = build_package(
            folder,
            folder.parent / f"{contributor.model_id}.zip",
            model_id=contributor.model_id,
            package_name=package_name,
        )
        if contributor.package is None or contributor.package.sha256 != package.sha256:
            contributor.test = None  # the folder changed since it was tested
        contributor.package = package
        return package

    def _test_contributor(self, contributor: ModelContributor, num_samples: int) -> ModelTestReport:
        package = self._built(contributor)
        if contributor.test is not None and contributor.test.num_samples >= num_samples:
            return contributor.test
        checked = check_contribution(
            contributor.model_id, contributor.entry, Path(contributor.package_path), catalogue=None
        )
        report = test_package(
            contributor.model_id,
            checked,
            package,
            home=self.home,
            sandbox=self._sandbox,
            num_samples=num_samples,
            offline=self._offline,
        )
        contributor.test = report
        return report

    def test_model(
        self,
        model_id: str,
        is_local_model: bool = True,
        overwrite_existing_metadata: bool = False,
        store_new_config: bool = True,
        num_samples: int = 3,
        install_dependencies: bool = False,
    ) -> None:
        """Check that the model generates ``num_samples`` samples of the declared size (raises if not)."""
        if is_local_model:
            contributor = self._require_contributor(model_id)
            self.add_model_to_config(
                model_id=contributor.model_id,
                metadata=contributor.metadata or {},
                is_local_model=True,
                overwrite_existing_metadata=overwrite_existing_metadata,
                store_new_config=store_new_config,
            )
            self._test_contributor(contributor, num_samples)
        else:
            resolved = self.catalogue.resolve_id(model_id)
            samples = self.generate(
                resolved,
                num_samples=num_samples,
                save_images=False,
                install_dependencies=install_dependencies,
            )
            check_samples(resolved, samples or [], self.catalogue.resolve(resolved).raw, num_samples)
        logger.info("%s: the model test passed (%d samples)", model_id, num_samples)

    def push_to_zenodo(
        self,
        model_id: str,
        zenodo_access_token: str | None,
        creator_name: str = "unknown name",
        creator_affiliation: str = "unknown affiliation",
        model_description: str = "",
        *,
        assume_yes: bool = False,
    ) -> str:
        """Test (if not yet), then deposit and publish the package on Zenodo; return the record URL."""
        contributor = self._require_contributor(model_id)
        zenodo, _ = tokens_from_env(zenodo_access_token, "-", model_id=contributor.model_id)
        root = zenodo_root(None, model_id=contributor.model_id)
        confirm = (lambda q: True) if assume_yes else _terminal_confirm if _interactive() else None
        if confirm is None:
            raise ContributionError(
                contributor.model_id,
                "publishing on Zenodo is permanent and this run cannot ask for confirmation (not a terminal)",
                remedy="pass assume_yes=True once you are sure",
            )
        self._test_contributor(contributor, 3)
        package = contributor.package
        assert package is not None
        client = ZenodoClient(root, model_id=contributor.model_id, token=zenodo)
        try:
            contributor.deposition = deposit_package(
                client,
                package,
                metadata=deposition_metadata(
                    contributor.model_id,
                    description=model_description or contributor.model_id,
                    creators=[{"name": creator_name, "affiliation": creator_affiliation}],
                    keywords=["medigan", contributor.model_id],
                ),
                confirm=confirm,
            )
        finally:
            client.close()
        verify_published(
            contributor.deposition.download_url, sha256=package.sha256, model_id=contributor.model_id
        )
        return contributor.deposition.record_url

    def push_to_github(
        self,
        model_id: str,
        github_access_token: str | None,
        package_link: str | None = None,
        creator_name: str = "",
        creator_affiliation: str = "",
        model_description: str = "",
    ) -> str:
        """Open the catalogue issue holding the finished entry; return its URL."""
        contributor = self._require_contributor(model_id)
        _, github = tokens_from_env("-", github_access_token, model_id=contributor.model_id)
        deposition = contributor.deposition
        link = deposition.download_url if deposition is not None else package_link
        if link is None or contributor.package is None:
            raise ContributionError(
                contributor.model_id,
                "there is no published package to point the issue at",
                remedy="call push_to_zenodo() first",
            )
        entry = finish_entry(
            contributor.model_id,
            check_contribution(
                contributor.model_id, contributor.entry, Path(contributor.package_path), catalogue=None
            ),
            package_link=link,
            package_sha256=contributor.package.sha256,
            package_md5=contributor.package.md5,
            dependencies_as_of=datetime.date.today(),
        )
        client = GitHubClient(
            github_root(None, model_id=contributor.model_id), model_id=contributor.model_id, token=github
        )
        try:
            issue = client.open_issue(
                github_repo(None, model_id=contributor.model_id),
                title=f"{ISSUE_TITLE}: {contributor.model_id}",
                body=issue_body(
                    contributor.model_id,
                    entry,
                    package_link=link,
                    record_url=deposition.record_url if deposition else None,
                    doi=deposition.doi if deposition else None,
                    creator_name=creator_name,
                    creator_affiliation=creator_affiliation,
                    description=model_description,
                ),
            )
        finally:
            client.close()
        logger.info("%s: opened %s", contributor.model_id, neutralise(issue.html_url))
        return issue.html_url

    def contribute(
        self,
        model_id: str,
        init_py_path: str,
        github_access_token: str | None,
        zenodo_access_token: str | None,
        metadata_file_path: str | None = None,
        model_weights_name: str | None = None,
        model_weights_extension: str | None = None,
        generate_method_name: str | None = None,
        dependencies: list[str] | None = None,
        fill_more_fields_interactively: bool = True,
        overwrite_existing_metadata: bool = False,
        output_path: str = "config",
        creator_name: str = "unknown name",
        creator_affiliation: str = "unknown affiliation",
        model_description: str = "",
        install_dependencies: bool = False,
        *,
        assume_yes: bool = False,
    ) -> str:
        """The whole flow (check, package, test, deposit, verify, entry, issue); returns the issue URL.

        The finished entry is written to ``<output_path>/<model_id>.json`` beside the zip.
        """
        contributor = self.add_model_contributor(model_id, init_py_path)
        if metadata_file_path is not None:
            self.add_metadata_from_file(contributor.model_id, metadata_file_path)
            execution = contributor.entry.setdefault("execution", {})
            for key, value in (
                ("model_name", model_weights_name),
                ("extension", model_weights_extension),
                ("dependencies", dependencies),
            ):
                if value is not None:
                    execution[key] = value
            if generate_method_name is not None:
                execution.setdefault("generate_method", {})["name"] = generate_method_name
        else:
            if model_weights_name is None or model_weights_extension is None:
                raise ContributionError(
                    contributor.model_id,
                    "without a metadata file, the weights' name and extension are required",
                    remedy="pass metadata_file_path, or model_weights_name and model_weights_extension",
                )
            self.add_metadata_from_input(
                contributor.model_id,
                model_weights_name,
                model_weights_extension,
                generate_method_name or "generate",
                list(dependencies or []),
                fill_more_fields_interactively=fill_more_fields_interactively,
                output_path=output_path,
            )
        confirm = None if assume_yes else _terminal_confirm if _interactive() else None
        result: Contribution = contribute_model(
            contributor.model_id,
            contributor.package_path,
            contributor.entry,
            output_dir=output_path,
            zenodo_token=zenodo_access_token,
            github_token=github_access_token,
            assume_yes=assume_yes,
            confirm=confirm,
            creator_name=creator_name,
            creator_affiliation=creator_affiliation,
            description=model_description,
            catalogue=self.catalogue,
            home=self.home,
            offline=self._offline,
            sandbox=self._sandbox,
        )
        contributor.metadata = {contributor.model_id: result.entry}
        contributor.package = result.package
        contributor.test = result.test
        contributor.deposition = result.deposition
        return result.issue.html_url
