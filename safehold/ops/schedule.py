"""Schedules: the `schedule:` section of a platform file, the local state of runs, what is due
when, and the same schedule written as systemd timers or crontab lines.

Times are POSIX seconds; the caller passes ``now`` (the daemon's injectable clock). Cron
expressions are in local time (safehold/platform/cron.py). docs/operations.md "Schedules".

State: one JSON file per platform, ``<state dir>/schedule-<platform>.json`` (default state dir
``~/.cache/safehold``), holding per job the time of its last planned run ("baseline": the next
run is the first cron time after it), the last start, end, status and message, and the
result of the last ``check``. It is written through a temporary file and a rename.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from safehold.errors import SafeholdError, UsageError
from safehold.localfile import write_atomically
from safehold.platform.cron import Cron, CronError, interval_estimate, parse
from safehold.platform.schema import JOBS
from safehold.repo.cache import cache_root

# what each job runs: the command behind `safehold schedule run JOB --config FILE`
DESCRIPTIONS = {
    "backup": "platform backup (safehold backup --config), with its copies",
    "copy": "copy missing snapshots to the copies: repositories",
    "prune": "forget by the retention: policy, then prune",
    "check": "check of the repository (read-data subset if configured)",
    "drill": "restore drill of the latest snapshot (safehold drill --config)",
}


class ScheduleBusy(SafeholdError):
    """{message}"""

    exit_code = 14


def default_state_dir() -> Path:
    return cache_root()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "platform"


@dataclass
class Schedule:
    """The parsed `schedule:` section."""

    crons: dict[str, Cron]
    jitter: int = 0
    read_data_subset: str | None = None

    @classmethod
    def from_section(cls, section: dict | None) -> Schedule:
        section = section or {}
        crons = {}
        for job in JOBS:
            if job in section:
                try:
                    crons[job] = parse(section[job])
                except CronError as error:  # validated with the file; kept for direct use
                    raise UsageError(
                        f"at schedule.{job}: {section[job]!r} is not a cron expression: {error}"
                    ) from None
        return cls(crons, int(section.get("jitter", 0)), section.get("check_read_data_subset"))

    @property
    def jobs(self) -> list[str]:
        return [job for job in JOBS if job in self.crons]

    def interval(self, job: str, now: float) -> float | None:
        """The longest gap between the next runs of ``job``, or None if it is not scheduled."""
        return interval_estimate(self.crons[job], now) if job in self.crons else None


# ------------------------------------------------------------------ state


class State:
    """The local record of runs of one platform's jobs (see the module docstring)."""

    def __init__(self, directory: Path, platform: str) -> None:
        self.directory = Path(directory)
        self.path = self.directory / f"schedule-{_safe(platform)}.json"
        self.data: dict = {"jobs": {}, "check": None}
        self.load()

    def load(self) -> None:
        try:
            loaded = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if isinstance(loaded, dict):
            self.data = {"jobs": dict(loaded.get("jobs") or {}), "check": loaded.get("check")}

    def save(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomically(self.path, json.dumps(self.data, indent=1, sort_keys=True))

    def job(self, name: str) -> dict:
        return self.data["jobs"].setdefault(name, {})

    # Each change re-reads the file first: a job (the check) records into it while the
    # daemon or `schedule run` holds its own State of the same platform.

    def record_start(self, name: str, when: float) -> None:
        self.load()
        self.job(name).update(baseline=when, last_start=when)
        self.save()

    def record_end(self, name: str, when: float, status: str, message: str = "") -> None:
        self.load()
        entry = self.job(name)
        entry.update(last_end=when, last_status=status, last_message=message)
        if status == "ok":
            entry["last_success"] = when
        self.save()

    def record_check(self, record: dict) -> None:
        self.load()
        self.data["check"] = record
        self.save()


def load_check_status(platform: str, state_dir: Path | None = None) -> dict | None:
    """The last recorded check of a platform's repository on this host, or None."""
    return State(state_dir or default_state_dir(), platform).data.get("check")


# ------------------------------------------------------------------ planning


@dataclass
class Planned:
    """The next run of one job: ``due`` is the cron time, ``at`` that plus the jitter."""

    job: str
    due: float
    at: float
    catch_up: bool = False


@dataclass
class Planner:
    """What runs next. On the first start of a job (no state) its baseline is ``now``: nothing
    missed is invented. A job whose next cron time after its baseline has already passed
    (the daemon was down) runs once, at once (plus jitter), not once per missed time."""

    schedule: Schedule
    state: State
    rng: random.Random = field(default_factory=random.Random)
    planned: dict[str, Planned] = field(default_factory=dict)

    def plan(self, job: str, now: float) -> Planned:
        self.state.load()
        entry = self.state.job(job)
        if "baseline" not in entry:
            entry["baseline"] = now
            self.state.save()
        due = self.schedule.crons[job].next_timestamp(entry["baseline"])
        catch_up = due < now
        start = now if catch_up else due
        delay = self.rng.uniform(0, self.schedule.jitter) if self.schedule.jitter else 0.0
        planned = Planned(job, due, start + delay, catch_up)
        self.planned[job] = planned
        return planned

    def next(self, now: float) -> Planned | None:
        """The earliest planned run (planning jobs not planned yet); ties go in JOBS order."""
        for job in self.schedule.jobs:
            if job not in self.planned:
                self.plan(job, now)
        if not self.planned:
            return None
        return min(self.planned.values(), key=lambda p: (p.at, JOBS.index(p.job)))

    def done(self, job: str, now: float) -> None:
        """After a run: the next one is the first cron time after ``now``."""
        self.planned.pop(job, None)
        self.plan(job, now)


def next_runs(schedule: Schedule, now: float, count: int = 3) -> dict[str, list[float]]:
    """The next ``count`` cron times of every scheduled job (without jitter)."""
    result = {}
    for job in schedule.jobs:
        times = [now]
        for _ in range(count):
            times.append(schedule.crons[job].next_timestamp(times[-1]))
        result[job] = times[1:]
    return result


# ------------------------------------------------------------------ locks


class FileLock:
    """An exclusive ``flock`` on a file: the same lock `flock -n FILE` takes in the crontab
    lines, so a daemon and a cron job never run a platform's jobs at the same time."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.handle: int | None = None

    def acquire(self, what: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        handle = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(handle, 64, 0).decode(errors="replace").strip() or "?"
            os.close(handle)
            raise ScheduleBusy(
                message=f"{what}: another safehold (pid {holder}) holds {self.path}"
            ) from None
        os.ftruncate(handle, 0)
        os.pwrite(handle, f"{os.getpid()}\n".encode(), 0)
        self.handle = handle

    def release(self) -> None:
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            os.close(self.handle)
            self.handle = None


def job_lock_path(state_dir: Path, platform: str) -> Path:
    return Path(state_dir) / f"jobs-{_safe(platform)}.lock"


def daemon_lock_path(state_dir: Path, platform: str) -> Path:
    return Path(state_dir) / f"daemon-{_safe(platform)}.lock"


# ------------------------------------------------------------------ installing


_SYSTEMD_SERVICE = """\
[Unit]
Description=safehold {job} of platform {platform}: {description}
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
ExecStart={command}
Nice=10
IOSchedulingClass=idle
"""

_SYSTEMD_TIMER = """\
[Unit]
Description=safehold {job} of platform {platform} ({expression})

[Timer]
OnCalendar={calendar}
RandomizedDelaySec={jitter}
Persistent=true

[Install]
WantedBy=timers.target
"""


@dataclass
class UnitFile:
    name: str
    text: str


def job_command(
    program: str, job: str, config: str, state_dir: str | None = None, log_json: bool = False
) -> list[str]:
    """The command a unit or crontab line runs for one job."""
    argv = [program] + (["--log-json"] if log_json else []) + ["schedule", "run", job]
    argv += ["--config", config]
    if state_dir:
        argv += ["--state-dir", state_dir]
    return argv


def systemd_units(
    schedule: Schedule,
    platform: str,
    config: str,
    *,
    program: str = "safehold",
    state_dir: str | None = None,
) -> tuple[list[UnitFile], list[str]]:
    """(unit files, notes): a .service and a .timer per job; a job whose expression has no
    OnCalendar equivalent gets a note instead."""
    units, notes = [], []
    for job in schedule.jobs:
        cron = schedule.crons[job]
        try:
            calendar = cron.on_calendar()
        except CronError as error:
            notes.append(f"{job}: not written: {error}; use --cron or the daemon for it")
            continue
        base = f"safehold-{_safe(platform)}-{job}"
        values = {
            "job": job,
            "platform": platform,
            "description": DESCRIPTIONS[job],
            "command": shlex.join(job_command(program, job, config, state_dir)),
            "expression": cron.text,
            "calendar": calendar,
            "jitter": f"{schedule.jitter}s",
        }
        units.append(UnitFile(f"{base}.service", _SYSTEMD_SERVICE.format(**values)))
        units.append(UnitFile(f"{base}.timer", _SYSTEMD_TIMER.format(**values)))
    return units, notes


def crontab_lines(
    schedule: Schedule,
    platform: str,
    config: str,
    *,
    program: str = "safehold",
    state_dir: str,
) -> str:
    """A crontab fragment: one line per job, under ``flock -n`` (a run still going makes the
    next one skip) and after a random sleep up to the jitter."""
    lock = str(job_lock_path(Path(state_dir), platform))
    lines = [
        f"# safehold schedule of platform {platform} ({config})",
        "# jobs of this platform never overlap: flock -n skips a run while another holds the lock",
    ]
    for job in schedule.jobs:
        delay = f"sleep $(shuf -i 0-{schedule.jitter} -n 1) && " if schedule.jitter else ""
        command = shlex.join(job_command(program, job, config, state_dir))
        run = f"{delay}flock -n {shlex.quote(lock)} {command}"
        lines.append(f"{schedule.crons[job].text} {run.replace('%', chr(92) + '%')}")
    return "\n".join(lines) + "\n"


def write_units(units: list[UnitFile], directory: Path, force: bool) -> list[Path]:
    """Write unit files; UsageError (nothing written) if one exists and not ``force``."""
    directory = Path(directory)
    existing = [directory / u.name for u in units if (directory / u.name).exists()]
    if existing and not force:
        raise UsageError(
            f"{existing[0]} exists: refusing to overwrite it (pass --force to replace "
            f"{len(existing)} existing unit file(s))"
        )
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for unit in units:
        path = directory / unit.name
        path.write_text(unit.text, encoding="utf-8")
        written.append(path)
    return written
