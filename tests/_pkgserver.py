"""A real HTTP server on 127.0.0.1 serving model packages, with knobs for the failures downloads must survive.

``serve()`` runs a stdlib ``ThreadingHTTPServer`` in a daemon thread. Tests put bytes in ``state.files``
and may ask it to: drop the connection after N bytes on the next GET of a path (``drop_after``), ignore
``Range`` (``honour_range = False``), go silent mid-body (``stall_after``), redirect (``redirect``),
answer with a status or an HTML page (``status``, ``html``), or serve slowly (``chunk_delay_s``). It
records every request's path and headers in ``requests``. ``serve_simple_index`` makes it a package
index (PEP 503 pages under ``/simple/``) for pip and uv.
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit


@dataclass
class Request:
    path: str
    headers: dict[str, str]


@dataclass
class ServerState:
    files: dict[str, bytes] = field(default_factory=dict)
    drop_after: dict[str, int] = field(default_factory=dict)
    status: dict[str, int] = field(default_factory=dict)
    html: dict[str, str] = field(default_factory=dict)  # path -> Content-Type of an HTML body
    stall_after: dict[str, int] = field(default_factory=dict)  # next GET: send N bytes, then go silent
    redirect: dict[str, str] = field(default_factory=dict)  # path -> Location
    content_types: dict[str, str] = field(default_factory=dict)  # path -> Content-Type of a file
    stall_s: float = 3.0
    honour_range: bool = True
    honour_if_range: bool = True
    chunk_bytes: int = 64 << 10
    chunk_delay_s: float = 0.0
    requests: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def gets(self, path: str) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.path == path]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _body(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        state = self.server.state
        path = urlsplit(self.path).path
        with state.lock:
            state.requests.append(Request(path, {k: v for k, v in self.headers.items()}))
            drop = state.drop_after.pop(path, None)
            stall = state.stall_after.pop(path, None)
        if path in state.redirect:
            self.send_response(302)
            self.send_header("Location", state.redirect[path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path in state.status:
            code = state.status[path]
            self._body(code, f"<html><body>error {code}</body></html>".encode(), "text/html")
            return
        if path in state.html:
            page = b"<!DOCTYPE html><html><body>Record not found. Please log in.</body></html>"
            self._body(200, page, state.html[path])
            return
        data = state.files.get(path)
        if data is None:
            self._body(404, b"<html><body>404 Not Found</body></html>", "text/html")
            return
        start = 0
        rng = self.headers.get("Range")
        match = re.fullmatch(r"bytes=(\d+)-", rng or "")
        etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
        if_range = self.headers.get("If-Range")
        if (
            match
            and state.honour_range
            and (if_range is None or if_range == etag or not state.honour_if_range)
        ):
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", state.content_types.get(path, "application/octet-stream"))
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("ETag", etag)
        if state.honour_range:
            self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        body = data[start:]
        if drop is not None:
            self.wfile.write(body[:drop])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if stall is not None:
            self.wfile.write(body[:stall])
            self.wfile.flush()
            time.sleep(state.stall_s)
            self.close_connection = True
            return
        for offset in range(0, len(body), state.chunk_bytes):
            self.wfile.write(body[offset : offset + state.chunk_bytes])
            if state.chunk_delay_s:
                self.wfile.flush()
                time.sleep(state.chunk_delay_s)

    def do_HEAD(self) -> None:
        # uv asks before it reads a wheel's metadata by ranges; no Accept-Ranges here, so it downloads the
        # wheel whole (HEADs are not recorded: ``requests`` counts what clients fetched)
        data = self.server.state.files.get(urlsplit(self.path).path)
        self.send_response(200 if data is not None else 404)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data) if data is not None else 0))
        self.end_headers()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: ServerState


@dataclass
class PackageServer:
    state: ServerState
    base_url: str

    def url(self, path: str) -> str:
        return self.base_url + path


@contextmanager
def serve() -> Iterator[PackageServer]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.state = ServerState()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        host, port = httpd.server_address[:2]
        yield PackageServer(httpd.state, f"http://{host!s}:{port}")
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def serve_simple_index(server: PackageServer, wheels: list[Path]) -> str:
    """Serve ``wheels`` as a PEP 503 simple index on ``server``; return the index URL (``.../simple``).

    Each project page links its files as ``/files/NAME#sha256=...``, as PyPI does, so pip's report and
    uv's lock both get the hash from the index.
    """
    state = server.state
    projects: dict[str, list[Path]] = {}
    for wheel in wheels:
        projects.setdefault(re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower(), []).append(wheel)
    root = "".join(f'<a href="/simple/{name}/">{name}</a>\n' for name in sorted(projects))
    pages = {"/simple/": root}
    for name, files in projects.items():
        links = ""
        for wheel in files:
            data = wheel.read_bytes()
            state.files[f"/files/{wheel.name}"] = data
            links += (
                f'<a href="/files/{wheel.name}#sha256={hashlib.sha256(data).hexdigest()}">{wheel.name}</a>\n'
            )
        pages[f"/simple/{name}/"] = links
    for path, body in pages.items():
        state.files[path] = f"<!DOCTYPE html><html><body>\n{body}</body></html>\n".encode()
        state.content_types[path] = "text/html"
    return server.url("/simple")
