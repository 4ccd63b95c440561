"""User hooks: shell commands from the platform file, run on this host at fixed points."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

from safehold.errors import SafeholdError
from safehold.secrecy import child_env


class HookFailed(SafeholdError):
    """hook {point} failed: {command!r} exited with {status}: {detail}"""

    exit_code = 24


def run_hooks(
    hooks: dict[str, list[str]],
    point: str,
    *,
    log: Callable[[str], None],
    environment: dict[str, str] | None = None,
    timeout: float = 3600,
) -> None:
    """Run every command of ``point`` in order; HookFailed on the first that fails."""
    for command in hooks.get(point, []):
        log(f"hook {point}: {command}")
        try:
            completed = subprocess.run(
                ["sh", "-c", command],
                capture_output=True,
                text=True,
                timeout=timeout,
                env=child_env(environment),
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise HookFailed(
                point=point,
                command=command,
                status="timeout",
                detail=f"still running after {timeout:.0f} s",
            ) from None
        if completed.returncode != 0:
            detail = (completed.stderr or completed.stdout).strip().splitlines()
            raise HookFailed(
                point=point,
                command=command,
                status=completed.returncode,
                detail=detail[-1] if detail else "no output",
            )
