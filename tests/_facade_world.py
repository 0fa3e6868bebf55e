"""A catalogue and home for the facade, torch and visualize tests: the bundled demo models plus a numpy zoo.

``facade_world(root)`` writes a catalogue with ``test-zoo-tuple4`` (image, mask, other output, label),
``test-zoo-plain`` and ``test-zoo-conditional`` (latent size 20, a ``condition``) entries over the zoo
package of ``_model_fixtures``, and returns the environment variables that make a fresh home read it (the
bundled demo models stay in; no official catalogue).
"""

from __future__ import annotations

import json
from pathlib import Path

from _model_fixtures import write_numpy_zoo

from medigan_iso.packages import tree_sha256

TUPLE4_ID = "test-zoo-tuple4"
PLAIN_ID = "test-zoo-plain"
CONDITIONAL_ID = "test-zoo-conditional"  # declares input_latent_vector_size 20 and a condition


def _entry(digest: str, custom: dict[str, object], latent_size: int | None = None) -> dict[str, object]:
    method: dict[str, object] = {
        "name": "generate",
        "args": {"base": ["model_file", "num_samples", "output_path", "save_images"], "custom": custom},
    }
    if latent_size is not None:
        method["input_latent_vector_size"] = latent_size
    return {
        "execution": {
            "package_name": "zoo",
            "package_link": "models/zoo",
            "package_sha256": digest,
            "model_name": "weights",
            "extension": ".npy",
            "image_size": [8, 8],
            "dependencies": ["numpy"],
            "generate_method": method,
        },
        "selection": {"modality": ["test"], "tags": ["zoo"]},
        "description": {"title": "test zoo"},
    }


def facade_world(root: Path) -> dict[str, str]:
    package = write_numpy_zoo(root / "catalogue" / "models" / "zoo")
    digest = tree_sha256(package)
    catalogue = {
        TUPLE4_ID: _entry(digest, {"behaviour": "tuple4", "size": 6}),
        PLAIN_ID: _entry(digest, {"behaviour": "plain", "size": 4}),
        CONDITIONAL_ID: _entry(digest, {"behaviour": "tuple3", "size": 6, "condition": None}, latent_size=20),
    }
    path = root / "catalogue" / "catalogue.json"
    path.write_text(json.dumps(catalogue), encoding="utf-8")
    return {
        "MEDIGAN_ISO_HOME": str(root / "home"),
        "MEDIGAN_ISO_CONFIG": str(path),
        "MEDIGAN_ISO_CATALOGUE_URL": "",
        "MEDIGAN_ISO_BUNDLED": "1",
    }
