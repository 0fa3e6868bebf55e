"""The as-of date of a model's dependencies: resolution excludes distributions uploaded after it.

A 2021 model resolved against today's index gets a stack its code never met (numpy 2, torch 2.x, a
setuptools without ``pkg_resources``). Its date comes from, first found wins:

1. an explicit override (``--as-of DATE|latest``, ``as_of=``);
2. the entry's ``execution.dependencies_as_of`` (ISO date, or ``latest``);
3. the newest timestamp inside the fetched package archive (when the caller has the package);
4. ``description.provided_date``, parsed leniently ('12th May 2021', 'Dec 2021', 'August 2022',
   '11.2023', '2022') and taken at the end of the named period;
5. ``selection.year`` (end of that year).

With none, no cut-off applies (the index as it is when resolving), with a warning. The date is an input
of the resolution and of the env key, and is recorded in the stamp.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

__all__ = ["LATEST", "AsOf", "PlannedAsOf", "as_of_for", "parse_as_of", "parse_loose_date", "planned_as_of"]

LATEST = "latest"
# setuptools 81 (uploaded 2026-02-06) dropped pkg_resources; envs of an earlier date get setuptools of
# their era, which torch 1.x, pytorch-lightning 1.x, torchmetrics 0.6 and munch 2.5 import at run time.
SETUPTOOLS_WITHOUT_PKG_RESOURCES = date(2026, 2, 6)

_MONTHS = {name.lower(): i for i, name in enumerate(calendar.month_name) if name}
_MONTHS.update({name.lower(): i for i, name in enumerate(calendar.month_abbr) if name})
_MONTHS["sept"] = 9


@dataclass(frozen=True)
class AsOf:
    """A cut-off date (None: no cut-off) and where it came from, for messages and the stamp."""

    date: date | None
    source: str

    @property
    def label(self) -> str:
        return self.date.isoformat() if self.date else LATEST

    @property
    def cutoff(self) -> str | None:
        """uv's ``--exclude-newer`` value: the end of the day, UTC."""
        return f"{self.date.isoformat()}T23:59:59Z" if self.date else None

    def describe(self) -> str:
        return f"{self.label} (from {self.source})"

    def as_json(self) -> dict[str, Any]:
        return {"date": self.label, "source": self.source}


NO_DATE = AsOf(None, "not given")


def _end_of_month(year: int, month: int) -> date:
    return date(year, month, calendar.monthrange(year, month)[1])


def _valid_year(year: int) -> bool:
    return 1990 <= year <= 2100


def parse_loose_date(text: object) -> date | None:
    """A date from free text as upstream writes it, at the end of the period it names; None if none.

    '2021-05-12', '12th May 2021', 'May 12, 2021', '12.05.2021' -> that day; 'Dec 2021', 'August 2022',
    '11.2023', '2023-11' -> the month's last day; '2022' -> 31 December.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        return date(text, 12, 31) if _valid_year(text) else None
    if not isinstance(text, str):
        return None
    s = text.strip().lower()
    if not s:
        return None
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", s):
            return date.fromisoformat(s)
        m = re.fullmatch(r"(\d{1,2})[./-](\d{1,2})[./-](\d{4})", s)  # day.month.year
        if m:
            return date(int(m[3]), int(m[2]), int(m[1]))
        m = re.fullmatch(r"(\d{4})[./-](\d{1,2})", s) or None
        if m:
            return _end_of_month(int(m[1]), int(m[2]))
        m = re.fullmatch(r"(\d{1,2})[./-](\d{4})", s)
        if m:
            return _end_of_month(int(m[2]), int(m[1]))
        m = re.fullmatch(r"(\d{4})", s)
        if m:
            return date(int(m[1]), 12, 31) if _valid_year(int(m[1])) else None
        words = re.findall(r"[a-z]+|\d+", s)
        months = [_MONTHS[w] for w in words if w in _MONTHS]
        years = [int(w) for w in words if w.isdigit() and len(w) == 4 and _valid_year(int(w))]
        days = [int(w) for w in words if w.isdigit() and len(w) <= 2]
        if len(months) == 1 and len(years) == 1:
            if len(days) == 1:
                return date(years[0], months[0], days[0])
            return _end_of_month(years[0], months[0])
        if not months and len(years) == 1:
            return date(years[0], 12, 31)
    except ValueError:  # 31 February and the like
        return None
    return None


def parse_as_of(value: str | date | None, *, source: str) -> AsOf | None:
    """An override or an ``dependencies_as_of`` value: a date, ``latest``, or None (not given)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return AsOf(value.astimezone(timezone.utc).date(), source)
    if isinstance(value, date):
        return AsOf(value, source)
    if value.strip().lower() == LATEST:
        return AsOf(None, source)
    parsed = parse_loose_date(value)
    if parsed is None:
        raise ValueError(f"{source}: {value!r} is not a date (use YYYY-MM-DD or 'latest')")
    return AsOf(parsed, source)


def as_of_for(
    spec: Any,
    *,
    override: str | date | None = None,
    package_date: date | None = None,
) -> AsOf:
    """The as-of date of ``spec`` (a catalogue entry, an EnvSpec, or anything with those attributes)."""
    chosen = parse_as_of(override, source="--as-of")
    if chosen is not None:
        return chosen
    explicit = getattr(spec, "dependencies_as_of", None) or getattr(spec, "as_of", None)
    chosen = parse_as_of(explicit, source="execution.dependencies_as_of") if explicit else None
    if chosen is not None:
        return chosen
    if package_date is not None:
        return AsOf(package_date, PACKAGE_DATE_SOURCE)
    description = getattr(spec, "description", None) or {}
    provided = description.get("provided_date") if hasattr(description, "get") else None
    parsed = parse_loose_date(provided)
    if parsed is not None:
        return AsOf(parsed, f"description.provided_date {str(provided)[:40]!r}")
    selection = getattr(spec, "selection", None) or {}
    year = selection.get("year") if hasattr(selection, "get") else None
    parsed = parse_loose_date(year if isinstance(year, int) else str(year or "").strip()[:4])
    if parsed is not None and re.fullmatch(r"\d{4}", str(year).strip()):
        return AsOf(parsed, f"selection.year {year}")
    return AsOf(None, "no date in the entry")


PACKAGE_DATE_SOURCE = "the newest file in the model package"


@dataclass(frozen=True)
class PlannedAsOf:
    """The as-of date a build of an entry would use now (``as_of``), and whether fetching its package
    first may still replace it (``pending``: the package is not here and no explicit date outranks it)."""

    as_of: AsOf
    pending: bool = False

    def describe(self) -> str:
        text = self.as_of.describe()
        if self.pending:
            text += (
                "; the package is not fetched yet: a build uses its newest file date instead, if it has one "
                "(`medigan-iso fetch MODEL` shows it)"
            )
        return text


def planned_as_of(entry: Any, *, override: str | date | None = None, home: Any = None) -> PlannedAsOf:
    """The as-of date and source ``generate`` and ``env build`` will use for ``entry``, without fetching:
    :func:`as_of_for` with the package date the store (or a local archive) already knows.

    ``info``, the explorer and ``env`` commands show this, so what they show is what a build uses.
    """
    from medigan_iso.packages import stored_package_date  # envs sits above packages

    stored = stored_package_date(entry, home=home) if getattr(entry, "package_link", None) else None
    dated = as_of_for(entry, override=override, package_date=stored.date if stored else None)
    outranked = (
        dated.source in ("--as-of", "execution.dependencies_as_of") or dated.source == PACKAGE_DATE_SOURCE
    )
    return PlannedAsOf(dated, pending=stored is not None and not stored.known and not outranked)
