"""safe_extract against archives the tests craft byte by byte, hostile and well-formed."""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path

import pytest
from _zipcraft import S_IFCHR, S_IFDIR, S_IFLNK, STORED, RawEntry, build_zip, package_zip
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medigan_iso.errors import UnsafeArchiveError
from medigan_iso.packages import ExtractLimits, safe_extract, sha256_file, tree_sha256

GOOD = RawEntry(b"good.txt", b"harmless bytes " * 10)


def _write(tmp_path: Path, data: bytes, name: str = "archive.zip") -> Path:
    path = tmp_path / "in" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _refused(tmp_path: Path, data: bytes, *, limits: ExtractLimits | None = None) -> UnsafeArchiveError:
    archive = _write(tmp_path, data)
    out = tmp_path / "out"
    dest = out / "tree"
    with pytest.raises(UnsafeArchiveError) as info:
        if limits is None:
            safe_extract(archive, dest)
        else:
            safe_extract(archive, dest, limits=limits)
    assert not dest.exists()
    # nothing at all next to dest either: no temp dir left behind, nothing escaped
    assert not out.exists() or list(out.iterdir()) == []
    assert sorted(p.name for p in archive.parent.iterdir()) == ["archive.zip"]
    err = info.value
    assert err.archive == str(archive)
    assert "nothing was written" in str(err)
    assert err.remedy is not None and "do not run it" in err.remedy
    return err


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        (b"../evil.txt", "zip slip"),
        (b"pkg/../../evil.txt", "zip slip"),
        (b"/etc/evil.txt", "absolute path"),
        (b"..\\..\\evil.txt", "backslash"),
        (b"pkg\\..\\..\\evil.txt", "backslash"),
        (b"C:/evil.txt", "drive letter"),
        (b"c:evil.txt", "drive letter"),
        (b"pkg/ev\x00il.txt", "NUL byte"),
        (b"pkg/evil\n.txt", "control character"),
    ],
)
def test_hostile_member_names_are_refused_and_named(tmp_path: Path, name: bytes, reason: str) -> None:
    err = _refused(tmp_path, build_zip([GOOD, RawEntry(name, b"pwned")]))
    assert err.member == name.decode("cp437")
    assert reason in err.reason
    assert reason in str(err)


def test_symlink_entry_is_refused_by_its_mode_bits(tmp_path: Path) -> None:
    err = _refused(tmp_path, build_zip([GOOD, RawEntry(b"link", b"/etc/passwd", mode=S_IFLNK | 0o777)]))
    assert err.member == "link"
    assert "symbolic link" in err.reason


def test_symlink_mode_is_refused_even_when_the_archive_claims_a_dos_origin(tmp_path: Path) -> None:
    entry = RawEntry(b"link", b"/etc/passwd", mode=S_IFLNK | 0o777, create_system=0)
    assert _refused(tmp_path, build_zip([entry])).member == "link"


def test_device_entry_is_refused(tmp_path: Path) -> None:
    err = _refused(tmp_path, build_zip([RawEntry(b"dev/tty", b"", mode=S_IFCHR | 0o666)]))
    assert err.member == "dev/tty"
    assert "special file" in err.reason


def test_thousand_to_one_bomb_is_refused_before_inflating(tmp_path: Path) -> None:
    bomb = RawEntry(b"weights.bin", b"\0" * (8 << 20))
    err = _refused(tmp_path, build_zip([GOOD, bomb]))
    assert err.member == "weights.bin"
    assert "compression ratio" in err.reason
    assert "zip bomb" in err.reason


def test_declared_total_size_cap_is_enforced(tmp_path: Path) -> None:
    entries = [RawEntry(f"f{i}.bin".encode(), os.urandom(4096)) for i in range(3)]
    err = _refused(tmp_path, build_zip(entries), limits=ExtractLimits(max_total_bytes=10_000))
    assert err.member == "f2.bin"
    assert "10000 bytes" in err.reason


