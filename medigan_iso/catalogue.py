"""The model catalogue: its sources, its validation, its entries and medigan's id resolution.

This module owns reading catalogue sources (the bundled catalogue, the official medigan URL behind an
ETag/age cache, and the files, directories, URLs and dicts a user names), validating them against the
JSON Schemas in ``medigan_iso/schemas/`` (lenient for medigan's own entries, strict for contributions), the
typed :class:`ModelEntry` view of an entry, and medigan's id resolution (``"00002"``, ``"03"``, ``4``).

Sources, later overriding earlier (an overriding entry keeps the position of the one it replaces):

1. the bundled catalogue, ``medigan_iso/data/bundled_catalogue.json`` (demo models shipped in the wheel;
   ``$MEDIGAN_ISO_BUNDLED=0`` leaves them out, for a catalogue of upstream models alone);
2. the official medigan catalogue (:data:`OFFICIAL_CATALOGUE_URL`, or ``$MEDIGAN_ISO_CATALOGUE_URL``; an
   empty value disables it): offline or unreachable, the last cached copy, else it is skipped;
3. ``<cache>/catalogues/local_models.json``, where ``Generators.add_model_to_config`` stores additions;
4. ``config=`` (a path, URL, dict, or a list of them) or else ``$MEDIGAN_ISO_CONFIG`` (os.pathsep-separated;
   URLs stay whole although POSIX's separator is ``:``).

It must not search or rank (``search``), download packages (``packages``) or print (``cli``).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Union
from urllib.parse import unquote, urlparse

import filelock
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet

from medigan_iso.errors import CatalogueSourceError, CatalogueValidationError, UnknownModelError
from medigan_iso.paths import OFFLINE_ENV, cache_layout, is_offline
from medigan_iso.untrusted import get_logger

if TYPE_CHECKING:  # requests and jsonschema are imported when a download or a validation happens (issue 17)
    from jsonschema import Draft202012Validator

__all__ = [
    "BUNDLED_CATALOGUE_NAME",
    "BUNDLED_ENV",
    "CATALOGUE_URL_ENV",
    "CONFIG_ENV",
    "LOCAL_CATALOGUE_NAME",
    "OFFICIAL_CATALOGUE_URL",
    "OFFLINE_ENV",
    "Catalogue",
    "ConfigSource",
    "ModelEntry",
    "is_offline",
    "load_catalogue",
    "load_schema",
    "read_catalogue_source",
    "split_config_env",
    "store_local_entry",
    "thaw",
    "validate_catalogue",
]

logger = get_logger(__name__)

OFFICIAL_CATALOGUE_URL = "https://raw.githubusercontent.com/RichardObi/medigan/main/config/global.json"
CATALOGUE_URL_ENV = "MEDIGAN_ISO_CATALOGUE_URL"
BUNDLED_ENV = "MEDIGAN_ISO_BUNDLED"
CONFIG_ENV = "MEDIGAN_ISO_CONFIG"
BUNDLED_CATALOGUE_NAME = "bundled_catalogue.json"
LOCAL_CATALOGUE_NAME = "local_models.json"
CATALOGUE_SCHEMA_NAME = "catalogue.schema.json"
MODEL_ENTRY_SCHEMA_NAME = "model_entry.schema.json"
# A catalogue fetched less than this long ago is used without asking the server again.
CATALOGUE_MAX_AGE_S = 3600.0
# Never wait long for the network: an unreachable host falls back to the cached copy.
CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 15.0
MAX_CATALOGUE_BYTES = 32 * 1024 * 1024
# After the official catalogue was unreachable, later loads skip it for this long instead of waiting again.
OFFICIAL_RETRY_AFTER_FAILURE_S = 300.0
ROOT_ID = "<catalogue>"  # model id reported for violations of the catalogue as a whole

_URL_SCHEMES = ("http://", "https://")
_ERRNO_RE = re.compile(r"\[Errno -?\d+\][^'\")]*|Read timed out|timed out|Name or service not known")

ConfigSource = Union[str, "os.PathLike[str]", Mapping[str, Any]]
"""One catalogue source: a path (file or directory), an http(s)/file URL, or a catalogue dict."""


# --- read-only JSON values --------------------------------------------------------------------------


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({str(k): _freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """A plain, mutable copy of a (frozen) JSON value: mappings become dicts, sequences lists."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [thaw(v) for v in value]
    return value


