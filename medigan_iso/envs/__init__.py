"""Model environments: one virtualenv per resolved dependency set, built atomically and reused.

This package owns every call to uv, pip and virtualenv in medigan_iso (no other module runs them) and the
``envs/`` part of the cache layout. It never imports model code and never starts a runner.

How an env comes to be (see DESIGN.md section 5 and README "Model environments"):

1. *Requirements*: a catalogue entry's ``dependencies`` (known junk names such as ``Path``, ``Union`` and
   ``pathlib`` are dropped with a warning) plus the runner's own needs (:data:`RUNNER_REQUIREMENTS`).
2. *Interpreter*: the host's own interpreter, or, when ``python_requires`` excludes it, the one uv's
   discovery (``uv python find``) returns.
3. *Lock*: ``uv pip compile --generate-hashes`` for that interpreter, cached under ``envs/.resolved`` by
   (requirements, interpreter, index settings), so a later call does not resolve again; an entry's
   ``requirements_lock`` is used as given.
4. *Key*: sha256 of (lock, interpreter version, platform, runner protocol version, builder). Equal locks
   share one env.
5. *Build*: under a per-key file lock, in ``envs/.tmp-<key>-*`` (same filesystem as the uv cache, so uv
   hardlinks files), ``uv venv --relocatable`` + ``uv pip install --require-hashes``; bytecode is compiled
   once into uv's unpacked-wheel cache and hardlinked into each env; the runner package is copied in; the
   stamp is written last; the directory is renamed into place. A killed build leaves only a temp dir that
   the next build of that key (or :func:`prune_envs`) removes.

When uv is missing or cannot start, virtualenv + pip build the same lock into an env with the same stamp
(``builder="virtualenv"``), after one warning about the cost.

Modules, one job each: :mod:`.spec` (spec and lock inputs, the env key), :mod:`.index` (index settings),
:mod:`.tools` (the subprocess boundary), :mod:`.interpreters` (discovery), :mod:`.resolution`,
:mod:`.building`, :mod:`.store` (stamps, listing, pruning) and :mod:`.ensure` (reuse or build).
"""

from medigan_iso.envs.asof import AsOf, as_of_for, parse_loose_date
from medigan_iso.envs.building import runner_sha256
from medigan_iso.envs.check import ImportCheck, check_env, check_imports, failed_checks
from medigan_iso.envs.ensure import BUILDERS, ensure_env
from medigan_iso.envs.index import IndexSettings, index_settings
from medigan_iso.envs.resolution import Resolution, resolve
from medigan_iso.envs.spec import (
    JUNK_REQUIREMENT_NAMES,
    RUNNER_REQUIREMENTS,
    EnvSpec,
    Interpreter,
    ModelEntryLike,
    SpecLike,
)
from medigan_iso.envs.store import (
    EnvInfo,
    ModelEnv,
    PruneReport,
    diff_stamps,
    list_envs,
    prune_envs,
    remove_env,
)
from medigan_iso.envs.tools import uv_version

__all__ = [
    "BUILDERS",
    "JUNK_REQUIREMENT_NAMES",
    "RUNNER_REQUIREMENTS",
    "AsOf",
    "EnvInfo",
    "EnvSpec",
    "ImportCheck",
    "IndexSettings",
    "Interpreter",
    "ModelEntryLike",
    "ModelEnv",
    "PruneReport",
    "Resolution",
    "SpecLike",
    "as_of_for",
    "check_env",
    "check_imports",
    "diff_stamps",
    "ensure_env",
    "failed_checks",
    "index_settings",
    "list_envs",
    "parse_loose_date",
    "prune_envs",
    "remove_env",
    "resolve",
    "runner_sha256",
    "uv_version",
]
