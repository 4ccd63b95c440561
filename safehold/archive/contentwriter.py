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

Once a batch holds PROCESSES_AFTER files that are a single blob each (small files: most of
an imaging archive), writer processes take those blobs' pieces (writeprocs.py): a worker
thread here reads the piece and hands it over; the process creates, writes and settles the
files with the functions below (``create``, ``put``, ``complete``, ``settle``), on a core of
its own. Files of several blobs are always written here.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from safehold.archive.entries import SYMLINK
from safehold.errors import IntegrityError
from safehold.repo.repository import Repository, StorePool, pack_name
from safehold.store import ObjectMissing

if TYPE_CHECKING:
    from safehold.archive.writeprocs import WriterProcesses

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


SET_ID_BITS = stat.S_ISUID | stat.S_ISGID
CAPABILITY = b"security.capability"


def create(path: bytes) -> int:
    """A new file to restore into, marked IN_PROGRESS (never through a symlink, never over an
    existing file)."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, IN_PROGRESS)


def put(fd: int, offset: int, data: bytes | memoryview, holes: list | None) -> None:
    """Write one blob's plaintext at ``offset`` of a file, leaving its recorded holes unwritten."""
    view = memoryview(data)
    segments = data_segments(offset, len(data), holes) if holes else [(offset, len(data))]
    for start, length in segments:
        part, position = view[start - offset : start - offset + length], start
        while part:
            count = os.pwrite(fd, part, position)
            part, position = part[count:], position + count


def complete(fd: int, entry: dict, written: int) -> None:
    """A file whose last blob is written: its size checked, a trailing hole made, and a large
    one synced and dropped from the page cache (OSError if it came out wrong)."""
    if written != entry["size"]:
        raise OSError(0, f"content has {written} bytes, expected {entry['size']}")
    if entry.get("holes"):  # a trailing hole; without holes the file was written up to its size
        os.ftruncate(fd, entry["size"])
    if entry["size"] >= DURABLE_FILE:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


_NO_FOLLOW = {"follow_symlinks": False}


def settle(target: int | bytes, entry: dict, *, as_root: bool, no_special: bool) -> None:
    """Owner (as root), xattrs, times and mode of ``target``: a complete file's still open
    descriptor (no path lookups), or a path, never followed if it is a symlink (which gets
    no mode, and whose xattrs may be refused: many file systems have none on symlinks).
    Owner first (chown clears setuid bits and capabilities), the mode last: until it replaces
    the in-progress marker (IN_PROGRESS, restorer.DIR_IN_PROGRESS) the file or directory
    counts as unfinished, so a restore killed before then has it done again by the next run.
    Each part is tried even if one before failed (a target without xattr support still gets
    times and mode); the first failure is raised at the end. ``no_special``: no
    setuid/setgid bits, no file capabilities."""
    where = {} if isinstance(target, int) else _NO_FOLLOW
    link = entry.get("type") == SYMLINK
    problem: OSError | None = None
    if as_root:
        try:
            os.chown(target, entry["uid"], entry["gid"], **where)
        except OSError as error:
            problem = error
    for name, value in (entry.get("xattrs") or {}).items():
        if not (no_special and name == CAPABILITY):
            try:
                os.setxattr(target, name, value, **where)
            except OSError as error:
                if not link:
                    problem = problem or error
    try:
        os.utime(target, ns=(entry["mtime"], entry["mtime"]), **where)
    except OSError as error:
        problem = problem or error
    if not link:
        try:
            os.chmod(target, entry["mode"] & ~SET_ID_BITS if no_special else entry["mode"])
        except OSError as error:
            problem = problem or error
    if problem is not None:
        raise problem


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
# Writer processes (writeprocs.py) are started for the first batch with this many files of a
# single blob: a restore of one study does not pay for starting them.
PROCESSES_AFTER = 2000


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


def _single(targets: list) -> bool:
    """True if a blob is the whole content of every file it goes to (a writer process's)."""
    return all(len(job.entry["content"]) == 1 for job, _offset in targets)


def _target(path: bytes, entry: dict) -> list:
    """A file as a writer process gets it (writeprocs.py)."""
    return [
        path, entry["size"], entry["mode"], entry["uid"], entry["gid"], entry["mtime"],
        entry.get("xattrs") or None, entry.get("holes") or None,
    ]  # fmt: skip