# --- entries ---------------------------------------------------------------------------------------


def _empty_mapping() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True)
class ModelEntry:
    """One catalogue entry, normalised. ``raw`` is the whole entry as it was in its source, read-only."""

    model_id: str
    raw: Mapping[str, Any] = field(hash=False, repr=False)
    source: str
    catalogue_dir: Path | None
    package_name: str
    package_link: str
    model_name: str
    extension: str
    dependencies: tuple[str, ...]
    generate_function: str = "generate"
    custom_defaults: Mapping[str, Any] = field(default_factory=_empty_mapping, hash=False, repr=False)
    input_latent_vector_size: int | None = None
    package_sha256: str | None = None
    package_md5: str | None = None
    python_requires: str | None = None
    requirements_lock: str | None = None
    dependencies_as_of: str | None = None  # ISO date or "latest" (see medigan_iso.envs.asof)
    is_bundled: bool = False
    sandbox: Mapping[str, Any] = field(default_factory=_empty_mapping, hash=False, repr=False)
    resources: Mapping[str, Any] = field(default_factory=_empty_mapping, hash=False, repr=False)

    @property
    def model_file_name(self) -> str:
        """The weights file medigan passes to ``generate``: ``model_name + extension``."""
        return self.model_name + self.extension

    @property
    def selection(self) -> Mapping[str, Any]:
        """The ``selection`` part of the entry (what search and rank look at)."""
        value = self.raw.get("selection")
        return value if isinstance(value, Mapping) else _empty_mapping()

    @property
    def description(self) -> Mapping[str, Any]:
        value = self.raw.get("description")
        return value if isinstance(value, Mapping) else _empty_mapping()

    @property
    def title(self) -> str:
        return str(self.description.get("title") or "")

    @classmethod
    def from_raw(
        cls,
        model_id: str,
        raw: Mapping[str, Any],
        *,
        source: str,
        catalogue_dir: Path | None = None,
        is_bundled: bool = False,
    ) -> ModelEntry:
        """Normalise one (leniently valid) entry. Missing optional fields get medigan's defaults."""
        frozen: Mapping[str, Any] = _freeze(raw)
        execution = frozen.get("execution") or {}
        method = execution.get("generate_method") or {}
        args = method.get("args") or {}
        md5 = execution.get("package_md5")
        sha256 = execution.get("package_sha256")
        latent = method.get("input_latent_vector_size")
        return cls(
            model_id=model_id,
            raw=frozen,
            source=source,
            catalogue_dir=catalogue_dir,
            package_name=str(execution.get("package_name", "")),
            package_link=str(execution.get("package_link", "")),
            model_name=str(execution.get("model_name", "")),
            extension=str(execution.get("extension", "")),
            dependencies=tuple(str(d) for d in execution.get("dependencies") or ()),
            generate_function=str(method.get("name") or "generate"),
            custom_defaults=args.get("custom") or _empty_mapping(),
            input_latent_vector_size=latent if isinstance(latent, int) else None,
            package_sha256=str(sha256).lower() if sha256 else None,
            package_md5=str(md5).lower().removeprefix("md5:") if md5 else None,
            python_requires=execution.get("python_requires"),
            requirements_lock=execution.get("requirements_lock"),
            dependencies_as_of=execution.get("dependencies_as_of"),
            is_bundled=is_bundled,
            sandbox=execution.get("sandbox") or _empty_mapping(),
            resources=execution.get("resources") or _empty_mapping(),
        )


