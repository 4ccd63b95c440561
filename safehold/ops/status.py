"""The state of platforms in a repository, computed from snapshot and drill documents.

Pure functions: no repository, no clock. The caller passes the snapshots (``list_snapshots``),
the drill records (``list_drills``) and ``now``; ``safehold report`` and ``safehold metrics``
(safehold/cli/status.py) render what comes back. docs/operations.md "Monitoring and reports".

A platform backup is *good* when its status is not ``failed`` (every critical component was
captured; ``partial`` counts); a component is good in a snapshot when its status is ``ok``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from safehold.repo.snapshots import SnapshotRecord

CLOCK_TOLERANCE = 300.0  # a snapshot or drill this far in the future means a wrong clock
_UNITS = {"s": 1, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_interval(text: str) -> float:
    """'90s', '30min', '12h', '1d', '2w' (also '1.5d') -> seconds. Raises ValueError."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|min|h|d|w)\s*", text or "")
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"not an interval: {text!r} (examples: 90s 30min 12h 1d 2w)")
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass(frozen=True)
class Policy:
    """What the warnings expect: a backup every ``expect_every`` seconds (warn after twice
    that), a drill every ``drill_every`` seconds, no failure in the last ``failure_window``."""

    expect_every: float = 86400.0
    drill_every: float = 7 * 86400.0
    failure_window: int = 3
    check_every: float | None = None  # a scheduled check: warn when the last is 2x older


def platforms_in(snapshots: list[dict]) -> list[str]:
    """The names of the platforms that have snapshots, sorted."""
    return sorted({s["platform"] for s in snapshots if s.get("platform")})


def _component(snapshot: dict, name: str) -> dict | None:
    for component in snapshot.get("components") or []:
        if isinstance(component, dict) and component.get("name") == name:
            return component
    return None


def _growth(current: int, previous: int | None) -> dict | None:
    if previous is None:
        return None
    percent = (current - previous) / previous * 100 if previous else None
    return {"bytes": current - previous, "percent": percent}


def _backup_view(snapshot: dict, now: float) -> dict:
    return {
        "snapshot": snapshot.get("id"),
        "time": snapshot["time"],
        "age_seconds": now - snapshot["time"],
    }


def component_status(name: str, snapshots: list[dict], drill: dict | None, now: float) -> dict:
    """One component across the platform's snapshots (oldest first)."""
    having = [(s, c) for s in snapshots if (c := _component(s, name)) is not None]
    latest_snapshot, latest = having[-1]
    good = [(s, c) for s, c in having if c.get("status") == "ok"]
    last_good = None
    if good:
        snapshot, component = good[-1]
        index = having.index((snapshot, component))
        previous = having[index - 1][1].get("bytes") if index else None
        last_good = _backup_view(snapshot, now) | {
            "bytes": component.get("bytes", 0),
            "duration_seconds": component.get("duration", 0.0),
            "growth": _growth(component.get("bytes", 0), previous),
        }
    drilled = None
    if drill is not None:
        for entry in drill.get("components") or []:
            if entry.get("name") == name:
                drilled = {
                    "status": entry.get("status"),
                    "restore_seconds": entry.get("restore_seconds", 0.0),
                }
    return {
        "name": name,
        "type": latest.get("type", ""),
        "critical": latest.get("critical", True),
        "last_backup": _backup_view(latest_snapshot, now)
        | {
            "status": latest.get("status"),
            "bytes": latest.get("bytes", 0),
            "duration_seconds": latest.get("duration", 0.0),
            "error": latest.get("error"),
        },
        "last_good": last_good,
        "recent": [c.get("status") for _s, c in having],
        "drill": drilled,
    }


