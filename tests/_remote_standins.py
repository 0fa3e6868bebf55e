"""Stand-ins for Zenodo's deposit REST API and GitHub's issues API, served for real on 127.0.0.1.

They follow the public documentation (developers.zenodo.org "Deposit", "Quickstart - Upload";
docs.github.com "Create an issue"), not our client:

Zenodo (``ZenodoStandIn``), token as ``Authorization: Bearer`` or ``?access_token=``; 401 otherwise:
- ``POST /api/deposit/depositions`` -> 201, a draft with ``links.bucket``/``publish``/``html``;
- ``PUT /api/files/<bucket>/<name>`` -> 201 ``{"key", "size", "checksum": "md5:..."}``; 403 once published
  (the bucket is locked);
- ``PUT /api/deposit/depositions/<id>`` -> 200; 400 ``{"status", "message", "errors": [{"field",
  "message"}]}`` for an invalid upload_type, missing title/creators/description; 403 once published;
- ``POST .../actions/publish`` -> 202 (``submitted``, ``doi``, ``links.record_html``); 400 with field
  errors when metadata or files are missing; 403 when already published;
- ``DELETE /api/deposit/depositions/<id>`` -> 204 for drafts, 403 for published depositions;
- ``GET /records/<id>/files/<name>?download=1`` -> the file, public, for published records only.
Knobs: ``upload_failures`` (the next N bucket PUTs read half the body, answer 500 and close),
``echo_token`` (401 bodies quote the presented token, as a careless server might).

Zenodo also answers ``GET /api/deposit/depositions`` (200, a list) for a token check.

GitHub: ``GET /repos/<owner>/<repo>`` -> 200 ``{"full_name", "has_issues"}``;
``POST /repos/<owner>/<repo>/issues`` -> 201 ``{"number", "html_url", ...}``; 401 "Bad credentials";
404 for other repositories; 422 "Validation Failed" without a title.

``serve_https`` wraps a server in TLS with a throwaway self-signed certificate for 127.0.0.1 (made with
the openssl command line), so published links are https like Zenodo's.
"""

from __future__ import annotations

import hashlib
import json
import re
import ssl
import subprocess
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

UPLOAD_TYPES = {
    "publication",
    "poster",
    "presentation",
    "dataset",
    "image",
    "video",
    "software",
    "lesson",
    "physicalobject",
    "other",
}


@dataclass
class Seen:
    method: str
    path: str  # with the query string
    authorization: str | None


@dataclass
class Deposition:
    id: int
    bucket: str
    metadata: dict[str, Any] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    submitted: bool = False


@dataclass
class ZenodoState:
    token: str
    base: str = ""  # set when serving
    depositions: dict[int, Deposition] = field(default_factory=dict)
    deleted: list[int] = field(default_factory=list)
    upload_failures: int = 0
    echo_token: bool = False
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    next_id: int = 1000

    def published(self) -> list[Deposition]:
        return [d for d in self.depositions.values() if d.submitted]


@dataclass
class GitHubState:
    token: str
    repo: str = "RichardObi/medigan"
    html_base: str = "https://github.invalid"
    has_issues: bool = True
    issues: list[dict[str, Any]] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Base(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, code: int, payload: Any = None, *, content_type: str = "application/json") -> None:
        body = (
            b""
            if payload is None
            else payload
            if isinstance(payload, bytes)
            else json.dumps(payload).encode()
        )
        self.send_response(code)
        if payload is not None:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _json(self) -> Any:
        try:
            return json.loads(self._body() or b"null")
        except ValueError:
            return None

    def _presented_token(self) -> str | None:
        auth = self.headers.get("Authorization") or ""
        if auth.startswith("Bearer "):
            return auth[len("Bearer ") :]
        query = parse_qs(urlsplit(self.path).query)
        return query.get("access_token", [None])[0]


