"""Fixtures for the source tests: real servers (session-scoped) and execution targets.

Loaded from tests/conftest.py. Every server fixture skips, with the reason, where its binaries
are missing. ``exec_target`` runs a test twice: on the local target and over ssh to a real
sshd on 127.0.0.1 (the same tools, reached through ssh).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import servers

from safehold.sources.targets import LocalTarget, Target, target_from_via

__all__ = ["exec_target", "maria_server", "pg_server", "ssh_target", "sshd_server"]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[servers.PostgresServer]:
    """A PostgreSQL server on 127.0.0.1, password auth for its superuser ``backup``."""
    yield from servers.serve(servers.postgres_server)


@pytest.fixture(scope="session")
def maria_server() -> Iterator[servers.MariadbServer]:
    """A MariaDB server on 127.0.0.1, password auth for user ``backup`` (all privileges)."""
    yield from servers.serve(servers.mariadb_server)


@pytest.fixture(scope="session")
def sshd_server() -> Iterator[servers.SshServer]:
    """An sshd on 127.0.0.1 accepting a temporary key for the current user."""
    yield from servers.serve(servers.ssh_server)


@pytest.fixture(scope="session")
def ssh_target(sshd_server: servers.SshServer) -> Target:
    """The ssh target reaching sshd_server (strict host key checking, its own known_hosts),
    multiplexed over one master connection so that each command costs no new handshake."""
    sshd_server.start_master()
    return target_from_via(sshd_server.via(multiplexed=True))


@pytest.fixture(params=["local", "ssh"])
def exec_target(request: pytest.FixtureRequest) -> Target:
    """The local target, then the ssh target: a test using it runs once through each."""
    if request.param == "local":
        return LocalTarget()
    return request.getfixturevalue("ssh_target")
