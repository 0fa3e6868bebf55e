"""Zenodo's REST deposit API: create a deposition, upload to its bucket, describe it, publish it.

This module owns the Zenodo side of a contribution (https://developers.zenodo.org, "Deposit" and
"Quickstart - Upload"): ``POST /api/deposit/depositions`` (201, an empty draft with ``links.bucket``),
``PUT <bucket>/<filename>`` (the file's bytes; the answer carries ``checksum: "md5:..."``),
``PUT /api/deposit/depositions/<id>`` (metadata: title, upload_type, description, creators, keywords),
then ``POST .../actions/publish`` (202). Any 2xx counts as success. A published deposition is immutable
(its files can never change: the DOI is static), so nothing is published until the upload's checksum
matches and the caller confirmed; a draft left by any failure before publishing is deleted
(``DELETE /api/deposit/depositions/<id>``, allowed for unpublished drafts only), so a failed run leaves
nothing behind. The site root comes from ``$MEDIGAN_ISO_ZENODO_URL`` (default https://zenodo.org;
https://sandbox.zenodo.org works the same way). The token travels in an ``Authorization: Bearer`` header,
never in a URL query (medigan 1.0 put it in ``?access_token=``, where proxies and error messages log it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from medigan_iso.contribute.packaging import BuiltPackage
from medigan_iso.contribute.remote import ApiClient, check_api_root
from medigan_iso.errors import ContributionError, MediganIsoError
from medigan_iso.untrusted import get_logger, neutralise

__all__ = [
    "DEFAULT_ZENODO_URL",
    "ZENODO_TOKEN_ENV",
    "ZENODO_URL_ENV",
    "PublishedDeposition",
    "ZenodoClient",
    "deposit_package",
    "zenodo_root",
]

logger = get_logger(__name__)

DEFAULT_ZENODO_URL = "https://zenodo.org"
ZENODO_URL_ENV = "MEDIGAN_ISO_ZENODO_URL"
ZENODO_TOKEN_ENV = "ZENODO_ACCESS_TOKEN"
DEPOSITIONS_PATH = "/api/deposit/depositions"


@dataclass(frozen=True)
class PublishedDeposition:
    """A published Zenodo record holding the package."""

    deposition_id: int
    record_url: str
    download_url: str  # the package zip's public link: the entry's package_link
    doi: str | None
    checksum_md5: str


def zenodo_root(url: str | None, *, model_id: str) -> str:
    """The site root: ``url``, else ``$MEDIGAN_ISO_ZENODO_URL``, else Zenodo's; a trailing /api is dropped."""
    chosen = url or os.environ.get(ZENODO_URL_ENV) or DEFAULT_ZENODO_URL
    root = check_api_root(chosen, model_id=model_id, what="Zenodo", env=ZENODO_URL_ENV)
    return root.removesuffix("/api")


class ZenodoClient(ApiClient):
    """The deposit endpoints this contribution uses."""

    service = "Zenodo"
    token_env = ZENODO_TOKEN_ENV

    def remedy(self, status: int | None, step: str) -> str:
        if status in (401, 403):
            return (
                f"check {ZENODO_TOKEN_ENV}: a personal access token of this Zenodo site "
                "(sandbox tokens work only on sandbox.zenodo.org) with the deposit:write and "
                "deposit:actions scopes"
            )
        return super().remedy(status, step)

    @property
    def depositions_url(self) -> str:
        return self.root + DEPOSITIONS_PATH

    def deposition_url(self, deposition_id: int) -> str:
        return f"{self.depositions_url}/{int(deposition_id)}"

    def check_token(self) -> None:
        """List one deposition: 401/403 here means the token cannot deposit, before any work is done."""
        self.request("GET", f"{self.depositions_url}?size=1", step="checking the token", retry=True)

    def create(self) -> dict[str, Any]:
        step = "creating the deposition"
        response = self.request("POST", self.depositions_url, step=step, json_body={})
        return self.json_of(response, step=step)

    def upload(self, bucket_url: str, package: BuiltPackage) -> dict[str, Any]:
        """PUT the zip into the bucket (retried: a PUT of the same key replaces it in a draft)."""
        step = f"uploading {package.filename}"
        response = self.request(
            "PUT",
            f"{bucket_url.rstrip('/')}/{quote(package.filename)}",
            step=step,
            file_factory=lambda: package.path.open("rb"),
            headers={"Content-Type": "application/octet-stream"},
            retry=True,
        )
        return self.json_of(response, step=step)

    def set_metadata(self, deposition_id: int, metadata: Mapping[str, Any]) -> dict[str, Any]:
        step = "setting the deposition's metadata"
        response = self.request(
            "PUT", self.deposition_url(deposition_id), step=step, json_body={"metadata": metadata}, retry=True
        )
        return self.json_of(response, step=step)

    def get(self, deposition_id: int) -> dict[str, Any]:
        step = "reading the deposition"
        response = self.request("GET", self.deposition_url(deposition_id), step=step, retry=True)
        return self.json_of(response, step=step)

    def publish(self, deposition_id: int) -> dict[str, Any]:
        step = "publishing the deposition"
        response = self.request("POST", f"{self.deposition_url(deposition_id)}/actions/publish", step=step)
        return self.json_of(response, step=step)

    def discard(self, deposition_id: int) -> bool:
        """Delete an unpublished draft; False (logged) when that fails too."""
        try:
            self.request("DELETE", self.deposition_url(deposition_id), step="deleting the draft", retry=True)
        except MediganIsoError as exc:
            logger.warning("Zenodo: could not delete draft deposition %s: %s", deposition_id, exc.message)
            return False
        logger.info("Zenodo: deleted draft deposition %s", deposition_id)
        return True


