"""MySQL and MariaDB: ``mariadb-dump`` (or ``mysqldump``) per database, streamed.

Component keys: ``host``, ``port``, ``user``, ``password`` (sent as MYSQL_PWD on stdin),
``databases`` (names, or ``["all"]``: every database but the system schemas), optional
``socket``. The dump and client programs are probed on the target (``mariadb-dump`` then
``mysqldump``; ``mariadb`` then ``mysql``).

Dumps are taken without ``--databases`` (no CREATE DATABASE / USE inside), with
``--single-transaction --routines --triggers --events --hex-blob``: restore drops and
recreates the database itself (keeping the character set and collation of the database being
replaced, or of the dumped one under a new name), so the same dump restores under another
name. The client stops at the first error; a dump without mariadb-dump's end marker is
refused. MySQL has no transactional DDL, so a failed restore leaves the database partial:
the error says so. Users and grants (the ``mysql`` schema) are not part of these dumps.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import IO, Any

from safehold.sources import DRILL_SERVER, Kind
from safehold.sources.common import (
    DATABASE_FIELDS,
    copy_checked,
    counts_from_rows,
    incomplete,
    quoted_identifier,
    required,
    secret_env,
    sql_file,
)
from safehold.sources.targets import Target

DUMP_END = b"-- Dump completed"
SYSTEM_SCHEMAS = ("information_schema", "performance_schema", "mysql", "sys")

_ROW_COUNTS = """
SET SESSION group_concat_max_len = 67108864;
SELECT GROUP_CONCAT(CONCAT('SELECT ', QUOTE(TABLE_NAME), ', COUNT(*) FROM `',
                           REPLACE(TABLE_NAME, '`', '``'), '`')
                    ORDER BY TABLE_NAME SEPARATOR ' UNION ALL ') INTO @safehold_counts
  FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_TYPE = 'BASE TABLE';
SET @safehold_counts = COALESCE(@safehold_counts, 'SELECT 1, 1 FROM DUAL WHERE FALSE');
PREPARE safehold_counts FROM @safehold_counts;
EXECUTE safehold_counts;
DEALLOCATE PREPARE safehold_counts;
"""


def _literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _identifier(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _recreate_sql(name: str, source: str) -> str:
    """Returns SQL that drops database name and creates it again, with the character set and
    collation of name (if it exists), else of source (if it exists), else the server's."""
    create = _literal(f"CREATE DATABASE {_identifier(name)}")
    return f"""
SET @cs = NULL, @co = NULL;
SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME INTO @cs, @co
  FROM information_schema.SCHEMATA WHERE SCHEMA_NAME IN ({_literal(name)}, {_literal(source)})
 ORDER BY SCHEMA_NAME = {_literal(name)} DESC LIMIT 1;
DROP DATABASE IF EXISTS {_identifier(name)};
SET @create = CONCAT({create}, IF(@cs IS NULL, '', CONCAT(' CHARACTER SET ', @cs,
                                                          ' COLLATE ', @co)));
PREPARE safehold_create FROM @create;
EXECUTE safehold_create;
DEALLOCATE PREPARE safehold_create;
"""


def _connection(component: Mapping[str, Any]) -> list[str]:
    args = []
    for option, key in (
        ("--host", "host"),
        ("--port", "port"),
        ("--user", "user"),
        ("--socket", "socket"),
    ):
        if component.get(key):
            args.append(f"{option}={component[key]}")
    return args


def _secrets(component: Mapping[str, Any]) -> dict[str, str] | None:
    return secret_env("MYSQL_PWD", component.get("password"), component.get("password_env"))


def _client(component: Mapping[str, Any], target: Target, *extra: str) -> list[str]:
    return [
        target.which("mariadb", "mysql"),
        *_connection(component),
        "--default-character-set=utf8mb4",
        *extra,
    ]


def query(
    component: Mapping[str, Any], target: Target, sql: str, database: str | None = None
) -> list[list[str]]:
    """Given SQL and an optional default database, return the result rows (batch mode: tab
    separated, no header) as lists of strings. Raises SourceError if the client fails."""
    argv = _client(component, target, "--batch", "--skip-column-names")
    if database:
        argv.append(f"--database={database}")
    output = target.run(argv, _secrets(component), input=sql.encode())
    return [line.split("\t") for line in output.splitlines() if line]


