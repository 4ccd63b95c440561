"""safehold serve (issue 15): every route over HTTP (Werkzeug's test client against the real
WSGI application), on real repositories made by real platform backups and a drill."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import time
from pathlib import Path

import pytest
from werkzeug.test import Client

import safehold.crypto
from safehold.ops.schedule import FileLock, job_lock_path
from safehold.web.app import Dashboard, Settings
from safehold.web.data import load_sources
from safehold.web.jobs import JobQueue
from safehold.web.security import COOKIE, Guard, load_token
from tests.conftest import FAST_KDF, PASSPHRASE, assert_one_line_error, run_cli
from tests.dashboard_fixtures import (
    DB_PASSWORD,
    FILE_BYTES,
    ODD_BYTES,
    Platforms,
    make_platforms,
)

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def platforms(tmp_path_factory: pytest.TempPathFactory) -> Platforms:
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(safehold.crypto, "KDF_DEFAULTS", dict(FAST_KDF))
        return make_platforms(tmp_path_factory.mktemp("dashboard"), monkeypatch)


@pytest.fixture(autouse=True)
def database_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's environment holds the platform's DB password (as `report` needs it)."""
    monkeypatch.setenv("DASHBOARD_DB_PASSWORD", DB_PASSWORD)


def make_app(platforms: Platforms, **settings: object) -> Dashboard:
    jobs = settings.pop("jobs", None)
    sources = load_sources(
        [str(c) for c in platforms.configs],
        lambda: PASSPHRASE.encode(),
        state_dir=platforms.state_dir,
    )
    return Dashboard(sources, Guard(TOKEN), Settings(**settings), jobs)  # type: ignore[arg-type]


@pytest.fixture
def client(platforms: Platforms) -> Client:
    return Client(make_app(platforms))


def get(client: Client, url: str, **kwargs: object):  # type: ignore[no-untyped-def]
    return client.get(url, headers=AUTH, **kwargs)


def snapshot_ids(app: Dashboard, key: int) -> list[str]:
    return [s["id"] for s in app.sources.views[key].documents()[0]]


def first_snapshot_url(client: Client) -> str:
    app = client.application
    return f"/r/0/snapshot/{snapshot_ids(app, 0)[-1]}"  # type: ignore[arg-type]


ROUTES = [
    "/",
    "/platform/klink",
    "/snapshots",
    "/r/0/snapshot/" + "0" * 64,
    "/r/0/snapshot/" + "0" * 64 + "/download?path=/",
    "/platform/klink/action/backup",
    "/static/style.css",
]


@pytest.mark.parametrize("url", ROUTES)
def test_every_route_needs_the_token(client: Client, url: str):
    response = client.get(url)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    wrong = client.get(url, headers={"Authorization": "Bearer " + TOKEN[:-1] + "x"})
    assert wrong.status_code == 401
    assert client.post(url).status_code in (401, 405)


def test_token_in_the_url_once_sets_a_session_cookie(client: Client):
    response = client.get(f"/snapshots?platform=klink&token={TOKEN}")
    assert response.status_code == 303
    assert response.headers["Location"] == "/snapshots?platform=klink"  # the token is gone
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
    assert client.get("/snapshots?platform=klink").status_code == 200  # the cookie is enough
    other = Client(client.application)
    assert other.get("/?token=wrong-token-0000000000").status_code == 401
    other.set_cookie(COOKIE, "0" * 64)
    assert other.get("/").status_code == 401


def test_overview_shows_each_platform_its_state_age_and_drill(client: Client):
    response = get(client, "/")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert 'data-platform="klink"' in page and 'data-platform="ovena"' in page
    klink = page.split('data-platform="klink"')[1].split("</section>")[0]
    ovena = page.split('data-platform="ovena"')[1].split("</section>")[0]
    assert 'data-state="ok"' in klink
    assert "passed" in klink and "RTO" in klink
    assert "s ago" in klink  # the age of the last good backup
    # ovena: its database component fails (partial backups) and it was never drilled
    assert 'data-state="failing"' in ovena
    assert "never drilled" in ovena and "component pacsdb failed" in ovena
    assert "backup in" in ovena  # its schedule's next run
    assert "dedup" in klink
    for header in ("Content-Security-Policy", "X-Content-Type-Options", "Referrer-Policy"):
        assert header in response.headers


def test_platform_page_components_charts_drills_and_runs(client: Client):
    page = get(client, "/platform/klink").get_data(as_text=True)
    for component in ("data", "appdb"):
        assert f"<td>{component}</td>" in page
    assert page.count("<svg") == 5
    assert page.count('class="point"') >= 8  # two backups in four charts, one drill
    assert "result-passed" in page  # the drill and its components
    assert "backup</td>" in page  # the job run recorded by `schedule run`
    assert get(client, "/platform/nosuch").status_code == 404
    assert "<script" not in page and "style=" not in page  # nothing inline (the CSP)


