"""medigan's ``Generators`` facade: same method names, parameters and defaults, on medigan_iso's catalogue.

This module owns the medigan-compatible surface: catalogue, search and rank methods, and the generation
methods, which run every model in its own env through one :class:`~medigan_iso.generation.Session` per
``Generators`` (so repeated calls and ``get_generate_function`` keep the model's runner and weights warm;
``close()`` or ``with Generators() as g:`` stops them). Every id-taking method accepts abbreviated ids
(``"00002"``, ``"03"``, ``4``) and raises UnknownModelError for unknown ones. Differences from
medigan 1.0, all deliberate fixes:

- ``get_selection_criteria_by_ids(None)`` returns every model (medigan crashed);
- ``get_selection_values_for_key`` takes dotted keys for one model too and gives None where a model lacks
  the key (medigan raised KeyError);
- ``is_model_metadata_valid`` checks the JSON Schema (medigan's ``Path()`` turned every https link into
  ``https:/`` and rejected it); ``metadata`` may be ``{model_id: entry}`` (medigan's shape) or the entry;
- ``add_model_to_config(store_new_config=True)`` stores the entry in
  ``<cache>/catalogues/local_models.json``, a source every later ``load_catalogue`` reads, instead of
  rewriting a ``config/global.json`` in the working directory;
- ranking and key-value search behave as :mod:`medigan_iso.search` documents;
- ``install_dependencies`` is accepted everywhere and does not decide anything: a model's isolated env is
  built on first use whatever it says, so medigan's quick start (``Generators().generate(model_id="00001",
  num_samples=10)``, with medigan's default ``install_dependencies=False``) works as written. In medigan the
  flag kept pip away from *your* interpreter; medigan_iso never installs into your interpreter, so that
  reason is gone. A deployment that must never build at run time sets ``MEDIGAN_ISO_BUILD=never`` once and
  then gets EnvNotBuiltError naming the command that builds the env;
- ``generate(save_images=True)`` saves in batches of 32 named ``batch_<n>_<file>`` without medigan's
  zero-sample last batch when ``num_samples`` is a multiple of 32;
- ``find_models_rank_and_generate`` raises CatalogueError when nothing matches (medigan raised IndexError).
"""

from __future__ import annotations

import datetime
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlparse

from medigan_iso.catalogue import (
    LOCAL_CATALOGUE_NAME,
    Catalogue,
    ConfigSource,
    ModelEntry,
    load_catalogue,
    store_local_entry,
    thaw,
    validate_catalogue,
)
from medigan_iso.contribute import ContributorMethods
from medigan_iso.errors import CatalogueError, CatalogueValidationError, ConfigKeyError
from medigan_iso.generation import Session
from medigan_iso.paths import cache_layout
from medigan_iso.sandbox import SandboxConfig
from medigan_iso.search import (
    MatchCandidate,
    deep_get,
    find_matching_models,
    models_by_key_value,
    rank_models,
)
from medigan_iso.search import find_models_and_rank as _find_models_and_rank
from medigan_iso.untrusted import get_logger

__all__ = ["Generators"]

logger = get_logger(__name__)

_MISSING = object()


