"""Source kinds: what safehold knows about each kind of platform component, one module each.

Every kind is one module in this package that defines ``KIND = Kind(...)``; the registry
(:func:`kinds`) finds them by importing the package's modules, so a new kind is one file (plus
its tests) and nothing else changes. A :class:`Kind` owns its schema fragment (the keys a
component of this kind takes), how its component is backed up and restored, its restore
rank, what a drill does with it and which container images ``discover`` recognises.

Most kinds are *dumps* (``postgres``, ``mysql``, ``sqlite``, ``command``): their ``module``
has the same functions, working on a *component* dict and an execution
:class:`~.targets.Target`:

- ``dump_names(component, target) -> list[str]``: what to dump (databases, files, one name);
- ``dump(component, target, name)``: context manager yielding a readable binary stream;
- ``restore(component, target, name, stream, into=None)``: replace ``into`` (default ``name``)
  with the dump read from ``stream``; raises :class:`SourceError` on any failure;
- ``row_counts(component, target, name) -> dict[str, int]`` and
  ``server_version(component, target) -> str``: recorded in snapshots, compared after restore;
- optional ``query(component, target, sql, database)`` (drill checks),
  ``drop_database(component, target, name)`` (drill scratch databases),
  ``dump_globals``/``restore_globals`` (PostgreSQL roles and memberships).

Other kinds (``files``, ``bucket``) set ``archive``/``restore_component``/``drill_component``
instead. A component dict holds its settings from the platform file plus ``password``
(already resolved, or None). Secrets travel on the first line of the child's stdin, never on
a command line (see ``targets``).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from safehold.errors import SafeholdError

EXIT_SOURCE = 20

# What a drill does with a kind's dumps (see safehold/ops/drill.py).
DRILL_SERVER = (
    "server"  # a throwaway server (drill_server) or scratch databases on the configured one
)
DRILL_SCRATCH_FILES = "scratch_files"  # restored as files into the drill's scratch directory
DRILL_READ_BACK = "read_back"  # read back and authenticated only (restoring would act live)


class SourceError(SafeholdError):
    """{message}"""

    exit_code = EXIT_SOURCE


@dataclass(frozen=True)
class Kind:
    """Everything safehold knows about one kind of component.

    ``properties`` and ``required`` are the kind's JSON-schema fragment (the keys shared by
    every kind, such as ``name``, ``via`` and ``critical``, are added by the platform schema).
    ``rank`` orders restores and drills (lower first). A dumps kind sets ``module``,
    ``dump_file`` and optionally ``counter``; a kind with its own layout sets ``archive``,
    ``restore_component`` and ``drill_component`` (see the ``bucket`` module).
    """

    name: str
    description: str
    properties: Mapping[str, Any]
    required: tuple[str, ...] = ()
    rank: int = 2
    aliases: tuple[str, ...] = ()
    module: ModuleType | None = None
    # dumps: (component, dump name) -> file name in the snapshot
    dump_file: Callable[[Mapping[str, Any], str], str] | None = None
    # dumps: wraps a dump stream, exact row counts in .counts once read
    counter: Callable[[Any], Any] | None = None
    files: bool = False  # a tree of local paths: hot+cold passes, moved aside on restore
    databases: bool = False  # named databases, which --to-database can rename
    before_stop: bool = False  # read through the live service: always before a cold stop
    drill: str = DRILL_READ_BACK
    drill_server: str | None = None  # the throwaway server ops starts for drills of it
    # (archiver, component, target, parent subtree or None, result) -> directory entry
    archive: Callable[..., dict] | None = None
    restore_component: Callable[..., Any] | None = None
    drill_component: Callable[..., Any] | None = None
    images: tuple[str, ...] = ()  # container images discover recognises as this kind
    # files that together mark a live data directory of this kind's server (PG_VERSION...)
    data_markers: tuple[str, ...] = ()
    # discover: (service name, its environment, raw compose service) -> component dict
    propose: Callable[[str, dict, dict], dict] | None = None
    # (component settings, "at components[i]") -> problems beyond the schema
    validate: Callable[[Mapping[str, Any], str], list[str]] | None = None

    def backup(
        self,
        archiver: Any,
        component: Mapping[str, Any],
        target: Any,
        parent: bytes | None,
        result: Any,
    ) -> dict:
        """Backs up one component of this kind into the archive (see :class:`Kind`); returns
        its directory entry. ``result`` gets what the snapshot records (``databases``,
        ``server_version``, ``paths``). Raises SourceError (or OSError) when it fails."""
        if self.archive is not None:
            return self.archive(archiver, component, target, parent, result)
        from safehold.sources.dumps import archive_dumps

        return archive_dumps(archiver, self, component, target, result)


_registry: dict[str, Kind] = {}
_aliases: dict[str, str] = {}
_discovered = False


def register(kind: Kind) -> None:
    """Adds (or replaces) a kind. The package's own kinds are found by :func:`kinds`; tests
    and plug-ins outside the package call this."""
    _registry[kind.name] = kind
    for alias in kind.aliases:
        _aliases[alias] = kind.name


def unregister(name: str) -> None:
    """Removes a kind added with :func:`register` (tests)."""
    kind = _registry.pop(name, None)
    for alias in kind.aliases if kind else ():
        _aliases.pop(alias, None)


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        kind = getattr(module, "KIND", None)
        if isinstance(kind, Kind) and kind.name not in _registry:
            register(kind)


def kinds() -> dict[str, Kind]:
    """Returns every known kind by name, in rank then name order."""
    _discover()
    return dict(sorted(_registry.items(), key=lambda item: (item[1].rank, item[0])))


def type_names() -> list[str]:
    """Every name a component's ``type`` may have: kinds and their aliases."""
    known = kinds()
    return [*known, *sorted(_aliases)]


def kind_of(type_name: str) -> Kind:
    """Given a component type (or an alias such as ``mariadb``), returns its kind.

    Raises SourceError for an unknown type.
    """
    known = kinds()
    kind = known.get(_aliases.get(type_name, type_name))
    if kind is None:
        raise SourceError(
            f"unknown source type {type_name!r}: expected one of {', '.join(type_names())}"
        )
    return kind


def source_module(type_name: str) -> ModuleType:
    """Given a dumps kind's type (``postgres``, ``mysql``/``mariadb``, ``sqlite``,
    ``command``), returns its module. Raises SourceError for an unknown type or a kind
    without dump functions."""
    kind = kind_of(type_name)
    if kind.module is None:
        raise SourceError(f"source type {type_name!r} has no dump functions")
    return kind.module


def restore_order(kind: Kind, settings: Mapping[str, Any], critical: bool) -> tuple:
    """The sort key of a component in a restore or drill: rank, then rebuildable ones and
    non-critical ones after the others."""
    return (kind.rank, bool(settings.get("rebuildable")), not critical)
