"""A screenshot of `tumorclf serve`'s page after one upload, for docs/serving.md.

    python experiments/serve_screenshot.py --model MODEL --image SLICE --out docs/serve_page.png

Starts the page's server in this process on a free port of 127.0.0.1, uploads SLICE through the page's
file input with Selenium driving Debian's headless chromium (/usr/bin/chromium and its chromedriver),
waits for the answer and saves a PNG of the whole page. Exits 1 when the page shows an error instead.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import threading
from pathlib import Path

from werkzeug.serving import make_server

from tumorclf.serving.web import create_app


def chromium(width: int, height: int):
    """Headless chromium through its own chromedriver: given both paths, Selenium downloads nothing."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not browser or not driver:
        sys.exit("needs chromium and chromedriver on PATH (Debian: apt install chromium chromium-driver)")
    options = Options()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={width},{height}", "--hide-scrollbars"):
        options.add_argument(argument)
    options.timeouts = {"pageLoad": 60_000, "script": 30_000}
    return webdriver.Chrome(options=options, service=Service(driver))


def screenshot(url: str, image: Path, out: Path, width: int) -> str:
    """Upload `image` on the page at `url`, wait for the answer, save the whole page to `out`; returns the
    page's state (done or error)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = chromium(width, 900)
    try:
        browser.get(url)
        WebDriverWait(browser, 60).until(lambda b: b.find_element(By.ID, "card").find_elements(By.TAG_NAME, "table"))
        browser.find_element(By.ID, "file").send_keys(str(image.resolve()))
        state = WebDriverWait(browser, 300).until(
            lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error")
            and b.find_element(By.TAG_NAME, "body").get_attribute("data-state"))
        WebDriverWait(browser, 30).until(
            lambda b: b.execute_script("return Array.from(document.images).every(i => i.hidden || i.complete)"))
        height = browser.execute_script("return document.documentElement.scrollHeight")
        browser.set_window_size(width, height + 40)
        out.parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(out))
        return state
    finally:
        browser.quit()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="what tumorclf serve --model-file accepts")
    p.add_argument("--image", type=Path, required=True, help="the slice to upload")
    p.add_argument("--out", type=Path, required=True, help="the screenshot, .png")
    p.add_argument("--width", type=int, default=1280, help="browser width in px")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = make_server("127.0.0.1", 0, create_app(args.model), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        state = screenshot(f"http://127.0.0.1:{server.port}/", args.image, args.out, args.width)
    finally:
        server.shutdown()
        thread.join()
    print(f"{args.out} ({state})")
    return 0 if state == "done" else 1


if __name__ == "__main__":
    raise SystemExit(main())
