"""Whole-platform backups with real database servers (issue 3's proof).

- mini K-Link: MariaDB + document files, hot+cold while a writer keeps inserting, destroyed,
  restored with `restore --config`, compared row by row against the restored files;
- the same with the MariaDB server itself stopped and started by the cold phase;
- mini Ovena: PostgreSQL + DICOM-like files, dumps and restores run locally and over ssh;
- restoring one component into another database, leaving everything else alone.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow

WRITER = textwrap.dedent("""\
    n=0
    while [ ! -e "$ROOT/quit" ]; do
      if [ -e "$ROOT/pause" ]; then touch "$ROOT/paused"; sleep 0.01; continue; fi
      rm -f "$ROOT/paused"
      n=$((n+1))
      if $INSERT "insert into items (id, note) values ($n, 'note $n')" >/dev/null 2>&1; then
        echo $n >> "$ROOT/data/log.txt"
        echo "note $n" > "$ROOT/data/item-$n.txt"
      else
        n=$((n-1)); sleep 0.05
      fi
    done
""")


def _pause_command(root: Path) -> str:
    return (
        f"touch {root}/pause; i=0; while [ ! -e {root}/paused ] && [ $i -lt 500 ]; "
        "do sleep 0.01; i=$((i+1)); done"
    )


class Writer:
    """The application: inserts rows and writes one file per row, until told to quit."""

    def __init__(self, root: Path, insert: str, environment: dict[str, str]) -> None:
        self.root = root
        (root / "data").mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["sh", "-c", WRITER],
            env={**os.environ, **environment, "ROOT": str(root), "INSERT": insert},
        )
        deadline = time.monotonic() + 20
        while len(self.ids_in_log()) < 30 and time.monotonic() < deadline:
            time.sleep(0.05)

    def ids_in_log(self) -> list[int]:
        path = self.root / "data" / "log.txt"
        return [int(n) for n in path.read_text().split()] if path.exists() else []

    def stop(self) -> None:
        (self.root / "quit").touch()
        self.process.wait(timeout=30)
        (self.root / "quit").unlink()


def _write_config(root: Path, repo: Path, **document: object) -> Path:
    path = root / "platform.yaml"
    path.write_text(json.dumps({"repository": str(repo), **document}))
    return path


def _compare_rows_with_files(rows: dict[int, str], root: Path) -> None:
    log_ids = [int(n) for n in (root / "data" / "log.txt").read_text().split()]
    assert sorted(rows) == log_ids, "the database and the files are from different moments"
    for number, note in rows.items():
        assert (root / "data" / f"item-{number}.txt").read_text() == f"{note}\n"


# ------------------------------------------------------------------ MariaDB (K-Link)


def _maria_cli(server, database: str = "") -> list[str]:
    return [
        "mariadb",
        "--no-defaults",
        "-h",
        server.host,
        "-P",
        str(server.port),
        "-u",
        server.user,
        "-N",
        "-B",
        *([database] if database else []),
    ]


def _maria(server, sql: str, database: str = "") -> str:
    return subprocess.run(
        [*_maria_cli(server, database), "-e", sql],
        check=True,
        text=True,
        capture_output=True,
        env={**os.environ, "MYSQL_PWD": server.password},
    ).stdout


def _maria_rows(server, database: str) -> dict[int, str]:
    lines = _maria(server, "select id, note from items order by id", database).splitlines()
    return {int(line.split("\t")[0]): line.split("\t")[1] for line in lines}


@pytest.fixture
def klink(tmp_path: Path, maria_server):
    database = f"dms_{os.getpid()}_{time.monotonic_ns() % 100000}"
    _maria(maria_server, f"create database {database}")
    _maria(maria_server, "create table items (id int primary key, note varchar(100))", database)
    root = tmp_path / "klink"
    insert = " ".join([*_maria_cli(maria_server, database), "-e"])
    writer = Writer(root, insert, {"MYSQL_PWD": maria_server.password})
    yield root, database, writer
    if writer.process.poll() is None:
        writer.stop()
    _maria(maria_server, f"drop database if exists {database}")


def test_mini_klink_hot_cold_with_a_live_writer_destroy_restore(klink, maria_server, repo):
    root, database, writer = klink
    component = {**maria_server.component(), "password": "${KLINK_DB_PASSWORD}"}
    config = _write_config(
        root,
        repo,
        platform="klink",
        strategy="hot+cold",
        services={
            "control": "command",
            "stop_command": _pause_command(root),
            "start_command": f"rm -f {root}/pause",
            "timeout": 60,
        },
        components=[
            {"name": "database", **component, "databases": [database]},
            {"name": "storage", "type": "files", "paths": [str(root / "data")]},
        ],
        hooks={"after_restore": [f"touch {root}/reindexed"]},
    )
    os.environ["KLINK_DB_PASSWORD"] = maria_server.password
    try:
        result = run_cli("backup", "--config", config, "--json")
        assert result.code == 0, result.err
        report = json.loads(result.out)
        assert report["status"] == "ok"
        assert {c["name"]: c["phase"] for c in report["components"]} == {
            "database": "cold",
            "storage": "cold",
        }
        assert maria_server.password not in result.out + result.err

        recorded = report["components"][0]["databases"][database]["rows"]["items"]
        deadline = time.monotonic() + 20
        while len(writer.ids_in_log()) <= recorded and time.monotonic() < deadline:
            time.sleep(0.05)  # the writer resumed after the cold phase
        writer.stop()
        assert len(writer.ids_in_log()) > recorded
        _maria(maria_server, f"drop database {database}")  # destroyed
        shutil.rmtree(root / "data")

        restored = run_cli("restore", "--config", config, "--yes")
        assert restored.code == 0, restored.err
        _compare_rows_with_files(_maria_rows(maria_server, database), root)
        assert (root / "reindexed").exists(), "after_restore hook did not run"
    finally:
        del os.environ["KLINK_DB_PASSWORD"]


def test_database_server_stopped_and_started_by_the_cold_phase(tmp_path: Path, repo):
    """mariadbd itself is stopped by a command service control: its dump is taken before."""
    import servers

    with servers.mariadb_server() as server:
        _maria(server, "create database dms")
        _maria(server, "create table items (id int primary key, note varchar(100))", "dms")
        _maria(server, "insert into items values (1, 'one'), (2, 'two')", "dms")
        pid = (server.directory / "pid").read_text().strip()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
        command = " ".join(shlex.quote(arg) for arg in argv)
        root = tmp_path / "p"
        (root / "data").mkdir(parents=True)
        (root / "data" / "doc.txt").write_text("document")
        pid_file = server.directory / "pid"
        stop = f"kill $(cat {pid_file}); while [ -e {pid_file} ]; do sleep 0.05; done"
        start = (
            f"({command} >/dev/null 2>&1 &); i=0; while ! mariadb-admin --no-defaults "
            f"--socket={server.socket} -uroot ping >/dev/null 2>&1 && [ $i -lt 600 ]; "
            "do sleep 0.05; i=$((i+1)); done"
        )
        config = _write_config(
            root,
            repo,
            platform="klink",
            strategy="cold",
            services={
                "control": "command",
                "stop_command": stop,
                "start_command": start,
                "timeout": 60,
            },
            components=[
                {
                    "name": "database",
                    **server.component(),
                    "databases": ["dms"],
                    "stopped_with_services": True,
                    "password": "${P}",
                },
                {"name": "storage", "type": "files", "paths": [str(root / "data")]},
            ],
        )
        os.environ["P"] = server.password
        try:
            result = run_cli("backup", "--config", config, "--json")
            assert result.code == 0, result.err
            report = json.loads(result.out)
            assert {c["name"]: c["phase"] for c in report["components"]} == {
                "database": "hot",
                "storage": "cold",
            }
            assert report["downtime"]["seconds"] > 0
            assert _maria_rows(server, "dms") == {1: "one", 2: "two"}, "server not started again"
            _maria(server, "drop database dms")
            restored = run_cli("restore", "--config", config, "--component", "database", "--yes")
            assert restored.code == 0, restored.err
            assert _maria_rows(server, "dms") == {1: "one", 2: "two"}
        finally:
            del os.environ["P"]
            new_pid = (server.directory / "pid").read_text().strip()
            if new_pid != pid:  # the restarted server is ours to stop
                subprocess.run(["kill", new_pid], check=False)


# ------------------------------------------------------------------ PostgreSQL (Ovena)


def _psql(server, sql: str, database: str = "postgres") -> str:
    return server.psql(sql, database)


def _pg_rows(server, database: str) -> dict[int, str]:
    lines = _psql(server, "select id, note from items order by id", database).splitlines()
    return {int(line.split("|")[0]): line.split("|")[1] for line in lines}


@pytest.mark.parametrize("via", ["local", "ssh"])
def test_mini_ovena_postgres_and_dicom_files(tmp_path: Path, pg_server, sshd_server, repo, via):
    database = f"orthanc_{via}_{os.getpid()}"
    _psql(pg_server, f"create database {database}")
    _psql(pg_server, "create table items (id int primary key, note text)", database)
    root = tmp_path / "ovena"
    insert = (
        f"{pg_server.bin_dir}/psql -X -q -h {pg_server.host} -p {pg_server.port} "
        f"-U {pg_server.user} -d {database} -c"
    )
    writer = Writer(root, insert, {"PGPASSWORD": pg_server.password})
    component = {
        "name": "database",
        **pg_server.component(),
        "databases": [database],
        "password": "${OVENA_DB_PASSWORD}",
    }
    if via == "ssh":
        sshd_server.start_master()
        component["via"] = sshd_server.via(multiplexed=True)
    config = _write_config(
        root,
        repo,
        platform="ovena",
        strategy="hot+cold",
        services={
            "control": "command",
            "stop_command": _pause_command(root),
            "start_command": f"rm -f {root}/pause",
            "timeout": 60,
        },
        components=[component, {"name": "dicom", "type": "files", "paths": [str(root / "data")]}],
    )
    os.environ["OVENA_DB_PASSWORD"] = pg_server.password
    try:
        result = run_cli("backup", "--config", config, "--json")
        assert result.code == 0, result.err
        report = json.loads(result.out)
        record = report["components"][0]["databases"][database]
        assert record["rows_exact"] is True
        writer.stop()

        _psql(pg_server, f"drop database {database}")
        shutil.rmtree(root / "data")
        restored = run_cli("restore", "--config", config, "--yes")
        assert restored.code == 0, restored.err
        rows = _pg_rows(pg_server, database)
        assert len(rows) == record["rows"]["public.items"]
        _compare_rows_with_files(rows, root)

        # One component into another database: live data is not touched.
        check = f"{database}_check"
        other = run_cli(
            "restore", "--config", config, "--component", "database", "--to-database", check
        )
        assert other.code == 0, other.err
        assert _pg_rows(pg_server, check) == rows
        _psql(pg_server, f"drop database {check}")
        _psql(pg_server, f"drop database {database}")
    finally:
        del os.environ["OVENA_DB_PASSWORD"]
        if writer.process.poll() is None:
            writer.stop()


def test_unreachable_database_is_a_failed_component_not_a_crash(tmp_path: Path, repo):
    root = tmp_path / "p"
    (root / "data").mkdir(parents=True)
    (root / "data" / "f").write_text("x")
    config = _write_config(
        root,
        repo,
        platform="p",
        strategy="hot",
        components=[
            {
                "name": "db",
                "type": "postgres",
                "host": "127.0.0.1",
                "port": 9,
                "user": "u",
                "databases": ["d"],
                "critical": False,
            },
            {"name": "files", "type": "files", "paths": [str(root / "data")]},
        ],
    )
    result = run_cli("backup", "--config", config, "--json")
    assert result.code == 3
    report = json.loads(result.out)
    components = {c["name"]: c for c in report["components"]}
    assert components["files"]["status"] == "ok"
    assert components["db"]["status"] == "failed"
    assert "pg_dump" in components["db"]["error"] or "psql" in components["db"]["error"]
