"""``medigan-iso fetch`` and ``medigan-iso hash`` through the real entry point."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
from _pkgserver import serve
from _zipcraft import model_zip

from medigan_iso.cli import main
from medigan_iso.cli.packages import _ProgressBar
from medigan_iso.packages import tree_sha256

PACKAGE = model_zip("demo_pkg")
PACKAGE_SHA = hashlib.sha256(PACKAGE).hexdigest()


def test_hash_prints_the_catalogue_line_for_a_zip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive = tmp_path / "pkg.zip"
    archive.write_bytes(PACKAGE)
    assert main(["hash", str(archive)]) == 0
    out = capsys.readouterr().out
    assert out == f'"package_sha256": "{PACKAGE_SHA}"\n'
    assert json.loads("{" + out + "}") == {"package_sha256": PACKAGE_SHA}


def test_hash_of_a_directory_is_its_tree_hash(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("x = 1\n")
    assert main(["hash", str(tmp_path / "pkg")]) == 0
    assert capsys.readouterr().out == f'"package_sha256": "{tree_sha256(tmp_path / "pkg")}"\n'


def test_hash_of_a_missing_path_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hash", str(tmp_path / "nope.zip")]) == 1
    assert "no such file or directory" in capsys.readouterr().err


def test_fetch_link_downloads_verifies_and_prints_the_tree(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with serve() as srv:
        srv.state.files["/demo_pkg.zip"] = PACKAGE
        code = main(["fetch", "--online", "--link", srv.url("/demo_pkg.zip"), "--sha256", PACKAGE_SHA])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    root = home / "packages" / "trees" / PACKAGE_SHA / "demo_pkg"
    assert captured.out == f"demo_pkg: {root} (sha256 {PACKAGE_SHA})\n"
    assert (root / "__init__.py").is_file()


def test_fetch_with_a_wrong_hash_exits_1_with_both_hashes(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "demo_pkg.zip"
    archive.write_bytes(PACKAGE)
    assert main(["fetch", "--link", str(archive), "--sha256", "a" * 64]) == 1
    err = capsys.readouterr().err
    assert "sha256 mismatch" in err and "a" * 64 in err and PACKAGE_SHA in err


def test_fetch_offline_without_cache_says_how_to_fix_it(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["fetch", "--offline", "--link", "https://zenodo.org/record/1/files/x.zip"]) == 1
    err = capsys.readouterr().err
    assert "offline mode" in err and "medigan-iso fetch x" in err


def test_fetch_require_hashes_refuses_an_unpinned_link(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "demo_pkg.zip"
    archive.write_bytes(PACKAGE)
    assert main(["fetch", "--require-hashes", "--link", str(archive)]) == 1
    assert "require_hashes" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["fetch"], "give model ids or --link"),
        (["fetch", "00001", "--link", "x.zip"], "give model ids or --link"),
        (["fetch", "00001", "--sha256", "ab"], "only apply to --link"),
    ],
)
def test_fetch_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_fetch_model_id_goes_through_the_catalogue(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pkgs").mkdir()
    (tmp_path / "pkgs" / "demo_pkg.zip").write_bytes(PACKAGE)
    entry = {
        "execution": {
            "package_name": "demo_pkg",
            "package_link": "pkgs/demo_pkg.zip",
            "package_sha256": PACKAGE_SHA,
            "model_name": "weights",
            "extension": ".npy",
            "dependencies": ["numpy"],
            "generate_method": {"name": "generate", "args": {"base": [], "custom": {}}},
        },
        "selection": {},
        "description": {},
    }
    config = tmp_path / "catalogue.json"
    config.write_text(json.dumps({"00099_DEMO_PKG": entry}), encoding="utf-8")
    monkeypatch.setenv("MEDIGAN_ISO_CONFIG", str(config))
    code = main(["fetch", "00099"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.startswith(
        f"00099_DEMO_PKG: {home / 'packages' / 'trees' / PACKAGE_SHA / 'demo_pkg'}"
    )


def test_progress_bar_draws_percent_and_mib() -> None:
    stream = io.StringIO()
    bar = _ProgressBar("00001", stream)
    bar(1 << 20, 2 << 20)
    bar(2 << 20, 2 << 20)
    bar.close()
    text = stream.getvalue()
    assert text.startswith("\r00001 [")
    assert "100.0% 2.0/2.0 MiB" in text
    assert text.endswith("\n")