def test_overlapping_entries_are_refused(tmp_path: Path) -> None:
    # "Quoted" overlap: b.bin's local header and data sit inside a.bin's stored data, so both names
    # agree with their headers and only the overlap gives it away.
    inner = build_zip([RawEntry(b"b.bin", b"\0" * 5000)])
    inner_local = inner[: inner.rindex(b"PK\x01\x02")]
    outer = RawEntry(b"a.bin", inner_local, method=STORED)
    quoted = RawEntry(b"b.bin", b"\0" * 5000, at=30 + len(b"a.bin"))
    err = _refused(tmp_path, build_zip([outer, quoted]))
    assert err.member == "b.bin"
    assert "overlaps entry 'a.bin'" in err.reason


def test_entries_sharing_one_local_header_are_refused(tmp_path: Path) -> None:
    kernel = RawEntry(b"a.bin", b"\0" * 5000)
    twin = RawEntry(b"b.bin", b"\0" * 5000, point_at=0)  # its central record points at a.bin's header
    err = _refused(tmp_path, build_zip([kernel, twin]))
    assert err.member == "b.bin"
    assert "disagree on the name" in err.reason


def test_central_directory_count_must_match_the_end_record(tmp_path: Path) -> None:
    err = _refused(tmp_path, build_zip([GOOD, RawEntry(b"b.txt", b"b")], declared_count=1))
    assert "holds 2 entries but the end record declares 1" in err.reason


def test_entry_pointing_into_another_entrys_data_is_refused(tmp_path: Path) -> None:
    data = build_zip([RawEntry(b"a.bin", b"x" * 100, method=STORED), RawEntry(b"b.bin", b"y" * 100)])
    # move b.bin's central-directory offset into the middle of a.bin's data
    cd = data.rindex(b"PK\x01\x02")
    offset_field = cd + 42
    hacked = data[:offset_field] + (40).to_bytes(4, "little") + data[offset_field + 4 :]
    err = _refused(tmp_path, hacked)
    assert err.member == "b.bin"
    assert "no local header" in err.reason


def test_duplicate_names_are_refused(tmp_path: Path) -> None:
    err = _refused(tmp_path, build_zip([RawEntry(b"a.txt", b"one"), RawEntry(b"a.txt", b"two")]))
    assert err.member == "a.txt"
    assert "duplicate" in err.reason


def test_names_equal_after_case_folding_are_duplicates(tmp_path: Path) -> None:
    err = _refused(tmp_path, build_zip([RawEntry(b"Model.pt", b"one"), RawEntry(b"model.PT", b"two")]))
    assert err.member == "model.PT"
    assert "'Model.pt'" in err.reason


def test_names_equal_after_dropping_dot_components_are_duplicates(tmp_path: Path) -> None:
    err = _refused(tmp_path, build_zip([RawEntry(b"pkg/a.txt", b"1"), RawEntry(b"pkg/./a.txt", b"2")]))
    assert err.member == "pkg/./a.txt"
    assert "duplicate" in err.reason


def test_a_name_used_as_file_and_directory_is_refused(tmp_path: Path) -> None:
    err = _refused(tmp_path, build_zip([RawEntry(b"pkg", b"file"), RawEntry(b"pkg/x.txt", b"inner")]))
    assert err.member == "pkg/x.txt"
    assert "both a file and a directory" in err.reason


def test_lying_crc_is_caught_while_streaming_and_the_partial_tree_removed(tmp_path: Path) -> None:
    liar = RawEntry(b"pkg/weights.bin", os.urandom(50_000), crc=0x12345678)
    err = _refused(tmp_path, build_zip([GOOD, liar]))
    assert err.member == "pkg/weights.bin"
    assert "CRC" in err.reason


def test_encrypted_entry_is_refused(tmp_path: Path) -> None:
    err = _refused(tmp_path, build_zip([GOOD, RawEntry(b"secret.bin", b"zz", flags=0x1)]))
    assert err.member == "secret.bin"
    assert "encrypted" in err.reason


def test_too_many_entries_are_refused(tmp_path: Path) -> None:
    entries = [RawEntry(f"f{i}".encode(), b"") for i in range(11)]
    err = _refused(tmp_path, build_zip(entries), limits=ExtractLimits(max_entries=10))
    assert err.member is None
    assert "11 entries, above the cap of 10" in err.reason


