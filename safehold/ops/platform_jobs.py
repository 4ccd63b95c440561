"""A platform's operations behind typed options: backup with its off-site copies and failure
notification, drills, and the body of every scheduled job.

``safehold backup --config``, ``drill --config`` and the scheduler (``safehold daemon``,
``schedule run``) call these same functions; the command line only parses options into
:class:`RepositoryAccess`, :class:`BackupOptions`, :class:`DrillOptions` or
:class:`JobContext` and renders what comes back.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from safehold.errors import EXIT_PARTIAL, IntegrityError, SafeholdError, UsageError
from safehold.ops.copy import CopiedSnapshot, copy_snapshots
from safehold.ops.daemon import JobOutcome
from safehold.ops.drill import Drill, DrillFailed, DrillResult, choose_snapshot, save_drill
from safehold.ops.notify import Event, backup_event, drill_event, notify
from safehold.ops.schedule import Schedule, State
from safehold.ops.status import Policy
from safehold.platform.backup import PlatformBackup, PlatformBackupResult
from safehold.platform.config import ConfigError, Platform, load_platform, load_yaml
from safehold.repo.repository import Repository
from safehold.repo.snapshots import list_snapshots, platform_snapshots

EXIT_CRITICAL = 23
Lines = Callable[[str], None]


def _quiet(text: str) -> None:
    pass


class CriticalComponentFailed(SafeholdError):
    """backup saved, but critical component(s) failed: {names}; see the messages above"""

    exit_code = EXIT_CRITICAL


@dataclass(frozen=True)
class RepositoryAccess:
    """Which repository (``--repo``, else the platform file's, else $SAFEHOLD_REPO) and where
    its passphrase comes from (called only when needed)."""

    location: str | None
    passphrase: Callable[[], bytes] = field(repr=False)

    def open(self, platform_location: str | None) -> Repository:
        """Opens the chosen repository. Raises UsageError if none is named anywhere."""
        chosen = self.location or platform_location or os.environ.get("SAFEHOLD_REPO")
        if not chosen:
            raise UsageError(
                "no repository: set `repository:` in the platform file, pass --repo, "
                "or set SAFEHOLD_REPO"
            )
        return Repository.open(chosen, self.passphrase)


@dataclass
class BackupOptions:
    """A platform backup's options: extra tags, and where progress lines go."""

    tags: list[str] = field(default_factory=list)
    log: Lines = _quiet


@dataclass
class CopyOutcome:
    """What copying to the `copies:` repositories did: snapshots copied, one line per failure."""

    copied: list[CopiedSnapshot] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- backup and copies


def copy_passphrase(copy: Mapping, environment: Mapping[str, str]) -> bytes:
    """The passphrase of one `copies:` repository: its passphrase_file, its passphrase_env
    (default SAFEHOLD_TO_PASSPHRASE). Raises UsageError if there is none."""
    if copy.get("passphrase_file"):
        try:
            with open(copy["passphrase_file"], "rb") as handle:
                return handle.readline().rstrip(b"\r\n")
        except OSError as error:
            raise UsageError(f"cannot read {copy['passphrase_file']}: {error.strerror}") from None
    variable = copy.get("passphrase_env", "SAFEHOLD_TO_PASSPHRASE")
    if variable not in environment:
        raise UsageError(f"no passphrase for it: set {variable}")
    return environment[variable].encode()


def copy_offsite(
    repository: Repository, platform: Platform, snapshot_ids: list[str], log: Lines = _quiet
) -> CopyOutcome:
    """Copies ``snapshot_ids`` to every `copies:` repository (those already there are
    skipped); a failed target is a line in ``problems``, and the others are still tried."""
    outcome = CopyOutcome()
    for copy in platform.copies:
        try:
            secret = copy_passphrase(copy, os.environ)
            with Repository.open(copy["to"], secret) as target:
                copied = copy_snapshots(repository, target, snapshot_ids).copied
            for item in copied:
                log(f"copied to {copy['to']}: {item.bytes_added_stored} bytes new")
            outcome.copied += copied
        except SafeholdError as error:
            outcome.problems.append(f"the copy to {copy['to']} failed: {error}")
    return outcome


def notify_unusable_config(path: str, error: SafeholdError) -> None:
    """Best effort: a platform file that does not load may still have a valid `notify:`."""
    import jsonschema

    from safehold.platform.config import interpolate, read_env_file
    from safehold.platform.schema import NOTIFY

    try:
        document = load_yaml(Path(path).read_text(encoding="utf-8"), path)
        section = document.get("notify") if isinstance(document, dict) else None
        if not isinstance(section, dict):
            return
        jsonschema.validate(section, NOTIFY)
        environment = dict(os.environ)
        if isinstance(document.get("env_file"), str):
            environment = {**read_env_file(Path(document["env_file"])), **environment}
        section = interpolate(section, environment)
        name = str(document.get("platform") or Path(path).stem)
    except Exception:  # the file is beyond use: nothing to notify through
        return
    notify(
        section,
        Event(name, "backup", "failed", "", problems=[f"the backup could not run: {error}"]),
    )


def load_notified(path: str) -> Platform:
    """The platform file of a backup or job; if it cannot be used, the failure is notified
    (through its `notify:` section, if that part is usable) before ConfigError is raised."""
    try:
        return load_platform(path)
    except ConfigError as error:
        notify_unusable_config(path, error)
        raise


def backup_platform(
    platform: Platform, access: RepositoryAccess, options: BackupOptions
) -> tuple[PlatformBackupResult, list[str]]:
    """Backs up the platform and copies the snapshot off-site: (result, copy problems). A
    backup that cannot start or finish (repository unreachable or locked, a hook failed, ...)
    is notified as failed before the error is raised."""
    try:
        with access.open(platform.repository) as repository:
            result = PlatformBackup(repository, platform, tags=options.tags, log=options.log).run()
            copies = copy_offsite(repository, platform, [result.snapshot_id], options.log)
    except SafeholdError as error:
        problem = f"the backup could not run: {error}"
        notify(platform.notify, Event(platform.name, "backup", "failed", "", problems=[problem]))
        raise
    return result, copies.problems


def finish_backup(
    platform: Platform, result: PlatformBackupResult, copy_problems: list[str], report: Lines
) -> int:
    """Problems as lines to ``report``, the notification, and the exit code (0, or 3 for a
    partial backup or a failed copy). Raises CriticalComponentFailed if a critical
    component failed."""
    for component in result.components:
        if component.status == "failed":
            report(f"safehold: component {component.name} failed: {component.error}")
        for error in component.errors:
            report(
                f"safehold: {component.name}: could not read {error['path']}: {error['message']}"
            )
    for problem in copy_problems:
        report(f"safehold: backup saved, but {problem}")
    notify(platform.notify, backup_event(platform, result, copy_problems))
    if result.status == "failed":
        raise CriticalComponentFailed(
            names=", ".join(
                c.name for c in result.components if c.status == "failed" and c.critical
            )
        )
    return EXIT_PARTIAL if result.status == "partial" or copy_problems else 0


# ---------------------------------------------------------------- drills


@dataclass
class DrillOptions:
    """A drill's options: which snapshot (None: the latest; or a random older one), where
    its scratch space goes, and where progress lines go."""

    snapshot: str | None = None
    random_older: bool = False
    scratch: str | None = None
    log: Lines = _quiet


@dataclass
class DrillRun:
    """A drill as run: its result, the record stored, and where (None: not stored)."""

    snapshot: dict
    result: DrillResult
    record: dict
    stored: str | None


def drill_platform(platform: Platform, access: RepositoryAccess, options: DrillOptions) -> DrillRun:
    """Runs a drill of one of the platform's snapshots and stores its result in the
    repository. The result holds the failures; nothing is raised for them."""
    with access.open(platform.repository) as repository, repository.lock():
        repository.prove_from_repository()  # the snapshot too, not a cached copy
        snapshot, notes = choose_snapshot(
            repository, platform, options.snapshot, random_older=options.random_older
        )
        drill = Drill(repository, platform, snapshot, scratch=options.scratch, log=options.log)
        result = drill.run()
        result.notes[:0] = notes
        record = result.record()
        stored = save_drill(repository, record)
    if stored is None:
        result.notes.append(
            "the drill result was not stored: this safehold's store has no drills/ namespace"
        )
    return DrillRun(snapshot, result, record, stored)


def finish_drill(platform: Platform, run: DrillRun) -> None:
    """Notifies the drill's result. Raises DrillFailed (25) if it failed."""
    notify(platform.notify, drill_event(platform, run.result))
    result = run.result
    if result.failed:
        what = [c.name for c in result.components if c.status == "failed"]
        what += [f"check {c['name']!r}" for c in result.checks if c["status"] == "failed"]
        raise DrillFailed(snapshot=run.snapshot["id"][:8], what=", ".join(what))


# ---------------------------------------------------------------- scheduled jobs


@dataclass
class JobContext:
    """What a scheduled job needs besides its platform: the repository, the local state
    directory, where problem lines go and the structured log (``event(name, message,
    **fields)``)."""

    access: RepositoryAccess
    state_dir: Path
    report: Lines = _quiet
    event: Callable[..., None] = lambda *args, **fields: None
    lock_wait: float = 60.0


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


def backup_job(platform: Platform, context: JobContext) -> JobOutcome:
    """The scheduled backup: as `backup --config`, with a log event per component."""
    names = {f"{c.name}: {c.type} (": c.name for c in platform.components}

    def step(text: str) -> None:
        component = next((n for prefix, n in names.items() if text.startswith(prefix)), None)
        if component:
            context.event("component-start", f"backup: {text}", job="backup", component=component)
        else:
            context.event("backup-step", f"backup: {text}", job="backup")

    result, copy_problems = backup_platform(platform, context.access, BackupOptions(log=step))
    for c in result.components:
        context.event(
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
    code = finish_backup(platform, result, copy_problems, context.report)  # raises if failed
    status = "partial" if code == EXIT_PARTIAL else "ok"
    message = f"snapshot {result.snapshot_id[:8]}" + (
        f"; {copy_problems[0]}" if copy_problems else ""
    )
    return JobOutcome(status, message, {"snapshot_id": result.snapshot_id})


def copy_job(platform: Platform, context: JobContext) -> JobOutcome:
    """Copies the platform's snapshots missing in its `copies:` repositories."""

    def body() -> JobOutcome:
        with context.access.open(platform.repository) as repository:
            ids = [s["id"] for s in platform_snapshots(repository, platform.name)]
            outcome = copy_offsite(repository, platform, ids)
        if outcome.problems:
            return JobOutcome("failed", "; ".join(outcome.problems))
        copied = len(outcome.copied)
        return JobOutcome("ok", f"{copied} snapshot(s) copied", {"copied": copied})

    return _notified(platform, "copy", body)


def prune_job(platform: Platform, context: JobContext) -> JobOutcome:
    """Forgets what the `retention:` policy does not keep, then prunes (5% unused allowed)."""
    from safehold.ops.forget import forget
    from safehold.ops.prune import prune
    from safehold.ops.retention import parse_group_by, require_policy

    def body() -> JobOutcome:
        settings = dict(platform.retention)
        fields = parse_group_by(settings.pop("group_by", None))
        with context.access.open(platform.repository) as repository:
            result = forget(
                repository,
                require_policy(settings),
                now=time.time(),
                group_by=fields,
                platform=platform.name,
                wait=context.lock_wait,
            )
            # Packs younger than KEEP_YOUNG (4 h) stay for a later run (defence in depth).
            plan = prune(repository, max_unused=0.05, dry_run=False, wait=context.lock_wait)
        freed = plan.done.get("bytes_deleted", 0) - plan.done.get("bytes_written", 0)
        return JobOutcome(
            "ok",
            f"{len(result.removed)} snapshot(s) forgotten, {freed} bytes freed",
            {"forgotten": len(result.removed), "bytes_freed": freed},
        )

    return _notified(platform, "prune", body)


def check_job(platform: Platform, context: JobContext) -> JobOutcome:
    """`check` of the repository (with `schedule.check_read_data_subset`), recorded in the
    local state. Raises IntegrityError if it finds problems."""
    from safehold.ops.check import check

    subset = Schedule.from_section(platform.schedule).read_data_subset
    state = State(context.state_dir, platform.name)

    def body() -> JobOutcome:
        began = time.time()
        with context.access.open(platform.repository) as repository:
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
                context.report(f"safehold: check: {error}")
            raise IntegrityError(f"check found {len(result.errors)} problem(s): {result.errors[0]}")
        read = f", {result.packs_read} pack(s) read ({subset})" if subset else ""
        return JobOutcome("ok", f"no errors in {result.snapshots} snapshot(s){read}")

    return _notified(platform, "check", body)


def drill_job(platform: Platform, context: JobContext) -> JobOutcome:
    """A drill of the latest snapshot, notified as `drill --config` does. Raises DrillFailed
    if it failed; an error that kept it from running is notified too."""
    try:
        run = drill_platform(platform, context.access, DrillOptions())
    except SafeholdError as error:  # it could not run: notify that too
        notify(platform.notify, Event(platform.name, "drill", "failed", "", problems=[str(error)]))
        raise
    for component in run.result.components:
        for failure in component.failures:
            context.report(f"safehold: drill: {component.name}: {failure}")
    finish_drill(platform, run)
    return JobOutcome("ok", "drill passed")


JOBS: dict[str, Callable[[Platform, JobContext], JobOutcome]] = {
    "backup": backup_job,
    "copy": copy_job,
    "prune": prune_job,
    "check": check_job,
    "drill": drill_job,
}


# ---------------------------------------------------------------- status


def collect_status(
    platform: Platform | None,
    access: RepositoryAccess,
    state_dir: Path | None,
    policy: Policy,
    now: float,
) -> tuple[list[dict], dict]:
    """(the status of the platform, or of every platform in the repository without one; the
    repository totals), for `metrics`, `report` and the daemon's /metrics. Raises UsageError
    if the repository holds no platform snapshots and none is named."""
    from safehold.ops.drill_records import list_drills
    from safehold.ops.schedule import load_check_status
    from safehold.ops.status import platform_status, platforms_in, repository_totals

    with access.open(platform.repository if platform else None) as repository:
        snapshots = list_snapshots(repository)
        drills = list_drills(repository)
    names = [platform.name] if platform else platforms_in(snapshots)
    if not names:
        raise UsageError("no platform snapshots in this repository: pass --config PLATFORM_FILE")
    statuses = [
        platform_status(name, snapshots, drills, now, policy, load_check_status(name, state_dir))
        for name in names
    ]
    return statuses, repository_totals(snapshots)
