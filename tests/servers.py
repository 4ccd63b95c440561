"""Real throwaway servers for the source tests: PostgreSQL, MariaDB and OpenSSH on 127.0.0.1.

Each is a context manager that starts the server on a free port in a temporary directory,
yields how to reach it, and stops it (and removes the directory) afterwards. Missing binaries
raise :class:`Unavailable`, which the fixtures in ``sources_conftest`` turn into a skip.
Servers are tuned to be light (small buffers, no fsync): other work shares the machine.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from safehold.ops.scratch_servers import free_port, port_open

PG_PASSWORD = "pg s3cret 'quoted' $x"
MARIADB_PASSWORD = 'maria s3cret "quoted" $x'
START_TIMEOUT = 60.0


class Unavailable(Exception):
    """A server cannot be started here (binary missing, or not running as root)."""


def serve(factory):  # type: ignore[no-untyped-def]
    """Yields the server started by ``factory`` (a context manager factory) for a pytest
    fixture, or skips the test with the reason if the server cannot run here."""
    import pytest

    try:
        manager = factory()
        server = manager.__enter__()
    except Unavailable as reason:
        if os.environ.get("CI"):  # CI installs every server: a skip there would hide a gap
            pytest.fail(f"CI needs this server: {reason}")
        pytest.skip(str(reason))
    try:
        yield server
    finally:
        manager.__exit__(None, None, None)


def wait_for_port(
    port: int, process: subprocess.Popen | None = None, log: Path | None = None
) -> None:
    """Waits until 127.0.0.1:port accepts connections. Raises RuntimeError (with the log's
    tail) if the process exits first or START_TIMEOUT passes."""
    if not port_open(port, process, START_TIMEOUT):
        tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
        raise RuntimeError(f"server on port {port} did not start:\n{tail}")


def _need(*paths: str) -> None:
    for path in paths:
        if not (os.path.exists(path) or shutil.which(path)):
            raise Unavailable(f"{path} is not installed")


def _run(command: list[str], **kwargs: object) -> str:
    """Runs a setup command; raises RuntimeError with its output if it fails."""
    result = subprocess.run(command, check=False, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(f"{command[0]} failed: {result.stdout[-1500:]}{result.stderr[-1500:]}")
    return result.stdout


# --- PostgreSQL --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    password: str
    bin_dir: str
    directory: Path

    def psql(self, sql: str, database: str = "postgres", *, socket: bool = False) -> str:
        """Runs ``sql`` with psql (unaligned, tuples only, stopping at the first error) as the
        server's user; over TCP with the password, or with ``socket`` over its Unix socket
        (trusted, as inside a postgres container). Returns stdout."""
        host = str(self.directory) if socket else self.host
        return subprocess.run(
            [f"{self.bin_dir}/psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", host]
            + ["-p", str(self.port), "-U", self.user, "-d", database, "-c", sql],
            check=True,
            text=True,
            capture_output=True,
            env={**os.environ, "PGPASSWORD": self.password},
        ).stdout

    def component(self, **extra: object) -> dict:
        """Returns a postgres component dict reaching this server over TCP with the password."""
        return {
            "type": "postgres",
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "bin_dir": self.bin_dir,
            **extra,
        }


def _postgres_bin() -> str:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if not found:
        raise Unavailable("PostgreSQL server binaries (initdb) are not installed")
    return str(Path(found[-1]).parent)


def _unprivileged_user() -> str:
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise Unavailable("no 'postgres' or 'nobody' user to run initdb as")


@contextmanager
def postgres_server(user: str = "backup", password: str = PG_PASSWORD) -> Iterator[PostgresServer]:
    """Starts a PostgreSQL cluster on 127.0.0.1 (scram password auth on TCP, trust on its
    socket) as an unprivileged system user; yields a PostgresServer; stops it afterwards."""
    bin_dir = _postgres_bin()
    _need("runuser")
    runas = _unprivileged_user()
    entry = pwd.getpwnam(runas)
    directory = Path(tempfile.mkdtemp(prefix="safehold-pg-"))
    os.chown(directory, entry.pw_uid, entry.pw_gid)
    pwfile = directory / "pwfile"
    pwfile.write_text(password + "\n")
    os.chown(pwfile, entry.pw_uid, entry.pw_gid)
    as_user = ["runuser", "-u", runas, "--"]
    data, port = directory / "data", free_port()
    options = (
        f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off "
        "-c shared_buffers=16MB -c max_connections=30 -c full_page_writes=off"
    )
    try:
        _run(
            [
                *as_user,
                f"{bin_dir}/initdb",
                "-D",
                str(data),
                "-U",
                user,
                f"--pwfile={pwfile}",
                "-E",
                "UTF8",
                "--no-locale",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
            ],
            cwd=directory,
        )
        _run(
            [
                *as_user,
                f"{bin_dir}/pg_ctl",
                "-D",
                str(data),
                "-l",
                str(directory / "log"),
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
            ],
            cwd=directory,
        )
        yield PostgresServer("127.0.0.1", port, user, password, bin_dir, directory)
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                [*as_user, f"{bin_dir}/pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop"],
                check=False,
                capture_output=True,
                cwd=directory,
            )
        shutil.rmtree(directory, ignore_errors=True)


# --- MariaDB -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MariadbServer:
    host: str
    port: int
    user: str
    password: str
    socket: str
    directory: Path

    def component(self, **extra: object) -> dict:
        """Returns a mysql component dict reaching this server over TCP with the password."""
        return {
            "type": "mysql",
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            **extra,
        }


@contextmanager
def mariadb_server(
    user: str = "backup", password: str = MARIADB_PASSWORD
) -> Iterator[MariadbServer]:
    """Starts mariadbd on 127.0.0.1 with a user holding all privileges (password auth);
    yields a MariadbServer; shuts it down afterwards."""
    _need("/usr/sbin/mariadbd", "mariadb-install-db", "mariadb")
    if os.geteuid() != 0:
        raise Unavailable("the MariaDB fixture runs mariadbd --user=root")
    directory = Path(tempfile.mkdtemp(prefix="safehold-maria-"))
    data, sock, log, port = directory / "data", directory / "sock", directory / "log", free_port()
    process = None
    try:
        _run(
            [
                "mariadb-install-db",
                "--no-defaults",
                f"--datadir={data}",
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            cwd=directory,
        )
        process = subprocess.Popen(
            [
                "/usr/sbin/mariadbd",
                "--no-defaults",
                f"--datadir={data}",
                f"--socket={sock}",
                f"--port={port}",
                "--bind-address=127.0.0.1",
                "--user=root",
                "--skip-name-resolve",
                f"--log-error={log}",
                f"--pid-file={directory / 'pid'}",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=32M",
                "--innodb-log-file-size=16M",
                "--innodb-flush-log-at-trx-commit=0",
                "--performance-schema=OFF",
                "--innodb-doublewrite=0",
                "--max-connections=30",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(port, process, log)
        quoted = password.replace("\\", "\\\\").replace("'", "\\'")
        sql = (
            f"CREATE USER '{user}'@'%' IDENTIFIED BY '{quoted}'; "
            f"GRANT ALL PRIVILEGES ON *.* TO '{user}'@'%' WITH GRANT OPTION;"
        )
        _run(["mariadb", "--no-defaults", f"--socket={sock}", "-uroot", "-e", sql])
        yield MariadbServer("127.0.0.1", port, user, password, str(sock), directory)
    finally:
        if process is not None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(directory, ignore_errors=True)


# --- OpenSSH -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SshServer:
    host: str
    port: int
    user: str
    identity: str
    known_hosts: str
    directory: Path

    def via(self, multiplexed: bool = False) -> dict:
        """Returns the ``via`` mapping of a component that runs its commands over this sshd;
        multiplexed: through the shared connection of start_master() (much faster)."""
        via = {
            "exec": f"ssh://{self.user}@{self.host}:{self.port}",
            "identity": self.identity,
            "known_hosts": self.known_hosts,
            "strict_host_key_checking": "yes",
        }
        if multiplexed:
            via["options"] = [f"ControlPath={self.directory}/master"]
        return via

    def start_master(self) -> None:
        """Opens a background master connection that multiplexed targets share; it ends
        with the server."""
        from safehold.sources.targets import target_from_via

        if (self.directory / "master").exists():
            return  # a second master would not take the socket and would linger after the test

        command = target_from_via(self.via(multiplexed=True)).command(["true"])
        master = [command[0], "-M", "-N", "-f", *command[1:-3], command[-3]]
        subprocess.run(
            master,
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
        )


_SSHD_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {dir}/host_key
PidFile {dir}/sshd.pid
AuthorizedKeysFile {dir}/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
X11Forwarding no
PrintMotd no
MaxStartups 30:30:60
MaxSessions 30
LogLevel ERROR
"""