def test_a_forged_entry_count_is_refused_before_the_directory_is_parsed(tmp_path: Path) -> None:
    err = _refused(tmp_path, build_zip([GOOD], declared_count=60_000))
    assert err.member is None
    assert "60000 entries, above the cap of 50000" in err.reason


def test_an_oversized_central_directory_is_refused(tmp_path: Path) -> None:
    err = _refused(tmp_path, build_zip([GOOD, GOOD]), limits=ExtractLimits(max_central_directory_bytes=60))
    assert "central directory of 108 bytes, above the cap of 60" in err.reason


def test_zip64_end_records_are_read_for_the_entry_cap(tmp_path: Path) -> None:
    entries = [RawEntry(f"f{i}".encode(), b"x") for i in range(3)]
    data = build_zip(entries, zip64_end=True)
    safe_extract(_write(tmp_path / "first", data), tmp_path / "ok")
    assert sorted(p.name for p in (tmp_path / "ok").iterdir()) == ["f0", "f1", "f2"]
    err = _refused(tmp_path, build_zip(entries, zip64_end=True, declared_count=70_000))
    assert "70000 entries, above the cap of 50000" in err.reason


def test_data_prepended_to_the_archive_is_refused(tmp_path: Path) -> None:
    err = _refused(tmp_path, build_zip([GOOD], prefix=b"#!/bin/sh\nexit 0\n"))
    assert "before the first zip entry" in err.reason


def test_a_file_that_is_not_a_zip_is_refused(tmp_path: Path) -> None:
    err = _refused(tmp_path, b"<html><body>Not found</body></html>")
    assert "not a readable zip archive" in err.reason


def test_local_header_disagreeing_with_the_central_directory_is_refused(tmp_path: Path) -> None:
    data = bytearray(build_zip([RawEntry(b"a.bin", b"abc" * 100)]))
    data[8:10] = (0).to_bytes(2, "little")  # local header says stored, central directory says deflate
    err = _refused(tmp_path, bytes(data))
    assert err.member == "a.bin"
    assert "compression method" in err.reason


def test_a_well_formed_package_extracts_with_directories_and_read_only_modes(tmp_path: Path) -> None:
    files = {
        "pkg/__init__.py": b"def generate(*a, **k):\n    return []\n",
        "pkg/weights/model.pth.tar": os.urandom(3000),
        "pkg/images/a.png": b"\x89PNG fake",
    }
    archive = _write(tmp_path, package_zip(files, dirs=["pkg/empty"]))
    dest = tmp_path / "out" / "tree"
    assert safe_extract(archive, dest, read_only=True) == dest
    for name, data in files.items():
        path = dest / name
        assert path.read_bytes() == data
        assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert (dest / "pkg" / "empty").is_dir()
    assert stat.S_IMODE((dest / "pkg").stat().st_mode) == 0o555
    assert stat.S_IMODE(dest.stat().st_mode) == 0o555
    assert sorted(p.name for p in dest.parent.iterdir()) == ["tree"]


def test_archive_permission_and_directory_bits_are_not_applied(tmp_path: Path) -> None:
    entries = [
        RawEntry(b"bin/", b"", mode=S_IFDIR | 0o777),
        RawEntry(b"bin/run.sh", b"#!/bin/sh\n", mode=0o104755),  # setuid regular file
    ]
    dest = tmp_path / "out"
    safe_extract(_write(tmp_path, build_zip(entries)), dest)
    mode = (dest / "bin" / "run.sh").stat().st_mode
    assert not mode & (stat.S_ISUID | stat.S_IXUSR)


