"""`tumorclf serve` in a real browser: Debian's headless chromium, driven by Selenium through its own
chromedriver, uploads a slice on the page and reads the probability shown, which must be `tumorclf
predict`'s on the same file; a text file shows an error. Skipped without chromium and chromedriver, unless
TUMORCLF_REQUIRE_BROWSER=1 (CI), where their absence fails."""

from __future__ import annotations

import os
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from werkzeug.serving import make_server

from tumorclf.cli.main import main
from tumorclf.serving.web import create_app
from conftest import blob_image, read_csv

BROWSER, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
WAIT_S = 60  # every wait is bounded: the answers, page loads, scripts, each command to chromedriver


def missing(reason: str) -> None:
    """Skip, or fail where the browser test is required (CI installs chromium and its driver)."""
    if os.environ.get("TUMORCLF_REQUIRE_BROWSER") == "1":
        pytest.fail(f"TUMORCLF_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    if not BROWSER or not DRIVER:
        missing("chromium and chromedriver are not both on PATH (Debian: apt install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing('selenium is not installed (pip install -e ".[dev]")')
    options = Options()
    options.binary_location = BROWSER
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1000"):
        options.add_argument(argument)
    options.timeouts = {"pageLoad": WAIT_S * 1000, "script": WAIT_S * 1000}
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    try:
        driver.command_executor.client_config.timeout = 2 * WAIT_S  # HTTP to chromedriver: none by default
        yield driver
    finally:
        driver.quit()


@contextmanager
def serving(app):
    """The URL of `app` served by a real threaded Werkzeug server on a free port of 127.0.0.1."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}/"
    finally:
        server.shutdown()  # serve_forever notices within its 0.5 s poll
        server.server_close()
        thread.join(timeout=WAIT_S)


@pytest.fixture(scope="module")
def app(trained_run: Path):
    return create_app(trained_run / "best.keras")


@pytest.fixture(scope="module")
def page(app):
    with serving(app) as url:
        yield url


def state(browser) -> str | None:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.TAG_NAME, "body").get_attribute("data-state")


def upload(browser, page: str, path: Path) -> str:
    """Open the page, choose `path` in its file input, wait for the answer; the page's state (done, error)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(page)
    WebDriverWait(browser, WAIT_S).until(lambda b: b.find_element(By.ID, "card").find_elements(By.TAG_NAME, "table"))
    browser.find_element(By.ID, "file").send_keys(str(path))
    return WebDriverWait(browser, WAIT_S).until(lambda b: state(b) in ("done", "error") and state(b))


def test_the_page_shows_the_probability_tumorclf_predict_gives(browser, page: str, trained_run: Path,
                                                                 tmp_path: Path):
    from selenium.webdriver.common.by import By

    path = tmp_path / "slice.png"
    Image.fromarray(blob_image(np.random.default_rng(11), 64, True)).save(path)
    assert upload(browser, page, path) == "done"
    shown = browser.find_element(By.ID, "prob")
    out = tmp_path / "preds"
    assert main(["predict", "--model-file", str(trained_run / "best.keras"), "--inputs", str(path),
                 "--out", str(out)]) == 0
    (row,) = read_csv(out / "predictions.csv")
    assert float(shown.get_attribute("data-prob")) == float(row["prob_tumor"])
    assert shown.text == f"{float(row['prob_tumor']):.3f}"
    decision = browser.find_element(By.ID, "decision").text
    assert decision == (row["predicted"] or f"Cannot assess: {row['quality']}")
    assert browser.find_element(By.ID, "quality").text == row["quality"]
    assert "Research use only" in browser.find_element(By.ID, "notice").text
    assert browser.find_element(By.ID, "seen").get_attribute("src").startswith("data:image/png;base64,")


def test_a_text_file_shows_an_error_on_the_page(browser, page: str, tmp_path: Path):
    from selenium.webdriver.common.by import By

    path = tmp_path / "notes.txt"
    path.write_text("not a slice\n")
    assert upload(browser, page, path) == "error"
    error = browser.find_element(By.ID, "error")
    assert error.is_displayed() and error.text == "notes.txt: not an image (unrecognised content)"
    assert not browser.find_element(By.ID, "result").is_displayed()


def test_a_failing_model_description_shows_its_error_on_the_page(browser, app):
    """/api/model answers an error (here a 503 in front of the app): the page says so instead of failing."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def unavailable(environ, start_response):
        if environ["PATH_INFO"] != "/api/model":
            return app(environ, start_response)
        start_response("503 SERVICE UNAVAILABLE", [("Content-Type", "application/json")])
        return [b'{"error": "the model is being replaced"}']

    with serving(unavailable) as url:
        browser.get(url)
        assert WebDriverWait(browser, WAIT_S).until(lambda b: state(b) == "error" and state(b)) == "error"
        error = browser.find_element(By.ID, "error")
        assert error.is_displayed() and error.text == "cannot read the model's description: the model is being replaced"
        assert browser.find_element(By.ID, "card").text == "Unknown: the server did not describe the model."