# --- the catalogue ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Catalogue:
    """Model entries in catalogue order, with medigan's id resolution; built by :func:`load_catalogue`."""

    entries: tuple[ModelEntry, ...] = ()
    sources: tuple[str, ...] = ()
    _by_id: Mapping[str, ModelEntry] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        by_id = {entry.model_id: entry for entry in self.entries}
        if len(by_id) != len(self.entries):
            raise ValueError("a Catalogue cannot hold two entries with the same model id")
        object.__setattr__(self, "_by_id", MappingProxyType(by_id))

    def __repr__(self) -> str:
        return f"Catalogue({len(self.entries)} models from {list(self.sources)!r})"

    def ids(self) -> tuple[str, ...]:
        """Full model ids in catalogue order."""
        return tuple(entry.model_id for entry in self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[ModelEntry]:
        return iter(self.entries)

    def __contains__(self, model_id: object) -> bool:
        return self._match(model_id) is not None

    def _match(self, model_id: object) -> ModelEntry | None:
        if isinstance(model_id, bool) or not isinstance(model_id, (str, int)):
            return None
        text = str(model_id)
        exact = self._by_id.get(text)
        if exact is not None:
            return exact
        # medigan: ids of up to five characters are zero-padded and compared with the 5-digit prefix of
        # every full id; the first one in catalogue order wins ("4" -> "00004_...").
        if 0 < len(text) <= 5:
            padded = text.zfill(5)
            for entry in self.entries:
                if entry.model_id[:5] == padded:
                    return entry
        return None

    def resolve(self, model_id: str | int) -> ModelEntry:
        """The entry for a full or abbreviated id (``"00002"``, ``"03"``, ``4``); else UnknownModelError."""
        entry = self._match(model_id)
        if entry is None:
            raise UnknownModelError(model_id, self.close_matches(model_id))
        return entry

    def resolve_id(self, model_id: str | int) -> str:
        return self.resolve(model_id).model_id

    def close_matches(self, model_id: object, *, limit: int = 3) -> list[str]:
        """Ids that look like ``model_id`` (by full id, case-insensitively, or by 5-digit prefix)."""
        text = str(model_id).lower()
        ids = self.ids()
        by_lower = {mid.lower(): mid for mid in ids}
        found = [by_lower[m] for m in difflib.get_close_matches(text, list(by_lower), n=limit, cutoff=0.6)]
        if len(text) <= 5:
            prefixes: dict[str, str] = {}
            for mid in ids:
                prefixes.setdefault(mid[:5], mid)
            for prefix in difflib.get_close_matches(text.zfill(5), list(prefixes), n=limit, cutoff=0.6):
                if prefixes[prefix] not in found:
                    found.append(prefixes[prefix])
        return found[:limit]

    def with_entry(self, entry: ModelEntry) -> Catalogue:
        """A new catalogue with ``entry`` added, or replacing the entry with the same full id in place."""
        if entry.model_id in self._by_id:
            entries = tuple(entry if e.model_id == entry.model_id else e for e in self.entries)
        else:
            entries = (*self.entries, entry)
        return Catalogue(entries, sources=self.sources)

    def to_dict(self) -> dict[str, Any]:
        """The catalogue as plain JSON data (``{model_id: entry}``), e.g. to write a global.json."""
        return {entry.model_id: thaw(entry.raw) for entry in self.entries}


# --- schemas and validation ------------------------------------------------------------------------


def load_schema(name: str) -> dict[str, Any]:
    """The JSON Schema ``name`` (``catalogue.schema.json`` or ``model_entry.schema.json``) as data.

    Read with importlib.resources from ``medigan_iso/schemas``, which lives inside the package so that
    wheels, editable installs (``pip install -e .``) and a bare source checkout all find it (issue 19).
    """
    text = (resources.files("medigan_iso") / "schemas" / name).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def _catalogue_validator(*, strict: bool) -> Draft202012Validator:
    from jsonschema import Draft202012Validator

    catalogue_schema = load_schema(CATALOGUE_SCHEMA_NAME)
    entry_schema = load_schema(MODEL_ENTRY_SCHEMA_NAME)
    schema: dict[str, Any] = (
        {"$ref": catalogue_schema["$id"] + "#/$defs/strict"} if strict else catalogue_schema
    )
    try:
        from referencing import Registry, Resource  # jsonschema >= 4.18
    except ImportError:  # jsonschema 4.0-4.17 (a 2022 env): the resolver those releases have
        from jsonschema import RefResolver

        store = {catalogue_schema["$id"]: catalogue_schema, entry_schema["$id"]: entry_schema}
        resolver = RefResolver.from_schema(catalogue_schema, store=store)
        return Draft202012Validator(schema, resolver=resolver)
    registry: Registry = Registry().with_resources(
        [
            (catalogue_schema["$id"], Resource.from_contents(catalogue_schema)),
            (entry_schema["$id"], Resource.from_contents(entry_schema)),
        ]
    )
    return Draft202012Validator(schema, registry=registry)


def _pointer(parts: Sequence[Any]) -> str:
    return "/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in parts) if parts else "/"


def _violations(data: Any, *, strict: bool) -> list[tuple[str, str, str]]:
    """Every violation as (model id, JSON path inside the entry, message), in catalogue order."""
    found: list[tuple[str, str, str]] = []
    for error in _catalogue_validator(strict=strict).iter_errors(data):
        path = list(error.absolute_path)
        model_id, inner = (str(path[0]), path[1:]) if path else (ROOT_ID, [])
        message = error.message
        hint = error.schema.get("description") if isinstance(error.schema, Mapping) else None
        if hint and error.validator in {"pattern", "anyOf"} and "$id" not in error.schema:
            message += f" (expected {hint})"
        found.append((model_id, _pointer(inner), message))
    if isinstance(data, Mapping):
        for model_id, entry in data.items():
            found.extend(_package_checks(str(model_id), entry, strict=strict))
        order = {str(mid): i for i, mid in enumerate(data)}
        found.sort(key=lambda v: (order.get(v[0], -1), v[1]))
    return list(dict.fromkeys(found))


def _package_checks(model_id: str, entry: Any, *, strict: bool) -> list[tuple[str, str, str]]:
    """Checks a JSON Schema cannot express: PEP 508 (strict) and PEP 440 specifiers (both modes)."""
    found: list[tuple[str, str, str]] = []
    execution = entry.get("execution") if isinstance(entry, Mapping) else None
    if not isinstance(execution, Mapping):
        return found
    python_requires = execution.get("python_requires")
    if isinstance(python_requires, str):
        try:
            SpecifierSet(python_requires)
        except InvalidSpecifier as exc:
            found.append((model_id, "/execution/python_requires", f"not a PEP 440 version specifier: {exc}"))
    dependencies = execution.get("dependencies")
    if strict and isinstance(dependencies, list):
        for index, dependency in enumerate(dependencies):
            if not isinstance(dependency, str):
                continue
            try:
                Requirement(dependency)
            except InvalidRequirement as exc:
                first_line = str(exc).splitlines()[0]
                found.append(
                    (model_id, f"/execution/dependencies/{index}", f"not a PEP 508 requirement: {first_line}")
                )
    return found


VALIDATION_CACHE_VERSION = b"1"


def _validation_key(data: Any, *, strict: bool) -> str | None:
    """A digest of what decides a validation: the data, the mode, both schemas and the checkers' versions."""
    import packaging

    try:
        text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)
    except (TypeError, ValueError):
        return None
    digest = hashlib.sha256(VALIDATION_CACHE_VERSION + (b"strict" if strict else b"lenient"))
    for name in (CATALOGUE_SCHEMA_NAME, MODEL_ENTRY_SCHEMA_NAME):
        digest.update((resources.files("medigan_iso") / "schemas" / name).read_bytes())
    digest.update(packaging.__version__.encode())
    digest.update(text.encode("ascii"))
    return digest.hexdigest()


