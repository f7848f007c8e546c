"""`tumorclf serve` in a real browser: Debian's headless chromium, driven by Selenium through its own
chromedriver, uploads a slice on the page and reads the probability shown, which must be `tumorclf
predict`'s on the same file; a text file shows an error. Skipped without chromium and chromedriver, unless
TUMORCLF_REQUIRE_BROWSER=1 (CI), where their absence fails."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from werkzeug.serving import make_server

from tumorclf.cli import main
from tumorclf.serve import create_app
from conftest import blob_image, read_csv

BROWSER, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
WAIT_S = 60


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
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def page(trained_run: Path):
    """The page's URL, served by a real threaded Werkzeug server on a free port."""
    server = make_server("127.0.0.1", 0, create_app(trained_run / "best.keras"), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.port}/"
    server.shutdown()
    thread.join()


def upload(browser, page: str, path: Path) -> str:
    """Open the page, choose `path` in its file input, wait for the answer; the page's state (done, error)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(page)
    WebDriverWait(browser, WAIT_S).until(lambda b: b.find_element(By.ID, "card").find_elements(By.TAG_NAME, "table"))
    browser.find_element(By.ID, "file").send_keys(str(path))
    state = lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-state")  # noqa: E731
    return WebDriverWait(browser, WAIT_S).until(lambda b: state(b) in ("done", "error") and state(b))


def test_the_page_shows_the_probability_tumorclf_predict_gives(browser, page: str, trained_run: Path,
                                                                 tmp_path: Path):
    from selenium.webdriver.common.by import By

    path = tmp_path / "slice.png"
    Image.fromarray(blob_image(np.random.default_rng(11), 64, True)).save(path)
    assert upload(browser, page, path) == "done"
    shown = browser.find_element(By.ID, "prob")
    out = tmp_path / "preds.csv"
    assert main(["predict", "--model", str(trained_run / "best.keras"), str(path), "--out", str(out)]) == 0
    (row,) = read_csv(out)
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
