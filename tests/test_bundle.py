"""Air-gap bundles (issue 20): made online from the local index setup, installed and used with no network.

A bundle of the numpy and torch demos and a fixture model (a zipped package served from 127.0.0.1, whose
env needs a dependency that exists only as an sdist, so the bundle must build it into a wheel) is made
once per module with the real uv, pip and bubblewrap. The offline test then runs ``bundle verify``,
``bundle install`` and ``generate`` as real CLI processes inside a network namespace with no interfaces
(``unshare -n``) and a fresh home, under ``strace``, and checks that no process ever tried to connect to
a network address. Tampered wheels and packages are refused and leave nothing installed.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _model_fixtures import write_numpy_zoo
from _pkgserver import serve
from _zipcraft import package_zip

from medigan_iso.archives import sha256_file
from medigan_iso.bundle import (
    BundleReport,
    create_bundle,
    install_bundle,
    manifest_sha256,
    verify_bundle,
)
from medigan_iso.errors import BundleError, MediganIsoError
from medigan_iso.paths import cache_layout

pytestmark = pytest.mark.slow

ZOO_ID = "test-bundle-zoo"
DEMOS = ("demo-numpy", "demo-torch")
MODELS = (*DEMOS, ZOO_ID)
SDIST_NAME = "medigan-iso-bundle-sdist"


def _sdist(folder: Path) -> Path:
    """An sdist (setuptools backend) with no wheel anywhere: bundling must build it into one."""
    base = "medigan_iso_bundle_sdist-0.1"
    files = {
        f"{base}/pyproject.toml": (
            '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
            f'[project]\nname = "{SDIST_NAME}"\nversion = "0.1"\n'
            '[tool.setuptools]\npy-modules = ["medigan_iso_bundle_sdist"]\n'
        ),
        f"{base}/medigan_iso_bundle_sdist.py": "VALUE = 42\n",
        f"{base}/PKG-INFO": f"Metadata-Version: 2.1\nName: {SDIST_NAME}\nVersion: 0.1\n",
    }
    path = folder / f"{base}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return path


def _zoo_entry(link: str, sha: str) -> dict[str, Any]:
    return {
        "execution": {
            "package_name": "zoo",
            "package_link": link,
            "package_sha256": sha,
            "model_name": "weights",
            "extension": ".npy",
            "image_size": [8, 8],
            "dependencies": ["numpy", f"{SDIST_NAME}==0.1"],
            "dependencies_as_of": "latest",
            "generate_method": {
                "name": "generate",
                "args": {"base": ["model_file", "num_samples", "output_path", "save_images"], "custom": {}},
            },
        },
        "selection": {"modality": ["test"], "tags": ["zoo"]},
        "description": {"title": "bundle fixture"},
    }


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("bundle")
    source = write_numpy_zoo(root / "src")
    archive = package_zip({"zoo/" + p.name: p.read_bytes() for p in sorted(source.iterdir()) if p.is_file()})
    sdists = root / "sdists"
    sdists.mkdir()
    _sdist(sdists)
    mp = pytest.MonkeyPatch()
    mp.setenv("MEDIGAN_ISO_HOME", str(root / "connected-home"))
    mp.setenv("MEDIGAN_ISO_CATALOGUE_URL", "")
    mp.delenv("MEDIGAN_ISO_CONFIG", raising=False)
    mp.delenv("MEDIGAN_ISO_OFFLINE", raising=False)
    mp.delenv("MEDIGAN_ISO_BUNDLED", raising=False)
    try:
        with serve() as server:
            server.state.files["/zoo.zip"] = archive
            catalogue = root / "catalogue.json"
            entry = _zoo_entry(server.url("/zoo.zip"), hashlib.sha256(archive).hexdigest())
            catalogue.write_text(json.dumps({ZOO_ID: entry}), encoding="utf-8")
            out = root / "bundle"
            first = create_bundle(MODELS, out, config=[str(catalogue)], find_links=[sdists])
            downloads = len(server.state.gets("/zoo.zip"))
            again = create_bundle(MODELS, out, config=[str(catalogue)], find_links=[sdists])
            yield {"root": root, "out": out, "first": first, "again": again, "downloads": downloads}
    finally:
        mp.undo()


def _manifest(out: Path) -> dict[str, Any]:
    return json.loads((out / "bundle.json").read_text(encoding="utf-8"))


def test_bundle_holds_everything_once_and_is_incremental(made: dict[str, Any]) -> None:
    out: Path = made["out"]
    first: BundleReport = made["first"]
    again: BundleReport = made["again"]
    manifest = _manifest(out)
    assert set(first.models) == set(MODELS)
    assert again.added_files == ()  # the second run into the same folder adds nothing
    assert again.manifest_sha256 == manifest_sha256(out)
    # every file listed, with its hash
    for rel, sha in manifest["files"].items():
        assert sha256_file(out / rel) == sha, rel
    # one numpy wheel for all three envs (and the runner's lock), pinned by the same hash in each lock
    wheels = sorted(p.name for p in (out / "wheels").iterdir())
    numpy_wheels = [w for w in wheels if w.startswith("numpy-")]
    assert len(numpy_wheels) == 1, wheels
    numpy_sha = manifest["files"][f"wheels/{numpy_wheels[0]}"]
    locks = {m: (out / rec["envs"]["3.11"]["lock"]).read_text() for m, rec in manifest["models"].items()}
    assert all(numpy_sha in lock for lock in locks.values()), locks
    assert any(w.startswith("torch-2.13.0") for w in wheels)
    assert "torch==2.13.0" in locks["demo-torch"]
    # the sdist was built into a wheel here; the lock pins that wheel, not the sdist
    built = [w for w in wheels if w.startswith("medigan_iso_bundle_sdist-0.1-")]
    assert len(built) == 1 and built[0] in manifest["built_from_sdist"], wheels
    assert manifest["files"][f"wheels/{built[0]}"] in locks[ZOO_ID]
    assert manifest["runner"]["3.11"] in manifest["files"]
    # catalogue entries with their as-of dates made explicit; packages verified and carried
    catalogue = json.loads((out / "catalogue.json").read_text(encoding="utf-8"))
    assert set(catalogue) == set(MODELS)
    assert catalogue["demo-torch"]["execution"]["dependencies_as_of"] == "2026-11-30"
    assert catalogue[ZOO_ID]["execution"]["dependencies_as_of"] == "latest"
    zoo_link = catalogue[ZOO_ID]["execution"]["package_link"]
    assert zoo_link.startswith("packages/") and (out / zoo_link).is_file()
    assert made["downloads"] == 1  # the archive is fetched once, not again on the incremental run
    assert verify_bundle(out)["files"] == manifest["files"]


def _copy(out: Path, dest: Path) -> Path:
    """A hardlinked copy of the bundle (tampering replaces files, never writes through a link)."""
    subprocess.run(["cp", "-al", str(out), str(dest)], check=True)
    return dest


def _tamper(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.unlink()
    path.write_bytes(bytes(data))


def _fix_manifest(bundle: Path, rel: str) -> None:
    """What an attacker who can also write bundle.json does: record the altered file's hash."""
    manifest = _manifest(bundle)
    manifest["files"][rel] = sha256_file(bundle / rel)
    (bundle / "bundle.json").unlink()
    (bundle / "bundle.json").write_text(json.dumps(manifest), encoding="utf-8")


