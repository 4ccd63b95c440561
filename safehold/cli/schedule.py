"""safehold daemon, safehold schedule show|install|run: a platform's jobs, unattended.

The jobs run the same code as the commands (safehold/ops/platform_jobs.py, with typed
options: JobContext): backup = `backup --config`, prune = `forget --config --prune`, check =
`check [--read-data-subset]`, copy = `copy` to each `copies:` repository, drill = `drill
--config`. The scheduling is safehold/ops/daemon.py and safehold/ops/schedule.py.
Options are declared in main.py (the parser must not import this module).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from safehold.cli import log
from safehold.cli.platform_commands import access
from safehold.errors import EXIT_PARTIAL, SafeholdError, UsageError
from safehold.ops.daemon import Daemon, JobOutcome, MetricsServer, Stop, check_loopback
from safehold.ops.platform_jobs import JOBS as JOB_BODIES
from safehold.ops.platform_jobs import JobContext, load_notified
from safehold.ops.schedule import (
    DESCRIPTIONS,
    FileLock,
    Planner,
    Schedule,
    State,
    crontab_lines,
    daemon_lock_path,
    default_state_dir,
    job_lock_path,
    next_runs,
    systemd_units,
    write_units,
)
from safehold.platform.config import Platform, load_platform
from safehold.platform.schema import JOBS

clock: Callable[[], float] = time.time  # tests move it
sleep: Callable[[float], None] = time.sleep  # and this


def _state_dir(args: argparse.Namespace) -> Path:
    return Path(args.state_dir) if getattr(args, "state_dir", None) else default_state_dir()


def _load(args: argparse.Namespace) -> Platform:
    return load_notified(args.config)


# ------------------------------------------------------------------ the jobs


def _context(args: argparse.Namespace) -> JobContext:
    """The typed options of a job, from the command line's: nothing below sees ``args``."""
    return JobContext(
        access=access(args),
        state_dir=_state_dir(args),
        report=lambda line: print(line, file=sys.stderr),
        event=log.event,
    )


def _runner(job: str) -> Callable[[argparse.Namespace], JobOutcome]:
    def run(args: argparse.Namespace) -> JobOutcome:
        return JOB_BODIES[job](_load(args), _context(args))

    run.__name__ = f"{job}_job"
    return run


# The job bodies are safehold.ops.platform_jobs (the same functions the commands use).
RUNNERS = {job: _runner(job) for job in JOBS}


# ------------------------------------------------------------------ commands


def schedule_run(args: argparse.Namespace) -> int:
    """`safehold schedule run JOB --config FILE`: one job now, as the daemon runs it (what the
    systemd units and crontab lines call)."""
    platform = _load(args)
    state = State(_state_dir(args), platform.name)
    lock = FileLock(job_lock_path(_state_dir(args), platform.name))
    lock.acquire(f"{args.job} not started")
    try:
        began = clock()
        state.record_start(args.job, began)
        log.event("job-start", f"{args.job} started", job=args.job)
        try:
            outcome = RUNNERS[args.job](args)
        except SafeholdError as error:
            state.record_end(args.job, clock(), "failed", str(error))
            log.event(
                "job-end",
                f"{args.job} failed",
                level="error",
                job=args.job,
                status="failed",
                duration=clock() - began,
            )
            raise
        state.record_end(args.job, clock(), outcome.status, outcome.message)
        log.event(
            "job-end",
            f"{args.job} {outcome.status} after {clock() - began:.1f} s: {outcome.message}",
            job=args.job,
            status=outcome.status,
            duration=clock() - began,
            **outcome.details,
        )
    finally:
        lock.release()
    return EXIT_PARTIAL if outcome.status == "partial" else 0


def _schedule_of(platform: Platform) -> Schedule:
    schedule = Schedule.from_section(platform.schedule)
    if not schedule.jobs:
        raise UsageError(
            f"{platform.source} has no schedule: add a `schedule:` section "
            "(e.g. `schedule: {backup: '30 2 * * *'}`)"
        )
    return schedule


def schedule_show(args: argparse.Namespace) -> int:
    from datetime import datetime

    from safehold.cli import render

    platform = load_platform(args.config)
    schedule = _schedule_of(platform)
    now = clock()
    state = State(_state_dir(args), platform.name)
    runs = next_runs(schedule, now, args.count)
    if args.json:
        render.print_json(
            {
                "platform": platform.name,
                "jitter": schedule.jitter,
                "jobs": {
                    job: {
                        "cron": schedule.crons[job].text,
                        "next": runs[job],
                        "last": state.data["jobs"].get(job),
                    }
                    for job in schedule.jobs
                },
            }
        )
        return 0

    def local(stamp: float) -> str:
        return datetime.fromtimestamp(stamp).astimezone().strftime("%Y-%m-%d %H:%M %Z").strip()

    rows = []
    for job in schedule.jobs:
        last = state.data["jobs"].get(job) or {}
        previous = (
            f"{local(last['last_start'])} {last.get('last_status', 'running')}"
            if "last_start" in last
            else "never (here)"
        )
        rows.append(
            [job, schedule.crons[job].text, ", ".join(local(t) for t in runs[job]), previous]
        )
    print(
        f"schedule of platform {platform.name}"
        + (f" (each run up to {schedule.jitter} s later: jitter)" if schedule.jitter else "")
    )
    print(render.table(["job", "cron", "next runs", "last run"], rows))
    return 0


