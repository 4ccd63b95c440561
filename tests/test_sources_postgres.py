"""PostgreSQL source against a real server: dump and restore locally and over ssh."""

from __future__ import annotations

import io
import subprocess
import time

import pytest
from servers import free_port

from safehold.sources import SourceError
from safehold.sources import postgres as pg
from safehold.sources.targets import LocalTarget, Target

SCHEMA = r"""
CREATE TABLE people (id serial PRIMARY KEY, name text NOT NULL, photo bytea, born date);
CREATE TABLE visits (id bigint PRIMARY KEY, person int REFERENCES people, note text,
                     data jsonb);
CREATE TABLE empty_table (x int);
CREATE SCHEMA archive;
CREATE TABLE archive."Old Visits" (id int, note text);
ALTER TABLE archive."Old Visits" OWNER TO alice;
CREATE VIEW recent AS SELECT * FROM visits WHERE id > 900;
CREATE FUNCTION keep() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;
CREATE TRIGGER keep BEFORE INSERT ON visits FOR EACH ROW EXECUTE FUNCTION keep();
INSERT INTO people (name, photo, born)
  SELECT 'Jürgen Ñandú 東京 ' || i, decode(md5(i::text) || md5((i + 1)::text), 'hex')
         || '\x00ff'::bytea, date '1950-01-01' + i
    FROM generate_series(1, 300) i;
INSERT INTO visits SELECT i, 1 + i % 300, E'line\nbreak\ttab ' || i,
                          jsonb_build_object('i', i, 'ü', 'ß')
                     FROM generate_series(1, 1000) i;
INSERT INTO archive."Old Visits" VALUES (1, 'é'), (2, NULL);
"""

CHECKSUMS = r"""
SELECT string_agg(format('SELECT %L, md5(coalesce(string_agg(t::text, %L ORDER BY t::text),
                                                  %L)) FROM %I.%I t',
                         schemaname || '.' || tablename, '|', '', schemaname, tablename),
                  ' UNION ALL ' ORDER BY schemaname, tablename)
  FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema') \gexec
"""

EXPECTED_COUNTS = {
    "archive.Old Visits": 2,
    "public.empty_table": 0,
    "public.people": 300,
    "public.visits": 1000,
}


def checksums(component: dict, database: str) -> dict[str, str]:
    return dict(pg.query(component, LocalTarget(), CHECKSUMS, database))


def dump_bytes(component: dict, target: Target, database: str) -> bytes:
    with pg.dump(component, target, database) as stream:
        return stream.read()


@pytest.fixture(scope="module")
def app(pg_server) -> dict:
    """A component whose database ``app`` holds tables, a view, a trigger, non-ASCII text and
    bytea; role alice owns one table."""
    component = pg_server.component(databases=["app"])
    pg.query(component, LocalTarget(), "CREATE ROLE alice NOLOGIN; CREATE DATABASE app;")
    pg.query(component, LocalTarget(), SCHEMA, "app")
    return component


@pytest.fixture(scope="module")
def app_dump(app) -> bytes:
    return dump_bytes(app, LocalTarget(), "app")


def kind(target: Target) -> str:
    return "local" if isinstance(target, LocalTarget) else "ssh"


def test_dump_names(app):
    assert pg.dump_names(app, LocalTarget()) == ["app"]
    everything = pg.dump_names(dict(app, databases=["all"]), LocalTarget())
    assert {"app", "postgres"} <= set(everything)
    assert not {"template0", "template1"} & set(everything)


def test_server_version_and_row_counts(app):
    assert pg.server_version(app, LocalTarget()).split(".")[0].isdigit()
    assert pg.row_counts(app, LocalTarget(), "app") == EXPECTED_COUNTS


def test_dump_is_plain_sql_without_create_database(app_dump):
    assert app_dump.startswith(b"--\n-- PostgreSQL database dump")
    assert pg.DUMP_END in app_dump[-1000:]
    assert b"CREATE DATABASE" not in app_dump


def test_dump_and_restore_under_another_name(app, exec_target):
    data = dump_bytes(app, exec_target, "app")
    copy = f"copy_{kind(exec_target)}"
    pg.restore(app, exec_target, "app", io.BytesIO(data), into=copy)
    assert pg.row_counts(app, exec_target, copy) == EXPECTED_COUNTS
    assert checksums(app, copy) == checksums(app, "app")
    owner = (
        "SELECT pg_get_userbyid(datdba), pg_encoding_to_char(encoding) FROM pg_database "
        f"WHERE datname = '{copy}'"
    )
    assert pg.query(app, exec_target, owner) == [[app["user"], "UTF8"]]


