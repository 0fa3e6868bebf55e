"""Who may talk to the explorer, as Jupyter decides it: a token, a Host check, a CSRF header, size caps.

This module owns :class:`AccessPolicy` (the token and the addresses the server answers to) and
:class:`AccessMiddleware`, a plain ASGI middleware that runs before any route:

1. Host check (DNS rebinding): the ``Host`` header must name the bound address and port (for a loopback
   bind also ``localhost``, ``127.0.0.1`` and ``[::1]``; for a wildcard bind also this machine's names and
   addresses; and any name the caller allows explicitly). A page on ``evil.example`` whose name its owner
   re-points at 127.0.0.1 sends ``Host: evil.example`` and is refused with 403 before anything else.
2. Authentication: ``Authorization: Bearer <token>`` (or Jupyter's ``token <token>``), the session
   cookie, or ``?token=`` on a GET, which sets the cookie (HttpOnly, SameSite=Strict) and redirects to the
   same URL without the token, so it leaves the address bar and the history. Anything else: 401 (API) or
   a page that says where the token is (HTML).
3. CSRF: a request that can change state (any method but GET, HEAD, OPTIONS) must carry the token itself
   (Authorization) or the CSRF value of the page (``X-Medigan-Iso-CSRF``); the cookie alone is not enough.
   Custom headers cannot be sent cross-origin without a CORS preflight, which this server never grants.
4. Request bodies above :data:`MAX_BODY_BYTES` are refused with 413 before the route reads them.
5. Every response gets a strict Content-Security-Policy (scripts and styles from this origin only, no
   inline script), ``nosniff``, ``no-referrer`` and no framing.

It compares secrets with :func:`hmac.compare_digest`, logs no token, and never prints.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from medigan_iso.errors import ExploreError
from medigan_iso.untrusted import get_logger

__all__ = [
    "CSRF_HEADER",
    "MAX_BODY_BYTES",
    "TOKEN_ENV",
    "AccessMiddleware",
    "AccessPolicy",
    "is_loopback",
]

logger = get_logger(__name__)

TOKEN_ENV = "MEDIGAN_ISO_EXPLORE_TOKEN"
CSRF_HEADER = "x-medigan-iso-csrf"
MAX_BODY_BYTES = 256 * 1024  # the largest body a page sends is a 4096-float latent, about 90 KB of JSON
MIN_TOKEN_CHARS = 16
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) only reaches this machine."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _machine_names() -> set[str]:
    """This machine's host name, FQDN and their addresses: what a wildcard bind is reached by."""
    names = {socket.gethostname().lower(), socket.getfqdn().lower()}
    for name in list(names):
        try:
            names |= {str(info[4][0]).lower() for info in socket.getaddrinfo(name, None)}
        except OSError:
            continue
    return names


def _host_names(host: str) -> set[str]:
    bare = host.strip("[]").lower()
    names = {bare}
    if is_loopback(bare) or bare in WILDCARD_HOSTS:
        names |= {"localhost", "127.0.0.1", "::1"}
    if bare in WILDCARD_HOSTS:
        names |= _machine_names()
    return names


@dataclass(frozen=True)
class AccessPolicy:
    """The token and bound address of one explorer; derives the cookie and CSRF values from the token."""

    token: str
    host: str
    port: int
    host_names: frozenset[str]  # what a Host header may name (with this port): see create()

    @classmethod
    def create(
        cls, *, host: str, port: int, token: str | None = None, extra_hosts: Sequence[str] = ()
    ) -> AccessPolicy:
        """A policy with ``token``, else ``$MEDIGAN_ISO_EXPLORE_TOKEN``, else a fresh random token.

        The Host header may name ``host`` (with the loopback or machine names it implies) or any of
        ``extra_hosts`` (a reverse proxy's or tunnel's name the user chose to allow).
        """
        chosen = token if token is not None else os.environ.get(TOKEN_ENV) or secrets.token_hex(24)
        if len(chosen) < MIN_TOKEN_CHARS or not chosen.isascii() or not chosen.isprintable():
            raise ExploreError(
                f"the explorer token must be at least {MIN_TOKEN_CHARS} printable ASCII characters",
                remedy=f"unset {TOKEN_ENV} to get a random one, or set a longer one",
            )
        names = frozenset(name.strip("[]").lower() for name in extra_hosts)
        return cls(token=chosen, host=host, port=port, host_names=names | frozenset(_host_names(host)))

    def _derive(self, purpose: bytes) -> str:
        return hmac.new(self.token.encode(), purpose, hashlib.sha256).hexdigest()

    @property
    def cookie_name(self) -> str:
        # Browsers share cookies across ports of one host: one name per port keeps two explorers apart.
        return f"medigan_iso_explore_{self.port}"

    @property
    def cookie_value(self) -> str:
        return self._derive(b"medigan-iso explore cookie")

    @property
    def csrf_value(self) -> str:
        """What a page sends in ``X-Medigan-Iso-CSRF`` (embedded in every page; never the token)."""
        return self._derive(b"medigan-iso explore csrf")

    def allows_host_header(self, value: str) -> bool:
        """Whether a ``Host`` header names this server (DNS rebinding check)."""
        value = value.strip().lower()
        if value.startswith("["):
            name, _, rest = value[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else ""
        else:
            name, _, port = value.partition(":")
        if port and port != str(self.port):
            return False
        if not port and self.port != 80:
            return False
        return name in self.host_names

    def url(self, path: str = "/", *, with_token: bool = True) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.host in WILDCARD_HOSTS:
            host = "127.0.0.1"
        query = f"?{urlencode({'token': self.token})}" if with_token else ""
        return f"http://{host}:{self.port}{path}{query}"

    def token_matches(self, candidate: str | None) -> bool:
        return candidate is not None and hmac.compare_digest(candidate.encode(), self.token.encode())


def _headers(scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", ()):
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        # A repeated header is suspicious for the ones we check; keep the first, as most servers do.
        out.setdefault(name, value)
    return out


def _bearer(headers: dict[str, str]) -> str | None:
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() in ("bearer", "token") and value.strip():
        return value.strip()
    return None


def _cookie(headers: dict[str, str], name: str) -> str | None:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(headers.get("cookie", ""))
    except Exception:  # a malformed cookie header authenticates nobody
        return None
    morsel = jar.get(name)
    return None if morsel is None else morsel.value


async def _respond(
    send: Send, status: int, body: str, *, content_type: str, extra: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    data = body.encode("utf-8")
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(data)).encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def _security_headers(path: str) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"x-frame-options", b"DENY"),
        (b"cross-origin-opener-policy", b"same-origin"),
        (b"cross-origin-resource-policy", b"same-origin"),
    ]
    if not path.startswith("/static/"):
        headers.append((b"cache-control", b"no-store"))
    return headers


