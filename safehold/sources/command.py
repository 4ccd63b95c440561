"""Any program whose stdout is the dump, with the command that restores it from stdin.

For services without a dump tool of their own in safehold: an OpenSearch snapshot, a MinIO
bucket mirror, a Solr backup, ``tar`` of a data directory inside a container.

Component keys: ``backup`` (a shell command writing the dump to stdout; ``$1`` is the dump's
name), ``restore`` (a shell command reading it from stdin; ``$1`` is the name to restore
into), optional ``version`` (a shell command printing the service's version), ``password``
(exported to both commands as SAFEHOLD_PASSWORD) and ``secrets`` (a mapping of more variable
names to resolved values); secrets travel on stdin like the database passwords. Both
commands run with ``sh -c`` on the target. A non-zero exit of either is a SourceError;
detecting a damaged dump is the restore command's job (``tar``, ``gzip -t``, ``jq`` ...
exit non-zero on truncated input).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import IO, Any

from safehold.sources import Kind
from safehold.sources.common import copy_checked, required
from safehold.sources.targets import Target


def _secrets(component: Mapping[str, Any]) -> dict[str, str] | None:
    secrets = dict(component.get("secrets") or {})
    if component.get("password"):
        secrets["SAFEHOLD_PASSWORD"] = component["password"]
    return secrets or None


def _name(component: Mapping[str, Any]) -> str:
    return str(component.get("name") or "dump")


def dump_names(component: Mapping[str, Any], target: Target) -> list[str]:
    """Returns one name: the component's name (or ``dump``)."""
    return [_name(component)]


def dump(
    component: Mapping[str, Any], target: Target, database: str
) -> AbstractContextManager[IO[bytes]]:
    """Returns a context manager yielding the backup command's stdout as a binary stream.
    Leaving it raises SourceError if the command exited non-zero."""
    command = required(component, "backup", "command")
    return target.run_stream(
        ["sh", "-c", command, "sh", database],
        _secrets(component),
        label=f"backup command of {_name(component)}",
    )


def restore(
    component: Mapping[str, Any],
    target: Target,
    database: str,
    stream: IO[bytes],
    into: str | None = None,
) -> None:
    """Given a dump as a readable stream, run the restore command with it on stdin and
    ``into`` (default: database) as ``$1``.

    Raises SourceError if the command exits non-zero or stops reading before the end.
    """
    command = required(component, "restore", "command")
    argv = ["sh", "-c", command, "sh", into or database]
    with target.run_feed(
        argv, _secrets(component), label=f"restore command of {_name(component)}"
    ) as sink:
        copy_checked(stream, sink, None)


def row_counts(component: Mapping[str, Any], target: Target, database: str) -> dict[str, int]:
    """Returns {}: a command dump has no tables to count."""
    return {}


def server_version(component: Mapping[str, Any], target: Target) -> str:
    """Returns the first line printed by the ``version`` command, or "" without one."""
    command = component.get("version")
    if not command:
        return ""
    output = target.run(
        ["sh", "-c", command], _secrets(component), label=f"version command of {_name(component)}"
    )
    return (output.strip().splitlines() or [""])[0]


def dump_file(component: Mapping[str, Any], name: str) -> str:
    """Returns ``filename`` (default ``dump``): what the command's output is stored under."""
    return component.get("filename") or "dump"


KIND = Kind(
    name="command",
    description="any program whose stdout is the dump",
    properties={
        "backup": {
            "type": "string",
            "description": "command: shell command whose stdout is the dump",
        },
        "restore": {
            "type": "string",
            "description": "command: shell command that reads the dump on stdin",
        },
        "filename": {"type": "string", "description": "command: name of the dump in the snapshot"},
        "version": {
            "type": "string",
            "description": "command: shell command printing the server version",
        },
        "password": {
            "type": "string",
            "description": "exported to both commands as SAFEHOLD_PASSWORD: only as `${VAR}`",
        },
        "password_file": {"type": "string", "description": "file whose first line is the password"},
    },
    required=("backup",),
    rank=2,
    module=sys.modules[__name__],
    dump_file=dump_file,
)
