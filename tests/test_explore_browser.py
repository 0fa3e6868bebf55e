"""The explorer in a real headless browser: Debian's chromium driven by selenium through chromedriver.

Loads the index with the token URL, searches, opens a model page, waits for the live grid, moves a latent
slider, and screenshots the page; the grid must have rendered (its pixels are not blank) and changed with
the slider. Then the crashing fixture model's page must show its error as text. Skips with the reason
when no browser is installed (a failure in CI, where .ci/run installs chromium and chromedriver).
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from _explore_server import ExploreServer, explore_world
from PIL import Image

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("MEDIGAN_ISO_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("MEDIGAN_ISO_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
WAIT_S = 600  # a first grid builds the model's env; an upper bound, never a measurement
SCREENSHOT_ENV = "MEDIGAN_ISO_EXPLORER_SCREENSHOT"  # also save the model page screenshot here (README)


def _missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).is_file():
            return f"{path} is not installed (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (it is in the dev extra)"
    return None


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    reason = _missing()
    if reason is not None:
        pytest.skip(reason)  # tests/conftest.py turns this into a failure in CI, where .ci/run installs it
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="medigan-iso-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",  # chromium refuses to run as root with its sandbox (CI runs as root)
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    # An explicit driver path: selenium then never asks Selenium Manager to download one.
    browser = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield browser
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExploreServer]:
    root = tmp_path_factory.mktemp("explore-browser")
    srv = ExploreServer.start(home=root / "home", config=explore_world(root / "catalogue"), log_dir=root)
    try:
        yield srv
    finally:
        srv.stop()


def _grid_pixels(driver: object) -> np.ndarray:
    from selenium.webdriver.common.by import By

    grid = driver.find_element(By.ID, "grid")  # type: ignore[attr-defined]
    return np.asarray(Image.open(io.BytesIO(grid.screenshot_as_png)).convert("L"))


def test_index_search_model_page_slider_and_screenshot(
    driver: object, server: ExploreServer, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    d = driver
    wait = WebDriverWait(d, WAIT_S)
    d.get(server.url)  # type: ignore[attr-defined]
    wait.until(lambda _: d.find_elements(By.CSS_SELECTOR, "#models tbody tr"))  # type: ignore[attr-defined]
    assert "token=" not in d.current_url  # type: ignore[attr-defined]  # the redirect dropped it
    rows = d.find_elements(By.CSS_SELECTOR, "#models tbody tr")  # type: ignore[attr-defined]
    assert len(rows) >= 4

    from selenium.webdriver.support.ui import Select

    Select(d.find_element(By.CSS_SELECTOR, "select.facet[data-facet='type']")).select_by_value("fixture")  # type: ignore[attr-defined]
    wait.until(lambda _: d.find_element(By.ID, "count").text == "3 models")  # type: ignore[attr-defined]
    Select(d.find_element(By.CSS_SELECTOR, "select.facet[data-facet='type']")).select_by_value("")  # type: ignore[attr-defined]

    Select(d.find_element(By.ID, "order")).select_by_value("desc")  # type: ignore[attr-defined]
    Select(d.find_element(By.ID, "rank_by")).select_by_value("FID")  # type: ignore[attr-defined]
    wait.until(lambda _: d.find_element(By.ID, "count").text == "2 models")  # type: ignore[attr-defined]
    ranked = [r for r in d.find_elements(By.CSS_SELECTOR, "#models tbody tr") if r.is_displayed()]  # type: ignore[attr-defined]
    assert [r.get_attribute("data-id") for r in ranked] == ["test-crash", "test-slow"]
    assert ranked[0].find_element(By.CSS_SELECTOR, "td.rank").text == "30.5"
    Select(d.find_element(By.ID, "rank_by")).select_by_value("")  # type: ignore[attr-defined]
    wait.until(lambda _: d.find_element(By.ID, "count").text == str(len(rows)) + " models")  # type: ignore[attr-defined]

    search = d.find_element(By.ID, "q")  # type: ignore[attr-defined]
    search.send_keys("numpy")
    d.find_element(By.CSS_SELECTOR, "#search button").click()  # type: ignore[attr-defined]
    wait.until(lambda _: d.find_element(By.ID, "count").text == "1 models")  # type: ignore[attr-defined]
    shown = [r for r in d.find_elements(By.CSS_SELECTOR, "#models tbody tr") if r.is_displayed()]  # type: ignore[attr-defined]
    assert [r.get_attribute("data-id") for r in shown] == ["demo-numpy"]

    shown[0].find_element(By.CSS_SELECTOR, "a.model-link").click()
    wait.until(ec.url_contains("/models/demo-numpy"))
    wait.until(lambda _: d.find_element(By.ID, "grid").get_attribute("data-state") == "loaded")  # type: ignore[attr-defined]
    before = _grid_pixels(d)
    assert before.std() > 10, "the grid image is blank"

    slider = d.find_element(By.CSS_SELECTOR, "input.latent[data-index='0']")  # type: ignore[attr-defined]
    old_src = d.find_element(By.ID, "grid").get_attribute("src")  # type: ignore[attr-defined]
    # A range input moves with the keyboard like a user's arrow keys, and fires input and change.
    from selenium.webdriver.common.keys import Keys

    slider.click()
    slider.send_keys(Keys.END)
    wait.until(lambda _: d.find_element(By.ID, "grid").get_attribute("src") != old_src)  # type: ignore[attr-defined]
    wait.until(lambda _: d.find_element(By.ID, "grid").get_attribute("data-state") == "loaded")  # type: ignore[attr-defined]
    assert slider.get_attribute("data-touched") == "1"
    after = _grid_pixels(d)
    assert after.std() > 10, "the grid image is blank after moving a slider"
    assert after.shape != before.shape or not np.array_equal(after, before)

    shot = tmp_path / "explorer.png"
    assert d.save_screenshot(str(shot))  # type: ignore[attr-defined]
    page = np.asarray(Image.open(shot).convert("L"))
    assert page.std() > 10
    target = os.environ.get(SCREENSHOT_ENV)
    if target:
        shutil.copyfile(shot, target)
    assert not d.find_element(By.ID, "error").is_displayed()  # type: ignore[attr-defined]


def test_a_crashing_model_page_shows_the_error(driver: object, server: ExploreServer) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    d = driver
    d.get(server.url)  # type: ignore[attr-defined]  # sets the cookie for this server
    d.get(server.base + "/models/test-crash")  # type: ignore[attr-defined]
    error = d.find_element(By.ID, "error")  # type: ignore[attr-defined]
    WebDriverWait(d, WAIT_S).until(lambda _: error.is_displayed())
    assert "exited with code 7" in error.text
    assert "<img src=x onerror=alert(1)>" in error.text  # shown as text, not made into an element
    assert not d.find_elements(By.CSS_SELECTOR, "#error img")  # type: ignore[attr-defined]
    title = d.find_element(By.CSS_SELECTOR, "p.subtitle").text  # type: ignore[attr-defined]
    assert "<script>alert('title')</script>" in title and "\\x1b[31mred" in title


def test_compare_shows_two_grids_side_by_side(driver: object, server: ExploreServer) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    d = driver
    d.get(server.url)  # type: ignore[attr-defined]
    d.get(server.base + "/compare?ids=demo-numpy,test-cond")  # type: ignore[attr-defined]
    images = d.find_elements(By.CSS_SELECTOR, "img.compare-grid")  # type: ignore[attr-defined]
    assert len(images) == 2

    def loaded(_: object) -> bool:
        return all(
            d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", i) for i in images
        )  # type: ignore[attr-defined]

    WebDriverWait(d, WAIT_S).until(loaded)
    for image in images:
        pixels = np.asarray(Image.open(io.BytesIO(image.screenshot_as_png)).convert("L"))
        assert pixels.std() > 10, "a compare grid is blank"
