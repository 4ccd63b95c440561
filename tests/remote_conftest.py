"""Fixtures for the remote store tests: an sshd serving sftp and a moto S3 server, on 127.0.0.1.

Loaded from tests/conftest.py (``pytest_plugins``). Both servers are started once per session,
as subprocesses on free ports, and stopped at its end; a fixture skips with the reason where a
server cannot run here. ``store_location`` runs a test once per backend (local, sftp, s3) with a
fresh, empty location and the client environment each needs:

- sftp: HOME points at a directory whose ``.ssh/config`` names the test key and whose
  ``.ssh/known_hosts`` holds the server's host key: exactly what a user sets up;
- s3: ``AWS_ENDPOINT_URL`` and dummy ``AWS_*`` credentials for moto, one bucket per session,
  a fresh prefix per test.

Remote stores retry with a short policy here, so a test of a failure does not wait long.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import servers

import safehold.store
from safehold.store.wrappers import RetryPolicy

__all__ = [
    "backend_env",
    "remote_location",
    "s3_env",
    "s3_server",
    "sftp_env",
    "sftp_server",
    "store_location",
]

BACKENDS = ["local", "sftp", "s3"]
BUCKET = "safehold-test"
FAST_RETRIES = RetryPolicy(attempts=3, first_delay=0.01, max_delay=0.05)


# ---------------------------------------------------------------------------------- sftp


@dataclass(frozen=True)
class SftpServer:
    """An sshd with the sftp subsystem, and a HOME whose ~/.ssh reaches it with the test key."""

    host: str
    port: int
    user: str
    home: Path
    directory: Path

    def url(self, path: Path | str) -> str:
        """The sftp:// URL of an absolute path on this server."""
        return f"sftp://{self.user}@{self.host}:{self.port}{path}"


@contextmanager
def sftp_server_process(sftp_options: str = "") -> Iterator[SftpServer]:
    """servers.py's sshd set-up with ``Subsystem sftp internal-sftp`` added to its config
    (plus ``sftp_options``, e.g. ``-P remove,rmdir`` for an account that cannot delete)."""
    servers._need("/usr/sbin/sshd", "ssh-keygen")
    if os.geteuid() != 0:
        raise servers.Unavailable("sshd on a test port needs root to log users in")
    directory = Path(tempfile.mkdtemp(prefix="safehold-sftp-"))
    port, process = servers.free_port(), None
    try:
        for name in ("host_key", "client_key"):
            servers._run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(directory / name)]
            )
        shutil.copy(directory / "client_key.pub", directory / "authorized_keys")
        config = servers._SSHD_CONFIG.format(port=port, dir=directory)
        if "Subsystem" not in config:
            config += f"Subsystem sftp internal-sftp {sftp_options}\n"
        (directory / "sshd_config").write_text(config)
        home = directory / "home"
        (home / ".ssh").mkdir(parents=True)
        host_key = " ".join((directory / "host_key.pub").read_text().split()[:2])
        (home / ".ssh" / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key}\n")
        (home / ".ssh" / "config").write_text(
            f"Host 127.0.0.1\n    IdentityFile {directory / 'client_key'}\n"
        )
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        log = directory / "log"
        with open(log, "wb") as log_file:
            process = subprocess.Popen(
                ["/usr/sbin/sshd", "-D", "-e", "-f", str(directory / "sshd_config")],
                stdout=log_file,
                stderr=log_file,
            )
        servers.wait_for_port(port, process, log)
        user = pwd.getpwuid(os.geteuid()).pw_name
        yield SftpServer("127.0.0.1", port, user, home, directory)
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def sftp_server() -> Iterator[SftpServer]:
    """An sshd on 127.0.0.1 with the sftp subsystem, accepting the test key for root."""
    yield from servers.serve(sftp_server_process)


@pytest.fixture
def sftp_env(sftp_server: SftpServer, monkeypatch: pytest.MonkeyPatch) -> SftpServer:
    """The client side of sftp_server: HOME with its ~/.ssh, no agent, fast retries."""
    monkeypatch.setenv("HOME", str(sftp_server.home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.setattr(safehold.store, "RETRY_POLICY", FAST_RETRIES)
    return sftp_server


# ---------------------------------------------------------------------------------- s3


@dataclass(frozen=True)
class S3Server:
    """moto's S3 in server mode; ``endpoint`` is its URL."""

    endpoint: str
    process: subprocess.Popen

    def client(self):  # type: ignore[no-untyped-def]
        """A boto3 client for set-up and inspection (not the one under test)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )


@contextmanager
def moto_server_process() -> Iterator[S3Server]:
    """``python -m moto.server`` on a free port of 127.0.0.1 with one bucket; stopped after."""
    try:
        import moto.server  # noqa: F401
    except ImportError as error:
        raise servers.Unavailable(f"moto[server] is not installed ({error})") from None
    directory = Path(tempfile.mkdtemp(prefix="safehold-moto-"))
    port, log = servers.free_port(), directory / "log"
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log_file,
            stderr=log_file,
        )
    try:
        servers.wait_for_port(port, process, log)
        server = S3Server(f"http://127.0.0.1:{port}", process)
        server.client().create_bucket(Bucket=BUCKET)
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server on 127.0.0.1 with the bucket ``safehold-test``."""
    yield from servers.serve(moto_server_process)


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> S3Server:
    """The client environment for s3_server: endpoint, dummy credentials, fast retries."""
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setattr(safehold.store, "RETRY_POLICY", FAST_RETRIES)
    return s3_server


# ---------------------------------------------------------------------------------- any backend


@pytest.fixture
def remote_location(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str, str], str]:
    """Factory: ``remote_location(backend, name)`` is a fresh, empty location of that backend
    (its server started and its client environment set on first use)."""

    def make(backend: str, name: str = "repo") -> str:
        if backend == "local":
            return str(tmp_path / name)
        if backend == "sftp":
            server = request.getfixturevalue("sftp_env")
            return server.url(tmp_path / name)
        if backend == "s3":
            request.getfixturevalue("s3_env")
            return f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}/{name}"
        raise ValueError(backend)

    return make


@pytest.fixture(params=BACKENDS)
def backend_env(request: pytest.FixtureRequest) -> str:
    """Each backend name in turn, with its server running and client environment set."""
    if request.param == "sftp":
        request.getfixturevalue("sftp_env")
    elif request.param == "s3":
        request.getfixturevalue("s3_env")
    return request.param


@pytest.fixture
def store_location(backend_env: str, remote_location: Callable[[str, str], str]) -> str:
    """A fresh, empty repository location on each backend in turn (local, sftp, s3)."""
    return remote_location(backend_env, "repo")
