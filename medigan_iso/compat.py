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
- ``find_models_rank_and_generate`` raises CatalogueError when nothing matches (medigan raised IndexError);
- with an ``input_latent_vector``, its rows decide the number of samples in ``generate`` and in the
  function ``get_generate_function`` returns (one model call, as in medigan; without this the runner's
  batches of 32 would each get the whole vector);
- executors (``add_model_executor``, ``get_model_executor``...) hold a prepared package and env and run the
  model in its warm runner; ``len(generators)`` / ``generators[i]`` count and index them as in medigan;
  ``ModelExecutor`` has no ``len()`` / ``[i]`` (TypeError; medigan raised NotImplementedError);
- ``get_as_torch_dataset`` generates lazily in chunks instead of all samples up front, errs when a model
  returns fewer samples than asked (medigan built an empty dataset) and calls ``transform`` once per item
  (medigan called it twice when a model returned a mask and another output);
- ``get_as_torch_dataloader`` passes torch only the DataLoader arguments that differ from medigan's
  defaults (medigan always passed ``prefetch_factor=2``, which torch refuses with ``num_workers=0``, the
  default) and raises ValueError without a dataset and a model id (medigan: ``DataLoader(dataset=None)``);
- ``visualize`` is :mod:`medigan_iso.visualize` (its docstring lists the differences).

The contribution methods (``add_model_contributor``, ``test_model``, ``push_to_zenodo``, ``contribute``...)
come from :class:`~medigan_iso.contribute.ContributorMethods`.
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

import numpy as np

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
from medigan_iso.errors import CatalogueError, CatalogueValidationError, ConfigKeyError, MediganIsoError
from medigan_iso.generation import PreparedModel, Session
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
from medigan_iso.untrusted import get_logger, neutralise

__all__ = ["DEFAULT_OUTPUT_FOLDER", "REPR_MAX_CHARS", "Generators", "ModelExecutor"]

logger = get_logger(__name__)

_MISSING = object()
REPR_MAX_CHARS = 200_000  # reprs list every model id; cap only what no terminal should receive
DEFAULT_OUTPUT_FOLDER = "output"  # medigan's: generated files go to output/<model_id>/<timestamp>/


