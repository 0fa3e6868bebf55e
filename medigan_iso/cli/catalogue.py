"""``medigan-iso list | search | info | validate``: the catalogue commands, as tables or ``--json``.

Every command reads the catalogue sources like ``load_catalogue`` (``--config`` repeats and replaces
``$MEDIGAN_ISO_CONFIG``; ``--offline`` is ``MEDIGAN_ISO_OFFLINE=1``). Tables go to stdout, errors to
stderr through ``medigan_iso.cli.main``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from medigan_iso.api import ModelInfo, SearchResult, search
from medigan_iso.catalogue import Catalogue, load_catalogue, read_catalogue_source, validate_catalogue
from medigan_iso.errors import CatalogueValidationError
from medigan_iso.search import OPERATORS, ORDERS
from medigan_iso.untrusted import neutralise

__all__ = ["register"]

TITLE_WIDTH = 60
CELL_MAX_CHARS = 300
EXIT_OK = 0
EXIT_INVALID = 1


def register(subparsers: Any) -> None:
    """Add ``list``, ``search``, ``info`` and ``validate`` to the ``medigan-iso`` parser."""
    sources = argparse.ArgumentParser(add_help=False)
    sources.add_argument(
        "--config",
        action="append",
        metavar="PATH|URL",
        help="catalogue file, directory or URL (repeatable; replaces $MEDIGAN_ISO_CONFIG)",
    )
    sources.add_argument("--offline", action="store_true", default=None, help="never touch the network")
    sources.add_argument("--json", action="store_true", help="print JSON instead of a table")

    listing = subparsers.add_parser("list", parents=[sources], help="list every model in the catalogue")
    listing.set_defaults(handler=_list)

    finder = subparsers.add_parser(
        "search",
        parents=[sources],
        help="find models by metadata values (medigan's search)",
        description="Whole-value search over each model's selection metadata, "
        "e.g. `search mammography dcgan`.",
    )
    finder.add_argument("terms", nargs="+", metavar="TERM")
    finder.add_argument("--operator", type=str.upper, choices=OPERATORS, default="AND")
    finder.add_argument("--keys", action="store_true", help="match metadata keys too")
    finder.add_argument("--case-sensitive", action="store_true")
    finder.add_argument("--rank", metavar="METRIC", help="rank by selection.performance.METRIC (dotted)")
    finder.add_argument("--order", type=str.lower, choices=ORDERS, default="asc")
    finder.set_defaults(handler=_search)

    about = subparsers.add_parser("info", parents=[sources], help="describe one model")
    about.add_argument("model", metavar="MODEL", help="model id, full or abbreviated (00001, 1)")
    about.set_defaults(handler=_info)

    checker = subparsers.add_parser("validate", help="check a catalogue file against the JSON Schema")
    checker.add_argument("path", metavar="PATH", help="catalogue file, directory or URL")
    checker.add_argument("--strict", action="store_true", help="the rules for new contributions")
    checker.add_argument("--offline", action="store_true", default=None)
    checker.add_argument("--json", action="store_true")
    checker.set_defaults(handler=_validate)


def _catalogue(args: argparse.Namespace) -> Catalogue:
    return load_catalogue(args.config, offline=args.offline)


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    # every cell comes from a catalogue: escape what could drive the terminal (issue 16, finding 5)
    rows = [[neutralise(cell, max_chars=CELL_MAX_CHARS) for cell in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)
    return "\n".join(lines)


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _list(args: argparse.Namespace) -> int:
    catalogue = _catalogue(args)
    models = [ModelInfo.from_entry(entry) for entry in catalogue]
    if args.json:
        _print_json(
            [{"model_id": m.model_id, "type": m.type, "title": m.title, "demo": m.is_bundled} for m in models]
        )
        return EXIT_OK
    if not models:
        print("no models in the catalogue (sources: " + (", ".join(catalogue.sources) or "none") + ")")
        return EXIT_OK
    # Bundled models are the demos that ship with medigan_iso (they run offline); say so in the title.
    rows = [
        (m.model_id, m.type or "", _shorten(("[demo] " if m.is_bundled else "") + m.title, TITLE_WIDTH))
        for m in models
    ]
    print(_table(("MODEL", "TYPE", "TITLE"), rows))
    return EXIT_OK


def _search(args: argparse.Namespace) -> int:
    results = search(
        args.terms,
        operator=args.operator,
        match_keys=args.keys,
        case_sensitive=args.case_sensitive,
        rank_by=args.rank,
        order=args.order,
        catalogue=_catalogue(args),
    )
    if args.json:
        _print_json([r.to_dict() for r in results])
        return EXIT_OK
    if not results:
        print(f"no model matches {' '.join(args.terms)!r} (operator {args.operator})")
        return EXIT_OK
    print(_table(*_search_rows(results, args.rank)))
    return EXIT_OK


def _search_rows(results: Sequence[SearchResult], metric: str | None) -> tuple[list[str], list[list[str]]]:
    headers = ["MODEL", "TITLE"]
    if metric:
        headers.insert(1, metric)
    rows = []
    for r in results:
        row = [r.model_id, _shorten(r.title, TITLE_WIDTH)]
        if metric:
            row.insert(1, f"{r.metric_value:g}" if r.metric_value is not None else "")
        rows.append(row)
    return headers, rows


def _info(args: argparse.Namespace) -> int:
    from medigan_iso.envs.asof import planned_as_of  # the envs package imports numpy: only `info` needs it

    entry = _catalogue(args).resolve(args.model)
    model = ModelInfo.from_entry(entry)
    try:
        as_of = planned_as_of(entry).describe()  # what generate / env build will use
    except ValueError as exc:
        as_of = f"invalid: {exc}"
    if args.json:
        _print_json({**model.to_dict(), "dependencies_as_of": as_of})
        return EXIT_OK
    size = "x".join(str(s) for s in model.image_size)
    fields = [
        ("model", model.model_id),
        ("title", model.title),
        ("type", model.type or ""),
        ("modality", ", ".join(model.modality)),
        ("organ", ", ".join(model.organ)),
        ("generates", ", ".join(model.generates)),
        ("dataset", ", ".join(model.dataset)),
        ("image size", size),
        (
            "latent size",
            "" if model.input_latent_vector_size is None else str(model.input_latent_vector_size),
        ),
        ("license", model.license or ""),
        ("year", model.year or ""),
        ("package", model.package_link),
        ("sha256", model.package_sha256 or "(not pinned)"),
        ("dependencies", ", ".join(model.dependencies)),
        ("as of", as_of),
        ("publication", model.publication or ""),
        ("doi", ", ".join(model.doi)),
        ("source", model.source),
    ]
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        if value:
            print(f"{name.ljust(width)}  {neutralise(value, max_chars=CELL_MAX_CHARS)}")
    return EXIT_OK


def _validate(args: argparse.Namespace) -> int:
    mode = "strict" if args.strict else "lenient"
    reports: list[dict[str, Any]] = []
    for name, data, _ in read_catalogue_source(args.path, offline=args.offline):
        try:
            validate_catalogue(data, source=name, strict=args.strict)
        except CatalogueValidationError as exc:
            violations = [{"model_id": m, "path": p, "message": msg} for m, p, msg in exc.violations]
        else:
            violations = []
        reports.append({"source": name, "mode": mode, "models": len(data), "violations": violations})
    if args.json:
        _print_json(reports)
    else:
        for report in reports:
            problems = report["violations"]
            if not problems:
                print(f"{report['source']}: OK, {report['models']} model(s) valid ({mode})")
                continue
            print(f"{report['source']}: {len(problems)} violation(s) ({mode}):")
            for v in problems:
                print("  " + neutralise(f"{v['model_id']}: {v['path']}: {v['message']}"))
    return EXIT_INVALID if any(r["violations"] for r in reports) else EXIT_OK
