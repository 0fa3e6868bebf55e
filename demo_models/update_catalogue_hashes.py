"""Recompute package_sha256 of every bundled entry whose package_link is a directory under medigan_iso/data.

Owns that one rewrite of medigan_iso/data/bundled_catalogue.json (run it after convert.py or after
editing a demo package). The hash is medigan_iso.packages.tree_sha256, the one the packages module checks.
Not part of the medigan_iso wheel.

    python demo_models/update_catalogue_hashes.py
"""

from __future__ import annotations

import json
from pathlib import Path

from medigan_iso.packages import tree_sha256

DATA = Path(__file__).resolve().parent.parent / "medigan_iso" / "data"


def main() -> int:
    path = DATA / "bundled_catalogue.json"
    catalogue = json.loads(path.read_text(encoding="utf-8"))
    for model_id, entry in catalogue.items():
        execution = entry["execution"]
        execution["package_sha256"] = tree_sha256(DATA / execution["package_link"])
        print(f"{model_id}: {execution['package_sha256']}")
    path.write_text(json.dumps(catalogue, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
