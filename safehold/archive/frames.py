"""Frames on the pipes between safehold and its own worker processes (readprocs.py,
writeprocs.py): a 4-byte little-endian length, then a msgpack body. Private to one run: both
ends are the same safehold."""

from __future__ import annotations

import contextlib
import os
import struct
import subprocess
import sys
from collections.abc import Iterable
from typing import Any

FRAME = struct.Struct("<I")
PIPE_SIZE = 1024 * 1024


def widen(pipe) -> None:  # type: ignore[no-untyped-def]
    """Give a pipe 1 MiB of buffer (Linux; 64 KiB by default): fewer switches per frame."""
    with contextlib.suppress(OSError, AttributeError, ValueError):
        import fcntl

        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)


def read_frame(stream) -> bytes | None:  # type: ignore[no-untyped-def]
    """The next frame's body, or None at the end of the stream (or a frame cut short)."""
    head = stream.read(FRAME.size)
    if len(head) < FRAME.size:
        return None
    (length,) = FRAME.unpack(head)
    body = stream.read(length)
    if len(body) < length:
        return None
    return body


def read_message(stream) -> Any:  # type: ignore[no-untyped-def]
    """The next frame's body unpacked; None at the end of the stream or if it is unreadable
    (the other side ended: whoever reads treats both alike)."""
    import msgpack

    try:
        body = read_frame(stream)
        return None if body is None else msgpack.unpackb(body)
    except (OSError, ValueError):
        return None


def write_frame(stream, body: bytes, *raw: bytes | memoryview) -> None:  # type: ignore[no-untyped-def]
    """One frame, then ``raw`` bytes as they are (their lengths in the body, for the reader);
    nothing is joined into a copy first."""
    stream.write(FRAME.pack(len(body)))
    stream.write(body)
    for part in raw:
        stream.write(part)
    stream.flush()


def process_count(variable: str) -> int:
    """The number of worker processes: ``variable`` from the environment if it is set to a
    number (0: none), else one per core this process may use."""
    configured = os.environ.get(variable, "").strip()
    if configured.isdigit():
        return int(configured)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def end_processes(workers: Iterable[Any]) -> None:
    """End worker processes that stop at the end of their stdin: close each one's stdin (under
    its ``write_lock``), then join its receiving ``thread`` and wait for its ``process`` (killed
    after 10 s)."""
    workers = list(workers)
    for worker in workers:
        with worker.write_lock, contextlib.suppress(OSError):
            worker.process.stdin.close()
    for worker in workers:
        if worker.thread is not None:
            worker.thread.join()
        try:
            worker.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait()
        with contextlib.suppress(OSError):
            worker.process.stdout.close()


def start_process(module: str, pass_fds: tuple[int, ...] = ()) -> subprocess.Popen:
    """``python -m module`` of this safehold as a worker process: stdin and stdout pipes
    (widened), stderr discarded, and a minimal environment (``secrecy.child_env``: no
    passphrase, no password) that finds this package."""
    from safehold.secrecy import child_env

    package_root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
    process = subprocess.Popen(
        [sys.executable, "-m", module],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=child_env({"PYTHONPATH": package_root}),
        pass_fds=pass_fds,
    )
    for pipe in (process.stdin, process.stdout):
        widen(pipe)
    return process
