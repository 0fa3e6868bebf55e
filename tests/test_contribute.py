"""Contributing a model: the whole flow against stand-ins of Zenodo and GitHub on 127.0.0.1.

A real numpy model package is checked, zipped, tested in its own uv env under the sandbox (require for
every layer this machine supports), deposited on a Zenodo stand-in served over TLS, announced on a
GitHub stand-in, and the finished entry then generates from its published link. The failure paths
(wrong token, a 500 in the middle of the upload, a package that fails its test, no confirmation) leave
nothing published and file nothing, and no token ever reaches output, logs or a URL.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from _model_fixtures import write_numpy_zoo
from _remote_standins import GitHubState, ZenodoState, make_certificate, serve_github, serve_zenodo

from medigan_iso import Generators
from medigan_iso.catalogue import LOCAL_CATALOGUE_NAME, load_catalogue, store_local_entry, validate_catalogue
from medigan_iso.cli import build_parser, main
from medigan_iso.contribute import HttpOptions, Token, build_package, contribute_model
from medigan_iso.contribute.entry import entry_from_input, fill_interactively
from medigan_iso.contribute.remote import check_api_root
from medigan_iso.errors import ContributionError, ModelTestError, RemoteServiceError
from medigan_iso.paths import cache_layout
from medigan_iso.sandbox import CONFINING_LAYERS, probe_host

MODEL_ID = "99001_DEMO_NUMPY_CONTRIB"
ZENODO_TOKEN = "zenodo-SECRET-4f1c9a77e2"
GITHUB_TOKEN = "ghp_SECRET_8d0b3e5a91c2"
FAST = HttpOptions(attempts=3, backoff_s=0.0, backoff_max_s=0.0, read_timeout_s=30.0)


def _entry(model_id: str = MODEL_ID, *, size: int = 8) -> dict[str, Any]:
    return {
        "execution": {
            "package_name": "numpy_zoo",
            "package_link": "numpy_zoo",
            "model_name": "weights",
            "extension": ".npy",
            "image_size": [size, size, 3],
            "dependencies": ["numpy"],
            "generate_method": {
                "name": "generate",
                "args": {
                    "base": ["model_file", "num_samples", "output_path", "save_images"],
                    "custom": {"size": size},
                },
            },
        },
        "selection": {
            "modality": ["phantom"],
            "tags": ["test", "numpy"],
            "height": size,
            "width": size,
            "depth": 3,
        },
        "description": {"title": "A numpy test model"},
    }


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One home for the module: the model env is built once and reused by every flow."""
    return tmp_path_factory.mktemp("contribute-home")


@pytest.fixture
def world(tmp_path: Path, shared_home: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("MEDIGAN_ISO_HOME", str(shared_home))
    monkeypatch.setenv("MEDIGAN_ISO_OFFLINE", "0")
    monkeypatch.setenv("MEDIGAN_ISO_CATALOGUE_URL", "")
    monkeypatch.delenv("MEDIGAN_ISO_CONFIG", raising=False)
    monkeypatch.delenv("MEDIGAN_ISO_SANDBOX", raising=False)
    monkeypatch.setenv("ZENODO_ACCESS_TOKEN", ZENODO_TOKEN)
    monkeypatch.setenv("GITHUB_TOKEN", GITHUB_TOKEN)
    # the home is shared for its envs; a model another test stored locally must not make the id taken
    (cache_layout(shared_home).catalogues / LOCAL_CATALOGUE_NAME).unlink(missing_ok=True)
    package = write_numpy_zoo(tmp_path / "numpy_zoo")
    metadata = tmp_path / "metadata.json"
    metadata.write_text(json.dumps({MODEL_ID: _entry()}), encoding="utf-8")
    return {
        "package": package,
        "metadata": metadata,
        "out": tmp_path / "out",
        "home": shared_home,
        "tmp": tmp_path,
    }


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def zenodo_https(tls: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[ZenodoState]:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls[0]))  # requests trusts the stand-in's certificate
    with serve_zenodo(ZenodoState(token=ZENODO_TOKEN), tls=tls) as state:
        monkeypatch.setenv("MEDIGAN_ISO_ZENODO_URL", state.base)
        yield state


@pytest.fixture
def zenodo_http(monkeypatch: pytest.MonkeyPatch) -> Iterator[ZenodoState]:
    with serve_zenodo(ZenodoState(token=ZENODO_TOKEN)) as state:
        monkeypatch.setenv("MEDIGAN_ISO_ZENODO_URL", state.base)
        yield state


