"""A mini platform (files + SQLite) backed up hot+cold while a writer keeps working, destroyed,
restored with `restore --config`, and checked: database and files come from the same moment.

The writer inserts row N into SQLite, commits, then appends N to data/log.txt and writes
data/item-N.txt. Its "service" is paused by the cold phase (stop_command creates a pause file
and waits until the writer acknowledges). A consistent backup therefore has exactly the same ids
in the database as in the log file.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli

WRITER = textwrap.dedent("""
    import os, sqlite3, sys, time
    root = sys.argv[1]
    db = sqlite3.connect(os.path.join(root, "db", "app.sqlite"), isolation_level=None)
    db.execute("pragma journal_mode=wal")
    db.execute("create table if not exists items (id integer primary key, note text)")
    n = db.execute("select coalesce(max(id), 0) from items").fetchone()[0]
    while not os.path.exists(os.path.join(root, "quit")):
        if os.path.exists(os.path.join(root, "pause")):
            open(os.path.join(root, "paused"), "w").close()
            time.sleep(0.005)
            continue
        if os.path.exists(os.path.join(root, "paused")):
            os.unlink(os.path.join(root, "paused"))
        n += 1
        db.execute("insert into items (id, note) values (?, ?)", (n, f"note {n} é"))
        with open(os.path.join(root, "data", "log.txt"), "a") as log:
            log.write(f"{n}\\n")
        with open(os.path.join(root, "data", f"item-{n}.txt"), "w") as item:
            item.write(f"item {n}\\n" * (n % 50))
        time.sleep(0.002)