class Generators(ContributorMethods):
    """medigan's entry point. ``config=`` (path, URL, dict or list) chooses the catalogue sources; or
    pass a loaded :class:`~medigan_iso.catalogue.Catalogue` as ``config_manager``. ``sandbox=`` (off,
    auto, require) and ``strict=`` (pinned packages, wheels-only envs) apply to every model it runs."""

    def __init__(
        self,
        config_manager: Catalogue | None = None,
        model_selector: Any = None,
        model_executors: list[Any] | None = None,
        model_contributors: list[Any] | None = None,
        initialize_all_models: bool = False,
        *,
        config: ConfigSource | Sequence[ConfigSource] | None = None,
        home: str | os.PathLike[str] | None = None,
        offline: bool | None = None,
        sandbox: str | SandboxConfig | None = None,
        strict: bool = False,
    ) -> None:
        if config_manager is not None and not isinstance(config_manager, Catalogue):
            raise TypeError(
                f"config_manager must be a medigan_iso Catalogue (from load_catalogue), not "
                f"{type(config_manager).__name__}; pass catalogue sources as config= instead"
            )
        self.home = home
        self.catalogue: Catalogue = (
            config_manager
            if config_manager is not None
            else load_catalogue(config, home=home, offline=offline)
        )
        self.model_selector = model_selector
        self.model_executors: list[Any] = list(model_executors or [])
        self.model_contributors: list[Any] = list(model_contributors or [])
        self.initialize_all_models = initialize_all_models
        self._offline = offline
        self._sandbox = sandbox
        self._strict = strict
        self._session: Session | None = None
        self._session_lock = threading.Lock()
        if initialize_all_models:
            # medigan imported every model up front; here that means fetching every package and
            # building (or reusing) every env, without starting runners.
            for model_id in self.catalogue.ids():
                self.session.prepare(model_id)

    @property
    def session(self) -> Session:
        """The Session that keeps this facade's runners warm (created on first use)."""
        with self._session_lock:
            if self._session is None:
                self._session = Session(
                    config=self.catalogue,
                    home=self.home,
                    offline=self._offline,
                    sandbox=self._sandbox,
                    strict=self._strict,
                )
            return self._session

    def close(self) -> None:
        """Stop every runner this facade started."""
        with self._session_lock:
            session, self._session = self._session, None
        if session is not None:
            session.close()

    def __enter__(self) -> Generators:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Generators(model_ids={list(self.catalogue.ids())})"

    # --- catalogue -------------------------------------------------------------------------------

    def list_models(self) -> list[str]:
        """Full model ids in catalogue order."""
        return list(self.catalogue.ids())

    def get_config_by_id(self, model_id: str | int, config_key: str | None = None) -> Any:
        """The entry (or the part at a dotted ``config_key`` such as ``"execution.generate_method.name"``),
        as a fresh plain copy."""
        entry = self.catalogue.resolve(model_id)
        if config_key is None:
            return thaw(entry.raw)
        value = deep_get(entry.raw, config_key, _MISSING)
        if value is _MISSING:
            raise ConfigKeyError(entry.model_id, config_key, _available(entry.raw, config_key))
        return thaw(value)

    def is_model_metadata_valid(
        self, model_id: str, metadata: Mapping[str, Any], is_local_model: bool = True
    ) -> bool:
        """Whether ``metadata`` is a valid entry (lenient JSON Schema) and its package link fits: an existing
        local file or folder when ``is_local_model``, else a URL. Reasons are logged, as in medigan."""
        entry = _entry_of(model_id, metadata)
        if entry is None:
            logger.info("metadata for model %r is not valid: no entry under that id", model_id)
            return False
        try:
            validate_catalogue({model_id: entry}, source=f"metadata of {model_id}")
        except CatalogueValidationError as exc:
            logger.info("metadata for model %r is not valid: %s", model_id, exc.message)
            return False
        link = str(entry["execution"]["package_link"])
        if is_local_model:
            if not Path(link).expanduser().exists():
                logger.info("metadata for model %r is not valid: %s does not exist", model_id, link)
                return False
        else:
            parsed = urlparse(link)
            if not (parsed.scheme and parsed.netloc):
                logger.info("metadata for model %r is not valid: %s is not a URL", model_id, link)
                return False
        return True

    def add_model_to_config(
        self,
        model_id: str,
        metadata: Mapping[str, Any],
        is_local_model: bool | None = None,
        overwrite_existing_metadata: bool = False,
        store_new_config: bool = True,
    ) -> bool:
        """Add (or with ``overwrite_existing_metadata`` replace) a model entry; return whether it was added.

        ``is_local_model=None`` means: local when the package link is not a URL.
        """
        entry = _entry_of(model_id, metadata)
        if is_local_model is None:
            link = str(deep_get(entry, "execution.package_link", ""))
            is_local_model = not urlparse(link).scheme.startswith("http")
        if entry is None or not self.is_model_metadata_valid(
            model_id, {model_id: entry}, is_local_model=is_local_model
        ):
            logger.warning("%s: metadata was not added: it is not valid (see the log above)", model_id)
            return False
        if model_id in self.catalogue.ids() and not overwrite_existing_metadata:
            logger.warning(
                "%s: metadata was not added: the catalogue already has it and "
                "overwrite_existing_metadata=False",
                model_id,
            )
            return False
        entry = thaw(entry)
        local_link = Path(str(entry["execution"]["package_link"])).expanduser()
        if is_local_model and not local_link.is_absolute():
            # the stored catalogue lives elsewhere: pin the link to what it meant here and now
            entry["execution"]["package_link"] = str(local_link.resolve())
        local = cache_layout(self.home).catalogues / LOCAL_CATALOGUE_NAME
        catalogue_dir = None
        if store_new_config:
            local = store_local_entry(model_id, entry, home=self.home)  # file lock, atomic replace
            catalogue_dir = local.parent
            logger.info("%s: metadata added and stored in %s", model_id, local)
        source = str(local) if store_new_config else "<add_model_to_config>"
        self.catalogue = self.catalogue.with_entry(
            ModelEntry.from_raw(model_id, entry, source=source, catalogue_dir=catalogue_dir)
        )
        return True

    # --- selection -------------------------------------------------------------------------------

    def get_selection_criteria_by_id(self, model_id: str | int, is_model_id_removed: bool = True) -> Any:
        """The model's ``selection`` dict, or ``{"model_id": id, "selection": ...}``."""
        entry = self.catalogue.resolve(model_id)
        if is_model_id_removed:
            return thaw(entry.selection)
        return {"model_id": entry.model_id, "selection": thaw(entry.selection)}

    def get_selection_criteria_by_ids(
        self, model_ids: Sequence[str | int] | None = None, are_model_ids_removed: bool = True
    ) -> list[Any]:
        """Selection dicts of ``model_ids`` (None = every model), in catalogue order."""
        wanted = None if model_ids is None else {self.catalogue.resolve_id(m) for m in model_ids}
        return [
            self.get_selection_criteria_by_id(entry.model_id, is_model_id_removed=are_model_ids_removed)
            for entry in self.catalogue
            if wanted is None or entry.model_id in wanted
        ]

    def get_selection_values_for_key(self, key: str, model_id: str | int | None = None) -> list[Any]:
        """The value at the dotted ``key`` of each model's selection (one model when ``model_id``)."""
        entries = [self.catalogue.resolve(model_id)] if model_id is not None else list(self.catalogue)
        return [thaw(deep_get(entry.selection, key)) for entry in entries]

    def get_selection_keys(self, model_id: str | int | None = None) -> list[str]:
        """First-level selection keys of one model, or their union over all models in first-seen order."""
        entries = [self.catalogue.resolve(model_id)] if model_id is not None else list(self.catalogue)
        return list(dict.fromkeys(key for entry in entries for key in entry.selection))

    # --- search and rank -------------------------------------------------------------------------

    def find_matching_models_by_values(
        self,
        values: list[Any],
        target_values_operator: str = "AND",
        are_keys_also_matched: bool = False,
        is_case_sensitive: bool = False,
    ) -> list[MatchCandidate]:
        """Candidates (``.model_id``, ``.matched_entries``, ``.is_match``) in catalogue order."""
        return find_matching_models(
            self.catalogue,
            values,
            operator=target_values_operator,
            match_keys=are_keys_also_matched,
            case_sensitive=is_case_sensitive,
        )

    def get_models_by_key_value_pair(
        self, key1: str, value1: Any, is_case_sensitive: bool = False
    ) -> list[dict[str, Any]]:
        """``[{"model_id": id, key1: value1}]`` for models whose selection has ``value1`` at ``key1``."""
        return models_by_key_value(self.catalogue, key1, value1, case_sensitive=is_case_sensitive)

    def rank_models_by_performance(
        self, model_ids: Sequence[str | int] | None = None, metric: str = "SSIM", order: str = "asc"
    ) -> list[dict[str, Any]]:
        """``[{"model_id": id, metric: value}]`` sorted by ``selection.performance.<metric>``."""
        return rank_models(self.catalogue, model_ids=model_ids, metric=metric, order=order)

    def find_models_and_rank(
        self,
        values: list[Any],
        target_values_operator: str = "AND",
        are_keys_also_matched: bool = False,
        is_case_sensitive: bool = False,
        metric: str = "SSIM",
        order: str = "asc",
    ) -> list[dict[str, Any]]:
        """Search, then rank the matches by ``metric``."""
        return _find_models_and_rank(
            self.catalogue,
            values,
            operator=target_values_operator,
            match_keys=are_keys_also_matched,
            case_sensitive=is_case_sensitive,
            metric=metric,
            order=order,
        )

    # --- generation ------------------------------------------------------------------------------

    def generate(
        self,
        model_id: str | int,
        num_samples: int = 30,
        output_path: str | os.PathLike[str] | None = None,
        save_images: bool = True,
        is_gen_function_returned: bool = False,
        install_dependencies: bool = False,
        **kwargs: Any,
    ) -> Any:
        """medigan's generate: with ``save_images`` write files into ``output_path`` (default
        ``output/<model_id>/<timestamp>/``) and return None; else return the model's samples."""
        if is_gen_function_returned:
            return self.get_generate_function(
                model_id,
                num_samples=num_samples,
                output_path=output_path,
                install_dependencies=install_dependencies,
                **kwargs,
            )
        entry = self.session.prepare(model_id).entry
        if not save_images:
            return self.session.generate(entry.model_id, num_samples, output_path=output_path, **kwargs)
        if output_path is None:
            stamp = datetime.datetime.now().strftime("%Y%m%d_%H%M%S_%f")
            output_path = Path("output") / entry.model_id / stamp
        self.session.save(entry.model_id, num_samples, output_path, **kwargs)
        return None

    def get_generate_function(
        self,
        model_id: str | int,
        num_samples: int = 30,
        output_path: str | os.PathLike[str] | None = None,
        install_dependencies: bool = False,
        **kwargs: Any,
    ) -> Callable[..., list[Any]]:
        """A callable ``gen(**overrides)`` returning samples; its runner stays warm between calls."""
        entry = self.session.prepare(model_id).entry
        session = self.session
        defaults = dict(kwargs)

        def gen(**overrides: Any) -> list[Any]:
            merged = {**defaults, **overrides}
            n = merged.pop("num_samples", num_samples)
            out = merged.pop("output_path", output_path)
            return session.generate(entry.model_id, n, output_path=out, **merged)

        return gen

    def find_models_rank_and_generate(
        self,
        values: list[Any],
        target_values_operator: str = "AND",
        are_keys_also_matched: bool = False,
        is_case_sensitive: bool = False,
        metric: str = "SSIM",
        order: str = "asc",
        num_samples: int = 30,
        output_path: str | os.PathLike[str] | None = None,
        is_gen_function_returned: bool = False,
        install_dependencies: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Search, rank by ``metric`` and generate with the best-ranked model."""
        ranked = self.find_models_and_rank(
            values,
            target_values_operator=target_values_operator,
            are_keys_also_matched=are_keys_also_matched,
            is_case_sensitive=is_case_sensitive,
            metric=metric,
            order=order,
        )
        if not ranked:
            raise CatalogueError(
                f"no model matches {values!r} ({target_values_operator}) with a {metric!r} value to rank by",
                remedy="loosen the search terms or rank by another metric (`medigan-iso search --help`)",
            )
        return self.generate(
            ranked[0]["model_id"],
            num_samples=num_samples,
            output_path=output_path,
            is_gen_function_returned=is_gen_function_returned,
            install_dependencies=install_dependencies,
            **kwargs,
        )

    def find_model_and_generate(
        self,
        values: list[Any],
        target_values_operator: str = "AND",
        are_keys_also_matched: bool = False,
        is_case_sensitive: bool = False,
        num_samples: int = 30,
        output_path: str | os.PathLike[str] | None = None,
        is_gen_function_returned: bool = False,
        install_dependencies: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Generate with the one model matching ``values``; with none or several, log an error and
        return None."""
        matches = [
            candidate
            for candidate in self.find_matching_models_by_values(
                values,
                target_values_operator=target_values_operator,
                are_keys_also_matched=are_keys_also_matched,
                is_case_sensitive=is_case_sensitive,
            )
            if candidate.is_match
        ]
        if len(matches) != 1:
            logger.error(
                "find_model_and_generate needs exactly one model matching %r, found %d: %s",
                values,
                len(matches),
                [m.model_id for m in matches],
            )
            return None
        return self.generate(
            matches[0].model_id,
            num_samples=num_samples,
            output_path=output_path,
            is_gen_function_returned=is_gen_function_returned,
            install_dependencies=install_dependencies,
            **kwargs,
        )


def _entry_of(model_id: str, metadata: Any) -> Any:
    """The entry inside medigan-shaped ``{model_id: entry}`` metadata, or ``metadata`` itself if it is one."""
    if not isinstance(metadata, Mapping):
        return None
    if isinstance(metadata.get(model_id), Mapping):
        return metadata[model_id]
    return metadata if "execution" in metadata else None


def _available(raw: Mapping[str, Any], dotted_key: str) -> list[str]:
    parts = dotted_key.split(".")
    current: Any = raw
    for part in parts:
        if not isinstance(current, Mapping) or part not in current:
            break
        current = current[part]
    return sorted(str(k) for k in current) if isinstance(current, Mapping) else []
