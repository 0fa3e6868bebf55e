"""Checking an output folder against its provenance: ``medigan_iso.verify(path, regenerate=False)``.

Reads nothing but the folder's ``manifest.jsonl`` and ``run.json`` (see :mod:`medigan_iso.manifest`) and
the files themselves. It never prints (the CLI reports the :class:`VerifyReport`).

- Without ``regenerate``: every manifest line's file is hashed (without following symlinks); a file whose
  bytes changed, a missing file and a file the manifest does not list are named. Hidden ``*.part`` files
  left by a run that was killed while writing are listed as ``partial``, not as failures.
- With ``regenerate``: each recorded request is made again through a :class:`~medigan_iso.generation.Session`
  over the *recorded* catalogue entry, pinned to the recorded package sha256 and env lock (so a removed env
  is rebuilt from that lock, and the package is fetched and checked by its hash), with the recorded seed and
  batch layout, into a temporary folder; the bytes of every listed file are compared. Only the batches the
  manifest lists are regenerated (a killed run's manifest names a prefix of its batches).
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medigan_iso.catalogue import Catalogue, ModelEntry
from medigan_iso.errors import ProvenanceError
from medigan_iso.generation import STAGING_DIR_NAME, Session
from medigan_iso.images import SampleWriter
from medigan_iso.manifest import MANIFEST_NAME, RUN_NAME, file_sha256, read_manifest, read_runs
from medigan_iso.sandbox import SandboxConfig

__all__ = ["VerifyReport", "verify"]

OWN_FILES = (MANIFEST_NAME, RUN_NAME)


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of :func:`verify`. ``ok`` is True when nothing changed, went missing or was added (and,
    with regenerate, every regenerated file had the recorded bytes)."""

    directory: Path
    files: int  # distinct paths the manifest lists
    matched: tuple[str, ...]
    changed: tuple[str, ...]
    missing: tuple[str, ...]
    extra: tuple[str, ...]
    partial: tuple[str, ...] = ()
    not_landed: tuple[str, ...] = ()  # the last line of a killed run, whose file never landed
    unfinished_runs: tuple[str, ...] = ()
    regenerated: int | None = None  # files compared after regenerating (None: not asked)
    reproduced: int | None = None
    not_reproduced: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return (
            not self.changed
            and not self.missing
            and not self.extra
            and (
                self.regenerated is None or (not self.not_reproduced and self.reproduced == self.regenerated)
            )
        )


def _walk(directory: Path) -> tuple[list[str], list[str]]:
    """(relative paths of every non-directory entry, hidden *.part leftovers), lstat only."""
    found: list[str] = []
    partial: list[str] = []
    stack = [Path()]
    while stack:
        rel = stack.pop()
        try:
            entries = list(os.scandir(directory / rel))
        except OSError:
            continue
        for entry in entries:
            relpath = (rel / entry.name).as_posix()
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
            except OSError:
                continue
            if stat.S_ISDIR(mode):
                stack.append(rel / entry.name)
            elif relpath in OWN_FILES:
                continue
            elif rel.parts[:1] == (STAGING_DIR_NAME,):
                partial.append(relpath)  # a killed Session.save: written by the model, never landed
            elif entry.name.startswith(".") and entry.name.endswith((".part", ".tmp")):
                partial.append(relpath)
            else:
                found.append(relpath)
    return sorted(found), sorted(partial)