def dump_names(component: Mapping[str, Any], target: Target) -> list[str]:
    """Returns the configured databases, or with ``["all"]`` every database except the system
    schemas. Raises SourceError if none is configured or the query fails."""
    names = list(required(component, "databases", "mysql"))
    if names != ["all"]:
        return names
    rows = query(component, target, "SHOW DATABASES")
    return sorted(row[0] for row in rows if row[0] not in SYSTEM_SCHEMAS)


def dump(
    component: Mapping[str, Any], target: Target, database: str
) -> AbstractContextManager[IO[bytes]]:
    """Returns a context manager yielding the SQL dump of database as a binary stream.
    Leaving it raises SourceError if the dump program failed (discard the stream then)."""
    argv = [
        target.which("mariadb-dump", "mysqldump"),
        *_connection(component),
        "--default-character-set=utf8mb4",
        "--single-transaction",
        "--routines",
        "--triggers",
        "--events",
        "--hex-blob",
        database,
    ]
    return target.run_stream(argv, _secrets(component))


def restore(
    component: Mapping[str, Any],
    target: Target,
    database: str,
    stream: IO[bytes],
    into: str | None = None,
) -> None:
    """Given the dump of database as a readable stream, drop and recreate ``into`` (default:
    database) and load the dump into it.

    Raises SourceError if recreating fails, the client reports an error, or the dump is
    incomplete (the database is then left partially restored).
    """
    name = into or database
    query(component, target, _recreate_sql(name, database))
    with target.run_feed(
        _client(component, target, f"--database={name}"), _secrets(component)
    ) as sink:
        copied, complete = copy_checked(stream, sink, DUMP_END)
        if not complete:
            raise incomplete(
                f"the dump of {database}", copied, f"database {name} is left partially restored"
            )


def row_counts(component: Mapping[str, Any], target: Target, database: str) -> dict[str, int]:
    """Returns the exact row count of every base table of database, keyed by table name."""
    return counts_from_rows(query(component, target, _ROW_COUNTS, database), "mariadb")


def server_version(component: Mapping[str, Any], target: Target) -> str:
    """Returns the server's version string, such as ``10.11.19-MariaDB-0+deb12u1``."""
    return query(component, target, "SELECT VERSION()")[0][0]


def drop_database(component: Mapping[str, Any], target: Target, name: str) -> None:
    """Drops database ``name`` if it exists (drill scratch databases). Raises SourceError."""
    query(component, target, "DROP DATABASE IF EXISTS " + quoted_identifier(name, "`"))


def propose(service: str, environment: dict, raw_service: dict) -> dict:
    """discover: the component for a MySQL/MariaDB service of a compose file: root, with the
    password taken inside the container from the variable the image itself was given
    (``MARIADB_ROOT_PASSWORD``/``MYSQL_ROOT_PASSWORD``, literal in the compose file or not):
    it is never copied into the platform file."""
    database = environment.get("MARIADB_DATABASE") or environment.get("MYSQL_DATABASE")
    proposed: dict = {"via": {"exec": "compose", "service": service}, "user": "root"}
    variable = next(
        (
            name
            for name in ("MARIADB_ROOT_PASSWORD", "MYSQL_ROOT_PASSWORD")
            if environment.get(name)
        ),
        None,
    )
    if variable:
        proposed["password_env"] = variable
    else:
        fallback = re.sub(r"[^A-Z0-9]", "_", service.upper()) + "_ROOT_PASSWORD"
        proposed["password"] = "${" + fallback + "}"
        proposed["_note"] = (
            f"no root password in its environment (random or empty root password?): set "
            f"{fallback} to it, or dump as another user"
        )
    proposed["databases"] = [database] if database else ["all"]
    return proposed


KIND = Kind(
    name="mysql",
    description="MySQL and MariaDB databases (mariadb-dump / mysqldump)",
    aliases=("mariadb",),
    properties={
        **DATABASE_FIELDS,
        "socket": {"type": "string", "description": "mysql: unix socket instead of host/port"},
    },
    required=("databases",),
    rank=0,
    module=sys.modules[__name__],
    dump_file=sql_file,
    databases=True,
    drill=DRILL_SERVER,
    drill_server="mariadb",
    images=("mysql", "mariadb", "bitnami/mariadb", "bitnami/mysql", "*/mysql", "*/mariadb"),
    propose=propose,
    data_markers=("ibdata1", "mysql/"),
)
