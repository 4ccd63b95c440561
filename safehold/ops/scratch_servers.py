"""Throwaway database servers for restore drills: PostgreSQL and MariaDB on 127.0.0.1.

Each is a context manager that starts a fresh server in a private directory below the drill's
scratch space, on a free loopback port, with a random password for its one superuser
(``safehold_drill``), and yields a :class:`ScratchServer`: the settings that the source modules
(``safehold.sources.postgres`` / ``.mysql``) take to reach it. Leaving the block always stops the
server and removes its directory, whatever happened inside (an error, Ctrl-C, or SIGTERM/SIGHUP
while ``safehold.platform.services.signals_raise`` is active); a second Ctrl-C during that
cleanup is ignored.

PostgreSQL runs ``initdb`` and ``pg_ctl`` as an unprivileged user (``postgres``, else
``nobody``) when safehold runs as root; MariaDB runs ``mariadb-install-db`` and ``mariadbd
--user=mysql`` (else ``nobody``). Both are tuned for a short life: no fsync, small buffers.
Servers run in their own session, so a Ctrl-C in the terminal reaches safehold only, which then
stops them in order.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from safehold.errors import SafeholdError
from safehold.secrecy import child_env

USER = "safehold_drill"
START_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0


class ScratchServerError(SafeholdError):
    """{message}"""

    exit_code = 25


@dataclass
class ScratchServer:
    """A running throwaway server: how to reach it, and what it is."""

    kind: str  # "postgres" or "mysql"
    version: str
    directory: str
    port: int
    settings: dict = field(repr=False)  # host, port, user, password (, bin_dir) for sources
    pid: int | None = None

    def describe(self) -> str:
        """Returns a phrase such as "throwaway PostgreSQL 15.8 on 127.0.0.1:41234"."""
        name = "PostgreSQL" if self.kind == "postgres" else "MariaDB"
        return f"throwaway {name} {self.version} on 127.0.0.1:{self.port}"


# ---------------------------------------------------------------- signals and cleanup


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def shielded() -> Iterator[None]:
    """Within the block, Ctrl-C, SIGTERM and SIGHUP are ignored: a cleanup runs to its end."""
    if not _main_thread():
        yield
        return
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _private_directory(parent: str, prefix: str, owner: pwd.struct_passwd | None) -> str:
    """Creates a 0700 directory below parent, owned by owner (if given); returns its path.
    Raises ScratchServerError (the directory removed) if owner cannot reach it."""
    directory = tempfile.mkdtemp(prefix=prefix, dir=parent)
    if owner is None:
        return directory
    os.chown(directory, owner.pw_uid, owner.pw_gid)
    reach = subprocess.run(
        ["test", "-x", directory],
        user=owner.pw_uid,
        group=owner.pw_gid,
        extra_groups=[],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
    )
    if reach.returncode != 0:
        os.rmdir(directory)
        raise ScratchServerError(
            f"user {owner.pw_name} cannot reach {parent} (a directory above it is closed to "
            "others): choose a --scratch directory below one it can traverse, such as /var/tmp"
        )
    return directory


def open_to_group(scratch: str, owner: pwd.struct_passwd | None) -> None:
    """Lets owner's group traverse (not list) the scratch directory, so that a server running
    as owner reaches its own subdirectory; everybody else stays out (mode 0710)."""
    if owner is not None:
        os.chown(scratch, -1, owner.pw_gid)
        os.chmod(scratch, 0o710)


def unprivileged_user(*names: str) -> pwd.struct_passwd | None:
    """Returns the first existing user of names when running as root (None when not root:
    servers then run as the current user). Raises ScratchServerError if none exists."""
    if os.geteuid() != 0:
        return None
    for name in names:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise ScratchServerError(f"no {' or '.join(repr(n) for n in names)} user to run a server as")


def free_port() -> int:
    """Returns a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int, process: subprocess.Popen | None, timeout: float) -> bool:
    """Wait until 127.0.0.1:port accepts connections; False if ``process`` exits first or
    ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


def _wait_for_port(port: int, process: subprocess.Popen | None, log: str, what: str) -> None:
    if not port_open(port, process, START_TIMEOUT):
        raise ScratchServerError(f"the throwaway {what} did not start: {_tail(log)}")


def _tail(path: str, lines: int = 3) -> str:
    try:
        with open(path, errors="replace") as handle:
            text = [line.strip() for line in handle.read()[-4000:].splitlines() if line.strip()]
    except OSError:
        return "no log"
    return " / ".join(text[-lines:]) or "no log"


def _run(argv: list[str], what: str, user: pwd.struct_passwd | None, **kwargs: object) -> str:
    """Runs a setup command (as user, if given); ScratchServerError with its output tail."""
    ids = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}
    if "input" not in kwargs:
        kwargs["stdin"] = subprocess.DEVNULL
    kwargs.setdefault("env", child_env())
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            check=False,
            start_new_session=True,
            timeout=START_TIMEOUT,
            **ids,
            **kwargs,  # type: ignore[arg-type]
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ScratchServerError(f"{what}: {argv[0]}: {error}") from None
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        detail = " / ".join(lines[-3:]) or f"exit status {done.returncode}"
        raise ScratchServerError(f"{what}: {os.path.basename(argv[0])} failed: {detail}")
    return done.stdout


def _version(text: str) -> str:
    match = re.search(r"\d+(?:\.\d+)+", text)
    return match.group(0) if match else text.strip()


def alive(pid: int | None) -> bool:
    """True if a process with this id exists."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pid(path: str) -> int | None:
    try:
        with open(path) as handle:
            return int(handle.readline().strip())
    except (OSError, ValueError):
        return None


