"""Restore drills (issue 6): `safehold drill --config` against real servers.

The source databases are the session's real PostgreSQL and MariaDB (tests/servers.py); the
drill starts its OWN throwaway servers (safehold/ops/scratch_servers.py) and must leave
nothing behind: no process, no directory, no scratch database.

How a table is lost from a dump, honestly (test_drill_fails_when_a_table_was_lost_from_the_dump):
an option file. ``mariadb-dump`` reads ``[mariadb-dump]`` in ``~/.my.cnf`` (and /etc/mysql),
so a forgotten ``ignore-table=shop.lost_table`` there (left over from a migration, say) makes
every dump silently lack that table, while the backup still succeeds. The row counts that
safehold records for MariaDB come from the live server through the ``mariadb`` client (which
does not read that group), so the snapshot says ``lost_table: 3`` while the dump holds no such
table. Nothing in the repository is altered by the test: the backup really produced that dump,
as it would in production, and only a restore (the drill) can show it. PostgreSQL cannot be
used for this: its counts come from the dump stream itself, so a table missing from the dump
is missing from the counts too (a user SQL check catches that case; see the check tests).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from itertools import count
from pathlib import Path

import pytest

from safehold.archive import tree
from safehold.archive.restorer import Restorer
from safehold.ops import drill as drill_module
from safehold.ops import scratch_servers
from safehold.ops.drill import choose_snapshot, list_drills
from safehold.ops.drill_verify import compare_rows, evaluate, scratch_database_name, verify_files
from safehold.platform.config import load_platform
from safehold.repo.snapshots import resolve
from safehold.sources import mysql, postgres
from safehold.sources.targets import LocalTarget
from tests.conftest import (
    blob_place,
    flip_byte,
    open_repository,
    run_cli,
    snapshot_entry,
)

SMALL_CHUNKS = {"min_size": 4096, "avg_size": 16384, "max_size": 65536}
_numbers = count(1)


def _unique(prefix: str) -> str:
    return f"{prefix}_{os.getpid()}_{next(_numbers)}"


@pytest.fixture
def drill_repo(make_repo) -> Path:
    return make_repo("repo", chunker=SMALL_CHUNKS)


@pytest.fixture
def scratch() -> Path:
    """A scratch parent that the servers' unprivileged users can traverse (tmp_path's
    ancestors are closed to them)."""
    path = Path(tempfile.mkdtemp(prefix="safehold-test-drill-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _platform(root: Path, repo: Path, components: list[dict], **extra: object) -> Path:
    path = root / "platform.yaml"
    document = {"repository": str(repo), "platform": "drilled", "components": components}
    path.write_text(json.dumps({**document, **extra}))
    return path


def _backup(config: Path) -> dict:
    result = run_cli("backup", "--config", config, "--json")
    assert result.code == 0, result.err
    return result.json()


def _drill(config: Path, scratch: Path, *extra: object):  # type: ignore[no-untyped-def]
    return run_cli("drill", "--config", config, "--json", "--scratch", scratch, *extra)


def _files_and_sqlite(root: Path) -> list[dict]:
    """A files component (small, multi-chunk, hard-linked, symlinked) and an SQLite one."""
    data = root / "documents"
    (data / "sub").mkdir(parents=True)
    (data / "letter.txt").write_text("Dear patient,\n" * 50)
    (data / "scan.bin").write_bytes(os.urandom(200_000))  # several chunks at SMALL_CHUNKS
    (data / "sub" / "empty").write_bytes(b"")
    os.link(data / "letter.txt", data / "sub" / "letter-link.txt")
    os.symlink("letter.txt", data / "latest")
    with sqlite3.connect(root / "app.db") as db:
        db.execute("create table notes (id integer primary key, body text)")
        db.executemany("insert into notes (body) values (?)", [(f"n{i}",) for i in range(7)])
    return [
        {"name": "documents", "type": "files", "paths": [str(data)]},
        {"name": "appdb", "type": "sqlite", "path": str(root / "app.db")},
    ]


def _gone(server: dict) -> bool:
    return not os.path.exists(server["directory"]) and not scratch_servers.alive(server["pid"])


# ------------------------------------------------------------------ real source databases


@pytest.fixture
def pg_app(pg_server, monkeypatch: pytest.MonkeyPatch):
    """A PostgreSQL database with a table owned by its own role (so the drill must apply the
    roles first) and a quoted schema; yields its platform component. (No space in the quoted
    name: the dump's row counter records "Archive"."Old Notes" as Archive.Old, which a drill
    reports as a missing table; see the report of issue 6.)"""
    database = _unique("drill_app")
    settings = pg_server.component()
    target = LocalTarget()
    postgres.query(
        settings,
        target,
        "DO $$ BEGIN CREATE ROLE drill_owner NOLOGIN; "
        "EXCEPTION WHEN duplicate_object THEN NULL; END $$;"
        f'CREATE DATABASE "{database}";',
    )
    postgres.query(
        settings,
        target,
        "CREATE TABLE items (id int PRIMARY KEY, name text);"
        "INSERT INTO items VALUES (1, 'één'), (2, 'two'), (3, 'drei');"
        "ALTER TABLE items OWNER TO drill_owner;"
        'CREATE SCHEMA "Archive"; CREATE TABLE "Archive"."OldNotes" (n int);'
        'INSERT INTO "Archive"."OldNotes" SELECT generate_series(1, 250);',
        database,
    )
    monkeypatch.setenv("DRILL_PG_PASSWORD", pg_server.password)
    yield {
        "name": "pg",
        **{k: v for k, v in settings.items() if k != "password"},
        "password": "${DRILL_PG_PASSWORD}",
        "databases": [database],
    }
    postgres.query(settings, target, f'DROP DATABASE IF EXISTS "{database}"')


@pytest.fixture
def maria_shop(maria_server, monkeypatch: pytest.MonkeyPatch):
    """A MariaDB database with two tables; yields its platform component."""
    database = _unique("drill_shop")
    settings = maria_server.component()
    target = LocalTarget()
    mysql.query(settings, target, f"CREATE DATABASE {database}")
    mysql.query(
        settings,
        target,
        "CREATE TABLE orders (id int PRIMARY KEY, qty int);"
        "INSERT INTO orders VALUES (1, 4), (2, 5), (3, 6);"
        "CREATE TABLE lost_table (id int PRIMARY KEY);"
        "INSERT INTO lost_table VALUES (1), (2), (3);",
        database,
    )
    monkeypatch.setenv("DRILL_MARIA_PASSWORD", maria_server.password)
    yield {
        "name": "shop",
        **{k: v for k, v in settings.items() if k != "password"},
        "password": "${DRILL_MARIA_PASSWORD}",
        "databases": [database],
    }
    mysql.query(settings, target, f"DROP DATABASE IF EXISTS {database}")


def _scratch_databases(pg_server, maria_server) -> list[str]:
    pg = postgres.query(pg_server.component(), LocalTarget(), "SELECT datname FROM pg_database")
    maria = mysql.query(maria_server.component(), LocalTarget(), "SHOW DATABASES")
    return [row[0] for row in pg + maria if row[0].endswith("_safehold_drill")]


@pytest.mark.slow
def test_drill_of_a_real_platform_passes_on_its_own_throwaway_servers(
    tmp_path, scratch, drill_repo, pg_app, maria_shop, pg_server, maria_server
):
    components = [pg_app, maria_shop, *_files_and_sqlite(tmp_path)]
    checks = [
        {"name": "items", "component": "pg", "sql": "select count(*) from items", "expect": 3},
        {"component": "shop", "sql": "select sum(qty) from orders", "expect": ">= 15"},
        {"component": "appdb", "database": "app.db", "sql": "select count(*) from notes"},
    ]
    config = _platform(tmp_path, drill_repo, components, drill={"checks": checks})
    _backup(config)

    result = _drill(config, scratch)

    assert result.code == 0, result.err
    record = result.json()
    assert record["status"] == "passed"
    by_name = {c["name"]: c for c in record["components"]}
    assert {n: c["status"] for n, c in by_name.items()} == dict.fromkeys(
        ["pg", "shop", "appdb", "documents"], "passed"
    )
    pg, shop = by_name["pg"], by_name["shop"]
    assert pg["restored_into"].startswith("throwaway PostgreSQL")
    assert shop["restored_into"].startswith("throwaway MariaDB")
    assert pg["server"]["port"] != pg_server.port and shop["server"]["port"] != maria_server.port
    assert pg["databases"][pg_app["databases"][0]] | {"restore_seconds": 0} == {
        "into": pg_app["databases"][0],
        "tables": 2,
        "rows": 253,
        "restore_seconds": 0,
    }
    assert shop["databases"][maria_shop["databases"][0]]["rows"] == 6
    assert by_name["documents"]["files"] == 4  # the hard link's two names are both checked
    assert [c["status"] for c in record["checks"]] == ["passed"] * 3
    assert record["checks"][0]["value"] == "3"
    assert record["rto_seconds"] > 0 and pg["restore_seconds"] > 0
    # Nothing is left: servers, their directories, the scratch space, scratch databases.
    assert pg["server"]["removed"] and shop["server"]["removed"]
    assert _gone(pg["server"]) and _gone(shop["server"])
    assert list(scratch.iterdir()) == []
    assert _scratch_databases(pg_server, maria_server) == []
    # The result survives in the repository.
    assert record["stored_as"].startswith("drills/")
    with open_repository(drill_repo) as repository:
        stored = list_drills(repository, "drilled")
    assert [(d["id"], d["status"]) for d in stored] == [(record["stored_as"][7:], "passed")]
    assert stored[0]["components"] == record["components"]


@pytest.mark.slow
def test_drill_fails_when_a_table_was_lost_from_the_dump(
    tmp_path, scratch, drill_repo, maria_shop, monkeypatch
):
    """See the module docstring: a [mariadb-dump] option file drops the table from the dump."""
    database = maria_shop["databases"][0]
    home = tmp_path / "home"
    home.mkdir()
    (home / ".my.cnf").write_text(f"[mariadb-dump]\nignore-table={database}.lost_table\n")
    config = _platform(tmp_path, drill_repo, [maria_shop])
    with monkeypatch.context() as patch:
        patch.setenv("HOME", str(home))
        backup = _backup(config)
    assert backup["status"] == "ok"  # the backup itself noticed nothing
    recorded = backup["components"][0]["databases"][database]
    assert recorded["rows"] == {"lost_table": 3, "orders": 3} and not recorded["rows_exact"]

    result = _drill(config, scratch)

    assert result.code == 25, result.err
    record = result.json()
    assert record["status"] == "failed"
    shop = record["components"][0]
    assert shop["status"] == "failed"
    assert shop["failures"] == [
        f"{database}: table lost_table is missing after the restore (3 rows recorded)"
    ]
    assert f"safehold: drill: shop: {database}: table lost_table is missing" in result.err
    assert result.err_lines[-1].startswith("safehold: drill of snapshot ")
    assert result.err_lines[-1].endswith("FAILED: shop")
    assert _gone(shop["server"]) and list(scratch.iterdir()) == []


def test_a_failing_sql_check_fails_the_drill(tmp_path, drill_repo):
    checks = [
        {"name": "seven notes", "component": "appdb", "sql": "select count(*) from notes",
         "expect": 7},
        {"name": "wrong", "component": "appdb", "sql": "select count(*) from notes",
         "expect": ">= 100"},
        {"name": "no table", "component": "appdb", "sql": "select count(*) from lost"},
    ]  # fmt: skip
    config = _platform(tmp_path, drill_repo, _files_and_sqlite(tmp_path), drill={"checks": checks})
    _backup(config)

    result = _drill(config, tmp_path / "scratch")

    assert result.code == 25, result.err
    record = result.json()
    assert [c["status"] for c in record["components"]] == ["passed", "passed"]
    assert [(c["name"], c["status"]) for c in record["checks"]] == [
        ("seven notes", "passed"),
        ("wrong", "failed"),
        ("no table", "failed"),
    ]
    assert record["checks"][1]["message"] == "expected >= 100, got '7'"
    assert "no such table: lost" in record["checks"][2]["message"]
    assert result.err_lines[-1].endswith("FAILED: check 'wrong', check 'no table'")


def test_text_output_shows_pass_fail_per_component_and_the_rto(tmp_path, drill_repo):
    config = _platform(tmp_path, drill_repo, _files_and_sqlite(tmp_path))
    _backup(config)

    result = run_cli("drill", "--config", config, "--scratch", tmp_path / "scratch")

    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].endswith(": PASSED")
    assert re.search(r"^appdb\s+sqlite\s+passed\s", result.out, re.M)
    assert re.search(r"^documents\s+files\s+passed\s.*4 files", result.out, re.M)
    assert "estimated restore time (RTO): " in result.out
    assert "drill result stored as drills/" in result.out


@pytest.mark.slow
def test_configured_servers_get_scratch_databases_that_are_dropped_again(
    tmp_path, drill_repo, pg_app, maria_shop, pg_server, maria_server
):
    check = {"component": "pg", "sql": "select count(*) from items", "expect": 3}
    config = _platform(
        tmp_path,
        drill_repo,
        [pg_app, maria_shop],
        drill={"throwaway_servers": False, "checks": [check]},
    )
    _backup(config)

    result = _drill(config, tmp_path / "scratch")

    assert result.code == 0, result.err
    record = result.json()
    for component in record["components"]:
        assert component["restored_into"].startswith("scratch databases on the configured")
        assert component["server"] is None
        (name, database), = component["databases"].items()  # fmt: skip
        assert database["into"] == f"{name}_safehold_drill"
    assert record["checks"][0]["status"] == "passed"
    assert _scratch_databases(pg_server, maria_server) == []


@pytest.mark.slow
@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "term"])
def test_an_interrupted_drill_removes_its_throwaway_server(
    tmp_path, scratch, drill_repo, pg_app, signal_number
):
    config = _platform(tmp_path, drill_repo, [pg_app])
    _backup(config)
    process = subprocess.Popen(
        [sys.executable, "-m", "safehold.cli.main", "drill", "-c", config, "--scratch", scratch],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as in a terminal
    )
    started = ""
    for line in process.stderr:  # type: ignore[union-attr]
        if "started throwaway PostgreSQL" in line:
            started = line
            os.killpg(process.pid, signal_number)  # Ctrl-C reaches the whole group
            break
    _, err = process.communicate(timeout=60)
    assert started, err
    assert process.returncode == 130, err
    assert "interrupted" in err or "terminated by SIGTERM during the drill" in err
    pid, directory = re.search(r"\(pid (\d+), (\S+)\)", started).groups()  # type: ignore[union-attr]
    assert _gone({"pid": int(pid), "directory": directory})
    assert list(scratch.iterdir()) == []


@pytest.mark.slow
def test_a_throwaway_server_is_removed_when_the_block_fails(scratch):
    bin_dir = scratch_servers.choose_postgres(None)
    if bin_dir is None:
        pytest.skip("PostgreSQL server programs are not installed")
    with (
        pytest.raises(RuntimeError),
        scratch_servers.throwaway_postgres(str(scratch), bin_dir) as s,
    ):
        assert postgres.query(s.settings, LocalTarget(), "SELECT 1") == [["1"]]
        server = {"pid": s.pid, "directory": s.directory}
        assert not _gone(server)
        raise RuntimeError("a restore failed")
    assert _gone(server)
    assert list(scratch.iterdir()) == []
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    assert server["directory"] not in ps.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="servers run as another user only under root")
def test_a_scratch_directory_the_server_user_cannot_reach_is_refused(tmp_path):
    bin_dir = scratch_servers.choose_postgres(None)
    if bin_dir is None:
        pytest.skip("PostgreSQL server programs are not installed")
    closed = tmp_path / "closed"  # below pytest's 0700 directory
    closed.mkdir()
    with pytest.raises(scratch_servers.ScratchServerError, match="cannot reach"):
        with scratch_servers.throwaway_postgres(str(closed), bin_dir):
            pass
    assert list(closed.iterdir()) == []


# ------------------------------------------------------------------ pieces


def test_the_file_check_reads_restored_bytes_back(tmp_path, drill_repo):
    config = _platform(tmp_path, drill_repo, _files_and_sqlite(tmp_path))
    _backup(config)
    with open_repository(drill_repo) as repository:
        snapshot = resolve(repository, "latest")
        entry = tree.find(repository, snapshot, "/documents")
        target = tmp_path / "restored"
        Restorer(repository, str(target)).restore(entry, "/")
        assert verify_files(repository, entry, str(target)).failures == []
        data = target / str(tmp_path / "documents").lstrip("/")
        scan = bytearray((data / "scan.bin").read_bytes())
        scan[150_000] ^= 1
        (data / "scan.bin").write_bytes(scan)
        (data / "sub" / "empty").write_bytes(b"x")
        os.unlink(data / "latest")
        os.symlink("elsewhere", data / "latest")
        verdict = verify_files(repository, entry, str(target))
    prefix = str(tmp_path / "documents")
    assert sorted(verdict.failures) == [
        f"{prefix}/latest: symlink target differs",
        f"{prefix}/scan.bin: content differs from the snapshot (chunk ids do not match)",
        f"{prefix}/sub/empty: 1 bytes, 0 recorded",
    ]


def test_random_older_picks_an_older_snapshot(tmp_path, drill_repo):
    config = _platform(tmp_path, drill_repo, _files_and_sqlite(tmp_path))
    first = _backup(config)["snapshot_id"]
    latest = _backup(config)["snapshot_id"]
    platform = load_platform(str(config))
    with open_repository(drill_repo) as repository:
        assert choose_snapshot(repository, platform, random_older=True)[0]["id"] == first
        assert choose_snapshot(repository, platform)[0]["id"] == latest
    result = _drill(config, tmp_path / "scratch", "--random-older")
    assert result.code == 0, result.err
    assert result.json()["snapshot"] == first
    both = run_cli("drill", "--config", config, latest[:8], "--random-older")
    assert both.code == 2 and "either a SNAPSHOT or --random-older" in both.err


def test_a_check_naming_a_files_component_is_a_config_error(tmp_path, drill_repo):
    check = {"component": "documents", "sql": "select 1"}
    config = _platform(tmp_path, drill_repo, _files_and_sqlite(tmp_path), drill={"checks": [check]})
    _backup(config)
    result = _drill(config, tmp_path / "scratch")
    assert result.code == 21
    assert "at drill.checks[0].component: documents is a files component" in result.err


def test_a_component_that_failed_at_backup_fails_the_drill(tmp_path, drill_repo):
    components = _files_and_sqlite(tmp_path)
    config = _platform(
        tmp_path, drill_repo, [*components, {**components[1], "name": "gone", "path": "/nope"}]
    )
    result = run_cli("backup", "--config", config, "--json")
    assert result.code == 23
    drilled = _drill(config, tmp_path / "scratch")
    assert drilled.code == 25
    gone = next(c for c in drilled.json()["components"] if c["name"] == "gone")
    assert gone["failures"][0].startswith("not restorable: its backup failed")


def test_damaged_repository_data_fails_the_drill_and_is_recorded(tmp_path, drill_repo):
    config = _platform(tmp_path, drill_repo, _files_and_sqlite(tmp_path))
    _backup(config)
    scan = snapshot_entry(drill_repo, "latest", f"/documents{tmp_path}/documents/scan.bin")
    pack, offset, _length = blob_place(drill_repo, scan["content"][1])
    flip_byte(pack, offset + 40)

    result = _drill(config, tmp_path / "scratch")

    assert result.code == 25, result.err
    record = result.json()
    documents = next(c for c in record["components"] if c["name"] == "documents")
    assert documents["status"] == "failed"
    assert any("scan.bin" in f and "damaged" in f for f in documents["failures"]), documents
    with open_repository(drill_repo) as repository:
        assert [d["status"] for d in list_drills(repository)] == ["failed"]


def test_rows_expectations_and_scratch_names():
    assert compare_rows({"a": 1, "b": 2}, {"a": 1, "b": 2, "c": 9}, True) == ([], [])
    failures, warnings = compare_rows({"a": 1, "b": 2, "c": 3}, {"a": 1, "b": 5}, False)
    assert failures == ["table c is missing after the restore (3 rows recorded)"]
    assert warnings[0].startswith("table b: 5 rows, 2 recorded at backup")
    assert compare_rows({"b": 2}, {"b": 5}, True)[0] == ["table b: 5 rows, 2 recorded at backup"]
    assert evaluate(None, []) == (True, None, "the query runs")
    assert evaluate(3, [["3"]])[0] and not evaluate("3", [["03"]])[0]
    assert evaluate(">= 2.5", [["3"]]) == (True, "3", ">= 2.5")
    assert evaluate("!= 0", [["0"]])[0] is False
    assert evaluate("> 1", [["many"]]) == (False, "many", "a number > 1")
    assert evaluate("ok", []) == (False, None, "ok")
    assert scratch_database_name("dms") == "dms_safehold_drill"
    long = scratch_database_name("x" * 80)
    assert len(long) == 63 and long.endswith("_safehold_drill")
    assert long != scratch_database_name("x" * 79 + "y")


def test_drill_results_are_listed_per_platform(drill_repo):
    with open_repository(drill_repo) as repository:
        assert list_drills(repository) == []
        name = drill_module.save_drill(repository, {"platform": "a", "time": 2.0})
        drill_module.save_drill(repository, {"platform": "b", "time": 1.0})
        assert [d["platform"] for d in list_drills(repository)] == ["b", "a"]
        assert list_drills(repository, "a") == [{"platform": "a", "time": 2.0, "id": name[7:]}]
