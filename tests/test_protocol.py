"""The frame codec shared by host and runner: round trips, every decoder rule, and fuzzing.

The decoder is a security boundary: whatever bytes arrive, it returns a valid frame, returns None (clean EOF)
or raises ``protocol.ProtocolError`` -- never another exception, never a read beyond the caps.
"""

from __future__ import annotations

import contextlib
import gc
import mmap
import os
import struct
import weakref
from typing import Any

import msgpack
import numpy as np
import pytest
from _compat import zip_strict
from _fuzz_targets import frame_decoder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from medigan_iso_runner import protocol


def encode(header: dict[str, Any], arrays: list[np.ndarray] | tuple[()] = ()) -> bytes:
    return b"".join(bytes(buf) for buf in protocol.encode_frame(header, arrays))


def decode(data: bytes, limits: protocol.Limits = protocol.DEFAULT_LIMITS) -> protocol.Frame | None:
    return protocol.read_frame(protocol.bytes_reader(data), limits)


def raw_frame(header: Any, payload: bytes = b"", *, magic: bytes = protocol.MAGIC) -> bytes:
    packed = msgpack.packb(header, use_bin_type=True)
    return struct.pack(">4sIQ", magic, len(packed), len(payload)) + packed + payload


def header_frame(header: bytes) -> bytes:
    """A frame with ``header`` as its raw msgpack bytes and no payload."""
    return struct.pack(">4sIQ", protocol.MAGIC, len(header), 0) + header


def assert_same(a: Any, b: Any) -> None:
    """Structural equality that also checks types, dtypes and shapes (tuples stay tuples)."""
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, np.generic):
        assert a.dtype == b.dtype
        assert (a == b) or (a != a and b != b)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip_strict(a, b):
            assert_same(x, y)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, float) and a != a:
        assert b != b
    else:
        assert a == b


def roundtrip_samples(samples: Any) -> Any:
    tree, arrays = protocol.pack_samples(samples)
    frame = decode(encode({"kind": "batch", "request": 1, "samples": tree}, arrays))
    assert frame is not None and frame.kind == "batch"
    return protocol.unpack_samples(frame.header["samples"], frame.arrays)


def test_public_surface_is_pinned() -> None:
    assert protocol.__all__ == [
        "ALLOWED_DTYPES",
        "DEFAULT_LIMITS",
        "HOST_KINDS",
        "MAGIC",
        "MAX_ARRAYS",
        "MAX_DEPTH",
        "MAX_HEADER_BYTES",
        "MAX_NDIM",
        "MAX_PAYLOAD_BYTES",
        "PROTOCOL_VERSION",
        "RUNNER_KINDS",
        "SEEDING_SCHEME",
        "SEED_LIMIT",
        "Frame",
        "Limits",
        "ProtocolError",
        "ShapeCache",
        "SharedSlots",
        "batch_seed",
        "bytes_reader",
        "encode_frame",
        "frame_samples",
        "pack_samples",
        "read_frame",
        "shift_refs",
        "unpack_samples",
        "wire_array",
        "wire_specs",
        "write_frame",
    ]
    assert all(hasattr(protocol, name) for name in protocol.__all__)
    assert protocol.PROTOCOL_VERSION == 1


# --- shared memory ---------------------------------------------------------------------------------------

SLOT = 4096


def _shared(views: bool) -> Any:
    """A real 2-slot memfd: the runner's writable mapping and the host's read-only SharedSlots."""
    fd = os.memfd_create("test-shm")
    os.ftruncate(fd, 2 * SLOT)
    writer = mmap.mmap(fd, 2 * SLOT)
    slots = protocol.SharedSlots(fd, 2, SLOT, views=views)
    os.close(fd)
    yield writer, slots
    slots.close()
    writer.close()


@pytest.fixture
def shared() -> Any:
    yield from _shared(False)


@pytest.fixture(params=[False, True], ids=["copy", "views"])
def any_shared(request: pytest.FixtureRequest) -> Any:
    # the decoder's checks hold whatever the host does with the bytes (copies or views)
    yield from _shared(request.param)


def shm_frame(arrays: list[np.ndarray], ref: Any) -> bytes:
    return b"".join(
        bytes(buf) for buf in protocol.encode_frame({"kind": "batch", "shm": ref}, arrays, inline=False)
    )