@contextmanager
def _sshd(prefix: str, extra_config: str = "") -> Iterator[tuple[Path, int]]:
    """Starts sshd on 127.0.0.1 in the foreground, in a new temporary directory holding a
    host key, a client key (``client_key``) authorized for the current user and the config
    (plus ``extra_config``); yields (directory, port) and stops it and removes all after."""
    _need("/usr/sbin/sshd", "ssh-keygen")
    if os.geteuid() != 0:
        raise Unavailable("sshd on a test port needs root to log users in")
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    port, process = free_port(), None
    try:
        for name in ("host_key", "client_key"):
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(directory / name)])
        shutil.copy(directory / "client_key.pub", directory / "authorized_keys")
        config = directory / "sshd_config"
        config.write_text(_SSHD_CONFIG.format(port=port, dir=directory) + extra_config)
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation directory
        log = directory / "log"
        with open(log, "wb") as log_file:
            process = subprocess.Popen(
                ["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], stdout=log_file, stderr=log_file
            )
        wait_for_port(port, process, log)
        yield directory, port
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)


def _known_host(directory: Path, port: int) -> str:
    """The known_hosts line for the test sshd's host key."""
    host_public = (directory / "host_key.pub").read_text().split()[:2]
    return f"[127.0.0.1]:{port} {' '.join(host_public)}\n"


