"""Schedules: cron parsing and next times (safehold/platform/cron.py), the `schedule:` section,
`schedule show|install|run`, the report's schedule-based expectations, and --log-json."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from pathlib import Path

import pytest

from safehold.platform.config import ConfigError, parse_platform
from safehold.platform.cron import CronError, interval_estimate, parse
from tests.conftest import run_cli

pytestmark = pytest.mark.usefixtures("utc")


def nxt(expression: str, moment: str) -> str:
    found = parse(expression).next_after(datetime.fromisoformat(moment))
    return found.isoformat(sep=" ", timespec="minutes")


# ------------------------------------------------------------------ cron


def test_next_times() -> None:
    assert nxt("30 2 * * *", "2026-11-22 02:29") == "2026-11-22 02:30"
    assert nxt("30 2 * * *", "2026-11-22 02:30") == "2026-11-23 02:30"  # strictly after
    assert nxt("*/15 * * * *", "2026-11-22 10:59:59") == "2026-11-22 11:00"
    assert nxt("*/15 9-17 * * mon-fri", "2026-11-21 12:00") == "2026-11-23 09:00"  # Sat -> Mon
    assert nxt("0 0 * * 7", "2026-11-22 00:00") == "2026-11-29 00:00"  # 7 is Sunday too
    assert nxt("0 0 29 2 *", "2026-03-01 00:00") == "2028-02-29 00:00"  # next leap day
    assert nxt("0 12 31 * *", "2026-04-01 00:00") == "2026-05-31 12:00"  # April has no 31st
    assert nxt("59 23 31 12 *", "2026-12-31 23:59") == "2027-12-31 23:59"  # year wrap
    assert nxt("5/20 * * * *", "2026-11-22 10:46") == "2026-11-22 11:05"  # a/n: 5,25,45
    assert nxt("0 9-17/4 * * *", "2026-11-22 13:01") == "2026-11-22 17:00"  # 9, 13, 17
    assert nxt("0 0 1 jan,jul *", "2026-02-01 00:00") == "2026-07-01 00:00"
    # both day fields restricted: either matches (Vixie cron)
    assert nxt("0 0 13 * fri", "2026-11-01 00:00") == "2026-11-06 00:00"  # Friday first
    # a day-of-week step starting with * keeps both-must-match semantics
    assert nxt("0 0 1 * */2", "2026-11-01 12:00") == "2026-12-01 00:00"  # a Tuesday, not Mon 2nd


def test_macros() -> None:
    assert nxt("@hourly", "2026-11-22 10:00") == "2026-11-22 11:00"
    assert nxt("@daily", "2026-11-22 10:00") == "2026-11-23 00:00"
    assert nxt("@midnight", "2026-11-22 10:00") == "2026-11-23 00:00"
    assert nxt("@weekly", "2026-11-22 10:00") == "2026-11-29 00:00"  # Sunday 00:00
    assert nxt("@monthly", "2026-11-22 10:00") == "2026-12-01 00:00"
    assert nxt("@yearly", "2026-11-22 10:00") == "2027-01-01 00:00"


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("x y", "expected 5 fields"),
        ("* * * *", "got 4"),
        ("60 * * * *", "minute: 60 is out of range 0-59"),
        ("* 24 * * *", "hour: 24 is out of range 0-23"),
        ("* * 0 * *", "day of month: 0 is out of range 1-31"),
        ("* * * 13 *", "month: 13 is out of range 1-12"),
        ("* * * * 8", "day of week: 8 is out of range 0-7"),
        ("*/0 * * * *", "step '0' must be a positive number"),
        ("5-1 * * * *", "goes backwards"),
        ("1,,2 * * * *", "empty list item"),
        ("a * * * *", "minute: 'a' is not a number"),
        ("0 0 30 2 *", "never matches"),
        ("@often", "unknown macro"),
        ("", "got 0"),
    ],
)
def test_invalid_expressions(expression: str, fragment: str) -> None:
    with pytest.raises(CronError, match=re.escape(fragment)):
        parse(expression)


def test_dst_and_next_timestamp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    cron = parse("30 2 * * *")
    # 2026-03-29: 02:00 -> 03:00 in Berlin; the run of that day is not lost or doubled
    before = datetime(2026, 3, 28, 12, 0).timestamp()
    first = cron.next_timestamp(before)
    second = cron.next_timestamp(first)
    assert first > before and second > first
    assert datetime.fromtimestamp(second).strftime("%m-%d %H:%M") == "03-30 02:30"
    # 2026-10-25: 02:30 happens twice; it runs once
    start = datetime(2026, 10, 24, 12, 0).timestamp()
    runs = [cron.next_timestamp(start)]
    runs.append(cron.next_timestamp(runs[0]))
    assert [datetime.fromtimestamp(t).strftime("%m-%d %H:%M") for t in runs] == [
        "10-25 02:30",
        "10-26 02:30",
    ]


def test_on_calendar() -> None:
    assert parse("30 2 * * *").on_calendar() == "*-*-* 02:30:00"
    assert parse("*/15 9-17 * * mon-fri").on_calendar() == "Mon..Fri *-*-* 09..17:00/15:00"
    assert parse("@weekly").on_calendar() == "Sun *-*-* 00:00:00"
    assert parse("0 3 1,15 * *").on_calendar() == "*-*-01,15 03:00:00"
    assert parse("0 0 1 1,4,7,10 *").on_calendar() == "*-01/3-01 00:00:00"
    with pytest.raises(CronError, match="no single systemd OnCalendar"):
        parse("0 0 13 * fri").on_calendar()


def test_interval_estimate() -> None:
    now = datetime(2026, 11, 22, 12).timestamp()
    assert interval_estimate(parse("@daily"), now) == 86400
    assert interval_estimate(parse("0 2 * * mon-fri"), now) == 3 * 86400  # Fri -> Mon
    assert interval_estimate(parse("*/15 * * * *"), now) == 900


# ------------------------------------------------------------------ the platform file


def _document(tmp_path: Path, schedule: dict, **extra: object) -> str:
    (tmp_path / "data").mkdir(exist_ok=True)
    return json.dumps(
        {
            "platform": "mini",
            "components": [{"name": "data", "type": "files", "paths": [str(tmp_path / "data")]}],
            "schedule": schedule,
        }
        | extra
    )


def test_schedule_section_validation(tmp_path: Path) -> None:
    platform = parse_platform(
        _document(tmp_path, {"backup": "@daily", "check": "0 4 * * *", "jitter": 600}),
        "p.yaml",
        {},
    )
    assert platform.schedule == {"backup": "@daily", "check": "0 4 * * *", "jitter": 600}
    with pytest.raises(ConfigError) as caught:
        parse_platform(_document(tmp_path, {"backup": "x y"}), "p.yaml", {})
    assert str(caught.value) == (
        "p.yaml: at schedule.backup: 'x y' is not a cron expression: expected 5 fields "
        "(minute hour day-of-month month day-of-week), got 2"
    )
    with pytest.raises(ConfigError, match="at schedule.check: '61 . . . .' is not a cron"):
        parse_platform(_document(tmp_path, {"check": "61 * * * *"}), "p.yaml", {})
    with pytest.raises(ConfigError, match="at schedule.prune: needs a `retention:` section"):
        parse_platform(_document(tmp_path, {"prune": "@weekly"}), "p.yaml", {})
    with pytest.raises(ConfigError, match="unknown key 'forget'"):
        parse_platform(_document(tmp_path, {"forget": "@weekly"}), "p.yaml", {})
    with pytest.raises(ConfigError, match="schedule.jitter"):
        parse_platform(_document(tmp_path, {"jitter": -1}), "p.yaml", {})
    with pytest.raises(ConfigError, match="check_read_data_subset"):
        parse_platform(_document(tmp_path, {"check_read_data_subset": "lots"}), "p.yaml", {})


# ------------------------------------------------------------------ schedule install / show


def _config(tmp_path: Path, repo: Path, schedule: dict) -> Path:
    config = tmp_path / "platform.yaml"
    config.write_text(
        _document(tmp_path, schedule, repository=str(repo), retention={"keep_last": 3})
    )
    return config


SCHEDULE = {
    "backup": "30 2 * * *",
    "prune": "@weekly",
    "check": "0 4 * * 1-5",
    "check_read_data_subset": "5%",
    "jitter": 900,
}


def test_install_systemd_units(tmp_path: Path, repo: Path) -> None:
    config = _config(tmp_path, repo, SCHEDULE)
    units = tmp_path / "units"
    result = run_cli(
        "schedule", "install", "--systemd", "--config", config, "-o", units, "--state-dir", "/st"
    )
    assert result.code == 0, result.err
    assert sorted(p.name for p in units.iterdir()) == [
        f"safehold-mini-{job}.{kind}"
        for job in ("backup", "check", "prune")
        for kind in ("service", "timer")
    ]
    assert (units / "safehold-mini-backup.timer").read_text() == (
        "[Unit]\n"
        "Description=safehold backup of platform mini (30 2 * * *)\n"
        "\n"
        "[Timer]\n"
        "OnCalendar=*-*-* 02:30:00\n"
        "RandomizedDelaySec=900s\n"
        "Persistent=true\n"
        "\n"
        "[Install]\n"
        "WantedBy=timers.target\n"
    )
    assert (
        "OnCalendar=Mon..Fri *-*-* 04:00:00\n" in (units / "safehold-mini-check.timer").read_text()
    )
    assert "OnCalendar=Sun *-*-* 00:00:00\n" in (units / "safehold-mini-prune.timer").read_text()
    service = (units / "safehold-mini-backup.service").read_text()
    exec_line = next(line for line in service.splitlines() if line.startswith("ExecStart="))
    assert exec_line.endswith(f"schedule run backup --config {config.resolve()} --state-dir /st"), (
        exec_line
    )
    assert "Type=oneshot" in service
    assert "systemctl enable --now safehold-mini-backup.timer" in result.out
    # never overwritten without --force
    (units / "safehold-mini-check.timer").write_text("mine")
    again = run_cli("schedule", "install", "--systemd", "--config", config, "-o", units)
    assert again.code == 2
    assert "refusing to overwrite" in again.err and "--force" in again.err
    assert (units / "safehold-mini-check.timer").read_text() == "mine"
    forced = run_cli("schedule", "install", "--systemd", "--config", config, "-o", units, "--force")
    assert forced.code == 0, forced.err
    assert (units / "safehold-mini-check.timer").read_text().startswith("[Unit]")


def test_install_cron_lines(tmp_path: Path, repo: Path) -> None:
    config = _config(tmp_path, repo, SCHEDULE)
    result = run_cli("schedule", "install", "--cron", "--config", config, "--state-dir", "/st")
    assert result.code == 0, result.err
    lines = [line for line in result.out.splitlines() if not line.startswith("#")]
    assert len(lines) == 3
    first = lines[0]
    assert first.startswith(
        "30 2 * * * sleep $(shuf -i 0-900 -n 1) && flock -n /st/jobs-mini.lock "
    )
    assert first.endswith(f"schedule run backup --config {config.resolve()} --state-dir /st")
    assert lines[1].startswith("@weekly ") and " schedule run prune " in lines[1]
    assert lines[2].startswith("0 4 * * 1-5 ") and " schedule run check " in lines[2]
    out = tmp_path / "cron"
    assert run_cli("schedule", "install", "--cron", "--config", config, "-o", out).code == 0
    assert (out / "safehold-mini").exists()
    refused = run_cli("schedule", "install", "--cron", "--config", config, "-o", out)
    assert refused.code == 2 and "refusing to overwrite" in refused.err


def test_both_day_fields_get_a_note_for_systemd(tmp_path: Path, repo: Path) -> None:
    config = _config(tmp_path, repo, {"backup": "@daily", "check": "0 0 13 * fri"})
    result = run_cli("schedule", "install", "--systemd", "--config", config, "-o", tmp_path / "u")
    assert result.code == 0, result.err
    assert "check: not written" in result.err
    assert sorted(p.name for p in (tmp_path / "u").iterdir()) == [
        "safehold-mini-backup.service",
        "safehold-mini-backup.timer",
    ]


def test_schedule_show(tmp_path: Path, repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import safehold.cli.schedule

    monkeypatch.setattr(
        safehold.cli.schedule, "clock", lambda: datetime(2026, 11, 22, 12).timestamp()
    )
    config = _config(tmp_path, repo, SCHEDULE)
    result = run_cli("schedule", "show", "--config", config, "--state-dir", tmp_path / "st")
    assert result.code == 0, result.err
    assert "backup  30 2 * * *" in result.out
    assert "2026-11-23 02:30 UTC, 2026-11-24 02:30 UTC, 2026-11-25 02:30 UTC" in result.out
    assert "2026-11-29 00:00 UTC" in result.out  # the weekly prune
    shown = run_cli(
        "schedule", "show", "--config", config, "--json", "--count", "1", "--state-dir", tmp_path
    ).json()
    assert shown["jobs"]["check"]["next"] == [datetime(2026, 11, 23, 4).timestamp()]
    none = tmp_path / "none.yaml"
    none.write_text(_document(tmp_path, {}))
    assert run_cli("schedule", "show", "--config", none).code == 2


# ------------------------------------------------------------------ schedule run, --log-json


def test_schedule_run_with_log_json_and_report(tmp_path: Path, repo: Path) -> None:
    config = _config(tmp_path, repo, {"backup": "@daily", "check": "@daily", "drill": "@weekly"})
    state = tmp_path / "state"
    result = run_cli("--log-json", "schedule", "run", "backup", "-c", config, "--state-dir", state)
    assert result.code == 0, result.err
    events = [json.loads(line) for line in result.err_lines]  # every line is JSON
    assert [e["event"] for e in events] == [
        "job-start",
        "component-start",
        "component-end",
        "job-end",
    ]
    assert events[2]["component"] == "data" and events[2]["status"] == "ok"
    assert events[3]["status"] == "ok" and len(events[3]["snapshot_id"]) == 64
    assert all({"time", "ts", "level", "message"} <= set(e) for e in events)
    checked = run_cli("--log-json", "schedule", "run", "check", "-c", config, "--state-dir", state)
    assert checked.code == 0, checked.err
    assert [json.loads(line)["event"] for line in checked.err_lines] == ["job-start", "job-end"]
    recorded = json.loads((state / "schedule-mini.json").read_text())
    assert recorded["check"]["ok"] is True and recorded["jobs"]["check"]["last_status"] == "ok"
    assert recorded["jobs"]["backup"]["last_status"] == "ok"
    # report: the check is shown, and the drill schedule (weekly) is what "never drilled" uses
    report = run_cli("report", "--config", config, "--state-dir", state, "--json")
    platform = report.json()["platforms"][0]
    assert platform["check"]["status"] == "passed"
    assert [w["kind"] for w in platform["warnings"]] == ["no-drill"]
    text = run_cli("report", "--config", config, "--state-dir", state)
    assert "last check (recorded here): " in text.out and ", passed" in text.out
    # a plain warning line in JSON mode is an object too
    warned = run_cli("--log-json", "report", "-c", config, "--state-dir", state)
    line = json.loads(warned.err_lines[0])
    assert line["level"] == "warning" and "never drilled" in line["message"]


def test_report_uses_the_schedule_intervals(tmp_path: Path, repo: Path, monkeypatch) -> None:
    import safehold.cli.status

    config = _config(tmp_path, repo, {"backup": "0 * * * *"})  # hourly
    assert run_cli("backup", "--config", config, "--quiet").code == 0
    later = time.time() + 3 * 3600  # 3 h: stale for an hourly schedule, fine for the 1d default
    monkeypatch.setattr(safehold.cli.status, "clock", lambda: later)
    kinds = [
        w["kind"]
        for w in run_cli("report", "-c", config, "--json").json()["platforms"][0]["warnings"]
    ]
    assert "stale" in kinds
    explicit = run_cli("report", "-c", config, "--json", "--expect-every", "1d").json()
    assert "stale" not in [w["kind"] for w in explicit["platforms"][0]["warnings"]]
