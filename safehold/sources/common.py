"""Helpers shared by the source modules: checked stream copies, component lookups."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import IO, Any

from safehold.sources import SourceError
from safehold.sources.process import TargetVariable

CHUNK = 1 << 20
_TAIL = 4096


def copy_checked(source: IO[bytes], sink: IO[bytes], marker: bytes | None) -> tuple[int, bool]:
    """Given a readable source, a writable sink and the end marker of a complete dump (or None),
    copy source to sink in chunks.

    Returns (bytes copied, whether marker occurs in the last 4 KiB; True if marker is None).
    """
    total, tail = 0, b""
    for chunk in iter(lambda: source.read(CHUNK), b""):
        sink.write(chunk)
        total += len(chunk)
        tail = (tail + chunk)[-_TAIL:]
    return total, marker is None or marker in tail


def incomplete(what: str, copied: int, consequence: str) -> SourceError:
    """Returns the error for a dump whose end marker is missing (truncated or damaged)."""
    return SourceError(
        f"{what} is incomplete (its end marker is missing after {copied} bytes: truncated or "
        f"damaged); {consequence}"
    )


def required(component: Mapping[str, Any], key: str, kind: str) -> Any:
    """Returns component[key]. Raises SourceError naming the component if it is missing."""
    value = component.get(key)
    if value in (None, "", []):
        name = component.get("name", kind)
        raise SourceError(f"component {name!r} ({kind}) needs {key!r}")
    return value


def secret_env(
    variable: str, password: str | None, target_variable: str | None = None
) -> dict[str, str] | None:
    """Returns {variable: password}; {variable: TargetVariable(target_variable)} when the
    password is that variable of the target's environment; None without a password."""
    if target_variable:
        return {variable: TargetVariable(target_variable)}
    return {variable: password} if password else None


def counts_from_rows(rows: list[list[str]], program: str) -> dict[str, int]:
    """Given (table, count) rows printed by a query, return {table: count}.

    Raises SourceError if the output is not of that shape.
    """
    try:
        return {row[0]: int(row[1]) for row in rows}
    except (IndexError, ValueError):
        raise SourceError(f"unexpected row count output from {program}: {rows[:3]!r}") from None


# The keys of a database server component (postgres, mysql), as a JSON-schema fragment.
DATABASE_FIELDS = {
    "host": {"type": "string", "description": "database host as seen from the target"},
    "port": {"type": "integer", "minimum": 1, "maximum": 65535, "description": "database port"},
    "user": {"type": "string", "description": "database user (may be `${VAR}`)"},
    "password": {
        "type": "string",
        "description": "password: only as `${VAR}` (from the environment); never literal",
    },
    "password_file": {"type": "string", "description": "file whose first line is the password"},
    "password_env": {
        "type": "string",
        "pattern": "^[A-Za-z_][A-Za-z0-9_]*$",
        "description": "the password is this variable of the target's environment (a "
        "container's `POSTGRES_PASSWORD`, `MYSQL_ROOT_PASSWORD`): it never leaves the target",
    },
    "databases": {
        "type": "array",
        "items": {"type": "string"},
        "minItems": 1,
        "description": "names of the databases to dump, or `[all]`",
    },
}

_VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")


def sql_file(component: Mapping[str, Any], name: str) -> str:
    """Returns ``<name>.sql``: the file a database's dump is stored under."""
    return f"{name}.sql"


def variables_in(text: str) -> list[str]:
    """Returns the names of the ``$VAR``/``${VAR}`` references in text, sorted."""
    return sorted(set(_VARIABLE.findall(text)))


def quoted_identifier(name: str, quote: str) -> str:
    """Returns name between quote characters, inner quotes doubled (SQL identifiers)."""
    return quote + name.replace(quote, quote * 2) + quote
