"""The whole contribution, in an order that never leaves anything half-published.

1. **check** tokens, API roots and the publish confirmation (before any work), then the entry and the
   folder (:func:`~medigan_iso.contribute.entry.check_contribution`), then that Zenodo and GitHub accept
   the tokens (a wrong GitHub token must not surface only after publishing);
2. **package** the folder deterministically into ``<output>/<model_id>.zip``;
3. **test** that zip in the model's own env under the sandbox (nothing is uploaded if it fails);
4. **deposit** it on Zenodo: draft, upload, checksum, metadata, confirmation, publish (a failure before
   publishing deletes the draft);
5. **verify** the published link serves the package's sha256, then **finish** the entry (strict);
6. **write** ``<output>/<model_id>.json``; 7. **open** the catalogue issue on GitHub (only now).

This module owns that order and nothing else; each step lives in its own module. It never prints:
``on_step`` (a callable taking one line) is how the CLI shows progress.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from medigan_iso.catalogue import Catalogue, load_catalogue
from medigan_iso.contribute.entry import check_contribution, check_model_id, finish_entry
from medigan_iso.contribute.github import (
    GITHUB_TOKEN_ENV,
    ISSUE_TITLE,
    GitHubClient,
    OpenedIssue,
    github_repo,
    github_root,
    issue_body,
)
from medigan_iso.contribute.packaging import BuiltPackage, build_package
from medigan_iso.contribute.remote import HttpOptions, Token
from medigan_iso.contribute.testing import DEFAULT_TEST_SAMPLES, ModelTestReport, test_package
from medigan_iso.contribute.zenodo import (
    ZENODO_TOKEN_ENV,
    PublishedDeposition,
    ZenodoClient,
    deposit_package,
    deposition_metadata,
    zenodo_root,
)
from medigan_iso.errors import ContributionError
from medigan_iso.sandbox import SandboxConfig
from medigan_iso.untrusted import get_logger, neutralise

__all__ = ["Contribution", "contribute_model", "tokens_from_env", "verify_published"]

logger = get_logger(__name__)

Confirm = Callable[[str], bool]
VERIFY_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Contribution:
    """What a finished contribution produced."""

    model_id: str
    entry: dict[str, Any]
    entry_path: Path
    package: BuiltPackage
    test: ModelTestReport
    deposition: PublishedDeposition
    issue: OpenedIssue


def tokens_from_env(
    zenodo_token: str | None, github_token: str | None, *, model_id: str
) -> tuple[Token, Token]:
    """The tokens from the arguments, else ``$ZENODO_ACCESS_TOKEN`` / ``$GITHUB_TOKEN``."""
    found = []
    for given, env in ((zenodo_token, ZENODO_TOKEN_ENV), (github_token, GITHUB_TOKEN_ENV)):
        value = (given or os.environ.get(env) or "").strip()
        if not value:
            raise ContributionError(
                model_id,
                f"no {env.split('_')[0].capitalize()} token",
                remedy=f"export {env}=... (never pass tokens on the command line: argv is visible to "
                "every process on the machine)",
            )
        try:
            found.append(Token(value))
        except ValueError as exc:
            raise ContributionError(
                model_id, f"{env}: {exc}", remedy=f"set {env} to the token alone"
            ) from exc
    return found[0], found[1]


def verify_published(
    url: str, *, sha256: str, model_id: str, timeout_s: float = 60.0, session: requests.Session | None = None
) -> None:
    """Download the public link (no token) and check it is byte for byte the package."""
    digest = hashlib.sha256()
    http = session or requests.Session()
    try:
        with http.get(url, stream=True, timeout=(15.0, timeout_s)) as response:
            response.raise_for_status()
            for chunk in response.iter_content(VERIFY_CHUNK_BYTES):
                digest.update(chunk)
    except requests.RequestException as exc:
        raise ContributionError(
            model_id,
            f"the published link {neutralise(url)} cannot be downloaded: {neutralise(exc)}",
            remedy="the deposition is published; check the record page, then write the entry by hand",
        ) from exc
    if digest.hexdigest() != sha256:
        raise ContributionError(
            model_id,
            f"the published link {neutralise(url)} serves sha256 {digest.hexdigest()}, "
            f"the package is {sha256}",
            remedy="the deposition is published but serves other bytes: contact Zenodo support; "
            "no issue was filed",
        )


def _write_json_atomically(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def contribute_model(
    model_id: str,
    package_dir: str | os.PathLike[str],
    entry: Mapping[str, Any],
    *,
    output_dir: str | os.PathLike[str],
    zenodo_token: str | None = None,
    github_token: str | None = None,
    assume_yes: bool = False,
    confirm: Confirm | None = None,
    creator_name: str = "unknown name",
    creator_affiliation: str = "unknown affiliation",
    description: str = "",
    zenodo_url: str | None = None,
    github_api_url: str | None = None,
    github_repository: str | None = None,
    catalogue: Catalogue | None = None,
    home: str | os.PathLike[str] | None = None,
    offline: bool | None = None,
    sandbox: SandboxConfig | str | None = None,
    num_samples: int = DEFAULT_TEST_SAMPLES,
    dependencies_as_of: datetime.date | None = None,
    http: HttpOptions | None = None,
    on_step: Callable[[str], None] | None = None,
) -> Contribution:
    """Check, package, test, deposit, verify, write and file a model (see the module docstring).

    Tokens come from the arguments or the environment. Publishing needs ``assume_yes`` or a ``confirm``
    callable that returns True; without either the run stops before anything is created.
    """
    say = on_step or (lambda line: None)
    check_model_id(model_id)
    folder = Path(package_dir)
    zenodo, github = tokens_from_env(zenodo_token, github_token, model_id=model_id)
    z_root = zenodo_root(zenodo_url, model_id=model_id)
    g_root = github_root(github_api_url, model_id=model_id)
    repo = github_repo(github_repository, model_id=model_id)
    if not assume_yes and confirm is None:
        raise ContributionError(
            model_id,
            "publishing on Zenodo is permanent and this run cannot ask for confirmation (not a terminal)",
            remedy="pass --yes (assume_yes=True) once you are sure",
        )
    user_confirm: Confirm = (lambda question: True) if assume_yes else confirm  # type: ignore[assignment]

    def ask(question: str) -> bool:
        # Checked at the last moment before publishing, so the stand-ins' loopback http roots still
        # exercise every earlier step; a published package must have an https link (strict entries).
        if not z_root.startswith("https://"):
            raise ContributionError(
                model_id,
                f"refusing to publish through {z_root}: the package link would not be https, so the "
                "entry could not be strict-valid; the draft deposition was deleted",
                remedy="use an https:// Zenodo site (MEDIGAN_ISO_ZENODO_URL)",
            )
        return user_confirm(question)

    if catalogue is None:
        catalogue = load_catalogue(home=home, offline=offline)
    checked = check_contribution(model_id, entry, folder, catalogue=catalogue)
    say(f"checked the entry and {folder}")
    # Both tokens are tried before any work: a wrong GitHub token must not surface only after publishing.
    for client in (
        ZenodoClient(z_root, model_id=model_id, token=zenodo, options=http),
        GitHubClient(g_root, model_id=model_id, token=github, options=http),
    ):
        try:
            if isinstance(client, ZenodoClient):
                client.check_token()
            else:
                client.check_repository(repo)
        finally:
            client.close()
    say(f"Zenodo ({z_root}) and GitHub ({g_root}, {repo}) accept the tokens")

    out = Path(output_dir)
    package = build_package(
        folder,
        out / f"{model_id}.zip",
        model_id=model_id,
        package_name=str(checked["execution"]["package_name"]),
    )
    say(f"packaged {package.path} ({package.size} bytes, sha256 {package.sha256})")

    report = test_package(
        model_id, checked, package, home=home, sandbox=sandbox, num_samples=num_samples, offline=offline
    )
    say(
        f"tested: {report.num_samples} samples of shape {report.shapes[0]} "
        f"(sandbox {report.sandbox_policy}: {', '.join(report.sandbox_layers) or 'no confining layers'})"
    )

    selection = checked.get("selection") if isinstance(checked.get("selection"), Mapping) else {}
    keywords = ["medigan", model_id] + [
        str(t) for t in (selection or {}).get("tags", []) if isinstance(t, str)
    ]
    metadata = deposition_metadata(
        model_id,
        description=_zenodo_description(model_id, checked, description),
        creators=[{"name": creator_name, "affiliation": creator_affiliation}],
        keywords=keywords,
    )
    z_client = ZenodoClient(z_root, model_id=model_id, token=zenodo, options=http)
    try:
        deposition = deposit_package(z_client, package, metadata=metadata, confirm=ask)
    finally:
        z_client.close()
    say(f"published on Zenodo: {neutralise(deposition.record_url)}")

    verify_published(deposition.download_url, sha256=package.sha256, model_id=model_id)
    finished = finish_entry(
        model_id,
        checked,
        package_link=deposition.download_url,
        package_sha256=package.sha256,
        package_md5=package.md5,
        dependencies_as_of=dependencies_as_of or datetime.date.today(),
    )
    entry_path = out / f"{model_id}.json"
    _write_json_atomically(entry_path, {model_id: finished})
    say(f"wrote the entry to {entry_path}")

    g_client = GitHubClient(g_root, model_id=model_id, token=github, options=http)
    try:
        issue = g_client.open_issue(
            repo,
            title=f"{ISSUE_TITLE}: {model_id}",
            body=issue_body(
                model_id,
                finished,
                package_link=deposition.download_url,
                record_url=deposition.record_url,
                doi=deposition.doi,
                creator_name=creator_name,
                creator_affiliation=creator_affiliation,
                description=description,
            ),
        )
    except ContributionError as exc:
        exc.remedy = (
            f"{exc.remedy}; the deposition is published and the entry is in {entry_path}: file the issue "
            "again with Generators().push_to_github(...) once that is fixed"
        )
        exc.args = (f"{exc.message}\n  -> {exc.remedy}",)
        raise
    finally:
        g_client.close()
    say(f"opened {neutralise(issue.html_url)}")
    return Contribution(
        model_id=model_id,
        entry=finished,
        entry_path=entry_path,
        package=package,
        test=report,
        deposition=deposition,
        issue=issue,
    )


def _zenodo_description(model_id: str, entry: Mapping[str, Any], extra: str) -> str:
    description = entry.get("description") if isinstance(entry.get("description"), Mapping) else {}
    title = str((description or {}).get("title") or model_id)
    parts = [f"<p>{_html(extra)}</p>" if extra else "", f"<p><strong>{_html(title)}</strong></p>"]
    parts.append(
        f"<p>A generative model of the medigan catalogue (model id <code>{_html(model_id)}</code>). "
        "Run it with <code>medigan_iso.generate(...)</code> or medigan's "
        f"<code>Generators().generate(model_id='{_html(model_id)}')</code>.</p>"
    )
    return "".join(p for p in parts if p)


def _html(text: str) -> str:
    return (
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("'", "&#39;")
        .replace('"', "&quot;")
    )
