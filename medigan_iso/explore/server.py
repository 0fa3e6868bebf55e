"""Binding the explorer's socket and running uvicorn on it.

This module owns the listening socket (bound here first, so the real port is known before the access
policy, whose Host check needs it, is made) and the uvicorn settings. It refuses a non-loopback address
unless the caller allows it explicitly; it never prints (the CLI says what happened).
"""

from __future__ import annotations

import html
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

from medigan_iso.errors import ExploreError
from medigan_iso.explore.security import is_loopback

__all__ = ["bind", "redirect_file", "run"]

MAX_HEADER_BYTES = 64 * 1024  # h11's cap on a request's header block
MAX_CONNECTIONS = 64  # uvicorn answers 503 beyond this many concurrent connections
KEEP_ALIVE_S = 5
GRACEFUL_SHUTDOWN_S = 5  # then open requests (a model stuck in generate) are cut and the Session closes


def bind(host: str, port: int, *, allow_remote: bool = False) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one). Non-loopback needs ``allow_remote``."""
    if not is_loopback(host) and not allow_remote:
        raise ExploreError(
            f"refusing to serve on {host}: anyone who can reach it could use the models on this machine",
            remedy="keep the default 127.0.0.1 (use an SSH tunnel), or pass --allow-remote if you mean it",
        )
    if not 0 <= port <= 65535:
        raise ExploreError(f"port {port} is out of range", remedy="pass --port 0..65535 (0 picks a free one)")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ExploreError(f"cannot resolve {host}: {exc}", remedy="pass an IP address to --host") from exc
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted sockets inherit it: without it, a keep-alive client waits for a delayed ACK (about
        # 40 ms) whenever a response leaves in two writes (measured: benchmarks/bench_explore.py).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ExploreError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            remedy="pick another --port (0 picks a free one)",
        ) from exc
    sock.set_inheritable(True)
    return sock


def redirect_file(url: str) -> Path:
    """A private (0600) HTML file that sends a browser to ``url``: what to open instead of the URL itself.

    A browser started with the token URL in its argv shows the token to every user of the machine in
    ``ps``; a file only its owner can read does not (Jupyter opens such a file for the same reason).
    The caller deletes it when the server stops.
    """
    fd, name = tempfile.mkstemp(prefix="medigan-iso-explore-", suffix=".html")
    target = html.escape(url, quote=True)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(
            f'<!doctype html><meta charset="utf-8"><meta http-equiv="refresh" content="0;url={target}">'
            f'<title>medigan-iso explore</title><p><a href="{target}">open medigan-iso explore</a></p>\n'
        )
    return Path(name)


def run(app: Any, sock: socket.socket) -> None:
    """Serve ``app`` on ``sock`` until interrupted (SIGINT/SIGTERM stop uvicorn gracefully)."""
    import uvicorn

    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,  # request lines would carry ?token= on the first visit
        server_header=False,
        date_header=False,
        proxy_headers=False,  # no X-Forwarded-For trust: nothing sits in front of a local explorer
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        limit_concurrency=MAX_CONNECTIONS,
        timeout_keep_alive=KEEP_ALIVE_S,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        ws="none",
        lifespan="off",
    )
    uvicorn.Server(config).run(sockets=[sock])
