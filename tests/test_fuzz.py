"""A short, bounded fuzzing run over the three parsers that face hostile bytes (issue 16).

Hypothesis drives the targets of ``_fuzz_targets`` with raw bytes and with structured inputs that get past
the first checks (valid frame prefixes with random msgpack headers; zips built entry by entry with hostile
names and modes; JSON catalogues of random shape). ``tox -e fuzz`` runs the same targets under atheris,
coverage-guided, for much longer.
"""

from __future__ import annotations

import json
from pathlib import Path

import msgpack
import numpy as np
from _fuzz_targets import catalogue_loader, frame_decoder, frame_from_parts, safe_extract
from _zipcraft import S_IFCHR, S_IFDIR, S_IFLNK, S_IFREG, RawEntry, build_zip
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from medigan_iso_runner import protocol

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
kinds = st.sampled_from(sorted(protocol.RUNNER_KINDS | protocol.HOST_KINDS | {"nope"})) | json_values
dtypes = st.sampled_from(sorted(protocol.ALLOWED_DTYPES | {"|O", "<U4", "|V8"}))
shapes = st.lists(st.integers(min_value=-2, max_value=2**40), max_size=6)


@FAST
@given(st.binary(max_size=4096))
def test_frame_decoder_raw_bytes(data: bytes) -> None:
    frame_decoder(data)


@FAST
@given(st.binary(max_size=512))
def test_frame_decoder_after_a_valid_prefix(tail: bytes) -> None:
    frame_decoder(protocol.MAGIC + tail)


@FAST
@given(
    kind=kinds,
    extra=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    arrays=st.lists(st.tuples(dtypes, shapes), max_size=4),
    samples=json_values,
    payload=st.binary(max_size=256),
    lie=st.none() | st.integers(min_value=0, max_value=2**64 - 1),
)
def test_frame_decoder_structured_headers(
    kind: object, extra: dict, arrays: list, samples: object, payload: bytes, lie: int | None
) -> None:
    header = {**extra, "kind": kind, "arrays": [[d, s] for d, s in arrays], "samples": samples}
    frame_decoder(frame_from_parts(msgpack.packb(header, use_bin_type=True), payload, lie))


def test_a_header_whose_kind_is_a_list_is_a_protocol_error() -> None:
    # found by atheris (tox -e fuzz): `kind in frozenset` raised TypeError on an unhashable kind
    import base64

    import pytest

    crash = base64.b64decode(
        "TURHTgAAAEwAAAAAAAAABISka2luZJViYXRjaKdyZXF1ZXN0AadzYW1wbGVzkoGhYQCBoSyTpWxhYmVsyz/4AAAAAAAAgaFkgaFrwKZh"
        "cnJheXORkqN8dTCSAgIAAAAA"
    )
    with pytest.raises(protocol.ProtocolError, match="unknown frame kind"):
        protocol.read_frame(protocol.bytes_reader(crash))
    for kind in ([1], {"k": 1}, 3, None, b"batch"):
        header = msgpack.packb({"kind": kind}, use_bin_type=True)
        with pytest.raises(protocol.ProtocolError, match="unknown frame kind"):
            protocol.read_frame(protocol.bytes_reader(frame_from_parts(header, b"")))


ZIP_WITH_NEGATIVE_HEADER_OFFSET = (
    "UEsDBBQAAAAIABtwfl0I7Jn/UAAAAFkAiQEAUEsDBBQAAAAIABtwfl2PXQ5eBgAAAGQAAAAOAAAAZGVtb19wa2cvdy5ucHmrqKA9AABQSwEC"
    "FAMUAAAACAAbcH5dCOyZ/1AAAABZAAAAFAAAAAAAAAAAAAAAgAEAAAAAZGVtb19wa2cvX19pbml0X18ucHlQSwECFAMUAAAACAAbcH5dDluo"
    "ICAAAADoAwAAFAAAAAAAAAAAAAAAgAGCAAAAZGVtb19wa2cvd2VpZ2h0cy5ucHlQSwECFAMUAAAACAAbcH5dj10OXgYAAABkAAAADgAAAAAA"
    "AAAAAAAAgAHUAAAAZGVtb19wa2cvdy5ucHlQSwUGAAAAAAMAAwDAAAAABgEAAAAA"
)


def test_zips_found_by_atheris_are_refused_with_unsafe_archive_error(tmp_path: Path) -> None:
    import base64

    import pytest

    from medigan_iso.archives import safe_extract as extract
    from medigan_iso.errors import UnsafeArchiveError

    archive = tmp_path / "crash.zip"
    archive.write_bytes(base64.b64decode(ZIP_WITH_NEGATIVE_HEADER_OFFSET))  # was: bare OSError from seek()
    with pytest.raises(UnsafeArchiveError):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_valid_batch_round_trips_through_the_fuzz_target() -> None:
    tree, arrays = protocol.pack_samples([np.arange(6, dtype=np.uint8).reshape(2, 3), ("x", 2)])
    data = b"".join(bytes(b) for b in protocol.encode_frame({"kind": "batch", "samples": tree}, arrays))
    frame_decoder(data)  # no exception: the target accepts what the encoder writes


names = st.one_of(
    st.sampled_from([b"pkg/__init__.py", b"../evil", b"/abs", b"a\\b", b"C:x", b"a/../../b", b"dup", b"DUP"]),
    st.binary(min_size=1, max_size=24),
)
modes = st.sampled_from([S_IFREG | 0o644, S_IFDIR | 0o755, S_IFLNK | 0o777, S_IFCHR | 0o600, 0])
entries = st.builds(
    RawEntry,
    name=names,
    data=st.binary(max_size=64),
    method=st.sampled_from([0, 8]),
    flags=st.sampled_from([0, 1, 8]),
    mode=modes,
)


@FAST
@given(
    st.lists(entries, min_size=1, max_size=6), st.binary(max_size=8), st.integers(min_value=0, max_value=400)
)
def test_safe_extract_structured_zips_with_a_flipped_byte(items: list, prefix: bytes, flip: int) -> None:
    data = bytearray(build_zip(items, prefix=prefix))
    if flip < len(data):
        data[flip] ^= 0xFF
    safe_extract(bytes(data))


@FAST
@given(st.binary(max_size=2048))
def test_safe_extract_raw_bytes(data: bytes) -> None:
    safe_extract(data)


@FAST
@given(st.binary(max_size=1024))
def test_catalogue_loader_raw_bytes(data: bytes) -> None:
    catalogue_loader(data)


entry_like = st.fixed_dictionaries(
    {},
    optional={
        "execution": st.dictionaries(
            st.sampled_from(
                [
                    "package_name",
                    "package_link",
                    "model_name",
                    "extension",
                    "image_size",
                    "dependencies",
                    "generate_method",
                    "package_sha256",
                    "resources",
                    "sandbox",
                    "python_requires",
                ]
            ),
            json_values,
            max_size=6,
        ),
        "selection": json_values,
        "description": st.dictionaries(st.sampled_from(["title", "publication"]), json_values, max_size=2),
    },
)


@FAST
@given(st.dictionaries(st.text(max_size=12), entry_like | json_values, max_size=4))
def test_catalogue_loader_structured_json(catalogue: dict) -> None:
    catalogue_loader(json.dumps(catalogue).encode())
