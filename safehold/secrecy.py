"""Secrets kept out of everything safehold writes or starts.

Two rules, each in one place:

- ``child_env``: a child process (a dump or restore program, a hook, a service command, a
  throwaway drill server) gets only the environment it needs: locale, paths, the user, and
  what reaching a remote host or a container engine takes (``SSH_AUTH_SOCK``, ``KUBECONFIG``,
  ``DOCKER_*``). Never ``SAFEHOLD_PASSPHRASE`` or another component's password: a program
  that prints its environment when it fails leaks nothing of safehold's. A component's own
  secret reaches its program on stdin (safehold.sources.process.secret_wrapper).
- ``mask``: every secret safehold has seen in this process (the passphrase, every resolved
  component password and secret, notification credentials) is replaced by ``***`` in every
  captured output before it is shown, logged or stored: error messages
  (``SafeholdError.__str__``), the tails of programs' stderr, snapshot records.
"""

from __future__ import annotations

import os
import threading

# Names (or prefixes ending in "_") passed on to children; everything else is left out.
PASSED_ON = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "LC_",
    "TZ",
    "TMPDIR",
    "TERM",
    "XDG_RUNTIME_DIR",  # podman, rootless docker
    "SSH_AUTH_SOCK",  # ssh targets and sftp through an agent
    "KUBECONFIG",
    "DOCKER_HOST",
    "DOCKER_CONFIG",
    "DOCKER_CONTEXT",
    "DOCKER_CERT_PATH",
    "DOCKER_TLS_VERIFY",
    "CONTAINER_HOST",  # podman remote
)
MIN_LENGTH = 3  # shorter values would mask ordinary words; such a secret is no secret anyway

_known: set[str] = set()
_lock = threading.Lock()


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a child process: the passed-on variables of ours, plus ``extra``
    (what the caller sets on purpose, e.g. a hook's documented variables)."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if name in PASSED_ON or any(p.endswith("_") and name.startswith(p) for p in PASSED_ON)
    }
    environment.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    return {**environment, **(extra or {})}


def remember(*values: object) -> None:
    """Note secret values (str or bytes) so that ``mask`` hides them from now on."""
    with _lock:
        for value in values:
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            if isinstance(value, str) and len(value) >= MIN_LENGTH:
                _known.add(value)


def mask(text: str) -> str:
    """``text`` with every remembered secret replaced by ``***`` (longest first, so that a
    secret containing another is hidden whole)."""
    if not _known or not text:
        return text
    for secret in sorted(_known, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, "***")
    return text


def mask_value(value: object) -> object:
    """``mask`` applied to every string inside a JSON-like value (dicts, lists)."""
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {key: mask_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [mask_value(item) for item in value]
    return value
