"""PostgreSQL: plain ``pg_dump`` per database, ``pg_dumpall --globals-only`` for roles.

Component keys: ``host``, ``port``, ``user``, ``password`` (sent as PGPASSWORD on stdin),
``databases`` (names, or ``["all"]``: every database that accepts connections and is not a
template), optional ``bin_dir`` (where pg_dump/psql live on the target) and ``maintenance_db``
(default ``postgres``).

Dumps are plain SQL without ``--create`` and without ``--clean``: restore always drops and
recreates the database itself, so the same dump restores under another name. The new
database is created from template0 with the owner, encoding and locale of the database being
replaced (or of the dumped one when restoring under a new name), then the dump is fed to
``psql -v ON_ERROR_STOP=1 --single-transaction``: any error, or a dump without pg_dump's end
marker, rolls the whole restore back and raises SourceError.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from typing import IO, Any

from safehold.sources import DRILL_SERVER, Kind
from safehold.sources.common import (
    CHUNK,
    DATABASE_FIELDS,
    copy_checked,
    counts_from_rows,
    incomplete,
    quoted_identifier,
    required,
    secret_env,
    sql_file,
)
from safehold.sources.counting import PostgresCopyCounter
from safehold.sources.targets import Target

DUMP_END = b"-- PostgreSQL database dump complete"
GLOBALS_END = b"-- PostgreSQL database cluster dump complete"
_CREATE_ROLE = re.compile(rb"CREATE ROLE [^;]+;")

_RECREATE = r"""
SELECT CASE WHEN datname = 'template0' THEN current_user
            ELSE pg_get_userbyid(datdba) END AS owner,
       pg_encoding_to_char(encoding) AS encoding, datcollate AS lc_collate,
       datctype AS lc_ctype, current_setting('server_version_num')::int >= 130000 AS force
  FROM pg_database WHERE datname IN (:'name', :'source', 'template0')
 ORDER BY datname = :'name' DESC, datname = :'source' DESC LIMIT 1 \gset
\if :force
DROP DATABASE IF EXISTS :"name" WITH (FORCE);
\else
DROP DATABASE IF EXISTS :"name";
\endif
CREATE DATABASE :"name" TEMPLATE template0 OWNER :"owner" ENCODING :'encoding'
  LC_COLLATE :'lc_collate' LC_CTYPE :'lc_ctype';
"""

_ROW_COUNTS = r"""
SELECT string_agg(format('SELECT %L, count(*) FROM %I.%I', schemaname || '.' || tablename,
                         schemaname, tablename), ' UNION ALL ' ORDER BY schemaname, tablename)
  FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema') \gexec
"""


def _program(component: Mapping[str, Any], name: str) -> str:
    bin_dir = component.get("bin_dir")
    return f"{bin_dir.rstrip('/')}/{name}" if bin_dir else name


def _connection(component: Mapping[str, Any]) -> list[str]:
    args = ["--no-password"]
    for option, key in (("--host", "host"), ("--port", "port"), ("--username", "user")):
        if component.get(key):
            args.append(f"{option}={component[key]}")
    return args


def _dbname(name: str) -> str:
    """Returns name as psql/pg_dump's database argument (a conninfo if it would be read as one)."""
    if "=" in name or name.startswith(("postgres://", "postgresql://")):
        return "dbname='" + name.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return name


def _secrets(component: Mapping[str, Any]) -> dict[str, str] | None:
    return secret_env("PGPASSWORD", component.get("password"), component.get("password_env"))


def _maintenance(component: Mapping[str, Any], avoid: str = "") -> str:
    database = component.get("maintenance_db") or "postgres"
    return "template1" if database == avoid else database


def _psql(component: Mapping[str, Any], database: str, *extra: str) -> list[str]:
    return [
        _program(component, "psql"),
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        *_connection(component),
        f"--dbname={_dbname(database)}",
        *extra,
    ]


def query(
    component: Mapping[str, Any], target: Target, sql: str, database: str | None = None
) -> list[list[str]]:
    """Given SQL (psql meta-commands allowed) and a database (default: the maintenance one),
    return the result rows as lists of strings. Raises SourceError if psql fails."""
    argv = _psql(component, database or _maintenance(component), "-A", "-t", "-F", "\t", "-f", "-")
    output = target.run(argv, _secrets(component), input=sql.encode())
    return [line.split("\t") for line in output.splitlines() if line]


def dump_names(component: Mapping[str, Any], target: Target) -> list[str]:
    """Returns the configured databases, or with ``["all"]`` every non-template database that
    accepts connections. Raises SourceError if none is configured or the query fails."""
    names = list(required(component, "databases", "postgres"))
    if names != ["all"]:
        return names
    sql = "SELECT datname FROM pg_database WHERE NOT datistemplate AND datallowconn ORDER BY 1"
    return [row[0] for row in query(component, target, sql)]


def dump(
    component: Mapping[str, Any], target: Target, database: str
) -> AbstractContextManager[IO[bytes]]:
    """Returns a context manager yielding the plain SQL dump of database as a binary stream.
    Leaving it raises SourceError if pg_dump failed (the stream must then be discarded)."""
    argv = [
        _program(component, "pg_dump"),
        "--format=plain",
        *_connection(component),
        _dbname(database),
    ]
    return target.run_stream(argv, _secrets(component))


def dump_globals(component: Mapping[str, Any], target: Target) -> AbstractContextManager[IO[bytes]]:
    """Returns a context manager yielding ``pg_dumpall --globals-only`` (roles, memberships,
    tablespaces) as a binary stream; raises SourceError on leaving it if pg_dumpall failed."""
    argv = [_program(component, "pg_dumpall"), "--globals-only", *_connection(component)]
    return target.run_stream(argv, _secrets(component))


