"""Writing blobs: deduplicate, seal, fill packs, upload them, then write index files.

Write order is the crash-safety argument (docs/format.md): a pack is stored before any index
file lists it, and index files are stored before the snapshot that needs them. A crash leaves
at worst packs that no index lists; they are harmless, and the next writer adopts them
(``BlobWriter(adopt=True)``, the default: their headers go into its first index file, so
their blobs are not stored again) unless prune removes them first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from safehold.crypto import OVERHEAD, AuthenticationFailed
from safehold.errors import ConcurrentChange, StorageError
from safehold.repo.cache import cache_root
from safehold.repo.format import BLOB_TREE, INDEX_RECORD, blob_aad, encode_body_scratch
from safehold.repo.index import Index
from safehold.repo.pack import (
    MAX_BLOBS,
    PackBuilder,
    PackEntry,
    SpooledPackBuilder,
    verified_entries,
)
from safehold.repo.repository import Repository, pack_name
from safehold.store import ObjectMissing
from safehold.store.spool import Spooled

log = logging.getLogger("safehold.store")

INDEX_EVERY_PACKS = 16
# ... or sooner once this many blobs wait for one (about 3 MiB of records): packs of tiny files
# hold 100,000 blobs each, and their rows would otherwise wait in memory for 16 of them.
INDEX_EVERY_BLOBS = 65536
CONFIRM_ONE_BY_ONE = 32  # more packs to confirm than this: one listing of data/ instead


@dataclass
class WriteStats:
    blobs_new: int = 0
    bytes_new_raw: int = 0
    bytes_new_stored: int = 0
    packs_written: int = 0
    index_files_written: int = 0
    packs_adopted: int = 0  # stored packs no index file listed (an interrupted run's)
    blobs_adopted: int = 0
    bytes_adopted: int = 0
    packs_not_adopted: int = 0  # their header could not be read: check reports them
    blobs_by_type: dict[int, int] = field(default_factory=dict)


class BlobWriter:
    """Thread-safe sink for blobs. Use as a context manager; ``flush`` before the snapshot.

    Full packs go through a queue of one to ``uploads`` upload threads (default: what the
    store recommends: 1 locally, several for sftp and s3). With one, the repository's own
    store uploads, as it always did; with more, each thread opens its own connection to the
    location on its first pack. At most ``uploads + 1`` finished packs exist at once (one per
    thread and one queued: a semaphore taken before a pack is finished and given back once it
    is stored); besides them, the pack being filled and, while all uploads are busy, the
    blobs of at most one full pack per thread that filled one wait. The first upload failure
    is raised by the next ``add`` and by ``flush``, so no snapshot is written after it.
    """

    def __init__(
        self,
        repository: Repository,
        pack_size: int | None = None,
        uploads: int | None = None,
        *,
        adopt: bool = True,
    ) -> None:
        self.repository = repository
        self.pack_size = pack_size or repository.config["pack_size"]
        self.uploads = max(1, uploads or repository.store.recommended_uploads)
        self.stats = WriteStats()
        self._tree_cache = repository.tree_cache
        self._lock = threading.Lock()
        self._filled = threading.Condition(self._lock)  # a pack's reserved places are filled
        self._level = repository.config["compression_level"]
        # A pack buffer holds a full pack, one largest chunk and a generous header (pages never
        # written are never touched); buffers are reused.
        self._capacity = (
            self.pack_size + repository.config["chunker"]["max_size"] + self.pack_size // 4
        )
        self._spare: list = []  # emptied pack buffers (anonymous mappings) for the next packs
        # Packs for a remote location are built in temporary files, not in memory: they wait
        # seconds for their upload (safehold/store/spool.py).
        self._spool = repository.store.kind != "local" and _can_spool()
        self._builder: PackBuilder | None = None  # made by the first add
        self._in_flight: set[bytes] = set()
        # Packs this writer stored or deduplicated against since the last flush: each flush
        # confirms they all still exist (the index loaded at the start may be stale).
        self._relied: set[bytes] = set()
        self._queue: queue.Queue = queue.Queue()  # bounded by _slots
        self._slots = threading.Semaphore(self.uploads + 1)
        # Stored packs no index file lists yet: (pack id, its blobs' index-file records).
        self._unindexed: list[tuple[bytes, bytes]] = []
        self._unindexed_blobs = 0
        self._index_lock = threading.Lock()  # _unindexed, _packs_since_index, the index files
        self._packs_since_index = 0
        self._error: BaseException | None = None
        self._stores: list = []  # connections opened by upload threads, closed by close()
        self._threads = [
            threading.Thread(target=self._upload_loop, name=f"pack-writer-{number}", daemon=True)
            for number in range(self.uploads)
        ]
        for thread in self._threads:
            thread.start()
        self._runs = WriterRuns(repository)
        if adopt and self._runs.previous_unfinished():
            self.adopt_unindexed_packs()
            self._runs.forget_unfinished()
        self._runs.start()
        self._flushed = False

    @property
    def pack_capacity(self) -> int:
        """The size of a pack buffer: a full pack, one largest blob and room for the header."""
        return self._capacity

    @property
    def index(self) -> Index:
        """The repository's index, loaded on first use: a backup that writes nothing (every
        file and directory unchanged) never loads it."""
        return self.repository.index

    def known(self, blob_id: bytes) -> bool:
        """True if the blob is stored or on its way; callers skip sealing known blobs."""
        if blob_id in self._in_flight:
            return True
        location = self.index.lookup(blob_id)
        if location is None:
            return False
        self._relied.add(location.pack_id)
        return True

    def add(
        self,
        blob_type: int,
        blob_id: bytes,
        data: bytes | memoryview,
        *,
        cache_extra: bytes | None = None,
    ) -> bool:
        """Store a blob unless already known; returns True if it was new. A tree goes into
        the local tree cache too, with ``cache_extra`` (its sealed table) if given.

        Compresses into a per-thread scratch buffer, reserves the blob's place in the pack
        being filled (under the lock) and seals straight into it (outside the lock, so
        threads encrypt in parallel); a full pack is shipped once every reserved place in
        it is filled.
        """
        if self.known(blob_id):
            return False
        plain = encode_body_scratch(data, self._level)
        try:
            return self._place(
                blob_type,
                blob_id,
                OVERHEAD + len(plain),
                len(data),
                lambda view: self.repository.cipher.seal_into(
                    plain, blob_aad(blob_type, blob_id), view
                ),
                cache_extra,
            )
        finally:
            plain.release()

    def add_sealed(self, blob_type: int, blob_id: bytes, raw_length: int, sealed: bytes) -> bool:
        """Store a blob sealed elsewhere (a reader process: safehold/archive/readprocs.py,
        under this repository's key, ``blob_aad`` as associated data) unless already known;
        returns True if it was new."""
        if self.known(blob_id):
            return False

        def fill(view: memoryview) -> None:
            view[:] = sealed

        return self._place(blob_type, blob_id, len(sealed), raw_length, fill)

    def add_pack(
        self,
        pack_id: bytes,
        data: memoryview,
        entries: list[PackEntry],
        release: Callable[[], None],
        *,
        trees_cached: bool = False,
    ) -> None:
        """Store a whole pack built elsewhere (a reader process's, in shared memory:
        safehold/archive/readprocs.py), ``data`` its bytes and ``entries`` its blobs;
        ``release`` is called once the bytes are no longer needed. ``trees_cached``: its
        builder put its trees in the local tree cache already. If any of its blobs is
        known already, its new blobs go into this writer's own packs instead (one copy of
        each blob in the repository, as ``add`` keeps it)."""
        ids = {entry.blob_id for entry in entries}
        with self._lock:
            self._raise_pending_error()
            fresh = len(ids) == len(entries) and not any(
                blob_id in self._in_flight or blob_id in self.index for blob_id in ids
            )
            if fresh:
                self._in_flight.update(ids)
                for entry in entries:
                    self._count_new(entry.blob_type, entry.length, entry.raw_length)
        if not fresh:
            try:
                for entry in entries:
                    sealed = bytes(data[entry.offset : entry.offset + entry.length])
                    self.add_sealed(entry.blob_type, entry.blob_id, entry.raw_length, sealed)
            finally:
                data.release()
                release()
            return
        if self._tree_cache is not None and not trees_cached:
            for entry in entries:
                if entry.blob_type == BLOB_TREE:
                    sealed = bytes(data[entry.offset : entry.offset + entry.length])
                    self._tree_cache.put(entry.blob_id, sealed)
        foreign = ForeignPack(entries, ids, release)
        if self._spool:  # the reader's buffer is free for its next pack at once
            view = data
            try:
                data = Spooled.of(view)
            finally:
                view.release()
                foreign.recycle()
        self._slots.acquire()
        self._queue.put((pack_id, data, foreign))

    def _count_new(self, blob_type: int, length: int, raw_length: int) -> None:
        # Called with self._lock held.
        self.stats.blobs_new += 1
        self.stats.bytes_new_raw += raw_length
        self.stats.bytes_new_stored += length
        self.stats.blobs_by_type[blob_type] = self.stats.blobs_by_type.get(blob_type, 0) + 1

    def _place(
        self,
        blob_type: int,
        blob_id: bytes,
        length: int,
        raw_length: int,
        fill: Callable[[memoryview], None],
        cache_extra: bytes | None = None,
    ) -> bool:
        """Reserve ``length`` bytes for a new blob in the pack being filled (under the lock),
        ``fill`` them (outside it) and ship the pack when it is full."""
        shipped = []
        with self._lock:
            self._raise_pending_error()
            if blob_id in self._in_flight or blob_id in self.index:
                return False
            self._in_flight.add(blob_id)
            if self._builder is None:
                self._builder = self._new_builder()
            if length > self._builder.room() and self._builder.entries:
                shipped.append(self._take_builder())  # a blob larger than the room left
            builder = self._builder
            view = builder.reserve(blob_type, blob_id, length, raw_length)
            entry = builder.entries[-1]
            builder.pending += 1
            self._count_new(blob_type, length, raw_length)
            if len(builder) >= self.pack_size or len(builder.entries) >= MAX_BLOBS:
                shipped.append(self._take_builder())
        try:
            fill(view)
            builder.filled(entry, view)
            if blob_type == BLOB_TREE and self._tree_cache is not None:
                # the next backup's parent trees
                self._tree_cache.put(blob_id, bytes(view), cache_extra)
        except BaseException as error:
            with self._lock:
                builder.poisoned = True  # never stored: its bytes are not all sealed blobs
                self._error = self._error or error
            raise
        finally:
            view.release()
            with self._lock:
                builder.pending -= 1
                if not builder.pending:
                    self._filled.notify_all()
        for full in shipped:
            self._ship(full)
        return True

    def _take_builder(self) -> PackBuilder:
        # Called with self._lock held.
        builder = self._builder
        self._builder = self._new_builder()
        return builder

    def _new_builder(self) -> PackBuilder:
        # Called with self._lock held.
        if self._spool:
            return SpooledPackBuilder(self._capacity)
        return PackBuilder(self._capacity, self._spare.pop() if self._spare else None)

    def _ship(self, builder: PackBuilder) -> None:
        # Called without self._lock held: waiting for a slot blocks while the uploads are busy
        # (back-pressure), and other threads may still be sealing into the pack's buffer.
        with self._lock:
            while builder.pending:
                self._filled.wait()
            poisoned = builder.poisoned
        if builder.entries and not poisoned:
            self._slots.acquire()
            try:
                pack_id, data = builder.finish(self.repository.cipher)
            except BaseException as error:  # a full temporary directory (SpooledPackBuilder)
                self._recycle(builder)
                self._slots.release()
                with self._lock:
                    self._error = self._error or error
                raise
            self._queue.put((pack_id, data, builder))
        else:
            self._recycle(builder)

    def _recycle(self, builder: PackBuilder) -> None:
        """Keep an emptied pack buffer for the next pack (a few at most)."""
        buffer = builder.recycle()
        with self._lock:
            if len(buffer) >= self._capacity and len(self._spare) < self.uploads + 1:
                self._spare.append(buffer)

    def _upload_loop(self) -> None:
        store = None
        while True:
            item = self._queue.get()
            if item is None:
                self._queue.task_done()
                return
            try:
                if self._error is None:  # after a failure: drain without writing
                    if store is None:
                        store = self._upload_store()
                    pack_id, data, builder = item
                    if store.kind != "local" and isinstance(data, memoryview):
                        # not spooled (no temporary directory): paramiko and botocore write
                        # bytes: convert once, free the buffer now
                        view, data = data, bytes(data)
                        view.release()
                        self._recycle(builder)
                    store.save(pack_name(pack_id), data)
                    self._saved(pack_id, builder)
            except BaseException as error:
                with self._lock:
                    if self._error is None:
                        self._error = error
            finally:
                _pack_id, data, builder = item
                if isinstance(data, Spooled):
                    data.close()
                else:
                    data.release()  # (again: harmless)
                self._recycle(builder)  # the pack's buffer is free before its slot
                item = data = builder = None
                self._slots.release()
                self._queue.task_done()

    def _upload_store(self):  # type: ignore[no-untyped-def]
        if self.uploads == 1:
            return self.repository.store  # as always: no second connection
        store = self.repository.open_another_store()
        with self._lock:
            self._stores.append(store)
        return store

    def _saved(self, pack_id: bytes, builder: PackBuilder) -> None:
        """A pack is stored: index its blobs; every INDEX_EVERY_PACKS packs (or
        INDEX_EVERY_BLOBS blobs) an index file."""
        for entry in builder.entries:
            self.index.add(*entry.index_row(pack_id))
        with self._lock:
            self._in_flight.difference_update(builder.ids)
            self._relied.add(pack_id)
            self.stats.packs_written += 1
        with self._index_lock:
            self._list(pack_id, builder.entries)
            self._packs_since_index += 1
            if (
                self._packs_since_index >= INDEX_EVERY_PACKS
                or self._unindexed_blobs >= INDEX_EVERY_BLOBS
            ):
                self._write_index()

    def _list(self, pack_id: bytes, entries: list[PackEntry]) -> None:
        """Queue a stored pack's blobs for the next index file (with _index_lock held), as
        that file's records (49 bytes a blob: a pack of tiny blobs has 100,000s), numbering
        the pack by its place among the queued ones."""
        number, size = len(self._unindexed), INDEX_RECORD.size
        records = bytearray(size * len(entries))
        for position, e in enumerate(entries):
            INDEX_RECORD.pack_into(
                records,
                position * size,
                e.blob_id,
                number,
                e.offset,
                e.length,
                e.raw_length,
                e.blob_type,
            )
        self._unindexed.append((pack_id, bytes(records)))
        self._unindexed_blobs += len(entries)

    def adopt_unindexed_packs(self) -> None:
        """Resume after an interrupted run: every stored pack that no index file lists is read
        whole, one at a time, and if its BLAKE3 matches its name and its header authenticates,
        its blobs are added to the index and to an index file written at once, so that they
        deduplicate and are not uploaded again. (A pack left out by 'repair index' because it
        is damaged fails these tests, so no new snapshot deduplicates against damaged data.)
        Must run under the repository lock, as every writer does: docs/format.md,
        "Adopting unindexed packs", explains why that keeps prune correct even when the pack
        is another running writer's."""
        known = set(self.index.packs)
        store = self.repository.store
        for name, size in list(store.list("data")):
            try:
                pack_id = bytes.fromhex(name.split("/", 1)[1])
            except ValueError:
                continue
            if pack_id in known or len(pack_id) != 32:
                continue
            data = b""  # one pack in memory at a time
            try:
                data = store.load(name)
                entries = verified_entries(self.repository.cipher, pack_id, data)
            except (ObjectMissing, ValueError, AuthenticationFailed):
                self.stats.packs_not_adopted += 1  # deleted meanwhile, or damaged: left alone
                continue
            self.adopt(pack_id, entries)
            self.stats.packs_adopted += 1
            self.stats.blobs_adopted += len(entries)
            self.stats.bytes_adopted += size
        if self.stats.packs_adopted:
            with self._index_lock:
                self._write_index()  # listed now: an interruption of this run keeps them

    def adopt(self, pack_id: bytes, entries: list[PackEntry]) -> None:
        """List an already stored pack's blobs (``PackEntry`` rows from its header) in the
        index and in the next index file, as if this writer had written it."""
        for entry in entries:
            self.index.add(*entry.index_row(pack_id))
        with self._index_lock:
            self._list(pack_id, entries)

    def _write_index(self) -> None:
        # Called with _index_lock held: only packs already stored are listed (write order).
        if not self._unindexed:
            return
        packs = [pack_id for pack_id, _ in self._unindexed]
        records = b"".join(records for _, records in self._unindexed)
        name = "index/" + os.urandom(32).hex()
        self.repository.save_object(
            name, {"version": 1, "packs": packs, "records": records, "supersedes": []}
        )
        self._unindexed = []
        self._unindexed_blobs = 0
        self._packs_since_index = 0
        self.stats.index_files_written += 1

    def _raise_pending_error(self) -> None:
        if self._error is not None:
            raise self._error

    def flush(self) -> None:
        """Upload the partial pack and write an index for everything written so far."""
        with self._lock:
            self._raise_pending_error()
            builder = self._take_builder() if self._builder is not None else None
        if builder is not None:
            self._ship(builder)
        self._queue.join()  # every pack shipped so far is stored (or failed)
        self._raise_pending_error()
        with self._index_lock:
            self._write_index()
        self._confirm_packs()
        self._flushed = True

    def _confirm_packs(self) -> None:
        """Raise ConcurrentChange unless every pack written or deduplicated against since the
        last flush still exists: defence in depth against a prune that ran unseen by the lock
        (whatever is committed next, a snapshot, must not point into deleted packs)."""
        with self._lock:
            packs, self._relied = self._relied, set()
        if not packs:
            return
        store = self.repository.store
        if len(packs) <= CONFIRM_ONE_BY_ONE:
            missing = [pack for pack in packs if not store.exists(pack_name(pack))]
        else:
            stored = {name for name, _size in store.list("data")}
            missing = [pack for pack in packs if pack_name(pack) not in stored]
        if missing:
            raise ConcurrentChange(
                f"pack {missing[0].hex()[:16]} (and {len(missing) - 1} more) that this run "
                "wrote or relies on was deleted while it ran"
            )

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()
        for store in self._stores:
            try:
                store.close()
            except Exception:  # closing a spare connection must not mask an error
                pass
        self._stores = []
        self._runs.end(finished=self._flushed and self._error is None)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ForeignPack:
    """A pack built elsewhere, in the upload queue as a PackBuilder would be."""

    def __init__(self, entries: list[PackEntry], ids: set[bytes], release: Callable[[], None]):
        self.entries = entries
        self.ids = ids
        self._release: Callable[[], None] | None = release

    def recycle(self) -> bytes:
        """Hand the bytes back (once); no buffer to keep."""
        release, self._release = self._release, None
        if release is not None:
            release()
        return b""