def platform_status(
    platform: str,
    snapshots: list[dict],
    drills: list[dict],
    now: float,
    policy: Policy,
    check: dict | None = None,
) -> dict:
    """The state of one platform: its backups, components, last drill and warnings.

    ``snapshots`` and ``drills`` may hold other platforms' documents: they are filtered.
    ``check`` is the last recorded check of the repository (safehold/ops/schedule.py's state:
    ``{time, ok, complete, errors, first_errors, read_data_subset, ...}``), if any."""
    mine = sorted((s for s in snapshots if s.get("platform") == platform), key=_time)
    drilled = sorted((d for d in drills if d.get("platform") == platform), key=_time)
    drill = drilled[-1] if drilled else None
    result: dict = {
        "platform": platform,
        "snapshots": len(mine),
        "last_backup": None,
        "last_good": None,
        "components": [],
        "drill": None,
        "warnings": [],
    }
    if mine:
        latest = mine[-1]
        summary = latest.get("summary") or {}
        downtime = latest.get("downtime") or None
        result["last_backup"] = _backup_view(latest, now) | {
            "status": latest.get("status"),
            "bytes": summary.get("bytes_total", 0),
            "duration_seconds": summary.get("duration", 0.0),
            "downtime_seconds": downtime["seconds"] if downtime else 0.0,
            "stopped": downtime["stopped"] if downtime else [],
        }
        good = [s for s in mine if s.get("status") != "failed"]
        if good:
            index = mine.index(good[-1])
            bytes_ = (good[-1].get("summary") or {}).get("bytes_total", 0)
            previous = (mine[index - 1].get("summary") or {}).get("bytes_total") if index else None
            result["last_good"] = _backup_view(good[-1], now) | {
                "bytes": bytes_,
                "growth": _growth(bytes_, previous),
            }
        names: list[str] = []
        for snapshot in mine:
            for component in SnapshotRecord.from_dict(snapshot).components:
                if component.name not in names:
                    names.append(component.name)
        result["components"] = [component_status(n, mine, drill, now) for n in names]
    if drill is not None:
        result["drill"] = {
            "id": drill.get("id"),
            "time": drill.get("time", 0.0),
            "age_seconds": now - drill.get("time", 0.0),
            "status": drill.get("status"),
            "rto_seconds": drill.get("rto_seconds", 0.0),
            "snapshot": drill.get("snapshot"),
        }
    result["check"] = (
        None
        if check is None
        else {
            "time": check.get("time", 0.0),
            "age_seconds": now - check.get("time", 0.0),
            "status": "passed" if check.get("ok") else "failed",
            "complete": check.get("complete", True),
            "errors": check.get("errors", 0),
            "read_data_subset": check.get("read_data_subset"),
        }
    )
    result["warnings"] = warnings(result, mine, drilled, now, policy)
    return result


def _time(document: dict) -> float:
    return document.get("time", 0.0)


def _ago(seconds: float) -> str:
    return human_duration(seconds) + " ago"


def human_duration(seconds: float) -> str:
    """3725 -> '1h 2min'; 0.4 -> '0.4 s'."""
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes}min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes}min" if minutes else f"{hours}h"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h" if hours else f"{days}d"