def _kill_and_wait(pid: int | None, timeout: float) -> None:
    """Sends SIGTERM, waits up to timeout seconds, then SIGKILL."""
    if not alive(pid):
        return
    os.kill(pid, signal.SIGTERM)  # type: ignore[arg-type]
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive(pid):
        os.kill(pid, signal.SIGKILL)  # type: ignore[arg-type]


# ---------------------------------------------------------------- PostgreSQL


def _major(bin_dir: str) -> int:
    match = re.search(r"(\d+)(?:\.\d+)?/bin/?$", bin_dir) or re.search(r"pgsql-?(\d+)", bin_dir)
    return int(match.group(1)) if match else 0


def postgres_bin_dirs(extra: list[str] | None = None) -> list[str]:
    """Returns directories holding initdb, pg_ctl and psql here (Debian, RHEL, PATH, extra)."""
    found = []
    candidates = [
        *(extra or []),
        *glob.glob("/usr/lib/postgresql/*/bin"),
        *glob.glob("/usr/pgsql-*/bin"),
    ]
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(os.path.dirname(os.path.realpath(on_path)))
    programs = ("initdb", "pg_ctl", "psql", "postgres")
    for directory in candidates:
        usable = all(os.access(os.path.join(directory, p), os.X_OK) for p in programs)
        if usable and directory not in found:
            found.append(directory)
    return found


def choose_postgres(major: int | None, extra: list[str] | None = None) -> str | None:
    """Returns the bin dir to use for a dump from server major version ``major``: the same
    major if installed, else the newest. None if PostgreSQL is not installed here."""
    dirs = postgres_bin_dirs(extra)
    if not dirs:
        return None
    same = [d for d in dirs if _major(d) == major]
    return same[0] if same else max(dirs, key=_major)


