"""Execution targets: where a source's programs run (local, ssh, compose, docker, kubectl).

A target only turns an argv into the command that runs it there (``Target.command``); every
kind then goes through the same streaming code (:class:`Process`): stdin and stdout are
pipes, stderr is drained by a thread into a short tail quoted in error messages.

Secrets: ``secret_env`` maps environment variable names to values. The argv is wrapped as
``sh -c 'IFS= read -r NAME || exit 125; export NAME; exec "$0" "$@"' argv...`` and each value is
written as one line of stdin before anything else, so a secret never appears on a command line
(local or remote process lists, ssh logs, ``docker exec`` audit logs). ``read`` in sh takes
exactly one line from a pipe, leaving the rest of stdin (a dump being restored) to the program.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shlex
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import unquote, urlsplit

from safehold.sources import SourceError
from safehold.sources.process import (
    CHUNK,
    Process,
    SecretEnv,
    Tail,
    TargetVariable,
    secret_wrapper,
)

__all__ = [
    "ComposeTarget",
    "DockerTarget",
    "KubectlTarget",
    "LocalTarget",
    "SshTarget",
    "Target",
    "secret_wrapper",
    "target_from_via",
]


@dataclass(frozen=True)
class Target:
    """Where commands run. Subclasses only define command() and describe()."""

    def command(self, argv: Sequence[str]) -> list[str]:
        """Given an argv to run on the target, return the local command list that runs it."""
        raise NotImplementedError

    def describe(self) -> str:
        """Returns a short phrase for messages, such as "via ssh root@db:22"."""
        raise NotImplementedError

    def _start(self, argv: Sequence[str], secret_env: SecretEnv, label: str | None) -> Process:
        secrets = dict(secret_env or {})
        copies = {k: str(v) for k, v in secrets.items() if isinstance(v, TargetVariable)}
        names = [name for name in secrets if name not in copies]
        command = self.command(secret_wrapper(argv, names, copies))
        return Process(command, label or os.path.basename(argv[0]), self.describe(), secrets)

    @contextmanager
    def run_stream(
        self, argv: Sequence[str], secret_env: SecretEnv = None, label: str | None = None
    ) -> Iterator[IO[bytes]]:
        """Given an argv (and secrets), run it and yield its stdout as a readable binary stream.
        label names the program in error messages (default: the argv's program name).

        On leaving the block, the rest of stdout is read and discarded and the process is
        waited for. Raises SourceError if it could not start or exited non-zero. If the block
        raises, the process is killed and the exception propagates.
        """
        process = self._start(argv, secret_env, label)
        process.send_all(b"")
        try:
            yield process.stdout
            for _ in iter(lambda: process.stdout.read(CHUNK), b""):
                pass
        except BaseException:
            process.kill()
            raise
        process.finish()

    @contextmanager
    def run_feed(
        self, argv: Sequence[str], secret_env: SecretEnv = None, label: str | None = None
    ) -> Iterator[IO[bytes]]:
        """Given an argv (and secrets), run it and yield its stdin as a writable binary stream.

        On leaving the block, stdin is closed and the process waited for. Raises SourceError
        if it could not start, exited non-zero, or stopped reading its input early. If the
        block raises anything else, the process is killed (so a partial input is never
        completed) and the exception propagates.
        """
        process = self._start(argv, secret_env, label)
        process.stdout_tail = Tail(process.stdout)  # drained: a chatty program never blocks
        try:
            yield process.stdin
            process.close_stdin()
        except BrokenPipeError:
            process.finish()
            raise SourceError(
                f"{process.program} exited {process.where} before reading all its input"
            ) from None
        except BaseException:
            process.kill()
            raise
        process.finish()

    def run(
        self,
        argv: Sequence[str],
        secret_env: SecretEnv = None,
        input: bytes = b"",
        label: str | None = None,
    ) -> str:
        """Given an argv, optional secrets and stdin input, run it and return its stdout as text.

        Meant for small queries. Raises SourceError if it exited non-zero.
        """
        process = self._start(argv, secret_env, label)
        feeder = threading.Thread(target=process.send_all, args=(input,), daemon=True)
        feeder.start()
        try:
            output = process.stdout.read()
        except BaseException:
            process.kill()
            raise
        feeder.join()
        process.finish()
        return output.decode("utf-8", errors="replace")

    def which(self, *candidates: str) -> str:
        """Given program names in order of preference, return the first found on the target.

        Raises SourceError if none is installed there.
        """
        return _which(self, candidates)


@functools.lru_cache(maxsize=64)
def _which(target: Target, candidates: tuple[str, ...]) -> str:
    script = 'for p; do command -v "$p" >/dev/null 2>&1 && { echo "$p"; exit 0; }; done; exit 127'
    try:
        return target.run(["sh", "-c", script, "sh", *candidates]).strip()
    except SourceError as error:
        if "exit status 127" not in str(error):
            raise
    raise SourceError(f"none of {', '.join(candidates)} is installed {target.describe()}")


@dataclass(frozen=True)
class LocalTarget(Target):
    """Runs commands on this machine, as they are."""

    def command(self, argv: Sequence[str]) -> list[str]:
        return list(argv)

    def describe(self) -> str:
        return "locally"


@dataclass(frozen=True)
class SshTarget(Target):
    """Runs commands on another host through OpenSSH (keys only: BatchMode, no prompts).

    options are more ``-o`` settings, such as ``ProxyJump=bastion`` or ``ControlPath=...``.
    """

    host: str
    user: str | None = None
    port: int | None = None
    identity: str | None = None
    known_hosts: str | None = None
    strict_host_key_checking: str | None = None
    connect_timeout: int = 30
    options: tuple[str, ...] = ()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> SshTarget:
        """Given ``ssh://[user@]host[:port]`` and options (identity, known_hosts, ...),
        return the target. Raises SourceError for a malformed URL."""
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme != "ssh" or not parts.hostname or port == -1 or parts.path not in ("", "/"):
            raise SourceError(f"invalid ssh target {url!r}: expected ssh://[user@]host[:port]")
        user = unquote(parts.username) if parts.username else None
        return cls(host=parts.hostname, user=user, port=port, **options)

    def command(self, argv: Sequence[str]) -> list[str]:
        command = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout}"]
        if self.port:
            command += ["-p", str(self.port)]
        if self.identity:
            command += ["-i", self.identity, "-o", "IdentitiesOnly=yes"]
        if self.known_hosts:
            command += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        if self.strict_host_key_checking:
            command += ["-o", f"StrictHostKeyChecking={self.strict_host_key_checking}"]
        for option in self.options:
            command += ["-o", option]
        destination = f"{self.user}@{self.host}" if self.user else self.host
        return [*command, destination, "--", shlex.join(argv)]

    def describe(self) -> str:
        who = f"{self.user}@{self.host}" if self.user else self.host
        return f"via ssh {who}:{self.port or 22}"


@dataclass(frozen=True)
class ComposeTarget(Target):
    """Runs commands in a Docker Compose service (``<command> exec -T``); ``command`` is
    ``docker compose`` (the plugin), ``docker-compose`` (the standalone binary) or
    ``podman compose``."""

    service: str
    project_dir: str | None = None
    file: str | None = None
    command_line: str = "docker compose"

    def command(self, argv: Sequence[str]) -> list[str]:
        command = shlex.split(self.command_line)
        if self.project_dir:
            command += ["--project-directory", self.project_dir]
        if self.file:
            command += ["-f", self.file]
        return [*command, "exec", "-T", self.service, *argv]

    def describe(self) -> str:
        return f"in compose service {self.service}"


@dataclass(frozen=True)
class DockerTarget(Target):
    """Runs commands in a running container (``docker exec -i``)."""

    container: str

    def command(self, argv: Sequence[str]) -> list[str]:
        return ["docker", "exec", "-i", self.container, *argv]

    def describe(self) -> str:
        return f"in container {self.container}"


@dataclass(frozen=True)
class KubectlTarget(Target):
    """Runs commands in a Kubernetes pod (``kubectl exec -i``). ``pod`` is a pod name or
    ``deploy/NAME``/``statefulset/NAME`` (kubectl picks one of its pods); ``selector`` a label
    selector (``app=postgres``) resolved to its first running pod when the command runs.
    ``command_line`` is how kubectl is called on this host: ``kubectl``, ``microk8s.kubectl``,
    ``k3s kubectl``."""

    pod: str | None = None
    namespace: str = "default"
    container: str | None = None
    context: str | None = None
    selector: str | None = None
    command_line: str = "kubectl"

    def __post_init__(self) -> None:
        if bool(self.pod) == bool(self.selector):
            raise SourceError("exec kubectl needs either pod or selector")

    def _kubectl(self) -> list[str]:
        command = shlex.split(self.command_line)
        if self.context:
            command += ["--context", self.context]
        return [*command, "-n", self.namespace]

    def command(self, argv: Sequence[str]) -> list[str]:
        tail = ["--", *argv]
        if self.container:
            tail = ["-c", self.container, *tail]
        if self.pod:
            return [*self._kubectl(), "exec", "-i", self.pod, *tail]
        # A selector is resolved where the command runs, to the first running pod it matches.
        kubectl, selector = shlex.join(self._kubectl()), shlex.quote(str(self.selector))
        missing = f"no running pod matches {self.selector} in namespace {self.namespace}"
        script = (
            f"pod=$({kubectl} get pod -l {selector} --field-selector=status.phase=Running "
            "-o 'jsonpath={.items[0].metadata.name}') || exit; "
            f'[ -n "$pod" ] || {{ echo {shlex.quote(missing)} >&2; exit 1; }}; '
            f'exec {kubectl} exec -i "$pod" {shlex.join(tail)}'
        )
        return ["sh", "-c", script]

    def describe(self) -> str:
        return f"in pod {self.namespace}/{self.pod or self.selector}"


_KINDS: dict[str, type[Target]] = {
    "local": LocalTarget,
    "ssh": SshTarget,
    "compose": ComposeTarget,
    "docker": DockerTarget,
    "kubectl": KubectlTarget,
    "kubernetes": KubectlTarget,
}


def target_from_via(via: str | Mapping[str, Any] | None) -> Target:
    """Given a component's ``via`` (None, ``"local"``, ``"ssh://user@host:port"``, or a mapping
    such as ``{exec: compose, service: db}`` / ``{exec: "ssh://u@h", identity: KEY}``),
    return its target. Raises SourceError for an unknown kind or wrong options."""
    options = dict({"exec": via} if isinstance(via, str) else via or {})
    kind = str(options.pop("exec", "local"))
    if "command" in options:  # compose: `docker-compose`...; kubectl: `microk8s.kubectl`...
        options["command_line"] = options.pop("command")
    if isinstance(options.get("options"), list):
        options["options"] = tuple(options["options"])  # targets are hashable
    if kind.startswith("ssh://"):
        _check_options(SshTarget, options, kind, url=True)
        return SshTarget.from_url(kind, **options)
    if kind not in _KINDS:
        known = ", ".join([*_KINDS, "ssh://user@host:port"])
        raise SourceError(f"unknown execution target {kind!r}: expected one of {known}")
    cls = _KINDS[kind]
    _check_options(cls, options, kind)
    return cls(**options)


def _check_options(
    cls: type[Target], options: Mapping[str, Any], kind: str, url: bool = False
) -> None:
    """Raises SourceError naming unknown or missing options of a target kind."""
    fields = {field.name: field for field in dataclasses.fields(cls)}
    if url:
        for name in ("host", "user", "port"):
            fields.pop(name)
    unknown = sorted(set(options) - set(fields))
    if unknown:
        known = ", ".join(fields) or "none"
        raise SourceError(f"exec {kind}: unknown option(s) {', '.join(unknown)} (known: {known})")
    missing = [
        name
        for name, field in fields.items()
        if field.default is dataclasses.MISSING and name not in options
    ]
    if missing:
        raise SourceError(f"exec {kind} needs {', '.join(missing)}")
