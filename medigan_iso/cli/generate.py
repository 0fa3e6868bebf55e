"""``medigan-iso generate``: run a model in its env and write its samples as they arrive."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from medigan_iso.untrusted import neutralise

__all__ = ["register"]

GRID_MAX_SAMPLES = 64  # --grid keeps at most this many images in memory for the contact sheet
WRITER_WORKERS = 4  # at most this many threads encode PNGs (never more than the usable CPUs)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate samples with a model and write them to a folder",
        description=(
            "Generate N samples with MODEL (run in its own env) and write them into DIR as the batches "
            "arrive: sample_<i>.png (or .npy), masks as sample_<i>_mask.png, labels in labels.csv. "
            "PNG conversion to 8 bit: uint8 as is; floats in [0,1] times 255, in [-1,1] mapped by "
            "(x+1)*127.5, others clipped to 0..255; integers clipped, or min-max scaled when out of range. "
            "--format npy keeps the exact arrays. Ctrl-C stops the runner and keeps what was written. "
            "Every file gets a line in DIR/manifest.jsonl (hash, model, package, env lock, seed, sample "
            "index) and DIR/run.json records the request: `medigan-iso verify DIR` checks them."
        ),
    )
    parser.add_argument("model", help="model id (e.g. 00001, 1, demo-numpy)")
    parser.add_argument("-n", "--num-samples", type=int, default=16, help="how many samples (default 16)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output directory")
    parser.add_argument("--batch-size", type=int, default=None, help="samples per batch (default 32)")
    parser.add_argument(
        "--seed", type=int, default=None, help="seed random, numpy (and torch/TF) in the runner"
    )
    parser.add_argument("--format", choices=("png", "npy"), default="png", help="file format (default png)")
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a model keyword argument; VALUE is parsed as JSON when it can be (repeatable)",
    )
    parser.add_argument("--grid", type=Path, default=None, help="also write a contact sheet PNG here")
    parser.add_argument(
        "--card",
        action="store_true",
        help="also write a dataset card (README.md): the model, its publication and licence, how to verify",
    )
    parser.add_argument(
        "--no-build",
        action="store_true",
        help="fail instead of building the model's env when it does not exist yet",
    )
    parser.add_argument(
        "--sandbox",
        choices=("off", "auto", "require"),
        default=None,
        help="confine the model (default: $MEDIGAN_ISO_SANDBOX, else auto; see `medigan-iso doctor`)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="strict supply chain: pinned package_sha256 and wheels-only envs",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="give up when the model sends no batch for SECONDS (default 600; never a total limit)",
    )
    parser.add_argument(
        "--as-of",
        metavar="DATE|latest",
        help="resolve the model's dependencies as the index was on DATE (YYYY-MM-DD), or today's "
        "with 'latest' (default: the model's own date, see `medigan-iso info MODEL`)",
    )
    parser.add_argument(
        "--ray",
        metavar="ADDRESS",
        default=None,
        help="generate on a Ray cluster: 'auto' (the cluster `ray start` made here, else a local one) or "
        "the head's address; files are written by the workers (needs medigan-iso[ray])",
    )
    parser.set_defaults(handler=_run)


def _parse_settings(items: list[str]) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.isidentifier():
            raise SystemExit(f"medigan-iso generate: error: --set expects KEY=VALUE, got {item!r}")
        try:
            settings[key] = json.loads(raw)
        except ValueError:
            settings[key] = raw
    return settings


class _Progress:
    """A one-line progress bar on stderr, shown only on a terminal."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.enabled = sys.stderr.isatty()
        self.started = time.monotonic()

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        width = 30
        filled = width if self.total == 0 else int(width * done / self.total)
        rate = done / max(time.monotonic() - self.started, 1e-9)
        bar = "#" * filled + "." * (width - filled)
        sys.stderr.write(f"\r[{bar}] {done}/{self.total}  {rate:.1f}/s")
        sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def _command(args: argparse.Namespace, seed: int) -> list[str]:
    """The command that makes the same files again (with the seed that was drawn when none was given)."""
    command = [
        "medigan-iso",
        "generate",
        str(args.model),
        "-n",
        str(args.num_samples),
        "-o",
        str(args.output),
    ]
    if args.batch_size is not None:
        command += ["--batch-size", str(args.batch_size)]
    command += ["--seed", str(seed), "--format", args.format]
    for item in args.settings:
        command += ["--set", item]
    return command


