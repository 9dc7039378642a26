"""Open an asv site in headless Chromium, served over loopback: what the site tests share.

asv's pages load jQuery, flot and bootstrap from public CDNs. Nothing outside loopback is
reachable here (the browser is told so), so the same libraries, fetched once from the npm
registry, are served beside the site and the page's ``<script>`` tags point at them.
"""

from __future__ import annotations

import functools
import http.server
import json
import re
import shutil
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--window-size=1400,800",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
)
#: Every external URL in asv's index.html -> (npm package, file inside it) serving the same library.
CDN_FILES = {
    "https://code.jquery.com/jquery-3.3.1.min.js": ("jquery@3.3.1", "dist/jquery.min.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.min.js": ("flot@0.8.3", "jquery.flot.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.time.min.js": ("flot@0.8.3", "jquery.flot.time.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.selection.min.js": (
        "flot@0.8.3",
        "jquery.flot.selection.js",
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.categories.min.js": (
        "flot@0.8.3",
        "jquery.flot.categories.js",
    ),
    "https://cdn.jsdelivr.net/npm/flot-orderbars@1.0.0/js/jquery.flot.orderBars.js": (
        "flot-orderbars@1.0.0",
        "js/jquery.flot.orderBars.js",
    ),
    # npm has no 1.0.1; 1.1.3 is the same plugin (asv calls only $.fn.stupidtable).
    "https://cdnjs.cloudflare.com/ajax/libs/stupidtable/1.0.1/stupidtable.min.js": (
        "stupid-table-plugin@1.1.3",
        "stupidtable.min.js",
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/blueimp-md5/2.19.0/js/md5.min.js": ("blueimp-md5@2.19.0", "js/md5.min.js"),
    "https://cdn.jsdelivr.net/npm/bootstrap@3.1.1/dist/js/bootstrap.min.js": (
        "bootstrap@3.1.1",
        "dist/js/bootstrap.min.js",
    ),
    "https://cdn.jsdelivr.net/npm/bootstrap@3.1.1/dist/css/bootstrap.min.css": (
        "bootstrap@3.1.1",
        "dist/css/bootstrap.min.css",
    ),
}


def npm_package(spec: str, cache: Path) -> Path:
    """``spec``'s files, unpacked from ``npm pack`` (cached)."""
    target = cache / spec.replace("/", "_")
    if (target / "package").is_dir():
        return target / "package"
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed: it fetches the JavaScript libraries asv's pages load from CDNs")
    download = cache / "download"
    download.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [npm, "pack", spec, "--pack-destination", str(download), "--silent"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"npm pack {spec} failed ({reason}): the site's JavaScript libraries are not available")
    archive = download / done.stdout.strip().splitlines()[-1]
    unpacked = cache / f"{target.name}.partial"
    shutil.rmtree(unpacked, ignore_errors=True)
    with tarfile.open(archive) as tar:
        tar.extractall(unpacked, filter="data")
    unpacked.rename(target)
    return target / "package"


def serve_locally(html: Path, site: Path) -> None:
    """A copy of the site whose CDN ``<script>``/``<link>`` tags point at the same libraries, served here."""
    from pytest_minerva.derive.cache import default_cache_dir

    shutil.copytree(html, site)
    cache = default_cache_dir() / "asv-site-vendor"
    page = (site / "index.html").read_text(encoding="utf-8")
    external = set(re.findall(r'(?:src|href)="(https?://[^"]+)"', page))
    links = {"https://github.com/airspeed-velocity/asv/"}  # a plain link, loaded by nobody
    assert external - links <= set(CDN_FILES), f"asv's page loads files this test cannot serve: {external - links}"
    for url, (spec, inner) in CDN_FILES.items():
        package = npm_package(spec, cache)
        local = Path("_vendor") / spec / inner
        (site / local).parent.mkdir(parents=True, exist_ok=True)
        if not (site / local).exists():
            shutil.copytree(package, site / "_vendor" / spec, dirs_exist_ok=True)
        # The local copy is not byte-identical to the CDN's minified file, so the integrity hash goes.
        page = re.sub(
            rf'(<(?:script|link)[^>]*?)(?:src|href)="{re.escape(url)}"([^>]*)>',
            lambda m, local=local, url=url: re.sub(
                r'\s(?:integrity|crossorigin|referrerpolicy)="[^"]*"',
                "",
                m.group(0).replace(url, local.as_posix()),
            ),
            page,
        )
    (site / "index.html").write_text(page, encoding="utf-8")


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def served(html: Path, site: Path) -> Iterator[str]:
    """``html`` (an ``asv publish`` output) copied to ``site`` with local libraries, served on
    loopback; yields its URL."""
    serve_locally(html, site)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def chromium_browser() -> Iterator[Any]:
    """A headless Chromium driven by selenium; skips the test where either is missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.skip("headless Chromium is not installed: apt-get install chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install selenium")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: Any, script: str, timeout: float = 30.0) -> Any:
    """Poll a JavaScript expression until it is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script(f"try {{ return {script}; }} catch (e) {{ return null; }}")
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def open_graph(browser: Any, site_url: str, benchmark: str) -> dict[str, Any]:
    """Open ``benchmark``'s graph; its series (label and points), how much of the canvas is drawn,
    the page's text and a screenshot."""
    browser.get(site_url + "#" + benchmark)
    series = wait_for(
        browser,
        "$('#main-graph').data('plot') && $('#main-graph').data('plot').getData()"
        ".map(function (s) { return {label: s.label, data: s.data}; })",
    )
    painted = browser.execute_script(
        "var c = document.querySelector('#main-graph canvas.flot-base');"
        "if (!c) return 0; var d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data, n = 0;"
        "for (var i = 3; i < d.length; i += 4) { if (d[i] > 0) n++; } return n;"
    )
    return {
        "series": series or [],
        "painted": painted,
        "text": browser.execute_script("return document.body.innerText"),
        "png": browser.get_screenshot_as_png(),
    }


def plotted_by_commit(series: list[dict[str, Any]], html: Path) -> dict[str, set[float]]:
    """The points a graph draws (rounded to 6 decimals), by the commit each x stands for in the
    site published to ``html``."""
    index = json.loads((html / "index.json").read_text(encoding="utf-8"))
    revision = {int(k): v for k, v in index["revision_to_hash"].items()}
    plotted: dict[str, set[float]] = {}
    for line in series:
        for x, y in line["data"]:
            if y is not None:
                plotted.setdefault(revision[int(x)], set()).add(round(y, 6))
    return plotted
