"""``medigan-iso generate --ray ADDRESS``: the same files, written by the workers of a Ray cluster."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from medigan_iso.untrusted import neutralise

__all__ = ["run_on_ray"]


def run_on_ray(args: argparse.Namespace, settings: dict[str, Any]) -> int:
    from medigan_iso.distributed import connect, generate_dataset, write_images
    from medigan_iso.generation import Session

    if args.grid is not None:
        raise SystemExit("medigan-iso generate: error: --grid is not available with --ray")
    with Session(strict=args.strict, as_of=args.as_of) as session:
        model_id = session.resolve(args.model).model_id  # an unknown id fails here, before Ray starts
    connect(args.ray)
    dataset = generate_dataset(
        model_id,
        args.num_samples,
        seed=args.seed,
        batch_size=args.batch_size,
        sandbox=args.sandbox,
        install_dependencies=False if args.no_build else None,
        strict=args.strict,
        inactivity_timeout_s=args.timeout,
        session_options={"as_of": args.as_of} if args.as_of is not None else None,
        **settings,
    )
    summary = write_images(dataset, args.output, format=args.format)
    for note in summary["notes"]:
        print(f"note: {neutralise(note)}", file=sys.stderr)
    seeds = ", ".join(str(request["seed"]) for request in summary["requests"])
    if summary["samples"] < args.num_samples:
        print(
            f"warning: the model returned {summary['samples']} of {args.num_samples} samples", file=sys.stderr
        )
    print(
        f"{neutralise(model_id)}: wrote {summary['files']} file(s) for {summary['samples']} sample(s) "
        f"to {args.output} on Ray (seed {seeds or 'none'}; manifest.jsonl, run.json)"
    )
    return 0
