"""Writer processes: the small files of a restore written out on every core.

Restoring many small files is mostly per-file work: decrypt, decompress and check a blob, then
create the file, write it, give it its owner, mode, xattrs and times and close it. In one
process that work runs under one GIL, and every system call of a writer thread hands the GIL
over (the million-file restore kept 1.2 of 2 cores busy). So once a batch of the restore
holds ``PROCESSES_AFTER`` files of a single blob, the ContentWriter (contentwriter.py) starts
one writer process per core (``SAFEHOLD_WRITE_PROCESSES=N``, 0: none) and hands them those
files.

The main process keeps everything that decides what is written where: the walk of the
snapshot's trees, the checks of the target (symlinks, existing files, --overwrite), the plan,
and reading the packs through the repository's stores (local or remote). A writer process
gets a piece of a pack as read (sealed blobs, up to PIECE_BLOBS of them) with, per blob, the
paths the main process chose and the metadata to give them; for each path it creates the file
(O_CREAT | O_EXCL | O_NOFOLLOW, marked IN_PROGRESS like every file of a restore), writes,
completes and settles it with the very functions of contentwriter.py, and answers with the
files that failed. It never reads the repository, never chooses a path and never removes a
file it did not create.

A writer process gets the master key through its stdin pipe (never the environment or the
command line) and a minimal environment (``secrecy.child_env``). If one ends (killed, out of
memory), the main process looks at each file of its unanswered pieces: one the process
completed (no longer IN_PROGRESS) is counted, one it left IN_PROGRESS is removed, and every
file not complete is written by the main process; the restore goes on with the processes left.

Wire format (frames.py): main -> writer, a set-up frame ``{"key", "as_root", "no_special"}``,
then per piece ``[pack id, n, [[blob id, offset, length, plaintext length, type, [[path,
size, mode, uid, gid, mtime, xattrs or nil, holes or nil], ...]], ...]]`` followed by the n
sealed bytes of the piece as read, outside msgpack (a piece of large files is not copied
twice more on its way); writer ->
main, per piece in order ``[[blob number, path number, kind, message], ...]`` for the files
that failed (kind DAMAGED: the blob, the file was not created; FAILED: the file could not be
written and was removed; METADATA: written, but its metadata could not be given).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections import deque
from concurrent.futures import Future

import msgpack

from safehold.archive.contentwriter import complete, create, put, settle
from safehold.archive.frames import (
    end_processes,
    process_count,
    read_frame,
    read_message,
    start_process,
    write_frame,
)
from safehold.crypto import Cipher, MasterKey
from safehold.errors import IntegrityError
from safehold.repo.index import Location
from safehold.repo.repository import open_blob

DAMAGED, FAILED, METADATA = 0, 1, 2


def writer_count() -> int:
    """``SAFEHOLD_WRITE_PROCESSES`` if set (0: none), else one per core this process may use."""
    return process_count("SAFEHOLD_WRITE_PROCESSES")


# ------------------------------------------------------------------ the writer process side


def write_piece(cipher: Cipher, options: dict, pack_id: bytes, data: bytes, blobs: list) -> list:
    """Write out one piece; the failures, as answered to the main process."""
    failures: list = []
    view = memoryview(data)
    for number, (blob_id, offset, length, raw_length, blob_type, targets) in enumerate(blobs):
        location = Location(pack_id, offset, length, raw_length, blob_type)
        try:
            if offset + length > len(data):
                raise IntegrityError(f"pack {pack_id.hex()[:16]} is missing or truncated")
            plain = open_blob(cipher, blob_id, location, view[offset : offset + length])
        except IntegrityError as error:
            message = str(error.fields["message"])
            failures.extend([number, place, DAMAGED, message] for place in range(len(targets)))
            continue
        for place, target in enumerate(targets):
            problem = write_file(plain, target, options)
            if problem is not None:
                failures.append([number, place, *problem])
    return failures


def write_file(plain: bytes, target: list, options: dict) -> tuple[int, str] | None:
    """Create and write one file of a single blob; (kind, message) if something failed."""
    path, size, mode, uid, gid, mtime, xattrs, holes = target
    entry = {"size": size, "mode": mode, "uid": uid, "gid": gid, "mtime": mtime}
    entry.update(xattrs=xattrs, holes=holes)
    try:
        fd = create(path)
    except OSError as error:
        return FAILED, error.strerror or str(error)
    try:
        try:
            put(fd, 0, plain, holes)
            complete(fd, entry, len(plain))
        except OSError as error:
            os.close(fd)
            fd = -1
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # never leave a file that was not completely written
            return FAILED, error.strerror or str(error)
        try:
            settle(fd, entry, **options)
        except OSError as error:
            return METADATA, error.strerror or str(error)
        return None
    finally:
        if fd >= 0:
            os.close(fd)


def serve(source, sink) -> None:  # type: ignore[no-untyped-def]
    """The writer process's loop: write pieces until the main process closes the pipe."""
    setup = read_frame(source)
    if setup is None:
        return
    settings = msgpack.unpackb(setup)
    cipher = Cipher(MasterKey.from_bytes(settings.pop("key")))
    options = {"as_root": settings["as_root"], "no_special": settings["no_special"]}
    while (body := read_frame(source)) is not None:
        pack_id, length, blobs = msgpack.unpackb(body)
        data = source.read(length)
        if len(data) < length:
            return
        write_frame(sink, msgpack.packb(write_piece(cipher, options, pack_id, data, blobs)))


