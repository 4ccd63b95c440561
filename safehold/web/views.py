"""What each page shows, as plain dicts built from the documents: no HTTP, no HTML here.

The numbers are ops/status.py's (the same rules and warnings as ``safehold report``); the
expectations are the report's too (cli/status.py ``policy_for``: the platform's schedule,
else a backup a day and a drill a week). A platform's *state* is ``failing`` when a warning
says something is broken (no good backup, the last backup or a component failing now, a
failed drill or check), ``warning`` for any other warning (stale, drill too old, ...), and
``ok`` without warnings.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from safehold.cli.render import size
from safehold.cli.status import policy_for
from safehold.ops.schedule import Schedule, State, default_state_dir, load_check_status, next_runs
from safehold.ops.status import human_duration, platform_status, repository_totals
from safehold.web.charts import line_chart
from safehold.web.data import PlatformEntry, Sources, documents_or_error

BROKEN = {"no-backup", "drill-failed", "check-failed"}
DAY = 86400.0


def when(stamp: float | None) -> str:
    """A time as shown on every page: UTC, to the minute."""
    if not stamp:
        return "never"
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M UTC")


def ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 0:
        return "in " + human_duration(-seconds)
    return human_duration(seconds) + " ago"


def state_of(status: dict) -> str:
    """ok, warning or failing (see the module docstring)."""
    kinds = {w["kind"] for w in status["warnings"]}
    if kinds & BROKEN:
        return "failing"
    last = status["last_backup"]
    if last and last["status"] == "failed":
        return "failing"
    if any(
        w["kind"] == "failing" and _latest_failed(status, w["component"])
        for w in status["warnings"]
    ):
        return "failing"
    return "warning" if kinds else "ok"


def _latest_failed(status: dict, component: str | None) -> bool:
    for entry in status["components"]:
        if entry["name"] == component:
            return entry["last_backup"]["status"] == "failed"
    return False


def _state_dir(sources: Sources) -> Path:
    return sources.state_dir or default_state_dir()


def _growth(snapshots: list[dict], now: float, days: int) -> int:
    since = now - days * DAY
    return sum(
        (s.get("summary") or {}).get("bytes_added_stored", 0)
        for s in snapshots
        if s["time"] >= since
    )


def platform_card(entry: PlatformEntry, sources: Sources, now: float) -> dict:
    """One overview card: state, RPO against the schedule, drill and RTO, next runs,
    repository size, growth and dedup, last check."""
    platform = entry.platform
    snapshots, drills, error = documents_or_error(entry.view)
    policy = policy_for(platform, None, None, 3, now)
    check = load_check_status(platform.name, _state_dir(sources))
    status = platform_status(platform.name, snapshots, drills, now, policy, check)
    totals = repository_totals(snapshots)
    schedule = Schedule.from_section(platform.schedule)
    runs = next_runs(schedule, now, 2)
    good = status["last_good"]
    state = "failing" if error else state_of(status)
    return {
        "name": platform.name,
        "key": entry.key,
        "state": state,
        "error": error,
        "status": status,
        "warnings": [w["message"] for w in status["warnings"]],
        "last_good_ago": ago(good["age_seconds"]) if good else "never",
        "last_good_when": when(good["time"]) if good else "never",
        "expected_every": human_duration(policy.expect_every),
        "rpo_late": bool(good and good["age_seconds"] > 2 * policy.expect_every),
        "drill": status["drill"]
        and {
            "status": status["drill"]["status"],
            "ago": ago(status["drill"]["age_seconds"]),
            "rto": human_duration(status["drill"]["rto_seconds"]),
        },
        "next_runs": [
            {"job": job, "when": when(times[0]), "in": ago(now - times[0])}
            for job, times in sorted(runs.items(), key=lambda item: item[1][0])
        ],
        "repository": {
            "snapshots": totals["snapshots"],
            "logical": size(totals["logical_bytes"]),
            "stored": size(totals["stored_bytes"]),
            "growth_7d": size(_growth(snapshots, now, 7)),
            "growth_30d": size(_growth(snapshots, now, 30)),
            "dedup": f"{totals['dedup_ratio']:.2f}" if totals["dedup_ratio"] else "–",
        },
        "check": status["check"]
        and {
            "status": status["check"]["status"],
            "ago": ago(status["check"]["age_seconds"]),
            "errors": status["check"]["errors"],
        },
    }


def overview(sources: Sources, now: float) -> list[dict]:
    return [platform_card(entry, sources, now) for entry in sources.platforms]


def _seconds(value: float) -> str:
    return human_duration(value)


def _bytes(value: float) -> str:
    return size(value)


def charts(snapshots: list[dict], drills: list[dict], all_snapshots: list[dict]) -> list:
    """The platform page's charts: (title, SVG markup)."""
    summary = [(s["time"], s.get("summary") or {}) for s in snapshots]
    growth, total = [], 0
    for s in all_snapshots:
        total += (s.get("summary") or {}).get("bytes_added_stored", 0)
        growth.append((s["time"], float(total)))
    series = [
        ("backup size", [(t, float(m.get("bytes_total", 0))) for t, m in summary], _bytes),
        ("backup duration", [(t, float(m.get("duration", 0.0))) for t, m in summary], _seconds),
        (
            "downtime per cold phase",
            [
                (s["time"], float(s["downtime"]["seconds"]))
                for s in snapshots
                if s.get("downtime") and s["downtime"].get("stopped")
            ],
            _seconds,
        ),
        (
            "drill RTO",
            [(d.get("time", 0.0), float(d.get("rto_seconds", 0.0))) for d in drills],
            _seconds,
        ),
    ]
    drawn = [(title, line_chart(title, points, label)) for title, points, label in series]
    title = "repository growth (stored bytes)"
    return [*drawn, (title, line_chart(title, growth, _bytes, css="growth"))]


