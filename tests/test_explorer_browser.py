"""The widget explorer as a page: Voila serves ``notebooks/explore_toy.ipynb``, headless Chromium (Debian's
``chromium`` + ``chromium-driver``, driven by Selenium) moves a scene slider and a calibration slider, and the
page's heatmap picture and S values must change to what the library computes for the same knobs, and the
page shows only the app (no loading bars, none of the notebook's checks).

Without Chromium the test is skipped with a one-line hint; CI sets ELBO_REQUIRE_BROWSER=1 so it fails instead.
A failure leaves a screenshot in .cache/browser-test/; a pass leaves the page's screenshot there (the README's)."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from elbo_lib.paths import REPO_ROOT

pytestmark = pytest.mark.slow
SHOTS = REPO_ROOT / ".cache" / "browser-test"
HINT = "browser test skipped: install Debian's Chromium to run it (apt-get install chromium chromium-driver)"


def _browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        if os.environ.get("ELBO_REQUIRE_BROWSER"):
            pytest.fail("ELBO_REQUIRE_BROWSER is set but chromium / chromedriver are not installed")
        pytest.skip(HINT)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    # headless, and no background connections: this machine's closed network refuses them, many at a time
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--window-size=1500,1100", f"--user-data-dir={SHOTS / 'profile'}"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(driver), options=opts)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def page():
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver = _browser()
    port = _free_port()
    log = open(SHOTS / "voila.log", "w")
    voila = subprocess.Popen([sys.executable, "-m", "voila", "notebooks/explore_toy.ipynb", "--no-browser",
                              f"--port={port}", "--Voila.ip=127.0.0.1"], cwd=REPO_ROOT, stdout=log,
                             stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 60
        while True:  # the server first, then the page (Voila runs the notebook before it answers)
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if time.time() > deadline or voila.poll() is not None:
                    raise RuntimeError(f"Voila did not start; see {SHOTS / 'voila.log'}")
                time.sleep(0.5)
        driver.get(url)
        yield driver
    finally:
        driver.quit()
        voila.terminate()
        voila.wait(timeout=30)
        log.close()


def _scores(driver) -> dict[str, float]:
    """The S column of the page's table, read in one script call (the table is replaced on every update)."""
    rows = driver.execute_script(
        "return Array.from(document.querySelectorAll('table.elbo-scores tr[data-class]'))"
        ".map(r => [r.dataset.class, r.querySelector('td.score').textContent]);")
    return {c: float(v) for c, v in rows}


def _wait(driver, what, timeout=240):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout, poll_frequency=0.25).until(lambda d: what(d))


def _set_slider(driver, label: str, value: str) -> None:
    """Type a value into an ipywidgets slider's editable readout and press Enter (as a user can)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    box = driver.find_element(By.XPATH, f"//div[contains(@class, 'widget-slider')][.//label[normalize-space()='{label}']]")
    readout = box.find_element(By.CSS_SELECTOR, ".widget-readout")
    readout.click()
    readout.send_keys(Keys.CONTROL, "a")
    readout.send_keys(value, Keys.ENTER)


def _choose(driver, label: str, value: float) -> None:
    """Move a selection slider (its readout is not editable) with the arrow keys, as a keyboard user does,
    until its readout shows ``value``."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    box = driver.find_element(By.XPATH, f"//div[contains(@class, 'widget-slider')][.//label[normalize-space()='{label}']]")
    handle, readout = box.find_element(By.CSS_SELECTOR, ".noUi-handle"), box.find_element(By.CSS_SELECTOR, ".widget-readout")
    for _ in range(100):
        shown = float(readout.text)
        if shown == value:
            return
        handle.send_keys(Keys.ARROW_RIGHT if shown < value else Keys.ARROW_LEFT)
    raise AssertionError(f"the {label} slider did not reach {value}; it shows {readout.text}")


def _heatmap_png(driver) -> bytes:
    from selenium.webdriver.common.by import By
    return driver.find_element(By.CSS_SELECTOR, "img.elbo-heatmaps").screenshot_as_png


def _library_scores(knobs: dict, **view) -> dict[str, float]:
    from elbo_lib import load_pipeline
    from elbo_lib.toy.explore import SceneKnobs, ToyExplorer
    _, res = ToyExplorer(load_pipeline("data/toy-sd", device="cpu")).view(SceneKnobs(**knobs), **view)
    return {c: round(float(s), 3) for c, s in zip(res.classes, res.scores)}


def _measurements(driver) -> int:
    """The page's count of model measurements so far (its status line)."""
    text = driver.execute_script("const e = document.querySelector('.elbo-status'); return e ? e.textContent : '';")
    return int(text.split(" model measurement")[0].split()[-1]) if " model measurement" in text else -1


# library loading bars and the notebook's own check: on the page only the app shows
NOT_ON_THE_PAGE = ("Loading pipeline components", "Loading weights", "np.float64(", "leaves the maps raw",
                   "explore_toy:", "recorded run")


def test_sliders_update_the_page_as_the_library_computes(page):
    driver = page
    try:
        first = _wait(page, lambda d: _scores(d) or False)
        shot0, calls = _heatmap_png(driver), _measurements(driver)
        assert first == _library_scores({}) and calls >= 1

        expected = _library_scores({}, gamma=0.6)
        assert expected != first
        _choose(driver, "gamma", 0.6)  # calibration only: no model call
        _wait(driver, lambda d: _scores(d) == expected, timeout=60)
        assert _measurements(driver) == calls
        shot1 = _heatmap_png(driver)
        assert shot1 != shot0

        expected = _library_scores({"target_radius": 8.0}, gamma=0.6)
        _set_slider(driver, "target_radius", "8")  # a new scene: one more model measurement, with progress
        _wait(driver, lambda d: _measurements(d) == calls + 1 and _scores(d) == expected)
        assert _heatmap_png(driver) != shot1
        text = driver.execute_script("return document.body.innerText;")
        shown = [t for t in NOT_ON_THE_PAGE if t in text]
        assert not shown, f"the page shows more than the app: {shown}"
        driver.save_screenshot(str(SHOTS / "explorer.png"))
    except BaseException:
        driver.save_screenshot(str(SHOTS / "failure.png"))
        raise