def _latest_lines(lines: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    latest: dict[str, Mapping[str, Any]] = {}
    for line in lines:
        latest[str(line["path"])] = line  # a later line for the same path wins
    return latest


def verify(
    path: str | os.PathLike[str],
    regenerate: bool = False,
    *,
    home: str | os.PathLike[str] | None = None,
    sandbox: str | SandboxConfig | None = None,
) -> VerifyReport:
    """Check the folder ``path`` against its manifest; with ``regenerate`` also make every file again."""
    directory = Path(path)
    if not (directory / MANIFEST_NAME).is_file():
        raise ProvenanceError(
            directory,
            f"no {MANIFEST_NAME} here",
            remedy="point verify at a folder written by medigan-iso generate, Session.save or Generators",
        )
    try:
        lines = read_manifest(directory)
        runs = read_runs(directory)
    except (ValueError, OSError) as exc:
        raise ProvenanceError(
            directory, f"cannot read the provenance files: {exc}", remedy="restore manifest.jsonl / run.json"
        ) from exc
    latest = _latest_lines(lines)
    present, partial = _walk(directory)
    unfinished_ids = {str(run.get("run_id")) for run in runs if run.get("status") != "complete"}
    last_of_run: dict[str, str] = {}
    for record in lines:
        last_of_run[str(record.get("run_id"))] = str(record["path"])
    # A file's line is appended just before its link into place: a run killed in between leaves its last
    # line naming a file that never landed. Only that one line, and only for a run that did not finish.
    cut_short = {path for run_id, path in last_of_run.items() if run_id in unfinished_ids}
    matched: list[str] = []
    changed: list[str] = []
    missing: list[str] = []
    for relpath, line in sorted(latest.items()):
        if Path(relpath).is_absolute() or ".." in Path(relpath).parts:
            changed.append(relpath)  # a manifest line cannot name a file outside its folder
            continue
        try:
            digest, _ = file_sha256(directory / relpath)
        except FileNotFoundError:
            missing.append(relpath)
            continue
        except (ValueError, OSError):
            changed.append(relpath)  # now a symlink, FIFO or unreadable: not the file that was recorded
            continue
        (matched if digest == line["sha256"] else changed).append(relpath)
    not_landed = [p for p in missing if p in cut_short]
    missing = [p for p in missing if p not in cut_short]
    extra = [p for p in present if p not in latest]
    unfinished = tuple(str(run.get("run_id")) for run in runs if run.get("status") != "complete")
    report = VerifyReport(
        directory=directory,
        files=len(latest),
        matched=tuple(matched),
        changed=tuple(changed),
        missing=tuple(missing),
        extra=tuple(extra),
        partial=tuple(partial),
        not_landed=tuple(not_landed),
        unfinished_runs=unfinished,
    )
    if not regenerate:
        return report
    compared, reproduced, differing, notes = _regenerate(directory, latest, runs, home=home, sandbox=sandbox)
    return VerifyReport(
        **{name: getattr(report, name) for name in report.__dataclass_fields__ if name != "notes"}
        | {"regenerated": compared, "reproduced": reproduced, "not_reproduced": tuple(differing)},
        notes=tuple(notes),
    )


def _regenerate(
    directory: Path,
    latest: Mapping[str, Mapping[str, Any]],
    runs: Sequence[Mapping[str, Any]],
    *,
    home: str | os.PathLike[str] | None,
    sandbox: str | SandboxConfig | None,
) -> tuple[int, int, list[str], list[str]]:
    by_run: dict[str, dict[str, Mapping[str, Any]]] = {}
    for relpath, line in latest.items():
        by_run.setdefault(str(line.get("run_id")), {})[relpath] = line
    records = {str(run.get("run_id")): run for run in runs}
    compared = reproduced = 0
    differing: list[str] = []
    notes: list[str] = []
    for run_id, files in sorted(by_run.items()):
        run = records.get(run_id)
        if run is None:
            notes.append(f"run {run_id}: not in {RUN_NAME}; {len(files)} file(s) not regenerated")
            differing.extend(sorted(files))
            compared += len(files)
            continue
        if not run.get("regenerable", True):
            notes.append(f"run {run_id}: its kwargs held arrays, which run.json does not keep")
            differing.extend(sorted(files))
            compared += len(files)
            continue
        with tempfile.TemporaryDirectory(prefix="medigan-iso-verify-") as tmp:
            made = _make_again(run, files, Path(tmp), home=home, sandbox=sandbox, notes=notes)
            for relpath, line in sorted(files.items()):
                if relpath in made.skipped:
                    continue
                compared += 1
                try:
                    digest, _ = file_sha256(Path(tmp) / relpath)
                except (OSError, ValueError):
                    differing.append(relpath)
                    continue
                if digest == line["sha256"]:
                    reproduced += 1
                else:
                    differing.append(relpath)
    return compared, reproduced, differing, notes


@dataclass
class _Made:
    skipped: set[str] = field(default_factory=set)


def _recorded_entry(run: Mapping[str, Any]) -> ModelEntry:
    """The catalogue entry as recorded, pinned to the recorded package hash, env lock and Python."""
    raw = dict(run.get("entry") or {})
    execution = dict(raw.get("execution") or {})
    if run.get("package_sha256"):
        execution["package_sha256"] = run["package_sha256"]
    if run.get("lock"):
        execution["requirements_lock"] = run["lock"]
    python = str(run.get("python") or run.get("interpreter") or "")
    if python.count(".") >= 1:
        execution["python_requires"] = "==" + ".".join(python.split(".")[:2]) + ".*"
    raw["execution"] = execution
    catalogue_dir = run.get("catalogue_dir")
    return ModelEntry.from_raw(
        str(run["model_id"]),
        raw,
        source=f"{RUN_NAME} of a verified folder",
        catalogue_dir=Path(catalogue_dir) if catalogue_dir else None,
        is_bundled=bool(run.get("is_bundled")),
    )


def _make_again(
    run: Mapping[str, Any],
    files: Mapping[str, Mapping[str, Any]],
    out: Path,
    *,
    home: str | os.PathLike[str] | None,
    sandbox: str | SandboxConfig | None,
    notes: list[str],
) -> _Made:
    """Regenerate the batches of ``run`` that ``files`` came from into ``out``."""
    made = _Made()
    entry = _recorded_entry(run)
    batch_size = int(run["batch_size"])
    offset = int(run.get("batch_offset") or 0)
    end = offset * batch_size + int(run.get("num_samples") or 0)  # one past the request's last sample
    indices = [int(line["batch_index"]) for line in files.values() if line.get("batch_index") is not None]
    first_batch = min(indices) if indices else offset
    last_batch = max(indices) if indices else offset
    whole = first_batch == offset and (last_batch + 1) * batch_size >= end
    start = first_batch * batch_size
    count = max(0, min(end, (last_batch + 1) * batch_size) - start)
    # The card and a contact sheet are about the run, not generated by the model: not made again.
    made.skipped.update(p for p, line in files.items() if line.get("kind") in ("card", "grid"))
    if not whole:
        # labels.csv (no batch) covers the whole request; it can only be compared when all of it is redone
        made.skipped.update(p for p, line in files.items() if line.get("kind") == "labels")
    if run.get("status") != "complete":
        notes.append(
            f"run {run.get('run_id')}: did not finish; regenerating the {count} sample(s) it recorded"
        )
    kwargs = dict(run.get("kwargs") or {})
    writer_kind = str(run.get("writer") or "png")
    with Session(config=Catalogue((entry,)), home=home, sandbox=sandbox) as session:
        if writer_kind == "save_images":
            session.save(
                entry.model_id,
                count,
                out,
                batch_size=batch_size,
                seed=int(run["seed"]),
                batch_offset=first_batch,
                **kwargs,
            )
            return made
        writer = SampleWriter(out, fmt=writer_kind if writer_kind in ("png", "npy") else "png")
        batches = session.stream(
            entry.model_id,
            count,
            batch_size=batch_size,
            seed=int(run["seed"]),
            batch_offset=first_batch,
            **kwargs,
        )
        for batch in batches:
            index = batches.batch_index if batches.batch_index is not None else first_batch
            writer.write_batch(index * batch_size, batch)
        writer.close()
    return made