def test_restore_over_the_original_while_a_client_is_connected(app, app_dump, exec_target):
    victim = f"victim_{kind(exec_target)}"
    pg.restore(app, exec_target, "app", io.BytesIO(app_dump), into=victim)
    pg.query(
        app,
        LocalTarget(),
        "DELETE FROM visits WHERE id > 10; DROP TABLE empty_table; CREATE TABLE extra (y int);",
        victim,
    )
    client = subprocess.Popen(
        [
            f"{app['bin_dir']}/psql",
            "-X",
            "-h",
            app["host"],
            "-p",
            str(app["port"]),
            "-U",
            app["user"],
            "-d",
            victim,
            "-c",
            "SELECT pg_sleep(60)",
        ],
        env={"PGPASSWORD": app["password"]},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        sessions = f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{victim}'"
        deadline = time.monotonic() + 30
        while pg.query(app, LocalTarget(), sessions) == [["0"]] and time.monotonic() < deadline:
            time.sleep(0.05)
        pg.restore(app, exec_target, "app", io.BytesIO(app_dump), into=victim)
        assert client.wait(timeout=30) != 0  # WITH (FORCE) ended its session
    finally:
        client.kill()
        client.wait()
    assert pg.row_counts(app, exec_target, victim) == EXPECTED_COUNTS
    assert checksums(app, victim) == checksums(app, "app")


def test_truncated_dump_fails_loudly_and_restores_nothing(app, app_dump, exec_target):
    name = f"truncated_{kind(exec_target)}"
    for cut in (len(app_dump) // 2, app_dump.index(pg.DUMP_END)):
        with pytest.raises(SourceError, match="incomplete|ERROR") as caught:
            pg.restore(app, exec_target, "app", io.BytesIO(app_dump[:cut]), into=name)
        assert caught.value.exit_code == 20
        assert pg.row_counts(app, exec_target, name) == {}
    message = str(caught.value)
    assert "the dump of app is incomplete" in message and f"{name} is left empty" in message


def test_damaged_dump_rolls_back(app, app_dump):
    position = app_dump.index(b"CREATE TABLE")
    damaged = app_dump[:position] + b"THIS IS NOT SQL;\n" + app_dump[position:]
    with pytest.raises(SourceError, match=r"psql failed locally.*syntax error"):
        pg.restore(app, LocalTarget(), "app", io.BytesIO(damaged), into="damaged")
    assert pg.row_counts(app, LocalTarget(), "damaged") == {}


def test_wrong_password_is_named(app, exec_target):
    wrong = dict(app, password="not-the-password")
    with pytest.raises(SourceError, match="pg_dump failed.*password authentication failed"):
        dump_bytes(wrong, exec_target, "app")
    with pytest.raises(SourceError, match="psql failed.*password authentication failed") as caught:
        pg.restore(wrong, exec_target, "app", io.BytesIO(b""), into="never")
    assert "not-the-password" not in str(caught.value)


def test_unreachable_port_is_named(app):
    closed = dict(app, port=free_port())
    with pytest.raises(
        SourceError, match=f"pg_dump failed locally.*port {closed['port']}.*Connection refused"
    ):
        dump_bytes(closed, LocalTarget(), "app")
    with pytest.raises(SourceError, match="Connection refused"):
        pg.dump_names(dict(closed, databases=["all"]), LocalTarget())


def test_missing_database_is_named(app):
    with pytest.raises(SourceError, match='database "nope" does not exist'):
        dump_bytes(app, LocalTarget(), "nope")


def test_missing_tools_are_named(app, exec_target):
    with pytest.raises(SourceError, match="pg_dump failed .*program not found"):
        dump_bytes(dict(app, bin_dir="/nonexistent/bin"), exec_target, "app")


def test_globals_round_trip(app, exec_target):
    role = f"carol_{kind(exec_target)}"
    pg.query(app, LocalTarget(), f"CREATE ROLE {role} LOGIN PASSWORD 'pw'")
    with pg.dump_globals(app, exec_target) as stream:
        data = stream.read()
    assert f"CREATE ROLE {role};".encode() in data and b"CREATE ROLE alice;" in data
    pg.query(app, LocalTarget(), f"DROP ROLE {role}")
    pg.restore_globals(app, exec_target, io.BytesIO(data))
    pg.restore_globals(app, exec_target, io.BytesIO(data))  # roles exist: still fine
    exists = f"SELECT rolcanlogin FROM pg_roles WHERE rolname = '{role}'"
    assert pg.query(app, LocalTarget(), exists) == [["t"]]
    with pytest.raises(SourceError, match="the globals dump is incomplete"):
        pg.restore_globals(app, exec_target, io.BytesIO(data[: len(data) // 2]))
