"""Reader processes: the files of leaf directories read, compared and sealed on every core.

A backup's main process walks directories, compares them with the parent snapshot, builds trees
and fills packs. For a directory of small files that work is mostly Python per file (build the
entry, compare it with the parent's, open, read, id, compress, seal) that holds the GIL, so
threads cannot spread it over cores. Once a backup has met ``START_AFTER`` files in
directories, it starts one reader process per core (``SAFEHOLD_READ_PROCESSES`` overrides, 0
turns them off) and hands them whole leaf directories: the main process lists a directory with
``os.scandir`` (no lstat) and a directory whose entries' types show no subdirectory goes to a
reader process by its names and the parent snapshot's tree id. The reader process lstat's them,
makes the listing signature and either finds it in the parent's directory table (sent at start:
the leaf directories' signatures and trees) or archives the directory with the parent's tree
from the local tree cache (spliced from the parent's bytes when the cache holds the tree's
table: safehold/archive/treetable.py); when a subdirectory or hard-linked file turns up, or
the tree is not cached, it gives the directory back (DECLINED) and the main process lists it itself
(``Archiver._scan``) and archives it, or sends the reader that listing with the parent's tree.
The reader process runs the very same archiver code on it (``Archiver.archive_leaf``) and seals
every blob, the directory's tree included, straight into a pack buffer in memory shared with
the main process (a memfd each, two per reader); the main process stores and indexes whole
packs (``BlobWriter.add_pack``: if one of its blobs is known, only the new ones go into its own
packs) and finishes the directory once every blob of it is in a pack stored or queued.

A reader process gets the master key through its stdin pipe (never the environment or the
command line), a minimal environment (``secrecy.child_env``) and no store access: it neither
reads nor writes the repository. If one ends (killed, out of memory), the main process archives
the directories it had not finished itself and notes a warning; the backup goes on.

Wire format (private to one run, both ends the same safehold): frames of a 4-byte little-endian
length and a msgpack body. Main -> reader: a set-up frame ``{"key", "buffers" (descriptor
numbers), "capacity", "chunker", "level", "pack_size", "tree_cache" (its directory or nil),
"signing", "one_file_system", "known" ([[signature, tree id], ...])}``, then per directory
``[LIST, [path, parent tree id or nil, [name, ...]]]`` or ``[REQUEST, [path, parent tree id or
nil, parent tree plaintext or nil, [[name, *Stat], ...]]]``, ``[FREE, buffer number]`` once a
pack is stored, ``[FLUSH, nil]`` to have the pack being filled sent. Reader -> main: ``[PACK,
[buffer number, pack id, size, [[type, id, offset, length, plaintext length], ...]]]`` for a
full (or flushed) pack, ``[DONE, {"tree", "count", "signature" (LIST only), statistics...}]``
or ``[DECLINED, nil]`` per directory in order, ``[SETTLED, nil]`` when no blob of an answered
directory waits in the pack being filled. Each side reads its pipe in a thread of its own, so
neither waits to write while the other waits to write back.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import queue
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import msgpack

from safehold.archive import treetable
from safehold.archive.frames import (
    end_processes,
    process_count,
    read_frame,
    read_message,
    start_process,
    write_frame,
)
from safehold.crypto import OVERHEAD, Cipher, MasterKey
from safehold.errors import IntegrityError
from safehold.repo.cache import TreeCache
from safehold.repo.format import BLOB_TREE, PACK_RECORD, blob_aad, encode_body_scratch
from safehold.repo.pack import MAX_BLOBS, PackBuilder, PackEntry
from safehold.repo.repository import open_cached_tree

START_AFTER = 2000  # files in directories archived by the main process before readers start
IN_FLIGHT = 16  # directories sent to one reader process and not answered yet, at most
SETTLE_EVERY = 64  # answered directories that wait for the reader's pack, before it is sent
PACK, DONE, SETTLED, DECLINED = 0, 1, 2, 3  # reader -> main
REQUEST, FREE, FLUSH, LIST = 0, 1, 2, 3  # main -> reader
CACHE_PUTS = 256  # trees sealed and waiting to be put into the local tree cache, at most
BUFFERS = 2  # pack buffers shared with each reader process: one filling, one being stored


class Stat(NamedTuple):
    """The lstat fields an entry is made of, as a reader process receives them."""

    st_mode: int
    st_uid: int
    st_gid: int
    st_mtime_ns: int
    st_ctime_ns: int
    st_ino: int
    st_dev: int
    st_nlink: int
    st_size: int
    st_rdev: int


def stat_fields(st: os.stat_result) -> tuple[int, ...]:
    """The fields of ``Stat``, in its order."""
    return (
        st.st_mode,
        st.st_uid,
        st.st_gid,
        st.st_mtime_ns,
        st.st_ctime_ns,
        st.st_ino,
        st.st_dev,
        st.st_nlink,
        st.st_size,
        st.st_rdev,
    )


def reader_count() -> int:
    """``SAFEHOLD_READ_PROCESSES`` if set (0: none), else one per core this process may use."""
    return process_count("SAFEHOLD_READ_PROCESSES")


# ------------------------------------------------------------------ the reader process side


class _Channel:
    """The reader's end of its stdin: directory requests, and pack buffers given back.

    A thread of its own reads the pipe as frames arrive, so the main process's writes to it
    never wait for this process to finish a directory: no cycle of full pipes can form (the
    main process waiting to write here while this process waits to write an answer)."""

    def __init__(self, source, buffers: int) -> None:  # type: ignore[no-untyped-def]
        self.source = source
        self.free: deque[int] = deque(range(buffers))
        self.requests: deque[list] = deque()  # [kind, value] of REQUEST, LIST and FLUSH
        self.closed = False
        self.changed = threading.Condition()
        threading.Thread(target=self._pump, name="channel", daemon=True).start()

    def _pump(self) -> None:
        while True:
            message = read_message(self.source)
            with self.changed:
                if message is None:
                    self.closed = True
                    self.changed.notify_all()
                    return
                kind, value = message
                if kind == FREE:
                    self.free.append(value)
                else:
                    self.requests.append(message)
                self.changed.notify_all()

    def request(self) -> list:
        """The next [kind, value]: a directory to archive, or FLUSH (send the pack being
        filled); EOFError once the main process closed the pipe and every one was taken."""
        with self.changed:
            while not self.requests:
                if self.closed:
                    raise EOFError
                self.changed.wait()
            return self.requests.popleft()

    def buffer(self) -> int:
        """The number of a free pack buffer, waiting for the main process to free one."""
        with self.changed:
            while not self.free:
                if self.closed:
                    raise EOFError("the main process went away")
                self.changed.wait()
            return self.free.popleft()


class _PackFiller:
    """The writer a reader process's archiver stores into: blobs sealed straight into packs
    in buffers shared with the main process; a full pack is announced, not copied."""

    def __init__(  # type: ignore[no-untyped-def]
        self,
        cipher: Cipher,
        level: int,
        pack_size: int,
        buffers: list,
        channel: _Channel,
        sink,
        tree_cache: TreeCache | None,
    ) -> None:
        self.cipher = cipher
        self.tree_cache = tree_cache  # this process puts its own trees there (with tables)
        # Puts wait on the file system's journal while packs are synced: a thread of their own.
        self._puts: queue.Queue = queue.Queue(CACHE_PUTS)
        self._putter = threading.Thread(target=self._put_trees, name="tree-cache", daemon=True)
        if tree_cache is not None:
            self._putter.start()
        self.level = level
        self.pack_size = pack_size
        # The header must fit the buffer's room beyond the pack size (see BlobWriter).
        self.max_entries = min(MAX_BLOBS, max(1, (pack_size // 4 - 4096) // PACK_RECORD.size))
        self.buffers = buffers
        self.channel = channel
        self.sink = sink
        self.builder: PackBuilder | None = None
        self.number = -1
        self.lock = threading.Lock()  # the archiver's reader threads add too

    def add(
        self,
        blob_type: int,
        blob_id: bytes,
        data: bytes | memoryview,
        *,
        cache_extra: bytes | None = None,
    ) -> bool:
        plain = encode_body_scratch(data, self.level)
        cached = None
        try:
            with self.lock:
                builder = self.builder
                if builder is not None and blob_id in builder.ids:
                    return False
                length = OVERHEAD + len(plain)
                if builder is not None and length > builder.room() and builder.entries:
                    self._ship()
                if self.builder is None:
                    self.number = self.channel.buffer()
                    self.builder = PackBuilder(buffer=self.buffers[self.number])
                builder = self.builder
                with builder.reserve(blob_type, blob_id, length, len(data)) as view:
                    self.cipher.seal_into(plain, blob_aad(blob_type, blob_id), view)
                    if blob_type == BLOB_TREE and self.tree_cache is not None:
                        cached = bytes(view)
                if len(builder) >= self.pack_size or len(builder.entries) >= self.max_entries:
                    self._ship()
        finally:
            plain.release()
        if cached is not None:
            self._puts.put((blob_id, cached, cache_extra))
        return True

    def _put_trees(self) -> None:
        while (item := self._puts.get()) is not None:
            self.tree_cache.put(*item)  # type: ignore[union-attr]

    def close(self) -> None:
        """Wait for the trees still to be put into the cache."""
        if self._putter.is_alive():
            self._puts.put(None)
            self._putter.join()

    def ship(self) -> None:
        """Announce the pack being filled; if there is none, say that all is announced."""
        with self.lock:
            if self.settled():
                write_frame(self.sink, msgpack.packb([SETTLED, None]))
            else:
                self._ship()

    def settled(self) -> bool:
        """True if every blob so far is in an announced pack."""
        return self.builder is None or not self.builder.entries

    def _ship(self) -> None:
        builder = self.builder
        assert builder is not None
        pack_id, data = builder.finish(self.cipher)
        size = len(data)
        data.release()
        rows = [[e.blob_type, e.blob_id, e.offset, e.length, e.raw_length] for e in builder.entries]
        write_frame(self.sink, msgpack.packb([PACK, [self.number, pack_id, size, rows]]))
        self.builder = None


class _KeyOnly:
    """What the archiver needs of a repository in a reader process: the key, the settings
    and the local tree cache (parent trees read from it; this process's own trees, with their
    tables, put into it by ``_PackFiller``)."""

    object_cache = None

    def __init__(self, cipher: Cipher, chunker: dict, level: int, tree_cache: bytes | None):
        self.cipher = cipher
        self.config = {"chunker": chunker, "compression_level": level}
        self.tree_cache = TreeCache(Path(os.fsdecode(tree_cache))) if tree_cache else None

    def cached_tree(self, tree_id: bytes) -> tuple[bytes, list[list] | None] | None:
        """A tree's checked plaintext from the local tree cache and its table's rows (None
        if it has no valid one: safehold/archive/treetable.py), or None if it is not there
        (or damaged there: dropped, the main process reads it from the repository)."""
        if self.tree_cache is None:
            return None
        sealed, table = self.tree_cache.get_with_table(tree_id)
        if sealed is None:
            return None
        try:
            plain = open_cached_tree(self.cipher, tree_id, sealed)
        except IntegrityError:
            self.tree_cache.discard(tree_id)
            return None
        if table is None:
            return plain, None
        return plain, treetable.load(self.cipher, tree_id, plain, table)


def serve(source, sink) -> None:  # type: ignore[no-untyped-def]
    """The reader process's loop: archive directories until the main process closes the pipe."""
    from safehold.archive.archiver import Archiver, child_path  # after the set-up frame arrived

    setup = read_frame(source)
    if setup is None:
        return
    settings = msgpack.unpackb(setup)
    known = dict(settings["known"])  # the parent's leaf directories: signature -> tree id
    cipher = Cipher(MasterKey.from_bytes(settings["key"]))
    del settings["key"]
    buffers = [mmap.mmap(fd, settings["capacity"]) for fd in settings["buffers"]]
    for fd in settings["buffers"]:
        os.close(fd)
    channel = _Channel(source, len(buffers))
    repository = _KeyOnly(cipher, settings["chunker"], settings["level"], settings["tree_cache"])
    filler = _PackFiller(
        cipher,
        settings["level"],
        settings["pack_size"],
        buffers,
        channel,
        sink,
        repository.tree_cache,
    )
    with Archiver(
        repository,  # type: ignore[arg-type]
        filler,  # type: ignore[arg-type]
        reader_processes=0,
        signing=settings["signing"],
        one_file_system=settings["one_file_system"],
    ) as archiver:
        while True:
            try:
                kind, request = channel.request()
            except EOFError:
                break
            if kind == FLUSH:
                filler.ship()
                continue
            if kind == LIST:
                path, parent_id, names = request
                result = archiver.archive_names(path, names, parent_id, known)
                if result is None:  # the main process lists it again, errors and all
                    archiver.take_stats()
                    write_frame(sink, msgpack.packb([DECLINED, None]))
                    continue
            else:
                path, parent_id, parent_plain, listing = request
                children = [(row[0], child_path(path, row[0]), Stat(*row[1:])) for row in listing]
                tree, count = archiver.archive_leaf(path, children, parent_id, parent_plain)
                result = {"tree": tree, "count": count}
            result.update(archiver.take_stats())
            write_frame(sink, msgpack.packb([DONE, result]))
            if filler.settled():  # nothing of it waits in the pack being filled
                write_frame(sink, msgpack.packb([SETTLED, None]))
    filler.ship()
    filler.close()