def test_snapshot_list_and_filters(client: Client):
    page = get(client, "/snapshots").get_data(as_text=True)
    assert "4 snapshot(s)" in page
    assert "2 snapshot(s)" in get(client, "/snapshots?platform=ovena").get_data(as_text=True)
    assert "2 snapshot(s)" in get(client, "/snapshots?component=pacsdb").get_data(as_text=True)
    assert "0 snapshot(s)" in get(client, "/snapshots?host=nohost").get_data(as_text=True)
    assert "0 snapshot(s)" in get(client, "/snapshots?tag=nightly").get_data(as_text=True)
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert "4 snapshot(s)" in get(client, f"/snapshots?since={today}").get_data(as_text=True)
    assert "0 snapshot(s)" in get(client, "/snapshots?until=2001-01-01").get_data(as_text=True)
    assert get(client, "/snapshots?since=yesterday").status_code == 400
    assert get(client, "/snapshots?page=x").status_code == 400


def test_snapshot_tree_and_file_metadata(client: Client, platforms: Platforms):
    url = first_snapshot_url(client)
    root = get(client, url).get_data(as_text=True)
    assert "appdb" in root and "data" in root
    path = f"/data{platforms.original}"
    page = get(client, f"{url}?path={path}").get_data(as_text=True)
    assert f"{len(FILE_BYTES)} bytes" in page and "-rw-r--r--" in page
    listing = get(client, f"{url}?path={platforms.original.parent.as_posix().join(['/data', ''])}")
    assert listing.status_code == 200 and "scan.bin" in listing.get_data(as_text=True)


def test_download_a_file_streams_its_bytes(client: Client, platforms: Platforms):
    url = first_snapshot_url(client) + f"/download?path=/data{platforms.original}"
    response = get(client, url, buffered=False)
    assert response.status_code == 200
    assert response.headers["Content-Length"] == str(len(FILE_BYTES))
    assert 'filename="scan.bin"' in response.headers["Content-Disposition"]
    chunks = list(response.response)
    assert len(chunks) > 1  # blob by blob, not one buffer
    assert b"".join(chunks) == FILE_BYTES


def test_download_a_directory_as_tar(client: Client, platforms: Platforms):
    url = first_snapshot_url(client) + "/download?path=/data"
    response = get(client, url)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(response.get_data())) as archive:
        member = archive.getmember(f"data{platforms.original}")
        assert archive.extractfile(member).read() == FILE_BYTES  # type: ignore[union-attr]


def test_names_are_escaped_and_need_not_be_utf8(client: Client, platforms: Platforms):
    url = first_snapshot_url(client)
    page = get(client, f"{url}?path=/data{platforms.original.parent}").get_data(as_text=True)
    assert "<b>" not in page
    assert "caf\\xe9 &lt;b&gt;&amp;amp;.txt" in page  # shown escaped, the odd byte as \xe9
    link = f"/download?path=/data{platforms.original.parent}/caf%E9%20%3Cb%3E%26amp%3B.txt"
    assert link in page  # the raw bytes, percent-encoded
    response = get(client, url + link)
    assert response.status_code == 200 and response.get_data() == ODD_BYTES
    assert response.headers["Content-Disposition"].startswith('attachment; filename="caf')


@pytest.mark.parametrize(
    "query",
    ["path=/../../etc/passwd", "path=/data/%2e%2e/%2e%2e", "path=/data/./x", "path=/data%00/x"],
)
def test_path_traversal_is_refused(client: Client, query: str):
    url = first_snapshot_url(client)
    assert get(client, f"{url}?{query}").status_code == 400
    assert get(client, f"{url}/download?{query}").status_code == 400


def test_unknown_snapshot_repository_or_path_is_404(client: Client):
    url = first_snapshot_url(client)
    for bad in (
        "/r/0/snapshot/" + "f" * 64,
        "/r/0/snapshot/" + url.rsplit("/", 1)[1][:8],  # a prefix is not an id here
        "/r/0/snapshot/../../etc",
        "/r/7/snapshot/" + "0" * 64,
        url + "?path=/nothing/here",
        url + "/download?path=/nothing",
        "/static/../app.py",
        "/static/app.py",
        "/static/%2e%2e%2fapp.py",
    ):
        assert get(client, bad).status_code == 404, bad


def test_no_secret_in_any_page(client: Client, platforms: Platforms):
    url = first_snapshot_url(client)
    pages = ["/", "/platform/klink", "/platform/ovena", "/snapshots", url, url + "?path=/data"]
    ovena = client.application.sources.views[1]  # type: ignore[attr-defined]
    pages.append(f"/r/1/snapshot/{ovena.documents()[0][-1]['id']}")
    for page in pages:
        text = get(client, page).get_data(as_text=True)
        assert PASSPHRASE not in text and DB_PASSWORD not in text and TOKEN not in text, page


def test_actions_are_refused_without_allow_actions(client: Client):
    assert get(client, "/platform/klink/action/backup").status_code == 403
    response = client.post(
        "/platform/klink/action/backup", headers=AUTH, data={"csrf": "x", "confirm": "yes"}
    )
    assert response.status_code == 403
    assert "action" not in get(client, "/platform/klink").get_data(as_text=True).split("<main>")[1]


