"""``medigan-iso explore``: serve the local web explorer (extra ``medigan-iso[explore]``)."""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "explore",
        help="browse the catalogue, model cards and live samples in a local web app",
        description=(
            "Serve a local web app: the catalogue as a searchable table, a page per model with its card, "
            "a live sample grid, latent sliders and a zip download, and side-by-side comparisons. It "
            "listens on 127.0.0.1 and needs the token in the printed URL (or $MEDIGAN_ISO_EXPLORE_TOKEN). "
            "Needs `pip install 'medigan-iso[explore]'`."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    parser.add_argument("--no-browser", action="store_true", help="do not open a web browser")
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a --host that other machines can reach (anyone with the token can run models here)",
    )
    parser.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests whose Host header is NAME (a proxy's or tunnel's name; repeatable)",
    )
    parser.add_argument(
        "--max-warm",
        type=int,
        default=4,
        metavar="N",
        help="keep at most N model runners warm; the least recently used idle one is stopped (default 4)",
    )
    parser.add_argument(
        "--no-build",
        action="store_true",
        help="show an error instead of building a model's env when it does not exist yet",
    )
    parser.add_argument(
        "--sandbox",
        choices=("off", "auto", "require"),
        default=None,
        help="confine the models (default: $MEDIGAN_ISO_SANDBOX, else auto; see `medigan-iso doctor`)",
    )
    parser.add_argument(
        "--strict", action="store_true", help="strict supply chain: pinned package_sha256, wheels-only envs"
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        import jinja2  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        print(
            f"medigan-iso explore: error: {exc.name} is not installed\n"
            "  -> pip install 'medigan-iso[explore]'",
            file=sys.stderr,
        )
        return 1
    from medigan_iso.explore import AccessPolicy, Explorer, bind, create_app, run
    from medigan_iso.explore.security import is_loopback
    from medigan_iso.explore.server import redirect_file
    from medigan_iso.generation import Session

    sock = bind(args.host, args.port, allow_remote=args.allow_remote)
    opener: Path | None = None
    try:
        port = sock.getsockname()[1]
        policy = AccessPolicy.create(host=args.host, port=port, extra_hosts=args.allow_host)
        if not is_loopback(args.host):
            print(
                f"medigan-iso explore: WARNING: serving on {args.host}, reachable from other machines: "
                "anyone with the token can run models on this one, and traffic is not encrypted",
                file=sys.stderr,
            )
        with Session(
            install_dependencies=not args.no_build, sandbox=args.sandbox, strict=args.strict
        ) as session:
            session.catalogue  # noqa: B018 - load (and validate) the catalogue before saying we serve
            app = create_app(Explorer(session, max_warm_runners=args.max_warm), policy=policy)
            url = policy.url("/")
            print(f"medigan-iso explore: serving {len(session.catalogue)} models at {url}", flush=True)
            print("medigan-iso explore: press Ctrl-C to stop", flush=True)
            if not args.no_browser:
                import webbrowser

                opener = redirect_file(url)
                threading.Timer(0.5, webbrowser.open, args=(opener.as_uri(),)).start()
            run(app, sock)
    finally:
        sock.close()
        if opener is not None:
            opener.unlink(missing_ok=True)
    return 0
