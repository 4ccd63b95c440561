"""The dashboard in a real browser (issue 15): Debian's chromium driven by Playwright, against
`safehold serve`'s server on a free loopback port, over real repositories made by real
platform backups and a drill (tests/dashboard_fixtures.py).

Set SAFEHOLD_UPDATE_SCREENSHOT=1 to write docs/dashboard.png (the README's screenshot) from
the overview this test renders.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

import safehold.crypto
from safehold.web.data import load_sources
from safehold.web.security import Listen
from safehold.web.serve import Running, start
from tests.conftest import FAST_KDF, PASSPHRASE
from tests.dashboard_fixtures import DB_PASSWORD, FILE_BYTES, Platforms, make_platforms

playwright_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "browser-test-token-0123456789"
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "dashboard.png"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="Debian's chromium is missing"),
]


@pytest.fixture(scope="module")
def platforms(tmp_path_factory: pytest.TempPathFactory) -> Platforms:
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(safehold.crypto, "KDF_DEFAULTS", dict(FAST_KDF))
        return make_platforms(tmp_path_factory.mktemp("browser"), monkeypatch)


@pytest.fixture
def server(platforms: Platforms, monkeypatch: pytest.MonkeyPatch) -> Iterator[Running]:
    monkeypatch.setenv("DASHBOARD_DB_PASSWORD", DB_PASSWORD)
    sources = load_sources(
        [str(c) for c in platforms.configs],
        lambda: PASSPHRASE.encode(),
        state_dir=platforms.state_dir,
    )
    running = start(sources, TOKEN, Listen("127.0.0.1", 0))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


def _no_secret(text: str) -> None:
    assert PASSPHRASE not in text and DB_PASSWORD not in text and TOKEN not in text


def test_pages_in_a_browser(server: Running, browser, platforms: Platforms, tmp_path: Path):
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    page.on(
        "console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None
    )
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on(
        "response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None
    )

    # the one-time URL: a session cookie, and the token leaves the address bar
    page.goto(f"{server.url}?token={TOKEN}")
    assert page.url == server.url
    cards = page.locator("section.card")
    assert cards.count() == 2
    klink, ovena = page.locator('[data-platform="klink"]'), page.locator('[data-platform="ovena"]')
    assert klink.locator(".badge").inner_text() == "ok"
    assert ovena.locator(".badge").inner_text() == "failing"
    assert "ago" in klink.locator(".last-good").inner_text()
    assert "passed" in klink.locator(".drill").inner_text()
    assert "RTO" in klink.locator(".drill").inner_text()
    assert ovena.locator(".drill").inner_text().strip() == "never"
    _no_secret(page.content())
    page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
    if os.environ.get("SAFEHOLD_UPDATE_SCREENSHOT"):
        shutil.copyfile(tmp_path / "dashboard.png", SCREENSHOT)

    # the platform page: components, charts with points, drills
    klink.locator("h2 a").click()
    page.wait_for_url("**/platform/klink")
    charts = page.locator("svg.chart")
    assert charts.count() == 5
    for index in range(4):  # size, duration, downtime, RTO (growth is the repository's)
        assert charts.nth(index).locator("circle.point").count() >= 1
    assert charts.nth(0).locator("circle.point").count() == 2  # two backups
    assert charts.nth(0).bounding_box()["height"] > 50  # rendered, not collapsed
    assert "passed" in page.locator("table.drills").inner_text()
    assert page.locator("table.components").inner_text().count("ok") >= 2
    _no_secret(page.content())
    page.goto(server.url + "platform/ovena")
    assert "pacsdb" in page.locator("table.components").inner_text()
    _no_secret(page.content())

    # the snapshot browser: filter, open, walk, download
    page.goto(server.url + "snapshots")
    page.select_option("select[name=platform]", "klink")
    page.click("form.filters button")
    page.wait_for_url("**/snapshots?platform=klink**")
    assert page.locator("table.snapshots tr").count() == 3  # a header and two snapshots
    page.locator("table.snapshots a").first.click()
    page.get_by_role("link", name="data", exact=True).click()
    assert page.locator("table.tree").count() == 1
    page.goto(page.url.split("?")[0] + f"?path=/data{platforms.original.parent}")
    with page.expect_download() as download_info:
        page.locator("tr", has_text="scan.bin").locator("a.download").click()
    download = download_info.value
    assert download.suggested_filename == "scan.bin"
    assert Path(download.path()).read_bytes() == FILE_BYTES
    _no_secret(page.content())
    assert problems == []

    context.close()


def test_without_the_token_or_actions(server: Running, browser):
    context = browser.new_context()
    page = context.new_page()
    assert page.goto(server.url).status == 401
    assert "token" in page.inner_text("main")
    page.goto(f"{server.url}?token={TOKEN}")
    response = page.goto(server.url + "platform/klink/action/backup")
    assert response.status == 403  # started without --allow-actions
    assert "--allow-actions" in page.inner_text("main")
    page.goto(server.url + "platform/klink")
    assert page.locator(".actions").count() == 0
    context.close()
