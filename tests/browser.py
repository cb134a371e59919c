"""The operator's browser for the UI tests: Debian's headless Chromium driven by Selenium, and
numbered screenshots of every step in test-artifacts/browser/.

The browser is Debian's chromium with its chromedriver, installed here when missing (as root);
nothing downloads a browser.
"""

from __future__ import annotations

import os
import subprocess
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
UI_TIMEOUT = 180  # the UI's bundle and queries on a busy 2-core machine


def ensure_chromium() -> None:
    """Debian's chromium and chromium-driver, installed with apt when missing (root only)."""
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return
    if os.geteuid() != 0:
        pytest.fail(
            "the browser suite needs Debian's chromium and chromium-driver: run "
            "`sudo apt-get install -y --no-install-recommends chromium chromium-driver`"
        )
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium", "chromium-driver"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(install, env=env, capture_output=True).returncode:  # a stale package list
        subprocess.run(["apt-get", "update"], env=env, check=True, capture_output=True)
        subprocess.run(install, env=env, check=True, capture_output=True)


def chromium():
    """A headless Chromium under its chromedriver; the caller quits it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(UI_TIMEOUT)
    return driver


def shot(browser, shots: list[Path], name: str) -> Path:
    path = ARTIFACTS / f"{len(shots) + 1:02d}-{name}.png"
    browser.save_screenshot(str(path))
    shots.append(path)
    return path


def until(browser, condition, what: str, timeout: float = UI_TIMEOUT):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(browser, timeout, poll_frequency=1).until(condition)
    except TimeoutException:
        path = ARTIFACTS / f"timeout-{uuid.uuid4().hex[:6]}.png"
        browser.save_screenshot(str(path))
        raise AssertionError(f"timed out after {timeout}s waiting for {what} (screenshot {path})") from None


def status_of(request: urllib.request.Request) -> int:
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