def test_a_shared_memory_frame_decodes_to_a_copy_of_its_slot(shared: Any) -> None:
    writer, slots = shared
    a = np.arange(300, dtype="<i4").reshape(10, 30)
    b = np.full((7,), 3, dtype="|u1")
    writer[SLOT + 16 : SLOT + 16 + a.nbytes + b.nbytes] = a.tobytes() + b.tobytes()
    frame = protocol.read_frame(
        protocol.bytes_reader(shm_frame([a, b], [1, 16, a.nbytes + b.nbytes])), shm=slots
    )
    assert frame is not None and frame.kind == "batch"
    assert np.array_equal(frame.arrays[0], a) and np.array_equal(frame.arrays[1], b)
    writer[SLOT + 16 : SLOT + 20] = b"\xff" * 4  # the runner reuses the slot: the host's copy stays
    assert frame.arrays[0][0, 0] == 0
    # until the host releases slot 1, a frame naming it again is refused; slot 0 is still the runner's
    again = shm_frame([b], [1, 0, b.nbytes])
    with pytest.raises(protocol.ProtocolError, match="not the runner's"):
        protocol.read_frame(protocol.bytes_reader(again), shm=slots)
    slots.release(1)
    assert protocol.read_frame(protocol.bytes_reader(again), shm=slots) is not None


def test_a_viewed_slot_is_the_runners_again_only_when_its_last_view_is_garbage() -> None:
    fd = os.memfd_create("test-shm")
    os.ftruncate(fd, 2 * SLOT)
    writer = mmap.mmap(fd, 2 * SLOT)
    slots = protocol.SharedSlots(fd, 2, SLOT, views=True)
    os.close(fd)
    a = np.arange(300, dtype="<i4").reshape(10, 30)
    writer[SLOT + 16 : SLOT + 16 + a.nbytes] = a.tobytes()
    frame = protocol.read_frame(protocol.bytes_reader(shm_frame([a], [1, 16, a.nbytes])), shm=slots)
    assert frame is not None
    view = frame.arrays[0]
    assert np.array_equal(view, a) and not view.flags.writeable and not view.flags.owndata
    with pytest.raises(ValueError, match="read-only"):
        view[0, 0] = 1
    writer[SLOT + 16 : SLOT + 20] = b"\x01\x00\x00\x00"  # a view is the slot itself (no copy)
    assert view[0, 0] == 1
    part = view[2:4, ::3]  # a view of the view holds the slot too
    del frame, view
    gc.collect()
    assert slots.held == 1 and not slots.released
    again = shm_frame([a[:1]], [1, 0, 120])
    with pytest.raises(protocol.ProtocolError, match="not the runner's"):
        protocol.read_frame(protocol.bytes_reader(again), shm=slots)
    slots.close()  # the host is done with the segment; the live view keeps the mapping
    writer.close()
    assert np.array_equal(part, a[2:4, ::3])
    del part
    gc.collect()
    assert slots.held == 0 and list(slots.released) == [1]  # no release pipe (closed): it stays queued


def _segment(slots: int) -> int:
    fd = os.memfd_create("test-shm")
    os.ftruncate(fd, slots * SLOT)
    return fd


def test_releases_never_block_the_host_when_the_runner_stops_draining_its_pipe() -> None:
    # A hostile runner can keep filling slots without reading the release pipe. The host writes releases
    # without blocking, queues at most ``slots`` of them in memory, and never raises, from a copy-out or
    # from a view's finalizer; what the pipe took is the slot numbers, one byte each, in order.
    import fcntl

    for views in (False, True):
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(write_end, False)
        capacity = fcntl.fcntl(write_end, 1031, 4096)  # F_SETPIPE_SZ: one page
        fd = _segment(3)
        slots = protocol.SharedSlots(fd, 3, SLOT, views=views, release_fd=write_end)
        os.close(fd)
        a = np.zeros(8, np.uint8)
        for i in range(capacity + 500):
            frame = protocol.read_frame(protocol.bytes_reader(shm_frame([a], [i % 3, 0, 8])), shm=slots)
            assert frame is not None
            if not views:
                slots.release(i % 3)
            del frame
            assert slots.held == 0 and len(slots.released) <= 3
        assert slots.release_writes == capacity and len(slots.released) == 3
        os.set_blocking(read_end, False)
        taken = os.read(read_end, 2 * capacity)
        assert taken == bytes(i % 3 for i in range(capacity))
        slots.flush()  # the runner drained: the queued releases go now
        assert not slots.released and slots.release_writes == capacity + 3
        slots.close()
        os.close(read_end)


