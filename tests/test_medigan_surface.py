"""medigan_iso.Generators against the recorded call surface of medigan 1.0.0's Generators.

``tests/data/medigan_1_0_0_signatures.json`` is written by ``tests/oracle/record_signatures.py`` from
medigan 1.0.0 itself (``tox -e oracle`` checks the recording still matches). Every recorded method must
exist with medigan's parameters in medigan's order, kinds and defaults; medigan_iso may add keyword-only
parameters (``config=``, ``seed=``...) but never drop or rename one.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import pytest

from medigan_iso import Generators
from medigan_iso.compat import ModelExecutor

RECORDING = Path(__file__).resolve().parent / "data" / "medigan_1_0_0_signatures.json"

_EMPTY = inspect.Parameter.empty


def _recording() -> dict[str, Any]:
    return json.loads(RECORDING.read_text(encoding="utf-8"))


def _ours(function: Any) -> list[dict[str, Any]]:
    params = []
    for param in inspect.signature(function).parameters.values():
        if param.name == "self":
            continue
        item: dict[str, Any] = {"name": param.name, "kind": param.kind.name}
        if param.default is not _EMPTY:
            item["default"] = param.default
        params.append(item)
    return params


def surface_differences(recorded: list[dict[str, Any]], function: Any) -> list[str]:
    """What ``function``'s signature lacks or changes compared with a recorded medigan signature."""
    ours = _ours(function)
    problems = []
    positional = [p for p in ours if p["kind"] in ("POSITIONAL_ONLY", "POSITIONAL_OR_KEYWORD")]
    recorded_positional = [p for p in recorded if p["kind"] == "POSITIONAL_OR_KEYWORD"]
    if [p["name"] for p in positional] != [p["name"] for p in recorded_positional]:
        problems.append(
            f"positional parameters {[p['name'] for p in positional]} != medigan's "
            f"{[p['name'] for p in recorded_positional]}"
        )
    by_name = {p["name"]: p for p in ours}
    for want in recorded:
        have = by_name.get(want["name"])
        if want["kind"] == "VAR_KEYWORD":
            if not any(p["kind"] == "VAR_KEYWORD" for p in ours):
                problems.append("takes no **kwargs")
            continue
        if want["kind"] == "VAR_POSITIONAL":
            if not any(p["kind"] == "VAR_POSITIONAL" for p in ours):
                problems.append("takes no *args")
            continue
        if have is None:
            problems.append(f"missing parameter {want['name']!r}")
            continue
        if have["kind"] != want["kind"]:
            problems.append(f"{want['name']}: kind {have['kind']} != medigan's {want['kind']}")
        if ("default" in have) != ("default" in want) or have.get("default") != want.get("default"):
            problems.append(
                f"{want['name']}: default {have.get('default', '<none>')!r} != medigan's "
                f"{want.get('default', '<none>')!r}"
            )
    extras = [p for p in ours if p["name"] not in {w["name"] for w in recorded}]
    for extra in extras:
        if extra["kind"] not in ("KEYWORD_ONLY", "VAR_KEYWORD", "VAR_POSITIONAL"):
            problems.append(f"extra parameter {extra['name']!r} is not keyword-only")
    return problems


def test_the_recording_holds_medigans_whole_public_surface() -> None:
    recording = _recording()
    assert recording["medigan_version"] == "1.0.0"
    names = set(recording["Generators"])
    assert {"__init__", "__len__", "__getitem__", "__repr__"} <= names
    assert len(names - {"__init__", "__len__", "__getitem__", "__repr__"}) == 32


@pytest.mark.parametrize("method", sorted(_recording()["Generators"]))
def test_generators_method_matches_medigan_1_0_0(method: str) -> None:
    recorded = _recording()["Generators"][method]
    function = getattr(Generators, method, None)
    assert function is not None, f"Generators.{method} is missing"
    assert surface_differences(recorded, function) == [], method


def test_model_executor_generate_matches_medigan_1_0_0() -> None:
    recorded = _recording()["ModelExecutor"]["generate"]
    assert surface_differences(recorded, ModelExecutor.generate) == []


def test_the_comparison_can_fail() -> None:
    recorded = _recording()["Generators"]["generate"]

    def renamed(self: Any, model_id: Any, n: int = 30, **kwargs: Any) -> None: ...

    def changed_default(
        self: Any,
        model_id: Any,
        num_samples: int = 31,
        output_path: Any = None,
        save_images: bool = True,
        is_gen_function_returned: bool = False,
        install_dependencies: bool = False,
        extra: int = 0,
    ) -> None: ...

    problems = surface_differences(recorded, renamed)
    assert any("missing parameter 'num_samples'" in p for p in problems)
    problems = surface_differences(recorded, changed_default)
    assert "num_samples: default 31 != medigan's 30" in problems
    assert "takes no **kwargs" in problems
    assert "extra parameter 'extra' is not keyword-only" in problems
