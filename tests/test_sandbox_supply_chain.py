"""Strict supply-chain mode, the hostile output directory and `medigan-iso doctor`, with real parts.

Strict mode builds envs from wheels only: an sdist whose build script would write a marker file is refused
before that script runs (a non-strict build of the same sdist runs it, so the test can fail). The output
helpers are handed a symlink, a FIFO and a device and must neither follow, block nor read them.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from _wheelcraft import make_sdist

from medigan_iso.cli import main
from medigan_iso.envs import EnvSpec, ensure_env
from medigan_iso.errors import EnvError
from medigan_iso.images import non_regular_entries, read_regular_file

SETUP_PY = """
from pathlib import Path
from setuptools import setup
try:
    Path({marker!r}).write_text("the build script ran")
except OSError:  # a confined build cannot write there
    pass
setup(name="buildscript-canary", version="1.0", py_modules=[])
"""


def _sdist(directory: Path, marker: Path) -> Path:
    return make_sdist(directory, "buildscript-canary", "1.0", SETUP_PY.format(marker=str(marker)))


def test_strict_mode_refuses_an_sdist_before_its_build_script_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "build-script-ran"
    links = _sdist(tmp_path / "links", marker).parent
    spec = EnvSpec(["buildscript-canary==1.0"], name="strict-canary")
    with pytest.raises(EnvError) as info:
        ensure_env(spec, home=tmp_path / "home", find_links=[str(links)], offline=False, strict=True)
    assert "buildscript-canary" in str(info.value)
    assert not marker.exists()
    # control: without strict mode (and unconfined, so its marker reaches this folder) the same requirement
    # runs the sdist's build script
    monkeypatch.setenv("MEDIGAN_ISO_SANDBOX", "off")
    ensure_env(spec, home=tmp_path / "home", find_links=[str(links)], offline=False)
    assert marker.read_text() == "the build script ran"


def test_output_helpers_never_follow_symlinks_or_open_fifos(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    (out / "image.png").write_bytes(b"png bytes")
    (out / "link.png").symlink_to(secret)
    os.mkfifo(out / "fifo.png")
    (out / "sub").mkdir()
    (out / "sub" / "dangling").symlink_to(tmp_path / "nowhere")
    assert read_regular_file(out / "image.png") == b"png bytes"
    with pytest.raises(ValueError, match="it is a symlink"):
        read_regular_file(out / "link.png")
    done = threading.Event()
    errors: list[BaseException] = []

    def read_fifo() -> None:
        try:
            read_regular_file(out / "fifo.png")
        except ValueError as exc:
            errors.append(exc)
        done.set()

    threading.Thread(target=read_fifo, daemon=True).start()
    assert done.wait(5), "reading a FIFO blocked"
    assert "it is a FIFO, not a regular file" in str(errors[0])
    with pytest.raises(ValueError, match="it is a character device"):
        read_regular_file("/dev/null")
    with pytest.raises(ValueError, match="above the cap of 4"):
        read_regular_file(out / "image.png", max_bytes=4)
    assert non_regular_entries(out) == [
        (out / "fifo.png", "FIFO"),
        (out / "link.png", "symlink"),
        (out / "sub" / "dangling", "symlink"),
    ]


def test_doctor_reports_uv_caches_and_every_sandbox_layer_with_reasons(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["doctor", "--json", "--bwrap", str(tmp_path / "no-bwrap")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["uv"]["version"].startswith("uv ")
    assert set(report["caches"]) == {"catalogues", "packages", "envs", "uv_cache", "logs"}
    assert report["cache_root"] == str(home)
    layers = report["sandbox"]["layers"]
    assert set(layers) == {"hygiene", "bubblewrap", "seccomp", "landlock", "rlimits"}
    assert layers["bubblewrap"]["available"] is False
    assert "no bwrap executable" in layers["bubblewrap"]["detail"]
    assert "apt-get install bubblewrap" in layers["bubblewrap"]["remedy"]
    assert main(["doctor"]) == 0
    text = capsys.readouterr().out
    assert "sandbox policy: auto" in text and "bubblewrap" in text and text.startswith("uv: uv ")


def test_a_strict_session_refuses_a_package_without_a_pinned_hash(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medigan_iso import Session
    from medigan_iso.errors import CatalogueValidationError

    monkeypatch.setenv("MEDIGAN_ISO_CATALOGUE_URL", "")
    entry = {
        "execution": {
            "package_name": "zoo",
            "package_link": "models/zoo",
            "model_name": "weights",
            "extension": ".npy",
            "dependencies": ["numpy"],
            "generate_method": {"name": "generate", "args": {"base": [], "custom": {}}},
        },
        "selection": {},
        "description": {"title": "unpinned"},
    }
    catalogue = tmp_path / "catalogue.json"
    catalogue.write_text(json.dumps({"unpinned": entry}), encoding="utf-8")
    with Session(config=str(catalogue), strict=True) as session, pytest.raises(
        CatalogueValidationError
    ) as info:
        session.generate("unpinned", 1)
    assert ("unpinned", "/execution", "'package_sha256' is a required property") in info.value.violations
    assert not (home / "envs").exists() or list((home / "envs").iterdir()) == []  # nothing was built
