"""``medigan-iso explore``: a local web app to browse the catalogue, read model cards and see live samples.

Needs the ``explore`` extra (``pip install 'medigan-iso[explore]'``: Starlette, Jinja2, uvicorn); nothing
else in medigan_iso imports this package, so the library works without them.

- :mod:`~medigan_iso.explore.service`: search rows, cards, request validation, grids and zips, through one
  :class:`~medigan_iso.generation.Session` (no web framework there);
- :mod:`~medigan_iso.explore.security`: token, Host check, CSRF, size caps (an ASGI middleware);
- :mod:`~medigan_iso.explore.app`: routes and templates;
- :mod:`~medigan_iso.explore.server`: binding the socket and running uvicorn.
"""

from __future__ import annotations

from medigan_iso.explore.app import create_app
from medigan_iso.explore.security import AccessPolicy
from medigan_iso.explore.server import bind, run
from medigan_iso.explore.service import Explorer

__all__ = ["AccessPolicy", "Explorer", "bind", "create_app", "run"]