def test_a_finalizer_after_close_writes_to_no_fd_and_a_gone_runner_drops_releases() -> None:
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    os.set_blocking(write_end, False)
    fd = _segment(2)
    slots = protocol.SharedSlots(fd, 2, SLOT, views=True, release_fd=write_end)
    os.close(fd)
    a = np.zeros(8, np.uint8)
    frame = protocol.read_frame(protocol.bytes_reader(shm_frame([a], [1, 0, 8])), shm=slots)
    assert frame is not None
    slots.close()  # closes the write end; the fd number may be reused by anything
    with pytest.raises(OSError):
        os.fstat(write_end)
    reused = os.open(os.devnull, os.O_WRONLY)  # likely the same number: must not receive a release
    del frame
    gc.collect()
    assert slots.held == 0 and list(slots.released) == [1] and slots.release_writes == 0
    os.close(reused)
    os.close(read_end)
    # the runner's end closed (it exited): a release is dropped, nothing raises
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    os.set_blocking(write_end, False)
    fd = _segment(2)
    slots = protocol.SharedSlots(fd, 2, SLOT, release_fd=write_end)
    os.close(fd)
    os.close(read_end)
    assert protocol.read_frame(protocol.bytes_reader(shm_frame([a], [0, 0, 8])), shm=slots) is not None
    slots.release(0)
    assert not slots.released and slots.release_writes == 0
    slots.close()


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        ([0, SLOT - 8, 16], "outside the slot"),  # runs past the end of its slot
        ([1, SLOT, 16], "outside the slot"),  # past the end of the segment
        ([0, -1, 16], "outside the slot"),
        ([2, 0, 16], "slot 2 outside"),  # no such slot
        ([-1, 0, 16], "slot -1 outside"),
        ([0, 0, 15], "!= 16 declared"),  # fewer bytes than the arrays declare
        ([0, 0, 17], "!= 16 declared"),
        ([0, 0], "must be"),
        ([0, 0, 16.0], "must be"),
        ({"slot": 0}, "must be"),
    ],
)
def test_forged_shared_memory_references_raise_protocol_error(any_shared: Any, ref: Any, reason: str) -> None:
    _, slots = any_shared
    data = shm_frame([np.zeros(4, dtype="<f4")], ref)
    with pytest.raises(protocol.ProtocolError, match=reason):
        protocol.read_frame(protocol.bytes_reader(data), shm=slots)


def test_shared_memory_frames_obey_the_negotiation_and_the_caps(any_shared: Any) -> None:
    _, slots = any_shared
    data = shm_frame([np.zeros(4, dtype="<f4")], [0, 0, 16])
    with pytest.raises(protocol.ProtocolError, match="no shared memory was negotiated"):
        decode(data)
    small_cap = protocol.Limits(max_payload_bytes=12)
    for ref, reason in (([0, 0, 16], "length 16 exceeds 12"), ([0, 0, 8], "of 16 bytes exceeds 12")):
        two = shm_frame([np.zeros(2, dtype="<f4"), np.zeros(2, dtype="<f4")], ref)
        for cache in (None, protocol.ShapeCache()):  # the length is checked first with a cache too
            with pytest.raises(protocol.ProtocolError, match=reason):
                protocol.read_frame(protocol.bytes_reader(two), small_cap, shm=slots, cache=cache)
    one = shm_frame([np.zeros(4, dtype="<f4")], [0, 0, 16])  # an array over the cap: the length still first
    for cache in (None, protocol.ShapeCache()):
        with pytest.raises(protocol.ProtocolError, match="length 16 exceeds 12"):
            protocol.read_frame(protocol.bytes_reader(one), small_cap, shm=slots, cache=cache)
    with_payload = raw_frame({"kind": "batch", "shm": [0, 0, 4], "arrays": [["|u1", [4]]]}, b"abcd")
    with pytest.raises(protocol.ProtocolError, match="no pipe payload"):
        protocol.read_frame(protocol.bytes_reader(with_payload), shm=slots)
    with pytest.raises(protocol.ProtocolError, match="dtype"):
        protocol.read_frame(
            protocol.bytes_reader(raw_frame({"kind": "batch", "shm": [0, 0, 4], "arrays": [["|O", [4]]]})),
            shm=slots,
        )


# --- round trips ---------------------------------------------------------------------------------------


def test_medigan_sample_shapes_survive_the_pipe_exactly() -> None:
    image = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    mask = (image[..., 0] > 10).astype(np.uint8)
    samples = [
        image,
        (image, mask, "benign"),
        (image, mask, image.astype(np.float32) / 255, "malignant"),
        [image, [None, 1, 2.5, True, "x", b"raw"]],
        None,
        {"image": image, "meta": {"id": 3}},
        np.float32(0.25),
        image[:, ::2],  # a non-contiguous view arrives as a contiguous copy with the same values
    ]
    assert_same(roundtrip_samples(samples), [*samples[:-1], np.ascontiguousarray(image[:, ::2])])


