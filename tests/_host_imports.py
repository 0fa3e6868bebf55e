"""Frameworks a test module imported into the pytest process on purpose (torch, for the torch tests).

Tests that check the host never imported torch or TensorFlow while generating consult
:func:`host_imported`, which leaves these out: without it such a check fails whenever the torch tests
happened to run first in the same process.
"""

from __future__ import annotations

import sys

IMPORTED_BY_TESTS: set[str] = set()


def host_imported(*names: str) -> list[str]:
    """The ``names`` present in ``sys.modules`` that no test imported on purpose."""
    return [name for name in names if name in sys.modules and name not in IMPORTED_BY_TESTS]
