"""Writing file contents during a restore by reading each pack once, in order.

The restorer hands over every file to write; ``run`` then groups the blobs of all files by
pack and lets a small pool work through the packs: one ranged read per pack covering the
blobs needed from it (per piece of up to PIECE_BLOBS of them, so that a pack of many small
files is written out by several workers; the pieces that take longest start first), each
blob authenticated and checked against its id once, then written
to every place that needs it. Memory stays at about one pack per worker, and the repository
is read sequentially, whatever the order of files. From remote repositories (sftp, s3) as
many packs are read at once as the store recommends for uploads, each read over a connection
of its own from the repository's readers (borgstore runs one operation at a time per
connection), held only while the read lasts.

A file's descriptor is opened at its first write and closed when its last blob is written
(or earlier, if too many are open; it is reopened later). A file of ``DURABLE_FILE`` bytes
or more is fdatasynced when complete and its pages dropped from the page cache: it is on
disk before the restore says so, a large restore does not push the host's working set out
of memory, and the kernel reuses the same pages (on the reference VM this halved a 2 GB
restore's kernel time). A file whose blob is damaged or missing is removed at the end
instead of being left half-written.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from safehold.errors import IntegrityError
from safehold.repo.repository import Repository, StorePool, pack_name
from safehold.store import ObjectMissing

MAX_OPEN_FILES = 256
DURABLE_FILE = 1024 * 1024
# The mode a file is created with and keeps until it is complete and gets its own (restorer.py):
# owner-only plus the sticky bit, which no one gives a regular file. A restore that was killed
# leaves its incomplete files so marked, and the next restore into the target replaces them.
IN_PROGRESS = stat.S_ISVTX | 0o600


class FileJob:
    """One file being written."""

    __slots__ = (
        "created",
        "damaged",
        "entry",
        "failure",
        "fd",
        "lock",
        "path",
        "remaining",
        "written",
    )

    def __init__(self, path: bytes, entry: dict) -> None:
        self.path = path
        self.entry = entry
        self.remaining = len(entry.get("content") or [])
        self.fd: int | None = None
        self.lock = threading.Lock()
        self.failure: str | None = None
        self.damaged = False  # the repository's fault (missing or damaged data), not the target's
        self.written = 0
        self.created = False  # this restore created the file: a failed one is removed


def data_segments(offset: int, length: int, holes: list[list[int]]) -> list[tuple[int, int]]:
    """The parts of [offset, offset+length) that are not inside a recorded hole."""
    segments = [(offset, offset + length)]
    for hole_start, hole_length in holes:
        hole_end = hole_start + hole_length
        if hole_end <= offset or hole_start >= offset + length:
            continue
        next_segments = []
        for start, end in segments:
            if hole_end <= start or hole_start >= end:
                next_segments.append((start, end))
                continue
            if start < hole_start:
                next_segments.append((start, hole_start))
            if hole_end < end:
                next_segments.append((hole_end, end))
        segments = next_segments
    return [(start, end - start) for start, end in segments]


BLOB_COST = 64 * 1024  # what writing out one blob (a small file) costs, in bytes read
PIECE_BLOBS = 128


def _span(ordered: list) -> tuple[int, int]:
    """(start, end) in its pack of a piece: blobs in pack order, (id, (location, targets))."""
    start = ordered[0][1][0].offset
    end = max(location.offset + location.length for _, (location, _) in ordered)
    return start, end


def _cost(item: tuple[bytes, list]) -> int:
    """About how long a piece takes: its bytes to read, plus a share per blob written (2,000
    small files are slow to write out, however quickly they are read). Pieces are started
    longest first, so that the slow ones overlap the others instead of ending the restore
    alone."""
    start, end = _span(item[1])
    return end - start + BLOB_COST * len(item[1])


# A restore writes the files it has collected once this many are planned (or BATCH_BYTES of
# content), then walks on: memory is bounded by a batch, not by the number of files in the
# snapshot. Files come in the order they were backed up, so a batch's blobs lie in few packs.
BATCH_FILES = 16384
BATCH_BYTES = 1 << 30


def _pieces(packs: dict[bytes, dict[bytes, tuple]]) -> list[tuple[bytes, list]]:
    """(pack id, blobs in pack order) to read and write out: each pack whole, or in pieces of
    PIECE_BLOBS blobs, so that writing out a pack of many small files is shared by the
    workers instead of taking one of them as long as all the rest."""
    pieces = []
    for pack_id, blobs in packs.items():
        ordered = sorted(blobs.items(), key=lambda item: item[1][0].offset)
        for first in range(0, len(ordered), PIECE_BLOBS):
            pieces.append((pack_id, ordered[first : first + PIECE_BLOBS]))
    return pieces


class ContentWriter:
    """Collects files with ``add`` and writes them with ``run`` (called once the batch is
    ``full``, and at the end; each run starts an empty batch)."""

    def __init__(
        self,
        repository: Repository,
        workers: int,
        finished: Callable[[FileJob], None],
        failed: Callable[[FileJob], None],
        readers: StorePool | None = None,
        *,
        settle: Callable[[int, FileJob], None],
    ) -> None:
        self.repository = repository
        self.workers = workers
        self.finished = finished
        self.failed = failed
        # Called with a complete file's descriptor before it is closed: owner, mode (which
        # replaces IN_PROGRESS) and times through the descriptor, no path lookups.
        self.settle = settle
        self._readers = readers  # None: run() takes the repository's own for the run
        # pack id -> [(offset, length, raw length, type, blob id, [(job, file offset), ...])]
        self._packs: dict[bytes, dict[bytes, tuple]] = {}
        self._jobs: list[FileJob] = []
        self._planned_bytes = 0
        self._open = 0
        self._open_lock = threading.Lock()
        self._running: Future | None = None
        self._connections = readers.size if readers else repository.store.recommended_uploads

    def add(self, path: bytes, entry: dict) -> None:
        """Plan the writing of one regular file (created at its first write)."""
        job = FileJob(path, entry)
        self._jobs.append(job)
        self._planned_bytes += entry["size"]
        if job.remaining == 0:
            self._create_empty(job)
            return
        offset = 0
        index = self.repository.index
        for blob_id in entry["content"]:
            location = index.lookup(blob_id)
            if location is None:
                job.failure = f"blob {blob_id.hex()[:16]} is not in the index"
                job.damaged = True
                job.remaining = 0
                return
            blobs = self._packs.setdefault(location.pack_id, {})
            if blob_id not in blobs:
                blobs[blob_id] = (location, [])
            blobs[blob_id][1].append((job, offset))
            offset += location.raw_length

    def run(self) -> None:
        """Write everything planned and wait for it; then failed files (removed) are reported
        through ``failed``."""
        self.start()
        self.wait()

    def start(self) -> None:
        """Write the batch planned so far while ``add`` collects the next one (with the
        restore's readers: in a thread of its own, once the batch before it is written;
        without them, here and now). At most two batches are held: one written, one planned."""
        self.wait()
        packs, jobs = self._packs, self._jobs
        self._packs, self._jobs, self._planned_bytes = {}, [], 0
        if self._readers is None:
            self._write_batch(packs, jobs)
            return
        background = ThreadPoolExecutor(1, thread_name_prefix="restore-batch")
        self._running = background.submit(self._write_batch, packs, jobs)
        background.shutdown(wait=False)  # its thread ends with the batch

    def wait(self) -> None:
        """Wait for the batch being written (its error, if any, is raised here)."""
        running, self._running = self._running, None
        if running is not None:
            running.result()

    def _write_batch(self, packs: dict[bytes, dict[bytes, tuple]], jobs: list[FileJob]) -> None:
        # Remotely one worker more than connections: a connection is held only while a pack is
        # read, so one worker writes out what it read while the others read.
        workers = max(self.workers, self._connections + (self._connections > 1))
        given = self._readers
        with contextlib.ExitStack() as stack:
            if given is None:
                self._readers = stack.enter_context(self.repository.readers(self._connections))
            try:
                with ThreadPoolExecutor(workers, thread_name_prefix="restore") as pool:
                    for future in [
                        pool.submit(self._pack, pack_id, piece)
                        for pack_id, piece in sorted(_pieces(packs), key=_cost, reverse=True)
                    ]:
                        future.result()
            finally:
                self._readers = given
        for job in jobs:
            if job.failure is not None:
                self._discard(job)
                self.failed(job)

    @property
    def full(self) -> bool:
        """True once the batch collected by ``add`` should be written (``start``)."""
        return len(self._jobs) >= BATCH_FILES or self._planned_bytes >= BATCH_BYTES

    # ---------------------------------------------------------------- per pack

    def _pack(self, pack_id: bytes, ordered: list) -> None:
        start, end = _span(ordered)
        try:
            with self._readers.store() as store:  # type: ignore[union-attr]
                data = store.load(pack_name(pack_id), start, end - start)
        except ObjectMissing:
            data = b""
        view = memoryview(data)
        for blob_id, (location, targets) in ordered:
            try:
                if len(data) < end - start:
                    raise IntegrityError(f"pack {pack_id.hex()[:16]} is missing or truncated")
                sealed = view[location.offset - start : location.offset - start + location.length]
                plain = self.repository.open_blob(blob_id, location, sealed)
            except IntegrityError as error:
                for job, _offset in targets:
                    self._fail(job, str(error.fields["message"]))
                continue
            for job, offset in targets:
                self._write(job, offset, plain)

    def _write(self, job: FileJob, offset: int, data: bytes) -> None:
        with job.lock:
            if job.failure is None:
                try:
                    self._write_locked(job, offset, data)
                except OSError as error:
                    job.failure = error.strerror or str(error)
            job.remaining -= 1
            if job.remaining or job.failure is not None:
                return
            self._close(job)
        self.finished(job)

    def _write_locked(self, job: FileJob, offset: int, data: bytes) -> None:
        if job.fd is None:
            flags = os.O_WRONLY | os.O_NOFOLLOW | (os.O_CREAT | os.O_EXCL if not job.written else 0)
            job.fd = os.open(job.path, flags, IN_PROGRESS)
            job.created = True
            with self._open_lock:
                self._open += 1
        holes = job.entry.get("holes")
        view = memoryview(data)
        segments = data_segments(offset, len(data), holes) if holes else [(offset, len(data))]
        for start, length in segments:
            part, position = view[start - offset : start - offset + length], start
            while part:
                count = os.pwrite(job.fd, part, position)
                part, position = part[count:], position + count
        job.written += len(data)
        if job.remaining == 1:
            if job.written != job.entry["size"]:
                raise OSError(0, f"content has {job.written} bytes, expected {job.entry['size']}")
            if holes:  # a trailing hole; without holes the file was written up to its size
                os.ftruncate(job.fd, job.entry["size"])
            if job.entry["size"] >= DURABLE_FILE:
                os.fdatasync(job.fd)
                os.posix_fadvise(job.fd, 0, 0, os.POSIX_FADV_DONTNEED)
            self.settle(job.fd, job)
        elif self._open > MAX_OPEN_FILES:
            self._close(job)

    def _close(self, job: FileJob) -> None:
        if job.fd is not None:
            os.close(job.fd)
            job.fd = None
            with self._open_lock:
                self._open -= 1

    def _fail(self, job: FileJob, message: str) -> None:
        with job.lock:
            if job.failure is None:
                job.failure, job.damaged = message, True
            self._close(job)

    def _discard(self, job: FileJob) -> None:
        self._close(job)
        if job.created:  # never leave a file that was not completely written (a rerun fills it)
            try:
                os.unlink(job.path)
            except FileNotFoundError:
                pass

    def _create_empty(self, job: FileJob) -> None:
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
            fd = os.open(job.path, flags, IN_PROGRESS)
            job.created = True
            try:
                os.ftruncate(fd, job.entry["size"])  # a file that is all hole
                self.settle(fd, job)
            finally:
                os.close(fd)
        except OSError as error:
            job.failure = error.strerror or str(error)
            return
        self.finished(job)
