"""``medigan-iso explore`` against a real uvicorn server on 127.0.0.1 (a subprocess, as a user runs it).

One server per module serves the bundled demo models and the fixtures of ``_explore_server`` (an
adversarial crashing model, a model that hangs, a conditional one); runners are real, in their real envs,
under the default sandbox policy. Covered: the token (query once then cookie, Bearer), the Host check
(DNS rebinding), CSRF on POST, body and parameter caps, search with medigan's semantics, grid PNGs,
latent-slider samples, the zip with its manifest, a crashing model whose error shows escaped while the
server keeps serving, and a hanging model that blocks nobody else.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from _explore_server import HOSTILE_TITLE, TOKEN, ExploreServer, explore_world
from PIL import Image

import medigan_iso
from medigan_iso.envs.asof import as_of_for
from medigan_iso.explore.security import CSRF_HEADER
from medigan_iso.search import rank_models

AUTH = {"Authorization": f"Bearer {TOKEN}"}
HTTP_TIMEOUT_S = 600  # generous: a first request builds an env; never a measurement


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("explore")
    return {"root": root, "catalogue": explore_world(root / "catalogue"), "home": root / "home"}


@pytest.fixture(scope="module")
def server(world: dict[str, Path]) -> Iterator[ExploreServer]:
    srv = ExploreServer.start(home=world["home"], config=world["catalogue"], log_dir=world["root"])
    try:
        yield srv
    finally:
        code = srv.stop()
    # Ctrl-C ends it by itself even with a model hung in generate (graceful shutdown cuts the request,
    # the Session closes the runners): 130 as after any Ctrl-C, not the SIGKILL fallback's -9.
    assert code == 130, srv.stderr()
    assert "medigan-iso: interrupted" in srv.stderr()


def get(server: ExploreServer, path: str, **kwargs: object) -> requests.Response:
    kwargs.setdefault("timeout", HTTP_TIMEOUT_S)
    return requests.get(server.base + path, **kwargs)  # type: ignore[arg-type]


def png(response: requests.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.content)))


# --- access ----------------------------------------------------------------------------------------


def test_every_route_needs_the_token(server: ExploreServer) -> None:
    for path in (
        "/",
        "/models/demo-numpy",
        "/api/models",
        "/api/models/demo-numpy/grid.png",
        "/static/explore.js",
    ):
        response = get(server, path, allow_redirects=False)
        assert response.status_code == 401, path
    api = get(server, "/api/models").json()
    assert api["error"] == "authentication required"
    assert "token" in api["remedy"]
    page = get(server, "/", headers={"Accept": "text/html"})
    assert page.status_code == 401 and "text/html" in page.headers["content-type"]
    wrong = get(server, "/api/models", headers={"Authorization": "Bearer " + "x" * len(TOKEN)})
    assert wrong.status_code == 401
    assert get(server, "/api/models", headers={"Authorization": f"token {TOKEN}"}).status_code == 200


def test_query_token_sets_a_cookie_and_leaves_the_url(server: ExploreServer) -> None:
    assert get(server, "/?token=" + "y" * 40, allow_redirects=False).status_code == 403
    first = get(server, f"/models/demo-numpy?token={TOKEN}&x=1", allow_redirects=False)
    assert first.status_code == 303
    assert first.headers["location"] == "/models/demo-numpy?x=1"
    cookie = first.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert TOKEN not in cookie  # the cookie holds a value derived from the token, not the token
    for path, location in [
        ("//evil.example/x", "/evil.example/x"),  # never a redirect to another host
        ("/models/a%0D%0ASet-Cookie:%20x=1", "/models/a%0D%0ASet-Cookie:%20x=1"),  # stays encoded
    ]:
        redirect = get(server, f"{path}?token={TOKEN}", allow_redirects=False)
        assert redirect.status_code == 303
        assert redirect.headers["location"] == location
    browser = requests.Session()
    assert browser.get(server.url, timeout=HTTP_TIMEOUT_S).status_code == 200  # follows the redirect
    assert browser.get(server.base + "/api/models", timeout=HTTP_TIMEOUT_S).status_code == 200


def test_foreign_host_headers_are_refused(server: ExploreServer) -> None:
    for host in ("evil.example", f"evil.example:{server.port}", f"127.0.0.1:{server.port + 1}", "127.0.0.1"):
        response = get(server, "/api/models", headers={**AUTH, "Host": host})
        assert response.status_code == 403, host
        assert response.json()["error"] == "Host header not allowed"
    for host in (f"127.0.0.1:{server.port}", f"localhost:{server.port}"):
        assert get(server, "/api/models", headers={**AUTH, "Host": host}).status_code == 200, host


def test_security_headers_on_every_response(server: ExploreServer) -> None:
    response = get(server, "/", headers=AUTH)
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"


def _cookie_session(server: ExploreServer) -> tuple[requests.Session, str]:
    browser = requests.Session()
    page = browser.get(server.url, timeout=HTTP_TIMEOUT_S)
    match = re.search(r'<meta name="medigan-iso-csrf" content="([0-9a-f]+)"', page.text)
    assert match, page.text[:500]
    return browser, match.group(1)


def test_post_needs_the_csrf_header_when_authenticated_by_cookie(server: ExploreServer) -> None:
    browser, csrf = _cookie_session(server)
    url = server.base + "/api/models/demo-numpy/sample"
    body = {"seed": 5, "n": 1}
    refused = browser.post(url, json=body, timeout=HTTP_TIMEOUT_S)
    assert refused.status_code == 403
    assert refused.json()["error"] == "missing or wrong CSRF header"
    wrong = browser.post(url, json=body, headers={CSRF_HEADER: "0" * 64}, timeout=HTTP_TIMEOUT_S)
    assert wrong.status_code == 403
    assert csrf != TOKEN
    png(browser.post(url, json=body, headers={CSRF_HEADER: csrf}, timeout=HTTP_TIMEOUT_S))
    png(requests.post(url, json=body, headers=AUTH, timeout=HTTP_TIMEOUT_S))  # the token itself is enough


def test_request_bodies_and_counts_are_capped(server: ExploreServer) -> None:
    url = server.base + "/api/models/demo-numpy/sample"
    big = b'{"seed": 1, "pad": "' + b"x" * 300_000 + b'"}'
    response = requests.post(url, data=big, headers={**AUTH, "content-type": "application/json"}, timeout=60)
    assert response.status_code == 413
    chunks = (b"x" * 65536 for _ in range(8))  # no Content-Length: chunked, counted as it arrives
    response = requests.post(
        url, data=chunks, headers={**AUTH, "content-type": "application/json"}, timeout=60
    )
    assert response.status_code == 413
    deep = requests.post(
        url, data=b"[" * 200_000, headers={**AUTH, "content-type": "application/json"}, timeout=60
    )
    assert deep.status_code == 400 and deep.json()["error"].startswith("body: not JSON")
    cases = [
        ({"n": 1000}, "n"),
        ({"n": 0}, "n"),
        ({"seed": -1}, "seed"),
        ({"seed": "7"}, "seed"),
        ({"latent_edits": {"100": 1.0}}, "latent_edits"),
        ({"latent_edits": {"0": 1e9}}, "latent_edits"),
        ({"latent": [0.0] * 3}, "latent"),
        ({"conditions": {"output_path": "/etc"}}, "conditions.output_path"),
        ({"surprise": 1}, "body"),
    ]
    for body, parameter in cases:
        response = requests.post(url, json=body, headers=AUTH, timeout=60)
        assert response.status_code == 400, body
        error = response.json()
        assert error["type"] == "ExploreRequestError"
        assert error["error"].startswith(parameter + ":"), error
        assert error["remedy"]
    grid = get(server, "/api/models/demo-numpy/grid.png?n=65", headers=AUTH)
    assert grid.status_code == 400 and grid.json()["error"].startswith("n:")
    assert get(server, "/api/models/demo-numpy/grid.png?seed=abc", headers=AUTH).status_code == 400


# --- catalogue ---------------------------------------------------------------------------------------


def test_search_is_medigans_search(server: ExploreServer, world: dict[str, Path]) -> None:
    catalogue = medigan_iso.load_catalogue(world["catalogue"])
    for query, terms, operator in [
        ("numpy", ["numpy"], "AND"),
        ("phantom dcgan", ["phantom", "dcgan"], "AND"),
        ("numpy, explorer", ["numpy", "explorer"], "OR"),
        ("synthetic phantom,", ["synthetic phantom"], "AND"),
        ("nothing-matches-this", ["nothing-matches-this"], "AND"),
    ]:
        response = get(server, "/api/models", params={"q": query, "operator": operator}, headers=AUTH)
        assert response.status_code == 200
        got = [row["model_id"] for row in response.json()["models"]]
        expected = [r.model_id for r in medigan_iso.search(terms, operator=operator, catalogue=catalogue)]
        assert got == expected, query
    assert [r["model_id"] for r in get(server, "/api/models?q=numpy", headers=AUTH).json()["models"]] == [
        "demo-numpy"
    ]
    everything = get(server, "/api/models", headers=AUTH).json()["models"]
    assert {"demo-numpy", "test-crash", "test-cond"} <= {row["model_id"] for row in everything}
    bad = get(server, "/api/models?q=x&operator=NAND", headers=AUTH)
    assert bad.status_code == 400 and bad.json()["error"].startswith("operator:")


def test_ranking_is_medigans_ranking(server: ExploreServer, world: dict[str, Path]) -> None:
    catalogue = medigan_iso.load_catalogue(world["catalogue"])
    for order in ("asc", "desc"):
        response = get(server, "/api/models", params={"rank_by": "FID", "order": order}, headers=AUTH)
        assert response.status_code == 200
        rows = response.json()["models"]
        expected = rank_models(catalogue, metric="FID", order=order)
        assert [(r["model_id"], r["rank_value"]) for r in rows] == [
            (item["model_id"], item["FID"]) for item in expected
        ]
    # "30.5" is cast, "not measured" is skipped, the demos' null FID too
    assert [r["model_id"] for r in rows] == ["test-crash", "test-slow"]
    with_terms = get(
        server, "/api/models", params={"q": "explorer", "rank_by": "turing_test.AUC"}, headers=AUTH
    ).json()["models"]
    expected_terms = medigan_iso.search(["explorer"], rank_by="turing_test.AUC", catalogue=catalogue)
    assert [r["model_id"] for r in with_terms] == [r.model_id for r in expected_terms]
    assert len(with_terms) == 3
    page = get(server, "/?rank_by=FID&order=desc", headers=AUTH).text
    assert page.index('data-id="test-crash"') < page.index('data-id="test-slow"')
    assert '<option value="turing_test.AUC">' in page
    bad = get(server, "/api/models?rank_by=FID&order=sideways", headers=AUTH)
    assert bad.status_code == 400 and bad.json()["error"].startswith("order:")


def test_model_entry_and_unknown_ids(server: ExploreServer, world: dict[str, Path]) -> None:
    card = get(server, "/api/models/demo-numpy", headers=AUTH).json()
    assert card["latent_size"] == 100
    assert card["license"] == "MIT"
    assert card["dependencies"] == ["numpy>=1.21"]
    assert re.fullmatch(r"[0-9a-f]{64}", card["package_sha256"])
    assert card["status"]["state"] in ("not started", "prepared", "warm")
    cond = get(server, "/api/models/test-cond", headers=AUTH).json()
    assert cond["dependencies_as_of"] == "2024-05-31 (from execution.dependencies_as_of)"
    demo = medigan_iso.load_catalogue(world["catalogue"]).resolve("demo-numpy")
    assert card["dependencies_as_of"] == as_of_for(demo).describe()  # the rule its env build uses
    assert "2024-05-31" in get(server, "/models/test-cond", headers=AUTH).text
    assert cond["conditions"] == {
        "condition": 1,
        "flip": False,
    }
    missing = get(server, "/api/models/demo-nump", headers=AUTH)
    assert missing.status_code == 404
    assert "demo-numpy" in missing.json()["close_matches"]
    page = get(server, "/models/demo-nump", headers={**AUTH, "Accept": "text/html"})
    assert page.status_code == 404 and "/models/demo-numpy" in page.text


def test_compare_page_takes_two_to_four_models(server: ExploreServer) -> None:
    page = get(server, "/compare?ids=demo-numpy,test-cond", headers={**AUTH, "Accept": "text/html"})
    assert page.status_code == 200
    assert page.text.count('<figure data-model-id="') == 2
    assert '<figure data-model-id="test-cond">' in page.text
    for ids in ("demo-numpy", "demo-numpy,test-cond,test-crash,test-slow,demo-numpy"):
        refused = get(server, f"/compare?ids={ids}", headers={**AUTH, "Accept": "text/html"})
        assert refused.status_code == 400
        assert "pick 2 to 4 models" in refused.text
    unknown = get(server, "/compare?ids=demo-numpy,nope-nope", headers={**AUTH, "Accept": "text/html"})
    assert unknown.status_code == 404


def test_catalogue_text_is_escaped_and_neutralised(server: ExploreServer) -> None:
    for path in ("/", "/models/test-crash"):
        html = get(server, path, headers=AUTH).text
        assert "<script>alert" not in html
        assert "&lt;script&gt;alert(&#39;title&#39;)&lt;/script&gt;" in html
        assert "\x1b" not in html and "\\x1b[31mred" in html
    card = get(server, "/api/models/test-crash", headers=AUTH).json()
    assert card["title"] == HOSTILE_TITLE.replace("\x1b", "\\x1b")


# --- generation ------------------------------------------------------------------------------------


def test_grid_png_comes_from_the_model_and_follows_the_seed(server: ExploreServer) -> None:
    first = get(server, "/api/models/demo-numpy/grid.png?n=9&seed=11", headers=AUTH)
    image = png(first)
    assert first.headers["x-medigan-iso-seed"] == "11"
    assert image.shape == (3 * 64 + 4 * 2, 3 * 64 + 4 * 2)  # 3x3 cells of 64 px, 2 px padding
    assert image.std() > 10  # phantoms, not a blank sheet
    again = get(server, "/api/models/demo-numpy/grid.png?n=9&seed=11", headers=AUTH)
    other = get(server, "/api/models/demo-numpy/grid.png?n=9&seed=12", headers=AUTH)
    assert again.content == first.content
    assert other.content != first.content
    drawn = get(server, "/api/models/demo-numpy/grid.png?n=1", headers=AUTH)
    assert int(drawn.headers["x-medigan-iso-seed"]) >= 0  # a seed was drawn and is reported
    status = get(server, "/api/models/demo-numpy", headers=AUTH).json()["status"]
    assert status["state"] == "warm"
    assert "hygiene" in status["runner"]["sandbox_layers"]


def test_latent_edits_change_the_samples_and_reproduce(server: ExploreServer) -> None:
    url = server.base + "/api/models/demo-numpy/sample"

    def sample(body: dict[str, object]) -> np.ndarray:
        return png(requests.post(url, json=body, headers=AUTH, timeout=HTTP_TIMEOUT_S))

    plain = sample({"seed": 3, "n": 4})
    moved = sample({"seed": 3, "n": 4, "latent_edits": {"0": 3.0, "1": -3.0}})
    assert plain.shape == moved.shape == (2 * 64 + 3 * 2, 2 * 64 + 3 * 2)
    assert not np.array_equal(plain, moved)
    assert np.array_equal(moved, sample({"seed": 3, "n": 4, "latent_edits": {"0": 3.0, "1": -3.0}}))
    grid = png(get(server, "/api/models/demo-numpy/grid.png?n=4&seed=3", headers=AUTH))
    assert np.array_equal(grid, plain)  # the page's grid and its sliders start from the same latents


def test_conditions_reach_the_model(server: ExploreServer) -> None:
    url = server.base + "/api/models/test-cond/sample"
    one = png(requests.post(url, json={"seed": 1, "n": 1, "conditions": {"condition": 1}}, headers=AUTH))
    two = png(requests.post(url, json={"seed": 1, "n": 1, "conditions": {"condition": 2}}, headers=AUTH))
    assert one[10, 10] == 60 and two[10, 10] == 120  # 2 px padding, then the 16 px grey cell
    refused = requests.post(url, json={"n": 1, "conditions": {"size": 3}}, headers=AUTH, timeout=60)
    assert refused.status_code == 400
    assert "condition, flip" in refused.json()["remedy"]


def test_zip_holds_the_samples_and_their_manifest(server: ExploreServer, tmp_path: Path) -> None:
    params = {"n": "5", "seed": "21", "edits": json.dumps({"2": 1.5})}
    response = get(server, "/api/models/demo-numpy/samples.zip", params=params, headers=AUTH)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/zip"
    assert 'filename="demo-numpy-seed21.zip"' in response.headers["content-disposition"]
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        archive.extractall(tmp_path)
    folder = tmp_path / "samples"
    pngs = sorted(p.name for p in folder.glob("sample_*.png"))
    assert len(pngs) == 5
    lines = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    assert sorted(line["path"] for line in lines) == sorted([*pngs, "grid.png"])
    for line in lines:
        assert line["sha256"] == hashlib.sha256((folder / line["path"]).read_bytes()).hexdigest()
        assert line["model_id"] == "demo-numpy" and line["seed"] == 21
        assert line["kind"] == ("grid" if line["path"] == "grid.png" else "sample")
    [run] = json.loads((folder / "run.json").read_text())["runs"]
    assert run["status"] == "complete" and run["seed"] == 21 and run["num_samples"] == 5
    assert run["explore"]["latent"]["edits"] == {"2": 1.5}
    assert run["explore"]["latent"]["size"] == 100
    assert run["regenerable"] is False  # latent rows are arrays: redo them from explore.latent instead
    report = medigan_iso.verify(folder)  # the library's own check of a folder against its manifest
    assert report.ok and len(report.matched) == 6
    first = np.asarray(Image.open(folder / pngs[0]))
    shown = png(
        requests.post(
            server.base + "/api/models/demo-numpy/sample",
            json={"seed": 21, "n": 5, "latent_edits": {"2": 1.5}},
            headers=AUTH,
            timeout=HTTP_TIMEOUT_S,
        )
    )
    assert np.array_equal(shown[2:66, 2:66], first[..., 0] if first.ndim == 3 else first)
    assert np.array_equal(np.asarray(Image.open(folder / "grid.png")), shown)


def test_a_zip_of_a_seeded_model_regenerates_bit_for_bit(
    server: ExploreServer, world: dict[str, Path], tmp_path: Path
) -> None:
    params = {"n": "3", "seed": "8", "conditions": json.dumps({"condition": 3, "flip": True})}
    response = get(server, "/api/models/test-cond/samples.zip", params=params, headers=AUTH)
    assert response.status_code == 200
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        archive.extractall(tmp_path)
    [run] = json.loads((tmp_path / "samples" / "run.json").read_text())["runs"]
    assert run["kwargs"] == {"condition": 3, "flip": True} and run["regenerable"] is True
    report = medigan_iso.verify(tmp_path / "samples", regenerate=True, home=world["home"])
    assert report.ok, report
    assert report.reproduced == report.regenerated == 3


def test_a_crashing_model_shows_its_error_and_the_server_stays_up(server: ExploreServer) -> None:
    response = get(server, "/api/models/test-crash/grid.png?n=2&seed=1", headers=AUTH)
    assert response.status_code == 502
    error = response.json()
    assert error["type"] == "RunnerCrashedError"
    assert "exited with code 7" in error["error"]
    assert "boom" in error["error"]
    assert "\x1b" not in error["error"] and "\\x1b]52;c;" in error["error"]  # OSC 52 made visible
    # The page renders (its script shows the error in a <pre> with textContent) and others still work.
    page = get(server, "/models/test-crash", headers=AUTH)
    assert page.status_code == 200
    png(get(server, "/api/models/demo-numpy/grid.png?n=1&seed=1", headers=AUTH))
    for _ in range(3):  # respawns with backoff, then gives up; never takes the server with it
        again = get(server, "/api/models/test-crash/grid.png?n=1&seed=1", headers=AUTH)
        assert again.status_code == 502
    assert "not restarting" in again.json()["error"]
    assert get(server, "/api/models/test-crash", headers=AUTH).json()["status"]["state"] == "given up"
    assert server.process.poll() is None
    png(get(server, "/api/models/demo-numpy/grid.png?n=1&seed=2", headers=AUTH))


def test_a_hanging_model_blocks_nobody_else(server: ExploreServer) -> None:
    results: dict[str, object] = {}

    def hang(name: str) -> None:
        try:
            results[name] = get(server, "/api/models/test-slow/grid.png?n=1&seed=1", headers=AUTH).status_code
        except requests.RequestException as exc:  # the server cuts it when it stops
            results[name] = exc

    hanging = [threading.Thread(target=hang, args=(f"slow-{i}",), daemon=True) for i in range(2)]
    for thread in hanging:
        thread.start()
    # Wait until both are admitted: the third request for the same model is then turned away at once.
    for _ in range(1200):
        if get(server, "/api/models/test-slow", headers=AUTH).json()["pending_requests"] == 2:
            break
        threading.Event().wait(0.5)
    third = get(server, "/api/models/test-slow/grid.png?n=1&seed=1", headers=AUTH)
    assert third.status_code == 429
    assert third.json()["type"] == "ModelBusyError"
    # Meanwhile other models and pages are served, while the slow ones are still waiting.
    png(get(server, "/api/models/demo-numpy/grid.png?n=4&seed=9", headers=AUTH))
    assert get(server, "/", headers=AUTH).status_code == 200
    assert not results, results


# --- the command -------------------------------------------------------------------------------------


def test_non_loopback_needs_allow_remote(world: dict[str, Path]) -> None:
    refused = subprocess.run(
        [sys.executable, "-m", "medigan_iso", "explore", "--host", "0.0.0.0", "--port", "0", "--no-browser"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**_env(world), "MEDIGAN_ISO_EXPLORE_TOKEN": TOKEN},
    )
    assert refused.returncode == 1
    assert "refusing to serve on 0.0.0.0" in refused.stderr
    assert "--allow-remote" in refused.stderr
    remote = ExploreServer.start(
        home=world["home"],
        config=world["catalogue"],
        log_dir=world["root"] / "remote",
        args=("--host", "0.0.0.0", "--allow-remote"),
    )
    try:
        assert remote.url.startswith("http://127.0.0.1:")
        assert requests.get(remote.base + "/api/models", headers=AUTH, timeout=60).status_code == 200
    finally:
        remote.stop()
    assert "WARNING: serving on 0.0.0.0" in remote.stderr()


def test_max_warm_stops_the_least_recently_used_runner(world: dict[str, Path]) -> None:
    srv = ExploreServer.start(
        home=world["home"],
        config=world["catalogue"],
        log_dir=world["root"] / "warm",
        args=("--max-warm", "1"),
    )
    try:

        def state(model_id: str) -> str:
            return str(get(srv, f"/api/models/{model_id}", headers=AUTH).json()["status"]["state"])

        png(get(srv, "/api/models/demo-numpy/grid.png?n=1&seed=1", headers=AUTH))
        assert state("demo-numpy") == "warm"
        png(get(srv, "/api/models/test-cond/grid.png?n=1&seed=1", headers=AUTH))
        assert state("test-cond") == "warm"
        assert state("demo-numpy") == "prepared"  # stopped, not crashed: it respawns on the next request
        again = png(get(srv, "/api/models/demo-numpy/grid.png?n=1&seed=1", headers=AUTH))
        assert again.std() > 10
        assert state("demo-numpy") == "warm" and state("test-cond") == "prepared"
    finally:
        srv.stop()


def test_a_short_token_is_refused(world: dict[str, Path]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "medigan_iso", "explore", "--port", "0", "--no-browser"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**_env(world), "MEDIGAN_ISO_EXPLORE_TOKEN": "short"},
    )
    assert result.returncode == 1
    assert "at least 16 printable ASCII characters" in result.stderr


def _env(world: dict[str, Path]) -> dict[str, str]:
    import os

    env = dict(os.environ)
    env.update(
        {
            "MEDIGAN_ISO_HOME": str(world["home"]),
            "MEDIGAN_ISO_CATALOGUE_URL": "",
            "MEDIGAN_ISO_CONFIG": str(world["catalogue"]),
        }
    )
    return env


def test_the_browser_is_sent_through_a_private_file_not_argv(tmp_path: Path) -> None:
    from medigan_iso.explore.server import redirect_file

    url = f"http://127.0.0.1:8765/?token={TOKEN}&a=<b>"
    opener = redirect_file(url)
    try:
        assert opener.stat().st_mode & 0o777 == 0o600  # other users cannot read the token
        text = opener.read_text(encoding="utf-8")
        assert 'content="0;url=http://127.0.0.1:8765/?token=' + TOKEN + '&amp;a=&lt;b&gt;"' in text
    finally:
        opener.unlink()


def test_without_the_extra_the_command_names_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from medigan_iso.cli import main

    monkeypatch.setitem(sys.modules, "starlette", None)  # what an install without [explore] looks like
    assert main(["explore", "--no-browser", "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert "starlette is not installed" in err
    assert "pip install 'medigan-iso[explore]'" in err
