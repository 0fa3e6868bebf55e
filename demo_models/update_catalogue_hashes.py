"""Recompute package_sha256 of every bundled entry whose package_link is a directory under medigan_iso/data.

Owns that one rewrite of medigan_iso/data/demo_catalogue.json (the demo entries, to be folded into
bundled_catalogue.json; run it after convert.py or after editing a demo package).
Not part of the medigan_iso wheel.

    python demo_models/update_catalogue_hashes.py
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "medigan_iso" / "data"


def tree_sha256(directory: Path) -> str:
    """LOCAL COPY: replace with medigan_iso.packages.tree_sha256 after merge (as in tests/_demo_envs.py).

    sha256 over every file under ``directory`` (skipping __pycache__ directories and *.pyc files), in sorted
    order of relative POSIX paths, of ``path + b"\\0" + str(len(content)).encode() + b"\\0" + content``.
    """
    digest = hashlib.sha256()
    files = [
        p
        for p in directory.rglob("*")
        if p.is_file() and "__pycache__" not in p.relative_to(directory).parts and p.suffix != ".pyc"
    ]
    for rel in sorted(p.relative_to(directory).as_posix() for p in files):
        content = (directory / rel).read_bytes()
        digest.update(rel.encode() + b"\0" + str(len(content)).encode() + b"\0" + content)
    return digest.hexdigest()


def main() -> int:
    path = DATA / "demo_catalogue.json"
    catalogue = json.loads(path.read_text(encoding="utf-8"))
    for model_id, entry in catalogue.items():
        execution = entry["execution"]
        execution["package_sha256"] = tree_sha256(DATA / execution["package_link"])
        print(f"{model_id}: {execution['package_sha256']}")
    path.write_text(json.dumps(catalogue, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