@pytest.fixture
def github(monkeypatch: pytest.MonkeyPatch) -> Iterator[GitHubState]:
    with serve_github(GitHubState(token=GITHUB_TOKEN)) as (state, url):
        monkeypatch.setenv("MEDIGAN_ISO_GITHUB_API_URL", url)
        monkeypatch.delenv("MEDIGAN_ISO_GITHUB_REPO", raising=False)
        yield state


def _assert_no_token(*texts: str) -> None:
    for text in texts:
        assert ZENODO_TOKEN not in text
        assert GITHUB_TOKEN not in text


def _flow(world: dict[str, Any], **kwargs: Any) -> Any:
    kwargs.setdefault("assume_yes", True)
    kwargs.setdefault("http", FAST)
    return contribute_model(
        MODEL_ID,
        world["package"],
        kwargs.pop("entry", _entry()),
        output_dir=world["out"],
        home=world["home"],
        offline=False,
        **kwargs,
    )


# --- packaging ---------------------------------------------------------------------------------------


def test_same_folder_gives_same_zip_bytes(tmp_path: Path) -> None:
    folder = write_numpy_zoo(tmp_path / "pkg")
    first = build_package(folder, tmp_path / "a.zip", model_id=MODEL_ID, package_name="pkg")
    # what must not matter: timestamps, permissions, bytecode caches, the destination's name
    os.utime(folder / "helpers.py", (1_700_000_000, 1_700_000_000))
    (folder / "__init__.py").chmod(0o600)
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "helpers.cpython-311.pyc").write_bytes(b"junk")
    second = build_package(folder, tmp_path / "b.zip", model_id=MODEL_ID, package_name="pkg")
    assert first.path.read_bytes() == second.path.read_bytes()
    assert (first.sha256, first.md5) == (second.sha256, second.md5)
    with zipfile.ZipFile(second.path) as archive:
        assert archive.namelist() == ["pkg/__init__.py", "pkg/helpers.py", "pkg/weights.npy"]
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    # what must matter: contents
    (folder / "helpers.py").write_text("# changed\n", encoding="utf-8")
    third = build_package(folder, tmp_path / "c.zip", model_id=MODEL_ID, package_name="pkg")
    assert third.sha256 != first.sha256


def test_package_with_a_symlink_is_refused(tmp_path: Path) -> None:
    folder = write_numpy_zoo(tmp_path / "pkg")
    (folder / "secret").symlink_to("/etc/hostname")
    with pytest.raises(ContributionError, match="is a symlink; a package holds plain files only") as info:
        build_package(folder, tmp_path / "a.zip", model_id=MODEL_ID, package_name="pkg")
    assert info.value.model_id == MODEL_ID
    assert not (tmp_path / "a.zip").exists()


# --- roots, tokens, checks ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://zenodo.org", True),
        ("https://sandbox.zenodo.org/", True),
        ("http://127.0.0.1:8080", True),
        ("http://localhost:9", True),
        ("http://[::1]:9", True),
        ("http://zenodo.org", False),
        ("http://10.0.0.1", False),
        ("ftp://zenodo.org", False),
        ("https://user:pw@zenodo.org", False),
    ],
)
def test_plain_http_api_roots_only_for_loopback(url: str, ok: bool) -> None:
    if ok:
        assert check_api_root(url, model_id=MODEL_ID, what="Zenodo", env="X").startswith(("http", "https"))
    else:
        with pytest.raises(ContributionError, match=r"must be an https:// URL|must not carry credentials"):
            check_api_root(url, model_id=MODEL_ID, what="Zenodo", env="MEDIGAN_ISO_ZENODO_URL")


def test_token_never_shows_in_repr_or_str() -> None:
    token = Token(ZENODO_TOKEN)
    _assert_no_token(repr(token), str(token), f"{token}", repr([token]))
    assert token.reveal() == ZENODO_TOKEN


def test_tokens_cannot_be_given_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["contribute", MODEL_ID, "x/__init__.py", "--zenodo-token", ZENODO_TOKEN])
    assert info.value.code == 2
    assert "unrecognized arguments: --zenodo-token" in capsys.readouterr().err
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    contribute = subparsers.choices["contribute"]  # type: ignore[attr-defined]
    options = [o for action in contribute._actions for o in action.option_strings]
    assert "--yes" in options
    assert [o for o in options if "token" in o.lower()] == []