def drill_rows(drills: list[dict], limit: int = 20) -> list[dict]:
    """The newest drills first, each with its per-component results."""
    rows = []
    for drill in reversed(drills[-limit:]):
        rows.append(
            {
                "when": when(drill.get("time")),
                "status": drill.get("status", "?"),
                "rto": human_duration(drill.get("rto_seconds", 0.0)),
                "snapshot": str(drill.get("snapshot") or "")[:8],
                "components": [
                    {
                        "name": c.get("name"),
                        "type": c.get("type"),
                        "status": c.get("status"),
                        "restore": human_duration(c.get("restore_seconds", 0.0)),
                        "detail": "; ".join((c.get("failures") or []) + (c.get("warnings") or [])),
                    }
                    for c in drill.get("components") or []
                ],
            }
        )
    return rows


def job_runs(sources: Sources, platform: str) -> list[dict]:
    """The last run of each scheduled job as recorded on this host (the daemon's and
    `schedule run`'s state file), newest first."""
    state = State(_state_dir(sources), platform)
    rows = []
    for job, entry in state.data["jobs"].items():
        if "last_start" not in entry:
            continue
        rows.append(
            {
                "job": job,
                "start": entry["last_start"],
                "when": when(entry["last_start"]),
                "status": entry.get("last_status", "running"),
                "message": entry.get("last_message", ""),
                "took": human_duration(entry["last_end"] - entry["last_start"])
                if "last_end" in entry and entry["last_end"] >= entry["last_start"]
                else "",
            }
        )
    return sorted(rows, key=lambda row: row["start"], reverse=True)


def platform_page(entry: PlatformEntry, sources: Sources, now: float) -> dict:
    """Everything the platform page shows."""
    card = platform_card(entry, sources, now)
    snapshots, drills, _error = documents_or_error(entry.view)
    mine = [s for s in snapshots if s.get("platform") == entry.platform.name]
    drilled = [d for d in drills if d.get("platform") == entry.platform.name]
    last = card["status"]["last_backup"]
    return card | {
        "components": [
            {
                "name": c["name"],
                "type": c["type"],
                "status": c["last_backup"]["status"],
                "size": size(c["last_backup"]["bytes"]),
                "duration": human_duration(c["last_backup"]["duration_seconds"]),
                "error": c["last_backup"]["error"],
                "last_good": ago(c["last_good"]["age_seconds"]) if c["last_good"] else "never",
                "drill": c["drill"],
            }
            for c in card["status"]["components"]
        ],
        "last_backup": last
        and {
            "when": when(last["time"]),
            "status": last["status"],
            "size": size(last["bytes"]),
            "duration": human_duration(last["duration_seconds"]),
            "downtime": human_duration(last["downtime_seconds"]) if last["stopped"] else "none",
            "stopped": ", ".join(last["stopped"]),
        },
        "charts": charts(mine, drilled, snapshots),
        "drills": drill_rows(drilled),
        "runs": job_runs(sources, entry.platform.name),
        "schedule": {
            job: cron.text
            for job, cron in Schedule.from_section(entry.platform.schedule).crons.items()
        },
    }
