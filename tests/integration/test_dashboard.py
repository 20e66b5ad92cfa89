"""The dashboard in a real headless Chromium: live rows, a weight change, a drain and pause/resume from the page.

Needs Debian's ``chromium`` and ``chromium-driver`` (.ci/run installs them where apt-get works) and ``selenium``
(dev extras); the test skips, saying which is missing, when they are not there. Nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.procs import ProcessGroup, wait_until

pytestmark = pytest.mark.timeout(180)
TOKEN = "dash-s3cret"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1500,760",
)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """A headless Debian Chromium driven through Debian's chromedriver, quit (with its driver) afterwards."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not path.exists():
            pytest.skip(f"{path} not found: install Debian's {package} (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)  # with the driver path below: Selenium Manager never runs (no downloads)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # to check the page's console for errors
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.set_page_load_timeout(20)
        yield driver
    finally:
        driver.quit()  # ends Chromium and stops chromedriver
        if service.process is not None and service.process.poll() is None:
            service.process.kill()
            service.process.wait(10)


def dom_wait(driver: Any, what: str, check: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Poll the page until ``check()`` is truthy (DOM elements may be replaced or missing meanwhile)."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    def attempt() -> Any:
        try:
            return check()
        except (NoSuchElementException, StaleElementReferenceException):
            return None

    try:
        return wait_until(attempt, timeout, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the page says:\n{driver.find_element('tag name', 'body').text}") from None


def test_dashboard_shows_live_shares_and_operates_the_distributor(tmp_path: Path, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    def testid(name: str) -> Any:
        return browser.find_element(By.CSS_SELECTOR, f'[data-testid="{name}"]')

    def text(name: str) -> str:
        return testid(name).text

    def value(name: str) -> float | None:
        raw = testid(name).get_attribute("data-value")
        return float(raw) if raw else None

    with ProcessGroup() as procs:
        ports = {name: procs.analyzer(name=name).port for name in ("a1", "a2")}
        distributor = procs.start(
            "serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--admin-token", TOKEN, "--slow-start", "0.5",
            *(arg for name, port in ports.items() for arg in ("--analyzer", f"{name}=127.0.0.1:{port}@1")),
        )  # fmt: skip
        emitter = procs.start(
            "emit", "--target", distributor.ready["listen"], "--rate", "4000", "--duration", "120",
            "--connections", "1", "--batch", "100", "--quiet", ready=False,
        )  # fmt: skip
        page = f"http://{distributor.ready['admin']}/dashboard"

        # without a token the page loads but says why it shows nothing
        browser.get(page)
        dom_wait(browser, "a 401 message", lambda: testid("auth-error").is_displayed() and "401" in text("auth-error"))
        assert "#token=" in text("auth-error")
        # with the token in the fragment (a fragment-only navigation: the page picks it up on hashchange)
        browser.get(f"{page}#token={TOKEN}")
        dom_wait(browser, "the auth message gone", lambda: not testid("auth-error").is_displayed())

        # both rows, up, each configured at 50 % and getting about that
        for name in ports:
            dom_wait(browser, f"{name} up", lambda name=name: text(f"state-{name}") == "up")
            assert value(f"configured-{name}") == pytest.approx(0.5)
            dom_wait(browser, f"{name} share ~50 %", lambda n=name: abs((value(f"share-{n}") or 0) - 0.5) < 0.1)
        dom_wait(browser, "an ingest rate", lambda: (value("ingest-rate") or 0) > 1000)
        assert text("circuit-a1") == "closed"

        # weight 3 for a1 from the page: configured 75 %, and the measured share follows
        box = testid("weight-input-a1")
        box.click()
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys("3")
        assert box.get_attribute("value") == "3"
        testid("weight-set-a1").click()
        dom_wait(browser, "the confirmation", lambda: "weight set to 3" in text("action-status"))
        dom_wait(browser, "configured 75 %", lambda: value("configured-a1") == pytest.approx(0.75))
        dom_wait(browser, "a1's share near 75 %", lambda: abs((value("share-a1") or 0) - 0.75) < 0.07)
        assert testid("share-a1").get_attribute("data-basis") == "window"
        dom_wait(browser, "the sparkline", lambda: int(testid("spark-a1").get_attribute("data-points") or 0) >= 5)

        # pause and resume ingest
        testid("pause-ingest").click()
        dom_wait(browser, "paused", lambda: text("paused") == "PAUSED" and "operator" in text("paused-why"))
        testid("resume-ingest").click()
        dom_wait(browser, "running", lambda: text("paused") == "running")

        # drain a1: its state says so and its share of new deliveries falls to 0
        testid("drain-a1").click()
        dom_wait(browser, "a1 drained", lambda: text("state-a1") == "drained")
        dom_wait(browser, "a1's share at 0", lambda: value("share-a1") == 0 and value("share-a2") == 1)
        assert testid("drain-a1").get_attribute("disabled") is not None
        updated = text("updated")
        dom_wait(browser, "one more refresh (bars settled)", lambda: text("updated") != updated)
        browser.save_screenshot(str(tmp_path / "dashboard.png"))
        assert (tmp_path / "dashboard.png").stat().st_size > 10_000

        testid("restore-a1").click()
        dom_wait(browser, "a1 back", lambda: testid("state-a1").get_attribute("data-value") in ("up", "slow_start"))
        errors = [e for e in browser.get_log("browser") if e["source"] == "javascript" and e["level"] == "SEVERE"]
        assert not errors, errors
        assert emitter.terminate() == 0, emitter.describe()  # every message it sent was acked
        assert distributor.terminate() == 0
