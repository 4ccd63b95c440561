"""Between the platform model and the sources: targets, source settings, service runners.

What a component of each kind is and how it is backed up lives in its kind's module
(``safehold/sources/<kind>.py``, found by ``safehold.sources.kinds``).
"""

from __future__ import annotations

import re
import shlex
import subprocess

from safehold.platform.config import Component
from safehold.platform.services import ServiceError, ServiceTimeout, compose_command
from safehold.secrecy import child_env
from safehold.sources import Kind, kind_of
from safehold.sources.dumps import GLOBALS_FILE
from safehold.sources.targets import LocalTarget, Target, target_from_via

__all__ = ["GLOBALS_FILE", "ServiceRunner", "kind", "service_runner", "source_settings"]


def target_for(component: Component, services: dict | None = None) -> Target:
    """The execution target of a component; compose targets inherit services.project_dir,
    services.file and the compose command (detected here when ``auto``); kubectl targets
    inherit services.kubectl_command."""
    via = component.get("via")
    if isinstance(via, dict) and via.get("exec") == "compose" and services:
        via = {**via}
        via.setdefault("project_dir", services.get("project_dir"))
        if services.get("file"):
            via.setdefault("file", services["file"])
        if "command" not in via:
            via["command"] = compose_command(services, ServiceRunner(LocalTarget()))
        via = {key: value for key, value in via.items() if value is not None}
    elif isinstance(via, dict) and via.get("exec") in ("kubectl", "kubernetes") and services:
        via = {**via}
        if services.get("kubectl_command"):
            via.setdefault("command", services["kubectl_command"])
    return target_from_via(via)


def source_settings(component: Component) -> dict:
    """The dict the source modules take: the component's settings plus the resolved password."""
    return {**component.settings, "password": component.password}


def kind(component: Component) -> Kind:
    """The source kind of a component (its ``type``), from the registry."""
    return kind_of(component.type)


def configured_dump_names(component: Component) -> list[str] | None:
    """The dumps the platform file names for a dumps component, as a restore may write them:
    its databases (None for ``all``: every database of its server but the system schemas),
    its SQLite files, or its one command dump. The platform file, never a snapshot, decides
    what a live restore replaces."""
    of_kind = kind(component)
    if of_kind.databases:
        names = [str(name) for name in component.get("databases") or []]
        return None if names == ["all"] else names
    assert of_kind.module is not None
    return list(of_kind.module.dump_names(source_settings(component), LocalTarget()))


SYSTEM_DATABASES = {"mysql": ("information_schema", "performance_schema", "mysql", "sys")}


def dump_refusal(component: Component, name: object, record: object) -> str | None:
    """None if a live restore may replace dump ``name`` of ``component`` as the snapshot
    records it (``record``), else why not, in words."""
    if not isinstance(name, str) or not name or len(name) > 255 or any(c in name for c in "\0\n"):
        return f"an invalid database name {name!r}"
    allowed = configured_dump_names(component)
    if allowed is not None and name not in allowed:
        return f"database {name!r}, which the platform file does not name for this component"
    if allowed is None and name in SYSTEM_DATABASES.get(kind(component).name, ()):
        return f"the system database {name!r}"
    dump_file = kind(component).dump_file
    expected = dump_file(component.settings, name) if dump_file else None
    if not isinstance(record, dict) or record.get("file") != expected:
        return f"database {name!r} in a file other than {expected!r}"
    return None


class ServiceRunner:
    """Runs service-control commands on a target (local, or ssh to the compose/k8s host)."""

    def __init__(self, target: Target) -> None:
        self.target = target

    def run(self, argv: list[str], timeout: float | None = None) -> str:
        command = self.target.command(argv)
        try:
            completed = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                stdin=subprocess.DEVNULL,
                env=child_env(),
            )
        except FileNotFoundError:
            raise ServiceError(f"{command[0]} is not installed: cannot run {argv[0]}") from None
        except subprocess.TimeoutExpired:
            raise ServiceTimeout(
                f"{' '.join(argv[:3])} did not finish within {timeout:.0f} s"
            ) from None
        if completed.returncode != 0:
            raise ServiceError(
                f"{shlex.join(argv)[:200]} failed (exit status {completed.returncode})"
                + (
                    f": {reason}"
                    if (reason := _reason(completed.stderr or completed.stdout))
                    else ""
                )
            )
        return completed.stdout


_HELP_HINT = re.compile(r"^(Run|See|Use) '.*--help'.*$|^Usage:", re.IGNORECASE)


def _reason(output: str) -> str:
    """The line of a tool's error output that says what went wrong: the last one that is not
    a pointer to --help or a usage line (``docker: 'compose' is not a docker command.``, not
    ``Run 'docker --help' for more information``)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    useful = [line for line in lines if not _HELP_HINT.match(line)]
    return (useful or lines or [""])[-1][:300]


def service_runner(services: dict) -> ServiceRunner:
    via = services.get("via")
    return ServiceRunner(target_from_via(via) if via else LocalTarget())