def restore(
    component: Mapping[str, Any],
    target: Target,
    database: str,
    stream: IO[bytes],
    into: str | None = None,
) -> None:
    """Given the dump of database as a readable stream, drop and recreate ``into`` (default:
    database) and restore the dump into it in one transaction.

    Raises SourceError if recreating fails, psql reports any error, or the dump is incomplete;
    the recreated database is then left empty.
    """
    name = into or database
    recreate = ["-v", f"name={name}", "-v", f"source={database}", "-f", "-"]
    target.run(
        _psql(component, _maintenance(component, avoid=name), *recreate),
        _secrets(component),
        input=_RECREATE.encode(),
    )
    argv = _psql(component, name, "--single-transaction", "-f", "-")
    with target.run_feed(argv, _secrets(component)) as sink:
        copied, complete = copy_checked(stream, sink, DUMP_END)
        if not complete:
            raise incomplete(
                f"the dump of {database}",
                copied,
                f"nothing was restored and database {name} is left empty",
            )


def _lines(stream: IO[bytes]) -> Iterator[bytes]:
    """Yields the lines of a stream that may only offer read(size)."""
    pending = b""
    for chunk in iter(lambda: stream.read(CHUNK), b""):
        *complete, pending = (pending + chunk).split(b"\n")
        yield from (line + b"\n" for line in complete)
    if pending:
        yield pending


def _idempotent_roles(stream: IO[bytes]) -> Iterator[bytes]:
    """Yields the lines of a globals dump with each ``CREATE ROLE x;`` made a no-op when the
    role exists (the ``ALTER ROLE`` that follows still sets its attributes and password)."""
    for line in _lines(stream):
        if _CREATE_ROLE.fullmatch(line.rstrip(b"\r\n")):
            statement = line.rstrip(b"\r\n")
            line = (
                b"DO $safehold$ BEGIN " + statement + b" EXCEPTION WHEN duplicate_object"
                b" THEN NULL; END $safehold$;\n"
            )
        yield line


class _LineReader:
    """Adapts an iterator of byte lines to the read(size) that copy_checked uses."""

    def __init__(self, lines: Iterator[bytes]) -> None:
        self._lines = lines

    def read(self, _size: int = -1) -> bytes:
        return next(self._lines, b"")


def restore_globals(component: Mapping[str, Any], target: Target, stream: IO[bytes]) -> None:
    """Given a ``pg_dumpall --globals-only`` dump, apply it; roles that exist are altered,
    not recreated. Raises SourceError on any other error or an incomplete dump."""
    argv = _psql(component, _maintenance(component), "-f", "-")
    with target.run_feed(argv, _secrets(component)) as sink:
        copied, complete = copy_checked(_LineReader(_idempotent_roles(stream)), sink, GLOBALS_END)
        if not complete:
            raise incomplete("the globals dump", copied, "some roles may not have been restored")


def row_counts(component: Mapping[str, Any], target: Target, database: str) -> dict[str, int]:
    """Returns the exact row count of every table of database, keyed ``schema.table``."""
    return counts_from_rows(query(component, target, _ROW_COUNTS, database), "psql")


def server_version(component: Mapping[str, Any], target: Target) -> str:
    """Returns the server's version string, such as ``15.18 (Debian 15.18-0+deb12u1)``."""
    return query(component, target, "SHOW server_version")[0][0]


def drop_database(component: Mapping[str, Any], target: Target, name: str) -> None:
    """Drops database ``name`` if it exists (drill scratch databases). Raises SourceError."""
    query(component, target, "DROP DATABASE IF EXISTS " + quoted_identifier(name, '"'))


def propose(service: str, environment: dict, raw_service: dict) -> dict:
    """discover: the component for a PostgreSQL service of a compose file (inside the
    official image, local socket connections need no password)."""
    user = environment.get("POSTGRES_USER") or "postgres"
    proposed: dict = {"via": {"exec": "compose", "service": service}, "user": user}
    if "--auth" in environment.get("POSTGRES_INITDB_ARGS", "") or environment.get(
        "POSTGRES_HOST_AUTH_METHOD", ""
    ).startswith(("scram", "md5")):
        # the socket needs the password too: take it inside the container, never copy it
        proposed["password_env"] = "POSTGRES_PASSWORD"
    proposed["databases"] = [environment.get("POSTGRES_DB") or user]
    return proposed


KIND = Kind(
    name="postgres",
    description="PostgreSQL databases (pg_dump), with roles",
    properties={
        **DATABASE_FIELDS,
        "bin_dir": {
            "type": "string",
            "description": "postgres: directory of pg_dump/psql on the target "
            "(default: found on PATH)",
        },
        "maintenance_db": {
            "type": "string",
            "description": "postgres: database to connect to for DROP/CREATE (default `postgres`)",
        },
    },
    required=("databases",),
    rank=0,
    module=sys.modules[__name__],
    dump_file=sql_file,
    counter=PostgresCopyCounter,
    databases=True,
    drill=DRILL_SERVER,
    drill_server="postgresql",
    images=(
        "postgres",
        "postgis/postgis",
        "bitnami/postgresql",
        "timescale/timescaledb",
        "*/postgres",
        "*/postgresql",
        "*/postgres-*",  # dcm4che/postgres-dcm4chee, Kaapana's postgres-17.7-alpine
        "*/*-postgres",  # Kaapana's dcm4che-postgres
        "*/*-postgresql",  # Chipster's postgresql-14 image is */postgresql-14: below
        "*/postgresql-*",
        "postgres-*",
    ),
    propose=propose,
    data_markers=("PG_VERSION", "global/pg_control"),
)