def validate_catalogue(
    data: Any, *, source: str, strict: bool = False, cache_dir: str | os.PathLike[str] | None = None
) -> None:
    """Raise CatalogueValidationError listing every violation in ``data`` (a ``{model_id: entry}`` dict).

    With ``cache_dir``, a catalogue found valid leaves a marker named by the digest of its content, the
    mode and the schemas there, and the same content is not validated again (issue 17: every load
    re-validated the catalogue, and importing jsonschema alone took a third of ``medigan-iso list``).
    """
    key = _validation_key(data, strict=strict) if cache_dir is not None else None
    marker = None if key is None or cache_dir is None else Path(cache_dir) / key
    if marker is not None and marker.is_file():
        return
    violations = _violations(data, strict=strict)
    if violations:
        raise CatalogueValidationError(source, violations, strict=strict)
    if marker is not None:
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
        except OSError as exc:  # a read-only cache only costs the next load a validation
            logger.debug("cannot record the validation of %s: %s", source, exc)


# --- sources ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    name: str
    data: Mapping[str, Any]
    catalogue_dir: Path | None = None
    is_bundled: bool = False


def _parse(text: str, source: str) -> dict[str, Any]:
    if text.lstrip()[:1] == "<":
        raise CatalogueSourceError(
            source,
            "is an HTML page, not a JSON catalogue",
            remedy="point to the raw JSON file (for GitHub, the raw.githubusercontent.com URL)",
        )
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CatalogueSourceError(
            source,
            f"is not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})",
            remedy="fix the file; `python -m json.tool FILE` shows where it breaks",
        ) from exc
    if not isinstance(data, dict):
        raise CatalogueSourceError(
            source,
            f"holds a JSON {type(data).__name__}, not an object mapping model ids to entries",
            remedy='a catalogue looks like {"00001_MODEL": {"execution": {...}, "selection": {...}}}',
        )
    return data


