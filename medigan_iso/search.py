"""medigan's search and ranking over the ``selection`` part of catalogue entries, crashes fixed.

This module owns the semantics documented in ``MEDIGAN_API.md`` (whole-value matching, optional key
matching, AND/OR/XOR, case sensitivity, dotted key-value search, dotted metric ranking with list
reduction). It works on a :class:`~medigan_iso.catalogue.Catalogue` and returns plain values; it never
loads catalogues, touches the network or prints.

Where medigan 1.0 crashes or surprises, this module does the sensible thing (each is tested):

- ``values`` given as one string is one term (medigan searched its characters);
- terms and values are compared as strings in case-sensitive mode too (medigan never matched an int term);
- ``get_models_by_key_value_pair`` accepts a non-string value for a list-valued key (medigan crashed);
- ranking casts numeric strings (``"0.790"``), skips non-numeric values with a warning instead of
  crashing on mixed types, and accepts abbreviated ids (``"00002"``, ``4``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from medigan_iso.catalogue import Catalogue, thaw
from medigan_iso.untrusted import get_logger

__all__ = [
    "OPERATORS",
    "ORDERS",
    "MatchCandidate",
    "MatchedEntry",
    "deep_get",
    "find_matching_models",
    "find_models_and_rank",
    "models_by_key_value",
    "rank_models",
]

logger = get_logger(__name__)

OPERATORS = ("AND", "OR", "XOR")
ORDERS = ("asc", "desc")
PERFORMANCE_KEY = "performance"
_MISSING = object()


@dataclass(frozen=True)
class MatchedEntry:
    """One match: ``key`` is the selection key (``"key"`` when a key itself matched), ``value`` what was
    compared, ``matching_element`` the term it equals."""

    key: str
    value: Any
    matching_element: str


@dataclass(frozen=True)
class MatchCandidate:
    """A model evaluated against search terms (medigan's ``ModelMatchCandidate``)."""

    model_id: str
    target_values: tuple[str, ...]
    target_values_operator: str
    is_case_sensitive: bool
    are_keys_also_matched: bool
    matched_entries: tuple[MatchedEntry, ...]
    is_match: bool

    def get_all_matching_elements(self) -> list[str]:
        return [entry.matching_element for entry in self.matched_entries]

    @property
    def matched_terms(self) -> tuple[str, ...]:
        """The distinct terms this model matched, in the order the caller gave them."""
        found = set(self.get_all_matching_elements())
        return tuple(dict.fromkeys(t for t in self.target_values if t in found))

    def __len__(self) -> int:
        return len(self.matched_entries)


def deep_get(mapping: Any, dotted_key: str, default: Any = None) -> Any:
    """``mapping["a"]["b"]`` for ``"a.b"``; ``default`` when a part is missing or not a mapping."""
    current = mapping
    for part in dotted_key.split("."):
        if not isinstance(current, Mapping) or part not in current:
            return default
        current = current[part]
    return current


def _as_text(value: Any) -> str:
    # medigan compares str(value); nested containers stringify as the JSON-loaded dict/list would.
    return str(thaw(value)) if isinstance(value, (Mapping, list, tuple)) else str(value)


def _terms(values: str | Iterable[Any], *, case_sensitive: bool) -> tuple[str, ...]:
    items = [values] if isinstance(values, str) else list(values)
    if not items:
        raise ValueError("search needs at least one term, e.g. ['mammography', 'dcgan']")
    return tuple(_as_text(v) if case_sensitive else _as_text(v).lower() for v in items)


def _walk(
    selection: Mapping[str, Any],
    terms: frozenset[str],
    *,
    match_keys: bool,
    case_sensitive: bool,
    found: list[MatchedEntry],
) -> None:
    for key, value in selection.items():
        if match_keys:
            compared_key = key if case_sensitive else key.lower()
            if compared_key in terms:
                found.append(MatchedEntry(key="key", value=key, matching_element=compared_key))
        if isinstance(value, Mapping):
            _walk(value, terms, match_keys=match_keys, case_sensitive=case_sensitive, found=found)
            continue
        items = value if isinstance(value, (list, tuple)) else (value,)
        for item in items:
            text = _as_text(item) if case_sensitive else _as_text(item).lower()
            if text in terms:
                found.append(MatchedEntry(key=key, value=text, matching_element=text))


def _is_match(matched: Sequence[MatchedEntry], terms: tuple[str, ...], operator: str) -> bool:
    if not matched:
        return False
    elements = {m.matching_element for m in matched}
    if operator == "OR":
        return True
    if operator == "AND":
        return all(term in elements for term in terms)
    if operator == "XOR":
        return len(elements.intersection(terms)) == 1
    return False


def find_matching_models(
    catalogue: Catalogue,
    values: str | Iterable[Any],
    *,
    operator: str = "AND",
    match_keys: bool = False,
    case_sensitive: bool = False,
) -> list[MatchCandidate]:
    """Models whose ``selection`` matches the terms, in catalogue order (medigan's semantics).

    Every scalar and every list item is compared as a whole string with each term (``"mass"`` does not
    match ``"mass roi"``); dicts recurse; with ``match_keys`` keys at any depth count as values too.
    AND: every term matched; OR: at least one; XOR: exactly one distinct term; any other operator
    never matches (as in medigan; :func:`medigan_iso.search` refuses unknown operators instead).
    """
    terms = _terms(values, case_sensitive=case_sensitive)
    term_set = frozenset(terms)
    candidates = []
    for entry in catalogue:
        found: list[MatchedEntry] = []
        _walk(entry.selection, term_set, match_keys=match_keys, case_sensitive=case_sensitive, found=found)
        is_match = _is_match(found, terms, operator)
        if is_match:
            candidates.append(
                MatchCandidate(
                    model_id=entry.model_id,
                    target_values=terms,
                    target_values_operator=operator,
                    is_case_sensitive=case_sensitive,
                    are_keys_also_matched=match_keys,
                    matched_entries=tuple(found),
                    is_match=True,
                )
            )
    return candidates


def models_by_key_value(
    catalogue: Catalogue, key: str, value: Any, *, case_sensitive: bool = False
) -> list[dict[str, Any]]:
    """``[{"model_id": id, key: value}]`` for models whose ``selection.<key>`` (dotted) equals ``value``.

    A list value matches when any item equals ``value``; scalars compare as strings; dicts and missing
    keys never match.
    """
    wanted = _as_text(value)
    echo = value
    results = []
    for entry in catalogue:
        found = deep_get(entry.selection, key, _MISSING)
        if found is _MISSING or found is None or isinstance(found, Mapping):
            continue
        if isinstance(found, (list, tuple)) and not case_sensitive and isinstance(echo, str):
            # medigan lower-cases its value1 variable here and echoes that from then on; keep its output
            echo = echo.lower()
        items = found if isinstance(found, (list, tuple)) else (found,)
        for item in items:
            text = _as_text(item)
            if text == wanted or (not case_sensitive and text.lower() == wanted.lower()):
                results.append({"model_id": entry.model_id, key: echo})
                break
    return results


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _check_order(order: str) -> str:
    normalised = order.lower() if isinstance(order, str) else order
    if normalised not in ORDERS:
        raise ValueError(f"order must be 'asc' or 'desc', not {order!r}")
    return str(normalised)


def rank_models(
    catalogue: Catalogue,
    *,
    model_ids: Iterable[str | int] | None = None,
    metric: str = "SSIM",
    order: str = "asc",
) -> list[dict[str, Any]]:
    """``[{"model_id": id, metric: number}]`` sorted by ``selection.performance.<metric>`` (dotted).

    ``model_ids`` (full or abbreviated; None = all, empty = none) restricts the models, which keep
    catalogue order before the stable sort. Models without the metric are skipped; a list value reduces
    to its min (asc) or max (desc); numeric strings are cast; other values are skipped with a warning.
    """
    direction = _check_order(order)
    if model_ids is None:
        wanted = None
    else:
        wanted = {catalogue.resolve_id(model_id) for model_id in model_ids}
        if not wanted:
            return []
    ranked: list[dict[str, Any]] = []
    for entry in catalogue:
        if wanted is not None and entry.model_id not in wanted:
            continue
        raw = deep_get(entry.selection.get(PERFORMANCE_KEY), metric)
        if raw is None:
            continue
        if isinstance(raw, (list, tuple)):
            numbers = [_number(item) for item in raw]
            usable = [n for n in numbers if n is not None]
            if len(usable) != len(numbers):
                logger.warning(
                    "ranking by %s: model %s has non-numeric items in %r; ignoring them",
                    metric,
                    entry.model_id,
                    thaw(raw),
                )
            if not usable:
                continue
            number: float | int | None = min(usable) if direction == "asc" else max(usable)
        else:
            number = _number(raw)
            if number is None:
                logger.warning(
                    "ranking by %s: skipping model %s, whose value %r is not a number",
                    metric,
                    entry.model_id,
                    thaw(raw),
                )
                continue
        ranked.append({"model_id": entry.model_id, metric: number})
    ranked.sort(key=lambda item: item[metric], reverse=direction == "desc")
    return ranked


def find_models_and_rank(
    catalogue: Catalogue,
    values: str | Iterable[Any],
    *,
    operator: str = "AND",
    match_keys: bool = False,
    case_sensitive: bool = False,
    metric: str = "SSIM",
    order: str = "asc",
) -> list[dict[str, Any]]:
    """Search, then rank the matching models by ``metric`` (medigan's ``find_models_and_rank``)."""
    matches = find_matching_models(
        catalogue, values, operator=operator, match_keys=match_keys, case_sensitive=case_sensitive
    )
    if not matches:
        logger.warning("no model matches %r (operator %s); nothing to rank", values, operator)
        return []
    ranked = rank_models(catalogue, model_ids=[m.model_id for m in matches], metric=metric, order=order)
    if not ranked:
        logger.warning(
            "none of the %d matching models has a numeric %s; choose another metric", len(matches), metric
        )
    return ranked