class ContentWriter:
    """Collects files with ``add`` and writes them with ``run`` (called once the batch is
    ``full``, and at the end; each run starts an empty batch)."""

    def __init__(
        self,
        repository: Repository,
        workers: int,
        finished: Callable[[FileJob], None],
        failed: Callable[[FileJob], None],
        readers: StorePool,
        *,
        as_root: bool,
        no_special: bool,
        metadata_failed: Callable[[bytes, str], None],
        processes: int = 0,
    ) -> None:
        """``finished``/``failed``: called once per file written/not written (``failed`` at
        the end of its batch, after an incomplete file was removed); ``metadata_failed``: a
        complete file whose owner, mode, xattrs or times could not be set (``settle``).
        ``processes``: writer processes to start once a batch has enough small files
        (writeprocs.py; 0: this process writes everything)."""
        self.repository = repository
        self.workers = workers
        self.finished = finished
        self.failed = failed
        self.as_root = as_root
        self.no_special = no_special
        self.metadata_failed = metadata_failed
        self._readers = readers
        self._index = repository.index
        # pack id -> {blob id: (location, [(job, file offset), ...])}
        self._packs: dict[bytes, dict[bytes, tuple]] = {}
        self._jobs: list[FileJob] = []
        self._planned_bytes = 0
        self._single = 0  # files of one blob in the batch: what writer processes would take
        self._open = 0
        self._open_lock = threading.Lock()
        # Pieces are read into buffers kept for the whole restore, one per piece being read
        # (a larger piece replaces a buffer): the C heap does not keep the freed 16 MiB
        # buffer of every piece read (glibc's growing mmap threshold).
        self._buffers: list[bytearray] = []
        self._running: Future | None = None
        self._connections = readers.size
        self._process_count = processes
        self._processes: WriterProcesses | None = None
        self.processes_lost = 0

    def add(self, path: bytes, entry: dict) -> None:
        """Plan the writing of one regular file (created at its first write)."""
        job = FileJob(path, entry)
        self._jobs.append(job)
        self._planned_bytes += entry["size"]
        if job.remaining == 0:
            self._create_empty(job)
            return
        self._single += job.remaining == 1
        offset = 0
        index = self._index
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
        """Write the batch planned so far in a thread of its own (once the batch before it is
        written) while ``add`` collects the next one. At most two batches are held: one
        written, one planned."""
        self.wait()
        packs, jobs = self._packs, self._jobs
        if self._single >= PROCESSES_AFTER and self._process_count and self._processes is None:
            self._start_processes()
        self._packs, self._jobs, self._planned_bytes, self._single = {}, [], 0, 0
        background = ThreadPoolExecutor(1, thread_name_prefix="restore-batch")
        self._running = background.submit(self._write_batch, packs, jobs)
        background.shutdown(wait=False)  # its thread ends with the batch

    def _start_processes(self) -> None:
        from safehold.archive.writeprocs import WriterProcesses  # it imports this module

        try:
            self._processes = WriterProcesses(
                self.repository.cipher,
                as_root=self.as_root,
                no_special=self.no_special,
                count=self._process_count,
            )
        except OSError:  # no process can be started (limits): this one writes everything
            self._process_count = 0

    def close(self) -> None:
        """End the writer processes, if any were started (after ``wait``); ``processes_lost``
        then says how many had ended before (their files were written here)."""
        processes, self._processes = self._processes, None
        if processes is not None:
            processes.close()
            self.processes_lost = processes.lost

    def wait(self) -> None:
        """Wait for the batch being written (its error, if any, is raised here)."""
        running, self._running = self._running, None
        if running is not None:
            running.result()

    def _write_batch(self, packs: dict[bytes, dict[bytes, tuple]], jobs: list[FileJob]) -> None:
        # Remotely one worker more than connections: a connection is held only while a pack is
        # read, so one worker writes out what it read while the others read.
        workers = max(self.workers, self._connections + (self._connections > 1))
        with ThreadPoolExecutor(workers, thread_name_prefix="restore") as pool:
            for future in [
                pool.submit(self._pack, pack_id, piece)
                for pack_id, piece in sorted(_pieces(packs), key=_cost, reverse=True)
            ]:
                future.result()
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
            buffer = self._buffers.pop()
        except IndexError:  # (list.pop and append are atomic)
            buffer = bytearray(end - start)
        if len(buffer) < end - start:
            buffer = bytearray(end - start)
        try:
            self._piece(pack_id, ordered, start, end, buffer)
        finally:
            self._buffers.append(buffer)

    def _piece(
        self, pack_id: bytes, ordered: list, start: int, end: int, buffer: bytearray
    ) -> None:
        try:
            with self._readers.store() as store:
                data = store.load_into(pack_name(pack_id), start, end - start, buffer)
        except ObjectMissing:
            data = memoryview(b"")
        if self._processes is not None and self._processes.alive:
            handed = [item for item in ordered if _single(item[1][1])]
            if handed:
                ordered = [item for item in ordered if not _single(item[1][1])]
                ordered += self._hand_over(pack_id, start, data, handed)
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

    def _hand_over(self, pack_id: bytes, start: int, data: memoryview, handed: list) -> list:
        """Have a writer process write out the blobs ``handed`` (each only to files of that
        one blob); what is left for this process to write (if the writer process ended)."""
        from safehold.archive.writeprocs import DAMAGED, METADATA, WriterGone

        rows = [
            [blob_id, location.offset - start, location.length, location.raw_length,
             location.blob_type, [_target(job.path, job.entry) for job, _offset in targets]]
            for blob_id, (location, targets) in handed
        ]  # fmt: skip
        try:
            failures = self._processes.write(pack_id, data, rows)  # type: ignore[union-attr]
        except WriterGone:
            return self._take_back(handed)
        for number, place, kind, message in failures:
            job = handed[number][1][1][place][0]
            if kind == METADATA:
                self.metadata_failed(job.path, message)
                continue
            with job.lock:
                job.failure, job.damaged, job.remaining = message, kind == DAMAGED, 0
        for _blob_id, (location, targets) in handed:
            for job, _offset in targets:
                if job.failure is None:
                    job.written, job.remaining = location.raw_length, 0
                    self.finished(job)
        return []

    def _take_back(self, handed: list) -> list:
        """A writer process ended before it answered: a file it completed is counted, one it
        left IN_PROGRESS is removed; the blobs of every file not complete are returned, to be
        written here."""
        left = []
        for blob_id, (location, targets) in handed:
            again = []
            for job, offset in targets:
                try:
                    status = os.lstat(job.path)
                except FileNotFoundError:
                    again.append((job, offset))
                    continue
                except OSError as error:
                    job.failure = error.strerror or str(error)
                    continue
                mode, entry = stat.S_IMODE(status.st_mode), job.entry
                if stat.S_ISREG(status.st_mode) and mode == IN_PROGRESS:
                    os.unlink(job.path)  # created by the process: O_EXCL on a path planned empty
                    again.append((job, offset))
                elif (status.st_size, status.st_mtime_ns) == (entry["size"], entry["mtime"]):
                    job.written, job.remaining = entry["size"], 0
                    self.finished(job)
                else:
                    job.failure = "not written: its writer process ended"
            if again:
                left.append((blob_id, (location, again)))
        return left

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
            if job.written:
                job.fd = os.open(job.path, os.O_WRONLY | os.O_NOFOLLOW)
            else:
                job.fd = create(job.path)
            job.created = True
            with self._open_lock:
                self._open += 1
        put(job.fd, offset, data, job.entry.get("holes"))
        job.written += len(data)
        if job.remaining == 1:
            complete(job.fd, job.entry, job.written)
            self._settle(job.fd, job)
        elif self._open > MAX_OPEN_FILES:
            self._close(job)

    def _settle(self, fd: int, job: FileJob) -> None:
        try:
            settle(fd, job.entry, as_root=self.as_root, no_special=self.no_special)
        except OSError as error:  # the file is complete; only its metadata is not
            self.metadata_failed(job.path, error.strerror or str(error))

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
            fd = create(job.path)
            job.created = True
            try:
                os.ftruncate(fd, job.entry["size"])  # a file that is all hole
                self._settle(fd, job)
            finally:
                os.close(fd)
        except OSError as error:
            job.failure = error.strerror or str(error)
            return
        self.finished(job)