def _read_path(path: Path, name: str | None = None) -> list[_Source]:
    name = name or str(path)
    if path.is_dir():
        files = sorted(p for p in path.glob("*.json") if p.is_file())
        if not files:
            raise CatalogueSourceError(name, "is a directory without *.json catalogue files")
        return [source for file in files for source in _read_path(file)]
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise CatalogueSourceError(
            name, "no such file or directory", remedy=f"check the path (and ${CONFIG_ENV})"
        ) from exc
    except OSError as exc:
        raise CatalogueSourceError(name, f"cannot be read ({exc.strerror or exc})") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CatalogueSourceError(name, f"is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    return [_Source(name, _parse(text, name), catalogue_dir=path.resolve().parent)]


def _short_reason(exc: BaseException) -> str:
    import requests

    if isinstance(exc, requests.Timeout):
        return "timed out"
    match = _ERRNO_RE.search(str(exc))
    return match.group(0).strip() if match else type(exc).__name__


@dataclass(frozen=True)
class _UrlCache:
    """The cached copy of one URL: ``<key>.json`` and ``<key>.meta.json`` (url, etag, fetched_at)."""

    body: Path
    meta: Path

    @classmethod
    def for_url(cls, catalogues_dir: Path, url: str) -> _UrlCache:
        key = hashlib.sha256(url.encode("utf-8")).hexdigest()[:24]
        return cls(catalogues_dir / f"{key}.json", catalogues_dir / f"{key}.meta.json")

    def read(self) -> tuple[str, dict[str, Any]] | None:
        try:
            text = self.body.read_text(encoding="utf-8")
            meta = json.loads(self.meta.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return (text, meta) if isinstance(meta, dict) else None

    @property
    def failure_marker(self) -> Path:
        return self.meta.with_name(self.meta.name.replace(".meta.json", ".unreachable"))

    def mark_failed(self) -> None:
        try:
            self.body.parent.mkdir(parents=True, exist_ok=True)
            self.failure_marker.write_text(str(time.time()), encoding="ascii")
        except OSError:  # a read-only cache must not turn a network error into another error
            pass

    def failed_within(self, seconds: float) -> bool:
        try:
            return time.time() - self.failure_marker.stat().st_mtime < seconds
        except OSError:
            return False

    def save(self, url: str, text: str, etag: str | None) -> None:
        """Write the copy, or log why not: an unwritable cache must not fail a successful download."""
        try:
            self.write(url, text, etag)
        except OSError as exc:
            logger.warning(
                "cannot cache %s in %s (%s); it will be downloaded again", url, self.body.parent, exc
            )

    def write(self, url: str, text: str, etag: str | None) -> None:
        self.body.parent.mkdir(parents=True, exist_ok=True)
        meta = {"url": url, "etag": etag, "fetched_at": time.time()}
        for path, content in ((self.body, text), (self.meta, json.dumps(meta))):
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_text(content, encoding="utf-8")
            tmp.replace(path)
        self.failure_marker.unlink(missing_ok=True)


def _age(meta: Mapping[str, Any]) -> float:
    fetched_at = meta.get("fetched_at")
    return time.time() - float(fetched_at) if isinstance(fetched_at, (int, float)) else float("inf")


def _describe_age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def _read_url(
    url: str, *, catalogues_dir: Path, offline: bool, max_age_s: float, backoff_s: float = 0.0
) -> str:
    """The text at ``url``: fresh from the cache, revalidated with ETag, or the last cached copy.

    With ``backoff_s``, a URL that was unreachable less than that long ago is not tried again (the
    official catalogue uses it so that a machine without GitHub pays the timeout once, not per call).
    """
    cache = _UrlCache.for_url(catalogues_dir, url)
    cached = cache.read()
    if not offline and backoff_s > 0 and cache.failed_within(backoff_s):
        if cached is not None:
            logger.info("%s was unreachable moments ago; using the cached copy", url)
            return cached[0]
        raise CatalogueSourceError(url, f"unreachable less than {backoff_s:g} s ago; not retried yet")
    if offline:
        if cached is not None:
            logger.info("offline: using the copy of %s cached %s ago", url, _describe_age(_age(cached[1])))
            return cached[0]
        raise CatalogueSourceError(
            url,
            f"offline (${OFFLINE_ENV}) and never fetched before",
            remedy=f"run once with network access, or unset {OFFLINE_ENV}",
        )
    if cached is not None and _age(cached[1]) < max_age_s:
        return cached[0]
    import requests

    headers = {"Accept": "application/json"}
    if cached is not None and cached[1].get("etag"):
        headers["If-None-Match"] = str(cached[1]["etag"])
    try:
        with requests.get(
            url, headers=headers, timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S), stream=True
        ) as response:
            status = response.status_code
            if status == 304 and cached is not None:
                cache.save(url, cached[0], cached[1].get("etag"))
                return cached[0]
            if status >= 500 and cached is not None:
                logger.warning(
                    "%s answered HTTP %s; using the copy cached %s ago",
                    url,
                    status,
                    _describe_age(_age(cached[1])),
                )
                return cached[0]
            if status != 200:
                raise CatalogueSourceError(
                    url,
                    f"HTTP {status} {response.reason or ''}".rstrip(),
                    remedy="check the URL; it must serve the catalogue JSON itself",
                )
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_content(chunk_size=65536):
                size += len(chunk)
                if size > MAX_CATALOGUE_BYTES:
                    raise CatalogueSourceError(url, f"is larger than {MAX_CATALOGUE_BYTES} bytes")
                chunks.append(chunk)
            content_type = response.headers.get("Content-Type", "")
            etag = response.headers.get("ETag")
    except requests.RequestException as exc:
        reason = _short_reason(exc)
        cache.mark_failed()
        if cached is not None:
            logger.warning(
                "cannot reach %s (%s); using the copy cached %s ago",
                url,
                reason,
                _describe_age(_age(cached[1])),
            )
            return cached[0]
        raise CatalogueSourceError(
            url,
            f"unreachable ({reason})",
            remedy=f"check the URL and the network, or set {OFFLINE_ENV}=1 to use local catalogues only",
        ) from exc
    body = b"".join(chunks)
    if "html" in content_type.lower():
        raise CatalogueSourceError(
            url,
            f"returned an HTML page ({content_type}), not a JSON catalogue",
            remedy="point to the raw JSON file (for GitHub, the raw.githubusercontent.com URL)",
        )
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CatalogueSourceError(url, f"is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    _parse(text, url)  # never cache what cannot be used
    cache.save(url, text, etag)
    return text


def read_catalogue_source(
    item: ConfigSource,
    *,
    home: str | os.PathLike[str] | None = None,
    offline: bool | None = None,
    max_age_s: float | None = None,
) -> list[tuple[str, dict[str, Any], Path | None]]:
    """Read one source into ``(name, data, catalogue_dir)`` triples (a directory gives one per file)."""
    return [
        (s.name, dict(s.data), s.catalogue_dir)
        for s in _read_item(item, home=home, offline=is_offline(offline), max_age_s=max_age_s, index=0)
    ]


def _read_item(
    item: ConfigSource,
    *,
    home: str | os.PathLike[str] | None,
    offline: bool,
    max_age_s: float | None,
    index: int,
) -> list[_Source]:
    if isinstance(item, Mapping):
        name = f"<config dict #{index}>"
        return [_Source(name, _parse(json.dumps(thaw(item)), name))]
    if isinstance(item, os.PathLike):
        return _read_path(Path(item))
    if not isinstance(item, str):
        raise CatalogueSourceError(
            repr(item), f"is a {type(item).__name__}; a source is a path, an http(s) URL or a dict"
        )
    text = item.strip()
    if text.startswith(_URL_SCHEMES):
        layout = cache_layout(home)
        body = _read_url(
            text,
            catalogues_dir=layout.catalogues,
            offline=offline,
            max_age_s=CATALOGUE_MAX_AGE_S if max_age_s is None else max_age_s,
        )
        return [_Source(text, _parse(body, text))]
    if text.startswith("file://"):
        return _read_path(Path(unquote(urlparse(text).path)), name=text)
    return _read_path(Path(text).expanduser())


def _bundled_source(path: Path | None) -> _Source | None:
    if path is None:
        packaged = resources.files("medigan_iso") / "data" / BUNDLED_CATALOGUE_NAME
        if not packaged.is_file():
            return None
        path = Path(str(packaged))
    name = f"<bundled {path.name}>"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogueSourceError(name, f"cannot be read ({exc})", remedy="reinstall medigan-iso") from exc
    return _Source(name, _parse(text, name), catalogue_dir=path.resolve().parent, is_bundled=True)


def _official_source(
    url: str, *, home: str | os.PathLike[str] | None, offline: bool, max_age_s: float
) -> _Source | None:
    catalogues_dir = cache_layout(home).catalogues
    try:
        text = _read_url(
            url,
            catalogues_dir=catalogues_dir,
            offline=offline,
            max_age_s=max_age_s,
            backoff_s=OFFICIAL_RETRY_AFTER_FAILURE_S,
        )
    except CatalogueSourceError as exc:
        # The official catalogue is a default, not something the user asked for: without it, the
        # bundled and configured catalogues still work.
        log = logger.debug if offline else logger.warning
        log("skipping the official medigan catalogue: %s", exc.message)
        return None
    return _Source(url, _parse(text, url))


def split_config_env(value: str) -> list[str]:
    """Split ``$MEDIGAN_ISO_CONFIG`` on os.pathsep, keeping URLs whole (``https://...`` holds a ``:``)."""
    parts = value.split(os.pathsep)
    items: list[str] = []
    index = 0
    while index < len(parts):
        part = parts[index]
        if part.lower() in {"http", "https", "file"} and index + 1 < len(parts):
            # a URL cut at its scheme; its port (host:8000/...) is a further cut
            part = f"{part}:{parts[index + 1]}"
            index += 1
            while index + 1 < len(parts) and re.match(r"^\d+(/|$)", parts[index + 1]):
                part = f"{part}:{parts[index + 1]}"
                index += 1
        if part.strip():
            items.append(part.strip())
        index += 1
    return items


def _config_items(config: ConfigSource | Sequence[ConfigSource] | None) -> list[ConfigSource]:
    if config is None:
        return list(split_config_env(os.environ.get(CONFIG_ENV, "")))
    if isinstance(config, (str, os.PathLike, Mapping)):
        return [config]
    return list(config)


def load_catalogue(
    config: ConfigSource | Sequence[ConfigSource] | None = None,
    *,
    home: str | os.PathLike[str] | None = None,
    offline: bool | None = None,
    strict: bool = False,
    official_url: str | None = None,
    max_age_s: float | None = None,
    bundled_catalogue: str | os.PathLike[str] | None = None,
) -> Catalogue:
    """Load, validate and merge every catalogue source (see the module docstring for the order).

    ``config`` replaces ``$MEDIGAN_ISO_CONFIG`` when given. ``offline`` defaults to
    ``$MEDIGAN_ISO_OFFLINE``; offline, no network is touched and URLs come from the cache.
    ``official_url`` defaults to ``$MEDIGAN_ISO_CATALOGUE_URL`` or :data:`OFFICIAL_CATALOGUE_URL`
    (``""`` disables it). ``bundled_catalogue`` replaces the packaged bundled catalogue file (its
    entries are ``is_bundled``; relative package links resolve against its folder); without it,
    ``$MEDIGAN_ISO_BUNDLED=0`` leaves the bundled demo models out.
    Raises CatalogueSourceError or CatalogueValidationError.
    """
    offline = is_offline(offline)
    max_age = CATALOGUE_MAX_AGE_S if max_age_s is None else max_age_s
    sources: list[_Source] = []
    include_bundled = os.environ.get(BUNDLED_ENV, "1").strip().lower() not in ("0", "false", "no", "off")
    bundled = (
        _bundled_source(None if bundled_catalogue is None else Path(bundled_catalogue))
        if include_bundled or bundled_catalogue is not None
        else None
    )
    if bundled is not None:
        sources.append(bundled)
    url = os.environ.get(CATALOGUE_URL_ENV, OFFICIAL_CATALOGUE_URL) if official_url is None else official_url
    if url.strip():
        official = _official_source(url.strip(), home=home, offline=offline, max_age_s=max_age)
        if official is not None:
            sources.append(official)
    local = cache_layout(home).catalogues / LOCAL_CATALOGUE_NAME
    if local.is_file():
        sources.extend(_read_path(local))
    for index, item in enumerate(_config_items(config)):
        sources.extend(_read_item(item, home=home, offline=offline, max_age_s=max_age, index=index))

    merged: dict[str, ModelEntry] = {}
    validated = cache_layout(home).root / "validated-catalogues"
    for source in sources:
        validate_catalogue(source.data, source=source.name, strict=strict, cache_dir=validated)
        for model_id, raw in source.data.items():
            if model_id in merged:
                logger.debug("model %s from %s overrides %s", model_id, source.name, merged[model_id].source)
            merged[model_id] = ModelEntry.from_raw(
                model_id,
                raw,
                source=source.name,
                catalogue_dir=source.catalogue_dir,
                is_bundled=source.is_bundled,
            )
    return Catalogue(tuple(merged.values()), sources=tuple(s.name for s in sources))


# --- the local catalogue ---------------------------------------------------------------------------

# Two processes adding models at once must not lose one of them (read-modify-write of one JSON file).
LOCAL_CATALOGUE_LOCK_TIMEOUT_S = 60.0


def store_local_entry(
    model_id: str, entry: Mapping[str, Any], *, home: str | os.PathLike[str] | None = None
) -> Path:
    """Add (or replace) ``model_id`` in ``<cache>/catalogues/local_models.json``; return that path.

    The entry is validated (lenient) first. The read-modify-write happens under a file lock in
    ``cache_layout().locks``, and the new file replaces the old one atomically (written beside it,
    fsynced, renamed), so concurrent writers never lose an entry and readers never see half a file.
    """
    validate_catalogue({model_id: entry}, source=f"the entry of {model_id}")
    layout = cache_layout(home).ensure()
    target = layout.catalogues / LOCAL_CATALOGUE_NAME
    lock = filelock.FileLock(str(layout.locks / f"{LOCAL_CATALOGUE_NAME}.lock"))
    with lock.acquire(timeout=LOCAL_CATALOGUE_LOCK_TIMEOUT_S):
        stored: dict[str, Any] = {}
        if target.is_file():
            stored = _parse(target.read_text(encoding="utf-8"), str(target))
        stored[model_id] = thaw(entry)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{LOCAL_CATALOGUE_NAME}.", suffix=".tmp", dir=target.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(stored, handle, indent=2)
                handle.write("\n")
                handle.flush()
                os.fsync(handle.fileno())
            tmp.replace(target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    logger.info("model %s stored in %s", model_id, target)
    return target