@contextmanager
def ssh_server() -> Iterator[SshServer]:
    """Starts sshd on 127.0.0.1 (foreground, a temporary host key, one authorized key for
    the current user); yields an SshServer with the client key and known_hosts file."""
    _need("ssh")
    with _sshd("safehold-sshd-") as (directory, port):
        (directory / "known_hosts").write_text(_known_host(directory, port))
        try:
            yield SshServer(
                "127.0.0.1",
                port,
                pwd.getpwuid(os.geteuid()).pw_name,
                str(directory / "client_key"),
                str(directory / "known_hosts"),
                directory,
            )
        finally:
            if (directory / "master").exists():  # sshd's SIGTERM spares open sessions: end it
                subprocess.run(
                    ["ssh", "-o", f"ControlPath={directory}/master", "-O", "exit", "127.0.0.1"],
                    check=False,
                    capture_output=True,
                    timeout=30,
                )


# --- sftp (sshd with internal-sftp) and S3 (moto's server mode) ---------------------------------
# Used by tests/remote_conftest.py and benchmarks/remote.py.

BUCKET = "safehold-test"


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
    """The test sshd with ``Subsystem sftp internal-sftp`` (plus ``sftp_options``, e.g.
    ``-P remove,rmdir`` for an account that cannot delete), and a HOME whose ~/.ssh reaches it."""
    with _sshd("safehold-sftp-", f"Subsystem sftp internal-sftp {sftp_options}\n") as (
        directory,
        port,
    ):
        home = directory / "home"
        (home / ".ssh").mkdir(parents=True)
        (home / ".ssh" / "known_hosts").write_text(_known_host(directory, port))
        (home / ".ssh" / "config").write_text(
            f"Host 127.0.0.1\n    IdentityFile {directory / 'client_key'}\n"
        )
        user = pwd.getpwuid(os.geteuid()).pw_name
        yield SftpServer("127.0.0.1", port, user, home, directory)


# S3 ----------------------------------------------------------------------------------------------


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
        raise Unavailable(f"moto[server] is not installed ({error})") from None
    directory = Path(tempfile.mkdtemp(prefix="safehold-moto-"))
    port, log = free_port(), directory / "log"
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log_file,
            stderr=log_file,
        )
    try:
        wait_for_port(port, process, log)
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