def test_an_existing_non_empty_destination_is_never_touched(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    archive = _write(tmp_path, package_zip({"a.txt": b"a"}))
    with pytest.raises(FileExistsError, match="not an empty directory"):
        safe_extract(archive, dest)
    assert [p.name for p in dest.iterdir()] == ["keep.txt"]


def test_an_empty_destination_directory_is_filled(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    safe_extract(_write(tmp_path, package_zip({"a.txt": b"a"})), dest)
    assert (dest / "a.txt").read_bytes() == b"a"


_NAME = st.text(alphabet="abcXYZ019_-.é", min_size=1, max_size=8).filter(lambda s: s not in (".", ".."))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    files=st.dictionaries(
        st.lists(_NAME, min_size=1, max_size=3).map("/".join),
        st.binary(max_size=2000),
        min_size=1,
        max_size=8,
    )
)
def test_any_well_formed_archive_round_trips(
    tmp_path_factory: pytest.TempPathFactory, files: dict[str, bytes]
) -> None:
    keys = {name.casefold() for name in files}
    prefixes = {"/".join(n.split("/")[:i]).casefold() for n in files for i in range(1, n.count("/") + 1)}
    if len(keys) != len(files) or keys & prefixes:
        return  # case-folded duplicates and file/dir clashes are refused by design (tested above)
    tmp = tmp_path_factory.mktemp("prop")
    data = package_zip(files)
    archive = tmp / "a.zip"
    archive.write_bytes(data)
    dest = safe_extract(archive, tmp / "out")
    got = {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    assert got == files


def test_tree_sha256_is_stable_and_sensitive_to_names_and_bytes(tmp_path: Path) -> None:
    def make(root: Path, files: dict[str, bytes]) -> Path:
        for name, data in files.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return root

    files = {"__init__.py": b"x = 1\n", "sub/w.bin": b"\1\2\3", "z.txt": b""}
    a = make(tmp_path / "a", files)
    b = make(tmp_path / "b", dict(reversed(list(files.items()))))
    make(b, {"__pycache__/m.cpython-311.pyc": b"junk", "sub/__pycache__/x.pyc": b"j", "sub/old.pyc": b"j"})
    (b / "empty_dir").mkdir()
    assert tree_sha256(a) == tree_sha256(b)
    assert len(tree_sha256(a)) == 64
    c = make(tmp_path / "c", {**files, "sub/w.bin": b"\1\2\4"})
    d = make(tmp_path / "d", {"__init__.py": b"x = 1\n", "sub/w2.bin": b"\1\2\3", "z.txt": b""})
    assert len({tree_sha256(a), tree_sha256(c), tree_sha256(d)}) == 3


def test_tree_sha256_refuses_symlinks(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(UnsafeArchiveError) as info:
        tree_sha256(tmp_path / "pkg")
    assert info.value.member == "passwd"
    assert "symlink" in info.value.reason


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    import hashlib

    path = tmp_path / "blob"
    data = os.urandom(3 << 20)
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_zipfile_agrees_the_crafted_good_archive_is_valid(tmp_path: Path) -> None:
    # guards the crafting helper itself: a refusal must come from the hostile detail, not a broken zip
    archive = _write(tmp_path, build_zip([GOOD, RawEntry(b"pkg/b.bin", b"b" * 10, method=STORED)]))
    with zipfile.ZipFile(archive) as zf:
        assert zf.testzip() is None
        assert zf.read("good.txt") == GOOD.data
    safe_extract(archive, tmp_path / "out")
    assert (tmp_path / "out" / "pkg" / "b.bin").read_bytes() == b"b" * 10


_HOSTILE_ALPHABET = st.sampled_from(
    ["a", "b", "/", "\\", ".", "..", ":", "C:", "\x00", "\n", "é", "~", " ", "//"]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.lists(_HOSTILE_ALPHABET, min_size=1, max_size=8).map("".join))
def test_any_member_name_is_refused_or_lands_inside_dest(
    tmp_path_factory: pytest.TempPathFactory, name: str
) -> None:
    tmp = tmp_path_factory.mktemp("hostile")
    archive = tmp / "a.zip"
    archive.write_bytes(build_zip([RawEntry(name.encode("utf-8"), b"payload", flags=0x800)]))  # UTF-8 names
    dest = tmp / "box" / "out"
    try:
        safe_extract(archive, dest)
    except UnsafeArchiveError as exc:
        assert exc.member == name
        assert not dest.exists()
        return
    assert dest.is_dir()
    assert any(dest.iterdir()), "an accepted archive must have written its entry"
    for path in tmp.rglob("*"):
        assert path in (archive, dest.parent) or path.resolve().is_relative_to(dest.resolve())
        assert not path.is_symlink()