def test_missing_token_fails_before_any_work(world: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GITHUB_TOKEN")
    with pytest.raises(ContributionError, match="no Github token") as info:
        _flow(world)
    assert "export GITHUB_TOKEN=" in str(info.value)
    assert not world["out"].exists()


def _contribute_argv(world: dict[str, Any], *extra: str) -> list[str]:
    """``medigan-iso contribute`` of the world's package and metadata file into its output folder."""
    return [
        "contribute",
        MODEL_ID,
        str(world["package"] / "__init__.py"),
        "--metadata",
        str(world["metadata"]),
        "--output",
        str(world["out"]),
        *extra,
    ]


def test_non_terminal_without_yes_refuses_before_anything(
    world: dict[str, Any], zenodo_http: ZenodoState, github: GitHubState, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(_contribute_argv(world))
    err = capsys.readouterr().err
    assert code == 1
    assert "cannot ask for confirmation (not a terminal)" in err and "pass --yes" in err
    assert zenodo_http.seen == [] and github.seen == []
    assert not world["out"].exists()


def test_entry_checks_name_the_problem(world: dict[str, Any]) -> None:
    bad_ids = {"123_short": "must be 13-30 characters", "00001_../../etc/x": "must be 13-30 characters"}
    for model_id, message in bad_ids.items():
        with pytest.raises(ContributionError, match=message):
            contribute_model(model_id, world["package"], _entry(), output_dir=world["out"], assume_yes=True)
    catalogue = load_catalogue({"00042_TAKEN_MODEL_X": _entry()}, home=world["home"], offline=True)
    with pytest.raises(ContributionError, match="the catalogue already has 00042_TAKEN_MODEL_X") as info:
        contribute_model(
            "00042_SOME_OTHER_MODEL",
            world["package"],
            _entry(),
            output_dir=world["out"],
            assume_yes=True,
            catalogue=catalogue,
        )
    assert info.value.model_id == "00042_SOME_OTHER_MODEL"
    loose = _entry()
    loose["execution"]["image_size"] = ["8", "8"]
    loose["execution"]["dependencies"] = ["numpy", "not a requirement!"]
    with pytest.raises(ContributionError, match="not valid in strict mode") as info:
        _flow(world, entry=loose)
    assert "/execution/image_size/0" in str(info.value) and "/execution/dependencies/1" in str(info.value)
    renamed = _entry()
    renamed["execution"]["generate_method"]["name"] = "sample"
    with pytest.raises(ContributionError, match="defines no top-level 'sample'"):
        _flow(world, entry=renamed)
    no_weights = _entry()
    no_weights["execution"]["extension"] = ".pt"
    with pytest.raises(ContributionError, match=r"the weights file .*weights\.pt .* is missing"):
        _flow(world, entry=no_weights)
    assert not world["out"].exists()


# --- the flow ----------------------------------------------------------------------------------------


def test_full_flow_publishes_files_the_issue_and_the_entry_generates(
    world: dict[str, Any],
    zenodo_https: ZenodoState,
    github: GitHubState,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    zenodo_https.upload_failures = 1  # a 500 in the middle of the upload: retried, then it succeeds
    code = main(
        _contribute_argv(
            world,
            "--yes",
            "--creator-name",
            "Ada Lovelace",
            "--creator-affiliation",
            "Analytical Engines",
            "--description",
            "phantoms for tests",
            "--as-of",
            "2026-11-01",
        )
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    _assert_no_token(captured.out, captured.err, caplog.text)

    # Zenodo: one published deposition holding exactly the package, described; nothing else left
    (dep,) = zenodo_https.depositions.values()
    assert dep.submitted
    zip_path = world["out"] / f"{MODEL_ID}.zip"
    assert dep.files == {zip_path.name: zip_path.read_bytes()}
    assert dep.metadata["upload_type"] == "software"
    assert dep.metadata["creators"] == [{"name": "Ada Lovelace", "affiliation": "Analytical Engines"}]
    assert "medigan" in dep.metadata["keywords"] and dep.metadata["title"].endswith(MODEL_ID)
    puts = [s for s in zenodo_https.seen if s.method == "PUT" and "/api/files/" in s.path]
    assert len(puts) == 2  # the failed attempt and its retry
    for seen in zenodo_https.seen:
        assert "access_token" not in seen.path and ZENODO_TOKEN not in seen.path
    # published means immutable: the stand-in refuses changes, as Zenodo does
    auth = {"Authorization": f"Bearer {ZENODO_TOKEN}"}
    api = f"{zenodo_https.base}/api"
    assert (
        requests.put(
            f"{api}/files/{dep.bucket}/{zip_path.name}", data=b"x", headers=auth, timeout=10
        ).status_code
        == 403
    )
    assert requests.delete(f"{api}/deposit/depositions/{dep.id}", headers=auth, timeout=10).status_code == 403

    # the entry: strict-valid, pinned, pointing at the published file
    entry_file = world["out"] / f"{MODEL_ID}.json"
    data = json.loads(entry_file.read_text(encoding="utf-8"))
    validate_catalogue(data, source=str(entry_file), strict=True)
    execution = data[MODEL_ID]["execution"]
    assert (
        execution["package_link"] == f"{zenodo_https.base}/records/{dep.id}/files/{zip_path.name}?download=1"
    )
    assert execution["package_link"].startswith("https://127.0.0.1:")
    assert execution["package_sha256"] == hashlib.sha256(zip_path.read_bytes()).hexdigest()
    assert execution["package_md5"] == "md5:" + hashlib.md5(zip_path.read_bytes()).hexdigest()
    assert execution["dependencies_as_of"] == "2026-11-01"

    # GitHub: one issue, filed after publishing, holding the entry and the link
    (issue,) = github.issues
    assert issue["title"] == f"Model Integration Request for medigan: {MODEL_ID}"
    assert execution["package_link"] in issue["body"]
    body_json = issue["body"].split("```json\n", 1)[1].split("\n```", 1)[0]
    assert json.loads(body_json) == data
    assert [s.method for s in github.seen] == ["GET", "POST"]  # token check first, the issue last
    assert all(s.authorization == f"Bearer {GITHUB_TOKEN}" for s in github.seen)
    assert f"issue: {issue['html_url']}" in captured.out and f"entry: {entry_file}" in captured.out

    # the published entry generates from its link, strictly (pinned sha256, wheels-only env)
    monkeypatch.setenv("MEDIGAN_ISO_CONFIG", str(entry_file))
    monkeypatch.setenv("MEDIGAN_ISO_HOME", str(tmp_path / "fresh-home"))  # no cached package: download it
    out = tmp_path / "generated"
    code = main(
        ["generate", MODEL_ID, "-n", "2", "-o", str(out), "--format", "npy", "--strict", "--seed", "1"]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    arrays = [np.load(p) for p in sorted(out.glob("*.npy"))]
    assert len(arrays) == 2 and all(a.shape == (8, 8, 3) and a.dtype == np.uint8 for a in arrays)
    downloads = [
        s for s in zenodo_https.seen if s.method == "GET" and s.path.startswith(f"/records/{dep.id}/files/")
    ]
    assert len(downloads) >= 2  # the flow's verification and the generate run
    assert all(s.authorization is None for s in downloads)  # the public link needs no token


def test_wrong_token_publishes_nothing_files_nothing_and_never_shows_the_token(
    world: dict[str, Any],
    zenodo_http: ZenodoState,
    github: GitHubState,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "zenodo-WRONG-0000aaaa1111"
    monkeypatch.setenv("ZENODO_ACCESS_TOKEN", wrong)
    zenodo_http.echo_token = True  # a careless server quotes the token back in its error body
    code = main(_contribute_argv(world, "--yes"))
    captured = capsys.readouterr()
    assert code == 1
    assert "Zenodo: checking the token failed (HTTP 401)" in captured.err
    assert "could not verify that you are authorized" in captured.err  # the server's body is shown
    assert "check ZENODO_ACCESS_TOKEN" in captured.err
    for text in (captured.out, captured.err, caplog.text):
        assert wrong not in text
        _assert_no_token(text)
    assert zenodo_http.depositions == {} and github.seen == []
    assert [s.method for s in zenodo_http.seen] == ["GET"]
    assert not world["out"].exists()  # refused before the package was even built


def test_wrong_github_token_is_found_before_anything_is_published(
    world: dict[str, Any], zenodo_https: ZenodoState, github: GitHubState, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "ghp_WRONG_1111bbbb2222"
    monkeypatch.setenv("GITHUB_TOKEN", wrong)
    with pytest.raises(RemoteServiceError, match="Bad credentials") as info:
        _flow(world)
    assert (info.value.service, info.value.status) == ("GitHub", 401)
    assert "check GITHUB_TOKEN" in str(info.value) and wrong not in str(info.value)
    assert zenodo_https.depositions == {} and [s.method for s in zenodo_https.seen] == ["GET"]
    assert github.issues == [] and not world["out"].exists()


def test_unknown_repository_or_disabled_issues_stop_before_publishing(
    world: dict[str, Any], zenodo_https: ZenodoState, github: GitHubState, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDIGAN_ISO_GITHUB_REPO", "someone/elsewhere")
    with pytest.raises(RemoteServiceError, match=r"HTTP 404\): Not Found") as info:
        _flow(world)
    assert "MEDIGAN_ISO_GITHUB_REPO" in str(info.value)
    monkeypatch.delenv("MEDIGAN_ISO_GITHUB_REPO")
    github.has_issues = False
    with pytest.raises(RemoteServiceError, match="issues are disabled in RichardObi/medigan"):
        _flow(world)
    assert zenodo_https.depositions == {} and github.issues == []


def test_persistent_500_mid_upload_deletes_the_draft_and_files_nothing(
    world: dict[str, Any], zenodo_http: ZenodoState, github: GitHubState
) -> None:
    zenodo_http.upload_failures = 10
    with pytest.raises(RemoteServiceError) as info:
        _flow(world)
    err = info.value
    assert (err.service, err.status) in {("Zenodo", 500), ("Zenodo", None)}
    assert err.step.startswith("uploading") and err.model_id == MODEL_ID
    assert "try again later" in str(err)
    assert zenodo_http.depositions == {} and len(zenodo_http.deleted) == 1  # the draft is gone
    puts = [s for s in zenodo_http.seen if s.method == "PUT" and "/api/files/" in s.path]
    assert len(puts) == FAST.attempts
    assert github.issues == [] and [s.method for s in github.seen] == ["GET"]
    assert not (world["out"] / f"{MODEL_ID}.json").exists()


def test_http_zenodo_is_refused_at_the_publish_step_and_the_draft_deleted(
    world: dict[str, Any], zenodo_http: ZenodoState, github: GitHubState
) -> None:
    with pytest.raises(ContributionError, match="the package link would not be https"):
        _flow(world)
    assert zenodo_http.published() == [] and zenodo_http.depositions == {} and github.issues == []


def test_a_package_that_fails_its_test_uploads_nothing(
    world: dict[str, Any], zenodo_http: ZenodoState, github: GitHubState
) -> None:
    broken = write_numpy_zoo(world["tmp"] / "broken_pkg")
    (broken / "__init__.py").write_text(
        "def generate(model_file, num_samples, output_path, save_images, **kwargs):\n"
        "    raise RuntimeError('the weights do not fit this architecture')\n",
        encoding="utf-8",
    )
    with pytest.raises(ModelTestError, match=r"the package failed its test: .*nothing was uploaded") as info:
        contribute_model(
            MODEL_ID,
            broken,
            _entry(),
            output_dir=world["out"],
            home=world["home"],
            offline=False,
            assume_yes=True,
            http=FAST,
        )
    assert "RuntimeError: the weights do not fit this architecture" in str(info.value)
    assert [s.method for s in zenodo_http.seen] == ["GET"] and github.issues == []  # token checks only
    wrong_size = _entry(size=8)
    wrong_size["execution"]["image_size"] = [16, 16, 3]
    with pytest.raises(ModelTestError, match=r"sample 0 is 8x8, the entry declares image_size \[16, 16, 3\]"):
        _flow(world, entry=wrong_size)
    assert [s.method for s in zenodo_http.seen] == ["GET", "GET"] and github.issues == []


# --- the Generators facade ---------------------------------------------------------------------------

# medigan 1.0.0's signatures (src/medigan/generators.py), parameter names and defaults in order.
MEDIGAN_SIGNATURES: dict[str, list[tuple[str, Any]]] = {
    "add_model_contributor": [("model_id", None), ("init_py_path", None)],
    "get_model_contributor_by_id": [("model_id", None)],
    "add_metadata_from_file": [("model_id", None), ("metadata_file_path", None)],
    "add_metadata_from_input": [
        ("model_id", None),
        ("model_weights_name", None),
        ("model_weights_extension", None),
        ("generate_method_name", None),
        ("dependencies", None),
        ("fill_more_fields_interactively", True),
        ("output_path", "config"),
    ],
    "push_to_zenodo": [
        ("model_id", None),
        ("zenodo_access_token", None),
        ("creator_name", "unknown name"),
        ("creator_affiliation", "unknown affiliation"),
        ("model_description", ""),
    ],
    "push_to_github": [
        ("model_id", None),
        ("github_access_token", None),
        ("package_link", None),
        ("creator_name", ""),
        ("creator_affiliation", ""),
        ("model_description", ""),
    ],
    "test_model": [
        ("model_id", None),
        ("is_local_model", True),
        ("overwrite_existing_metadata", False),
        ("store_new_config", True),
        ("num_samples", 3),
        ("install_dependencies", False),
    ],
    "contribute": [
        ("model_id", None),
        ("init_py_path", None),
        ("github_access_token", None),
        ("zenodo_access_token", None),
        ("metadata_file_path", None),
        ("model_weights_name", None),
        ("model_weights_extension", None),
        ("generate_method_name", None),
        ("dependencies", None),
        ("fill_more_fields_interactively", True),
        ("overwrite_existing_metadata", False),
        ("output_path", "config"),
        ("creator_name", "unknown name"),
        ("creator_affiliation", "unknown affiliation"),
        ("model_description", ""),
        ("install_dependencies", False),
    ],
}


@pytest.mark.parametrize("name", sorted(MEDIGAN_SIGNATURES))
def test_generators_contribution_methods_have_medigans_signatures(name: str) -> None:
    params = list(inspect.signature(getattr(Generators, name)).parameters.values())[1:]
    positional = [
        (p.name, None if p.default is inspect.Parameter.empty else p.default)
        for p in params
        if p.kind is p.POSITIONAL_OR_KEYWORD
    ]
    assert positional == MEDIGAN_SIGNATURES[name]
    assert all(p.kind is p.KEYWORD_ONLY for p in params if p.kind is not p.POSITIONAL_OR_KEYWORD)


def test_generators_methods_contribute_step_by_step(
    world: dict[str, Any], zenodo_https: ZenodoState, github: GitHubState, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with Generators(home=world["home"], offline=False) as generators:
        contributor = generators.add_model_contributor(MODEL_ID, str(world["package"] / "__init__.py"))
        assert generators.get_model_contributor_by_id(MODEL_ID) is contributor
        assert generators.add_model_contributor(MODEL_ID) is contributor  # medigan returns the existing one
        metadata = generators.add_metadata_from_file(MODEL_ID, str(world["metadata"]))
        assert metadata[MODEL_ID]["execution"]["image_size"] == [8, 8, 3]
        generators.test_model(MODEL_ID)  # stored locally, tested from its zip in its own env
        assert MODEL_ID in load_catalogue(home=world["home"], offline=True).ids()
        assert contributor.test is not None and contributor.test.shapes[0] == (8, 8, 3)
        support = probe_host()
        if support.bwrap is not None or os.environ.get("CI"):  # CI installs bubblewrap: it must be used
            assert contributor.test.sandbox_policy == "require"
            assert {"bubblewrap"} <= set(contributor.test.sandbox_layers)
            assert {layer for layer in CONFINING_LAYERS if support.available(layer)} <= set(
                contributor.test.sandbox_layers
            )
        with pytest.raises(ContributionError, match="cannot ask for confirmation"):
            generators.push_to_zenodo(MODEL_ID, None)
        assert zenodo_https.seen == []
        record = generators.push_to_zenodo(MODEL_ID, None, "Ada", "Engines", assume_yes=True)
        (dep,) = zenodo_https.published()
        assert record == f"{zenodo_https.base}/records/{dep.id}"
        url = generators.push_to_github(MODEL_ID, None, creator_name="Ada")
    assert url == github.issues[0]["html_url"]
    assert "**Creator:** Ada" in github.issues[0]["body"]
    _assert_no_token(caplog.text)


# --- the local catalogue -----------------------------------------------------------------------------


def test_concurrent_local_additions_keep_every_entry(tmp_path: Path) -> None:
    home = tmp_path / "home"
    errors: list[BaseException] = []

    def add(index: int) -> None:
        try:
            entry = _entry(f"9{index:04d}_CONCURRENT_MODEL")
            store_local_entry(f"9{index:04d}_CONCURRENT_MODEL", entry, home=home)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    local = cache_layout(home).catalogues / LOCAL_CATALOGUE_NAME
    stored = json.loads(local.read_text(encoding="utf-8"))
    assert sorted(stored) == sorted(f"9{i:04d}_CONCURRENT_MODEL" for i in range(12))
    assert [p.name for p in local.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_add_model_to_config_goes_through_the_catalogue_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDIGAN_ISO_CATALOGUE_URL", "")
    folder = write_numpy_zoo(tmp_path / "numpy_zoo")
    entry = _entry()
    entry["execution"]["package_link"] = str(folder)
    home = tmp_path / "home"
    generators = Generators(home=home, offline=True)
    assert generators.add_model_to_config(MODEL_ID, {MODEL_ID: entry})
    stored = json.loads((cache_layout(home).catalogues / LOCAL_CATALOGUE_NAME).read_text(encoding="utf-8"))
    assert stored[MODEL_ID]["execution"]["package_link"] == str(folder)
    assert (cache_layout(home).locks / f"{LOCAL_CATALOGUE_NAME}.lock").exists()
    assert MODEL_ID in Generators(home=home, offline=True).list_models()


# --- entries without a metadata file -----------------------------------------------------------------


def test_prompts_fill_every_empty_value_and_the_answers_are_typed() -> None:
    entry = entry_from_input(
        package_name="pkg",
        package_link="pkg",
        model_weights_name="weights",
        model_weights_extension=".npy",
        generate_method_name="generate",
        dependencies=["numpy"],
    )
    asked: list[str] = []
    answers = {"execution.image_size": "8, 8, 3", "selection.modality": "MRI, CT", "selection.height": "8"}

    def prompt(question: str) -> str:
        asked.append(question)
        key = question.split("'")[1]
        return answers.get(key, "")

    filled = fill_interactively(MODEL_ID, entry, prompt)
    assert filled["execution"]["image_size"] == [8, 8, 3]
    assert filled["selection"]["modality"] == ["MRI", "CT"]
    assert filled["selection"]["height"] == 8
    assert filled["selection"]["width"] is None  # an empty answer leaves it unset
    assert any("'description.title'" in q for q in asked)
    assert not any("'execution.dependencies'" in q for q in asked)  # set values are not asked again


def test_cli_builds_the_entry_from_flags_without_a_terminal(
    world: dict[str, Any], zenodo_https: ZenodoState, github: GitHubState, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "contribute", MODEL_ID, str(world["package"] / "__init__.py"),
            "--weights-name", "weights", "--weights-extension", ".npy", "--generate-method", "generate",
            "--dependency", "numpy", "--image-size", "8", "8", "3", "--title", "flags only",
            "--output", str(world["out"]), "--yes",
        ]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    data = json.loads((world["out"] / f"{MODEL_ID}.json").read_text(encoding="utf-8"))
    validate_catalogue(data, source="flags", strict=True)
    entry = data[MODEL_ID]
    assert entry["execution"]["image_size"] == [8, 8, 3] and entry["execution"]["dependencies"] == ["numpy"]
    assert (entry["selection"]["height"], entry["selection"]["width"], entry["selection"]["depth"]) == (
        8,
        8,
        3,
    )
    assert entry["description"]["title"] == "flags only"
    assert len(zenodo_https.published()) == 1 and len(github.issues) == 1


def test_generators_contribute_runs_the_whole_flow(
    world: dict[str, Any], zenodo_https: ZenodoState, github: GitHubState
) -> None:
    with Generators(home=world["home"], offline=False) as generators:
        url = generators.contribute(
            MODEL_ID,
            str(world["package"] / "__init__.py"),
            None,
            None,
            metadata_file_path=str(world["metadata"]),
            output_path=str(world["out"]),
            creator_name="Ada",
            assume_yes=True,
        )
        contributor = generators.get_model_contributor_by_id(MODEL_ID)
    assert url == github.issues[0]["html_url"]
    (dep,) = zenodo_https.published()
    assert contributor is not None and contributor.deposition is not None
    assert contributor.deposition.deposition_id == dep.id
    entry = json.loads((world["out"] / f"{MODEL_ID}.json").read_text(encoding="utf-8"))[MODEL_ID]
    assert entry["execution"]["package_link"] == contributor.deposition.download_url
