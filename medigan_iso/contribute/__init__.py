"""Contributing a model: check, package, test in isolation, deposit on Zenodo, open the catalogue issue.

The safe version of medigan 1.0's contribution workflow. Modules, one step each:
:mod:`~medigan_iso.contribute.entry` (the entry and its checks), :mod:`~medigan_iso.contribute.packaging`
(deterministic zip and digests), :mod:`~medigan_iso.contribute.testing` (the model run from that zip in
its own env, sandboxed), :mod:`~medigan_iso.contribute.remote` (API roots, tokens, the HTTP error
boundary), :mod:`~medigan_iso.contribute.zenodo` and :mod:`~medigan_iso.contribute.github` (the two
services), :mod:`~medigan_iso.contribute.flow` (the order that never leaves anything half-published) and
:mod:`~medigan_iso.contribute.facade` (medigan's eight ``Generators`` methods). A client of
:class:`~medigan_iso.generation.Session`; it never prints (the CLI does).
"""

from __future__ import annotations

from medigan_iso.contribute.facade import ContributorMethods, ModelContributor
from medigan_iso.contribute.flow import Contribution, contribute_model
from medigan_iso.contribute.packaging import BuiltPackage, build_package
from medigan_iso.contribute.remote import HttpOptions, Token

__all__ = [
    "BuiltPackage",
    "Contribution",
    "ContributorMethods",
    "HttpOptions",
    "ModelContributor",
    "Token",
    "build_package",
    "contribute_model",
]