""")


def _platform_file(root: Path, repo: Path, strategy: str) -> Path:
    # Waits for the writer to acknowledge, but not for ever: during a restore it is not running.
    stop = (
        f"touch {root}/pause; i=0; while [ ! -e {root}/paused ] && [ $i -lt 500 ]; "
        "do sleep 0.01; i=$((i+1)); done"
    )
    config = {
        "repository": str(repo),
        "platform": "mini",
        "strategy": strategy,
        "services": {
            "control": "command",
            "stop_command": stop,
            "start_command": f"rm -f {root}/pause",
            "timeout": 30,
        },
        "components": [
            {"name": "db", "type": "sqlite", "path": str(root / "db" / "app.sqlite")},
            {"name": "data", "type": "files", "paths": [str(root / "data")]},
        ],
    }
    path = root / "platform.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


@pytest.fixture
def mini_platform(tmp_path: Path, repo: Path):
    root = tmp_path / "mini"
    (root / "data").mkdir(parents=True)
    (root / "db").mkdir()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(root)])
    deadline = time.monotonic() + 10
    while not (root / "data" / "log.txt").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # let it write a few hundred rows
    yield root, writer
    (root / "quit").touch()
    writer.wait(timeout=10)


def _stop_writer(root: Path, writer: subprocess.Popen) -> None:
    (root / "quit").touch()
    writer.wait(timeout=10)
    (root / "quit").unlink()


def _ids_in_db(path: Path) -> list[int]:
    with sqlite3.connect(path) as db:
        assert db.execute("pragma integrity_check").fetchone()[0] == "ok"
        return [row[0] for row in db.execute("select id from items order by id")]


def _ids_in_log(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()]


@pytest.mark.parametrize("strategy", ["hot+cold", "cold"])
def test_backup_is_consistent_and_restores_after_destruction(mini_platform, repo, strategy):
    root, writer = mini_platform
    config = _platform_file(root, repo, strategy)

    result = run_cli("backup", "--config", config, "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["status"] == "ok"
    assert {c["name"]: c["status"] for c in report["components"]} == {"db": "ok", "data": "ok"}
    assert {c["name"]: c["phase"] for c in report["components"]} == {"db": "cold", "data": "cold"}
    assert report["downtime"]["stopped"] == ["services"]
    assert report["downtime"]["started"] == ["services"]
    assert not (root / "pause").exists(), "the writer's service was not started again"
    recorded_rows = report["components"][0]["databases"][str(root / "db" / "app.sqlite")]["rows"]

    _stop_writer(root, writer)
    live_rows = len(_ids_in_db(root / "db" / "app.sqlite"))
    assert live_rows > recorded_rows["items"], "the writer went on after the backup"
    for path in [root / "db" / "app.sqlite", *(root / "db").glob("app.sqlite-*")]:
        path.unlink()
    subprocess.run(["rm", "-rf", str(root / "data")], check=True)

    restored = run_cli("restore", "--config", config, "--yes")
    assert restored.code == 0, restored.err
    db_ids = _ids_in_db(root / "db" / "app.sqlite")
    assert db_ids == _ids_in_log(root / "data" / "log.txt"), "database and files disagree"
    assert len(db_ids) == recorded_rows["items"]
    for number in db_ids[-5:]:
        assert (root / "data" / f"item-{number}.txt").read_text() == f"item {number}\n" * (
            number % 50
        )


def test_hot_cold_downtime_covers_only_the_second_pass(mini_platform, repo):
    root, _writer = mini_platform
    for number in range(300):  # something for the hot pass to do
        (root / "data" / f"bulk-{number}.bin").write_bytes(os.urandom(20_000))
    result = run_cli("backup", "--config", _platform_file(root, repo, "hot+cold"), "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    data = next(c for c in report["components"] if c["name"] == "data")
    assert data["phase"] == "cold"
    assert report["downtime"]["seconds"] > 0
    snapshots = json.loads(run_cli("snapshots", "--repo", repo, "--json").out)
    assert snapshots[-1]["platform"] == "mini"
    assert "component:data" in snapshots[-1]["tags"]


def test_live_restore_moves_existing_data_aside_and_keeps_it(mini_platform, repo):
    root, writer = mini_platform
    config = _platform_file(root, repo, "hot")
    assert run_cli("backup", "--config", config).code == 0
    _stop_writer(root, writer)
    (root / "data" / "written-after-backup.txt").write_text("keep me")

    plan = run_cli("restore", "--config", config, "--dry-run")
    assert plan.code == 0
    assert "move" in plan.out and str(root / "data") in plan.out

    refused = run_cli("restore", "--config", config)  # no terminal, no --yes
    assert refused.code == 2 and "--yes" in refused.err
    assert (root / "data" / "written-after-backup.txt").exists()

    assert run_cli("restore", "--config", config, "--yes").code == 0
    assert not (root / "data" / "written-after-backup.txt").exists()
    aside = [p for p in root.iterdir() if p.name.startswith("data.safehold-")]
    assert len(aside) == 1 and (aside[0] / "written-after-backup.txt").read_text() == "keep me"


def test_restore_to_target_extracts_without_touching_live_data(mini_platform, repo, tmp_path):
    root, writer = mini_platform
    config = _platform_file(root, repo, "cold")
    assert run_cli("backup", "--config", config).code == 0
    _stop_writer(root, writer)
    before = (root / "data" / "log.txt").read_bytes()
    target = tmp_path / "extract"
    assert run_cli("restore", "--config", config, "--target", target).code == 0
    assert (target / "db" / "app.sqlite").exists()
    extracted_log = target / "data" / str(root / "data" / "log.txt").lstrip("/")
    assert _ids_in_db(target / "db" / "app.sqlite") == _ids_in_log(extracted_log)
    assert (root / "data" / "log.txt").read_bytes() == before


def test_failing_component_is_reported_and_services_start_again(tmp_path, repo):
    root = tmp_path / "broken"
    (root / "data").mkdir(parents=True)
    (root / "data" / "a.txt").write_text("a")
    config = {
        "repository": str(repo),
        "platform": "broken",
        "strategy": "cold",
        "services": {
            "control": "command",
            "stop_command": f"touch {root}/stopped",
            "start_command": f"rm {root}/stopped && touch {root}/started",
        },
        "components": [
            {"name": "data", "type": "files", "paths": [str(root / "data")]},
            {"name": "dump", "type": "command", "backup": "echo partial; exit 3", "critical": True},
        ],
    }
    path = root / "platform.yaml"
    path.write_text(json.dumps(config))
    result = run_cli("backup", "--config", path)
    assert result.code == 23
    assert "dump" in result.err and "critical" in result.err
    assert (root / "started").exists() and not (root / "stopped").exists()
    snapshots = json.loads(run_cli("snapshots", "--repo", repo, "--json").out)
    components = {c["name"]: c["status"] for c in snapshots[-1]["components"]}
    assert components == {"data": "ok", "dump": "failed"}
