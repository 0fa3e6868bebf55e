"""What the explorer's pages and API ask of the library, without HTTP: search rows, model cards, grids.

This module owns turning catalogue entries, search results and generated samples into the values the web
layer serves (plain JSON-ready dicts, PNG bytes, zip bytes) and validating request parameters into typed
errors (:class:`~medigan_iso.errors.ExploreRequestError`). Every sample comes from one
:class:`~medigan_iso.generation.Session` (warm runners, crash respawn, its sandbox policy); this module
never touches envs or runners itself, imports no web framework and never prints.

Every text taken from a catalogue entry or a runner passes :func:`~medigan_iso.untrusted.neutralise`
here, before the templates escape it for HTML: the page shows ``\\x1b`` where a model sent ESC.
"""

from __future__ import annotations

import io
import json
import math
import secrets
import tempfile
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medigan_iso.api import ModelInfo, search
from medigan_iso.errors import ExploreError, ExploreRequestError, ModelBusyError
from medigan_iso.generation import Session
from medigan_iso.preview import contact_sheet
from medigan_iso.search import OPERATORS, ORDERS, rank_models
from medigan_iso.untrusted import get_logger, neutralise

__all__ = [
    "DEFAULT_GRID_SAMPLES",
    "MAX_GRID_SAMPLES",
    "MAX_PENDING_PER_MODEL",
    "MAX_WARM_RUNNERS",
    "Explorer",
    "SampleRequest",
]

logger = get_logger(__name__)

DEFAULT_GRID_SAMPLES = 16
MAX_GRID_SAMPLES = 64  # per grid, sample or zip request; a 64-sample sheet of 256 px cells is about 4 MB
DEFAULT_BATCH = 32
LATENT_RULE = "numpy.random.default_rng(seed).standard_normal((n, size)), then columns in edits set"
MAX_PENDING_PER_MODEL = 2  # requests waiting for one model's runner; more get HTTP 429, not a thread each
MAX_WARM_RUNNERS = 4  # runners kept warm; a torch model's runner holds a few hundred MB
MAX_SEED = 2**32 - 1
MAX_LATENT_SIZE = 4096  # the largest upstream latent is 1024 (00019); bounds a JSON body's work
LATENT_ABS_MAX = 10.0  # slider range is [-3, 3]; anything beyond 10 sigma is no latent a GAN saw
MAX_SEARCH_TERMS = 16
MAX_TERM_CHARS = 200
MAX_CONDITION_CHARS = 200
MAX_CONDITION_ITEMS = 64
SLIDER_COUNT = 8  # latent dimensions shown as sliders on a model page
# Keyword arguments a page may not set: the runner owns the base arguments, latents come from the sliders,
# and paths or devices in a model's custom arguments are for the person who installed it, not a browser.
_RESERVED_KWARGS = frozenset(
    {"model_file", "num_samples", "output_path", "save_images", "input_latent_vector", "z", "gpu_id"}
)
_PATH_MARKERS = ("path", "file", "dir")
_TEXT_CAP = 4000


def text(value: object, *, max_chars: int = _TEXT_CAP) -> str:
    """Untrusted catalogue or runner text, neutralised (control characters made visible, length capped)."""
    return neutralise("" if value is None else value, max_chars=max_chars)


