"""HTTP downloads of model packages: streaming, timeouts, retries, resume, size cap, progress.

This module owns one thing: getting the bytes behind a URL into a ``.part`` file with requests, robustly.
It knows nothing about hashes, catalogues or where the cache lives (``medigan_iso.packages`` decides the
file name, holds the lock and verifies the result), and it never prints: progress goes to a callback.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests

from medigan_iso.archives import ZIP_MAGICS
from medigan_iso.errors import PackageDownloadError
from medigan_iso.untrusted import get_logger

__all__ = [
    "DEFAULT_DOWNLOAD_OPTIONS",
    "MAX_PACKAGE_BYTES",
    "DownloadOptions",
    "ProgressCallback",
    "discard_partial",
    "download",
]

logger = get_logger(__name__)

MAX_PACKAGE_BYTES = 8 << 30  # the largest upstream package is well under 2 GiB

ProgressCallback = Callable[[int, "int | None"], None]
"""Called as ``progress(bytes_done, bytes_total_or_None)`` while a package downloads."""


@dataclass(frozen=True)
class DownloadOptions:
    """How :func:`download` talks to a server."""

    connect_timeout_s: float = 15.0
    read_timeout_s: float = 60.0
    attempts: int = 5
    backoff_s: float = 1.0  # delay before the 2nd attempt; doubles up to backoff_max_s
    backoff_max_s: float = 30.0
    max_bytes: int = MAX_PACKAGE_BYTES
    # A read that a dropped connection interrupts loses its whole chunk (urllib3 raises IncompleteRead and
    # keeps nothing): with 1 MiB chunks, a link that drops every few hundred KB never progressed (issue 19).
    chunk_bytes: int = 64 << 10


DEFAULT_DOWNLOAD_OPTIONS = DownloadOptions()


class _TransientError(Exception):
    """A failure worth retrying (connection drop, timeout, 5xx, 429)."""

    def __init__(self, reason: str, *, status: int | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.retry_after_s = retry_after_s


def _sidecar(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def discard_partial(part: Path) -> None:
    """Delete a partial download and its resume metadata."""
    for path in (part, _sidecar(part)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _resume_state(part: Path, url: str) -> tuple[int, str | None]:
    """Bytes already in ``part`` for this URL, and the validator to send as If-Range."""
    try:
        meta = json.loads(_sidecar(part).read_text(encoding="utf-8"))
        size = part.stat().st_size
    except (OSError, ValueError):
        discard_partial(part)
        return 0, None
    if not isinstance(meta, dict) or meta.get("url") != url:
        discard_partial(part)
        return 0, None
    validator = meta.get("validator")
    return size, validator if isinstance(validator, str) else None


def _content_range_start(header: str) -> tuple[int, int | None] | None:
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", header)
    if not match:
        return None
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), total


def _retry_after(resp: requests.Response) -> float | None:
    value = resp.headers.get("Retry-After", "")
    return float(value) if value.strip().isdigit() else None


def _download_once(
    session: requests.Session,
    url: str,
    part: Path,
    *,
    options: DownloadOptions,
    progress: ProgressCallback | None,
) -> None:
    have, validator = _resume_state(part, url)
    headers = {"Accept-Encoding": "identity", "User-Agent": "medigan-iso"}
    if have:
        headers["Range"] = f"bytes={have}-"
        if validator:
            headers["If-Range"] = validator
    try:
        resp = session.get(
            url,
            headers=headers,
            stream=True,
            timeout=(options.connect_timeout_s, options.read_timeout_s),
        )
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise _TransientError(f"{type(exc).__name__}: {exc}") from exc
    except requests.RequestException as exc:
        raise PackageDownloadError(url, f"{type(exc).__name__}: {exc}") from exc
    with resp:
        status = resp.status_code
        if status == 416 and have:
            discard_partial(part)  # our partial file no longer matches the resource: start again
            raise _TransientError("the server refused to resume (HTTP 416); restarting", status=status)
        if status in (408, 425, 429) or status >= 500:
            raise _TransientError(
                f"HTTP {status} {resp.reason}", status=status, retry_after_s=_retry_after(resp)
            )
        if status >= 300 or status not in (200, 206):
            discard_partial(part)
            raise PackageDownloadError(
                url,
                f"HTTP {status} {resp.reason}",
                status=status,
                remedy="check the entry's package_link; the package may have moved",
            )
        content_type = resp.headers.get("Content-Type", "").lower()
        if content_type.startswith(("text/html", "application/xhtml")):
            discard_partial(part)
            raise PackageDownloadError(
                url,
                f"the server returned an HTML page (Content-Type {content_type}), not a zip archive",
                status=status,
                remedy="open the link in a browser: it may need a login, or the record may be gone",
            )
        if resp.url.startswith("http://") and url.startswith("https://"):
            logger.warning("download of %s was redirected to plain http: %s", url, resp.url)
        encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
        total: int | None = None
        if status == 206:
            content_range = _content_range_start(resp.headers.get("Content-Range", ""))
            if not have or content_range is None or content_range[0] != have:
                discard_partial(part)
                raise _TransientError(
                    f"the server answered Range bytes={have}- with Content-Range "
                    f"{resp.headers.get('Content-Range')!r}; restarting"
                )
            total = content_range[1]
            mode = "ab"
        else:
            if have:
                logger.info("%s: the server does not resume downloads; restarting from byte 0", url)
            have = 0
            mode = "wb"
            length = resp.headers.get("Content-Length", "")
            if encoding in ("", "identity") and length.isdigit():
                total = int(length)
        if total is not None and total > options.max_bytes:
            discard_partial(part)
            raise PackageDownloadError(
                url,
                f"the package is {total} bytes, above the cap of {options.max_bytes}",
                status=status,
                remedy="raise DownloadOptions.max_bytes if this package is really that large",
            )
        # Weak ETags (W/...) may not be used with If-Range (RFC 9110 13.1.5).
        etag = resp.headers.get("ETag", "")
        new_validator = etag if etag and not etag.startswith("W/") else resp.headers.get("Last-Modified")
        resumable = encoding in ("", "identity")
        part.parent.mkdir(parents=True, exist_ok=True)
        _sidecar(part).write_text(
            json.dumps({"url": url, "validator": new_validator if resumable else None}), encoding="utf-8"
        )
        done = have
        head = b""
        try:
            with part.open(mode) as out:
                for chunk in resp.iter_content(options.chunk_bytes):
                    if done < 4 and len(head) < 4:
                        head += chunk[:4]
                        if len(head) >= 4 and done == 0:
                            _check_head(url, head, status)
                    done += len(chunk)
                    if done > options.max_bytes:
                        raise PackageDownloadError(
                            url,
                            f"the download exceeded the cap of {options.max_bytes} bytes",
                            status=status,
                            remedy="raise DownloadOptions.max_bytes if this package is really that large",
                        )
                    out.write(chunk)
                    if progress is not None:
                        progress(done, total)
        except PackageDownloadError:
            discard_partial(part)
            raise
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
            if not resumable:
                discard_partial(part)
            raise _TransientError(f"connection lost after {done} bytes ({type(exc).__name__})") from exc
        if total is not None and done < total:
            raise _TransientError(f"connection closed after {done} of {total} bytes")
        if done == 0 or (have == 0 and len(head) < 4):
            try:
                _check_head(url, head, status)
            except PackageDownloadError:
                discard_partial(part)
                raise


def _check_head(url: str, head: bytes, status: int) -> None:
    if head.startswith(ZIP_MAGICS):
        return
    looks_html = head.lstrip().lower().startswith((b"<!do", b"<htm", b"<hea", b"<bod"))
    raise PackageDownloadError(
        url,
        "the server returned an HTML page, not a zip archive"
        if looks_html
        else f"the response is not a zip archive (it starts with {head[:4]!r})",
        status=status,
        remedy="open the link in a browser: it may need a login, or the record may be gone",
    )


def download(
    url: str,
    part: str | os.PathLike[str],
    *,
    options: DownloadOptions = DEFAULT_DOWNLOAD_OPTIONS,
    progress: ProgressCallback | None = None,
    session: requests.Session | None = None,
) -> Path:
    """Download ``url`` into the file ``part``, resuming a previous partial download of the same URL.

    Retries connection errors, timeouts, HTTP 408/425/429/5xx with exponential backoff; resumes with
    ``Range`` (and ``If-Range`` with the first response's strong ETag or Last-Modified) and checks the
    answer's ``206`` + ``Content-Range``; anything else restarts from byte 0. Permanent failures (other
    4xx, an HTML page, a non-zip body, the size cap) delete the partial file so it cannot poison a retry;
    after the last failed attempt of a transient error the partial file is kept for the next call.
    """
    part_path = Path(part)
    own_session = session is None
    sess = requests.Session() if session is None else session
    try:
        for attempt in range(1, max(options.attempts, 1) + 1):
            try:
                _download_once(sess, url, part_path, options=options, progress=progress)
                return part_path
            except _TransientError as exc:
                if attempt >= options.attempts:
                    raise PackageDownloadError(
                        url,
                        f"{exc} (gave up after {attempt} attempts)",
                        status=exc.status,
                        remedy="check the network and run the command again; the download resumes",
                    ) from exc
                delay = min(options.backoff_s * 2 ** (attempt - 1), options.backoff_max_s)
                if exc.retry_after_s is not None:
                    delay = min(max(delay, exc.retry_after_s), options.backoff_max_s)
                logger.warning(
                    "%s: %s; retrying in %.1f s (attempt %d/%d)",
                    url,
                    exc,
                    delay,
                    attempt + 1,
                    options.attempts,
                )
                time.sleep(delay)
    finally:
        if own_session:
            sess.close()
    raise AssertionError("unreachable")  # pragma: no cover
