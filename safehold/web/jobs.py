"""The dashboard's actions ("back up now", "run a drill now"), queued and run one at a time.

The one place the dashboard starts a job. A job is what the scheduler runs: ``safehold
schedule run JOB --config FILE`` (cli/schedule.py ``schedule_run``), in a child process so
that a drill may set its signal handlers and a crash cannot take the dashboard with it. That
command takes the platform's job lock (ops/schedule.py ``job_lock_path``), the same flock the
daemon and the crontab lines take; while another job holds it (exit 14), the queued job waits
and tries again. The child inherits this process's environment (SAFEHOLD_PASSPHRASE, or
the --passphrase-file given to serve); nothing secret is put on its command line.
"""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

ACTIONS = {"backup": "back up now", "drill": "run a drill now"}
BUSY = 14  # ScheduleBusy: another job holds the platform's job lock
RETRY_SECONDS = 15.0


@dataclass
class Job:
    """One queued action and what became of it."""

    platform: str
    job: str
    config: str
    queued: float
    status: str = "queued"  # queued, waiting (lock held elsewhere), running, ok, partial, failed
    started: float | None = None
    ended: float | None = None
    message: str = ""
    number: int = 0


def command_for(job: Job, state_dir: str | None, passphrase_file: str | None) -> list[str]:
    """The command line of a job: the scheduler's own entry point."""
    command = [sys.executable, "-m", "safehold.cli.main", "schedule", "run", job.job]
    command += ["--config", job.config]
    if state_dir:
        command += ["--state-dir", state_dir]
    if passphrase_file:
        command += ["--passphrase-file", passphrase_file]
    return command


@dataclass
class JobQueue:
    """A queue with one worker thread; ``after`` is called after each job (cache refresh)."""

    state_dir: str | None = None
    passphrase_file: str | None = None
    after: Callable[[Job], None] | None = None
    retry_seconds: float = RETRY_SECONDS
    jobs: list[Job] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="dashboard-jobs", daemon=True)
        self._thread.start()

    def submit(self, platform: str, job: str, config: str) -> Job:
        """Queue a job (``job`` in ACTIONS) unless the same one is already queued or running;
        returns the queued (or the pending) one."""
        with self._lock:
            for pending in self.jobs:
                if (pending.platform, pending.job) == (platform, job) and pending.ended is None:
                    return pending
            entry = Job(platform, job, config, time.time(), number=len(self.jobs) + 1)
            self.jobs.append(entry)
        self._queue.put(entry)
        return entry

    def of(self, platform: str) -> list[Job]:
        """This platform's jobs, newest first."""
        with self._lock:
            return [j for j in reversed(self.jobs) if j.platform == platform]

    def _work(self) -> None:
        while not self._stop.is_set():
            job = self._queue.get()
            if job is None:
                return
            self._run(job)
            if self.after is not None:
                self.after(job)

    def _run(self, job: Job) -> None:
        command = command_for(job, self.state_dir, self.passphrase_file)
        while True:
            job.status, job.started = "running", time.time()
            result = subprocess.run(
                command, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
            )
            if result.returncode != BUSY or self._stop.is_set():
                break
            job.status = "waiting"
            job.message = "another job of this platform is running: waiting for its lock"
            if self._stop.wait(self.retry_seconds):
                break
        job.ended = time.time()
        job.status = {0: "ok", 3: "partial"}.get(result.returncode, "failed")
        lines = [line for line in result.stderr.splitlines() if line.startswith("safehold:")]
        job.message = lines[-1].removeprefix("safehold:").strip() if lines else ""
        if job.status == "failed" and not job.message:
            job.message = f"exit code {result.returncode}"

    def close(self) -> None:
        self._stop.set()
        self._queue.put(None)