def test_actions_need_csrf_and_confirmation_and_wait_for_the_job_lock(platforms: Platforms):
    queue = JobQueue(state_dir=str(platforms.state_dir), retry_seconds=0.2)
    app = make_app(platforms, allow_actions=True, jobs=queue)
    client = Client(app)
    before = len(snapshot_ids(app, 0))
    confirm = get(client, "/platform/klink/action/backup")
    assert confirm.status_code == 200
    csrf = app.guard.csrf
    assert f'value="{csrf}"' in confirm.get_data(as_text=True)
    post = "/platform/klink/action/backup"
    assert client.post(post, headers=AUTH, data={"confirm": "yes"}).status_code == 403
    assert (
        client.post(post, headers=AUTH, data={"csrf": "0" * 64, "confirm": "yes"}).status_code
        == 403
    )
    assert client.post(post, headers=AUTH, data={"csrf": csrf}).status_code == 400
    assert get(client, "/platform/klink/action/restore").status_code == 404
    lock = FileLock(job_lock_path(platforms.state_dir, "klink"))
    lock.acquire("test")  # as if the daemon ran a job of the platform
    try:
        response = client.post(post, headers=AUTH, data={"csrf": csrf, "confirm": "yes"})
        assert response.status_code == 303 and response.headers["Location"] == "/platform/klink"
        deadline = time.time() + 30
        while queue.of("klink")[0].status != "waiting" and time.time() < deadline:
            time.sleep(0.05)
        assert queue.of("klink")[0].status == "waiting"
        assert len(snapshot_ids(app, 0)) == before
    finally:
        lock.release()
    deadline = time.time() + 60
    while queue.of("klink")[0].ended is None and time.time() < deadline:
        time.sleep(0.1)
    job = queue.of("klink")[0]
    assert job.status == "ok", job.message
    app.sources.views[0].invalidate()
    assert len(snapshot_ids(app, 0)) == before + 1
    assert "result-ok" in get(client, "/platform/klink").get_data(as_text=True)
    queue.close()


def test_pages_read_the_repository_through_the_cache(platforms: Platforms):
    app = make_app(platforms)
    client = Client(app)
    view = app.sources.views[0]
    get(client, "/")
    loads = view.loads
    for _ in range(3):
        get(client, "/")
        get(client, "/platform/klink")
    assert view.loads == loads  # nothing loaded again
    assert run_cli("backup", "--config", platforms.configs[0], "--quiet").code == 0
    view.invalidate()  # as when the TTL has passed
    get(client, "/")
    assert view.loads == loads + 1  # only the new snapshot


def test_token_file_is_made_once_with_mode_0600(tmp_path: Path):
    token, made = load_token(None, tmp_path)
    assert made and len(token) >= 32
    path = tmp_path / "dashboard-token"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_token(None, tmp_path) == (token, False)
    given = tmp_path / "given"
    given.write_text("short\n")
    result = run_cli("serve", "--config", "x.yaml", "--token-file", given, "--state-dir", tmp_path)
    assert result.code != 0


def test_serve_refuses_a_non_loopback_address_without_tls(
    platforms: Platforms, monkeypatch: pytest.MonkeyPatch
):
    config = platforms.configs[0]
    result = run_cli("serve", "--config", config, "--listen", "0.0.0.0:0")
    assert_one_line_error(result, 2, "not a loopback address", "--tls-cert", "--insecure-http")
    result = run_cli("serve", "--config", config, "--tls-cert", "cert.pem")
    assert_one_line_error(result, 2, "--tls-key")
    result = run_cli("serve", "--config", config, "--listen", "localhost:80")
    assert_one_line_error(result, 2, "not an IP address")
    monkeypatch.delenv("SAFEHOLD_PASSPHRASE")
    result = run_cli("serve", "--config", config, "--allow-actions")
    assert_one_line_error(result, 2, "--passphrase-file", "SAFEHOLD_PASSPHRASE")
    result = run_cli("daemon", "--config", config, "--dashboard", "10.1.2.3:8731")
    assert_one_line_error(result, 2, "not a loopback address")


def test_listings_are_read_again_only_after_the_ttl(
    platforms: Platforms, monkeypatch: pytest.MonkeyPatch
):
    from safehold.repo.repository import Repository
    from safehold.web.data import RepositoryView

    listed = []
    original = Repository.snapshot_names
    monkeypatch.setattr(
        Repository, "snapshot_names", lambda self: listed.append(1) or original(self)
    )
    now = [1000.0]
    view = RepositoryView(
        str(platforms.repos[1]), lambda: PASSPHRASE.encode(), ttl=10.0, clock=lambda: now[0]
    )
    first = view.documents()
    now[0] += 9.9
    assert view.documents() is first and len(listed) == 1
    now[0] += 0.2
    assert view.documents() is first and len(listed) == 2  # listed again, nothing new
    view.close()