def main() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides; EOF ends us
    with contextlib.suppress(BrokenPipeError, EOFError):
        serve(sys.stdin.buffer, sys.stdout.buffer)


# ------------------------------------------------------------------ the main process side


class Job:
    """One directory handed to a reader process, and what to call with its outcome."""

    __slots__ = ("done", "redo", "request")

    def __init__(
        self, request: bytes, done: Callable[[dict], None], redo: Callable[[], None]
    ) -> None:
        self.request = request  # dropped once sent
        self.done = done  # with the DONE statistics, in the receiving thread
        self.redo = redo  # the reader process ended first: archive it in this process


class _Reader:
    def __init__(self, process: subprocess.Popen, number: int, buffers: list) -> None:
        self.process = process
        self.number = number
        self.buffers = buffers  # its pack buffers, shared memory
        self.outstanding: deque[Job] = deque()  # sent, not answered
        # Answered, but some of the directory's blobs may still be in the pack being filled:
        # finished once the reader's next pack arrives (or redone if it never does).
        self.answered: list[tuple[Job, dict]] = []
        self.lock = threading.Lock()  # outstanding, alive
        # Held while a frame is written (taken before ``lock``). The reader drains its stdin
        # in a thread of its own, so a holder never waits long.
        self.write_lock = threading.Lock()
        self.alive = True
        self.thread: threading.Thread | None = None

    def send(self, body: bytes) -> None:
        with self.write_lock, contextlib.suppress(OSError, ValueError):
            write_frame(self.process.stdin, body)  # if it ended, its receiving thread redoes


