"""SQLite: a consistent copy of the database file, taken while the application writes.

Component keys: ``path`` (the database file on the target) or ``databases`` (a list of such
paths); optional ``staging_dir`` (local target only: where the temporary copy is made,
default the system temporary directory).

Dump, local target: Python's sqlite3 online backup API copies the whole database in one step
(a single read transaction: consistent, and never restarted by concurrent writers) into a
temporary file that is unlinked as soon as it is open; the stream is that file, so memory
stays flat whatever the database size. Other targets (ssh, containers): the target's sqlite3
CLI runs ``VACUUM INTO`` a temporary file there (also one read transaction, needs sqlite3
3.27 or newer), which is streamed with cat and removed. Both streams are database images.

Restore replaces the file and expects the application to be stopped: the image is written
to a temporary file next to the database, its length checked against its header, ``PRAGMA
integrity_check`` run on it, fsynced, the old ``-wal``/``-shm``/``-journal`` files removed,
and only then renamed over the database (keeping the old file's owner and mode). Any failure
leaves the old database untouched.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, closing, contextmanager
from typing import IO, Any
from urllib.parse import quote

from safehold.sources import DRILL_SCRATCH_FILES, Kind, SourceError
from safehold.sources.common import copy_checked, required
from safehold.sources.targets import LocalTarget, Target

MAGIC = b"SQLite format 3\0"
_SIDE_FILES = ("-wal", "-shm", "-journal")

_REMOTE_DUMP = """set -e
[ -f "$1" ] || { echo "sqlite database $1 does not exist" >&2; exit 66; }
t=$(mktemp "${TMPDIR:-/tmp}/safehold-sqlite.XXXXXX")
trap 'rm -f "$t" "$t-journal" "$t-wal" "$t-shm"' EXIT
sqlite3 -readonly -bail -cmd ".timeout 60000" "$1" "VACUUM INTO '$t'"
cat "$t"
"""

_REMOTE_RESTORE = """set -e
d=$(dirname "$1"); b=$(basename "$1")
t=$(mktemp "$d/.$b.safehold-restore.XXXXXX")
trap 'rm -f "$t" "$t-journal" "$t-wal" "$t-shm"' EXIT
cat > "$t"
n=$(wc -c < "$t")
if [ "$2" -ne 0 ] && [ "$n" -ne "$2" ]; then
  echo "the database image is incomplete: $n of $2 bytes" >&2; exit 65
fi
r=$(sqlite3 -readonly -bail "$t" "PRAGMA integrity_check" 2>&1) || :
[ "$r" = ok ] || { echo "integrity check of the restored copy failed: $r" >&2; exit 65; }
if [ -e "$1" ]; then
  chown --reference="$1" "$t" 2>/dev/null || :; chmod --reference="$1" "$t" 2>/dev/null || :
