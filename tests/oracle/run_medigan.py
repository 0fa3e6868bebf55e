"""Run the search/rank cases of tests/data/search_cases.json through medigan 1.0.0 itself; print JSON.

Usage (inside an env with ``medigan==1.0.0``; tox env ``oracle``):
``python tests/oracle/run_medigan.py CATALOGUE.json [--out FILE] [--check RECORDED.json]``.
``--check`` exits 1 listing every case whose answer differs from the recording the test suite compares
against. medigan reads ``./config/global.json`` when it exists, so the script runs it from a temp dir
holding a copy of CATALOGUE.json: no network. The output maps case id -> result (model ids for searches,
medigan's dicts for key-value and rank), or ``{"error": "<exception type>"}`` where medigan crashes.
It imports nothing from medigan_iso.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

CASES = Path(__file__).resolve().parent.parent / "data" / "search_cases.json"


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
    text = json.dumps(results, indent=1, sort_keys=True)
    if out is not None:
        out.write_text(text + "\n")
    if check is not None:
        recorded = json.loads(check.read_text())
        differ = sorted(k for k in set(recorded) | set(results) if recorded.get(k) != results.get(k))
        for case_id in differ:
            print(f"DIFFERS {case_id}: medigan {results.get(case_id)!r}, recorded {recorded.get(case_id)!r}")
        print(f"{len(results) - len(differ)}/{len(results)} cases equal the recording")
        raise SystemExit(1 if differ else 0)
    if out is None:
        print(text)


if __name__ == "__main__":
    main()
