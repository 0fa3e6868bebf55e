"""Contact sheets: many generated samples tiled into one image a person can look at.

This module owns turning a list of samples into one uint8 grid (and, when asked, one PNG file written with
Pillow). It accepts what models return: arrays (uint8 or float; H x W, H x W x 1, H x W x 3 or H x W x 4,
whose alpha is dropped) and medigan tuples ``(image, mask?, other?, "label"?)``, of which it shows the image.
It must not run models, spawn processes or print; bad samples raise ValueError/TypeError naming the sample
index and what to pass instead.

Float samples are mapped to 0-255 with one rule for the whole sheet, so brightness is comparable across
cells: values within [0, 1] scale by 255; within [-1, 1] (a tanh output) map (x + 1) * 127.5; within
[0, 255] are taken as is; anything else is min-max scaled over the sheet. Integer samples other than uint8
are min-max scaled over the sheet too; bool samples become 0/255.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from medigan_iso.untrusted import get_logger

__all__ = ["ContactSheet", "contact_sheet"]

_log = get_logger(__name__)

PADDING_VALUE = 255  # grid lines are white: medical images are mostly black at their borders
MAX_SHEET_PIXELS = 100_000_000  # guards against an accidental 100k-sample sheet eating the host's memory


class ContactSheet(np.ndarray):  # type: ignore[type-arg,unused-ignore]
    """The uint8 array contact_sheet returns; Jupyter shows it inline as a PNG (``_repr_png_``)."""

    def _repr_png_(self) -> bytes:
        from PIL import Image

        out = io.BytesIO()
        Image.fromarray(np.asarray(self, dtype=np.uint8)).save(out, format="PNG")
        return out.getvalue()


def _image_part(sample: Any, index: int) -> npt.NDArray[Any]:
    if isinstance(sample, (tuple, list)) and not isinstance(sample, np.ndarray):
        arrays = [part for part in sample if isinstance(part, np.ndarray)]
        if not arrays:
            raise TypeError(
                f"sample {index} is a {type(sample).__name__} without an array in it: pass images as numpy"
                " arrays or medigan tuples (image, mask, other, label)"
            )
        sample = arrays[0]
    if not isinstance(sample, np.ndarray):
        raise TypeError(f"sample {index} is a {type(sample).__name__}, not a numpy array: pass numpy arrays")
    return sample


def _as_hwc(image: npt.NDArray[Any], index: int) -> npt.NDArray[Any]:
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(
            f"sample {index} has shape {image.shape}; a contact sheet takes H x W, H x W x 1, H x W x 3 or"
            " H x W x 4 images (for channels-first C x H x W arrays, pass array.transpose(1, 2, 0))"
        )
    if image.shape[2] == 4:
        image = image[:, :, :3]
    if not (image.dtype == np.bool_ or np.issubdtype(image.dtype, np.number)) or np.iscomplexobj(image):
        raise TypeError(f"sample {index} has dtype {image.dtype}; pass real-valued (integer or float) images")
    return image


def _to_uint8(images: list[npt.NDArray[Any]]) -> list[npt.NDArray[np.uint8]]:
    if all(image.dtype == np.uint8 for image in images):
        return images
    numeric = [image for image in images if image.dtype not in (np.uint8, np.bool_)]
    for index, image in enumerate(images):
        if image.dtype.kind == "f" and not np.isfinite(image).all():
            raise ValueError(
                f"sample {index} contains NaN or infinity; replace them (numpy.nan_to_num) first"
            )
    lo = min(float(image.min()) for image in numeric) if numeric else 0.0
    hi = max(float(image.max()) for image in numeric) if numeric else 1.0
    all_float = all(image.dtype.kind == "f" for image in numeric)
    if all_float and lo >= 0.0 and hi <= 1.0:
        offset, scale = 0.0, 255.0
    elif all_float and lo >= -1.0 and hi <= 1.0:
        offset, scale = 1.0, 127.5
    elif lo >= 0.0 and hi <= 255.0 and all_float:
        offset, scale = 0.0, 1.0
    else:
        offset, scale = -lo, (255.0 / (hi - lo) if hi > lo else 0.0)
    converted = []
    for image in images:
        if image.dtype == np.uint8:
            converted.append(image)
        elif image.dtype == np.bool_:
            converted.append(image.astype(np.uint8) * np.uint8(255))
        else:
            scaled = np.round((image.astype(np.float64) + offset) * scale)
            converted.append(np.clip(scaled, 0, 255).astype(np.uint8))
    return converted


def contact_sheet(
    samples: Sequence[Any] | npt.NDArray[Any],
    path: str | Path | None = None,
    *,
    columns: int | None = None,
    padding: int = 2,
) -> ContactSheet:
    """Tile ``samples`` into one uint8 image (H x W for greyscale samples, H x W x 3 if any has colour).

    ``samples`` is a sequence of arrays or medigan tuples, or one array stacked along its first axis.
    ``columns`` defaults to ceil(sqrt(n)); ``padding`` pixels of white separate and surround the cells;
    cells of smaller samples are centred in the largest sample's cell. With ``path``, the sheet is also
    written there as a PNG (parent directories are created). The result is a numpy array (a subclass
    that Jupyter displays inline as the image).
    """
    if columns is not None and (isinstance(columns, bool) or not isinstance(columns, int) or columns < 1):
        raise ValueError(f"columns must be a positive integer or None, got {columns!r}")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be a non-negative integer number of pixels, got {padding!r}")
    images = [_as_hwc(_image_part(sample, index), index) for index, sample in enumerate(samples)]
    if not images:
        raise ValueError("no samples to tile: pass at least one image")
    cells = _to_uint8(images)
    channels = 3 if any(cell.shape[2] == 3 for cell in cells) else 1
    cell_h = max(cell.shape[0] for cell in cells)
    cell_w = max(cell.shape[1] for cell in cells)
    cols = min(columns or math.ceil(math.sqrt(len(cells))), len(cells))
    rows = math.ceil(len(cells) / cols)
    height = rows * cell_h + (rows + 1) * padding
    width = cols * cell_w + (cols + 1) * padding
    if height * width * channels > MAX_SHEET_PIXELS:
        raise ValueError(
            f"a {len(cells)}-sample sheet of {cell_h}x{cell_w} cells would be {height}x{width} pixels; pass"
            " fewer samples (for example samples[:64])"
        )
    sheet = np.full((height, width, channels), PADDING_VALUE, dtype=np.uint8)
    for index, cell in enumerate(cells):
        row, col = divmod(index, cols)
        top = padding + row * (cell_h + padding) + (cell_h - cell.shape[0]) // 2
        left = padding + col * (cell_w + padding) + (cell_w - cell.shape[1]) // 2
        sheet[top : top + cell.shape[0], left : left + cell.shape[1], :] = cell  # broadcasts 1 -> 3 channels
    result = (sheet[:, :, 0] if channels == 1 else sheet).view(ContactSheet)
    if path is not None:
        from PIL import Image  # only when writing: tiling itself needs numpy alone

        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(result).save(target, format="PNG")
        _log.info("wrote a %d-sample contact sheet (%dx%d) to %s", len(cells), width, height, target)
    return result
