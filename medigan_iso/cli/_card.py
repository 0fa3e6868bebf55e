"""The dataset card ``medigan-iso generate --card`` writes into its output folder as ``README.md``.

Every text taken from the catalogue passes :func:`~medigan_iso.untrusted.neutralise` (control characters
escaped, length capped) and has ``<``, ``>`` and backticks escaped, so a catalogue entry cannot inject
markup into the card. The card is recorded in the folder's manifest like any other file.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from medigan_iso.api import ModelInfo
from medigan_iso.catalogue import ModelEntry
from medigan_iso.manifest import ManifestWriter
from medigan_iso.untrusted import neutralise

CARD_NAME = "README.md"
MAX_FIELD_CHARS = 500
MAX_COMMENT_CHARS = 2000


def _text(value: Any, max_chars: int = MAX_FIELD_CHARS) -> str:
    text = neutralise(value, max_chars=max_chars)
    return text.replace("<", "&lt;").replace(">", "&gt;").replace("`", "\\`")


def _join(values: Iterable[Any]) -> str:
    items = [_text(v) for v in values]
    return ", ".join(items) if items else "not stated"


def _metrics(performance: Mapping[str, Any], prefix: str = "") -> list[str]:
    rows: list[str] = []
    for key, value in performance.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            rows.extend(_metrics(value, prefix=f"{name}."))
        elif value not in (None, "", []):
            rows.append(f"| {_text(name)} | {_text(value)} |")
    return rows


def render_card(
    info: ModelInfo, *, command: Sequence[str], directory: Path, samples: int, run: Mapping[str, Any]
) -> str:
    """The card's Markdown text."""
    title = _text(info.title or info.model_id)
    lines = [
        f"# Synthetic dataset: {title}",
        "",
        f"{samples} synthetic sample(s) generated with the medigan model `{_text(info.model_id)}` by "
        f"medigan-iso {_text(run.get('medigan_iso_version'))}. These images are synthetic: they show no "
        "real patient.",
        "",
        "## Model",
        "",
        f"- Title: {title}",
        f"- Model id: {_text(info.model_id)}",
        f"- Publication: {_text(info.publication) if info.publication else 'not stated'}",
        f"- DOI: {_join(info.doi)}",
        f"- Licence: {_text(info.license) if info.license else 'not stated'}",
        f"- Training dataset: {_join(info.dataset)}",
        f"- Modality: {_join(info.modality)}; organ: {_join(info.organ)}; generates: {_join(info.generates)}",
        f"- Model type: {_text(info.type) if info.type else 'not stated'}; year: "
        f"{_text(info.year) if info.year else 'not stated'}",
        f"- Package sha256: {_text(run.get('package_sha256'))}",
        "",
        "## Metrics reported in the catalogue",
        "",
    ]
    metrics = _metrics(info.performance)
    lines += ["| metric | value |", "|---|---|", *metrics] if metrics else ["None reported."]
    lines += [
        "",
        "## Intended use",
        "",
        "Research on methods for medical image analysis (data augmentation, benchmarking, teaching). Not for "
        "diagnosis or any clinical decision, and not a substitute for real patient data in validation. "
        "Check the licence above and the publication's own statement of intended use before sharing or "
        "training on these images.",
    ]
    if info.comment:
        lines += ["", f"Catalogue comment: {_text(info.comment, MAX_COMMENT_CHARS)}"]
    lines += [
        "",
        "## How it was made",
        "",
        f"- Seed {_text(run.get('seed'))}, batch size {_text(run.get('batch_size'))}, env "
        f"{_text(run.get('env_key'))} (lock sha256 {_text(run.get('lock_sha256'))}, dependencies as of "
        f"{_text(run.get('dependencies_as_of') or 'latest')}), Python {_text(run.get('python'))}.",
        "- Command:",
        "",
        "```",
        shlex.join(command),
        "```",
        "",
        "## How to check it",
        "",
        "Every file is listed with its sha256 in `manifest.jsonl`; `run.json` records the request. Check the "
        "folder, and make every file again from the recorded seed and env lock and compare the bytes:",
        "",
        "```",
        f"medigan-iso verify {shlex.quote(str(directory))}",
        f"medigan-iso verify --regenerate {shlex.quote(str(directory))}",
        "```",
        "",
    ]
    return "\n".join(lines)


def write_card(
    directory: Path, entry: ModelEntry, manifest: ManifestWriter, *, command: Sequence[str], samples: int
) -> Path:
    """Write README.md into ``directory`` (never over an existing file) and record it in the manifest."""
    from medigan_iso.images import write_exclusive

    text = render_card(
        ModelInfo.from_entry(entry),
        command=command,
        directory=directory,
        samples=samples,
        run=manifest.context.line_fields,
    )
    path = directory / CARD_NAME
    data = text.encode("utf-8")
    write_exclusive(path, data, before_link=lambda: manifest.record(CARD_NAME, data=data, kind="card"))
    return path
