"""contact_sheet: tiling, value mapping, medigan tuples, PNG output, and clear errors for bad samples."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medigan_iso.preview import contact_sheet


def _cell(sheet: np.ndarray, row: int, col: int, *, size: int, padding: int) -> np.ndarray:
    top = padding + row * (size + padding)
    left = padding + col * (size + padding)
    return sheet[top : top + size, left : left + size]


def test_uint8_greyscale_samples_are_tiled_in_row_major_order_with_white_padding():
    samples = [np.full((4, 4, 1), 10 * (i + 1), dtype=np.uint8) for i in range(5)]
    sheet = contact_sheet(samples, columns=3, padding=2)
    assert sheet.dtype == np.uint8
    assert sheet.shape == (2 * 4 + 3 * 2, 3 * 4 + 4 * 2)
    for i in range(5):
        row, col = divmod(i, 3)
        assert (_cell(sheet, row, col, size=4, padding=2) == 10 * (i + 1)).all()
    assert (_cell(sheet, 1, 2, size=4, padding=2) == 255).all()  # the empty sixth cell
    assert (sheet[:2] == 255).all() and (sheet[:, :2] == 255).all()


def test_default_columns_make_a_square_grid():
    sheet = contact_sheet([np.zeros((8, 8), dtype=np.uint8)] * 16, padding=0)
    assert sheet.shape == (32, 32)
    assert contact_sheet([np.zeros((8, 8), dtype=np.uint8)] * 5, padding=0).shape == (16, 24)


def test_tanh_float_samples_map_minus_one_to_black_and_one_to_white():
    samples = [np.full((2, 2, 1), -1.0, np.float32), np.full((2, 2, 1), 1.0, np.float32), np.zeros((2, 2, 1))]
    sheet = contact_sheet(samples, columns=3, padding=0)
    assert sheet[0, 0] == 0 and sheet[0, 2] == 255 and sheet[0, 4] == 128


def test_unit_range_float_samples_scale_by_255():
    sheet = contact_sheet([np.full((2, 2), 0.5), np.full((2, 2), 1.0)], padding=0)
    assert sheet[0, 0] == 128 and sheet[0, 2] == 255


def test_out_of_range_floats_are_min_max_scaled_over_the_whole_sheet():
    sheet = contact_sheet(
        [np.full((1, 1), -500.0), np.full((1, 1), 1500.0), np.full((1, 1), 500.0)], columns=3, padding=0
    )
    assert sheet.tolist() == [[0, 255, 128]]


def test_medigan_tuples_show_their_image_part():
    image = np.full((3, 3, 1), 77, dtype=np.uint8)
    mask = np.full((3, 3, 1), 200, dtype=np.uint8)
    sheet = contact_sheet([(image, mask, None, "benign"), (image, None, None, "malignant")], padding=1)
    assert (_cell(sheet, 0, 0, size=3, padding=1) == 77).all()
    assert (_cell(sheet, 0, 1, size=3, padding=1) == 77).all()


def test_colour_sample_turns_the_sheet_rgb_and_greyscale_cells_are_replicated():
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    grey = np.full((2, 2), 40, dtype=np.uint8)
    sheet = contact_sheet([grey, rgb], padding=0)
    assert sheet.shape == (2, 4, 3)
    assert sheet[0, 0].tolist() == [40, 40, 40]
    assert sheet[0, 2].tolist() == [255, 0, 0]


def test_rgba_alpha_is_dropped():
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., 1] = 9
    rgba[..., 3] = 255
    assert contact_sheet([rgba], padding=0)[0, 0].tolist() == [0, 9, 0]


def test_smaller_samples_are_centred_in_the_largest_cell():
    sheet = contact_sheet([np.zeros((4, 4), np.uint8), np.full((2, 2), 100, np.uint8)], padding=0)
    assert sheet.shape == (4, 8)
    assert (sheet[1:3, 5:7] == 100).all()
    assert sheet[0, 4] == 255 and sheet[3, 7] == 255


def test_a_stacked_array_is_split_along_its_first_axis():
    stack = np.stack([np.full((3, 3, 1), v, np.uint8) for v in (1, 2, 3, 4)])
    sheet = contact_sheet(stack, padding=0)
    assert sheet.tolist()[0][0] == 1 and sheet[3, 3] == 4


def test_bool_masks_become_black_and_white():
    mask = np.zeros((2, 2), dtype=bool)
    mask[0, 0] = True
    assert contact_sheet([mask], padding=0).tolist() == [[255, 0], [0, 0]]


def test_path_writes_a_png_equal_to_the_returned_array(tmp_path):
    samples = [np.random.default_rng(i).integers(0, 256, (5, 7, 1), dtype=np.uint8) for i in range(3)]
    target = tmp_path / "sub" / "grid.png"
    sheet = contact_sheet(samples, target, columns=2)
    with Image.open(target) as png:
        assert png.mode == "L"
        assert np.array_equal(np.asarray(png), sheet)


def test_empty_samples_are_refused_with_a_remedy():
    with pytest.raises(ValueError, match="no samples to tile: pass at least one image"):
        contact_sheet([])


def test_a_channels_first_sample_is_refused_naming_its_index_and_shape():
    samples = [np.zeros((8, 8), np.uint8), np.zeros((1, 2, 8, 8), np.uint8)]
    with pytest.raises(ValueError, match=r"sample 1 has shape \(1, 2, 8, 8\).*transpose"):
        contact_sheet(samples)


def test_a_non_array_sample_is_refused_naming_its_index():
    with pytest.raises(TypeError, match="sample 1 is a str, not a numpy array"):
        contact_sheet([np.zeros((2, 2)), "image.png"])
    with pytest.raises(TypeError, match="sample 0 is a tuple without an array in it"):
        contact_sheet([(None, "label")])


def test_nan_samples_are_refused_with_a_remedy():
    bad = np.zeros((2, 2))
    bad[1, 1] = np.nan
    with pytest.raises(
        ValueError, match=r"sample 1 contains NaN or infinity; replace them \(numpy.nan_to_num\)"
    ):
        contact_sheet([np.zeros((2, 2)), bad])


@pytest.mark.parametrize(("kwargs", "message"), [({"columns": 0}, "columns"), ({"padding": -1}, "padding")])
def test_bad_layout_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        contact_sheet([np.zeros((2, 2))], **kwargs)