def _record_inside(manifest: Any, directory: Path, path: Path) -> None:
    """Record ``path`` in the manifest when it was written inside the output folder (e.g. the grid)."""
    if manifest is None:
        return
    try:
        relpath = path.resolve().relative_to(directory.resolve())
    except ValueError:
        return
    manifest.record(relpath.as_posix(), kind="grid")


def _run(args: argparse.Namespace) -> int:
    from medigan_iso.generation import Session
    from medigan_iso.images import SampleWriter
    from medigan_iso.manifest import ManifestWriter

    if args.num_samples < 0:
        raise SystemExit("medigan-iso generate: error: -n must be >= 0")
    settings = _parse_settings(args.settings)
    if args.ray is not None:
        from medigan_iso.cli.ray_generate import run_on_ray

        return run_on_ray(args, settings)
    # a small pool encodes the files while the next batches are read (issue 17)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    writer = SampleWriter(args.output, fmt=args.format, workers=min(WRITER_WORKERS, cpus))
    progress = _Progress(args.num_samples)
    grid_samples: list[Any] = []
    done = 0
    interrupted = False
    manifest: ManifestWriter | None = None
    status = "failed"
    if args.timeout is not None and not args.timeout > 0:
        raise SystemExit("medigan-iso generate: error: --timeout must be > 0 seconds")
    timeouts = {} if args.timeout is None else {"inactivity_timeout_s": args.timeout}
    with Session(
        install_dependencies=False if args.no_build else None,
        sandbox=args.sandbox,
        strict=args.strict,
        as_of=args.as_of,
        **timeouts,
    ) as session:
        entry = session.resolve(args.model)
        batches = session.stream(
            entry.model_id,
            args.num_samples,
            batch_size=args.batch_size,
            seed=args.seed,
            **settings,
        )
        command = _command(args, batches.seed)
        try:
            for batch in batches:
                if manifest is None:
                    manifest = ManifestWriter(
                        writer.directory, batches.run_context(writer=args.format, command=command)
                    )
                    writer.manifest = manifest
                index = batches.batch_index
                # Files are numbered by global sample index (batch index x batch size), so a batch the model
                # returned short of samples does not shift the names of the ones after it.
                writer.write_batch(done if index is None else index * batches.batch_size, batch)
                if args.grid is not None and len(grid_samples) < GRID_MAX_SAMPLES:
                    grid_samples.extend(batch[: GRID_MAX_SAMPLES - len(grid_samples)])
                done += len(batch)
                progress.update(done)
            if manifest is None:
                manifest = ManifestWriter(
                    writer.directory, batches.run_context(writer=args.format, command=command)
                )
                writer.manifest = manifest
            status = "complete"
        except KeyboardInterrupt:
            interrupted = True
            status = "interrupted"
        finally:
            progress.finish()
            writer.close()
            if args.grid is not None and grid_samples:
                from medigan_iso.preview import contact_sheet

                contact_sheet(grid_samples, args.grid)
                print(f"contact sheet: {args.grid}")
                _record_inside(manifest, writer.directory, args.grid)
            if manifest is not None:
                if status == "complete" and args.card:
                    from medigan_iso.cli._card import write_card

                    try:
                        card = write_card(writer.directory, entry, manifest, command=command, samples=done)
                        print(f"dataset card: {card}")
                    except FileExistsError:
                        print(f"note: {writer.directory}/README.md exists; no card written", file=sys.stderr)
                manifest.finish(status)
    for note in writer.notes:
        print(f"note: {neutralise(note)}", file=sys.stderr)
    if interrupted:
        print(
            f"interrupted: the runner was stopped; kept {len(writer.files)} file(s) in {args.output}",
            file=sys.stderr,
        )
        return 130
    if done < args.num_samples:
        print(f"warning: the model returned {done} of {args.num_samples} samples", file=sys.stderr)
    model = neutralise(entry.model_id)
    print(f"{model}: wrote {len(writer.files)} file(s) for {done} sample(s) to {args.output}")
    return 0