def test_big_endian_bool_and_empty_arrays_round_trip() -> None:
    samples = [np.arange(6, dtype=">i4").reshape(2, 3), np.array([True, False]), np.zeros((0, 3), np.float64)]
    assert_same(roundtrip_samples(samples), samples)


def test_a_list_of_like_and_unlike_arrays_packs_and_encodes_as_the_general_walk_does() -> None:
    # issue 17: a list of plain arrays skips the walk, and each (dtype, shape) is checked and described once
    # per frame; a non-contiguous array of an already seen key is still made contiguous
    base = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    samples = [base, base[:, ::-1], base.astype(">i4"), base.copy(), np.asarray(np.int16(7)), base.T]
    tree, arrays = protocol.pack_samples(samples)
    walker = protocol._Packer()
    assert tree == walker.walk(samples, 0) == [{"a": i} for i in range(6)]
    assert all(a is b for a, b in zip_strict(arrays, walker.arrays))
    wire, specs = protocol.wire_specs(arrays)
    assert specs == [[a.dtype.str, list(a.shape)] for a in wire]
    assert all(a.flags.c_contiguous for a in wire) and wire[0] is base and wire[1] is not samples[1]
    assert_same(roundtrip_samples(samples), samples)
    masked = [base, np.ma.masked_array(base)]  # a subclass takes the walk, as before
    masked_tree, masked_arrays = protocol.pack_samples(masked)
    assert masked_tree == [{"a": 0}, {"a": 1}] and masked_arrays[1] is masked[1]


def test_the_payload_is_read_with_one_readinto_loop_and_arrays_are_views_of_it() -> None:
    # issue 17: one read per array cost a syscall and a wake-up each, and the header one more; a 3-byte
    # uint8 array first puts the float64 after it off its alignment, so that one is copied out (aligned)
    # with the right values
    arrays = [np.arange(3, dtype=np.uint8), np.linspace(0, 1, 5), np.arange(4, dtype=np.uint8).reshape(2, 2)]
    data = encode({"kind": "batch", "samples": [{"a": 0}, {"a": 1}, {"a": 2}]}, arrays)
    reader = protocol.bytes_reader(data)
    sizes: list[int] = []

    def readinto(view: memoryview) -> int | None:
        sizes.append(len(view))
        return reader(view)

    frame = protocol.read_frame(readinto)
    assert frame is not None
    payload = sum(a.nbytes for a in arrays)
    header_len = struct.unpack(">4sIQ", data[:16])[1]
    assert sizes == [16, header_len + payload]  # the prefix, then header and payload in one loop
    for got, sent in zip_strict(frame.arrays, arrays):
        assert_same(got, sent)
        assert got.flags.aligned and got.flags.c_contiguous
    assert frame.arrays[0].base is frame.arrays[2].base  # views of one buffer
    assert frame.arrays[1].base is not frame.arrays[0].base  # the misaligned one was copied


def test_shift_refs_merges_the_trees_of_several_batches() -> None:
    first, first_arrays = protocol.pack_samples([(np.zeros(2), "a"), {"k": np.ones(1)}])
    second, second_arrays = protocol.pack_samples([[np.float32(3), None], {"a": 1, "s": np.arange(2)}])
    merged = first + protocol.shift_refs(second, len(first_arrays))
    arrays = first_arrays + second_arrays
    frame = decode(encode({"kind": "batch", "samples": merged}, arrays))
    assert frame is not None
    got = protocol.unpack_samples(frame.header["samples"], frame.arrays)
    want = [(np.zeros(2), "a"), {"k": np.ones(1)}, [np.float32(3), None], {"a": 1, "s": np.arange(2)}]
    assert_same(got, want)


def test_encoder_refuses_object_arrays_and_too_many_dims() -> None:
    with pytest.raises(protocol.ProtocolError, match="dtype object cannot cross the pipe"):
        protocol.encode_frame({"kind": "batch"}, [np.array([object()])])
    with pytest.raises(protocol.ProtocolError, match="ndim 5 > 4"):
        protocol.encode_frame({"kind": "batch"}, [np.zeros((1, 1, 1, 1, 1))])
    with pytest.raises(protocol.ProtocolError, match="a set cannot cross the pipe"):
        protocol.pack_samples([{1, 2}])
    with pytest.raises(protocol.ProtocolError, match="65537 arrays in one frame exceed the cap of 65536"):
        protocol.encode_frame({"kind": "batch"}, [np.zeros(0, np.uint8)] * 65537)


