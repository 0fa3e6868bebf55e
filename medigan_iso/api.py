"""The modern public API: ``search``, ``info`` and ``list_models`` (generation joins it later).

This module owns turning catalogue entries and search results into typed, frozen values for callers.
Every function takes the catalogue sources like :func:`~medigan_iso.catalogue.load_catalogue`
(``config=``, ``home=``, ``offline=``) or an already loaded ``catalogue=`` to skip reloading. It never
prints and never runs model code.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from medigan_iso.catalogue import Catalogue, ConfigSource, ModelEntry, load_catalogue, thaw
from medigan_iso.search import OPERATORS, find_matching_models, rank_models

__all__ = ["ModelInfo", "SearchResult", "info", "list_models", "search"]


def _strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(str(v) for v in value if v is not None)
    return (str(value),)


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


@dataclass(frozen=True)
class ModelInfo:
    """What a user wants to know about one model before generating with it."""

    model_id: str
    title: str
    type: str | None
    modality: tuple[str, ...]
    organ: tuple[str, ...]
    generates: tuple[str, ...]
    dataset: tuple[str, ...]
    tags: tuple[str, ...]
    license: str | None
    year: str | None
    image_size: tuple[int, ...]
    input_latent_vector_size: int | None
    package_name: str
    package_link: str
    dependencies: tuple[str, ...]
    publication: str | None
    doi: tuple[str, ...]
    comment: str
    source: str
    is_bundled: bool
    package_sha256: str | None
    custom_defaults: Mapping[str, Any] = field(hash=False, repr=False)
    performance: Mapping[str, Any] = field(hash=False, repr=False)

    @classmethod
    def from_entry(cls, entry: ModelEntry) -> ModelInfo:
        selection = entry.selection
        description = entry.description
        execution = entry.raw.get("execution") or {}
        sizes = tuple(_int_or_none(v) for v in execution.get("image_size") or ())
        year = selection.get("year")
        return cls(
            model_id=entry.model_id,
            title=entry.title,
            type=str(selection["type"]) if selection.get("type") else None,
            modality=_strings(selection.get("modality")),
            organ=_strings(selection.get("organ")),
            generates=_strings(selection.get("generates")),
            dataset=_strings(selection.get("dataset")),
            tags=_strings(selection.get("tags")),
            license=str(selection["license"]) if selection.get("license") else None,
            year=str(year) if year is not None else None,
            image_size=tuple(s for s in sizes if s is not None),
            input_latent_vector_size=entry.input_latent_vector_size,
            package_name=entry.package_name,
            package_link=entry.package_link,
            dependencies=entry.dependencies,
            publication=str(description["publication"]) if description.get("publication") else None,
            doi=_strings(description.get("doi")),
            comment=str(description.get("comment") or ""),
            source=entry.source,
            is_bundled=entry.is_bundled,
            package_sha256=entry.package_sha256,
            custom_defaults=entry.custom_defaults,
            performance=selection.get("performance") or {},
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (``--json`` output)."""
        return {name: thaw(getattr(self, name)) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class SearchResult:
    """One model found by :func:`search`: which terms it matched and, when ranked, its metric value."""

    model_id: str
    title: str
    matched_terms: tuple[str, ...]
    metric: str | None = None
    metric_value: float | int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "title": self.title,
            "matched_terms": list(self.matched_terms),
            "metric": self.metric,
            "metric_value": self.metric_value,
        }


def _catalogue(
    catalogue: Catalogue | None,
    config: ConfigSource | Sequence[ConfigSource] | None,
    home: str | os.PathLike[str] | None,
    offline: bool | None,
) -> Catalogue:
    return catalogue if catalogue is not None else load_catalogue(config, home=home, offline=offline)


def search(
    terms: str | Iterable[Any],
    *,
    operator: str = "AND",
    match_keys: bool = False,
    case_sensitive: bool = False,
    rank_by: str | None = None,
    order: str = "asc",
    catalogue: Catalogue | None = None,
    config: ConfigSource | Sequence[ConfigSource] | None = None,
    home: str | os.PathLike[str] | None = None,
    offline: bool | None = None,
) -> list[SearchResult]:
    """Models whose selection metadata matches ``terms`` (medigan's semantics), in catalogue order.

    ``operator`` is AND, OR or XOR (case-insensitive here; anything else is a ValueError). With
    ``rank_by`` (a dotted metric under ``selection.performance``, e.g. ``"FID"`` or
    ``"turing_test.AUC"``) only models with a numeric value are returned, sorted by ``order``.
    """
    op = operator.upper() if isinstance(operator, str) else operator
    if op not in OPERATORS:
        raise ValueError(f"operator must be one of {', '.join(OPERATORS)}, not {operator!r}")
    cat = _catalogue(catalogue, config, home, offline)
    matches = find_matching_models(
        cat, terms, operator=op, match_keys=match_keys, case_sensitive=case_sensitive
    )
    if rank_by is None:
        return [
            SearchResult(
                model_id=m.model_id, title=cat.resolve(m.model_id).title, matched_terms=m.matched_terms
            )
            for m in matches
        ]
    by_id = {m.model_id: m for m in matches}
    ranked = rank_models(cat, model_ids=list(by_id), metric=rank_by, order=order) if by_id else []
    return [
        SearchResult(
            model_id=item["model_id"],
            title=cat.resolve(item["model_id"]).title,
            matched_terms=by_id[item["model_id"]].matched_terms,
            metric=rank_by,
            metric_value=item[rank_by],
        )
        for item in ranked
    ]


def info(
    model_id: str | int,
    *,
    catalogue: Catalogue | None = None,
    config: ConfigSource | Sequence[ConfigSource] | None = None,
    home: str | os.PathLike[str] | None = None,
    offline: bool | None = None,
) -> ModelInfo:
    """The :class:`ModelInfo` of a full or abbreviated id; UnknownModelError lists close matches."""
    return ModelInfo.from_entry(_catalogue(catalogue, config, home, offline).resolve(model_id))


def list_models(
    *,
    catalogue: Catalogue | None = None,
    config: ConfigSource | Sequence[ConfigSource] | None = None,
    home: str | os.PathLike[str] | None = None,
    offline: bool | None = None,
) -> list[str]:
    """Full model ids in catalogue order."""
    return list(_catalogue(catalogue, config, home, offline).ids())
