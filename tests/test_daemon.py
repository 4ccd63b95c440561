"""safehold daemon with an injected clock: real platform backups (files + SQLite), checks,
prunes and drills into a real repository over simulated days; jitter, no overlap, catch-up
after downtime, failures notified (to a real local HTTP server) without stopping the daemon,
/metrics over HTTP on 127.0.0.1, one lock per platform, SIGTERM, and "cannot start" notices."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import signal
import socket
import threading
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest

from safehold.cli import schedule as cli_schedule
from safehold.errors import SafeholdError
from safehold.ops.schedule import Planner, Schedule, State
from safehold.repo.snapshots import list_snapshots
from tests.conftest import mini_platform, open_repository, run_cli
from tests.test_notify import HttpRecorder

HOUR = 3600.0
DAY = 86400.0


pytestmark = pytest.mark.usefixtures("utc")


@pytest.fixture
def http_server():
    server = HttpRecorder()
    yield server
    server.close()


class FakeClock:
    """Time that moves only when the daemon sleeps (or a test job says it took long)."""

    def __init__(self, start: float) -> None:
        self.now = start
        self.naps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.naps.append(seconds)
        self.now += seconds


MONDAY = datetime(2026, 11, 23, 0, 0).timestamp()  # 00:00 UTC


def _platform(root: Path, repo: Path, schedule: dict, **extra: object) -> Path:
    (root / "scratch").mkdir(parents=True, exist_ok=True)
    return mini_platform(
        root,
        repo,
        retention={"keep_last": 2},
        drill={"scratch": str(root / "scratch")},
        schedule=schedule,
        **extra,
    )


def _args(config: Path, state: Path, **extra: object) -> argparse.Namespace:
    values = {
        "config": str(config),
        "repo": None,
        "passphrase_file": None,
        "state_dir": str(state),
        "metrics_port": None,
        "metrics_address": "127.0.0.1",
    }
    return argparse.Namespace(**(values | extra))


def _daemon(args, clock, *, seed=1, runners=None):  # type: ignore[no-untyped-def]
    return cli_schedule.build_daemon(
        args, clock=clock, sleep=clock.sleep, rng=random.Random(seed), runners=runners
    )


def _at(stamp: float) -> str:
    return datetime.fromtimestamp(stamp).strftime("%a %H:%M")


def test_jobs_fire_on_time_over_days_and_catch_up_once(tmp_path: Path, repo: Path) -> None:
    schedule = {
        "backup": "0 2 * * *",
        "check": "30 2 * * *",
        "check_read_data_subset": "50%",
        "prune": "0 3 * * 3",  # Wednesday
        "drill": "0 4 * * 2",  # Tuesday
    }
    config = _platform(tmp_path, repo, schedule)
    state = tmp_path / "state"
    clock = FakeClock(MONDAY)
    daemon, lock, _server = _daemon(_args(config, state), clock)
    try:
        runs = daemon.run(until=MONDAY + 3 * DAY)  # Monday to Wednesday
    finally:
        lock.release()
    got = [(h["job"], _at(h["start"]), h["status"]) for h in daemon.history]
    assert got == [
        ("backup", "Mon 02:00", "ok"),
        ("check", "Mon 02:30", "ok"),
        ("backup", "Tue 02:00", "ok"),
        ("check", "Tue 02:30", "ok"),
        ("drill", "Tue 04:00", "ok"),
        ("backup", "Wed 02:00", "ok"),
        ("check", "Wed 02:30", "ok"),
        ("prune", "Wed 03:00", "ok"),
    ]
    assert runs == 8
    assert all(nap <= 60 for nap in clock.naps)  # stop requests are seen within a minute
    with open_repository(repo) as repository:
        assert len(list_snapshots(repository)) == 2  # three backups, keep_last 2 after prune
    recorded = json.loads((state / "schedule-mini.json").read_text())
    assert recorded["check"]["ok"] and recorded["check"]["read_data_subset"] == "50%"
    assert recorded["jobs"]["drill"]["last_status"] == "ok"

    # down from Wednesday until Saturday 12:00: the missed backups run once, at once
    clock.now = MONDAY + 5 * DAY + 12 * HOUR
    daemon, lock, _server = _daemon(_args(config, state), clock)
    try:
        daemon.run(until=MONDAY + 6 * DAY + 3 * HOUR)  # until Sunday 03:00
    finally:
        lock.release()
    got = [(h["job"], _at(h["start"]), h["catch_up"]) for h in daemon.history]
    assert got == [
        ("backup", "Sat 12:00", True),  # Thursday's, Friday's and Saturday's: once
        ("check", "Sat 12:00", True),  # due while the backup ran: after it
        ("backup", "Sun 02:00", False),  # then on time again
        ("check", "Sun 02:30", False),
    ]  # drill (Tuesdays) and prune (Wednesdays) missed nothing


def test_no_overlap_jitter_and_a_failing_job(
    tmp_path: Path, repo: Path, http_server: HttpRecorder, capsys: pytest.CaptureFixture
) -> None:
    schedule = {"backup": "0 2 * * *", "check": "10 2 * * *", "jitter": 600}
    notify_section = {"on": ["failure", "success"], "webhook": {"url": http_server.url + "/h"}}
    config = _platform(tmp_path, repo, schedule, notify=notify_section)
    clock = FakeClock(MONDAY)
    real_backup = cli_schedule.RUNNERS["backup"]
    calls: list[str] = []

    def slow_backup(args):  # type: ignore[no-untyped-def]
        calls.append("backup")
        outcome = real_backup(args)  # a real platform backup ...
        clock.now += 45 * 60  # ... that takes 45 minutes
        return outcome

    def broken_check(args):  # type: ignore[no-untyped-def]
        calls.append("check")
        if len(calls) <= 2:  # the first check: the repository has gone away
            os.rename(repo, str(repo) + ".away")
            try:
                return cli_schedule.RUNNERS["check"](args)
            finally:
                os.rename(str(repo) + ".away", repo)
        return cli_schedule.RUNNERS["check"](args)

    daemon, lock, _ = _daemon(
        _args(config, tmp_path / "state"),
        clock,
        seed=7,
        runners={"backup": slow_backup, "check": broken_check},
    )
    try:
        daemon.run(until=MONDAY + 3 * DAY)
    finally:
        lock.release()
    history = daemon.history
    assert [h["job"] for h in history] == ["backup", "check"] * 3
    for earlier, later in itertools.pairwise(history):
        assert later["start"] >= earlier["end"]  # one job at a time
    for h in history:
        assert h["due"] <= h["at"] <= h["due"] + 600  # the jitter's bounds
        # the check due at 02:10 (+ jitter) waited for the 45-minute backup
    assert all(c["start"] == b["end"] for b, c in zip(history[::2], history[1::2], strict=True))
    assert [h["status"] for h in history] == ["ok", "failed", "ok", "ok", "ok", "ok"]
    events = [json.loads(r["body"]) for r in http_server.requests]
    assert [(e["event"], e["status"]) for e in events] == [
        ("backup", "ok"),
        ("check", "failed"),
        ("backup", "ok"),
        ("check", "ok"),
        ("backup", "ok"),
        ("check", "ok"),
    ]
    assert "no safehold repository" in events[1]["problems"][0], events[1]
    err = capsys.readouterr().err
    assert "check failed" in err  # one plain line per event
    assert err.count("backup started") == 3 and err.count("check started") == 3
    # jitter: many plans stay within bounds and are not all the same
    planner = Planner(
        Schedule.from_section({"backup": "@hourly", "jitter": 300}),
        State(tmp_path / "jitter", "x"),
        random.Random(3),
    )
    delays = []
    for i in range(50):
        planner.state.record_start("backup", MONDAY + i * HOUR)  # as when a run starts
        planned = planner.plan("backup", MONDAY + i * HOUR)
        delays.append(planned.at - planned.due)
    assert all(0 <= d <= 300 for d in delays) and len(set(delays)) > 40


def test_metrics_over_http_and_one_daemon_per_platform(tmp_path: Path, repo: Path) -> None:
    config = _platform(tmp_path, repo, {"backup": "@daily"})
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    clock = FakeClock(MONDAY)
    daemon, lock, server = _daemon(_args(config, tmp_path / "s", metrics_port=port), clock)
    try:
        with pytest.raises(SafeholdError, match="another safehold") as busy:
            _daemon(_args(config, tmp_path / "s"), clock)
        assert busy.value.exit_code == 14
        url = f"http://127.0.0.1:{port}/metrics"
        before = urllib.request.urlopen(url, timeout=5).read().decode()
        assert 'safehold_platform_snapshots{platform="mini"} 0' in before
        daemon.run(until=MONDAY + 2 * DAY)
        response = urllib.request.urlopen(url, timeout=5)
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
        assert 'safehold_platform_snapshots{platform="mini"} 2' in text
        assert 'safehold_component_last_backup_status{platform="mini",component="appdb"' in text
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=5)
    finally:
        server.close()
        lock.release()
    refused = run_cli(
        "daemon", "--config", config, "--metrics-port", "0", "--metrics-address", "0.0.0.0"
    )
    assert refused.code == 2 and "not a loopback address" in refused.err


def test_sigterm_stops_the_daemon_and_log_json(tmp_path: Path, repo: Path) -> None:
    config = _platform(tmp_path, repo, {"backup": "@yearly"})
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    began = time.monotonic()
    result = run_cli("--log-json", "daemon", "--config", config, "--state-dir", tmp_path / "s")
    timer.join()
    assert result.code == 0, result.err
    assert time.monotonic() - began < 10
    events = [json.loads(line) for line in result.err_lines]
    assert [e["event"] for e in events] == ["daemon-start", "daemon-stop"]
    assert events[0]["platform"] == "mini" and events[0]["jobs"] == ["backup"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    # the lock went with it: a new daemon starts
    clock = FakeClock(MONDAY)
    _, lock, _ = _daemon(_args(config, tmp_path / "s"), clock)
    lock.release()


def test_sigterm_during_the_cold_phase_restarts_services_and_stops(
    tmp_path: Path, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _platform(tmp_path, repo, {"backup": "0 2 * * *", "check": "0 3 * * *"})
    document = json.loads(config.read_text())
    marker = tmp_path / "started-again"
    document["services"] = {
        "control": "command",
        "stop_command": "kill -TERM $PPID; sleep 1",  # SIGTERM to safehold while stopping
        "start_command": f"touch {marker}",
    }
    config.write_text(json.dumps(document))
    clock = FakeClock(MONDAY)
    monkeypatch.setattr(cli_schedule, "clock", clock)
    monkeypatch.setattr(cli_schedule, "sleep", clock.sleep)
    state = tmp_path / "s"
    result = run_cli("daemon", "--config", config, "--state-dir", state)
    assert result.code == 0, result.err
    assert marker.exists()  # the services were started again
    recorded = json.loads((state / "schedule-mini.json").read_text())["jobs"]
    assert recorded["backup"]["last_status"] == "failed"
    assert "terminated by SIGTERM" in recorded["backup"]["last_message"]
    assert "last_start" not in recorded.get("check", {})  # stopped: the 03:00 check never ran
    assert "daemon stopped after 1 job(s)" in result.err


def test_a_backup_that_cannot_start_is_notified(tmp_path: Path, http_server: HttpRecorder) -> None:
    section = {"webhook": {"url": http_server.url + "/h"}}
    config = _platform(tmp_path, tmp_path / "missing-repo", {}, notify=section)
    result = run_cli("backup", "--config", config)
    assert result.code == 10, result.err
    [event] = [json.loads(r["body"]) for r in http_server.requests]
    assert (event["platform"], event["event"], event["status"]) == ("mini", "backup", "failed")
    assert event["problems"][0].startswith("the backup could not run: ")
    # a broken platform file whose notify: section is still usable
    broken = json.loads(config.read_text())
    broken["components"][0]["paths"] = ["relative/path"]
    config.write_text(json.dumps(broken))
    result = run_cli("backup", "--config", config)
    assert result.code == 21, result.err
    assert len(http_server.requests) == 2
    event = json.loads(http_server.requests[1]["body"])
    assert event["status"] == "failed" and "not an absolute path" in event["problems"][0]