@contextmanager
def throwaway_postgres(scratch: str, bin_dir: str) -> Iterator[ScratchServer]:
    """Starts a PostgreSQL cluster from bin_dir below scratch; yields it; always removes it.
    Raises ScratchServerError if it cannot start."""
    owner = unprivileged_user("postgres", "nobody")
    open_to_group(scratch, owner)
    directory = _private_directory(scratch, "postgres-", owner)
    data, log = os.path.join(directory, "data"), os.path.join(directory, "log")
    password = secrets.token_urlsafe(24)
    pg_ctl = os.path.join(bin_dir, "pg_ctl")
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LC_ALL": "C",
        "HOME": directory,
    }
    try:
        pwfile = os.path.join(directory, "pwfile")
        with open(os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
            handle.write(password + "\n")
        if owner is not None:
            os.chown(pwfile, owner.pw_uid, owner.pw_gid)
        initdb = [
            os.path.join(bin_dir, "initdb"),
            "-D",
            data,
            "-U",
            USER,
            f"--pwfile={pwfile}",
            "-E",
            "UTF8",
            "--no-locale",
            "--auth=scram-sha-256",
            "--no-sync",
        ]
        _run(initdb, "initdb of the throwaway PostgreSQL", owner, cwd=directory, env=environment)
        os.unlink(pwfile)
        port = free_port()
        options = (
            f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c full_page_writes=off -c synchronous_commit=off -c max_connections=20 "
            "-c shared_buffers=32MB -c maintenance_work_mem=128MB"
        )
        start = [pg_ctl, "-D", data, "-l", log, "-o", options, "-w", "-t", "120", "start"]
        try:
            _run(start, "starting the throwaway PostgreSQL", owner, cwd=directory, env=environment)
        except ScratchServerError as error:
            raise ScratchServerError(f"{error}: {_tail(log)}") from None
        version = _version(_run([os.path.join(bin_dir, "postgres"), "--version"], "postgres", None))
        settings = {
            "host": "127.0.0.1",
            "port": port,
            "user": USER,
            "password": password,
            "bin_dir": bin_dir,
        }
        pid = _read_pid(os.path.join(data, "postmaster.pid"))
        server = ScratchServer("postgres", version, directory, port, settings, pid)
        yield server
    finally:
        with shielded():
            pid = _read_pid(os.path.join(data, "postmaster.pid"))
            if pid is not None:
                stop = [pg_ctl, "-D", data, "-m", "fast", "-w", "-t", "30", "stop"]
                try:
                    _run(stop, "stopping the throwaway PostgreSQL", owner, cwd=directory)
                except ScratchServerError:
                    pass
                _kill_and_wait(pid, STOP_TIMEOUT)
            shutil.rmtree(directory, ignore_errors=True)


# ---------------------------------------------------------------- MariaDB


def mariadb_programs() -> tuple[str, str] | None:
    """Returns (install-db program, server program) if MariaDB is installed here, else None.
    (MySQL 8 has no install-db program: it is not used for throwaway servers.)"""
    path = os.environ.get("PATH", "") + ":/usr/sbin:/usr/libexec:/usr/local/sbin"
    install = shutil.which("mariadb-install-db", path=path) or shutil.which(
        "mysql_install_db", path=path
    )
    daemon = shutil.which("mariadbd", path=path) or shutil.which("mysqld", path=path)
    client = shutil.which("mariadb", path=path) or shutil.which("mysql", path=path)
    return (install, daemon) if install and daemon and client else None


@contextmanager
def throwaway_mariadb(scratch: str, programs: tuple[str, str]) -> Iterator[ScratchServer]:
    """Starts a MariaDB server below scratch; yields it; always removes it.
    Raises ScratchServerError if it cannot start."""
    install, daemon = programs
    owner = unprivileged_user("mysql", "nobody")
    open_to_group(scratch, owner)
    directory = _private_directory(scratch, "mariadb-", owner)
    data, log = os.path.join(directory, "data"), os.path.join(directory, "log")
    sock, pid_file = os.path.join(directory, "sock"), os.path.join(directory, "pid")
    as_user = [f"--user={owner.pw_name}"] if owner else []
    me = pwd.getpwuid(os.geteuid()).pw_name
    process = None
    try:
        _run(
            [
                install,
                "--no-defaults",
                f"--datadir={data}",
                *as_user,
                "--auth-root-authentication-method=socket",
                f"--auth-root-socket-user={me}",
                "--skip-test-db",
            ],
            "installing the throwaway MariaDB",
            None,
            cwd=directory,
        )
        port = free_port()
        with open(os.devnull, "wb") as null:
            process = subprocess.Popen(
                [
                    daemon,
                    "--no-defaults",
                    f"--datadir={data}",
                    f"--socket={sock}",
                    f"--port={port}",
                    "--bind-address=127.0.0.1",
                    *as_user,
                    "--skip-name-resolve",
                    f"--log-error={log}",
                    f"--pid-file={pid_file}",
                    "--skip-log-bin",
                    "--innodb-buffer-pool-size=64M",
                    "--innodb-flush-log-at-trx-commit=0",
                    "--innodb-doublewrite=0",
                    "--performance-schema=OFF",
                    "--max-connections=20",
                ],
                stdin=subprocess.DEVNULL,
                stdout=null,
                stderr=null,
                start_new_session=True,
                cwd=directory,
                env=child_env(),
            )
        _wait_for_port(port, process, log, "MariaDB")
        password = secrets.token_urlsafe(24)
        sql = (
            f"CREATE USER '{USER}'@'127.0.0.1' IDENTIFIED BY '{password}'; "
            f"GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'127.0.0.1' WITH GRANT OPTION; "
            "SELECT VERSION();"
        )
        client = shutil.which("mariadb") or shutil.which("mysql") or "mariadb"
        version = _run(
            [client, "--no-defaults", f"--socket={sock}", "-uroot", "-N", "-B"],
            "setting up the throwaway MariaDB",
            None,
            input=sql,
        )
        version = _version(version.split()[-1])
        settings = {"host": "127.0.0.1", "port": port, "user": USER, "password": password}
        yield ScratchServer("mysql", version, directory, port, settings, process.pid)
    finally:
        with shielded():
            if process is not None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            shutil.rmtree(directory, ignore_errors=True)
