"""``safehold serve`` and ``safehold daemon --dashboard``: start the dashboard's HTTP server.

The server is cheroot (CherryPy's threaded WSGI server, with TLS through Python's ssl
module); the application is app.py. ``start`` is what the commands and the tests call.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from safehold.cli.session import passphrase
from safehold.errors import SafeholdError, UsageError
from safehold.web.app import Dashboard, Settings
from safehold.web.data import DEFAULT_TTL, Sources, documents_or_error, load_sources
from safehold.web.jobs import JobQueue
from safehold.web.security import (
    Guard,
    Listen,
    load_token,
    parse_listen,
    require_safe_transport,
)


@dataclass
class Running:
    """A started server: its URL (without the token) and how to stop it."""

    url: str
    port: int
    server: object
    thread: threading.Thread
    sources: Sources
    jobs: JobQueue | None

    def stop(self) -> None:
        self.server.stop()  # type: ignore[attr-defined]
        self.thread.join(10)
        if self.jobs is not None:
            self.jobs.close()
        self.sources.close()


def start(
    sources: Sources,
    token: str,
    listen: Listen,
    *,
    allow_actions: bool = False,
    tls: tuple[str, str] | None = None,
    passphrase_file: str | None = None,
    threads: int = 8,
) -> Running:
    """Bind and serve in a background thread. Raises UsageError if the address is taken."""
    from cheroot import wsgi

    jobs = None
    if allow_actions:

        def after(job: object) -> None:
            for entry in sources.platforms:
                entry.view.invalidate()

        jobs = JobQueue(
            state_dir=str(sources.state_dir) if sources.state_dir else None,
            passphrase_file=passphrase_file,
            after=after,
        )
    application = Dashboard(sources, Guard(token), Settings(allow_actions, tls is not None), jobs)

    class Server(wsgi.Server):
        def error_log(self, msg: str = "", level: int = 20, traceback: bool = False) -> None:
            error = sys.exc_info()[1]
            if isinstance(error, SafeholdError):  # e.g. a damaged blob in the middle of a
                # download: the connection is cut short (the client sees it), one line here
                print(f"safehold: dashboard: {error}", file=sys.stderr)
                return
            super().error_log(msg, level, traceback)

    server = Server((listen.host, listen.port), application, numthreads=threads)
    server.server_name = "safehold"
    if tls is not None:
        from cheroot.ssl.builtin import BuiltinSSLAdapter

        try:
            server.ssl_adapter = BuiltinSSLAdapter(*tls)
        except (OSError, ValueError) as error:
            raise UsageError(f"--tls-cert/--tls-key: {error}") from None
    try:
        server.prepare()
    except OSError as error:
        if jobs is not None:
            jobs.close()
        raise UsageError(f"cannot listen on {listen.host}:{listen.port}: {error}") from None
    port = server.bind_addr[1]
    thread = threading.Thread(target=server.serve, name="dashboard", daemon=True)
    thread.start()
    threading.Thread(target=_warm_up, args=(sources,), name="dashboard-warm", daemon=True).start()
    return Running(listen.url(port, tls is not None), port, server, thread, sources, jobs)


def _warm_up(sources: Sources) -> None:
    """Read every repository's documents once, so that the first page view is fast too (a
    repository that cannot be read shows its error on the page instead)."""
    for view in sources.views:
        documents_or_error(view)


def _tls(args: argparse.Namespace) -> tuple[str, str] | None:
    cert, key = getattr(args, "tls_cert", None), getattr(args, "tls_key", None)
    if bool(cert) != bool(key):
        raise UsageError("give both --tls-cert and --tls-key, or neither")
    return (cert, key) if cert else None


def _state_dir(args: argparse.Namespace) -> Path | None:
    return Path(args.state_dir) if getattr(args, "state_dir", None) else None


def serve_command(args: argparse.Namespace) -> int:
    """`safehold serve --config A.yaml [--config B.yaml ...]`: until SIGTERM or Ctrl-C."""
    listen = parse_listen(args.listen)
    tls = _tls(args)
    require_safe_transport(listen, tls is not None, args.insecure_http)
    if args.allow_actions and not (args.passphrase_file or "SAFEHOLD_PASSPHRASE" in os.environ):
        raise UsageError(
            "--allow-actions: the jobs run as `safehold schedule run` and need the passphrase "
            "without a prompt: give --passphrase-file or set SAFEHOLD_PASSPHRASE"
        )
    secret = passphrase(args)  # asked once, here (a prompt only on a terminal)
    sources = load_sources(
        args.config,
        lambda: secret,
        repo=args.repo,
        state_dir=_state_dir(args),
        ttl=DEFAULT_TTL,
    )
    token, made = load_token(args.token_file, _state_dir(args))
    running = start(
        sources,
        token,
        listen,
        allow_actions=args.allow_actions,
        tls=tls,
        passphrase_file=args.passphrase_file,
    )
    where = args.token_file or "the local state directory"
    print(
        f"safehold: dashboard of {', '.join(p.platform.name for p in sources.platforms)} "
        f"on {running.url}"
        + (" (actions allowed)" if args.allow_actions else " (read-only)")
        + ("; a new token was made" if made else f"; token from {where}"),
        file=sys.stderr,
    )
    print(f"{running.url}?token={token}", flush=True)  # the one place the token is shown
    _wait_for_signal()
    running.stop()
    return 0


def _wait_for_signal() -> None:
    stop = threading.Event()

    def handler(_signum: int, _frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stop.wait(1.0):
            pass
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def daemon_with_dashboard(args: argparse.Namespace) -> int:
    """`safehold daemon --config FILE --dashboard ADDRESS:PORT`: the daemon, and a read-only
    dashboard of its platform on a loopback address (the token from the state directory)."""
    from safehold.cli.schedule import daemon_command

    listen = parse_listen(args.dashboard, "--dashboard")
    if not listen.loopback:
        raise UsageError(
            f"--dashboard {listen.host} is not a loopback address: the daemon serves the "
            "dashboard on 127.0.0.1 or ::1 only (use safehold serve --tls-cert ... to publish it)"
        )
    secret = passphrase(args)
    sources = load_sources(
        [args.config], lambda: secret, repo=args.repo, state_dir=_state_dir(args)
    )
    token, _made = load_token(None, _state_dir(args))
    running = start(sources, token, listen)
    print(
        f"safehold: dashboard on {running.url} (token in the dashboard-token file of the "
        "state directory)",
        file=sys.stderr,
    )
    try:
        return daemon_command(args)
    finally:
        running.stop()
