"""SQLite source: online copies while the application writes, atomic file replacement,
locally (Python's backup API) and over ssh (the sqlite3 CLI on the target)."""

from __future__ import annotations

import hashlib
import io
import os
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest

from safehold.sources import SourceError
from safehold.sources import sqlite as sq
from safehold.sources.targets import LocalTarget, Target

ROWS = 3000


def create(path: Path, journal_mode: str = "wal") -> None:
    """Creates a database with non-ASCII text, blobs, an odd table name, an index, a view,
    and a totals row that every writer transaction keeps equal to count(events)."""
    with closing(sqlite3.connect(path)) as db:
        db.execute(f"PRAGMA journal_mode={journal_mode}")
        db.executescript("""
            CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT, data BLOB);
            CREATE TABLE "odd ""name" (x);
            CREATE INDEX notes_text ON notes (text);
            CREATE VIEW recent AS SELECT * FROM notes WHERE id > 100;
            CREATE TABLE events (id INTEGER PRIMARY KEY, at TEXT);
            CREATE TABLE totals (n INTEGER);
            INSERT INTO totals VALUES (0);
        """)
        db.executemany(
            "INSERT INTO notes (text, data) VALUES (?, ?)",
            [(f"Jürgen Ñandú 東京 {i}", os.urandom(300) + b"\0") for i in range(ROWS)],
        )
        db.commit()


def content(path: Path | str) -> str:
    """Returns a digest of every row of every table, in rowid order."""
    digest = hashlib.sha256()
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        tables = db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        for (table,) in tables.fetchall():
            quoted = '"' + table.replace('"', '""') + '"'
            for row in db.execute(f"SELECT * FROM {quoted} ORDER BY rowid"):
                digest.update(repr(row).encode())
    return digest.hexdigest()


def dump_bytes(target: Target, path: Path | str) -> bytes:
    with sq.dump({"path": str(path)}, target, str(path)) as stream:
        return stream.read()


@pytest.fixture
def app(tmp_path) -> Path:
    path = tmp_path / "app.db"
    create(path)
    return path


def test_names_counts_and_version(app, exec_target):
    component = {"path": str(app)}
    assert sq.dump_names(component, exec_target) == [str(app)]
    assert sq.dump_names({"databases": ["/a.db", "/b.db"]}, exec_target) == ["/a.db", "/b.db"]
    assert sq.row_counts(component, exec_target, str(app)) == {
        "events": 0,
        "notes": ROWS,
        'odd "name': 0,
        "totals": 1,
    }
    assert sq.server_version(component, exec_target).startswith("3.")


def test_dump_and_restore_under_another_path(app, exec_target, tmp_path):
    data = dump_bytes(exec_target, app)
    assert data.startswith(sq.MAGIC)
    copy = tmp_path / "restored" / "copy.db"
    copy.parent.mkdir()
    sq.restore({"path": str(app)}, exec_target, str(app), io.BytesIO(data), into=str(copy))
    assert os.listdir(copy.parent) == ["copy.db"]  # no temporary files left
    assert content(copy) == content(app)


def test_restore_over_the_original_keeps_owner_and_mode(app, exec_target):
    before = content(app)
    data = dump_bytes(exec_target, app)
    with closing(sqlite3.connect(app)) as db:
        db.execute("DELETE FROM notes WHERE id > 10")
        db.commit()
    os.chmod(app, 0o640)
    os.chown(app, 1234, 2345)
    Path(f"{app}-journal").write_bytes(b"stale journal of the replaced database")
    sq.restore({"path": str(app)}, exec_target, str(app), io.BytesIO(data))
    assert content(app) == before
    status = app.stat()
    assert (status.st_mode & 0o7777, status.st_uid, status.st_gid) == (0o640, 1234, 2345)
    assert not Path(f"{app}-journal").exists()


def writer(path: Path, stop: threading.Event, started: threading.Event) -> None:
    """Keeps adding one event per transaction, updating totals in the same transaction (with
    a pause of a millisecond, like a busy application rather than a lock-hogging loop)."""
    with closing(sqlite3.connect(path, timeout=30)) as db:
        db.execute("PRAGMA synchronous=OFF")
        while not stop.is_set():
            with db:
                db.execute("INSERT INTO events (at) VALUES (datetime('now'))")
                db.execute("UPDATE totals SET n = n + 1")
            started.set()
            time.sleep(0.001)


def count(path: Path, table: str = "events") -> int:
    with closing(sqlite3.connect(path, timeout=30)) as db:
        return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
def test_backup_while_the_application_writes(exec_target, tmp_path, journal_mode):
    path = tmp_path / "busy.db"
    create(path, journal_mode)
    stop, started = threading.Event(), threading.Event()
    thread = threading.Thread(target=writer, args=(path, stop, started))
    thread.start()
    try:
        started.wait(10)
        low = count(path)
        data = dump_bytes(exec_target, path)
        high = count(path)
    finally:
        stop.set()
        thread.join()
    copy = tmp_path / "copy.db"
    sq.restore({"path": str(path)}, exec_target, str(path), io.BytesIO(data), into=str(copy))
    with closing(sqlite3.connect(copy)) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        ids = [row[0] for row in db.execute("SELECT id FROM events ORDER BY id")]
        total = db.execute("SELECT n FROM totals").fetchone()[0]
    assert low <= len(ids) <= high
    assert ids == list(range(1, len(ids) + 1))  # a prefix of the writes, no gaps
    assert total == len(ids)  # and whole transactions only
    assert count(copy, "notes") == ROWS


@pytest.mark.parametrize("damage", ["half", "one page short", "zeroed pages", "not sqlite"])
def test_damaged_image_is_refused_and_the_original_kept(app, exec_target, damage):
    data = dump_bytes(exec_target, app)
    damaged = {
        "half": data[: len(data) // 2],
        "one page short": data[:-4096],
        "zeroed pages": data[:100] + b"\0" * (len(data) - 100),
        "not sqlite": b"<html>" * 100,
    }[damage]
    before, files = content(app), sorted(os.listdir(app.parent))
    with pytest.raises(SourceError, match="incomplete|integrity check|not an SQLite") as caught:
        sq.restore({"path": str(app)}, exec_target, str(app), io.BytesIO(damaged))
    assert caught.value.exit_code == 20
    assert sorted(os.listdir(app.parent)) == files  # no temporary file left behind
    assert content(app) == before


def test_missing_database_is_named(exec_target, tmp_path):
    missing = tmp_path / "missing.db"
    with pytest.raises(SourceError, match=f"sqlite database {missing} does not exist"):
        dump_bytes(exec_target, missing)
    assert not missing.exists()  # never created by the attempt


def test_local_dump_leaves_no_staging_file(app, tmp_path):
    staging = tmp_path / "staging"
    staging.mkdir()
    component = {"path": str(app), "staging_dir": str(staging)}
    with sq.dump(component, LocalTarget(), str(app)) as stream:
        assert os.listdir(staging) == []  # unlinked while open
        assert stream.read(16) == sq.MAGIC


def test_image_size_reads_the_header():
    header = bytearray(sq.MAGIC + bytes(84))
    header[16:18] = (4096).to_bytes(2, "big")
    header[24:28] = header[92:96] = (7).to_bytes(4, "big")
    header[28:32] = (3).to_bytes(4, "big")
    assert sq.image_size(bytes(header)) == 3 * 4096
    header[92:96] = (8).to_bytes(4, "big")  # page count not known to be valid
    assert sq.image_size(bytes(header)) == 0
    with pytest.raises(SourceError, match="not an SQLite database image"):
        sq.image_size(b"short")
