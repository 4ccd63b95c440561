"""Running one command with piped stdin/stdout: the streaming code every target shares.

stderr is drained by a thread into a short tail quoted in error messages. Secrets travel as
the first lines of stdin, read by a small ``sh`` wrapper (see :func:`secret_wrapper`).
"""

from __future__ import annotations

import re
import subprocess
import threading
from collections.abc import Mapping, Sequence
from typing import IO

from safehold.secrecy import child_env, mask
from safehold.sources import SourceError

SecretEnv = Mapping[str, str] | None


class TargetVariable(str):
    """A secret's value that is already in the target's environment under this name (a
    container's ``POSTGRES_PASSWORD``): the wrapper copies it there, so the value never leaves
    the target and never passes through safehold."""


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_TAIL_BYTES = 8192
_DETAIL_LINES = 3
CHUNK = 1 << 16


def secret_wrapper(
    argv: Sequence[str], names: Sequence[str], copies: Mapping[str, str] | None = None
) -> list[str]:
    """Given an argv and secret variable names, return the argv that first reads one line of
    stdin per name into that variable, sets each variable of ``copies`` from the target's
    variable it names (failing if that one is unset), exports them, then execs the argv.

    Raises SourceError for a name that is not a valid shell variable name.
    """
    copies = dict(copies or {})
    if not names and not copies:
        return list(argv)
    for name in [*names, *copies, *copies.values()]:
        if not _NAME.match(name):
            raise SourceError(f"invalid secret variable name {name!r}")
    steps = [f"IFS= read -r {name} || exit 125" for name in names]
    steps += [
        f'[ -n "${{{source}:-}}" ] || {{ echo "{source} is not set in the target" >&2; exit 125; }}'
        f"; {name}=${source}"
        for name, source in copies.items()
    ]
    script = f'{"; ".join(steps)}; export {" ".join([*names, *copies])}; exec "$0" "$@"'
    return ["sh", "-c", script, *argv]


def _secret_lines(secret_env: Mapping[str, str]) -> bytes:
    """Given the secret environment, return the stdin preamble (one line per value).

    Raises SourceError for a value holding a newline or NUL (it cannot travel as one line).
    """
    lines = []
    for name, value in secret_env.items():
        if "\n" in value or "\r" in value or "\0" in value:
            raise SourceError(f"secret {name} contains a line break or NUL: not supported")
        lines.append(value.encode() + b"\n")
    return b"".join(lines)


class Tail:
    """Drains a pipe in a thread, keeping only its last few KiB (for error messages)."""

    def __init__(self, pipe: IO[bytes]) -> None:
        self._data = b""
        self._thread = threading.Thread(target=self._drain, args=(pipe,), daemon=True)
        self._thread.start()

    def _drain(self, pipe: IO[bytes]) -> None:
        with pipe:
            for chunk in iter(lambda: pipe.read1(CHUNK), b""):
                self._data = (self._data + chunk)[-_TAIL_BYTES:]

    def text(self, secrets: Sequence[str]) -> str:
        """Returns the last non-empty lines joined by " / ", with secret values masked."""
        self._thread.join(timeout=10)
        lines = self._data.decode("utf-8", errors="replace").splitlines()
        text = " / ".join([line.strip() for line in lines if line.strip()][-_DETAIL_LINES:])
        for secret in secrets:
            text = text.replace(secret, "***")
        return mask(text)


class Process:
    """One running command with piped stdin/stdout, stderr drained into a tail.

    program and where only serve the error messages ("pg_dump failed via ssh host: ...").
    """

    def __init__(
        self, command: list[str], program: str, where: str, secret_env: Mapping[str, str]
    ) -> None:
        self.program, self.where = program, where
        secret_env = {
            name: value
            for name, value in secret_env.items()
            if not isinstance(value, TargetVariable)
        }
        self.secrets = [value for value in secret_env.values() if value]
        preamble = _secret_lines(secret_env)
        try:
            self.popen = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=child_env(),
            )
        except OSError as error:
            raise SourceError(f"cannot run {command[0]} {where}: {error.strerror}") from None
        self.stderr = Tail(self.popen.stderr)
        self.stdin: IO[bytes] = self.popen.stdin
        self.stdout: IO[bytes] = self.popen.stdout
        self.stdout_tail: Tail | None = None  # set when nobody reads stdout (feeds)
        self.send(preamble)

    def send(self, data: bytes) -> None:
        """Writes data to stdin; a process that already died is reported by finish()."""
        try:
            if data:
                self.stdin.write(data)
                self.stdin.flush()
        except BrokenPipeError:
            pass

    def close_stdin(self) -> None:
        """Closes stdin (end of input). Raises BrokenPipeError if the process stopped reading."""
        if not self.stdin.closed:
            self.stdin.close()

    def send_all(self, data: bytes) -> None:
        """Writes data then closes stdin, ignoring a process that stopped reading."""
        self.send(data)
        try:
            self.close_stdin()
        except BrokenPipeError:
            pass

    def kill(self) -> None:
        """Kills the process (if still running) and reaps it."""
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()
        pipes = [self.stdin] if self.stdout_tail else [self.stdin, self.stdout]
        for pipe in pipes:
            try:
                pipe.close()
            except OSError:
                pass

    def finish(self) -> None:
        """Waits for the process. Raises SourceError naming the program, where it ran and the
        last lines of its stderr if it exited non-zero."""
        code = self.popen.wait()
        if self.stdout_tail is None:  # else its thread closes stdout at EOF
            self.stdout.close()
        if code != 0:
            raise SourceError(self.failure(code))

    def failure(self, code: int) -> str:
        """Returns the message for exit status code."""
        detail = self.stderr.text(self.secrets) or "no error output"
        how = f"exit status {code}" if code >= 0 else f"killed by signal {-code}"
        if code == 127:
            how += ", program not found"
        return f"{self.program} failed {self.where} ({how}): {detail}"
