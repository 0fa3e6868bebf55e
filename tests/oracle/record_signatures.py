"""Record the public call surface of medigan 1.0.0's Generators (and ModelExecutor.generate); print JSON.

Usage (inside an env with ``medigan==1.0.0``; tox env ``oracle``):
``python tests/oracle/record_signatures.py [--out FILE] [--check RECORDED.json]``.
The recording is what ``tests/test_medigan_surface.py`` compares ``medigan_iso.Generators`` with: every
public method (no leading underscore) plus ``__init__``, ``__len__``, ``__getitem__`` and ``__repr__``, each
with its parameters in order: name, kind (``inspect.Parameter`` kind name) and default (JSON value, or
``{"repr": ...}`` for anything JSON cannot hold; absent when there is none). ``--check`` exits 1 naming
every method whose signature differs from the recording. It reads medigan's classes with ``inspect`` after
importing them (importing medigan needs torch; it runs no model). It imports nothing from medigan_iso.
"""

from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path
from typing import Any

DUNDERS = ("__init__", "__len__", "__getitem__", "__repr__")


def _default(value: Any) -> Any:
    try:
        json.dumps(value)
    except TypeError:
        return {"repr": repr(value)}
    return value


def describe(function: Any) -> list[dict[str, Any]]:
    params = []
    for param in inspect.signature(function).parameters.values():
        if param.name == "self":
            continue
        item: dict[str, Any] = {"name": param.name, "kind": param.kind.name}
        if param.default is not inspect.Parameter.empty:
            item["default"] = _default(param.default)
        params.append(item)
    return params


def surface(cls: type, names: list[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    if names is None:
        names = [n for n in vars(cls) if (not n.startswith("_") or n in DUNDERS) and callable(vars(cls)[n])]
    return {name: describe(getattr(cls, name)) for name in sorted(names)}


def record() -> dict[str, Any]:
    from importlib.metadata import version

    from medigan import Generators
    from medigan.execute_model.model_executor import ModelExecutor

    return {
        "medigan_version": version("medigan"),
        "Generators": surface(Generators),
        "ModelExecutor": surface(ModelExecutor, ["generate"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    parser.add_argument("--check", help="compare with a recorded file; exit 1 on any difference")
    args = parser.parse_args()
    recorded_now = record()
    text = json.dumps(recorded_now, indent=1, sort_keys=True)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.check:
        recorded = json.loads(Path(args.check).read_text())
        differ = []
        for cls in ("Generators", "ModelExecutor"):
            for name in sorted(set(recorded[cls]) | set(recorded_now[cls])):
                if recorded[cls].get(name) != recorded_now[cls].get(name):
                    differ.append(f"{cls}.{name}")
        if recorded["medigan_version"] != recorded_now["medigan_version"]:
            differ.append("medigan_version")
        for name in differ:
            print(f"DIFFERS {name}")
        total = len(recorded_now["Generators"]) + len(recorded_now["ModelExecutor"])
        print(f"{total - len(differ)}/{total} signatures equal the recording")
        raise SystemExit(1 if differ else 0)
    if not args.out:
        print(text)


if __name__ == "__main__":
    main()