def test_decoded_and_packed_arrays_are_freed_without_the_cyclic_gc() -> None:
    # Regression: recursive closures formed reference cycles that kept whole batches alive until a GC run.
    gc.disable()
    try:
        image = np.zeros((16, 16), np.uint8)
        sent = weakref.ref(image)
        tree, arrays = protocol.pack_samples([(image, "label")])
        frame = decode(encode({"kind": "batch", "samples": tree}, arrays))
        assert frame is not None
        samples = protocol.unpack_samples(frame.header["samples"], frame.arrays)
        received = weakref.ref(samples[0][0])
        del image, tree, arrays, frame, samples
        assert sent() is None and received() is None
    finally:
        gc.enable()


def test_clean_eof_at_a_frame_boundary_is_none() -> None:
    assert decode(b"") is None


# --- decoder rules -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (raw_frame({"kind": "done"}, magic=b"XXXX"), "bad magic"),
        (raw_frame({"kind": "teleport"}), "unknown frame kind 'teleport'"),
        (raw_frame([1, 2]), "header is a list, not a map"),
        (raw_frame({"kind": "batch", "arrays": [["|O", [1]]]}, b"\0" * 8), "dtype '|O' is not allowed"),
        (raw_frame({"kind": "batch", "arrays": [["|V4", [1]]]}, b"\0" * 4), "dtype '|V4' is not allowed"),
        (raw_frame({"kind": "batch", "arrays": [["|u1", [1, 1, 1, 1, 1]]]}, b"\0"), "at most 4 dims"),
        (raw_frame({"kind": "batch", "arrays": [["|u1", [-1]]]}), "non-negative ints"),
        (raw_frame({"kind": "batch", "arrays": [["|u1", [4]]]}, b"\0" * 3), "payload length 3 != 4"),
        (raw_frame({"kind": "batch"}, b"\0" * 3), "payload length 3 != 0"),
        (raw_frame({"kind": "batch", "arrays": [["<f8", [2**40, 2**40]]]}), "exceeds the payload cap"),
        (raw_frame({"kind": "done"})[:-1], "stream ended inside the header"),
        (
            raw_frame({"kind": "batch", "arrays": [["|u1", [4]]]}, b"\0" * 4)[:-2],
            "stream ended inside the payload",
        ),
        (protocol.MAGIC + b"\0", "stream ended inside the frame prefix"),
        (struct.pack(">4sIQ", protocol.MAGIC, 0, 0), "header length 0 outside"),
        (struct.pack(">4sIQ", protocol.MAGIC, 2**31, 0), "header length 2147483648 outside"),
        (struct.pack(">4sIQ", protocol.MAGIC, 4, 2**60), "payload length 1152921504606846976 exceeds"),
        (struct.pack(">4sIQ", protocol.MAGIC, 1, 0) + b"\xc1", "header is not valid msgpack"),
        (struct.pack(">4sIQ", protocol.MAGIC, 3, 0) + b"\xd4\x05\x00", "header is not valid msgpack"),
        (raw_frame({1: "x"}), "header is not valid msgpack"),
    ],
)
def test_malformed_frames_raise_protocol_error_with_the_rule(data: bytes, reason: str) -> None:
    with pytest.raises(protocol.ProtocolError) as info:
        decode(data)
    assert reason in info.value.reason
    assert reason in str(info.value)


def test_truncation_is_flagged_as_eof() -> None:
    with pytest.raises(protocol.ProtocolError) as info:
        decode(raw_frame({"kind": "done"})[:-1])
    assert info.value.eof is True
    with pytest.raises(protocol.ProtocolError) as info:
        decode(raw_frame({"kind": "nope"}))
    assert info.value.eof is False


def test_deeply_nested_header_is_refused() -> None:
    nested: Any = "leaf"
    for _ in range(protocol.MAX_DEPTH + 5):
        nested = [nested]
    with pytest.raises(protocol.ProtocolError, match="nesting deeper than 32"):
        decode(raw_frame({"kind": "log", "message": nested}))


def test_custom_limits_cap_header_and_payload() -> None:
    data = encode({"kind": "batch", "samples": [{"a": 0}]}, [np.zeros(100, np.uint8)])
    with pytest.raises(protocol.ProtocolError, match="payload length 100 exceeds 50"):
        decode(data, protocol.Limits(max_payload_bytes=50))
    with pytest.raises(protocol.ProtocolError, match=r"outside 1\.\.8"):
        decode(data, protocol.Limits(max_header_bytes=8))


