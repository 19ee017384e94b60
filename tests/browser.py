"""Headless Chromium for tests: serve a folder over real HTTP and drive Debian's chromium with selenium.

Usage (any test that checks a page a person looks at):

    from browser import chromium_missing, serve_dir, chromium, wait_for, loaded_images, full_screenshot

    def test_page(tmp_path):
        if (why := chromium_missing()): pytest.skip(why)
        with serve_dir(site) as url, chromium(tmp_path) as d:
            d.get(url + 'index.html')
            wait_for(d, 'h1')
            d.save_screenshot(str(out_dir('mytest') / 'index.png'))

Nothing is downloaded: the driver and browser are Debian's (/usr/bin/chromedriver, /usr/bin/chromium), given
to selenium explicitly so Selenium Manager never runs (SE_OFFLINE=true as well). The browser resolves no
host but localhost, so a page that needs the network shows it in `network_errors(driver)`.
"""
from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CHROMIUM = os.environ.get('MLOPS_NB_CHROMIUM', '/usr/bin/chromium')
CHROMEDRIVER = os.environ.get('MLOPS_NB_CHROMEDRIVER', '/usr/bin/chromedriver')
OUT = Path(__file__).parent / 'out'  # screenshots; gitignored
FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync',
         '--disable-dev-shm-usage', '--window-size=1280,900',
         '--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1']


def chromium_missing() -> str | None:
    "Why a browser test cannot run here, or None."
    for path, pkg in ((CHROMIUM, 'chromium'), (CHROMEDRIVER, 'chromium-driver')):
        if not (Path(path).exists() or shutil.which(path)):
            return f"{path} not found: install Debian's {pkg} (`apt-get install -y chromium chromium-driver`, as .ci/run does when root)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return 'selenium is not installed: pip install -e ".[dev]"'
    return None


def out_dir(name: str) -> Path:
    "tests/out/NAME, created: where a test keeps its screenshots."
    d = OUT / name
    d.mkdir(parents=True, exist_ok=True)
    return d


@contextlib.contextmanager
def serve_dir(directory: str | Path):
    "Serve `directory` with http.server on a free localhost port; yields the base URL ending in '/'."
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *a):
            pass
    srv = ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(Quiet, directory=str(directory)))
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_port}/"
    finally:
        srv.shutdown()
        srv.server_close()


@contextlib.contextmanager
def chromium(tmp: str | Path | None = None):
    "A headless Chromium WebDriver (Debian's chromium + chromedriver), quit on exit."
    os.environ.setdefault('SE_OFFLINE', 'true')  # Selenium Manager must never download a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    profile = tempfile.mkdtemp(prefix='chromium-', dir=tmp)
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which(CHROMIUM) or CHROMIUM
    for f in FLAGS + [f'--user-data-dir={profile}']:
        opts.add_argument(f)
    opts.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
    d = webdriver.Chrome(service=Service(shutil.which(CHROMEDRIVER) or CHROMEDRIVER), options=opts)
    d.set_page_load_timeout(60)
    try:
        yield d
    finally:
        d.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver, css: str, timeout: float = 20, text: str | None = None):
    "The first element matching `css` (containing `text`, if given) once it is displayed; AssertionError after `timeout`."
    from selenium.webdriver.common.by import By
    end = time.monotonic() + timeout
    while True:
        for el in driver.find_elements(By.CSS_SELECTOR, css):
            with contextlib.suppress(Exception):
                if el.is_displayed() and (text is None or text in el.text):
                    return el
        if time.monotonic() > end:
            raise AssertionError(f"no visible {css!r}" + (f" containing {text!r}" if text else '') + f" on {driver.current_url}")
        time.sleep(0.2)


def full_screenshot(driver, path: str | Path, max_height: int = 5000):
    "Save a screenshot of the whole page (up to `max_height` pixels tall), not just the window."
    w, h = driver.get_window_size()['width'], driver.get_window_size()['height']
    full = driver.execute_script('return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)')
    driver.set_window_size(w, min(max(full, h), max_height))
    try:
        driver.save_screenshot(str(path))
    finally:
        driver.set_window_size(w, h)


def loaded_images(driver) -> list[str]:
    "src of every <img> on the page that the browser decoded (naturalWidth > 0)."
    return driver.execute_script(
        "return Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).map(i => i.src)")


def network_errors(driver) -> list[str]:
    "Browser console errors about failed loads (a CDN the page tried to reach, a missing file)."
    return [e['message'] for e in driver.get_log('browser')
            if e.get('level') == 'SEVERE' and ('net::' in e['message'] or 'Failed to load' in e['message'])
            and '/favicon.ico' not in e['message']]  # the browser asks for one whether the page links it or not
