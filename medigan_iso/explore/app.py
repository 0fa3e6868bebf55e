"""The explorer's web layer: Starlette routes, Jinja2 pages and the JSON API they use.

This module owns URLs, status codes and rendering. The work is done by
:class:`~medigan_iso.explore.service.Explorer`, the access rules are enforced by
:class:`~medigan_iso.explore.security.AccessMiddleware`. Generation runs in
Starlette's worker threads (``run_in_threadpool``), so the event loop keeps serving other pages while a
model works. Templates autoescape everything; the texts handed to them are neutralised already.

Routes::

    GET  /                                   index: the catalogue as a searchable, filterable table
    GET  /models/{model_id}                  a model's card, live grid, sliders and conditions
    GET  /compare?ids=a,b[,c,d]              grids of 2-4 models side by side
    GET  /api/models?q=TERMS&operator=AND    search (medigan's semantics) -> JSON rows;
                      &rank_by=FID&order=asc  ranked by a metric (medigan's ranking)
    GET  /api/models/{model_id}              entry and this session's status of the model -> JSON
    GET  /api/models/{model_id}/grid.png     ?n=&seed=&edits=&conditions= -> PNG contact sheet
    POST /api/models/{model_id}/sample       JSON {seed, n, latent_edits, latent, conditions} -> PNG
    GET  /api/models/{model_id}/samples.zip  same parameters as grid.png -> zip with manifest.jsonl
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from medigan_iso.errors import (
    ExploreRequestError,
    MediganIsoError,
    ModelBusyError,
    UnknownModelError,
)
from medigan_iso.explore.security import CSRF_HEADER, AccessMiddleware, AccessPolicy
from medigan_iso.explore.service import (
    DEFAULT_GRID_SAMPLES,
    MAX_GRID_SAMPLES,
    SLIDER_COUNT,
    Explorer,
    text,
)
from medigan_iso.untrusted import get_logger

__all__ = ["create_app"]

logger = get_logger(__name__)

MAX_COMPARE = 4
MAX_ERROR_LINES = 60


def _package_dir(name: str) -> Path:
    return Path(str(resources.files("medigan_iso.explore") / name))


def error_text(exc: BaseException) -> str:
    """An exception's message, neutralised line by line (a runner's stderr tail keeps its lines)."""
    lines = str(exc).splitlines() or [type(exc).__name__]
    kept = [text(line, max_chars=500) for line in lines[:MAX_ERROR_LINES]]
    if len(lines) > MAX_ERROR_LINES:
        kept.append(f"…[+{len(lines) - MAX_ERROR_LINES} lines]")
    return "\n".join(kept)


def _status_of(exc: BaseException) -> int:
    if isinstance(exc, UnknownModelError):
        return 404
    if isinstance(exc, ExploreRequestError):
        return 400
    if isinstance(exc, ModelBusyError):
        return 429
    return 502  # the model, its env or its runner failed: the server itself is fine


def create_app(explorer: Explorer, *, policy: AccessPolicy) -> AccessMiddleware:
    """The explorer as an ASGI app: Starlette routes wrapped in the access checks of ``policy``."""
    templates = Environment(
        loader=FileSystemLoader(str(_package_dir("templates"))),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )

    def page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        html = templates.get_template(name).render(
            csrf=policy.csrf_value,
            csrf_header=CSRF_HEADER,
            max_samples=MAX_GRID_SAMPLES,
            default_samples=DEFAULT_GRID_SAMPLES,
            **context,
        )
        return HTMLResponse(html, status_code=status_code)

    def failure(request: Request, exc: BaseException) -> Response:
        status = _status_of(exc)
        if not isinstance(exc, (ExploreRequestError, ModelBusyError, UnknownModelError)):
            logger.warning("request %s failed: %s", request.url.path, error_text(exc))
        body: dict[str, Any] = {"error": error_text(exc), "type": type(exc).__name__, "status": status}
        if isinstance(exc, MediganIsoError) and exc.remedy:
            body["remedy"] = text(exc.remedy)
        if isinstance(exc, UnknownModelError):
            body["close_matches"] = [text(m, max_chars=200) for m in exc.close_matches]
        if request.url.path.startswith("/api/"):
            return JSONResponse(body, status_code=status)
        return page(request, "error.html", status_code=status, error=body)

    def search_rows(request: Request) -> list[dict[str, Any]]:
        params = request.query_params
        return explorer.rows(
            params.get("q", ""),
            operator=params.get("operator", "AND"),
            rank_by=params.get("rank_by", ""),
            order=params.get("order", "asc"),
        )

    async def index(request: Request) -> Response:
        query = request.query_params.get("q", "")
        operator = request.query_params.get("operator", "AND")
        rows = await run_in_threadpool(search_rows, request)
        facets = {
            "modality": sorted({m for row in rows for m in row["modality"]}),
            "organ": sorted({o for row in rows for o in row["organ"]}),
            "type": sorted({row["type"] for row in rows if row["type"]}),
        }
        return page(
            request,
            "index.html",
            rows=rows,
            query=query,
            operator=operator,
            facets=facets,
            metrics=explorer.metric_names(),
            rank_by=request.query_params.get("rank_by", ""),
            order=request.query_params.get("order", "asc"),
        )

    async def model_page(request: Request) -> Response:
        card = await run_in_threadpool(explorer.card, request.path_params["model_id"])
        sliders = min(card["latent_size"] or 0, SLIDER_COUNT)
        return page(request, "model.html", card=card, sliders=sliders)

    async def compare(request: Request) -> Response:
        raw = ",".join(request.query_params.getlist("ids"))
        ids = [part.strip() for part in raw.split(",") if part.strip()]
        if not 2 <= len(ids) <= MAX_COMPARE:
            raise ExploreRequestError(
                "ids", f"{len(ids)} models given", remedy=f"pick 2 to {MAX_COMPARE} models on the index page"
            )
        cards = [await run_in_threadpool(explorer.card, model_id) for model_id in ids]
        return page(request, "compare.html", cards=cards)

    async def api_models(request: Request) -> Response:
        params = request.query_params
        rows = await run_in_threadpool(search_rows, request)
        return JSONResponse(
            {
                "query": text(params.get("q", ""), max_chars=500),
                "operator": params.get("operator", "AND").upper(),
                "rank_by": text(params.get("rank_by", ""), max_chars=200) or None,
                "order": params.get("order", "asc"),
                "models": rows,
            }
        )

    async def api_model(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(explorer.card, request.path_params["model_id"]))

    async def api_grid(request: Request) -> Response:
        model_id = request.path_params["model_id"]
        sample_request = explorer.request_from_query(model_id, request.query_params)
        png = await run_in_threadpool(explorer.grid_png, model_id, sample_request)
        return Response(png, media_type="image/png", headers={"x-medigan-iso-seed": str(sample_request.seed)})

    async def api_sample(request: Request) -> Response:
        model_id = request.path_params["model_id"]
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise ExploreRequestError("content-type", "not application/json", remedy="send a JSON body")
        try:
            body = json.loads(await request.body())
        except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested deeper than json can go
            raise ExploreRequestError("body", "not JSON", remedy='send {"seed": 1, "n": 4}') from None
        sample_request = explorer.parse_sample_request(model_id, body)
        png = await run_in_threadpool(explorer.grid_png, model_id, sample_request)
        return Response(png, media_type="image/png", headers={"x-medigan-iso-seed": str(sample_request.seed)})

    async def api_zip(request: Request) -> Response:
        model_id = request.path_params["model_id"]
        sample_request = explorer.request_from_query(model_id, request.query_params)
        data = await run_in_threadpool(explorer.zip_bytes, model_id, sample_request)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in explorer.info(model_id).model_id)
        return Response(
            data,
            media_type="application/zip",
            headers={
                "content-disposition": f'attachment; filename="{safe}-seed{sample_request.seed}.zip"',
                "x-medigan-iso-seed": str(sample_request.seed),
            },
        )

    async def on_error(request: Request, exc: Exception) -> Response:
        return failure(request, exc)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        body = {"error": text(getattr(exc, "detail", "") or "error"), "status": status}
        if request.url.path.startswith("/api/"):
            return JSONResponse(body, status_code=status)
        return page(request, "error.html", status_code=status, error=body)

    routes = [
        Route("/", index),
        Route("/compare", compare),
        Route("/models/{model_id}", model_page),
        Route("/api/models", api_models),
        Route("/api/models/{model_id}", api_model),
        Route("/api/models/{model_id}/grid.png", api_grid),
        Route("/api/models/{model_id}/sample", api_sample, methods=["POST"]),
        Route("/api/models/{model_id}/samples.zip", api_zip),
        Mount("/static", StaticFiles(directory=str(_package_dir("static"))), name="static"),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={MediganIsoError: on_error, HTTPException: on_http_error},
    )
    return AccessMiddleware(app, policy=policy)