def warnings(
    status: dict, snapshots: list[dict], drills: list[dict], now: float, policy: Policy
) -> list[dict]:
    """What needs a look, as ``{kind, platform, component, message}``. Kinds: ``no-backup``,
    ``stale``, ``failing``, ``no-drill``, ``drill-old``, ``drill-failed``, ``check-failed``,
    ``no-check``, ``check-old`` (the last two only with a scheduled check), ``clock``."""
    platform = status["platform"]
    found: list[dict] = []

    def warn(kind: str, message: str, component: str | None = None) -> None:
        found.append(
            {"kind": kind, "platform": platform, "component": component, "message": message}
        )

    limit = 2 * policy.expect_every
    if not snapshots:
        warn("no-backup", f"no backup of platform {platform} in this repository")
    elif status["last_good"] is None:
        warn("no-backup", f"platform {platform} has no good backup: all {len(snapshots)} failed")
    elif status["last_good"]["age_seconds"] > limit:
        warn(
            "stale",
            f"last good backup of {platform} is {_ago(status['last_good']['age_seconds'])}; "
            f"expected every {human_duration(policy.expect_every)}",
        )
    platform_stale = bool(found)
    for component in status["components"]:
        name = component["name"]
        good = component["last_good"]
        if not platform_stale and (good is None or good["age_seconds"] > limit):
            when = "never" if good is None else _ago(good["age_seconds"])
            warn("stale", f"component {name}: last good backup {when}", name)
        window = component["recent"][-policy.failure_window :]
        failures = sum(1 for s in window if s == "failed")
        if failures:
            steady = failures == len(window) == policy.failure_window
            message = f"component {name} failed in {failures} of the last {len(window)} backup(s)"
            if steady:
                message += ": it keeps failing"
            if window[-1] == "failed" and component["last_backup"]["error"]:
                message += f" (last error: {component['last_backup']['error']})"
            warn(
                "failing",
                message,
                name,
            )
    drill = status["drill"]
    if snapshots and drill is None:
        warn("no-drill", f"platform {platform} was never drilled (safehold drill --config ...)")
    elif drill is not None:
        if drill["status"] != "passed":
            warn(
                "drill-failed",
                f"the last drill of {platform} failed ({_ago(drill['age_seconds'])})",
            )
        if drill["age_seconds"] > policy.drill_every:
            warn(
                "drill-old",
                f"last drill of {platform} is {_ago(drill['age_seconds'])}; "
                f"expected every {human_duration(policy.drill_every)}",
            )
    checked = status.get("check")
    if checked is not None and checked["status"] == "failed":
        warn(
            "check-failed",
            f"the last check of the repository of {platform} found {checked['errors']} "
            f"problem(s) ({_ago(checked['age_seconds'])}): run safehold check",
        )
    if policy.check_every is not None:
        if checked is None:
            warn("no-check", f"no check of the repository of {platform} is recorded here")
        elif checked["age_seconds"] > 2 * policy.check_every:
            warn(
                "check-old",
                f"last check of the repository of {platform} is {_ago(checked['age_seconds'])}; "
                f"scheduled every {human_duration(policy.check_every)}",
            )
    for document, what in [(s, "snapshot") for s in snapshots] + [(d, "drill") for d in drills]:
        ahead = _time(document) - now
        if ahead > CLOCK_TOLERANCE:
            warn(
                "clock",
                f"{what} {str(document.get('id', ''))[:8]} is dated {human_duration(ahead)} in "
                "the future: a clock looks wrong (this host's or the one that wrote it)",
            )
    return found


def repository_totals(snapshots: list[dict]) -> dict:
    """Sizes from all snapshot summaries: ``logical_bytes`` (the sum of snapshot sizes),
    ``stored_bytes`` (what they added, compressed) and ``dedup_ratio`` (logical / stored, or
    None without stored bytes). An estimate: prune and forget are not accounted for."""
    logical = sum((s.get("summary") or {}).get("bytes_total", 0) for s in snapshots)
    stored = sum((s.get("summary") or {}).get("bytes_added_stored", 0) for s in snapshots)
    return {
        "snapshots": len(snapshots),
        "logical_bytes": logical,
        "stored_bytes": stored,
        "dedup_ratio": logical / stored if stored else None,
    }


# ---------------------------------------------------------------- Prometheus text format