@pytest.mark.parametrize(
    ("tree", "n_arrays", "reason"),
    [
        ([{"a": 1}], 2, "array reference 1 out of order (expected 0)"),
        ([{"a": 0}, {"a": 0}], 1, "array reference 0 out of order (expected 1)"),
        ([{"a": True}], 1, "array reference True out of order"),
        ([], 1, "1 arrays sent but 0 referenced"),
        ([{"q": 1}], 0, "malformed sample node"),
        ([{"t": 5}], 0, "malformed sample node"),
        ([{"s": 0}], 1, "scalar reference 0 points at a 1-d array"),
    ],
)
def test_malformed_sample_trees_raise_protocol_error(tree: Any, n_arrays: int, reason: str) -> None:
    arrays = [np.zeros(1, np.uint8) for _ in range(n_arrays)]
    with pytest.raises(protocol.ProtocolError) as info:
        protocol.unpack_samples(tree, arrays)
    assert reason in info.value.reason


# --- shape cache (issue 17: the sample tree validated once per request shape) ----------------------


def cached_samples(
    data: bytes, cache: protocol.ShapeCache, limits: protocol.Limits = protocol.DEFAULT_LIMITS
) -> Any:
    frame = protocol.read_frame(protocol.bytes_reader(data), limits, cache=cache)
    assert frame is not None
    return protocol.frame_samples(frame, limits)


def test_frames_of_one_shape_are_checked_once_and_decode_like_uncached_ones() -> None:
    cache = protocol.ShapeCache()
    for index in range(5):
        samples = [np.full((4, 3), index, np.uint8), np.full((4, 3), index + 1, np.uint8)]
        tree, arrays = protocol.pack_samples(samples)
        header = {"kind": "batch", "request": 7, "index": index, "samples": tree, "batches": [1, 1]}
        data = encode(header, arrays)
        frame = protocol.read_frame(protocol.bytes_reader(data), cache=cache)
        assert frame is not None and frame.shape is not None
        plain = decode(data)
        assert plain is not None and frame.header == plain.header  # the scalars are read every frame
        got = protocol.frame_samples(frame)
        assert_same(got, samples)
        assert_same(got, protocol.unpack_samples(plain.header["samples"], plain.arrays))
        assert all(a.base is not None for a in got)  # still views of the frame's one payload buffer
    assert (cache.misses, cache.hits) == (1, 4)
    # nested samples (tuples, dicts, numpy scalars) rebuild from the plan: fresh containers every frame
    samples = [({"img": np.ones((2, 2), np.float32), "label": np.int64(3)}, "x", [1.5])]
    tree, arrays = protocol.pack_samples(samples)
    data = encode({"kind": "batch", "request": 1, "samples": tree}, arrays)
    first, second = cached_samples(data, cache), cached_samples(data, cache)
    assert_same(first, samples) and assert_same(second, samples)
    assert first[0][0] is not second[0][0] and first[0][2] is not second[0][2]
    assert cache.hits == 5


def test_the_cache_keeps_a_bounded_number_of_shapes() -> None:
    cache = protocol.ShapeCache(max_entries=3, max_bytes=400)
    for n in range(1, 8):
        tree, arrays = protocol.pack_samples([np.zeros(1, np.uint8)] * n)
        cached_samples(encode({"kind": "batch", "samples": tree}, arrays), cache)
        assert len(cache._entries) <= 3 and cache._bytes <= 400
    big, arrays = protocol.pack_samples([np.zeros(1, np.uint8)] * 100)  # its structure alone is > 400 bytes
    cached_samples(encode({"kind": "batch", "samples": big}, arrays), cache)
    cached_samples(encode({"kind": "batch", "samples": big}, arrays), cache)
    assert cache.hits == 0 and all(key[5] != msgpack.packb(big) for key in cache._entries)


def _warm(cache: protocol.ShapeCache, limits: protocol.Limits = protocol.DEFAULT_LIMITS) -> None:
    """One valid frame of each structure the refusals below start from."""
    for header, payload in WARM_FRAMES:
        cached_samples(raw_frame(header, payload), cache, limits)


WARM_FRAMES = [
    ({"kind": "batch", "request": 1, "samples": [{"a": 0}], "arrays": [["|u1", [4]]]}, b"\0" * 4),
    ({"kind": "batch", "request": 1, "samples": [{"s": 0}], "arrays": [["<f8", []]]}, b"\0" * 8),
    (
        {"kind": "batch", "request": 1, "samples": [{"a": 0}], "arrays": [["|u1", [4]]], "batches": [1]},
        b"\0" * 4,
    ),
]
ARRAYS = [["|u1", [4]]]