def _nothing_installed(home: Path) -> None:
    layout = cache_layout(home)
    assert not (layout.catalogues / "local_models.json").exists()
    assert not (layout.root / "bundles").exists()


def test_a_tampered_wheel_is_refused(
    made: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = manifest_sha256(made["out"])
    bundle = _copy(made["out"], tmp_path / "bundle")
    wheel = next((bundle / "wheels").glob("numpy-*.whl"))
    rel = f"wheels/{wheel.name}"
    _tamper(wheel)
    with pytest.raises(BundleError) as caught:
        verify_bundle(bundle)
    assert f"{rel}: altered" in str(caught.value) and len(caught.value.problems) == 1
    home = tmp_path / "home"
    monkeypatch.setenv("MEDIGAN_ISO_CATALOGUE_URL", "")
    with pytest.raises(BundleError, match=rel):
        install_bundle(bundle, home=home)
    _nothing_installed(home)
    # with bundle.json rewritten to match, the printed manifest hash no longer matches ...
    _fix_manifest(bundle, rel)
    with pytest.raises(BundleError, match="not the expected"):
        install_bundle(bundle, home=home, expected_sha256=original)
    # ... and without it the hash-pinned lock still refuses the wheel at install time
    with pytest.raises(BundleError, match="did not build offline") as caught:
        install_bundle(bundle, home=home)
    assert "numpy" in str(caught.value).lower()
    _nothing_installed(home)


def test_verify_names_and_refuses_files_the_manifest_does_not_list(
    made: dict[str, Any], tmp_path: Path
) -> None:
    bundle = _copy(made["out"], tmp_path / "bundle")
    verify_bundle(bundle)
    (bundle / "wheels" / "evil-1.0-py3-none-any.whl").write_bytes(b"not listed")
    (bundle / "packages" / "demo-numpy" / "extra.py").write_text("print('hi')\n", encoding="utf-8")
    (bundle / "notes.txt").symlink_to("/etc/hostname")
    with pytest.raises(BundleError) as caught:
        verify_bundle(bundle)
    assert sorted(caught.value.problems) == [
        "notes.txt: not listed in bundle.json (an extra file)",
        "packages/demo-numpy/extra.py: not listed in bundle.json (an extra file)",
        "wheels/evil-1.0-py3-none-any.whl: not listed in bundle.json (an extra file)",
    ]


def test_a_tampered_package_is_refused(
    made: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = _copy(made["out"], tmp_path / "bundle")
    target = next(p for p in sorted((bundle / "packages" / "demo-numpy").rglob("*.py")))
    rel = target.relative_to(bundle).as_posix()
    _tamper(target)
    missing = next((bundle / "locks").glob("_runner-*.txt"))
    missing.unlink()
    with pytest.raises(BundleError) as caught:
        verify_bundle(bundle)
    text = str(caught.value)
    assert f"{rel}: altered" in text and f"locks/{missing.name}: missing" in text
    home = tmp_path / "home"
    monkeypatch.setenv("MEDIGAN_ISO_CATALOGUE_URL", "")
    _fix_manifest(bundle, rel)
    manifest = _manifest(bundle)
    del manifest["files"][f"locks/{missing.name}"]
    (bundle / "bundle.json").unlink()
    (bundle / "bundle.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(MediganIsoError, match="mismatch"):  # the package's own pin (its tree hash)
        install_bundle(bundle, home=home)
    _nothing_installed(home)


def _netns_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "the network-namespace test needs root (unshare -n); CI runs it as root"
    for tool in ("unshare", "strace"):
        if shutil.which(tool) is None:
            return f"the network-namespace test needs {tool} (.ci/run installs it in CI)"
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"unshare -n does not work here: {probe.stderr.strip()}"
    return None


def _offline_run(home: Path, trace: Path, *args: str, extra_env: dict[str, str] | None = None) -> str:
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "MEDIGAN_ISO_CATALOGUE_URL": "",
        **(extra_env or {}),
    }
    argv = ["unshare", "-n", "--", "strace", "-f", "-qq", "-e", "trace=connect", "-o", str(trace), *args]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False, timeout=1800)
    assert done.returncode == 0, f"{args}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _network_attempts(trace: Path) -> list[str]:
    lines = trace.read_text(encoding="utf-8", errors="replace").splitlines()
    return [ln for ln in lines if "connect(" in ln and ("AF_INET" in ln or "AF_INET6" in ln)]


def test_offline_install_and_generate_in_a_network_namespace(made: dict[str, Any], tmp_path: Path) -> None:
    reason = _netns_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    home = tmp_path / "fresh-home"
    home.mkdir()
    # the detector can fail: a connection attempt in the same setup is seen
    control = tmp_path / "control.txt"
    probe = (
        "import socket\ntry:\n    socket.create_connection(('192.0.2.1', 80), timeout=1)\n"
        "except OSError:\n    pass"
    )
    _offline_run(home, control, sys.executable, "-c", probe)
    assert _network_attempts(control), control.read_text()
    cli = [sys.executable, "-m", "medigan_iso"]
    out: Path = made["out"]
    sha = manifest_sha256(out)
    traces = []
    for step, args in enumerate(
        [
            [*cli, "bundle", "verify", str(out), "--sha256", sha],
            [*cli, "bundle", "install", str(out), "--sha256", sha],
        ]
    ):
        traces.append(tmp_path / f"trace-{step}.txt")
        printed = _offline_run(home, traces[-1], *args)
    assert all(f"{m}: installed" in printed for m in MODELS), printed
    for model_id in MODELS:
        traces.append(tmp_path / f"trace-{model_id}.txt")
        dest = tmp_path / f"out-{model_id}"
        _offline_run(
            home,
            traces[-1],
            *cli,
            "generate",
            model_id,
            "-n",
            "2",
            "-o",
            str(dest),
            "--seed",
            "3",
            extra_env={"MEDIGAN_ISO_OFFLINE": "1", "MEDIGAN_ISO_SANDBOX": "require"},
        )
        assert len([p for p in dest.iterdir() if p.is_file()]) >= 2, model_id
    for trace in traces:
        assert _network_attempts(trace) == [], trace
    shutil.rmtree(home, ignore_errors=True)  # a torch env's unpacked wheels: about 1 GB


def test_session_installs_the_bundle_named_by_the_environment_once(
    made: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medigan_iso import Session

    home = tmp_path / "home"
    monkeypatch.setenv("MEDIGAN_ISO_BUNDLE", str(made["out"]))
    monkeypatch.setenv("MEDIGAN_ISO_HOME", str(home))
    monkeypatch.setenv("MEDIGAN_ISO_CATALOGUE_URL", "")
    monkeypatch.setenv("MEDIGAN_ISO_OFFLINE", "1")
    record = cache_layout(home).root / "bundles" / f"{manifest_sha256(made['out'])}.json"
    try:
        with Session() as session:
            assert ZOO_ID in session.catalogue  # the bundle's entries are in the local catalogue now
            first = record.stat().st_mtime_ns
            images = session.generate(ZOO_ID, 2, seed=1)
            assert len(images) == 2
        with Session() as session:
            assert ZOO_ID in session.catalogue
        assert record.stat().st_mtime_ns == first  # installed once, not again
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_the_bundle_folder_can_be_deleted_after_install(
    made: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medigan_iso import Session

    bundle = tmp_path / "bundle"
    shutil.copytree(made["out"], bundle)
    manifest = _manifest(bundle)
    del manifest["models"]["demo-torch"]  # its 1 GB env is built by the namespace test
    (bundle / "bundle.json").write_text(json.dumps(manifest), encoding="utf-8")
    home = tmp_path / "home"
    monkeypatch.setenv("MEDIGAN_ISO_HOME", str(home))
    monkeypatch.setenv("MEDIGAN_ISO_CATALOGUE_URL", "")
    monkeypatch.delenv("MEDIGAN_ISO_BUNDLE", raising=False)
    install_bundle(bundle)
    shutil.rmtree(bundle)
    monkeypatch.setenv("MEDIGAN_ISO_OFFLINE", "1")
    trees = cache_layout(home).package_trees
    with Session() as session:
        for model_id in ("demo-numpy", ZOO_ID):
            link = session.catalogue.resolve(model_id).package_link
            assert Path(link).parent == trees, link
            assert len(session.generate(model_id, 2, seed=1)) == 2


def test_python_targets_get_their_own_locks_and_wheels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from _interpreters import skip_without_python

    monkeypatch.setenv("MEDIGAN_ISO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MEDIGAN_ISO_CATALOGUE_URL", "")
    monkeypatch.delenv("MEDIGAN_ISO_BUNDLED", raising=False)
    out = tmp_path / "bundle"
    with pytest.raises(BundleError, match=r"no Python 3\.99 on this machine") as caught:
        create_bundle(["demo-numpy"], out, pythons=["3.99"])
    assert caught.value.remedy and "pyenv install 3.99" in caught.value.remedy
    try:
        create_bundle(["demo-numpy"], out, pythons=["3.12", "3.11"])
    except BundleError as exc:
        if "no Python 3.12" not in str(exc):
            raise
        skip_without_python("3.12", exc)
    manifest = _manifest(out)
    assert set(manifest["models"]["demo-numpy"]["envs"]) == {"3.11", "3.12"}
    assert set(manifest["runner"]) == {"3.11", "3.12"}
    wheels = [p.name for p in (out / "wheels").iterdir()]
    for tag in ("cp311", "cp312"):
        assert any(w.startswith("numpy-") and f"-{tag}-" in w for w in wheels), wheels
        assert any(w.startswith("msgpack-") and f"-{tag}-" in w for w in wheels), wheels
    lock_312 = (out / manifest["models"]["demo-numpy"]["envs"]["3.12"]["lock"]).read_text()
    numpy_312 = next(w for w in wheels if w.startswith("numpy-") and "-cp312-" in w)
    assert manifest["files"][f"wheels/{numpy_312}"] in lock_312


def test_a_bundle_for_another_platform_holds_its_wheels_and_refuses_this_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from packaging.tags import platform_tags

    target = "aarch64-manylinux_2_28"
    if any("aarch64" in tag for tag in platform_tags()):
        target = "x86_64-manylinux_2_28"  # "another platform" on an arm machine
    arch = target.split("-")[0]
    monkeypatch.setenv("MEDIGAN_ISO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MEDIGAN_ISO_CATALOGUE_URL", "")
    monkeypatch.delenv("MEDIGAN_ISO_BUNDLED", raising=False)
    out = tmp_path / "bundle"
    with pytest.raises(BundleError, match="not a platform bundles support") as caught:
        create_bundle(["demo-numpy"], out, platform="sparc-solaris")
    assert caught.value.remedy and "aarch64-manylinux_2_28" in caught.value.remedy
    create_bundle(["demo-numpy"], out, platform=target)
    manifest = _manifest(out)
    assert manifest["target_platform"] == target and manifest["platform"] == target
    assert f"manylinux_2_28_{arch}" in manifest["platform_tags"]
    wheels = [p.name for p in (out / "wheels").iterdir()]
    for name in ("numpy", "msgpack"):
        fitting = [w for w in wheels if w.startswith(f"{name}-")]
        assert fitting and all(w.endswith(f"_{arch}.whl") for w in fitting), wheels
    lock = (out / manifest["models"]["demo-numpy"]["envs"]["3.11"]["lock"]).read_text()
    numpy_wheel = next(w for w in wheels if w.startswith("numpy-"))
    assert manifest["files"][f"wheels/{numpy_wheel}"] in lock
    verify_bundle(out)
    with pytest.raises(BundleError, match=f"made for the platform {target}") as refused:
        install_bundle(out, home=tmp_path / "dest")
    assert refused.value.remedy and "--platform" in refused.value.remedy
    _nothing_installed(tmp_path / "dest")
    # one folder holds one platform
    with pytest.raises(BundleError, match="bundle each platform into its own folder"):
        create_bundle(["demo-numpy"], out)


def test_bundling_fetches_a_package_only_pip_conf_names(tmp_path: Path) -> None:
    """`medigan-iso bundle` (a real CLI process) resolves with uv and fetches with pip inside bubblewrap,
    where pip reads no pip.conf: both find a wheel that only an extra index of the user's pip.conf has."""
    from _extra_index import PASSWORD, USER, WHEEL, extra_index

    model_id = "test-pipargs-zoo"
    source = write_numpy_zoo(tmp_path / "src")
    archive = package_zip({"zoo/" + p.name: p.read_bytes() for p in sorted(source.iterdir()) if p.is_file()})
    out = tmp_path / "bundle"
    with extra_index(tmp_path / "extra") as extra:
        extra.server.state.files["/zoo.zip"] = archive
        entry = _zoo_entry(extra.server.url("/zoo.zip"), hashlib.sha256(archive).hexdigest())
        entry["execution"]["dependencies"] = ["numpy", "pipargs-extra==1.0"]
        catalogue = tmp_path / "catalogue.json"
        catalogue.write_text(json.dumps({model_id: entry}), encoding="utf-8")
        env = extra.environ(os.environ)
        env.update(
            MEDIGAN_ISO_HOME=str(tmp_path / "home"),
            MEDIGAN_ISO_CONFIG=str(catalogue),
            MEDIGAN_ISO_CATALOGUE_URL="",
            MEDIGAN_ISO_BUNDLED="0",
        )
        env.pop("MEDIGAN_ISO_OFFLINE", None)
        done = subprocess.run(
            [sys.executable, "-m", "medigan_iso", "bundle", model_id, "-o", str(out)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=1800,
        )
        assert done.returncode == 0, done.stderr
        wheel_sha = hashlib.sha256(extra.server.state.files[f"/files/{WHEEL}"]).hexdigest()
        fetched = extra.fetched_by_pip(f"/files/{WHEEL}")
    auth = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert fetched and all(h.get("Authorization") == auth for h in fetched), fetched
    manifest = _manifest(out)
    assert manifest["files"][f"wheels/{WHEEL}"] == wheel_sha
    (env_record,) = manifest["models"][model_id]["envs"].values()
    assert wheel_sha in (out / env_record["lock"]).read_text(encoding="utf-8")
    assert PASSWORD not in done.stdout + done.stderr
    assert not any(PASSWORD in p.read_text(encoding="utf-8", errors="replace") for p in out.rglob("*.json"))