def _clean(value: Any) -> Any:
    """A JSON value with every string in it neutralised (keys too)."""
    if isinstance(value, Mapping):
        return {text(k, max_chars=200): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, str):
        return text(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _flat_metrics(performance: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"FID": 1.2, "turing_test.AUC": 0.5}``: the performance values that are set (empty ones dropped)."""
    out: dict[str, Any] = {}
    for key, value in performance.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flat_metrics(value, f"{name}."))
        elif value not in (None, "", [], ()):
            out[name] = value
    return out


def parse_terms(query: str) -> list[str]:
    """Search terms from a query box: comma-separated when a comma is present, else whitespace-separated.

    medigan matches whole values, so ``"synthetic phantom"`` needs ``synthetic phantom,`` (a comma).
    """
    if len(query) > MAX_TERM_CHARS * MAX_SEARCH_TERMS:
        raise ExploreRequestError("q", "the query is too long", remedy="search for fewer, shorter terms")
    parts = query.split(",") if "," in query else query.split()
    terms = [part.strip() for part in parts if part.strip()]
    if len(terms) > MAX_SEARCH_TERMS or any(len(t) > MAX_TERM_CHARS for t in terms):
        raise ExploreRequestError(
            "q",
            f"at most {MAX_SEARCH_TERMS} terms of at most {MAX_TERM_CHARS} characters",
            remedy="search for fewer, shorter terms",
        )
    return terms


def parse_int(raw: str | None, name: str, *, default: int | None, low: int, high: int) -> int | None:
    """An integer query parameter in [low, high]; ``default`` when absent or empty."""
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ExploreRequestError(
            name, f"{text(raw, max_chars=40)!r} is not an integer", remedy=f"pass {name}={low}..{high}"
        ) from None
    if not low <= value <= high:
        raise ExploreRequestError(name, f"{value} is out of range", remedy=f"pass {name}={low}..{high}")
    return value


@dataclass(frozen=True)
class SampleRequest:
    """A validated POST /sample body: ``n`` latents drawn from ``seed``, then ``latent_edits`` applied."""

    seed: int
    n: int
    latent_edits: Mapping[int, float]
    latent: tuple[float, ...] | None
    conditions: Mapping[str, Any]


def _check_condition_value(key: str, value: Any) -> Any:
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ExploreRequestError(f"conditions.{key}", "not a finite number", remedy="pass a number")
        return value
    if isinstance(value, str):
        if len(value) > MAX_CONDITION_CHARS:
            raise ExploreRequestError(
                f"conditions.{key}", "too long", remedy=f"pass at most {MAX_CONDITION_CHARS} characters"
            )
        return value
    if isinstance(value, list) and len(value) <= MAX_CONDITION_ITEMS:
        return [_check_condition_value(key, item) for item in value if not isinstance(item, list)]
    raise ExploreRequestError(
        f"conditions.{key}",
        f"a {type(value).__name__} is not accepted",
        remedy=f"pass null, a boolean, a number, a string or a list of at most {MAX_CONDITION_ITEMS} of them",
    )


class Explorer:
    """The explorer's model of the world: one Session, the catalogue it loaded, per-model admission.

    Methods that generate block (they wait for the model's runner); the web layer calls them from worker
    threads, so a slow model holds its own requests only. Each model admits
    :data:`MAX_PENDING_PER_MODEL` requests at a time; the next raises
    :class:`~medigan_iso.errors.ModelBusyError` instead of queueing a thread behind a stuck runner.
    """

    def __init__(
        self,
        session: Session,
        *,
        max_pending_per_model: int = MAX_PENDING_PER_MODEL,
        max_warm_runners: int = MAX_WARM_RUNNERS,
    ) -> None:
        if max_warm_runners < 1:
            raise ExploreError(
                f"max_warm_runners must be at least 1, got {max_warm_runners}",
                remedy="pass --max-warm 1 or more",
            )
        self.session = session
        self._max_pending = max_pending_per_model
        self._max_warm = max_warm_runners
        self._pending: dict[str, int] = {}
        self._recent: OrderedDict[str, None] = OrderedDict()  # models used, least recent first
        self._lock = threading.Lock()

    # --- catalogue ------------------------------------------------------------------------------------

    def info(self, model_id: str) -> ModelInfo:
        """The :class:`ModelInfo` of ``model_id`` (UnknownModelError with close matches otherwise)."""
        return ModelInfo.from_entry(self.session.resolve(model_id))

    def rows(
        self, query: str = "", *, operator: str = "AND", rank_by: str = "", order: str = "asc"
    ) -> list[dict[str, Any]]:
        """The index table: every model (or those ``query`` matches, with medigan's search), one dict each.

        With ``rank_by`` (a dotted metric under ``selection.performance``, e.g. ``FID``) only models with a
        numeric value for it are kept, sorted by ``order`` (medigan's ranking; each row gets ``rank_value``).
        """
        catalogue = self.session.catalogue
        terms = parse_terms(query)
        operator = operator.upper()
        if operator not in OPERATORS:
            raise ExploreRequestError(
                "operator", f"{text(operator, max_chars=20)!r} is unknown", remedy="pass AND, OR or XOR"
            )
        if order not in ORDERS:
            raise ExploreRequestError(
                "order", f"{text(order, max_chars=20)!r} is unknown", remedy="pass asc or desc"
            )
        if len(rank_by) > MAX_TERM_CHARS:
            raise ExploreRequestError("rank_by", "too long", remedy="pass a metric name such as FID")
        values: dict[str, Any] = {}
        if terms:
            found = search(
                terms, operator=operator, rank_by=rank_by or None, order=order, catalogue=catalogue
            )
            matched = {result.model_id: result.matched_terms for result in found}
            ids = [result.model_id for result in found]
            values = {result.model_id: result.metric_value for result in found}
        else:
            matched = {}
            if rank_by:
                ranked = rank_models(catalogue, metric=rank_by, order=order)
                ids = [item["model_id"] for item in ranked]
                values = {item["model_id"]: item[rank_by] for item in ranked}
            else:
                ids = list(catalogue.ids())
        rows = []
        for model_id in ids:
            row = self._row(self.info(model_id), matched.get(model_id, ()))
            if rank_by:
                row["rank_value"] = _clean(values.get(model_id))
            rows.append(row)
        return rows

    def metric_names(self) -> list[str]:
        """Every dotted metric with a value in some entry (what the index offers to rank by)."""
        names: set[str] = set()
        for entry in self.session.catalogue:
            performance = entry.selection.get("performance")
            if isinstance(performance, Mapping):
                names.update(_flat_metrics(performance))
        return sorted(text(name, max_chars=MAX_TERM_CHARS) for name in names)

    def _row(self, info: ModelInfo, matched_terms: Sequence[str]) -> dict[str, Any]:
        metrics = _flat_metrics(info.performance)
        return {
            "model_id": text(info.model_id, max_chars=200),
            "title": text(info.title, max_chars=300),
            "type": text(info.type or "", max_chars=100),
            "modality": [text(m, max_chars=100) for m in info.modality],
            "organ": [text(o, max_chars=100) for o in info.organ],
            "image_size": list(info.image_size),
            "metrics": _clean({k: v for k, v in list(metrics.items())[:6]}),
            "matched_terms": [text(t, max_chars=200) for t in matched_terms],
            "latent_size": info.input_latent_vector_size,
            "bundled": info.is_bundled,
        }

    def card(self, model_id: str) -> dict[str, Any]:
        """A model page's card: the entry's metadata and this Session's status of the model, neutralised."""
        info = self.info(model_id)
        entry = self.session.resolve(info.model_id)
        description = entry.description
        status = self.session.status(info.model_id)
        return {
            "model_id": text(info.model_id, max_chars=200),
            "title": text(info.title, max_chars=500),
            "type": text(info.type or ""),
            "modality": [text(m) for m in info.modality],
            "organ": [text(o) for o in info.organ],
            "generates": [text(g) for g in info.generates],
            "dataset": [text(d) for d in info.dataset],
            "tags": [text(t) for t in info.tags],
            "license": text(info.license or ""),
            "year": text(info.year or ""),
            "publication": text(info.publication or ""),
            "doi": [text(d) for d in info.doi],
            "comment": text(info.comment),
            "inputs": [text(i) for i in description.get("inputs") or () if i is not None],
            "image_size": list(info.image_size),
            "latent_size": info.input_latent_vector_size,
            "dependencies": [text(d, max_chars=300) for d in info.dependencies],
            # The date its env resolves the dependencies as of, and where that date comes from (the
            # same rule the env build uses; `medigan-iso info` shows it too).
            "dependencies_as_of": text(_as_of(self.session, info.model_id)),
            "provided_date": text(description.get("provided_date") or ""),
            "package_link": text(info.package_link, max_chars=500),
            "package_sha256": text(info.package_sha256 or ""),
            "source": text(info.source, max_chars=500),
            "bundled": info.is_bundled,
            "metrics": _clean(_flat_metrics(info.performance)),
            "conditions": self.conditions(info.model_id),
            "status": _clean(status),
            "pending_requests": self.pending(info.model_id),
        }

    def conditions(self, model_id: str) -> dict[str, Any]:
        """The custom keyword arguments a page may set (declared in the entry, no paths or devices)."""
        entry = self.session.resolve(model_id)
        allowed: dict[str, Any] = {}
        for key, default in entry.custom_defaults.items():
            lowered = key.lower()
            if key in _RESERVED_KWARGS or any(marker in lowered for marker in _PATH_MARKERS):
                continue
            if isinstance(default, (Mapping, list, tuple)) and not all(
                isinstance(item, (bool, int, float, str)) for item in default
            ):
                continue
            allowed[key] = default if not isinstance(default, tuple) else list(default)
        return allowed

    # --- requests -------------------------------------------------------------------------------------

    def parse_sample_request(self, model_id: str, body: Any) -> SampleRequest:
        """Validate a POST /sample JSON body against the model's entry."""
        if not isinstance(body, Mapping):
            raise ExploreRequestError("body", "not a JSON object", remedy='send {"seed": 1, "n": 4}')
        unknown = set(body) - {"seed", "n", "latent_edits", "latent", "conditions"}
        if unknown:
            raise ExploreRequestError(
                "body",
                f"unknown field(s) {', '.join(sorted(text(k, max_chars=40) for k in unknown))}",
                remedy="send only seed, n, latent_edits, latent and conditions",
            )
        seed = body.get("seed")
        if seed is None:
            seed = secrets.randbelow(MAX_SEED + 1)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise ExploreRequestError("seed", "not an integer in range", remedy=f"pass 0..{MAX_SEED}")
        n = body.get("n", 4)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_GRID_SAMPLES:
            raise ExploreRequestError("n", "out of range", remedy=f"pass n=1..{MAX_GRID_SAMPLES}")
        size = self.info(model_id).input_latent_vector_size
        edits = self._latent_edits(body.get("latent_edits") or {}, size)
        latent = self._latent(body.get("latent"), size)
        conditions_raw = body.get("conditions") or {}
        if not isinstance(conditions_raw, Mapping):
            raise ExploreRequestError("conditions", "not an object", remedy='send {"name": value}')
        allowed = self.conditions(model_id)
        conditions: dict[str, Any] = {}
        for key, value in conditions_raw.items():
            if key not in allowed:
                raise ExploreRequestError(
                    f"conditions.{text(key, max_chars=60)}",
                    "this model declares no such input",
                    remedy=f"use one of: {', '.join(text(k, max_chars=60) for k in allowed) or '(none)'}",
                )
            conditions[key] = _check_condition_value(key, value)
        return SampleRequest(seed=seed, n=n, latent_edits=edits, latent=latent, conditions=conditions)

    def request_from_query(self, model_id: str, query: Mapping[str, str]) -> SampleRequest:
        """A GET request's parameters (``n``, ``seed``, ``edits`` and ``conditions`` as JSON) validated."""
        body: dict[str, Any] = {
            "n": parse_int(query.get("n"), "n", default=DEFAULT_GRID_SAMPLES, low=1, high=MAX_GRID_SAMPLES),
            "seed": parse_int(query.get("seed"), "seed", default=None, low=0, high=MAX_SEED),
        }
        for name, field_name in (("edits", "latent_edits"), ("conditions", "conditions")):
            raw = query.get(name)
            if raw:
                try:
                    body[field_name] = json.loads(raw)
                except (ValueError, RecursionError):
                    raise ExploreRequestError(
                        name, "not JSON", remedy=f'pass {name}={{"key": value}} (URL-encoded JSON)'
                    ) from None
        return self.parse_sample_request(model_id, body)

    @staticmethod
    def _latent_edits(raw: Any, size: int | None) -> dict[int, float]:
        if not raw:
            return {}
        if size is None:
            raise ExploreRequestError(
                "latent_edits", "this model declares no input latent vector", remedy="leave it out"
            )
        if not isinstance(raw, Mapping) or len(raw) > min(size, MAX_LATENT_SIZE):
            raise ExploreRequestError(
                "latent_edits", "not an object of at most one value per dimension", remedy='send {"0": 1.5}'
            )
        edits: dict[int, float] = {}
        for key, value in raw.items():
            try:
                index = int(key)
            except (TypeError, ValueError):
                index = -1
            if not 0 <= index < size:
                raise ExploreRequestError(
                    "latent_edits", f"dimension {text(key, max_chars=20)!r}", remedy=f"use 0..{size - 1}"
                )
            edits[index] = _latent_value(value, "latent_edits")
        return edits

    @staticmethod
    def _latent(raw: Any, size: int | None) -> tuple[float, ...] | None:
        if raw is None:
            return None
        if size is None:
            raise ExploreRequestError(
                "latent", "this model declares no input latent vector", remedy="leave it out"
            )
        if not isinstance(raw, list) or len(raw) != size:
            raise ExploreRequestError(
                "latent", f"not a list of {size} numbers", remedy=f"send {size} numbers"
            )
        return tuple(_latent_value(value, "latent") for value in raw)

    def pending(self, model_id: str) -> int:
        """How many requests for ``model_id`` are admitted now (waiting for or using its runner)."""
        with self._lock:
            return self._pending.get(model_id, 0)

    @contextmanager
    def admitted(self, model_id: str) -> Iterator[None]:
        """Hold one of the model's request places for the block; ModelBusyError when none is free."""
        with self._lock:
            if self._pending.get(model_id, 0) >= self._max_pending:
                raise ModelBusyError(model_id, self._max_pending)
            self._pending[model_id] = self._pending.get(model_id, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._pending[model_id] -= 1

    def _call(self, model_id: str, request: SampleRequest) -> tuple[int, dict[str, Any]]:
        """(batch size, model kwargs) of a request: latent rows in one batch, or seeded batches."""
        size = self.session.resolve(model_id).input_latent_vector_size
        kwargs: dict[str, Any] = dict(request.conditions)
        if size is None:
            return min(request.n, DEFAULT_BATCH), kwargs
        kwargs["input_latent_vector"] = latents(size, request)
        return request.n, kwargs  # the model takes every row at once and ignores num_samples

    def samples(self, model_id: str, request: SampleRequest) -> list[Any]:
        """The samples a request asks for, from the Session's warm runner (blocks: call from a thread).

        A model that declares ``input_latent_vector_size`` gets the request's latent rows (:func:`latents`)
        in one batch; any other gets ``n`` samples seeded with the request's seed.
        """
        entry = self.session.resolve(model_id)
        batch_size, kwargs = self._call(entry.model_id, request)
        try:
            with self.admitted(entry.model_id):
                return self.session.generate(
                    entry.model_id, request.n, seed=request.seed, batch_size=batch_size, **kwargs
                )
        finally:
            self._release_least_recent(entry.model_id)

    def _release_least_recent(self, used: str) -> None:
        """Keep at most ``max_warm_runners`` runners: stop those of the least recently used idle models."""
        with self._lock:
            self._recent[used] = None
            self._recent.move_to_end(used)
            surplus = len(self._recent) - self._max_warm
            idle = [m for m in self._recent if m != used and not self._pending.get(m)][: max(surplus, 0)]
            for model_id in idle:
                del self._recent[model_id]
        for model_id in idle:
            if self.session.release(model_id):
                logger.info("stopped the idle runner of %s (more than %d warm)", model_id, self._max_warm)

    def grid_png(self, model_id: str, request: SampleRequest) -> bytes:
        """A contact sheet of the request's samples, as PNG bytes."""
        return png_sheet(self.samples(model_id, request))

    def zip_bytes(self, model_id: str, request: SampleRequest) -> bytes:
        """The request's samples as PNG files in a zip, with their provenance: medigan_iso's
        ``manifest.jsonl`` and ``run.json`` (:mod:`medigan_iso.manifest`), and the grid the page shows.

        The samples are the ones the page shows for the same request (same seed, latent edits and
        conditions); the run record adds how the latent rows were drawn (``explore.latent``).
        """
        from medigan_iso.images import SampleWriter, write_exclusive
        from medigan_iso.manifest import ManifestWriter

        entry = self.session.resolve(model_id)
        batch_size, kwargs = self._call(entry.model_id, request)
        size = entry.input_latent_vector_size
        explore = {
            "conditions": dict(request.conditions),
            "latent": None
            if size is None
            else {
                "size": size,
                "rule": LATENT_RULE,
                "seed": request.seed,
                "edits": {str(k): v for k, v in sorted(request.latent_edits.items())},
                "given": None if request.latent is None else list(request.latent),
            },
        }
        command = ["medigan-iso", "explore", f"GET /api/models/{entry.model_id}/samples.zip"]
        buffer = io.BytesIO()
        with tempfile.TemporaryDirectory(prefix="medigan-iso-explore-") as tmp:
            folder = Path(tmp) / "samples"
            writer = SampleWriter(folder, fmt="png")
            manifest: ManifestWriter | None = None
            shown: list[Any] = []
            status = "failed"
            try:
                with self.admitted(entry.model_id):
                    batches = self.session.stream(
                        entry.model_id, request.n, seed=request.seed, batch_size=batch_size, **kwargs
                    )
                    for batch in batches:
                        if manifest is None:
                            manifest = ManifestWriter(
                                folder, batches.run_context(writer="png", command=command)
                            )
                            writer.manifest = manifest
                        index = batches.batch_index
                        writer.write_batch(len(shown) if index is None else index * batches.batch_size, batch)
                        shown.extend(batch)
                    if manifest is None:
                        manifest = ManifestWriter(folder, batches.run_context(writer="png", command=command))
                writer.close()
                sheet = png_sheet(shown)
                recorder = manifest
                write_exclusive(
                    folder / "grid.png",
                    sheet,
                    before_link=lambda: recorder.record("grid.png", data=sheet, kind="grid"),
                )
                status = "complete"
            finally:
                self._release_least_recent(entry.model_id)
                if manifest is not None:
                    manifest.finish(status, explore=explore)
            with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                for path in sorted(folder.iterdir()):
                    if path.is_file() and not path.is_symlink():
                        archive.writestr(f"samples/{path.name}", path.read_bytes())
        return buffer.getvalue()


def _as_of(session: Session, model_id: str) -> str:
    try:
        return session.dependencies_as_of(model_id)  # what its build uses (a stored package's date too)
    except ValueError as exc:
        return f"invalid: {exc}"


def _latent_value(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ExploreRequestError(name, "values must be finite numbers", remedy="send numbers")
    if abs(value) > LATENT_ABS_MAX:
        raise ExploreRequestError(
            name,
            f"{value} is beyond ±{LATENT_ABS_MAX:g}",
            remedy=f"send values in -{LATENT_ABS_MAX:g}..{LATENT_ABS_MAX:g}",
        )
    return float(value)


def latents(size: int, request: SampleRequest) -> np.ndarray[Any, np.dtype[np.float32]]:
    """The (n, size) latent rows of a request: standard normal from its seed, edited columns overwritten.

    The same seed gives the same rows, so moving one slider changes one dimension of every sample and
    nothing else.
    """
    if request.latent is not None:
        rows = np.tile(np.asarray(request.latent, dtype=np.float32), (request.n, 1))
    else:
        rows = np.random.default_rng(request.seed).standard_normal((request.n, size)).astype(np.float32)
    for index, value in request.latent_edits.items():
        rows[:, index] = value
    return rows


def png_sheet(samples: Sequence[Any]) -> bytes:
    """A contact sheet of ``samples`` as PNG bytes."""
    from PIL import Image

    if not samples:
        raise ExploreRequestError("n", "the model returned no samples", remedy="ask for at least one")
    try:
        sheet = contact_sheet(list(samples))
    except (TypeError, ValueError) as exc:
        raise ExploreError(
            f"the model's samples cannot be tiled into a grid: {exc}",
            remedy="download them as a zip instead, or generate them with `medigan-iso generate`",
        ) from exc
    buffer = io.BytesIO()
    Image.fromarray(sheet).save(buffer, format="PNG")
    return buffer.getvalue()
