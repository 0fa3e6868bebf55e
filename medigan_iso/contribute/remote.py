"""HTTP to the contribution's remote services (Zenodo's deposit API, GitHub's issues API).

This module owns the one boundary where requests meets a token: API roots (https, or plain http only
for loopback hosts), the token itself (:class:`Token`: never in a URL, a repr, an argv or a log line),
retries of idempotent requests, and the translation of every failure into
:class:`~medigan_iso.errors.RemoteServiceError` whose text is token-free and neutralised (a server's body
is untrusted). The token is only ever sent to the API root's own origin: a link the server hands back
(a bucket URL, a redirect) pointing elsewhere is refused. It never prints.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any
from urllib.parse import urlsplit

import requests

from medigan_iso.errors import ContributionError, RemoteServiceError
from medigan_iso.untrusted import get_logger, neutralise

__all__ = [
    "ApiClient",
    "HttpOptions",
    "Token",
    "check_api_root",
    "is_loopback",
    "redact",
]

logger = get_logger(__name__)

REDACTED = "***"
MAX_BODY_CHARS = 1500  # of a server's error body quoted in an error message


@dataclass(frozen=True)
class Token:
    """An access token. ``str()`` and ``repr()`` never show it; ``reveal()`` is for the one header."""

    _value: str = field(repr=False)

    def __post_init__(self) -> None:
        if not self._value or any(ch.isspace() for ch in self._value):
            raise ValueError("a token is a non-empty string without whitespace")

    def reveal(self) -> str:
        return self._value

    def __str__(self) -> str:
        return REDACTED

    def __repr__(self) -> str:
        return f"Token({REDACTED})"


@dataclass(frozen=True)
class HttpOptions:
    """How the clients talk to a service. Only idempotent requests (PUT, GET, DELETE) are retried."""

    connect_timeout_s: float = 15.0
    read_timeout_s: float = 300.0  # a large upload's final answer can take a while
    attempts: int = 4
    backoff_s: float = 2.0  # before the 2nd attempt; doubles up to backoff_max_s
    backoff_max_s: float = 30.0


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_api_root(url: str, *, model_id: str, what: str, env: str) -> str:
    """``url`` without a trailing slash, if it is https (or http on a loopback host, for stand-ins)."""
    parts = urlsplit(url.strip())
    secure = parts.scheme == "https" and bool(parts.hostname)
    if not secure and not (parts.scheme == "http" and is_loopback(parts.hostname)):
        raise ContributionError(
            model_id,
            f"{what} API root {neutralise(url, max_chars=200)!r} must be an https:// URL "
            "(plain http:// only for a loopback host such as 127.0.0.1)",
            remedy=f"set {env} to an https:// URL, or unset it for the public service",
        )
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ContributionError(
            model_id,
            f"{what} API root must not carry credentials, a query or a fragment",
            remedy=f"set {env} to the bare site URL; tokens come from the environment",
        )
    return url.strip().rstrip("/")


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80 if parts.scheme == "http" else None)
    return parts.scheme, (parts.hostname or "").lower(), port


def redact(text: str, tokens: Iterable[Token]) -> str:
    """``text`` with every token replaced by ``***``."""
    for token in tokens:
        text = text.replace(token.reveal(), REDACTED)
    return text


def _summary(response: requests.Response) -> str:
    """What the server said: Zenodo's/GitHub's ``message`` and per-field ``errors``, else the raw text."""
    try:
        data = response.json()
    except ValueError:
        return response.text.strip() or response.reason or ""
    if isinstance(data, Mapping):
        parts = [str(data.get("message") or data.get("error") or "").strip()]
        errors = data.get("errors")
        if isinstance(errors, list):
            for item in errors:
                if isinstance(item, Mapping):
                    where = item.get("field") or item.get("resource") or ""
                    messages = item.get("messages") or item.get("message") or item.get("code") or ""
                    parts.append(f"{where}: {messages}" if where else str(messages))
                else:
                    parts.append(str(item))
        text = "; ".join(p for p in parts if p)
        if text:
            return text
    return json.dumps(data)[:MAX_BODY_CHARS]


class ApiClient:
    """One service, one token, one requests.Session. Subclasses name the service and its remedies."""

    service = "service"
    token_env = "TOKEN"

    def __init__(
        self,
        root: str,
        *,
        model_id: str,
        token: Token,
        options: HttpOptions | None = None,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.root = root.rstrip("/")
        self.model_id = model_id
        self._token = token
        self.options = options or HttpOptions()
        self._sleep = sleep
        self._session = session or requests.Session()
        self._session.headers["Authorization"] = f"Bearer {token.reveal()}"
        self._session.headers["User-Agent"] = "medigan-iso-contribute"

    def close(self) -> None:
        self._session.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={self.root!r}, model_id={self.model_id!r})"

    def remedy(self, status: int | None, step: str) -> str:
        if status == 401:
            return f"the token was refused: check {self.token_env} (a valid, unexpired token)"
        if status == 403:
            return f"the token lacks a permission this step needs: check {self.token_env}'s scopes"
        if status is None or status >= 500 or status == 429:
            return f"{self.service} is unavailable or overloaded; try again later"
        return f"fix what {self.service} reports above and run the contribution again"

    def error(self, step: str, status: int | None, body: str) -> RemoteServiceError:
        clean = neutralise(redact(body, [self._token]), max_chars=MAX_BODY_CHARS)
        return RemoteServiceError(
            self.model_id,
            service=self.service,
            step=step,
            status=status,
            body=clean,
            remedy=self.remedy(status, step),
        )

    def request(
        self,
        method: str,
        url: str,
        *,
        step: str,
        json_body: Any = None,
        file_factory: Callable[[], IO[bytes]] | None = None,
        headers: Mapping[str, str] | None = None,
        retry: bool = False,
        expected: tuple[int, ...] | None = None,
    ) -> requests.Response:
        """Send one request (with ``retry``, repeat it on 5xx/429/connection errors with backoff).

        ``expected`` None means any 2xx. Raises RemoteServiceError with the server's body otherwise.
        """
        if _origin(url) != _origin(self.root):
            raise self.error(
                step,
                None,
                f"the server pointed at {url}, outside {self.root}; the token is not sent there",
            )
        attempts = max(1, self.options.attempts if retry else 1)
        delay = self.options.backoff_s
        last: RemoteServiceError | None = None
        for attempt in range(1, attempts + 1):
            data = file_factory() if file_factory is not None else None
            try:
                logger.info("%s: %s %s (%s, attempt %d)", self.service, method, url, step, attempt)
                response = self._session.request(
                    method,
                    url,
                    json=json_body,
                    data=data,
                    headers=dict(headers or {}),
                    timeout=(self.options.connect_timeout_s, self.options.read_timeout_s),
                    allow_redirects=False,  # a redirect could carry the token to another origin
                )
            except requests.RequestException as exc:
                last = self.error(step, None, f"{type(exc).__name__}: {exc}")
            else:
                ok = (
                    response.status_code in expected
                    if expected is not None
                    else 200 <= response.status_code < 300
                )
                if ok:
                    return response
                last = self.error(step, response.status_code, _summary(response))
                if response.status_code < 500 and response.status_code != 429:
                    raise last
            finally:
                if data is not None:
                    data.close()
            if attempt < attempts:
                logger.warning(
                    "%s: %s failed (%s); retrying in %.1f s", self.service, step, last.message, delay
                )
                self._sleep(delay)
                delay = min(delay * 2, self.options.backoff_max_s)
        assert last is not None
        raise last

    def json_of(self, response: requests.Response, *, step: str) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError:
            raise self.error(step, response.status_code, "the answer is not JSON") from None
        if not isinstance(data, dict):
            raise self.error(step, response.status_code, "the answer is not a JSON object")
        return data
