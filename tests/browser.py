"""Headless Chromium for the browser test: start it, wait on the page, save screenshots.

Chromium and chromedriver come from Debian (``chromium``, ``chromium-driver``), which
``make test`` installs. The driver path is always given to Selenium, so Selenium Manager is never
run and nothing is downloaded. Screenshots go to ``test-artifacts/browser/``; with
``DRIFTWISE_UPDATE_DOCS=1`` they are copied into ``docs/screenshots/`` as well.
"""
from __future__ import annotations

import base64
import os
import shutil
import typing as t

import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

#: Debian's Chromium and its WebDriver.
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: Seconds any one explicit wait may take.
WAIT = 15.0
#: Flags for a quiet, reproducible headless browser that never reaches the internet.
CHROME_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                "--lang=en-US", "--hide-scrollbars", "--force-device-scale-factor=1")

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Where every screenshot of a run lands (git-ignored).
ARTIFACTS = os.path.join(_REPO, "test-artifacts", "browser")
#: The screenshots the docs show, refreshed with ``DRIFTWISE_UPDATE_DOCS=1``.
DOCS = os.path.join(_REPO, "docs", "screenshots")


def start_chromium(profile_dir: str) -> WebDriver:
    """A headless Chromium with its own profile; fails the test when the browser is missing."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: run `make test`, which installs Debian "
                    "chromium and chromium-driver", pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROME_FLAGS, f"--user-data-dir={profile_dir}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


class Page:
    """The browser plus the few moves the journey needs, each with an explicit wait."""

    def __init__(self, driver: WebDriver) -> None:
        self.driver = driver

    def until(self, condition: t.Callable[[WebDriver], t.Any], message: str, *,
              wait: float = WAIT) -> t.Any:
        """Wait up to ``wait`` seconds for ``condition`` to return something truthy."""
        try:
            return WebDriverWait(self.driver, wait, poll_frequency=0.1).until(condition)
        except TimeoutException:
            # The URL is read only now: reading it while an alert is open would dismiss it.
            raise TimeoutException(f"{message} within {wait:.0f}s "
                                   f"(page: {self.driver.current_url})") from None

    def find(self, element_id: str) -> WebElement:
        return self.driver.find_element(By.ID, element_id)

    def visible(self, element_id: str) -> bool:
        found = self.driver.find_elements(By.ID, element_id)
        return bool(found) and found[0].is_displayed()

    def text(self, element_id: str) -> str:
        found = self.driver.find_elements(By.ID, element_id)
        return found[0].text if found and found[0].is_displayed() else ""

    def wait_text(self, element_id: str, expected: str) -> str:
        """Wait until the element with ``element_id`` shows ``expected``; return its text."""
        return t.cast(str, self.until(
            lambda _: (text := self.text(element_id)) and expected in text and text,
            f"#{element_id} never showed {expected!r}; last text {self.text(element_id)!r}"))

    def click(self, element_id: str) -> None:
        element = self.until(lambda _: self.visible(element_id) and self.find(element_id),
                             f"#{element_id} never became visible")
        self.until(lambda _: element.is_enabled(), f"#{element_id} stayed disabled")
        element.click()

    def sign_in(self, base_url: str, token: str) -> None:
        """Paste the API token into /login and wait for Settings to finish loading."""
        self.driver.get(base_url + "/login")
        self.until(lambda _: self.visible("login-token"), "the sign-in form did not appear")
        self.find("login-token").send_keys(token)
        self.click("login-submit")
        self.settings_loaded()

    def settings_loaded(self) -> None:
        """Settings has drawn the Slack card, the schedules and their delivery lists."""
        self.until(lambda _: self.driver.current_url.split("?")[0].endswith("/settings"),
                   "Settings did not open")
        self.until(lambda _: self.text("slack-badge") in ("Connected", "Not connected"),
                   "the Slack card never showed a state")
        self.until(lambda d: d.execute_script(
            "var lists = document.querySelectorAll('ul.deliveries');"
            "if (!lists.length) { return !document.getElementById('schedules-empty').hidden; }"
            "return Array.prototype.every.call(lists, function (l) {"
            "  return l.children.length > 0; });"),
            "the delivery lists never loaded")

    def sign_out(self) -> None:
        self.click("logout")
        self.until(lambda _: self.visible("login-token"), "signing out did not reach /login")

    def shot(self, name: str) -> str:
        """Save the whole page (not just the viewport) as ``<name>.png``; returns the path."""
        metrics = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        data = self.driver.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True, "clip": clip})["data"]
        os.makedirs(ARTIFACTS, exist_ok=True)
        path = os.path.join(ARTIFACTS, f"{name}.png")
        with open(path, "wb") as fh:
            fh.write(base64.b64decode(data))
        if os.environ.get("DRIFTWISE_UPDATE_DOCS") == "1":
            os.makedirs(DOCS, exist_ok=True)
            shutil.copyfile(path, os.path.join(DOCS, f"{name}.png"))
        return path
