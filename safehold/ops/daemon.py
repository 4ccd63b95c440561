"""The scheduler loop of `safehold daemon`: one platform's jobs, one at a time, on time.

The jobs themselves are callables handed in by the command line (safehold/cli/schedule.py),
which runs the same code as `safehold backup --config`, `forget --prune`, `check`, `copy` and
`drill`. Here: when each job is due (safehold/ops/schedule.py's Planner: cron + jitter,
catch-up once after downtime), no overlap (a single loop; a job due while another runs
waits; the platform's job lock keeps out a second daemon or a cron job), a failing job never
stops the loop, one log event per start and end, a hook after each job (metrics refresh), and
a stop request (SIGTERM, SIGINT: ``request_stop``) honoured between jobs or by aborting the
running one (the job's own cleanups start services again). Clock, sleep and randomness are
injectable, so tests drive days of schedule in milliseconds.
"""

from __future__ import annotations

import http.server
import ipaddress
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from safehold.errors import SafeholdError, UsageError
from safehold.ops.schedule import FileLock, Planner, ScheduleBusy

MAX_NAP = 60.0  # never sleep longer than this at once: stop requests and clock jumps are seen
BUSY_RETRY = 60.0  # a job whose lock another process holds is tried again this much later


@dataclass
class JobOutcome:
    """What a job runner returns: ``ok``, ``partial`` or ``failed``, and a one-line message."""

    status: str = "ok"
    message: str = ""
    details: dict = field(default_factory=dict)


EventSink = Callable[..., None]  # log(event, message, **fields)


class Stop(BaseException):
    """Raised inside the loop (by a signal handler) to stop the daemon."""


class Daemon:
    def __init__(
        self,
        planner: Planner,
        runners: dict[str, Callable[[], JobOutcome]],
        *,
        log: EventSink,
        job_lock: FileLock | None = None,
        after_job: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.planner = planner
        self.runners = runners
        self.log = log
        self.job_lock = job_lock
        self.after_job = after_job
        self.clock = clock
        self.sleep = sleep
        self.stopping = False
        self.running: str | None = None
        self.history: list[dict] = []  # every run: job, due, start, end, status (tests read it)

    def request_stop(self) -> None:
        self.stopping = True

    def run(self, until: float | None = None, max_runs: int | None = None) -> int:
        """Run jobs as they come due until a stop request (or ``until`` / ``max_runs``,
        for tests). Returns the number of jobs run."""
        runs = 0
        jobs = self.planner.schedule.jobs
        self.log(
            "daemon-start",
            f"daemon started: {', '.join(jobs) if jobs else 'no jobs scheduled'}",
            jobs=jobs,
        )
        try:
            while not self.stopping:
                if max_runs is not None and runs >= max_runs:
                    break
                now = self.clock()
                planned = self.planner.next(now)
                if planned is None:
                    self.log("daemon-idle", "nothing is scheduled: add a schedule: section")
                    break
                if until is not None and planned.at > until:
                    break
                if planned.at > now:
                    self.sleep(min(planned.at - now, MAX_NAP))
                    continue
                self._run_one(planned)
                runs += 1
        except Stop:
            self.stopping = True
        self.log("daemon-stop", f"daemon stopped after {runs} job(s)", runs=runs)
        return runs

    def _run_one(self, planned) -> None:  # type: ignore[no-untyped-def]
        job = planned.job
        start = self.clock()
        if self.job_lock is not None:
            try:
                self.job_lock.acquire(f"{job} not started")
            except ScheduleBusy as error:
                self.log(
                    "job-busy",
                    f"{error}; trying again in {BUSY_RETRY:.0f} s",
                    job=job,
                    level="warning",
                )
                planned.at = start + BUSY_RETRY
                return
        self.running = job
        self.planner.state.record_start(job, start)
        self.log(
            "job-start",
            f"{job} started"
            + (" (catching up a run missed while down)" if planned.catch_up else ""),
            job=job,
            due=planned.due,
            catch_up=planned.catch_up,
        )
        outcome = JobOutcome("failed", "interrupted")
        try:
            outcome = self._call(job)
        finally:
            end = self.clock()
            self.running = None
            if self.job_lock is not None:
                self.job_lock.release()
            self.planner.state.record_end(job, end, outcome.status, outcome.message)
            self.history.append(
                {
                    "job": job,
                    "due": planned.due,
                    "at": planned.at,
                    "start": start,
                    "end": end,
                    "status": outcome.status,
                    "catch_up": planned.catch_up,
                }
            )
            self.log(
                "job-end",
                f"{job} {outcome.status} after {end - start:.1f} s"
                + (f": {outcome.message}" if outcome.message else ""),
                job=job,
                status=outcome.status,
                duration=end - start,
                level="info"
                if outcome.status == "ok"
                else ("warning" if outcome.status == "partial" else "error"),
                **outcome.details,
            )
            self.planner.done(job, end)
        if self.after_job is not None:
            try:
                self.after_job()
            except Exception as error:  # metrics are a view: never stop the daemon for them
                self.log("metrics-failed", f"metrics not refreshed: {error}", level="warning")

    def _call(self, job: str) -> JobOutcome:
        try:
            return self.runners[job]()
        except SafeholdError as error:
            return JobOutcome("failed", str(error), {"exit_code": error.exit_code})
        except Exception as error:  # a bug in one job must not stop the others
            self.log("internal-error", traceback.format_exc().rstrip(), job=job, level="error")
            return JobOutcome("failed", f"internal error (a bug): {error!r}")


# ------------------------------------------------------------------ /metrics


def check_loopback(address: str) -> str:
    """Only loopback addresses: the metrics reveal platform names and sizes."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        raise UsageError(f"--metrics-address: {address!r} is not an IP address") from None
    if not parsed.is_loopback:
        raise UsageError(
            f"--metrics-address: {address} is not a loopback address: /metrics is served on "
            "127.0.0.1 or ::1 only (put a reverse proxy in front to publish it)"
        )
    return address


class MetricsServer:
    """GET /metrics answers the last text given to ``update`` (Prometheus text format)."""

    def __init__(self, address: str, port: int) -> None:
        check_loopback(address)
        self.text = ""
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404, "only /metrics is here")
                    return
                body = server.text.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        family = http.server.ThreadingHTTPServer
        if ":" in address:
            import socket

            class Server6(http.server.ThreadingHTTPServer):
                address_family = socket.AF_INET6

            family = Server6
        self.httpd = family((address, port), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.2,), daemon=True)
        self.thread.start()

    def update(self, text: str) -> None:
        self.text = text

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