class AccessMiddleware:
    """The checks of the module docstring, in that order, around an ASGI ``app``."""

    def __init__(self, app: ASGIApp, *, policy: AccessPolicy, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.policy = policy
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # no websockets here
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        path = str(scope.get("path", "/"))
        headers = _headers(scope)
        wants_json = path.startswith("/api/") or "text/html" not in headers.get("accept", "")
        security = _security_headers(path)

        async def refuse(status: int, message: str, remedy: str) -> None:
            if wants_json:
                import json

                body = json.dumps({"error": message, "remedy": remedy, "status": status})
                await _respond(send, status, body, content_type="application/json", extra=security)
            else:
                page = _REFUSAL_PAGE.format(status=status, message=message, remedy=remedy)
                await _respond(send, status, page, content_type="text/html; charset=utf-8", extra=security)

        if not self.policy.allows_host_header(headers.get("host", "")):
            logger.warning("refused a request with a foreign Host header (possible DNS rebinding)")
            await refuse(403, "Host header not allowed", "open the explorer by the address it printed")
            return

        method = str(scope.get("method", "GET")).upper()
        bearer = _bearer(headers)
        by_header = self.policy.token_matches(bearer)
        by_cookie = hmac.compare_digest(
            (_cookie(headers, self.policy.cookie_name) or "").encode(), self.policy.cookie_value.encode()
        )
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        query_token = next((value for key, value in query if key == "token"), None)

        if query_token is not None and method in SAFE_METHODS:
            if not self.policy.token_matches(query_token):
                await refuse(403, "wrong token", "use the URL medigan-iso explore printed")
                return
            rest = urlencode([(k, v) for k, v in query if k != "token"])
            # The raw (still percent-encoded) path: a decoded CR/LF never reaches a header. One leading
            # slash: "//evil.example" would be a redirect to another host.
            raw = scope.get("raw_path") or quote(path).encode("ascii")
            location = "/" + raw.decode("latin-1").lstrip("/") + (f"?{rest}" if rest else "")
            cookie = (
                f"{self.policy.cookie_name}={self.policy.cookie_value}; Path=/; HttpOnly; SameSite=Strict"
            )
            await _respond(
                send,
                303,
                "",
                content_type="text/plain",
                extra=[
                    (b"location", location.encode("latin-1")),
                    (b"set-cookie", cookie.encode()),
                    *security,
                ],
            )
            return

        if not (by_header or by_cookie):
            await refuse(
                401,
                "authentication required",
                "open the URL with ?token= that medigan-iso explore printed, or send Authorization: Bearer",
            )
            return

        if method not in SAFE_METHODS and not by_header:
            csrf = headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(csrf.encode(), self.policy.csrf_value.encode()):
                await refuse(
                    403,
                    "missing or wrong CSRF header",
                    f"send the page's CSRF value in {CSRF_HEADER}, or the token in Authorization: Bearer",
                )
                return

        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            await refuse(413, "request body too large", f"send at most {self.max_body_bytes} bytes")
            return
        if method not in SAFE_METHODS:
            body = bytearray()
            more = True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                more = bool(message.get("more_body"))
                if len(body) > self.max_body_bytes:
                    await refuse(413, "request body too large", f"send at most {self.max_body_bytes} bytes")
                    return
            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": bytes(body), "more_body": False}
                return await receive()

            receive = replay

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *security]
            await send(message)

        await self.app(scope, receive, send_with_headers)


_REFUSAL_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>medigan-iso explore: {status}</title></head>
<body><h1>{status}: {message}</h1><p>{remedy}.</p></body></html>
"""