def schedule_install(args: argparse.Namespace) -> int:
    platform = load_platform(args.config)
    schedule = _schedule_of(platform)
    config = str(Path(args.config).resolve())
    program = _program()
    state_dir = str(Path(args.state_dir).resolve()) if args.state_dir else None
    if args.cron:
        text = crontab_lines(
            schedule,
            platform.name,
            config,
            program=program,
            state_dir=state_dir or str(default_state_dir()),
        )
        if args.output:
            path = Path(args.output) / f"safehold-{platform.name}"
            write_units_text(path, text, args.force)
            print(
                f"wrote {path}; install it with: crontab -l | cat - {path} | crontab -  "
                f"(or copy it to /etc/cron.d/ adding the user field)",
                file=sys.stderr,
            )
        else:
            sys.stdout.write(text)
        return 0
    units, notes = systemd_units(
        schedule, platform.name, config, program=program, state_dir=state_dir
    )
    for note in notes:
        print(f"safehold: note: {note}", file=sys.stderr)
    directory = Path(args.output or "/etc/systemd/system")
    written = write_units(units, directory, args.force)
    for path in written:
        print(f"wrote {path}")
    timers = " ".join(u.name for u in units if u.name.endswith(".timer"))
    print("then run (safehold does not run systemctl itself):")
    print("  systemctl daemon-reload")
    print(f"  systemctl enable --now {timers}")
    print(f"  systemctl list-timers 'safehold-{platform.name}-*'")
    return 0


def _program() -> str:
    """The absolute path of this safehold (systemd wants one), else just the name."""
    beside = Path(sys.executable).parent / "safehold"
    return shutil.which("safehold") or (str(beside) if beside.exists() else "safehold")


def write_units_text(path: Path, text: str, force: bool) -> None:
    if path.exists() and not force:
        raise UsageError(f"{path} exists: refusing to overwrite it (pass --force to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


# ------------------------------------------------------------------ the daemon


def build_daemon(
    args: argparse.Namespace,
    *,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    rng=None,  # type: ignore[no-untyped-def]
    runners: dict | None = None,
) -> tuple[Daemon, FileLock, MetricsServer | None]:
    """Everything `safehold daemon` runs, with the clock, sleep and randomness injectable."""
    import random

    platform = _load(args)
    schedule = _schedule_of(platform)  # no schedule: a usage error, not an idle daemon
    state_dir = _state_dir(args)
    if args.metrics_port is not None:
        check_loopback(args.metrics_address)
    daemon_lock = FileLock(daemon_lock_path(state_dir, platform.name))
    daemon_lock.acquire(f"daemon of platform {platform.name} not started")
    server = None
    try:
        if args.metrics_port is not None:
            server = MetricsServer(args.metrics_address, args.metrics_port)
    except OSError as error:
        daemon_lock.release()
        raise UsageError(f"--metrics-port {args.metrics_port}: {error.strerror}") from None
    chosen = runners or RUNNERS
    planner = Planner(schedule, State(state_dir, platform.name), rng or random.Random())

    def refresh() -> None:
        if server is not None:
            server.update(metrics_for(args, clock()))

    def logger(name: str, message: str, **fields: object) -> None:
        log.event(name, message, platform=platform.name, **fields)  # type: ignore[arg-type]

    daemon = Daemon(
        planner,
        {job: (lambda job=job: chosen[job](args)) for job in schedule.jobs},
        log=logger,
        job_lock=FileLock(job_lock_path(state_dir, platform.name)),
        after_job=refresh if server is not None else None,
        clock=clock,
        sleep=sleep,
    )
    if server is not None:
        try:
            refresh()
        except SafeholdError as error:
            logger("metrics-failed", f"metrics not ready: {error}", level="warning")
        logger(
            "metrics",
            f"serving /metrics on http://{args.metrics_address}:{server.port}/metrics",
            port=server.port,
        )
    return daemon, daemon_lock, server


def metrics_for(args: argparse.Namespace, now: float) -> str:
    from safehold.cli.status import policy_for
    from safehold.ops.platform_jobs import collect_status
    from safehold.ops.status import metrics_text

    platform = load_platform(args.config)
    policy = policy_for(platform, None, None, 3, now)
    statuses, totals = collect_status(platform, access(args), _state_dir(args), policy, now)
    return metrics_text(statuses, totals)


def daemon_command(args: argparse.Namespace) -> int:
    """`safehold daemon --config FILE`: run the schedule until SIGTERM or SIGINT."""
    daemon, daemon_lock, server = build_daemon(args, clock=clock, sleep=sleep)
    received: list[int] = []

    def handler(signum: int, _frame: object) -> None:
        received.append(signum)
        daemon.request_stop()
        raise Stop(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    reader, writer = os.pipe()
    os.set_blocking(writer, False)
    os.set_blocking(reader, False)
    old_wakeup = signal.set_wakeup_fd(writer)  # sees signals even while a job's handler is active

    def stop_seen() -> None:
        try:
            data = os.read(reader, 64)
        except BlockingIOError:
            return
        if {signal.SIGTERM, signal.SIGINT} & set(data):
            daemon.request_stop()

    after = daemon.after_job

    def after_job() -> None:
        stop_seen()
        if after is not None:
            after()

    daemon.after_job = after_job
    try:
        daemon.run()
    finally:
        signal.set_wakeup_fd(old_wakeup)
        os.close(reader)
        os.close(writer)
        for sig, old in previous.items():
            signal.signal(sig, old)
        if server is not None:
            server.close()
        daemon_lock.release()
    return 0


__all__ = ["DESCRIPTIONS", "JOBS", "RUNNERS"]
