"""Between the platform model and the sources: targets, source settings, service runners.

What a component of each kind is and how it is backed up lives in its kind's module
(``safehold/sources/<kind>.py``, found by ``safehold.sources.kinds``).
"""

from __future__ import annotations

import subprocess

from safehold.platform.config import Component
from safehold.platform.services import ServiceError
from safehold.sources import Kind, kind_of
from safehold.sources.dumps import GLOBALS_FILE
from safehold.sources.targets import LocalTarget, Target, target_from_via

__all__ = ["GLOBALS_FILE", "ServiceRunner", "kind", "service_runner", "source_settings"]


def target_for(component: Component, services: dict | None = None) -> Target:
    """The execution target of a component; compose targets inherit services.project_dir."""
    via = component.get("via")
    if isinstance(via, dict) and via.get("exec") == "compose" and services:
        via = {**via}
        via.setdefault("project_dir", services.get("project_dir"))
        if services.get("file"):
            via.setdefault("file", services["file"])
        via = {key: value for key, value in via.items() if value is not None}
    return target_from_via(via)


def source_settings(component: Component) -> dict:
    """The dict the source modules take: the component's settings plus the resolved password."""
    return {**component.settings, "password": component.password}


def kind(component: Component) -> Kind:
    """The source kind of a component (its ``type``), from the registry."""
    return kind_of(component.type)


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
            )
        except FileNotFoundError:
            raise ServiceError(f"{command[0]} is not installed: cannot run {argv[0]}") from None
        except subprocess.TimeoutExpired:
            raise ServiceError(
                f"{' '.join(argv[:3])} did not finish within {timeout:.0f} s"
            ) from None
        if completed.returncode != 0:
            lines = (completed.stderr or completed.stdout).strip().splitlines()
            raise ServiceError(
                f"{' '.join(argv[:4])} failed (exit status {completed.returncode})"
                + (f": {lines[-1]}" if lines else "")
            )
        return completed.stdout


def service_runner(services: dict) -> ServiceRunner:
    via = services.get("via")
    return ServiceRunner(target_from_via(via) if via else LocalTarget())