def main() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides; EOF ends us
    with contextlib.suppress(BrokenPipeError, EOFError):
        serve(sys.stdin.buffer, sys.stdout.buffer)


# ------------------------------------------------------------------ the main process side


class WriterGone(Exception):
    """The writer process ended before it answered: what it wrote must be looked at."""


class _Writer:
    def __init__(self, process: subprocess.Popen, number: int) -> None:
        self.process = process
        self.number = number
        self.waiting: deque[Future] = deque()  # sent, not answered, in order
        self.lock = threading.Lock()  # waiting, alive
        self.write_lock = threading.Lock()  # held while a piece is written (taken before lock)
        self.alive = True
        self.thread: threading.Thread | None = None


class WriterProcesses:
    """The writer processes of one restore; ``close`` ends them."""

    def __init__(self, cipher: Cipher, *, as_root: bool, no_special: bool, count: int) -> None:
        self._writers: list[_Writer] = []
        self.lost = 0  # writer processes that ended before they were told to
        setup = {"key": cipher.master_key.to_bytes(), "as_root": as_root, "no_special": no_special}
        try:
            for number in range(count):
                self._start(number, msgpack.packb(setup))
        except BaseException:
            self.close()
            raise

    def _start(self, number: int, setup: bytes) -> None:
        process = start_process("safehold.archive.writeprocs")
        writer = _Writer(process, number)
        write_frame(process.stdin, setup)
        writer.thread = threading.Thread(
            target=self._receive, args=(writer,), name=f"writer-process-{number}", daemon=True
        )
        writer.thread.start()
        self._writers.append(writer)

    @property
    def pids(self) -> list[int]:
        return [writer.process.pid for writer in self._writers]

    @property
    def alive(self) -> bool:
        return any(writer.alive for writer in self._writers)

    def write(self, pack_id: bytes, data: bytes | memoryview, blobs: list) -> list:
        """Have a writer process write one piece (see the module's wire format) and wait for
        its failures. WriterGone if no process took it or the one that did ended first."""
        future: Future = Future()
        alive = [writer for writer in self._writers if writer.alive]
        if not alive:
            raise WriterGone
        writer = min(alive, key=lambda writer: len(writer.waiting))
        body = msgpack.packb([pack_id, len(data), blobs])
        with writer.write_lock:
            with writer.lock:
                if not writer.alive:
                    raise WriterGone
                writer.waiting.append(future)
            with contextlib.suppress(OSError, ValueError):  # it ended: the future fails
                write_frame(writer.process.stdin, body, data)
        return future.result()

    def _receive(self, writer: _Writer) -> None:
        while (answer := read_message(writer.process.stdout)) is not None:
            with writer.lock:
                future = writer.waiting.popleft()
            future.set_result(answer)
        with writer.lock:
            writer.alive = False
            left, writer.waiting = list(writer.waiting), deque()
        if writer.process.wait() or left:
            self.lost += 1
        for future in left:
            future.set_exception(WriterGone())

    def close(self) -> None:
        """End the writer processes (after their last answers) and wait for them."""
        end_processes(self._writers)
        self._writers = []


if __name__ == "__main__":
    main()
