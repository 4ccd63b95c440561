"""`safehold serve` and `safehold daemon --dashboard` as the user starts them (child processes),
and serving over TLS."""

from __future__ import annotations

import datetime
import http.client
import http.cookiejar
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from safehold.web.data import load_sources
from safehold.web.security import Listen
from safehold.web.serve import start
from tests.conftest import (
    PASSPHRASE,
    blob_place,
    flip_byte,
    init_repository,
    mini_platform,
    run_cli,
    snapshot_entry,
)

pytestmark = pytest.mark.slow


def _platform(tmp_path: Path, **extra: object) -> Path:
    repo = init_repository(tmp_path / "repo")
    config = mini_platform(tmp_path / "p", repo, **extra)
    assert run_cli("backup", "--config", config, "--quiet").code == 0
    return config


def _spawn(*args: object) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "safehold.cli.main", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | {"PYTHONUNBUFFERED": "1"},
    )


def _stop(process: subprocess.Popen) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    try:
        _out, err = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return process.returncode, err


def test_serve_prints_the_ready_url_once_and_stops_on_sigterm(tmp_path: Path):
    config = _platform(tmp_path)
    state = tmp_path / "state"
    process = _spawn("serve", "--config", config, "--listen", "127.0.0.1:0", "--state-dir", state)
    try:
        url = process.stdout.readline().strip()  # type: ignore[union-attr]
        assert url.startswith("http://127.0.0.1:") and "?token=" in url
        token = url.split("?token=")[1]
        assert (state / "dashboard-token").read_text().strip() == token
        opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )
        with opener.open(url) as response:  # the cookie, then the page without the token
            page = response.read().decode()
            assert response.url == url.split("?")[0]
        assert 'data-platform="mini"' in page
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url.split("?")[0])
        assert refused.value.code == 401
    finally:
        code, err = _stop(process)
    assert code == 0, err
    assert token not in err and PASSPHRASE not in err
    assert "(read-only)" in err


def test_daemon_serves_the_dashboard_beside_its_jobs(tmp_path: Path):
    config = _platform(tmp_path, schedule={"backup": "0 3 1 1 *"})
    state = tmp_path / "state"
    process = _spawn(
        "daemon", "--config", config, "--dashboard", "127.0.0.1:0", "--state-dir", state
    )
    try:
        line = process.stderr.readline()  # type: ignore[union-attr]
        assert "dashboard on http://127.0.0.1:" in line, line
        base = line.split("dashboard on ")[1].split()[0]
        token = (state / "dashboard-token").read_text().strip()
        request = urllib.request.Request(
            base + "platform/mini", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request) as response:
            assert "<td>appdb</td>" in response.read().decode()
        action = urllib.request.Request(
            base + "platform/mini/action/backup", headers={"Authorization": f"Bearer {token}"}
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(action)
        assert refused.value.code == 403  # read-only
    finally:
        code, err = _stop(process)
    assert code == 0, err
    assert token not in err


def _self_signed(directory: Path) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert, key_path = directory / "cert.pem", directory / "key.pem"
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert), str(key_path)


def test_tls(tmp_path: Path):
    config = _platform(tmp_path)
    cert, key = _self_signed(tmp_path)
    sources = load_sources([str(config)], lambda: PASSPHRASE.encode(), state_dir=tmp_path)
    token = "tls-test-token-0123456789"
    running = start(sources, token, Listen("127.0.0.1", 0), tls=(cert, key))
    try:
        assert running.url.startswith("https://")
        context = ssl.create_default_context(cafile=cert)
        context.check_hostname = False
        handler = urllib.request.HTTPSHandler(context=context)

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
                return None

        opener = urllib.request.build_opener(handler, NoRedirect)
        with pytest.raises(urllib.error.HTTPError) as redirected:
            opener.open(f"{running.url}?token={token}")
        assert redirected.value.code == 303
        cookie = redirected.value.headers["Set-Cookie"]
        assert "Secure" in cookie and "HttpOnly" in cookie
        request = urllib.request.Request(running.url, headers={"Authorization": f"Bearer {token}"})
        with opener.open(request) as response:
            assert 'data-platform="mini"' in response.read().decode()
        plain = running.url.replace("https://", "http://")
        started = time.time()
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            urllib.request.urlopen(plain, timeout=5).read()
        assert time.time() - started < 5
    finally:
        running.stop()


def test_a_damaged_repository_gives_named_errors_not_traces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
):
    monkeypatch.setenv("SAFEHOLD_CACHE_DIR", "off")  # every tree read from the packs
    config = _platform(tmp_path)
    repo = tmp_path / "repo"
    data = tmp_path / "p" / "data"
    file_entry = snapshot_entry(repo, "latest", f"/data{data}/a.txt")
    directory = snapshot_entry(repo, "latest", f"/data{data}")
    sources = load_sources([str(config)], lambda: PASSPHRASE.encode(), state_dir=tmp_path)
    token = "damage-test-token-0123456789"
    running = start(sources, token, Listen("127.0.0.1", 0))
    headers = {"Authorization": f"Bearer {token}"}
    try:
        snapshot_id = sources.views[0].documents()[0][-1]["id"]
        base = f"{running.url}r/0/snapshot/{snapshot_id}"
        pack, offset, _length = blob_place(repo, file_entry["content"][0])
        flip_byte(pack, offset + 20)
        request = urllib.request.Request(f"{base}/download?path=/data{data}/a.txt", headers=headers)
        with pytest.raises((http.client.IncompleteRead, urllib.error.URLError, ConnectionError)):
            with urllib.request.urlopen(request) as response:
                response.read()
        pack, offset, _length = blob_place(repo, directory["subtree"])
        flip_byte(pack, offset + 20)
        for url in (f"{base}?path=/data{data}", f"{base}/download?path=/data{data}/a.txt"):
            with pytest.raises(urllib.error.HTTPError) as failed:
                urllib.request.urlopen(urllib.request.Request(url, headers=headers))
            assert failed.value.code == 500
            assert "integrity error" in failed.value.read().decode()
    finally:
        running.stop()
    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert err.count("safehold: dashboard:") == 3, err
