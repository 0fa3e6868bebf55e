"""SampleWriter with a pool of encoder threads (issue 17): the same files, in the same order, as the serial
writer; the caller's later changes to an array do not reach its file; errors surface to the caller."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _compat import zip_strict

from medigan_iso.errors import OutputExistsError
from medigan_iso.images import SampleWriter


def samples(n: int) -> list[object]:
    rng = np.random.default_rng(3)
    out: list[object] = []
    for i in range(n):
        image = rng.integers(0, 256, size=(24, 20, 3), dtype=np.uint8)
        if i % 3 == 0:
            out.append((image, (image[..., 0] > 127).astype(np.uint8), f"label-{i}"))
        elif i % 3 == 1:
            out.append(rng.random((16, 16)).astype(np.float32))
        else:
            out.append(rng.random((2, 3, 4, 5)))  # not an image: .npy
    return out


def write_all(directory: Path, workers: int, fmt: str = "png") -> SampleWriter:
    writer = SampleWriter(directory, fmt=fmt, workers=workers)
    batch = samples(40)
    for first in range(0, 40, 8):
        writer.write_batch(first, batch[first : first + 8])
    writer.close()
    return writer


@pytest.mark.parametrize("fmt", ["png", "npy"])
def test_the_pool_writes_the_serial_writers_files_in_its_order(tmp_path: Path, fmt: str) -> None:
    serial = write_all(tmp_path / "serial", 0, fmt)
    pooled = write_all(tmp_path / "pooled", 3, fmt)
    assert [p.name for p in pooled.files] == [p.name for p in serial.files]
    assert len(pooled.files) > 40 and pooled.notes == serial.notes
    for a, b in zip_strict(serial.files, pooled.files):
        assert a.read_bytes() == b.read_bytes(), a.name
    assert sorted(p.name for p in (tmp_path / "pooled").iterdir()) == sorted(
        p.name for p in (tmp_path / "serial").iterdir()
    )  # no temporary file left behind


def test_an_array_changed_after_write_keeps_its_written_pixels(tmp_path: Path) -> None:
    writer = SampleWriter(tmp_path, fmt="npy", workers=2)
    image = np.zeros((8, 8), np.uint8)
    writer.write(0, image)
    image[...] = 255  # the caller reuses its buffer before the pool has encoded it
    writer.close()
    np.testing.assert_array_equal(np.load(tmp_path / "sample_00000.npy"), np.zeros((8, 8), np.uint8))


def test_an_existing_file_still_raises_output_exists(tmp_path: Path) -> None:
    (tmp_path / "sample_00002.png").write_bytes(b"already here")
    writer = SampleWriter(tmp_path, fmt="png", workers=2)
    with pytest.raises(OutputExistsError):
        for i in range(6):
            writer.write(i, np.full((8, 8), i, np.uint8))
        writer.close()
    assert (tmp_path / "sample_00002.png").read_bytes() == b"already here"
    writer.close()  # as the serial writer: nothing after the failing file lands
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"sample_0000{i}.png" for i in range(3)]
    with pytest.raises(ValueError, match="workers must be an int >= 0"):
        SampleWriter(tmp_path / "x", workers=-1)


def test_pooled_files_hashed_on_the_pool_verify_against_their_manifest(tmp_path: Path) -> None:
    import hashlib
    import json

    import medigan_iso
    from medigan_iso.manifest import ManifestWriter, RunContext

    writer = SampleWriter(tmp_path, fmt="png", workers=2)
    writer.manifest = ManifestWriter(tmp_path, RunContext({"model_id": "m", "batch_size": 8, "seed": 1}))
    batch = samples(24)
    for first in range(0, 24, 8):
        writer.write_batch(first, batch[first : first + 8])
    writer.close()
    writer.manifest.finish("complete")
    lines = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert [line["path"] for line in lines] == [p.name for p in writer.files]  # in landing order
    for line in lines:
        data = (tmp_path / line["path"]).read_bytes()
        assert (line["sha256"], line["size"]) == (hashlib.sha256(data).hexdigest(), len(data))
    report = medigan_iso.verify(tmp_path)
    assert report.ok and report.extra == () and report.missing == ()