fi
sync "$t" 2>/dev/null || sync
rm -f "$t-wal" "$t-shm" "$1-wal" "$1-shm" "$1-journal"
mv -f "$t" "$1"
sync "$d" 2>/dev/null || sync
"""


def _cli_path(path: str) -> str:
    """Returns path so that the sqlite3 CLI never reads it as an option."""
    return path if path.startswith("/") else "./" + path


def _connect_ro(path: str) -> sqlite3.Connection:
    """Opens an existing database read-only (never creates one). Raises sqlite3.Error."""
    return sqlite3.connect(f"file:{quote(os.path.abspath(path))}?mode=ro", uri=True, timeout=60)


def _query(target: Target, path: str, sql: str) -> list[list[str]]:
    """Runs read-only SQL on the database at path; returns rows of strings."""
    if isinstance(target, LocalTarget):
        try:
            with closing(_connect_ro(path)) as db:
                return [[str(value) for value in row] for row in db.execute(sql)]
        except sqlite3.Error as error:
            raise SourceError(f"sqlite query on {path} failed: {error}") from None
    argv = [
        "sqlite3",
        "-readonly",
        "-bail",
        "-batch",
        "-noheader",
        "-list",
        "-separator",
        "\t",
        "-cmd",
        ".timeout 60000",
        _cli_path(path),
    ]
    output = target.run(argv, input=sql.encode())
    return [line.split("\t") for line in output.splitlines() if line]


def dump_names(component: Mapping[str, Any], target: Target) -> list[str]:
    """Returns the database file paths: ``databases`` if given, else ``[path]``."""
    return list(component.get("databases") or [required(component, "path", "sqlite")])


def dump(
    component: Mapping[str, Any], target: Target, database: str
) -> AbstractContextManager[IO[bytes]]:
    """Returns a context manager yielding a consistent image of the database file at path
    ``database``. Raises SourceError (on entering locally, on leaving remotely) if the file
    is missing or the copy fails."""
    if isinstance(target, LocalTarget):
        return _local_dump(database, component.get("staging_dir"))
    argv = ["sh", "-c", _REMOTE_DUMP, "sh", _cli_path(database)]
    return target.run_stream(argv, label=f"sqlite backup of {database}")


def _backup(path: str, copy: str) -> None:
    """Copies the database at path into the file copy with the online backup API, in one step."""
    if not os.path.isfile(path):
        raise SourceError(f"sqlite database {path} does not exist")
    try:
        with closing(_connect_ro(path)) as source, closing(sqlite3.connect(copy)) as dest:
            source.backup(dest, pages=-1)
    except sqlite3.Error as error:
        raise SourceError(f"sqlite backup of {path} failed: {error}") from None


def _remove(path: str, suffixes: tuple[str, ...] = ("", *_SIDE_FILES)) -> None:
    for suffix in suffixes:
        try:
            os.unlink(path + suffix)
        except FileNotFoundError:
            pass


@contextmanager
def _local_dump(path: str, staging_dir: str | None) -> Iterator[IO[bytes]]:
    descriptor, copy = tempfile.mkstemp(prefix="safehold-sqlite-", suffix=".db", dir=staging_dir)
    os.close(descriptor)
    try:
        _backup(path, copy)
        with open(copy, "rb") as handle:
            _remove(copy)  # the open handle keeps the data until it is closed
            yield handle
    finally:
        _remove(copy)


def image_size(header: bytes) -> int:
    """Given the first 100 bytes of a database image, return the image's length according to
    its header, or 0 if the header's page count is not known to be valid.

    Raises SourceError if the bytes are not an SQLite database header.
    """
    if len(header) < 100 or not header.startswith(MAGIC):
        raise SourceError("the stream is not an SQLite database image (bad or missing header)")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    valid = header[92:96] == header[24:28] and pages > 0
    return page_size * pages if valid else 0


def _read_header(stream: IO[bytes]) -> bytes:
    header = b""
    while len(header) < 100:
        chunk = stream.read(100 - len(header))
        if not chunk:
            break
        header += chunk
    return header


def restore(
    component: Mapping[str, Any],
    target: Target,
    database: str,
    stream: IO[bytes],
    into: str | None = None,
) -> None:
    """Given a database image as a readable stream, replace the file ``into`` (default:
    ``database``) with it, atomically, after checking its length and integrity.

    Raises SourceError if the image is incomplete or damaged (the old file is kept).
    """
    path = into or database
    header = _read_header(stream)
    expected = image_size(header)
    if isinstance(target, LocalTarget):
        _local_restore(header, stream, path, expected)
        return
    argv = ["sh", "-c", _REMOTE_RESTORE, "sh", _cli_path(path), str(expected)]
    with target.run_feed(argv, label=f"sqlite restore of {path}") as sink:
        sink.write(header)
        copy_checked(stream, sink, None)


def _local_restore(header: bytes, stream: IO[bytes], path: str, expected: int) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    descriptor, temp = tempfile.mkstemp(
        prefix=f".{name}.", suffix=".safehold-restore", dir=directory
    )
    try:
        with os.fdopen(descriptor, "wb") as out:
            out.write(header)
            copied = len(header) + copy_checked(stream, out, None)[0]
            out.flush()
            os.fsync(out.fileno())
        if expected and copied != expected:
            raise SourceError(
                f"the database image for {path} is incomplete: {copied} of "
                f"{expected} bytes; {path} was left as it was"
            )
        _integrity_check(temp, path)
        _remove(temp, _SIDE_FILES)
        _keep_owner_and_mode(path, temp)
        _remove(path, _SIDE_FILES)
        os.replace(temp, path)
    except BaseException:
        _remove(temp)
        raise
    _fsync_directory(directory)


def _integrity_check(temp: str, path: str) -> None:
    try:
        with closing(_connect_ro(temp)) as db:
            result = [row[0] for row in db.execute("PRAGMA integrity_check")]
    except sqlite3.Error as error:
        result = [str(error)]
    if result != ["ok"]:
        detail = "; ".join(result[:3])
        raise SourceError(
            f"the database image for {path} failed its integrity check ({detail});"
            f" {path} was left as it was"
        )


def _keep_owner_and_mode(path: str, temp: str) -> None:
    try:
        old = os.stat(path)
    except FileNotFoundError:
        return
    os.chmod(temp, old.st_mode & 0o7777)
    if os.geteuid() == 0:
        os.chown(temp, old.st_uid, old.st_gid)


def _fsync_directory(directory: str) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def row_counts(component: Mapping[str, Any], target: Target, database: str) -> dict[str, int]:
    """Returns the exact row count of every table of the database file at path ``database``."""
    names = _query(
        target,
        database,
        "SELECT name FROM sqlite_master WHERE type = 'table' "
        "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
    )
    if not names:
        return {}
    union = " UNION ALL ".join(
        "SELECT '{}', count(*) FROM \"{}\"".format(name.replace("'", "''"), name.replace('"', '""'))
        for (name, *_) in names
    )
    return {name: int(count) for name, count in _query(target, database, union)}


def server_version(component: Mapping[str, Any], target: Target) -> str:
    """Returns the SQLite library version used for dumps on the target, such as ``3.40.1``."""
    if isinstance(target, LocalTarget):
        return sqlite3.sqlite_version
    return target.run(["sqlite3", "--version"]).split()[0]


def query(
    component: Mapping[str, Any], target: Target, sql: str, database: str | None = None
) -> list[list[str]]:
    """Runs read-only SQL on the database file ``database`` (drill checks); returns rows of
    strings (NULL as ""). Raises SourceError if the query fails."""
    path = database or required(component, "path", "sqlite")
    if not isinstance(target, LocalTarget):
        return _query(target, path, sql)
    try:
        with closing(_connect_ro(path)) as db:
            return [
                ["" if value is None else str(value) for value in row] for row in db.execute(sql)
            ]
    except sqlite3.Error as error:
        raise SourceError(f"sqlite: {error}") from None


def dump_file(component: Mapping[str, Any], name: str) -> str:
    """Returns the database file's base name: what its image is stored under."""
    return os.path.basename(name) or "database"


KIND = Kind(
    name="sqlite",
    description="SQLite database files (online backup API)",
    properties={
        "path": {"type": "string", "description": "sqlite: the database file"},
        "databases": {
            "type": "array",
            "items": {"type": "string"},
            "minItems": 1,
            "description": "sqlite: several database files instead of `path`",
        },
        "staging_dir": {
            "type": "string",
            "description": "sqlite: where the consistent copy is made while "
            "streaming (default: the system temp dir; the copy is "
            "unlinked as soon as it is open)",
        },
    },
    required=("path",),
    rank=1,
    module=sys.modules[__name__],
    dump_file=dump_file,
    drill=DRILL_SCRATCH_FILES,
)
