"""The catalogue entry of a contribution: read it, check it against its folder, finish it.

This module owns everything about the entry: reading medigan's metadata file (``{model_id: entry}`` or
the bare entry), building one from the minimum inputs (medigan's ``add_metadata_from_input``, with its
template and optional prompts), the checks made before anything runs (the id's form and that it is free
in the catalogue, strict schema validity, the generate function defined in ``__init__.py``, the weights
file present), and the finished entry (``package_link``, ``package_sha256``, ``package_md5``,
``dependencies_as_of``) validated in strict mode. The generate function is found by parsing
``__init__.py`` with :mod:`ast`: the host never imports a contributor's code (medigan 1.0 imported it
into the caller's interpreter to "validate" it).
"""

from __future__ import annotations

import ast
import copy
import datetime
import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from medigan_iso.catalogue import Catalogue, validate_catalogue
from medigan_iso.errors import CatalogueValidationError, ContributionError
from medigan_iso.untrusted import get_logger, neutralise

__all__ = [
    "MODEL_ID_RE",
    "Prompt",
    "check_contribution",
    "check_model_id",
    "entry_from_input",
    "fill_interactively",
    "finish_entry",
    "read_metadata",
]

logger = get_logger(__name__)

Prompt = Callable[[str], str]
"""Asks one question and returns the answer (``input`` in a terminal)."""

# medigan 1.0's rule (ModelContributor.validate_model_id): 13-30 characters, the first five digits.
# Ours also keeps it a safe file name (it names <model_id>.json and the zip): no dots, no slashes.
MODEL_ID_RE = re.compile(r"^[0-9]{5}[A-Za-z0-9_-]{8,25}$")
PLACEHOLDER_LINK = "https://zenodo.org/records/0/files/placeholder.zip?download=1"
PLACEHOLDER_SHA256 = "0" * 64
MAX_METADATA_BYTES = 4 << 20

# medigan's template (templates/template.json upstream) reduced to the keys a reviewer expects.
TEMPLATE_SELECTION: dict[str, Any] = {
    "performance": {"SSIM": None, "MSE": None, "NSME": None, "PSNR": None, "IS": None, "FID": None},
    "use_cases": [],
    "organ": [],
    "modality": [],
    "vendors": [],
    "centres": [],
    "function": [],
    "condition": [],
    "dataset": [],
    "augmentations": [],
    "generates": [],
    "height": None,
    "width": None,
    "depth": None,
    "type": "",
    "license": "",
    "dataset_type": "",
    "privacy_preservation": "",
    "tags": [],
    "year": "",
}
TEMPLATE_DESCRIPTION: dict[str, Any] = {
    "title": "",
    "provided_date": "",
    "trained_date": "",
    "provided_after_epoch": None,
    "version": "",
    "publication": "",
    "doi": [],
    "comment": "",
}


def check_model_id(model_id: object) -> str:
    if not isinstance(model_id, str) or not MODEL_ID_RE.match(model_id):
        shown = neutralise(model_id, max_chars=60)
        raise ContributionError(
            shown,
            f"model id {shown!r} must be 13-30 characters, start with five digits and use only letters, "
            "digits, '_' and '-'",
            remedy="name it like medigan's models: '00024_DCGAN_MMG_MASS_ROI'",
        )
    return model_id


def _entry_in(model_id: str, data: Any, source: str) -> dict[str, Any]:
    if isinstance(data, Mapping) and isinstance(data.get(model_id), Mapping):
        return copy.deepcopy(dict(data[model_id]))
    if isinstance(data, Mapping) and "execution" in data:
        return copy.deepcopy(dict(data))
    keys = list(data)[:5] if isinstance(data, Mapping) else []
    raise ContributionError(
        model_id,
        f"{source} holds neither {{{model_id!r}: entry}} nor a bare entry (found keys {neutralise(keys)})",
        remedy='write the entry as medigan\'s template does: {"<model_id>": {"execution": ..., '
        '"selection": ..., "description": ...}}',
    )