class ModelExecutor:
    """medigan's ``ModelExecutor`` for one model, over a Session's warm runner (no model code on the host).

    Attributes as in medigan (``model_id``, ``execution_config``, ``image_size``, ``dependencies``,
    ``model_name``, ``model_extension``, ``package_name``, ``package_link``, ``generate_method_name``,
    ``generate_method_args``, ``generate_method_input_latent_vector_size``, ``serialised_model_file_path``,
    ``package_path``); ``deserialized_model_as_lib`` is always None: the model is imported only inside its
    runner. Unlike medigan, ``len()`` and ``[i]`` raise TypeError instead of NotImplementedError.
    """

    def __init__(self, session: Session, prepared: PreparedModel) -> None:
        entry, package = prepared.entry, prepared.package
        self.session = session
        self.entry = entry
        self.model_id = entry.model_id
        self.execution_config: dict[str, Any] = thaw(entry.raw.get("execution") or {})
        self.download_package = True
        self.install_dependencies = True
        self.image_size = self.execution_config.get("image_size")
        self.dependencies = list(entry.dependencies)
        self.model_name = entry.model_name
        self.model_extension = entry.extension
        self.package_name = entry.package_name
        self.package_link = entry.package_link
        self.generate_method_name = entry.generate_function
        self.generate_method_args: dict[str, Any] = thaw(
            deep_get(self.execution_config, "generate_method.args", None) or {"base": [], "custom": {}}
        )
        self.generate_method_args.setdefault("custom", {})
        self.generate_method_args["custom"].update(thaw(package.custom_defaults))
        self.generate_method_input_latent_vector_size = entry.input_latent_vector_size
        self.serialised_model_file_path = str(package.model_file)
        self.package_path = str(package.root)
        self.deserialized_model_as_lib = None

    def generate(
        self,
        num_samples: int = 20,
        output_path: str | os.PathLike[str] | None = None,
        save_images: bool = True,
        is_gen_function_returned: bool = False,
        batch_size: int = 32,
        **kwargs: Any,
    ) -> Any:
        """medigan's ``ModelExecutor.generate``: save files (return None), return samples, or return
        ``gen(**overrides)``. With an ``input_latent_vector``, its rows decide the number of samples (one
        model call, as medigan made), here and in ``gen``."""
        if is_gen_function_returned:
            defaults = dict(kwargs)
            session, model_id = self.session, self.model_id

            def gen(**overrides: Any) -> list[Any]:
                merged = {**defaults, **overrides}
                n = merged.pop("num_samples", num_samples)
                out = merged.pop("output_path", output_path)
                merged.pop("save_images", None)
                rows = _latent_rows(merged)
                n = n if rows is None else rows
                return session.generate(model_id, n, batch_size=rows or None, output_path=out, **merged)

            return gen
        rows = _latent_rows(kwargs)
        if rows is not None:
            num_samples, batch_size = rows, max(rows, 1)
        if not save_images:
            return self.session.generate(
                self.model_id, num_samples, batch_size=batch_size, output_path=output_path, **kwargs
            )
        if output_path is None:
            stamp = datetime.datetime.now().strftime("%Y%m%d_%H%M%S_%f")
            output_path = Path(DEFAULT_OUTPUT_FOLDER) / self.model_id / stamp
        self.session.save(self.model_id, num_samples, output_path, batch_size=batch_size, **kwargs)
        return None

    def __repr__(self) -> str:
        # medigan's layout; every value is catalogue text, so neutralised (reprs end up on terminals)
        return neutralise(
            f"ModelExecutor(model_id={self.model_id}, name={self.model_name}, package={self.package_name}, "
            f"image_size={self.image_size}, dependencies={self.dependencies}, link={self.package_link}, "
            f"path={self.serialised_model_file_path}, generate_method={self.generate_method_name}, "
            f"generate_method_args={self.generate_method_args})",
            max_chars=REPR_MAX_CHARS,
        )


def _torch_module() -> Any:
    """:mod:`medigan_iso.torch`, or a clear error when the ``torch`` extra is not installed."""
    try:
        from medigan_iso import torch as medigan_torch
    except ModuleNotFoundError as exc:
        _raise_missing_extra(exc, "torch", "torch")
        raise
    return medigan_torch


def _visualize_module() -> Any:
    """:mod:`medigan_iso.visualize`, or a clear error when the ``viz`` extra (matplotlib) is missing."""
    try:
        from medigan_iso import visualize as medigan_visualize
    except ModuleNotFoundError as exc:
        _raise_missing_extra(exc, "matplotlib", "viz")
        raise
    return medigan_visualize


def _raise_missing_extra(exc: ModuleNotFoundError, package: str, extra: str) -> None:
    if (exc.name or "").split(".")[0] == package:
        raise MediganIsoError(
            f"{package} is not installed in this Python ({exc})",
            remedy=f"install the extra: pip install 'medigan-iso[{extra}]'",
        ) from exc


