"""MySQL/MariaDB source against a real MariaDB server: dump and restore locally and over ssh."""

from __future__ import annotations

import io

import pytest
from servers import free_port

from safehold.sources import SourceError
from safehold.sources import mysql as my
from safehold.sources.targets import LocalTarget, Target

SCHEMA = r"""
CREATE TABLE people (id INT PRIMARY KEY AUTO_INCREMENT, name VARCHAR(100) CHARACTER SET utf8mb4,
                     photo BLOB, born DATE);
CREATE TABLE visits (id BIGINT PRIMARY KEY, person INT, note TEXT CHARACTER SET utf8mb4,
                     FOREIGN KEY (person) REFERENCES people (id)) ENGINE=InnoDB;
CREATE TABLE `odd ``name` (x INT);
CREATE VIEW recent AS SELECT * FROM visits WHERE id > 900;
CREATE TRIGGER keep BEFORE INSERT ON visits FOR EACH ROW SET NEW.note = NEW.note;
CREATE PROCEDURE hello() SELECT 'hello';
CREATE EVENT nightly ON SCHEDULE EVERY 1 DAY DISABLE DO DELETE FROM visits WHERE id < 0;
INSERT INTO people (name, photo, born)
  WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300)
  SELECT CONCAT('Jürgen Ñandú 東京 😀 ', i), UNHEX(CONCAT(MD5(i), '00FF')),
         DATE_ADD('1950-01-01', INTERVAL i DAY) FROM n;
INSERT INTO visits
  WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000)
  SELECT i, 1 + i % 300, CONCAT('line\nbreak\ttab ', i) FROM n;
"""

EXPECTED_COUNTS = {"odd `name": 0, "people": 300, "visits": 1000}


def checksums(component: dict, database: str) -> dict[str, str]:
    rows = my.query(
        component, LocalTarget(), "CHECKSUM TABLE people, visits, `odd ``name`", database
    )
    return {table.split(".", 1)[1]: value for table, value in rows}


def dump_bytes(component: dict, target: Target, database: str) -> bytes:
    with my.dump(component, target, database) as stream:
        return stream.read()


def kind(target: Target) -> str:
    return "local" if isinstance(target, LocalTarget) else "ssh"


@pytest.fixture(scope="module")
def app(maria_server) -> dict:
    """A component whose database ``app`` (latin1 by default, utf8mb4 columns) holds tables,
    a view, a trigger, a procedure, an event, non-ASCII text and blobs."""
    component = maria_server.component(databases=["app"])
    my.query(component, LocalTarget(), "CREATE DATABASE app CHARACTER SET latin1")
    my.query(component, LocalTarget(), SCHEMA, "app")
    return component


@pytest.fixture(scope="module")
def app_dump(app) -> bytes:
    return dump_bytes(app, LocalTarget(), "app")


def charset(component: dict, database: str) -> list[list[str]]:
    sql = (
        "SELECT DEFAULT_CHARACTER_SET_NAME FROM information_schema.SCHEMATA "
        f"WHERE SCHEMA_NAME = '{database}'"
    )
    return my.query(component, LocalTarget(), sql)


def test_dump_names_and_version(app):
    assert my.dump_names(app, LocalTarget()) == ["app"]
    everything = my.dump_names(dict(app, databases=["all"]), LocalTarget())
    assert "app" in everything and not set(my.SYSTEM_SCHEMAS) & set(everything)
    assert "MariaDB" in my.server_version(app, LocalTarget())
    assert my.row_counts(app, LocalTarget(), "app") == EXPECTED_COUNTS


def test_dump_has_no_create_database_and_keeps_routines(app_dump):
    assert b"CREATE DATABASE" not in app_dump and b"\nUSE " not in app_dump
    for thing in (b"TRIGGER", b"PROCEDURE", b"EVENT", b"0x"):
        assert thing in app_dump
    assert my.DUMP_END in app_dump[-200:]


def test_dump_and_restore_under_another_name(app, exec_target):
    data = dump_bytes(app, exec_target, "app")
    copy = f"copy_{kind(exec_target)}"
    my.restore(app, exec_target, "app", io.BytesIO(data), into=copy)
    assert my.row_counts(app, exec_target, copy) == EXPECTED_COUNTS
    assert checksums(app, copy) == checksums(app, "app")
    assert charset(app, copy) == [["latin1"]]  # taken from the dumped database
    routines = f"SELECT COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = '{copy}'"
    assert my.query(app, LocalTarget(), routines) == [["1"]]


def test_restore_over_the_original(app, app_dump, exec_target):
    victim = f"victim_{kind(exec_target)}"
    my.restore(app, exec_target, "app", io.BytesIO(app_dump), into=victim)
    my.query(
        app,
        LocalTarget(),
        f"ALTER DATABASE {victim} CHARACTER SET utf8mb4; "
        "DELETE FROM visits WHERE id > 10; CREATE TABLE extra (y INT);",
        victim,
    )
    my.restore(app, exec_target, "app", io.BytesIO(app_dump), into=victim)
    assert my.row_counts(app, exec_target, victim) == EXPECTED_COUNTS
    assert checksums(app, victim) == checksums(app, "app")
    assert charset(app, victim) == [["utf8mb4"]]  # kept from the database it replaced


def test_truncated_dump_fails_loudly(app, app_dump, exec_target):
    name = f"truncated_{kind(exec_target)}"
    for cut in (len(app_dump) // 2, app_dump.index(my.DUMP_END)):
        with pytest.raises(SourceError, match="incomplete|ERROR") as caught:
            my.restore(app, exec_target, "app", io.BytesIO(app_dump[:cut]), into=name)
        assert caught.value.exit_code == 20
    assert f"database {name} is left partially restored" in str(caught.value)


def test_damaged_dump_fails_loudly(app, app_dump):
    position = app_dump.index(b"CREATE TABLE")
    damaged = app_dump[:position] + b"THIS IS NOT SQL;\n" + app_dump[position:]
    with pytest.raises(SourceError, match=r"mariadb failed locally.*ERROR 1064.*SQL syntax"):
        my.restore(app, LocalTarget(), "app", io.BytesIO(damaged), into="damaged")


def test_wrong_password_is_named(app, exec_target):
    wrong = dict(app, password="not-the-password")
    with pytest.raises(SourceError, match=r"mariadb-dump failed.*Access denied") as caught:
        dump_bytes(wrong, exec_target, "app")
    assert "not-the-password" not in str(caught.value)
    with pytest.raises(SourceError, match=r"mariadb failed.*Access denied"):
        my.restore(wrong, exec_target, "app", io.BytesIO(b""), into="never")


def test_unreachable_port_is_named(app):
    closed = dict(app, port=free_port())
    with pytest.raises(SourceError, match=r"mariadb-dump failed locally.*Can't connect"):
        dump_bytes(closed, LocalTarget(), "app")
    with pytest.raises(SourceError, match=r"mariadb failed locally.*Can't connect"):
        my.row_counts(closed, LocalTarget(), "app")


def test_missing_database_is_named(app):
    with pytest.raises(SourceError, match="Unknown database 'nope'"):
        dump_bytes(app, LocalTarget(), "nope")