def read_metadata(model_id: str, path: str | Path) -> dict[str, Any]:
    """The entry in a metadata JSON file (or in ``<folder>/metadata.json``, as medigan reads it)."""
    file = Path(path)
    if file.is_dir() and (file / "metadata.json").is_file():
        file = file / "metadata.json"
    if not file.is_file():
        raise ContributionError(
            model_id,
            f"no metadata file at {file}",
            remedy="write one from medigan's template, or build it with add_metadata_from_input()",
        )
    if file.stat().st_size > MAX_METADATA_BYTES:
        raise ContributionError(model_id, f"{file} is larger than {MAX_METADATA_BYTES} bytes")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ContributionError(
            model_id, f"{file} is not valid JSON: {exc}", remedy="`python -m json.tool FILE` shows where"
        ) from exc
    return _entry_in(model_id, data, str(file))


def entry_from_input(
    *,
    package_name: str,
    package_link: str,
    model_weights_name: str,
    model_weights_extension: str,
    generate_method_name: str,
    dependencies: Sequence[str],
    image_size: Sequence[int] = (),
    title: str = "",
) -> dict[str, Any]:
    """medigan's template filled with the minimum a model needs to run."""
    description = copy.deepcopy(TEMPLATE_DESCRIPTION)
    description["title"] = title
    return {
        "execution": {
            "package_name": package_name,
            "package_link": package_link,
            "model_name": model_weights_name,
            "extension": model_weights_extension,
            "image_size": [int(v) for v in image_size],
            "dependencies": list(dependencies),
            "generate_method": {
                "name": generate_method_name,
                "args": {"base": ["model_file", "num_samples", "output_path", "save_images"], "custom": {}},
            },
        },
        "selection": copy.deepcopy(TEMPLATE_SELECTION),
        "description": description,
    }


def _tidy(entry: dict[str, Any]) -> None:
    """Unset selection sizes come from ``image_size`` (strict mode wants integers, the template has
    nulls); sizes still unknown are dropped rather than left null."""
    selection = entry.get("selection")
    size = entry.get("execution", {}).get("image_size")
    if not isinstance(selection, dict):
        return
    known = [int(v) for v in size if isinstance(v, int)] if isinstance(size, list) else []
    for index, key in enumerate(("height", "width", "depth")):
        if selection.get(key) is None and len(known) > index:
            selection[key] = known[index]
        elif key in selection and selection[key] is None and key != "depth":
            del selection[key]


def _is_empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def fill_interactively(model_id: str, entry: dict[str, Any], prompt: Prompt) -> dict[str, Any]:
    """Ask for every empty value (medigan's ``_recursively_fill_metadata``): lists comma-separated,
    numbers as numbers, an empty answer keeps the value empty."""

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, dict) and value:
                walk(value, dotted + ".")
                continue
            if not _is_empty(value) or dotted in ("execution.generate_method.args.custom",):
                continue
            if isinstance(value, list):
                answer = prompt(f"{model_id}: comma-separated values for '{dotted}': ").strip()
                items: list[Any] = [item.strip() for item in answer.split(",") if item.strip()]
                if dotted == "execution.image_size":
                    items = [int(item) for item in items if item.isdigit()]
                node[key] = items
            elif value is None:
                answer = prompt(f"{model_id}: a number for '{dotted}' (empty: none): ").strip()
                node[key] = _number(answer)
            else:
                node[key] = prompt(f"{model_id}: a value for '{dotted}': ").strip()

    walk(entry, "")
    return entry


def _number(text: str) -> int | float | None:
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text.replace(",", "."))
    except ValueError:
        return None


def _defines(init_py: Path, name: str) -> bool:
    """Whether ``__init__.py`` defines ``name`` at module level (def, assignment or import), by parsing."""
    try:
        tree = ast.parse(init_py.read_bytes(), filename=str(init_py))
    except SyntaxError:
        return False
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            return True
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return True
        if isinstance(node, (ast.Import, ast.ImportFrom)) and any(
            (alias.asname or alias.name.split(".")[0]) == name for alias in node.names
        ):
            return True
    return False