def deposition_metadata(
    model_id: str,
    *,
    description: str,
    creators: Sequence[Mapping[str, str]],
    keywords: Sequence[str],
) -> dict[str, Any]:
    """The deposition metadata Zenodo requires for publishing (title, upload_type, description, creators)."""
    return {
        "title": f"medigan model: {model_id}",
        "upload_type": "software",
        "description": description,
        "creators": [dict(c) for c in creators],
        "keywords": sorted(dict.fromkeys(k for k in keywords if k)),
    }


def _published_download_url(published: Mapping[str, Any], filename: str, *, root: str) -> tuple[str, str]:
    """(record page, public file link) of a published deposition, in upstream catalogue form
    (``<record>/files/<name>?download=1``)."""
    links = published.get("links") or {}
    record = links.get("record_html") or links.get("html") if isinstance(links, Mapping) else None
    if not isinstance(record, str) or not record:
        record_id = published.get("record_id") or published.get("id")
        record = f"{root}/records/{record_id}"
    record = record.rstrip("/")
    return record, f"{record}/files/{quote(filename)}?download=1"


def deposit_package(
    client: ZenodoClient,
    package: BuiltPackage,
    *,
    metadata: Mapping[str, Any],
    confirm: Callable[[str], bool],
) -> PublishedDeposition:
    """Create, upload (checksum verified), describe, confirm, publish; delete the draft on any failure."""
    model_id = client.model_id
    draft = client.create()
    deposition_id = draft.get("id")
    bucket = (draft.get("links") or {}).get("bucket") if isinstance(draft.get("links"), Mapping) else None
    if not isinstance(deposition_id, int) or not isinstance(bucket, str):
        if isinstance(deposition_id, int):
            client.discard(deposition_id)
        raise client.error("creating the deposition", 201, "the answer has no id or links.bucket")
    published = False
    try:
        uploaded = client.upload(bucket, package)
        checksum = str(uploaded.get("checksum", "")).lower().removeprefix("md5:")
        if checksum != package.md5:
            raise ContributionError(
                model_id,
                f"Zenodo reports checksum {neutralise(checksum, max_chars=80)!r} for {package.filename}, "
                f"the package's md5 is {package.md5}; nothing was published",
                remedy="the upload was altered in transit or by the server; run the contribution again",
            )
        client.set_metadata(deposition_id, metadata)
        question = (
            f"Publish {package.filename} (sha256 {package.sha256}) on {client.root} as deposition "
            f"{deposition_id}? A published deposition can never be changed or deleted."
        )
        if not confirm(question):
            raise ContributionError(
                model_id,
                "publishing was not confirmed; the draft deposition was deleted",
                remedy="run again and confirm, or pass --yes (assume_yes=True)",
            )
        try:
            result = client.publish(deposition_id)
        except MediganIsoError:
            # The publish may have gone through before the error (a lost answer): ask before cleaning up.
            state = client.get(deposition_id)
            if not state.get("submitted"):
                raise
            result = state
        published = True
    finally:
        if not published:
            client.discard(deposition_id)
    record, download = _published_download_url(result, package.filename, root=client.root)
    doi = result.get("doi")
    logger.info("Zenodo: published deposition %s: %s", deposition_id, neutralise(record))
    return PublishedDeposition(
        deposition_id=deposition_id,
        record_url=record,
        download_url=download,
        doi=str(doi) if doi else None,
        checksum_md5=package.md5,
    )
