"""Database and command sources: dumps streamed out of a live service, restores streamed in.

Each kind is one module with the same functions (``postgres``, ``mysql``, ``sqlite``,
``command``), working on a *component* dict and an execution :class:`~.targets.Target`:

- ``dump_names(component, target) -> list[str]``: what to dump (databases, files, one name);
- ``dump(component, target, name)``: context manager yielding a readable binary stream;
- ``restore(component, target, name, stream, into=None)``: replace ``into`` (default ``name``)
  with the dump read from ``stream``; raises :class:`SourceError` on any failure;
- ``row_counts(component, target, name) -> dict[str, int]`` and
  ``server_version(component, target) -> str``: recorded in snapshots, compared after restore.

PostgreSQL also has ``dump_globals(component, target)`` and
``restore_globals(component, target, stream)`` for roles and memberships.

A component dict holds ``host``, ``port``, ``user``, ``password`` (already resolved, or None),
``databases`` (a list, or ``["all"]``) and per-kind extras documented in each module. Secrets
travel on the first line of the child's stdin, never on a command line (see ``targets``).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from safehold.errors import SafeholdError

EXIT_SOURCE = 20
KINDS = ("postgres", "mysql", "sqlite", "command")


class SourceError(SafeholdError):
    """{message}"""

    exit_code = EXIT_SOURCE


def source_module(kind: str) -> ModuleType:
    """Given a component type (``postgres``, ``mysql``, ``sqlite``, ``command``), return its
    module. ``mariadb`` is an alias of ``mysql``.

    Raises SourceError for an unknown kind.
    """
    kind = "mysql" if kind == "mariadb" else kind
    if kind not in KINDS:
        raise SourceError(f"unknown source type {kind!r}: expected one of {', '.join(KINDS)}")
    return importlib.import_module(f"safehold.sources.{kind}")