def _strict_violations(model_id: str, entry: Mapping[str, Any]) -> CatalogueValidationError | None:
    try:
        validate_catalogue({model_id: entry}, source=f"the entry of {model_id}", strict=True)
    except CatalogueValidationError as exc:
        return exc
    return None


def check_contribution(
    model_id: str, entry: Mapping[str, Any], package_dir: Path, *, catalogue: Catalogue | None
) -> dict[str, Any]:
    """Every check that needs no env and no network; returns the entry with ``package_name`` settled.

    Strict validation runs with placeholders for the fields the flow fills in (link, sha256, as-of date),
    so an entry that passes here is strict-valid once finished.
    """
    check_model_id(model_id)
    if catalogue is not None:
        clash = [mid for mid in catalogue.ids() if mid == model_id or mid[:5] == model_id[:5]]
        if clash:
            raise ContributionError(
                model_id,
                f"the catalogue already has {neutralise(clash[0])} (model ids and their five-digit prefixes "
                "are unique: abbreviated ids resolve by prefix)",
                remedy="pick the next free number (`medigan-iso list` shows the ids in use)",
            )
    init_py = package_dir / "__init__.py"
    if not init_py.is_file():
        raise ContributionError(
            model_id, f"{package_dir} has no __init__.py", remedy="point at the model's __init__.py"
        )
    candidate = copy.deepcopy(dict(entry))
    execution = candidate.get("execution")
    if not isinstance(execution, dict):
        raise ContributionError(model_id, "the entry has no 'execution' object", remedy=_TEMPLATE_REMEDY)
    execution.setdefault("package_name", package_dir.name)
    _tidy(candidate)
    placeholder = copy.deepcopy(candidate)
    placeholder["execution"].update(
        package_link=PLACEHOLDER_LINK,
        package_sha256=PLACEHOLDER_SHA256,
        dependencies_as_of=datetime.date.today().isoformat(),
    )
    placeholder["execution"].pop("package_md5", None)
    error = _strict_violations(model_id, placeholder)
    if error is not None:
        raise ContributionError(
            model_id,
            "the entry is not valid in strict mode:\n"
            + "\n".join(f"  {p}: {neutralise(m, max_chars=300)}" for _, p, m in error.violations),
            remedy="fix these fields in the metadata file (strict mode wants integer image sizes and "
            "PEP 508 dependencies)",
        )
    method = str(execution.get("generate_method", {}).get("name") or "generate")
    if not _defines(init_py, method):
        raise ContributionError(
            model_id,
            f"{init_py} defines no top-level {method!r} (the entry's generate_method.name)",
            remedy=f"define `def {method}(model_file, num_samples, output_path, save_images, **kwargs)` "
            "there, or set generate_method.name to the function's name",
        )
    weights = package_dir / (str(execution.get("model_name", "")) + str(execution.get("extension", "")))
    if not weights.is_file():
        raise ContributionError(
            model_id,
            f"the weights file {weights} (model_name + extension) is missing",
            remedy="put the weights in the package folder or fix model_name/extension (--weights-name, "
            "--weights-extension)",
        )
    return candidate


_TEMPLATE_REMEDY = "write the entry from medigan's template (execution, selection, description)"


def finish_entry(
    model_id: str,
    entry: Mapping[str, Any],
    *,
    package_link: str,
    package_sha256: str,
    package_md5: str,
    dependencies_as_of: datetime.date,
) -> dict[str, Any]:
    """The entry as it goes to the catalogue, validated in strict mode."""
    finished = copy.deepcopy(dict(entry))
    finished["execution"].update(
        package_link=package_link,
        package_sha256=package_sha256,
        package_md5=f"md5:{package_md5}",
        dependencies_as_of=dependencies_as_of.isoformat(),
    )
    error = _strict_violations(model_id, finished)
    if error is not None:
        raise ContributionError(
            model_id,
            "the finished entry is not valid in strict mode:\n"
            + "\n".join(f"  {p}: {neutralise(m, max_chars=300)}" for _, p, m in error.violations),
            remedy="package links must be https:// (a loopback http:// stand-in gives a lenient entry only)",
        )
    return finished
