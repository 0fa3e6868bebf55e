"""What the tests need from Python 3.10+ on the Python 3.9 host (tox env py39)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any


def zip_strict(*iterables: Iterable[Any]) -> Iterator[tuple[Any, ...]]:
    """zip(..., strict=True) of Python 3.10: a length mismatch fails the test instead of truncating."""
    lists = [list(it) for it in iterables]
    lengths = [len(x) for x in lists]
    assert len(set(lengths)) <= 1, f"zip_strict: lengths differ: {lengths}"
    return zip(*lists)
