"""The documented int/float -> uint8 conversion for PNG output (medigan_iso.images), value by value.

Each rule of the module docstring has a case with its exact expected bytes, and the PNG written by
SampleWriter is read back with Pillow to show the file holds what to_uint8 returned.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medigan_iso.images import SampleWriter, to_uint8


@pytest.mark.parametrize(
    ("values", "dtype", "expected"),
    [
        ([0, 7, 255], np.uint8, [0, 7, 255]),  # as is
        ([False, True], np.bool_, [0, 255]),
        ([0, 100, 255], np.int16, [0, 100, 255]),  # fits: kept
        ([-100, 100, 300], np.int16, [0, 127, 255]),  # does not fit: min-max scaled (200 * 255/400 < 127.5)
        ([0, 65535], np.uint16, [0, 255]),
        ([1000, 1000], np.int32, [255, 255]),  # constant out of range: clipped, no division by zero
        ([-5, -5], np.int64, [0, 0]),
        ([0.0, 0.5, 1.0], np.float32, [0, 128, 255]),  # [0, 1] times 255
        ([-1.0, 0.0, 1.0], np.float64, [0, 128, 255]),  # [-1, 1] by (x + 1) * 127.5
        ([2.4, 100.0, 300.0], np.float64, [2, 100, 255]),  # anything else: clipped
        ([-3.0, 0.5, 2.0], np.float64, [0, 0, 2]),  # 0.5 rounds half to even
        ([np.nan, 0.5, 1.0], np.float32, [0, 128, 255]),  # NaN is 0
        ([np.inf, -np.inf, 10.0], np.float64, [255, 0, 10]),
    ],
)
def test_to_uint8_follows_the_documented_rules(
    values: list[object], dtype: type, expected: list[int]
) -> None:
    out = to_uint8(np.array(values, dtype=dtype))
    assert out.dtype == np.uint8
    assert out.tolist() == expected


def test_empty_arrays_convert_without_error() -> None:
    assert to_uint8(np.zeros((0, 3), dtype=np.int32)).shape == (0, 3)
    assert to_uint8(np.zeros((0,), dtype=np.float32)).dtype == np.uint8


def test_a_dtype_that_is_no_image_is_refused() -> None:
    with pytest.raises(TypeError, match="cannot convert an array of dtype complex128 to an image"):
        to_uint8(np.array([1 + 2j]))


@pytest.mark.parametrize(
    ("array", "mode"),
    [
        (np.linspace(-1.0, 1.0, 48, dtype=np.float32).reshape(6, 8), "L"),
        (np.arange(6 * 8 * 3, dtype=np.int32).reshape(6, 8, 3) * 7 - 400, "RGB"),
        (np.linspace(0.0, 1.0, 3 * 6 * 8).reshape(3, 6, 8), "RGB"),  # channels first
    ],
)
def test_written_pngs_hold_the_converted_bytes(tmp_path: Path, array: np.ndarray, mode: str) -> None:
    writer = SampleWriter(tmp_path, fmt="png")
    writer.write(0, array)
    writer.close()
    with Image.open(tmp_path / "sample_00000.png") as image:
        assert image.mode == mode
        stored = np.asarray(image)
    expected = to_uint8(np.moveaxis(array, 0, -1) if array.shape[0] == 3 else array)
    np.testing.assert_array_equal(stored, expected)
