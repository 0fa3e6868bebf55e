"""Model packages written by the tests, already normalised to a directory holding ``__init__.py``.

``write_numpy_zoo(root)`` writes a numpy-only package whose ``behaviour`` kwarg selects what generate does
(plain arrays, tuples with masks and labels, nested lists, None, stdout noise, raising, os._exit, hanging,
short batches, saving files). It imports a helper module relatively, so loading it under a package name that
is no identifier ("ProGAN-4ch") proves relative imports work. ``write_torch_model(root)`` needs torch.
Weights are a small ``.npy`` file created deterministically.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

NUMPY_ZOO_INIT = """
import os
import sys
import time

import numpy as np

from .helpers import make_image

_REUSED = np.zeros((256, 256), dtype=np.uint8)
_CALLS = [0]


def generate(model_file, num_samples, output_path, save_images, behaviour="plain", size=8, **kwargs):
    weights = np.load(model_file)
    images = [make_image(size, weights) for _ in range(num_samples)]
    if behaviour == "plain":
        pass
    elif behaviour == "tuple3":
        images = [(im, (im > 127).astype(np.uint8), "benign") for im in images]
    elif behaviour == "tuple4":
        images = [(im, im[..., 0], np.float32(0.5) * im, "malignant") for im in images]
    elif behaviour == "nested":
        images = [[im, [None, 7, 2.5, True, "x", (b"raw", {"k": im[:2]})]] for im in images]
    elif behaviour == "none":
        images = [None] * num_samples
    elif behaviour == "noisy":
        print("model says hello on stdout")
        sys.stdout.flush()
        os.system("echo hi from a shell")
        os.write(1, b"raw bytes on fd 1\\n")
    elif behaviour == "raises":
        def inner():
            raise ValueError("latent vector has the wrong size")
        inner()
    elif behaviour == "exits":
        os._exit(3)
    elif behaviour == "hangs":
        time.sleep(3600)
    elif behaviour == "short":
        images = images[: max(0, num_samples - 1)]
    elif behaviour == "batched_array":
        return np.stack(images)
    elif behaviour == "echo_kwargs":
        return [dict(kwargs, size=size)]
    elif behaviour == "echo_thread_env":
        keys = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")
        return [{key: os.environ.get(key) for key in keys}] * num_samples
    elif behaviour == "reuses_buffer":
        _CALLS[0] += 1
        _REUSED[...] = _CALLS[0] % 256
        return [_REUSED] * num_samples
    elif behaviour == "unsendable":
        return [object()]
    if save_images:
        os.makedirs(output_path, exist_ok=True)
        for i, im in enumerate(images):
            np.save(os.path.join(output_path, "sample_{}.npy".format(i)), im)
        return None
    return images
"""

NUMPY_ZOO_HELPERS = """
import numpy as np


def make_image(size, weights):
    noise = np.random.randint(0, 256, size=(size, size, 3)).astype(np.int64)
    return ((noise + int(weights.sum())) % 256).astype(np.uint8)
"""

BROKEN_INIT = """
raise ImportError("this model needs a package the env does not have")
"""

HANGING_IMPORT_INIT = """
import time

time.sleep(3600)
"""

TORCH_INIT = """
import numpy as np
import torch


def generate(model_file, num_samples, output_path, save_images, size=8):
    weights = torch.from_numpy(np.load(model_file))
    out = []
    for _ in range(num_samples):
        x = torch.rand(size, size, 3) * weights.sum()
        out.append((x * 255).clamp(0, 255).to(torch.uint8).numpy())
    return out
"""


def _write(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    np.save(root / "weights.npy", np.arange(4, dtype=np.float32))
    return root


def write_numpy_zoo(root: Path) -> Path:
    return _write(root, {"__init__.py": NUMPY_ZOO_INIT, "helpers.py": NUMPY_ZOO_HELPERS})


def zoo_execution(
    package_link: str,
    package_sha256: str,
    *,
    custom: Mapping[str, object] | None = None,
    dependencies: Sequence[str] = ("numpy",),
    package_name: str = "zoo",
    image_size: Sequence[int] | None = (8, 8),
) -> dict[str, Any]:
    """The ``execution`` part of a catalogue entry for a test package (weights in ``weights.npy``,
    ``generate`` taking medigan's base arguments), such as one :func:`write_numpy_zoo` writes.
    ``image_size=None`` leaves that key out."""
    execution: dict[str, Any] = {
        "package_name": package_name,
        "package_link": package_link,
        "package_sha256": package_sha256,
        "model_name": "weights",
        "extension": ".npy",
    }
    if image_size is not None:
        execution["image_size"] = list(image_size)
    execution["dependencies"] = list(dependencies)
    execution["generate_method"] = {
        "name": "generate",
        "args": {
            "base": ["model_file", "num_samples", "output_path", "save_images"],
            "custom": dict(custom or {}),
        },
    }
    return execution


def write_broken(root: Path) -> Path:
    return _write(root, {"__init__.py": BROKEN_INIT})


def write_hanging_import(root: Path) -> Path:
    return _write(root, {"__init__.py": HANGING_IMPORT_INIT})


def write_torch_model(root: Path) -> Path:
    return _write(root, {"__init__.py": TORCH_INIT})
