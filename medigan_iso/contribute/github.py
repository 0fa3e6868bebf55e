"""GitHub's REST issues API: open the catalogue issue that asks for a model to be added.

This module owns ``POST /repos/{owner}/{repo}/issues`` (201 with ``number`` and ``html_url``; 401 bad
credentials, 403/404 no access, 410 issues disabled, 422 validation failed), the issue's title and body
(the finished entry as JSON and the package link), and where it goes: the API root from
``$MEDIGAN_ISO_GITHUB_API_URL`` (default https://api.github.com), the repository from
``$MEDIGAN_ISO_GITHUB_REPO`` (default medigan's). It is called only after the Zenodo deposit is published.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from medigan_iso.contribute.remote import ApiClient, check_api_root
from medigan_iso.errors import ContributionError
from medigan_iso.untrusted import neutralise

__all__ = [
    "DEFAULT_GITHUB_API_URL",
    "DEFAULT_GITHUB_REPO",
    "GITHUB_API_URL_ENV",
    "GITHUB_REPO_ENV",
    "GITHUB_TOKEN_ENV",
    "ISSUE_TITLE",
    "GitHubClient",
    "OpenedIssue",
    "github_repo",
    "github_root",
    "issue_body",
]

DEFAULT_GITHUB_API_URL = "https://api.github.com"
DEFAULT_GITHUB_REPO = "RichardObi/medigan"
GITHUB_API_URL_ENV = "MEDIGAN_ISO_GITHUB_API_URL"
GITHUB_REPO_ENV = "MEDIGAN_ISO_GITHUB_REPO"
GITHUB_TOKEN_ENV = "GITHUB_TOKEN"
ISSUE_TITLE = "Model Integration Request for medigan"  # medigan 1.0's title, so maintainers can filter
_REPO_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}$")


@dataclass(frozen=True)
class OpenedIssue:
    number: int
    html_url: str


def github_root(url: str | None, *, model_id: str) -> str:
    chosen = url or os.environ.get(GITHUB_API_URL_ENV) or DEFAULT_GITHUB_API_URL
    return check_api_root(chosen, model_id=model_id, what="GitHub", env=GITHUB_API_URL_ENV)


def github_repo(repo: str | None, *, model_id: str) -> str:
    chosen = (repo or os.environ.get(GITHUB_REPO_ENV) or DEFAULT_GITHUB_REPO).strip()
    if not _REPO_RE.match(chosen) or ".." in chosen:
        raise ContributionError(
            model_id,
            f"{neutralise(chosen, max_chars=120)!r} is not a GitHub repository name (owner/name)",
            remedy=f"set {GITHUB_REPO_ENV} to owner/name, e.g. {DEFAULT_GITHUB_REPO}",
        )
    return chosen


def issue_body(
    model_id: str,
    entry: Mapping[str, Any],
    *,
    package_link: str,
    record_url: str | None = None,
    doi: str | None = None,
    creator_name: str = "",
    creator_affiliation: str = "",
    description: str = "",
) -> str:
    """The issue text: who, what, where it is stored, and the finished entry as a JSON block."""
    lines = []
    if creator_name:
        lines.append(f"**Creator:** {creator_name}")
    if creator_affiliation:
        lines.append(f"**Affiliation:** {creator_affiliation}")
    if description:
        lines.append(f"**Description:** {description}")
    lines.append(f"**Stored in:** {package_link}")
    if record_url:
        lines.append(f"**Zenodo record:** {record_url}")
    if doi:
        lines.append(f"**DOI:** {doi}")
    execution = entry.get("execution") if isinstance(entry.get("execution"), Mapping) else {}
    sha = execution.get("package_sha256") if isinstance(execution, Mapping) else None
    if sha:
        lines.append(f"**package_sha256:** `{sha}`")
    lines += [
        "",
        "### Model metadata",
        "",
        "Validated in strict mode and tested in an isolated env by medigan-iso before publishing.",
        "",
        "```json",
        json.dumps({model_id: entry}, indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


class GitHubClient(ApiClient):
    service = "GitHub"
    token_env = GITHUB_TOKEN_ENV

    def remedy(self, status: int | None, step: str) -> str:
        if status == 401:
            return f"GitHub refused the token: check {GITHUB_TOKEN_ENV} (valid, not expired)"
        if status in (403, 404):
            return (
                f"the token cannot open issues in this repository: give {GITHUB_TOKEN_ENV} the issues "
                f"permission (fine-grained) or public_repo scope, and check {GITHUB_REPO_ENV}"
            )
        if status == 410:
            return f"issues are disabled in this repository; check {GITHUB_REPO_ENV}"
        return super().remedy(status, step)

    def check_repository(self, repo: str) -> None:
        """Read the repository with the token: a bad token (401), an unknown or hidden repository (404) or
        disabled issues show up before anything is published (the issue is opened last)."""
        step = f"checking the token and {repo}"
        response = self.request(
            "GET",
            f"{self.root}/repos/{repo}",
            step=step,
            headers={"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"},
            retry=True,
        )
        if self.json_of(response, step=step).get("has_issues") is False:
            raise self.error(step, response.status_code, f"issues are disabled in {repo}")

    def open_issue(self, repo: str, *, title: str, body: str) -> OpenedIssue:
        step = f"opening an issue in {repo}"
        response = self.request(
            "POST",
            f"{self.root}/repos/{repo}/issues",
            step=step,
            json_body={"title": title, "body": body},
            headers={"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"},
        )
        data = self.json_of(response, step=step)
        number, html_url = data.get("number"), data.get("html_url")
        if not isinstance(number, int) or not isinstance(html_url, str):
            raise self.error(step, response.status_code, "the answer has no issue number or html_url")
        return OpenedIssue(number=number, html_url=html_url)
