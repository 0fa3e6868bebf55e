"""Run the search/rank cases of tests/data/search_cases.json through medigan 1.0.0 itself; print JSON.

Usage (inside an env with ``medigan==1.0.0``; tox env ``oracle``):
``python tests/oracle/run_medigan.py CATALOGUE.json [--out FILE] [--check RECORDED.json]``.
``--check`` exits 1 listing every case whose answer differs from the recording the test suite compares
against, or whose recorded parameters (or catalogue) are not the ones run now. medigan reads
``./config/global.json`` when it exists, so the script runs it from a temp dir holding a copy of
CATALOGUE.json: no network. The recording is ``{"medigan": version, "catalogue_sha256": ...,
"cases": {case id: {"params_sha256": ..., "result": ...}}}``; a result is model ids for searches,
medigan's dicts for key-value and rank, or ``{"error": "<exception type>"}`` where medigan crashes.
``params_sha256`` (``case_sha256``) lets tests/test_search.py refuse a recording made for other
parameters than the case now holds (issue 19). It imports nothing from medigan_iso.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

CASES = Path(__file__).resolve().parent.parent / "data" / "search_cases.json"
MEDIGAN_VERSION = "1.0.0"


def case_sha256(case: dict[str, Any]) -> str:
    """The hash of a case's parameters (canonical JSON), stored beside its recorded result."""
    text = json.dumps(case, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def recording(catalogue: Path, cases: list[dict[str, Any]], results: dict[str, Any]) -> dict[str, Any]:
    return {
        "medigan": MEDIGAN_VERSION,
        "catalogue_sha256": file_sha256(catalogue),
        "cases": {
            case["id"]: {"params_sha256": case_sha256(case), "result": results[case["id"]]} for case in cases
        },
    }


def run_case(generators: Any, case: dict[str, Any]) -> Any:
    kind = case["kind"]
    if kind == "search":
        found = generators.find_matching_models_by_values(
            values=case["values"],
            target_values_operator=case["operator"],
            are_keys_also_matched=case["keys"],
            is_case_sensitive=case["case_sensitive"],
        )
        return [candidate.model_id for candidate in found]
    if kind == "key_value":
        return generators.get_models_by_key_value_pair(
            key1=case["key"], value1=case["value"], is_case_sensitive=case["case_sensitive"]
        )
    if kind == "rank":
        return generators.rank_models_by_performance(
            model_ids=case["model_ids"], metric=case["metric"], order=case["order"]
        )
    if kind == "find_and_rank":
        return generators.find_models_and_rank(
            values=case["values"],
            target_values_operator=case["operator"],
            are_keys_also_matched=case["keys"],
            is_case_sensitive=case["case_sensitive"],
            metric=case["metric"],
            order=case["order"],
        )
    if kind == "list_models":
        return generators.list_models()
    if kind == "selection_keys":
        return generators.get_selection_keys(model_id=case["model_id"])
    if kind == "selection_values":
        return generators.get_selection_values_for_key(key=case["key"], model_id=case["model_id"])
    if kind == "config_by_id":
        return generators.get_config_by_id(model_id=case["model_id"], config_key=case["config_key"])
    if kind == "criteria_by_id":
        return generators.get_selection_criteria_by_id(model_id=case["model_id"])
    if kind == "criteria_by_ids":
        return generators.get_selection_criteria_by_ids(model_ids=case["model_ids"])
    raise ValueError(f"unknown case kind {kind!r}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("catalogue")
    parser.add_argument("--out")
    parser.add_argument("--check", help="compare with a recorded results file; exit 1 on any difference")
    args = parser.parse_args()
    cases = json.loads(CASES.read_text())
    catalogue = Path(args.catalogue).resolve()
    out = Path(args.out).resolve() if args.out else None
    check = Path(args.check).resolve() if args.check else None
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as workdir:
        (Path(workdir) / "config").mkdir()
        shutil.copy(catalogue, Path(workdir) / "config" / "global.json")
        os.chdir(workdir)
        from medigan import Generators

        generators = Generators()
        for case in cases:
            try:
                results[case["id"]] = run_case(generators, case)
            except Exception as exc:  # medigan's crashes are data here
                results[case["id"]] = {"error": type(exc).__name__}
    import medigan

    version = getattr(medigan, "__version__", None)
    if version not in (None, MEDIGAN_VERSION):  # medigan 1.0.0 may not set __version__
        raise SystemExit(f"this is medigan {version}, the recording is of medigan {MEDIGAN_VERSION}")
    fresh = recording(catalogue, cases, results)
    text = json.dumps(fresh, indent=1, sort_keys=True)
    if out is not None:
        out.write_text(text + "\n")
    if check is not None:
        raise SystemExit(compare(json.loads(check.read_text()), fresh))
    if out is None:
        print(text)


def compare(recorded: dict[str, Any], fresh: dict[str, Any]) -> int:
    """Print every difference between a recording and a fresh run; 1 if any, else 0."""
    problems = []
    if recorded.get("catalogue_sha256") != fresh["catalogue_sha256"]:
        problems.append(
            f"CATALOGUE recorded on {recorded.get('catalogue_sha256')}, run on {fresh['catalogue_sha256']}"
        )
    old, new = recorded.get("cases", {}), fresh["cases"]
    for case_id in sorted(set(old) | set(new)):
        was, now = old.get(case_id, {}), new.get(case_id, {})
        if was.get("params_sha256") != now.get("params_sha256"):
            problems.append(f"PARAMS {case_id}: recorded for other parameters than the case holds now")
        if was.get("result") != now.get("result"):
            problems.append(
                f"DIFFERS {case_id}: medigan {now.get('result')!r}, recorded {was.get('result')!r}"
            )
    for line in problems:
        print(line)
    print(f"{len(new)} cases run, {len(problems)} difference(s) from the recording")
    return 1 if problems else 0


if __name__ == "__main__":
    main()
