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

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import servers
from servers import (  # the servers themselves live in servers.py (benchmarks/remote.py too)
    BUCKET,
    S3Server,
    SftpServer,
    moto_server_process,
    sftp_server_process,
)

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
FAST_RETRIES = RetryPolicy(attempts=3, first_delay=0.01, max_delay=0.05)


# ---------------------------------------------------------------------------------- sftp


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