class _ZenodoHandler(_Base):
    server: _ZenodoServer

    def _state(self) -> ZenodoState:
        return self.server.state

    def _record(self) -> None:
        with self._state().lock:
            self._state().seen.append(Seen(self.command, self.path, self.headers.get("Authorization")))

    def _authorised(self) -> bool:
        presented = self._presented_token()
        if presented == self._state().token:
            return True
        message = "The server could not verify that you are authorized to access the URL requested."
        if self._state().echo_token and presented:
            message += f" Token {presented} is not valid."
        self._body()
        self._send(401, {"message": message, "status": 401})
        return False

    def _deposition_json(self, dep: Deposition) -> dict[str, Any]:
        base = self._state().base
        api = f"{base}/api/deposit/depositions/{dep.id}"
        links = {
            "self": api,
            "html": f"{base}/deposit/{dep.id}",
            "bucket": f"{base}/api/files/{dep.bucket}",
            "publish": f"{api}/actions/publish",
            "discard": f"{api}/actions/discard",
            "files": f"{api}/files",
        }
        if dep.submitted:
            links["record_html"] = f"{base}/records/{dep.id}"
            links["doi"] = f"https://doi.org/10.5072/zenodo.{dep.id}"
        return {
            "id": dep.id,
            "record_id": dep.id,
            "state": "done" if dep.submitted else "unsubmitted",
            "submitted": dep.submitted,
            "doi": f"10.5072/zenodo.{dep.id}" if dep.submitted else "",
            "metadata": dep.metadata,
            "files": [
                {"filename": name, "filesize": len(data), "checksum": hashlib.md5(data).hexdigest()}
                for name, data in dep.files.items()
            ],
            "links": links,
        }

    def _find(self, dep_id: str) -> Deposition | None:
        dep = self._state().depositions.get(int(dep_id))
        if dep is None:
            self._send(404, {"message": "PID does not exist.", "status": 404})
        return dep

    def do_GET(self) -> None:
        self._record()
        path = urlsplit(self.path).path
        public = re.fullmatch(r"/records/(\d+)/files/([^/]+)", path)
        if public:
            dep = self._state().depositions.get(int(public.group(1)))
            name = unquote(public.group(2))
            if dep is None or not dep.submitted or name not in dep.files:
                self._send(404, {"message": "not found", "status": 404})
                return
            self._send(200, dep.files[name], content_type="application/octet-stream")
            return
        if not self._authorised():
            return
        if path == "/api/deposit/depositions":
            self._send(200, [self._deposition_json(d) for d in self._state().depositions.values()][:1])
            return
        match = re.fullmatch(r"/api/deposit/depositions/(\d+)", path)
        if match:
            dep = self._find(match.group(1))
            if dep is not None:
                self._send(200, self._deposition_json(dep))
            return
        self._send(404, {"message": "not found", "status": 404})

    def do_POST(self) -> None:
        self._record()
        if not self._authorised():
            return
        path = urlsplit(self.path).path
        state = self._state()
        if path == "/api/deposit/depositions":
            if self._json() is None or "json" not in (self.headers.get("Content-Type") or ""):
                self._send(415, {"message": "Unsupported media type", "status": 415})
                return
            with state.lock:
                state.next_id += 1
                dep = Deposition(id=state.next_id, bucket=str(uuid.uuid4()))
                state.depositions[dep.id] = dep
            self._send(201, self._deposition_json(dep))
            return
        match = re.fullmatch(r"/api/deposit/depositions/(\d+)/actions/publish", path)
        if match:
            self._body()
            dep = self._find(match.group(1))
            if dep is None:
                return
            if dep.submitted:
                self._send(403, {"message": "The deposition is already published.", "status": 403})
                return
            errors = _metadata_errors(dep.metadata)
            if not dep.files:
                errors.append({"field": "files", "message": "Minimum one file must be provided."})
            if errors:
                self._send(400, {"status": 400, "message": "Validation error.", "errors": errors})
                return
            dep.submitted = True
            self._send(202, self._deposition_json(dep))
            return
        self._send(404, {"message": "not found", "status": 404})

    def do_PUT(self) -> None:
        self._record()
        if not self._authorised():
            return
        path = urlsplit(self.path).path
        state = self._state()
        bucket = re.fullmatch(r"/api/files/([0-9a-f-]+)/([^/]+)", path)
        if bucket:
            dep = next((d for d in state.depositions.values() if d.bucket == bucket.group(1)), None)
            if dep is None:
                self._body()
                self._send(404, {"message": "Bucket does not exist.", "status": 404})
                return
            length = int(self.headers.get("Content-Length") or 0)
            with state.lock:
                fail = state.upload_failures > 0
                if fail:
                    state.upload_failures -= 1
            if fail:
                self.rfile.read(length // 2)  # a server dying mid-upload: half read, 500, connection closed
                self.close_connection = True
                self._send(500, {"message": "Internal server error", "status": 500})
                return
            data = self.rfile.read(length)
            if dep.submitted:
                self._send(403, {"message": "Bucket is locked for modifications.", "status": 403})
                return
            name = unquote(bucket.group(2))
            dep.files[name] = data
            self._send(
                201,
                {"key": name, "size": len(data), "checksum": f"md5:{hashlib.md5(data).hexdigest()}"},
            )
            return
        match = re.fullmatch(r"/api/deposit/depositions/(\d+)", path)
        if match:
            payload = self._json()
            dep = self._find(match.group(1))
            if dep is None:
                return
            if dep.submitted:
                self._send(403, {"message": "A published deposition cannot be edited.", "status": 403})
                return
            metadata = payload.get("metadata") if isinstance(payload, dict) else None
            if not isinstance(metadata, dict):
                self._send(
                    400,
                    {
                        "status": 400,
                        "message": "Validation error.",
                        "errors": [{"field": "metadata", "message": "Missing data for required field."}],
                    },
                )
                return
            errors = [
                e
                for e in _metadata_errors(metadata)
                if e["field"] == "metadata.upload_type" and "upload_type" in metadata
            ]
            if errors:
                self._send(400, {"status": 400, "message": "Validation error.", "errors": errors})
                return
            dep.metadata = metadata
            self._send(200, self._deposition_json(dep))
            return
        self._body()
        self._send(404, {"message": "not found", "status": 404})

    def do_DELETE(self) -> None:
        self._record()
        if not self._authorised():
            return
        match = re.fullmatch(r"/api/deposit/depositions/(\d+)", urlsplit(self.path).path)
        if not match:
            self._send(404, {"message": "not found", "status": 404})
            return
        dep = self._find(match.group(1))
        if dep is None:
            return
        if dep.submitted:
            self._send(403, {"message": "A published deposition cannot be deleted.", "status": 403})
            return
        with self._state().lock:
            del self._state().depositions[dep.id]
            self._state().deleted.append(dep.id)
        self._send(204)


def _metadata_errors(metadata: dict[str, Any]) -> list[dict[str, str]]:
    errors = []
    if metadata.get("upload_type") not in UPLOAD_TYPES:
        errors.append({"field": "metadata.upload_type", "message": "Invalid upload type."})
    if not isinstance(metadata.get("title"), str) or not metadata.get("title"):
        errors.append({"field": "metadata.title", "message": "Missing data for required field."})
    if not isinstance(metadata.get("description"), str) or not metadata.get("description"):
        errors.append({"field": "metadata.description", "message": "Missing data for required field."})
    creators = metadata.get("creators")
    if (
        not isinstance(creators, list)
        or not creators
        or not all(isinstance(c, dict) and c.get("name") for c in creators)
    ):
        errors.append({"field": "metadata.creators", "message": "Missing data for required field."})
    return errors


class _GitHubHandler(_Base):
    server: _GitHubServer

    def do_GET(self) -> None:
        state = self.server.state
        with state.lock:
            state.seen.append(Seen(self.command, self.path, self.headers.get("Authorization")))
        if self._presented_token() != state.token:
            self._send(
                401, {"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"}
            )
            return
        match = re.fullmatch(r"/repos/([^/]+/[^/]+)", urlsplit(self.path).path)
        if not match or match.group(1) != state.repo:
            self._send(404, {"message": "Not Found", "documentation_url": "https://docs.github.com/rest"})
            return
        self._send(200, {"full_name": state.repo, "private": False, "has_issues": state.has_issues})

    def do_POST(self) -> None:
        state = self.server.state
        with state.lock:
            state.seen.append(Seen(self.command, self.path, self.headers.get("Authorization")))
        payload = self._json()
        if self._presented_token() != state.token:
            self._send(
                401, {"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"}
            )
            return
        match = re.fullmatch(r"/repos/([^/]+/[^/]+)/issues", urlsplit(self.path).path)
        if not match or match.group(1) != state.repo:
            self._send(404, {"message": "Not Found", "documentation_url": "https://docs.github.com/rest"})
            return
        if not isinstance(payload, dict) or not payload.get("title"):
            self._send(
                422,
                {
                    "message": "Validation Failed",
                    "errors": [{"resource": "Issue", "code": "missing_field", "field": "title"}],
                },
            )
            return
        with state.lock:
            number = len(state.issues) + 1
            issue = {
                "id": 5000 + number,
                "number": number,
                "title": payload["title"],
                "body": payload.get("body"),
                "state": "open",
                "url": f"/repos/{state.repo}/issues/{number}",
                "html_url": f"{state.html_base}/{state.repo}/issues/{number}",
            }
            state.issues.append(issue)
        self._send(201, issue)


class _ZenodoServer(ThreadingHTTPServer):
    daemon_threads = True
    state: ZenodoState


class _GitHubServer(ThreadingHTTPServer):
    daemon_threads = True
    state: GitHubState


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate (and key) for 127.0.0.1, made with openssl."""
    cert, key = directory / "standin-cert.pem", directory / "standin-key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@contextmanager
def _running(server: ThreadingHTTPServer) -> Iterator[None]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextmanager
def serve_zenodo(state: ZenodoState, *, tls: tuple[Path, Path] | None = None) -> Iterator[ZenodoState]:
    server = _ZenodoServer(("127.0.0.1", 0), _ZenodoHandler)
    server.state = state
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(tls[0]), str(tls[1]))
        server.socket = context.wrap_socket(server.socket, server_side=True)
    scheme = "https" if tls is not None else "http"
    state.base = f"{scheme}://127.0.0.1:{server.server_address[1]}"
    with _running(server):
        yield state


@contextmanager
def serve_github(state: GitHubState) -> Iterator[tuple[GitHubState, str]]:
    server = _GitHubServer(("127.0.0.1", 0), _GitHubHandler)
    server.state = state
    with _running(server):
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