@pytest.mark.parametrize(
    ("header", "payload", "reason"),
    [
        # the cached structure, but the payload does not match what it declares
        (
            {"kind": "batch", "request": 2, "samples": [{"a": 0}], "arrays": ARRAYS},
            b"\0" * 3,
            "payload length 3 != 4",
        ),
        # an array reference out of range / out of order
        (
            {"kind": "batch", "samples": [{"a": 1}], "arrays": ARRAYS},
            b"\0" * 4,
            "array reference 1 out of order",
        ),
        (
            {"kind": "batch", "samples": [{"a": 0}, {"a": 1}], "arrays": ARRAYS},
            b"\0" * 4,
            "array reference 1",
        ),
        ({"kind": "batch", "samples": [], "arrays": ARRAYS}, b"\0" * 4, "1 arrays sent but 0 referenced"),
        # the cached samples tree, arrays of another dtype, shape or ndim than before
        (
            {"kind": "batch", "samples": [{"a": 0}], "arrays": [["|O", [4]]]},
            b"\0" * 4,
            "dtype '|O' is not allowed",
        ),
        ({"kind": "batch", "samples": [{"a": 0}], "arrays": [["|u1", [-4]]]}, b"", "non-negative ints"),
        (
            {"kind": "batch", "samples": [{"a": 0}], "arrays": [["|u1", ["4"]]]},
            b"\0" * 4,
            "non-negative ints",
        ),
        (
            {"kind": "batch", "samples": [{"s": 0}], "arrays": [["<f8", [1]]]},
            b"\0" * 8,
            "points at a 1-d array",
        ),
        # an extra key in a sample node, a wrong type in the tree
        (
            {"kind": "batch", "samples": [{"a": 0, "x": 1}], "arrays": ARRAYS},
            b"\0" * 4,
            "malformed sample node",
        ),
        ({"kind": "batch", "samples": [{"a": "0"}], "arrays": ARRAYS}, b"\0" * 4, "array reference '0'"),
        ({"kind": "batch", "samples": [{"t": 5}], "arrays": []}, b"", "malformed sample node"),
        # non-plain values in the structure or in the scalars next to it
        (
            {"kind": "batch", "samples": [{"a": 0}], "arrays": ARRAYS, "batches": [msgpack.Timestamp(1)]},
            b"\0" * 4,
            "exceeds max_ext_len",
        ),
        (
            {"kind": "batch", "index": msgpack.Timestamp(1), "samples": [{"a": 0}], "arrays": ARRAYS},
            b"\0" * 4,
            "exceeds max_ext_len",
        ),
        ({"kind": "batch", b"samples": [{"a": 0}], "arrays": ARRAYS}, b"\0" * 4, "keys must be str"),
        ({"kind": "nope", "samples": [{"a": 0}], "arrays": ARRAYS}, b"\0" * 4, "unknown frame kind"),
    ],
)
def test_a_frame_that_differs_from_a_cached_shape_is_checked_in_full(
    header: Any, payload: bytes, reason: str
) -> None:
    cache = protocol.ShapeCache()
    _warm(cache)
    with pytest.raises(protocol.ProtocolError) as info:
        cached_samples(raw_frame(header, payload), cache)
    assert reason in info.value.reason
    with pytest.raises(protocol.ProtocolError) as info:  # twice: nothing refused is ever cached
        cached_samples(raw_frame(header, payload), cache)
    assert reason in info.value.reason
    with pytest.raises(protocol.ProtocolError):  # the uncached decoder refuses it too
        frame = decode(raw_frame(header, payload))
        assert frame is not None
        protocol.unpack_samples(frame.header.get("samples"), frame.arrays)
    _warm(cache)  # the valid shapes still decode


