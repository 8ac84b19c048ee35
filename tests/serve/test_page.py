"""The page at ``/`` driven in a real headless Chromium (Debian's chromium and chromium-driver, through
Selenium): choose an image, press Segment, wait for the overlay; no console errors; a screenshot.

The screenshot goes to ``$PSPNET_SCREENSHOT_DIR`` (default: the test's temporary folder; its path is
printed). ``$PSPNET_PAGE_IMAGE`` segments that image instead of the test's own (docs/images/serve_page.png
was made so, with a CamVid val frame)."""

from __future__ import annotations

import base64
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pspnet

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser(tmp_path, monkeypatch):
    if not CHROMIUM or not CHROMEDRIVER:
        pytest.skip("the page test needs Chromium and its driver: apt-get install -y chromium chromium-driver "
                    f"(found chromium={CHROMIUM}, chromedriver={CHROMEDRIVER})")
    webdriver = pytest.importorskip("selenium.webdriver", reason="the page test needs selenium (the dev extra)")
    from selenium.webdriver.chrome.service import Service
    monkeypatch.setenv("SE_AVOID_STATS", "true")  # Selenium Manager: no statistics, and never a download
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1280,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def test_the_page_segments_an_upload(server, browser, png, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    given = os.environ.get("PSPNET_PAGE_IMAGE")
    frame = Path(given) if given else tmp_path / "street.png"
    if not given:
        frame.write_bytes(png(180, 240, 3))
    browser.get(f"http://127.0.0.1:{server.port}/")
    WebDriverWait(browser, 30).until(lambda d: "classes" in d.find_element(By.ID, "model").text)
    browser.find_element(By.ID, "image").send_keys(str(frame.resolve()))
    browser.find_element(By.ID, "segment").click()
    WebDriverWait(browser, 120).until(lambda d: d.execute_script(
        "const i = document.getElementById('result'); return i.complete && i.naturalWidth > 0;"))
    src = browser.find_element(By.ID, "result").get_attribute("src")
    assert src.startswith("data:image/png;base64,")
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))))
    expected = pspnet.load(precision="fp32").predict(frame)
    np.testing.assert_array_equal(shown, np.asarray(expected.overlay()))  # the overlay of this very image
    legend = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#legend li")]
    present = [expected.class_names[i] for i in np.unique(expected.labels)]
    assert len(legend) == len(present) and all(any(name in row for row in legend) for name in present), legend
    assert all(row.rstrip().endswith("%") for row in legend)
    link = browser.find_element(By.ID, "download")
    assert link.is_displayed() and link.get_attribute("href").startswith("data:image/png;base64,")
    label = np.asarray(Image.open(io.BytesIO(base64.b64decode(link.get_attribute("href").split(",", 1)[1]))))
    np.testing.assert_array_equal(label, expected.labels)
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors
    out = Path(os.environ.get("PSPNET_SCREENSHOT_DIR") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    shot = out / "serve_page.png"
    assert browser.save_screenshot(str(shot)) and Image.open(shot).size[0] > 0
    print(f"screenshot: {shot}")
