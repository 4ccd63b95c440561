"""Writing blobs: deduplicate, seal, fill packs, upload them, then write index files.

Write order is the crash-safety argument (docs/format.md): a pack is stored before any index
file lists it, and index files are stored before the snapshot that needs them. A crash leaves
at worst packs that no index lists; they are harmless and prune removes them.
"""

from __future__ import annotations

import os
import queue
import threading
from dataclasses import dataclass, field

from safehold.repo.index import encode_index_file
from safehold.repo.pack import PackBuilder
from safehold.repo.repository import Repository, pack_name

INDEX_EVERY_PACKS = 16


@dataclass
class WriteStats:
    blobs_new: int = 0
    bytes_new_raw: int = 0
    bytes_new_stored: int = 0
    packs_written: int = 0
    index_files_written: int = 0
    blobs_by_type: dict[int, int] = field(default_factory=dict)


class BlobWriter:
    """Thread-safe sink for blobs. Use as a context manager; ``flush`` before the snapshot."""

    def __init__(self, repository: Repository, pack_size: int | None = None) -> None:
        self.repository = repository
        self.index = repository.index
        self.pack_size = pack_size or repository.config["pack_size"]
        self.stats = WriteStats()
        self._lock = threading.Lock()
        self._builder = PackBuilder()
        self._in_flight: set[bytes] = set()
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._unindexed: list[tuple[bytes, bytes, int, int, int, int]] = []
        self._packs_since_index = 0
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._upload_loop, name="pack-writer", daemon=True)
        self._thread.start()

    def known(self, blob_id: bytes) -> bool:
        """True if the blob is stored or on its way; callers skip sealing known blobs."""
        return blob_id in self._in_flight or blob_id in self.index

    def add(self, blob_type: int, blob_id: bytes, data: bytes | memoryview) -> bool:
        """Store a blob unless already known; returns True if it was new. Seals outside the lock."""
        if self.known(blob_id):
            return False
        sealed = self.repository.seal_blob(blob_type, blob_id, data)
        with self._lock:
            self._raise_pending_error()
            if blob_id in self._in_flight or blob_id in self.index:
                return False
            self._in_flight.add(blob_id)
            self._builder.add(blob_type, blob_id, sealed, len(data))
            self.stats.blobs_new += 1
            self.stats.bytes_new_raw += len(data)
            self.stats.bytes_new_stored += len(sealed)
            self.stats.blobs_by_type[blob_type] = self.stats.blobs_by_type.get(blob_type, 0) + 1
            full = self._take_builder() if len(self._builder) >= self.pack_size else None
        if full is not None:
            self._ship(full)
        return True

    def _take_builder(self) -> PackBuilder:
        builder, self._builder = self._builder, PackBuilder()
        return builder

    def _ship(self, builder: PackBuilder) -> None:
        # Called without self._lock held: put() blocks while the writer is busy (back-pressure),
        # and the writer needs the lock to finish its pack.
        if builder.entries:
            pack_id, data = builder.finish(self.repository.cipher)
            self._queue.put((pack_id, data, builder))

    def _upload_loop(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self._error is not None:
                    continue  # drain without writing after a failure
                if item == "index":
                    self._write_index()
                    continue
                pack_id, data, builder = item
                self.repository.store.save(pack_name(pack_id), data)
                for entry in builder.entries:
                    self.index.add(
                        entry.blob_id,
                        pack_id,
                        entry.offset,
                        entry.length,
                        entry.raw_length,
                        entry.blob_type,
                    )
                    self._unindexed.append(
                        (
                            entry.blob_id,
                            pack_id,
                            entry.offset,
                            entry.length,
                            entry.raw_length,
                            entry.blob_type,
                        )
                    )
                with self._lock:
                    self._in_flight.difference_update(builder.ids)
                self.stats.packs_written += 1
                self._packs_since_index += 1
                if self._packs_since_index >= INDEX_EVERY_PACKS:
                    self._write_index()
            except BaseException as error:
                self._error = error
            finally:
                self._queue.task_done()

    def _write_index(self) -> None:
        if not self._unindexed:
            return
        packs, records = encode_index_file(self._unindexed)
        name = "index/" + os.urandom(32).hex()
        self.repository.save_object(
            name, {"version": 1, "packs": packs, "records": records, "supersedes": []}
        )
        self._unindexed = []
        self._packs_since_index = 0
        self.stats.index_files_written += 1

    def _raise_pending_error(self) -> None:
        if self._error is not None:
            raise self._error

    def flush(self) -> None:
        """Upload the partial pack and write an index for everything written so far."""
        with self._lock:
            self._raise_pending_error()
            builder = self._take_builder()
        self._ship(builder)
        self._queue.put("index")
        self._queue.join()
        self._raise_pending_error()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