def _latent_rows(kwargs: Mapping[str, Any]) -> int | None:
    """The number of samples an ``input_latent_vector`` asks for (its first axis; 1 for one vector)."""
    latent = kwargs.get("input_latent_vector")
    if latent is None:
        return None
    shape = getattr(latent, "shape", None)
    if shape is None:
        try:
            shape = np.asarray(latent).shape
        except (TypeError, ValueError):
            return None
    if len(shape) == 0:
        return None
    return 1 if len(shape) == 1 else int(shape[0])


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
        self._config = config
        self._offline = offline
        self._sandbox = sandbox
        self._strict = strict
        self._session: Session | None = None
        self._session_lock = threading.Lock()
        if initialize_all_models:
            # medigan imported every model up front; here that means fetching every package and
            # building (or reusing) every env, without starting runners.
            self.add_all_model_executors()

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
        # medigan's layout; model ids are catalogue text, so neutralised (reprs end up on terminals)
        return neutralise(
            f"Generators(model_ids={list(self.catalogue.ids())}, model_executors={self.model_executors}, "
            f"model_selector: {self.model_selector})",
            max_chars=REPR_MAX_CHARS,
        )

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
        ``output/<model_id>/<timestamp>/``) and return None; else return the model's samples.

        The model's executor is added to ``self.model_executors`` on first use, as in medigan.
        """
        return self.get_model_executor(model_id, install_dependencies=install_dependencies).generate(
            num_samples=num_samples,
            output_path=output_path,
            save_images=save_images,
            is_gen_function_returned=is_gen_function_returned,
            **kwargs,
        )

    def get_generate_function(
        self,
        model_id: str | int,
        num_samples: int = 30,
        output_path: str | os.PathLike[str] | None = None,
        install_dependencies: bool = False,
        **kwargs: Any,
    ) -> Callable[..., list[Any]]:
        """A callable ``gen(**overrides)`` returning samples; its runner stays warm between calls."""
        gen: Callable[..., list[Any]] = self.generate(
            model_id,
            num_samples=num_samples,
            output_path=output_path,
            is_gen_function_returned=True,
            install_dependencies=install_dependencies,
            **kwargs,
        )
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

    # --- executors -------------------------------------------------------------------------------

    def add_all_model_executors(self) -> None:
        """Add an executor for every catalogue model (fetch each package and build or reuse each env;
        no runner starts until a model generates)."""
        for model_id in self.catalogue.ids():
            self.add_model_executor(model_id)

    def add_model_executor(self, model_id: str | int, install_dependencies: bool = False) -> None:
        """Add the executor of ``model_id`` unless it is already there. ``install_dependencies`` is
        accepted for medigan's sake: envs build on first use unless ``MEDIGAN_ISO_BUILD=never``."""
        if self.is_model_executor_already_added(model_id):
            return
        self.model_executors.append(ModelExecutor(self.session, self.session.prepare(model_id)))

    def is_model_executor_already_added(self, model_id: str | int) -> bool:
        """Whether ``self.model_executors`` holds the executor of ``model_id``."""
        return self.find_model_executor_by_id(model_id) is not None

    def find_model_executor_by_id(self, model_id: str | int) -> ModelExecutor | None:
        """The executor of ``model_id`` in ``self.model_executors``, or None."""
        full_id = self.catalogue.resolve_id(model_id)
        for executor in self.model_executors:
            if getattr(executor, "model_id", None) == full_id:
                return executor  # type: ignore[no-any-return]
        return None

    def get_model_executor(self, model_id: str | int, install_dependencies: bool = False) -> ModelExecutor:
        """The executor of ``model_id``, added first when needed."""
        self.add_model_executor(model_id, install_dependencies=install_dependencies)
        executor = self.find_model_executor_by_id(model_id)
        assert executor is not None  # added just above
        return executor

    # --- torch and visualisation ----------------------------------------------------------------

    def get_as_torch_dataset(
        self,
        model_id: str | int,
        num_samples: int = 100,
        install_dependencies: bool = False,
        transform: Any = None,
        *,
        seed: int | None = None,
        chunk_size: int | None = None,
        **kwargs: Any,
    ) -> Any:
        """A map-style torch Dataset of ``num_samples`` items (``{"sample", "mask"?, "label"?, ...}``),
        generated lazily in chunks from this facade's warm runner (extra ``medigan-iso[torch]``).

        Item ``i`` is the same on every read given ``seed`` (drawn when None; see ``dataset.seed``) and
        ``chunk_size`` (samples per runner request, default 32): sample ``i`` of
        ``Session.generate(model_id, n, seed=seed, batch_size=chunk_size)``. ``kwargs`` go to the model.
        See :mod:`medigan_iso.torch`.
        """
        medigan_torch = _torch_module()
        executor = self.get_model_executor(model_id, install_dependencies=install_dependencies)
        return medigan_torch.SyntheticDataset(
            executor.model_id,
            num_samples,
            spec=self._session_spec(),
            session=self.session,
            transform=transform,
            seed=seed,
            chunk_size=chunk_size or medigan_torch.DEFAULT_CHUNK_SIZE,
            model_kwargs=kwargs,
        )

    def get_as_torch_dataloader(
        self,
        dataset: Any = None,
        model_id: str | int | None = None,
        num_samples: int = 1000,
        install_dependencies: bool = False,
        transform: Any = None,
        batch_size: int | None = 1,
        shuffle: bool | None = False,
        sampler: Any = None,
        batch_sampler: Any = None,
        num_workers: int = 0,
        collate_fn: Any = None,
        pin_memory: bool = False,
        drop_last: bool = False,
        timeout: float = 0,
        worker_init_fn: Any = None,
        prefetch_factor: int | None = 2,
        persistent_workers: bool = False,
        *,
        seed: int | None = None,
        chunk_size: int | None = None,
        **kwargs: Any,
    ) -> Any:
        """A torch DataLoader over ``dataset``, or over :meth:`get_as_torch_dataset` of ``model_id``.

        Only the DataLoader arguments that differ from medigan's defaults are passed to torch (medigan
        passed ``prefetch_factor=2`` always, which torch refuses with ``num_workers=0``). With
        ``num_workers > 0`` each worker process runs its own runner; no two workers produce one sample.
        """
        medigan_torch = _torch_module()
        if dataset is None:
            if model_id is None:
                raise ValueError(
                    "get_as_torch_dataloader needs a dataset or a model_id: pass model_id='...' (or a "
                    "dataset from get_as_torch_dataset)"
                )
            dataset = self.get_as_torch_dataset(
                model_id,
                num_samples=num_samples,
                install_dependencies=install_dependencies,
                transform=transform,
                seed=seed,
                chunk_size=chunk_size,
                **kwargs,
            )
        loader_args = medigan_torch.dataloader_kwargs(
            {
                "batch_size": batch_size,
                "shuffle": shuffle,
                "sampler": sampler,
                "batch_sampler": batch_sampler,
                "num_workers": num_workers,
                "collate_fn": collate_fn,
                "pin_memory": pin_memory,
                "drop_last": drop_last,
                "timeout": timeout,
                "worker_init_fn": worker_init_fn,
                "prefetch_factor": prefetch_factor,
                "persistent_workers": persistent_workers,
            }
        )
        from torch.utils.data import DataLoader  # importable: _torch_module() imported torch

        return DataLoader(dataset, **loader_args)

    def visualize(
        self,
        model_id: str | int,
        slider_grouper: int = 10,
        auto_close: bool = False,
        install_dependencies: bool = False,
    ) -> None:
        """medigan's latent-vector explorer for ``model_id`` (extra ``medigan-iso[viz]``): sliders over
        groups of ``slider_grouper`` latent values, a new-seed and a reset button, and a condition slider
        when the entry declares ``condition``; every change asks the warm runner for one sample. With a
        non-interactive matplotlib backend (``MPLBACKEND=Agg``) or ``auto_close`` it renders once and
        returns. See :mod:`medigan_iso.visualize`."""
        medigan_visualize = _visualize_module()
        executor = self.get_model_executor(model_id, install_dependencies=install_dependencies)
        medigan_visualize.show(
            self.session,
            executor.model_id,
            slider_grouper=slider_grouper,
            auto_close=auto_close,
        )

    def _session_spec(self) -> Any:
        return _torch_module().SessionSpec(
            config=self._config,
            home=self.home,
            offline=self._offline,
            sandbox=self._sandbox,
            strict=self._strict,
            catalogue=self.catalogue,
        )

    # --- medigan's container protocol ------------------------------------------------------------

    def __len__(self) -> int:
        """How many model executors were added (as in medigan)."""
        return len(self.model_executors)

    def __getitem__(self, idx: int) -> Any:
        """The ``idx``-th added model executor (as in medigan)."""
        return self.model_executors[idx]


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