def escape_label(value: str) -> str:
    """A label value as the exposition format wants it: \\ " and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, float) and math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value) if isinstance(value, float) else str(int(value))


METRICS = {
    # name: (help, type)
    "platform_snapshots": "Snapshots of the platform in the repository",
    "platform_last_backup_timestamp_seconds": "Start of the latest platform backup",
    "platform_last_backup_status": "1 if the latest platform backup is ok, 0 (partial, failed)",
    "platform_last_backup_duration_seconds": "Duration of the latest platform backup",
    "platform_last_backup_size_bytes": "Size of the latest platform backup",
    "platform_last_backup_downtime_seconds": "Downtime (services stopped) of the latest backup",
    "platform_last_success_timestamp_seconds": "Start of the latest good platform backup",
    "platform_last_success_age_seconds": "Age of the latest good platform backup (the RPO)",
    "component_last_backup_status": "1 if the component is ok in the latest backup, else 0",
    "component_last_backup_duration_seconds": "Duration of the component in the latest backup",
    "component_last_backup_size_bytes": "Size of the component in the latest backup",
    "component_last_success_timestamp_seconds": "Start of the latest good component backup",
    "component_last_success_age_seconds": "Age of the latest good component backup (the RPO)",
    "component_last_drill_status": "1 if the component passed the latest drill, else 0",
    "component_last_drill_restore_seconds": "Restore time of the component in the latest drill",
    "drill_last_status": "1 if the latest drill of the platform passed, else 0",
    "drill_last_timestamp_seconds": "Time of the latest drill of the platform",
    "drill_last_age_seconds": "Age of the latest drill of the platform",
    "drill_last_rto_seconds": "Estimated restore time (RTO) measured by the latest drill",
    "repository_snapshots": "Snapshots in the repository holding the platform",
    "repository_logical_bytes": "Sum of the sizes of all snapshots (from their summaries)",
    "repository_stored_bytes": "Bytes the snapshots added to the repository, compressed",
    "repository_dedup_ratio": "Logical bytes / stored bytes (estimate, ignores prune)",
    "warnings": "Warnings safehold report gives for the platform",
}


def metrics_samples(status: dict, totals: dict) -> list[tuple[str, dict, float]]:
    """The samples of one platform as (metric name without prefix, labels, value)."""
    platform = status["platform"]
    p = {"platform": platform}
    samples: list[tuple[str, dict, float]] = [("platform_snapshots", p, status["snapshots"])]
    last = status["last_backup"]
    if last:
        samples += [
            ("platform_last_backup_timestamp_seconds", p, last["time"]),
            ("platform_last_backup_status", p, last["status"] == "ok"),
            ("platform_last_backup_duration_seconds", p, last["duration_seconds"]),
            ("platform_last_backup_size_bytes", p, last["bytes"]),
            ("platform_last_backup_downtime_seconds", p, last["downtime_seconds"]),
        ]
    if status["last_good"]:
        samples += [
            ("platform_last_success_timestamp_seconds", p, status["last_good"]["time"]),
            ("platform_last_success_age_seconds", p, status["last_good"]["age_seconds"]),
        ]
    for component in status["components"]:
        c = p | {"component": component["name"], "type": component["type"]}
        last = component["last_backup"]
        samples += [
            ("component_last_backup_status", c, last["status"] == "ok"),
            ("component_last_backup_duration_seconds", c, last["duration_seconds"]),
            ("component_last_backup_size_bytes", c, last["bytes"]),
        ]
        if component["last_good"]:
            samples += [
                ("component_last_success_timestamp_seconds", c, component["last_good"]["time"]),
                ("component_last_success_age_seconds", c, component["last_good"]["age_seconds"]),
            ]
        if component["drill"]:
            samples += [
                ("component_last_drill_status", c, component["drill"]["status"] == "passed"),
                ("component_last_drill_restore_seconds", c, component["drill"]["restore_seconds"]),
            ]
    drill = status["drill"]
    if drill:
        samples += [
            ("drill_last_status", p, drill["status"] == "passed"),
            ("drill_last_timestamp_seconds", p, drill["time"]),
            ("drill_last_age_seconds", p, drill["age_seconds"]),
            ("drill_last_rto_seconds", p, drill["rto_seconds"]),
        ]
    samples += [
        ("repository_snapshots", p, totals["snapshots"]),
        ("repository_logical_bytes", p, totals["logical_bytes"]),
        ("repository_stored_bytes", p, totals["stored_bytes"]),
    ]
    if totals["dedup_ratio"] is not None:
        samples.append(("repository_dedup_ratio", p, totals["dedup_ratio"]))
    samples.append(("warnings", p, len(status["warnings"])))
    return samples


def metrics_text(statuses: list[dict], totals: dict, prefix: str = "safehold_") -> str:
    """Prometheus text exposition format (version 0.0.4): every metric family once, with its
    HELP and TYPE lines (all gauges), then its samples of every platform."""
    families: dict[str, list[str]] = {}
    for status in statuses:
        for name, labels, value in metrics_samples(status, totals):
            text = ",".join(f'{key}="{escape_label(str(v))}"' for key, v in labels.items())
            families.setdefault(name, []).append(f"{prefix}{name}{{{text}}} {_number(value)}")
    lines = []
    for name in METRICS:
        if name in families:
            lines += [f"# HELP {prefix}{name} {METRICS[name]}", f"# TYPE {prefix}{name} gauge"]
            lines += families[name]
    return "\n".join(lines) + "\n" if lines else ""
