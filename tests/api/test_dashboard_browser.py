"""The owner's dashboard in a real headless Chromium: login, live counts, alerts, revoking a key from the page.

Needs Debian's ``chromium`` and ``chromium-driver`` (``make setup`` installs them as root) and ``selenium`` (the
``dev`` extra). Without them the test fails, it does not skip. Set ``ENCODERGUARD_DASHBOARD_PNG=PATH`` to save a
screenshot of the page at the end.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from api_helpers import bearer, images, raw_body
from dashboard_helpers import ADMIN_TOKEN, FakeRiskDefence

pytest.importorskip("fastapi")

WAIT = 15.0  # seconds any one thing on the page may take to appear


def _browser_paths() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.fail("the dashboard's browser test needs Chromium and chromedriver: run 'make setup' (as root it "
                    "installs Debian's chromium and chromium-driver), or 'sudo apt-get install chromium "
                    "chromium-driver'", pytrace=False)
    return chromium, driver


@contextlib.contextmanager
def _chromium() -> Iterator[Any]:
    chromium, driver_path = _browser_paths()
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("the dashboard's browser test needs selenium: run 'make setup' (pip install -e '.[dev]')",
                    pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--disable-extensions", "--no-first-run", "--window-size=1440,1500"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


def _until(driver: Any, condition: Callable[[Any], Any], what: str) -> Any:
    """Poll ``condition(driver)`` until it is truthy, ignoring elements the page re-rendered meanwhile."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    deadline = time.monotonic() + WAIT
    while True:
        try:
            value = condition(driver)
            if value:
                return value
        except (NoSuchElementException, StaleElementReferenceException):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"the dashboard did not show {what} within {WAIT:g} s")
        time.sleep(0.1)


def _cell(driver: Any, key_id: str, cls: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, f'#keys tr[data-key-id="{key_id}"] td.{cls}').text


def _alert_shown(driver: Any, key_id: str, kind: str) -> bool:
    from selenium.webdriver.common.by import By

    return bool(driver.find_elements(By.CSS_SELECTOR, f'#alerts li[data-kind="{kind}"][data-key-id="{key_id}"]'))


@pytest.mark.timeout(60)
def test_dashboard_in_headless_chromium(make_served) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    from encoderguard.api.server import background_server

    served = make_served(keys={"alice": {"rate": 1000.0}, "sweeper": {"quota": 10}}, dashboard=True,
                         admin_token=ADMIN_TOKEN, defences=[FakeRiskDefence(risky_after=100)])
    alice, sweeper = served.key_ids["alice"], served.key_ids["sweeper"]
    started = time.monotonic()
    with background_server(served.app) as url, _chromium() as driver, httpx.Client(base_url=url) as http:

        def embed(name: str, n: int, seed: int) -> int:
            body = raw_body(images(n, seed=seed).numpy())
            return http.post("/v1/embeddings", json=body, headers=bearer(served.keys[name])).status_code

        # the login form, then the page
        driver.get(f"{url}/dashboard?refresh=1")
        token = _until(driver, lambda d: d.find_element(By.ID, "token"), "the login form")
        token.send_keys(ADMIN_TOKEN)
        driver.find_element(By.ID, "login-button").click()
        _until(driver, lambda d: _cell(d, alice, "served") == "0", "alice's row")
        assert _cell(driver, sweeper, "quota") == "10"
        assert driver.find_element(By.CSS_SELECTOR, "#verification .none-yet").text.startswith("none yet")
        assert ADMIN_TOKEN not in driver.page_source
        assert not any(key.split("_", 2)[2] in driver.page_source for key in served.keys.values())

        # a key's count rises after requests
        assert embed("alice", 3, seed=0) == 200
        _until(driver, lambda d: _cell(d, alice, "served") == "3", "alice's 3 images")
        _until(driver, lambda d: _cell(d, alice, "last-minute") == "3", "alice's images this minute")

        # a sweeping key crosses 80 % and 100 % of its quota: two alerts
        assert embed("sweeper", 8, seed=1) == 200
        _until(driver, lambda d: _alert_shown(d, sweeper, "quota_80"), "the 80 % alert")
        assert embed("sweeper", 2, seed=2) == 200
        _until(driver, lambda d: _alert_shown(d, sweeper, "quota_100"), "the 100 % alert")
        _until(driver, lambda d: _cell(d, sweeper, "quota-left").startswith("0"), "sweeper's quota spent")
        assert embed("sweeper", 1, seed=3) == 429

        # revoke from the page: the key gets 401 from then on
        def click_revoke(d: Any) -> bool:
            d.find_element(By.CSS_SELECTOR, f'#keys tr[data-key-id="{sweeper}"] button.revoke').click()
            return True

        _until(driver, click_revoke, "the revoke button")
        WebDriverWait(driver, WAIT).until(expected_conditions.alert_is_present()).accept()
        _until(driver, lambda d: _cell(d, sweeper, "status") == "revoked", "sweeper revoked")
        assert embed("sweeper", 1, seed=4) == 401
        assert embed("alice", 1, seed=5) == 200
        assert "revoked key " + sweeper in driver.find_element(By.ID, "message").text

        # reset a key's defence state from the page: the ledger's state rows of that key go
        _until(driver, lambda d: _cell(d, alice, "defence-state").startswith("fake-risk"), "alice's defence state")

        def click_reset(d: Any) -> bool:
            d.find_element(By.CSS_SELECTOR, f'#keys tr[data-key-id="{alice}"] button.reset').click()
            return True

        _until(driver, click_reset, "the reset button")
        WebDriverWait(driver, WAIT).until(expected_conditions.alert_is_present()).accept()
        _until(driver, lambda d: _cell(d, alice, "defence-state").startswith("none"), "alice's state reset")
        assert served.app.state.service.ledger.get_state(alice, "fake-risk") is None

        shot = os.environ.get("ENCODERGUARD_DASHBOARD_PNG")
        if shot:
            _save_png(driver.get_screenshot_as_png(), shot)
    assert time.monotonic() - started < 60


def _save_png(png: bytes, path: str) -> None:
    """Save a screenshot as a small palette PNG."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    image.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
