"""safehold daemon, safehold schedule show|install|run: a platform's jobs, unattended.

The jobs run the same code as the commands: backup = `backup --config` (load_for_backup,
run_backup, finish_backup in platform_commands.py), prune = `forget --config --prune`,
check = `check [--read-data-subset]`, copy = `copy` to each `copies:` repository, drill =
`drill --config`. The scheduling is safehold/ops/daemon.py and safehold/ops/schedule.py.
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
from safehold.cli.platform_commands import (
    _copy_passphrase,
    finish_backup,
    load_for_backup,
    notify_unusable_config,
    open_for_platform,
    run_backup,
)
from safehold.errors import EXIT_PARTIAL, IntegrityError, SafeholdError, UsageError
from safehold.ops.daemon import Daemon, JobOutcome, MetricsServer, Stop, check_loopback
from safehold.ops.notify import Event, notify
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
from safehold.platform.config import ConfigError, Platform, load_platform
from safehold.platform.schema import JOBS

clock: Callable[[], float] = time.time  # tests move it
sleep: Callable[[float], None] = time.sleep  # and this


def _namespace(args: argparse.Namespace, **extra: object) -> argparse.Namespace:
    """The options the command functions read, for a job run from the schedule."""
    values = {
        "config": args.config,
        "repo": getattr(args, "repo", None),
        "passphrase_file": getattr(args, "passphrase_file", None),
        "json": False,
        "quiet": True,
        "tag": [],
        "lock_wait": 60.0,
    }
    return argparse.Namespace(**(values | extra))


def _state_dir(args: argparse.Namespace) -> Path:
    return Path(args.state_dir) if getattr(args, "state_dir", None) else default_state_dir()


def _load(args: argparse.Namespace) -> Platform:
    try:
        return load_platform(args.config)
    except ConfigError as error:
        notify_unusable_config(args.config, error)
        raise


# ------------------------------------------------------------------ the jobs


def _notified(platform: Platform, job: str, body: Callable[[], JobOutcome]) -> JobOutcome:
    """Run a job that does not notify by itself (copy, prune, check): its outcome, or its
    error, goes to the `notify:` channels that want it."""
    try:
        outcome = body()
    except SafeholdError as error:
        notify(platform.notify, Event(platform.name, job, "failed", "", problems=[str(error)]))
        raise
    problems = [outcome.message] if outcome.status != "ok" and outcome.message else []
    notify(platform.notify, Event(platform.name, job, outcome.status, "", problems=problems))
    return outcome


def backup_job(args: argparse.Namespace) -> JobOutcome:
    options = _namespace(args)
    platform = load_for_backup(options)
    names = {f"{c.name}: {c.type} (": c.name for c in platform.components}

    def step(text: str) -> None:
        component = next((n for prefix, n in names.items() if text.startswith(prefix)), None)
        if component:
            log.event("component-start", f"backup: {text}", job="backup", component=component)
        else:
            log.event("backup-step", f"backup: {text}", job="backup")

    result, copy_problems = run_backup(options, platform, step)
    for c in result.components:
        log.event(
            "component-end",
            f"backup: {c.name}: {c.status}, {c.bytes} bytes in {c.duration:.1f} s"
            + (f": {c.error}" if c.error else ""),
            level="info" if c.status == "ok" else "error",
            job="backup",
            component=c.name,
            status=c.status,
            bytes=c.bytes,
            duration=c.duration,
        )
    code = finish_backup(platform, result, copy_problems)  # notifies; raises if it failed
    status = "partial" if code == EXIT_PARTIAL else "ok"
    message = f"snapshot {result.snapshot_id[:8]}" + (
        f"; {copy_problems[0]}" if copy_problems else ""
    )
    return JobOutcome(status, message, {"snapshot_id": result.snapshot_id})


def copy_job(args: argparse.Namespace) -> JobOutcome:
    from safehold.ops.copy import copy_snapshots
    from safehold.repo.repository import Repository
    from safehold.repo.snapshots import list_snapshots

    platform = _load(args)

    def body() -> JobOutcome:
        problems, copied = [], 0
        with open_for_platform(_namespace(args), platform.repository) as repository:
            ids = [
                s["id"] for s in list_snapshots(repository) if s.get("platform") == platform.name
            ]
            for target in platform.copies:
                try:
                    secret = _copy_passphrase(target, os.environ)
                    with Repository.open(target["to"], secret) as other:
                        copied += len(copy_snapshots(repository, other, ids).copied)
                except SafeholdError as error:
                    problems.append(f"the copy to {target['to']} failed: {error}")
        if problems:
            return JobOutcome("failed", "; ".join(problems))
        return JobOutcome("ok", f"{copied} snapshot(s) copied", {"copied": copied})

    return _notified(platform, "copy", body)


def prune_job(args: argparse.Namespace) -> JobOutcome:
    from safehold.cli.prune import prune_repository
    from safehold.ops.forget import forget
    from safehold.ops.retention import parse_group_by, require_policy

    platform = _load(args)

    def body() -> JobOutcome:
        settings = dict(platform.retention)
        fields = parse_group_by(settings.pop("group_by", None))
        options = _namespace(
            args, max_unused="5%", max_repack_size=None, dry_run=False, keep_young="4h"
        )
        with open_for_platform(options, platform.repository) as repository:
            result = forget(
                repository,
                require_policy(settings),
                now=time.time(),
                group_by=fields,
                platform=platform.name,
                wait=options.lock_wait,
            )
            plan = prune_repository(repository, options, show=False)
        freed = plan.done.get("bytes_deleted", 0) - plan.done.get("bytes_written", 0)
        return JobOutcome(
            "ok",
            f"{len(result.removed)} snapshot(s) forgotten, {freed} bytes freed",
            {"forgotten": len(result.removed), "bytes_freed": freed},
        )

    return _notified(platform, "prune", body)


def check_job(args: argparse.Namespace) -> JobOutcome:
    from safehold.ops.check import check

    platform = _load(args)
    subset = Schedule.from_section(platform.schedule).read_data_subset
    state = State(_state_dir(args), platform.name)

    def body() -> JobOutcome:
        began = time.time()
        with open_for_platform(_namespace(args), platform.repository) as repository:
            with repository.lock():
                result = check(repository, read_data=False, subset=subset)
        state.record_check(
            {
                "time": began,
                "duration": time.time() - began,
                "ok": result.ok,
                "complete": result.complete,
                "read_data_subset": subset,
                "errors": len(result.errors),
                "first_errors": result.errors[:5],
                "snapshots": result.snapshots,
                "packs": result.packs,
                "packs_read": result.packs_read,
            }
        )
        if not result.ok:
            for error in result.errors:
                print(f"safehold: check: {error}", file=sys.stderr)
            raise IntegrityError(f"check found {len(result.errors)} problem(s): {result.errors[0]}")
        read = f", {result.packs_read} pack(s) read ({subset})" if subset else ""
        return JobOutcome("ok", f"no errors in {result.snapshots} snapshot(s){read}")

    return _notified(platform, "check", body)


def drill_job(args: argparse.Namespace) -> JobOutcome:
    from safehold.cli.drill import drill_command
    from safehold.ops.drill import DrillFailed

    options = _namespace(args, snapshot=None, random_older=False, scratch=None)
    platform = _load(args)
    try:
        drill_command(options)  # notifies its result; DrillFailed (25) if it failed
    except DrillFailed:
        raise
    except SafeholdError as error:  # it could not run: notify that too
        notify(platform.notify, Event(platform.name, "drill", "failed", "", problems=[str(error)]))
        raise
    return JobOutcome("ok", "drill passed")


RUNNERS = {
    "backup": backup_job,
    "copy": copy_job,
    "prune": prune_job,
    "check": check_job,
    "drill": drill_job,
}


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
    from safehold.cli.status import collect, policy_for
    from safehold.ops.status import metrics_text

    platform = load_platform(args.config)
    statuses, totals = collect(_namespace(args), policy_for(platform, None, None, 3, now), now)
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
