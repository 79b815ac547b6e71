"""Headless Debian chromium driven by selenium, for the tests that look at pages.

The HTML report and the web page are checked in a real browser; this is the one copy of
"find chromium and its driver, start it headless with a private profile, always quit it".
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
_ARGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", "--force-device-scale-factor=1", "--hide-scrollbars")


def missing_browser() -> str | None:
    """Why no browser test can run here (None when chromium, its driver and selenium exist)."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        return f"needs {CHROMIUM} and {CHROMEDRIVER} (Debian chromium, chromium-driver)"
    try:
        import selenium.webdriver  # optional: selenium is a test dependency  # noqa: F401
    except ImportError:
        return "needs selenium"
    return None


@contextmanager
def headless_chromium(profile_dir: str | Path, *, page_load_timeout: float,
                      window: tuple[int, int] | None = None) -> Iterator[Any]:
    """A selenium Chrome driver on Debian's chromium, quit on exit whatever happened."""
    from selenium import webdriver  # optional: selenium is a test dependency
    from selenium.webdriver.chrome.service import Service  # optional: selenium

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (*_ARGS, f"--user-data-dir={profile_dir}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    try:
        driver.set_page_load_timeout(page_load_timeout)
        if window is not None:
            driver.set_window_size(*window)
        yield driver
    finally:
        driver.quit()