def test_a_cached_shape_is_checked_again_under_tighter_limits() -> None:
    cache = protocol.ShapeCache()
    _warm(cache)
    with pytest.raises(protocol.ProtocolError, match="1 arrays exceed the cap of 0"):
        _warm(cache, protocol.Limits(max_arrays=0))
    no_payload = raw_frame({"kind": "batch", "samples": [{"a": 0}], "arrays": ARRAYS})  # declares 4 bytes
    with pytest.raises(protocol.ProtocolError, match="payload length 0 != 4"):
        cached_samples(no_payload, cache)
    with pytest.raises(protocol.ProtocolError, match="exceeds the payload cap"):
        cached_samples(no_payload, cache, protocol.Limits(max_payload_bytes=3))
    with pytest.raises(protocol.ProtocolError, match="header nesting deeper than 1"):
        _warm(cache, protocol.Limits(max_depth=1))
    for reader_cache in (None, cache):  # a scalar value is already too deep under max_depth=0
        with pytest.raises(protocol.ProtocolError, match="header nesting deeper than 0"):
            protocol.read_frame(
                protocol.bytes_reader(raw_frame({"kind": "done", "x": 1})),
                protocol.Limits(max_depth=0),
                cache=reader_cache,
            )
    # read under the limits the shape was checked with, unpacked under a tighter depth: the plan is not used
    frame = protocol.read_frame(protocol.bytes_reader(raw_frame(*WARM_FRAMES[0])), cache=cache)
    assert frame is not None and frame.shape is not None and frame.shape.plan is not None
    with pytest.raises(protocol.ProtocolError, match="sample tree nested deeper than 0"):
        protocol.frame_samples(frame, protocol.Limits(max_depth=0))
    nested: Any = [{"a": 0}]
    for _ in range(protocol.MAX_DEPTH):
        nested = [nested]
    data = raw_frame({"kind": "batch", "samples": nested, "arrays": ARRAYS}, b"\0" * 4)
    for _ in range(2):
        with pytest.raises(protocol.ProtocolError, match="deeper than 32"):
            cached_samples(data, cache)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        # the cached reader is stricter than unpackb in one rule: a repeated key (unpackb keeps the last)
        (header_frame(b"\x83\xa4kind\xa4done\xa7samples\x90\xa7samples\x90"), "repeats the key 'samples'"),
        (header_frame(msgpack.packb({"kind": "done"}) + b"\xc0"), "1 bytes after its map"),
        (header_frame(b"\x82\xa4kind\xa4done"), "not valid msgpack: OutOfData"),
        (raw_frame([1, 2]), "header is not a map"),
        (raw_frame({1: "x"}), "keys must be str"),
        (header_frame(b"\xc1"), "header is not a map"),
        (header_frame(b"\x81\xa4kind\xc1"), "not valid msgpack"),
    ],
)
def test_the_cached_reader_refuses_malformed_headers(data: bytes, reason: str) -> None:
    with pytest.raises(protocol.ProtocolError) as info:
        protocol.read_frame(protocol.bytes_reader(data), cache=protocol.ShapeCache())
    assert reason in info.value.reason


# --- property tests ------------------------------------------------------------------------------------

_DTYPES = st.sampled_from(
    ["|u1", "|i1", "|b1", "<i2", ">u2", "<i4", "<u8", "<f2", "<f4", ">f8", "<c8", "<c16"]
)
_ARRAYS = _DTYPES.flatmap(
    lambda dt: hnp.arrays(np.dtype(dt), hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4))
)
_SCALARS = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=8)
_SAMPLES = st.recursive(
    _SCALARS | st.binary(max_size=8) | _ARRAYS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_SAMPLES, max_size=5))
def test_any_sample_structure_round_trips(samples: list[Any]) -> None:
    assert_same(roundtrip_samples(samples), samples)
    tree, arrays = protocol.pack_samples(samples)
    data = encode({"kind": "batch", "request": 1, "samples": tree}, arrays)
    cache = protocol.ShapeCache()
    for _ in range(2):  # checked in full, then built from the cached plan
        assert_same(cached_samples(data, cache), samples)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=256))
def test_random_bytes_only_ever_raise_protocol_error(data: bytes) -> None:
    with contextlib.suppress(protocol.ProtocolError):
        decode(data)


def _valid_frame_bytes() -> st.SearchStrategy[bytes]:
    def build(samples: list[Any]) -> bytes:
        tree, arrays = protocol.pack_samples(samples)
        return encode({"kind": "batch", "request": 1, "samples": tree}, arrays)

    return st.lists(_SAMPLES, max_size=3).map(build)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_valid_frame_bytes(), st.data())
def test_mutated_frames_decode_validly_or_raise_protocol_error(frame: bytes, data: st.DataObject) -> None:
    mutated = bytearray(frame)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "truncate", "insert"]))
        pos = data.draw(st.integers(0, max(0, len(mutated) - 1)))
        if op == "flip" and mutated:
            mutated[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "truncate":
            del mutated[pos:]
        else:
            mutated[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    try:
        result = decode(bytes(mutated))
        if result is not None and result.kind == "batch":
            protocol.unpack_samples(result.header.get("samples"), result.arrays)
    except protocol.ProtocolError:
        pass
    # read through a cache that already holds the unmutated frame's shape: the same frames or refusal
    frame_decoder(frame)
    frame_decoder(bytes(mutated))