class WriterRuns:
    """Which pack writers on this machine did not finish, so that the next one adopts their
    packs (``BlobWriter.adopt_unindexed_packs``) and the others skip listing ``data/``.

    Each writer leaves a marker in the local cache (``<cache>/<repository id>/writers/``):
    ``writing-<pid>-<random>`` while it runs, removed when it ends after its last index file,
    renamed ``unfinished-<random>`` when it ends without one. A writer adopts when it finds an
    ``unfinished`` marker or a ``writing`` one whose process is gone (killed, power cut), and
    the first writer with an empty cache does too. When the cache cannot be used (turned off,
    not writable), every writer adopts, as is safe.
    Writers on other hosts adopt their own leftovers on their next run; prune removes what
    they never come back for.
    """

    def __init__(self, repository: Repository) -> None:
        cache = repository.tree_cache
        self.directory = (
            None if cache is None else cache_root() / str(repository.config["id"]) / "writers"
        )
        self.marker: Path | None = None
        self._found: list[Path] = []

    def previous_unfinished(self) -> bool:
        """True if an earlier writer here may have left packs no index file lists."""
        if self.directory is None:
            return True
        try:
            first = not self.directory.is_dir()  # no record of earlier writers: assume one
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            names = [path for path in self.directory.iterdir() if path.is_file()]
        except OSError:
            return True
        self._found = [path for path in names if _abandoned(path.name)]
        return first or bool(self._found)

    def forget_unfinished(self) -> None:
        """The leftovers of the markers found are adopted: remove those markers."""
        for path in self._found:
            with contextlib.suppress(OSError):
                path.unlink()
        self._found = []

    def start(self) -> None:
        if self.directory is None:
            return
        marker = self.directory / f"writing-{os.getpid()}-{os.urandom(4).hex()}"
        try:
            marker.touch()
            self.marker = marker
        except OSError:
            self.marker = None

    def end(self, finished: bool) -> None:
        if self.marker is None:
            return
        with contextlib.suppress(OSError):
            if finished:
                self.marker.unlink()
            else:
                self.marker.rename(self.marker.with_name(f"unfinished-{os.urandom(4).hex()}"))
        self.marker = None


def _can_spool() -> bool:
    """True if packs can be built in the temporary directory; else (not there, not
    writable) a warning, and they are built in memory."""
    try:
        Spooled().close()
    except StorageError as error:
        log.warning("safehold: packs are built in memory: %s", error.fields["message"])
        return False
    return True


def _abandoned(name: str) -> bool:
    if name.startswith("unfinished-"):
        return True
    if not name.startswith("writing-"):
        return False
    try:
        pid = int(name.split("-")[1])
        os.kill(pid, 0)
    except (ValueError, IndexError, ProcessLookupError):
        return True  # its process is gone
    except PermissionError:
        return False  # alive, another user's
    return False
