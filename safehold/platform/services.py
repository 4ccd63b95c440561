"""Stopping and starting a platform's services for the cold phase of a backup or a restore.

``stopped(...)`` is a context manager: whatever happens inside it (an error, Ctrl-C, SIGTERM
from systemd or cron), the services it stopped are started again, in reverse order, with
retries; if they still do not start, the error says so in capitals and names the command to
run by hand. The time between the first stop and the last start is the measured downtime.
"""

from __future__ import annotations

import shlex
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from safehold.errors import SafeholdError


class ServiceError(SafeholdError):
    """{message}"""

    exit_code = 22


class ServiceTimeout(ServiceError):
    """{message}"""


class Runner(Protocol):
    def run(self, argv: list[str], timeout: float | None = None) -> str: ...


@dataclass
class Downtime:
    """What the cold phase did; filled in as it goes."""

    stopped: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    seconds: float = 0.0


COMPOSE_COMMANDS = ("docker compose", "docker-compose", "podman compose")
_DETECT_COMPOSE = (
    " ".join(
        f"{command} version >/dev/null 2>&1 && {{ echo '{command}'; exit 0; }};"
        for command in COMPOSE_COMMANDS
    )
    + " exit 127"
)
_detected: dict[object, str] = {}


def detect_compose(runner: Runner) -> str:
    """Given a runner on the compose host, return the first of COMPOSE_COMMANDS that works
    there (``docker compose version`` and so on), remembered per host. Raises ServiceError
    if none does."""
    key = getattr(runner, "target", None)
    if key is not None and key in _detected:
        return _detected[key]
    try:
        found = runner.run(["sh", "-c", _DETECT_COMPOSE], timeout=60).strip()
    except ServiceError:
        found = ""
    if found not in COMPOSE_COMMANDS:
        raise ServiceError(
            f"no compose command works here (tried {', '.join(COMPOSE_COMMANDS)}): install "
            "one or set services.compose_command"
        )
    if key is not None:
        _detected[key] = found
    return found


def compose_command(services: dict, runner: Runner) -> str:
    """services.compose_command, or the one detected through runner when it is ``auto``."""
    configured = services.get("compose_command") or "auto"
    return detect_compose(runner) if configured == "auto" else configured


def _compose_base(services: dict) -> list[str]:
    configured = services.get("compose_command") or "auto"
    base = shlex.split("docker compose" if configured == "auto" else configured)
    if services.get("project_dir"):
        base += ["--project-directory", services["project_dir"]]
    if services.get("file"):
        base += ["-f", services["file"]]
    return base


def _kubectl_base(services: dict) -> list[str]:
    base = shlex.split(services.get("kubectl_command") or "kubectl")
    if services.get("context"):
        base += ["--context", services["context"]]
    return base + ["-n", services.get("namespace", "default")]


def stop_commands(
    services: dict, replicas: dict[str, str] | None = None
) -> list[tuple[str, list[str]]]:
    """(what, argv) pairs that stop the services, in order."""
    control, names = services["control"], list(services.get("stop", []))
    if control == "compose":
        return [(name, _compose_base(services) + ["stop", name]) for name in names]
    if control == "systemd":
        return [(name, ["systemctl", "stop", name]) for name in names]
    if control == "kubernetes":
        base = _kubectl_base(services)
        return [(name, base + ["scale", name, "--replicas=0"]) for name in names]
    return [("services", ["sh", "-c", services["stop_command"]])]


def start_commands(
    services: dict, replicas: dict[str, str] | None = None
) -> list[tuple[str, list[str]]]:
    """(what, argv) pairs that start the services again, in reverse stop order."""
    control, names = services["control"], list(reversed(services.get("stop", [])))
    if control == "compose":
        return [(name, _compose_base(services) + ["start", name]) for name in names]
    if control == "systemd":
        return [(name, ["systemctl", "start", name]) for name in names]
    if control == "kubernetes":
        base = _kubectl_base(services)
        return [
            (name, base + ["scale", name, f"--replicas={(replicas or {}).get(name, '1')}"])
            for name in names
        ]
    return [("services", ["sh", "-c", services["start_command"]])]


def replica_queries(services: dict) -> list[tuple[str, list[str]]]:
    """kubernetes: the commands that read each workload's replica count before scaling to 0."""
    if services["control"] != "kubernetes":
        return []
    base = _kubectl_base(services)
    return [
        (name, base + ["get", name, "-o", "jsonpath={.spec.replicas}"])
        for name in services.get("stop", [])
    ]


class Terminated(BaseException):
    """Raised while :func:`signals_raise` is active when SIGTERM or SIGHUP arrives."""


@contextmanager
def signals_raise() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise :class:`Terminated`, so that cleanups (starting
    services again, removing throwaway servers) run. Outside the main thread, where handlers
    cannot be installed, it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        raise Terminated(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _start_all(
    runner: Runner,
    commands: list[tuple[str, list[str]]],
    timeout: float,
    downtime: Downtime,
    log: Callable[[str], None],
    sleep: Callable[[float], None],
) -> None:
    failed = []
    for what, argv in commands:
        for attempt in range(3):
            try:
                runner.run(argv, timeout=timeout)
                downtime.started.append(what)
                log(f"started {what}")
                break
            except SafeholdError as error:
                log(f"starting {what} failed (attempt {attempt + 1} of 3): {error}")
                sleep(2.0 * (attempt + 1))
        else:
            failed.append(shlex.join(argv))
    if failed:
        raise ServiceError("SERVICES NOT STARTED AGAIN: run by hand: " + "; ".join(failed))


@contextmanager
def stopped(
    services: dict,
    runner: Runner,
    *,
    log: Callable[[str], None] = lambda text: None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] | None = None,
) -> Iterator[Downtime]:
    """Stop the services, yield, and always start again what was stopped (``sleep``: between
    tries to start, default time.sleep)."""
    sleep = sleep or time.sleep
    timeout = float(services.get("timeout", 300))
    downtime = Downtime()
    if services["control"] == "compose":
        services = {**services, "compose_command": compose_command(services, runner)}
    replicas = {
        name: runner.run(argv, timeout=timeout).strip() or "1"
        for name, argv in replica_queries(services)
    }
    began = clock()
    stop = stop_commands(services, replicas)
    start = dict(start_commands(services, replicas))
    try:
        with signals_raise():
            for what, argv in stop:
                downtime.stopped.append(what)  # before running: a half-done stop is undone too
                log(f"stopping {what}")
                try:
                    runner.run(argv, timeout=timeout)
                except ServiceTimeout:
                    raise
                except ServiceError as error:
                    # It said it did not stop: it is running; starting it would only repeat the
                    # same failure and hide this one. Nothing is copied cold.
                    downtime.stopped.remove(what)
                    raise ServiceError(
                        f"stopping {what} failed, so nothing was copied cold: {error}"
                    ) from None
            yield downtime
    except Terminated as signal_name:
        raise ServiceError(
            f"terminated by {signal_name} during the cold phase; services were started again"
        ) from None
    finally:
        to_start = [(what, start[what]) for what in start if what in downtime.stopped]
        try:
            _start_all(runner, to_start, timeout, downtime, log, sleep)
        finally:
            downtime.seconds = clock() - began