class ReaderProcesses:
    """The reader processes of one backup run; ``close`` ends them."""

    def __init__(
        self,
        cipher: Cipher,
        settings: dict,
        add_pack: Callable[..., Any],
        warn: Callable[[str], None],
        fail: Callable[[BaseException], None],
        count: int,
    ) -> None:
        """``settings``: chunker, level, pack_size, capacity (of a pack buffer), tree_cache
        (its directory, or None), signing, one_file_system and known (listing signature ->
        tree id of the parent's leaf directories)."""
        self._add_pack = add_pack
        self._trees_cached = settings["tree_cache"] is not None  # each reader puts its own
        self._warn = warn
        self._fail = fail  # an error storing a pack: the backup fails (the archiver raises it)
        self._readers: list[_Reader] = []
        self._slots = threading.BoundedSemaphore(IN_FLIGHT * count)
        try:
            for number in range(count):
                self._start(number, cipher, settings)
        except BaseException:
            self.close()  # the ones started, if any
            raise

    def _start(self, number: int, cipher: Cipher, settings: dict) -> None:
        capacity = settings["capacity"]
        fds = [os.memfd_create(f"safehold-pack-{number}-{k}") for k in range(BUFFERS)]
        try:
            for fd in fds:
                os.ftruncate(fd, capacity)
            buffers = [mmap.mmap(fd, capacity) for fd in fds]
            process = start_process("safehold.archive.readprocs", tuple(fds))
        finally:
            for fd in fds:
                os.close(fd)
        reader = _Reader(process, number, buffers)
        setup = {**settings, "known": list(settings["known"].items())}
        reader.send(msgpack.packb({"key": cipher.master_key.to_bytes(), "buffers": fds, **setup}))
        reader.thread = threading.Thread(
            target=self._receive, args=(reader,), name=f"reader-process-{number}", daemon=True
        )
        reader.thread.start()
        self._readers.append(reader)

    @property
    def pids(self) -> list[int]:
        return [reader.process.pid for reader in self._readers]

    def submit(
        self,
        path: bytes,
        parent_id: bytes | None,
        parent_plain: bytes | None,
        children: list[tuple[bytes, bytes, os.stat_result]],
        done: Callable[[dict], None],
        redo: Callable[[], None],
    ) -> None:
        """Have a reader process archive the leaf directory ``path`` with its ``children``
        (as listed here); ``done`` (once its blobs are all in stored or queued packs) or, if
        no reader process could, ``redo`` is called once."""
        listing = [[name, *stat_fields(st)] for name, _path, st in children]
        request = msgpack.packb([REQUEST, [path, parent_id, parent_plain, listing]])
        self._send(Job(request, done, redo))

    def submit_names(
        self,
        path: bytes,
        parent_id: bytes | None,
        names: list[bytes],
        done: Callable[[dict], None],
        redo: Callable[[], None],
    ) -> None:
        """Have a reader process list (lstat), compare and archive the directory ``path``,
        which had no subdirectory here, from its ``names``; ``done`` as for ``submit``, or
        ``redo`` once if it gives the directory back (``Archiver.archive_names``) or no reader
        process could."""
        self._send(Job(msgpack.packb([LIST, [path, parent_id, names]]), done, redo))

    @property
    def alive(self) -> bool:
        """True while at least one reader process is working."""
        return any(reader.alive for reader in self._readers)

    def _send(self, job: Job) -> None:
        self._slots.acquire()
        while True:
            alive = [reader for reader in self._readers if reader.alive]
            if not alive:
                self._slots.release()
                job.redo()  # every reader process is gone
                return
            reader = min(alive, key=lambda reader: len(reader.outstanding))
            with reader.write_lock:
                with reader.lock:
                    if not reader.alive:
                        continue
                    reader.outstanding.append(job)
                with contextlib.suppress(OSError, ValueError):
                    write_frame(reader.process.stdin, job.request)
                job.request = b""
            return

    def flush(self) -> None:
        """Have every reader process send the pack it is filling, once it has archived what
        it was sent: the directories it answered then finish."""
        for reader in self._readers:
            reader.send(msgpack.packb([FLUSH, None]))

    def _receive(self, reader: _Reader) -> None:
        while (message := read_message(reader.process.stdout)) is not None:
            if message[0] == PACK:
                self._stored(reader, *message[1])
                continue
            if message[0] == SETTLED:
                self._settled(reader)
                continue
            with reader.lock:
                job = reader.outstanding.popleft()
            self._slots.release()
            if message[0] == DECLINED:  # not a leaf after all, or its parent tree not cached
                job.redo()
                continue
            reader.answered.append((job, message[1]))
            if len(reader.answered) % SETTLE_EVERY == 0:
                # Few new blobs a directory (a backup after a small change): its pack fills
                # slowly; have it sent, so that the directories waiting for it stay few.
                reader.send(msgpack.packb([FLUSH, None]))
        with reader.lock:
            reader.alive = False
            unanswered = list(reader.outstanding)
            left = [job for job, _result in reader.answered] + unanswered
            reader.answered, reader.outstanding = [], deque()
        code = reader.process.wait()
        if left or code:
            self._warn(
                f"reader process {reader.number} ended (exit status {code}); this process "
                f"archived the {len(left)} directories it had not finished"
            )
        for _job in unanswered:
            self._slots.release()
        for job in left:
            job.redo()

    def _stored(self, reader: _Reader, number: int, pack_id: bytes, size: int, rows: list) -> None:
        """A reader process's pack is full: store it, then finish the directories it answered
        before (their blobs are all in this pack or earlier ones)."""
        entries = [PackEntry(*row) for row in rows]
        data = memoryview(reader.buffers[number])[:size]
        try:
            self._add_pack(
                pack_id,
                data,
                entries,
                lambda: self._free(reader, number),
                trees_cached=self._trees_cached,
            )
        except BaseException as error:
            self._fail(error)
        self._settled(reader)

    def _settled(self, reader: _Reader) -> None:
        """Every blob the reader process wrote so far is in a pack stored or queued: the
        directories it answered are finished."""
        answered, reader.answered = reader.answered, []
        for job, result in answered:
            job.done(result)

    def _free(self, reader: _Reader, number: int) -> None:
        """The pack in buffer ``number`` is stored: drop its pages from this process (they
        stay in the reader's) and give the buffer back."""
        with contextlib.suppress(OSError, ValueError, AttributeError):
            reader.buffers[number].madvise(mmap.MADV_DONTNEED)
        reader.send(msgpack.packb([FREE, number]))

    def close(self) -> None:
        """End the reader processes (after their last answers and packs) and wait for them."""
        end_processes(self._readers)
        self._readers = []


if __name__ == "__main__":
    main()
