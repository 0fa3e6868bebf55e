"""Draw docs/demo_grid.png: real procedural phantoms beside samples of the shipped demo-numpy model.

Owns that one picture. Run it from the repository root in an environment where medigan-iso is installed
(it uses medigan_iso.preview.contact_sheet and Pillow; the generated half runs the shipped numpy package's
generate() directly, since that package needs numpy alone):

    python demo_models/make_grid.py

The real half uses a different seed from training, so these exact phantoms were never seen by the model.
Not part of the medigan_iso wheel.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from medigan_iso.preview import contact_sheet

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from phantoms import phantoms  # noqa: E402

COUNT = 16
UPSCALE = 2
REAL_SEED = 4242
GENERATED_SEED = 0
LABEL_HEIGHT_PX = 30


def _demo_numpy():
    path = REPO / "medigan_iso" / "data" / "models" / "demo_numpy" / "__init__.py"
    spec = importlib.util.spec_from_file_location("demo_numpy", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, path.parent / "generator.npz"


def _panel(sheet: np.ndarray, label: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> Image.Image:
    tiles = Image.fromarray(sheet).resize((sheet.shape[1] * UPSCALE, sheet.shape[0] * UPSCALE), Image.NEAREST)
    panel = Image.new("L", (tiles.width, tiles.height + LABEL_HEIGHT_PX), 255)
    panel.paste(tiles, (0, LABEL_HEIGHT_PX))
    ImageDraw.Draw(panel).text((6, 6), label, fill=0, font=font)
    return panel


def main() -> int:
    real = phantoms(COUNT, rng=np.random.default_rng(REAL_SEED))
    module, model_file = _demo_numpy()
    np.random.seed(GENERATED_SEED)
    generated = module.generate(model_file, COUNT, None, False)
    font = ImageFont.load_default(size=16)
    left = _panel(contact_sheet(list(real), columns=4), "Real: procedural head phantoms", font)
    right = _panel(contact_sheet(generated, columns=4), f"Generated: demo-numpy, seed {GENERATED_SEED}", font)
    gap = 16
    grid = Image.new("L", (left.width + gap + right.width, max(left.height, right.height)), 255)
    grid.paste(left, (0, 0))
    grid.paste(right, (left.width + gap, 0))
    out = REPO / "docs" / "demo_grid.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out, optimize=True)
    print(f"wrote {out.relative_to(REPO)} ({grid.width}x{grid.height}, {out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
