"""The archiver: file trees -> tree and data blobs -> a snapshot document.

The main thread walks directories (lstat, excludes, parent-snapshot comparison) and hands
batches of files that must be read to a small thread pool; chunking, hashing, compression and
encryption release the GIL, so two cores are used. A directory's tree blob is written once all
its entries are known (post-order), so a snapshot only ever refers to stored trees.
"""

from __future__ import annotations

import os
import stat
import struct
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO

from safehold.archive import readprocs, treetable
from safehold.archive.entries import (
    DIR,
    FILE,
    SYMLINK,
    base_entry,
    decode_tree,
    encode_tree,
    entry_type,
    read_xattrs,
    synthetic_entry,
    unchanged,
)
from safehold.archive.excludes import CACHEDIR_TAG, Excludes
from safehold.archive.problems import Problems
from safehold.archive.reader import FileChanged, FileReader
from safehold.errors import SourceNotFound
from safehold.repo.format import BLOB_TREE
from safehold.repo.repository import Repository
from safehold.repo.writer import BlobWriter

BATCH_BYTES = 8 * 1024 * 1024
BATCH_FILES = 256
# Files up to this size are read by the walking thread itself. Handing a tiny file to a reader
# thread costs more than reading it: every open, read, fstat and close releases the GIL, and
# with the walk and two readers each doing so the GIL changes hands several times per file
# (20,000 small files: 80,000 context switches, 5.6 CPU-s and 4.1 s; inline 2.2 CPU-s, 2.4 s).
INLINE_READ = 64 * 1024

# A directory's listing signature (docs/format.md, "The local cache"): the keyed BLAKE3 of
# this prefix and, for every child in name order, these lstat fields and its name. Equal
# signatures mean equal listings: same names, same inodes, same sizes, times, modes, owners.
SIGNATURE_PREFIX = b"safehold-dir-listing-1\0"
_SIGNATURE_FIELDS = struct.Struct("<IIIIIQQqqQQ")

# What the local cache remembers of one directory of a snapshot: its listing signature ->
# (its tree id, {name: tree id} of its subdirectories).
DirTable = dict[bytes, tuple[bytes, dict[bytes, bytes]]]


class Pending:
    """A file entry whose content is being read (or is a hard link to one that is)."""

    __slots__ = ("entry", "failed", "future", "link_of", "path")

    def __init__(
        self, entry: dict, path: bytes | None = None, link_of: Pending | None = None
    ) -> None:
        self.entry = entry
        self.path = path
        self.future: Future | None = None
        self.failed = False
        self.link_of = link_of


class DirNode:
    """A directory whose entries are still being read. It finishes (its tree is written) when
    its last outstanding read or subdirectory finishes, in whichever thread that happens, so
    the walk never waits for one directory before starting the next."""

    __slots__ = (
        "callbacks",
        "done",
        "entry",
        "expected",
        "items",
        "lock",
        "outstanding",
        "previous",
        "previous_tree",
        "reused",
        "signature",
    )

    def __init__(
        self, entry: dict, previous_tree: bytes | None, previous: dict[bytes, dict] | None = None
    ) -> None:
        self.entry = entry
        self.previous_tree = previous_tree
        self.previous = previous  # the parent snapshot's entries of this directory, by name
        self.items: list | None = None
        self.outstanding = 1  # the scan itself; released when the directory is fully listed
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.callbacks: list[Callable[[], None]] = []
        self.signature: bytes | None = None  # of the listing, when it may be remembered
        self.expected = 0  # entries the tree has when no child was lost to an error
        # The parent snapshot's subdirectory trees, when the listing equals the one the local
        # cache remembers: the tree is then ``previous_tree`` unless a subdirectory changed.
        self.reused: dict[bytes, bytes] | None = None

    def on_done(self, callback: Callable[[], None]) -> None:
        with self.lock:
            if not self.done.is_set():
                self.callbacks.append(callback)
                return
        callback()


@dataclass
class ArchiveStats:
    files_new: int = 0
    files_changed: int = 0
    files_unchanged: int = 0
    dirs: int = 0
    other: int = 0
    bytes_read: int = 0
    bytes_total: int = 0
    errors: Problems = field(default_factory=Problems)  # could not be read (bounded)
    warnings: Problems = field(default_factory=Problems)  # changed while read, ...

    def as_dict(self) -> dict:
        """The statistics as a dict (no deep copy: a reader process sends one per directory);
        errors and warnings as the ones kept and ``errors_more``/``warnings_more``."""
        counts = {name: getattr(self, name) for name in self.__dataclass_fields__}
        for name in ("errors", "warnings"):
            problems = counts.pop(name)
            counts[name], counts[name + "_more"] = list(problems), problems.more
        return counts

    def add(self, other: dict) -> None:
        """Add the counts, errors and warnings of ``other`` (an ``as_dict``) to these."""
        for name in ("errors", "warnings"):
            getattr(self, name).add(other.get(name, []), other.get(name + "_more", 0))
        for name, value in other.items():
            if name in self.__dataclass_fields__ and name not in ("errors", "warnings"):
                setattr(self, name, getattr(self, name) + value)


Progress = Callable[[str, int, int], None]  # (path, files done delta, bytes done delta)


class Archiver:
    """Backs up paths into tree blobs. One instance per backup run."""

    def __init__(
        self,
        repository: Repository,
        writer: BlobWriter,
        *,
        excludes: Excludes | None = None,
        one_file_system: bool = False,
        workers: int | None = None,
        progress: Progress | None = None,
        known_dirs: DirTable | None = None,
        reader_processes: int | None = None,
        signing: bool | None = None,
    ) -> None:
        self.repository = repository
        self.writer = writer
        self.excludes = excludes or Excludes()
        self.one_file_system = one_file_system
        self.reader = FileReader(repository.cipher, writer, repository.config["chunker"])
        self.stats = ArchiveStats()
        self.progress = progress or (lambda path, files, size: None)
        self._workers = workers or min(4, os.cpu_count() or 2)
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="reader")
        self._slots = threading.BoundedSemaphore(self._workers * 2)
        # Leaf directories go to reader processes (safehold/archive/readprocs.py) once this
        # run has met START_AFTER files in directories (None: one per core; 0: never).
        self._process_count = (
            readprocs.reader_count() if reader_processes is None else reader_processes
        )
        self._files_here = 0
        self._processes: readprocs.ReaderProcesses | None = None
        self._hardlinks: dict[tuple[int, int], Pending] = {}
        self._stats_lock = threading.Lock()
        self._root_dev = 0
        self._failure: BaseException | None = None
        # Directories of the parent snapshot by listing signature (Repository.load_dir_table),
        # and the directories of this run, for the next one. Without a local cache, neither.
        self._signing = repository.object_cache is not None if signing is None else signing
        self.known_dirs: DirTable = known_dirs or {}
        self.new_dirs: DirTable = {}
        # Directories a reader process gave back (it found a subdirectory or a hard-linked
        # file, or could not read the parent's tree; or it ended): the walking thread
        # archives them (``_take_declined``); ``_woken`` tells a waiting walk there are some.
        self._declined: deque[tuple[DirNode, bytes]] = deque()
        self._woken = threading.Event()

    # ---------------------------------------------------------------- trees

    def _load_tree(self, tree_id: bytes | None) -> dict[bytes, dict]:
        if tree_id is None:
            return {}
        entries = decode_tree(self.repository.load_tree_blob(tree_id, cached=True))
        return {entry["name"]: entry for entry in entries}

    def _store_tree(
        self,
        entries: list[dict],
        previous: bytes | None = None,
        previous_entries: dict[bytes, dict] | None = None,
    ) -> bytes:
        """Write a tree blob, unless it equals the parent snapshot's (stored already).

        When every entry equals the parent's entry of that name (unchanged files reuse the
        very dicts of the parent's tree), the tree is the parent's: no encoding needed.
        """
        if (
            previous is not None
            and previous_entries is not None
            and len(entries) == len(previous_entries)
            and all(
                (old := previous_entries.get(entry["name"])) is entry or old == entry
                for entry in entries
            )
        ):
            return previous
        data = encode_tree(sorted(entries, key=lambda entry: entry["name"]))
        tree_id = self.repository.cipher.blob_id(data)
        if tree_id != previous:
            self.writer.add(BLOB_TREE, tree_id, data)
        return tree_id

    # ---------------------------------------------------------------- entry point

    def archive(self, paths: list[str], parent_root: bytes | None) -> bytes:
        """Back up absolute ``paths``; returns the root tree id. The tree mirrors '/'.

        Raises SourceNotFound if a path does not exist.
        """
        self._hardlinks = {}  # links are matched within one pass only (hot+cold reads twice)
        layout: dict = {}
        for path in paths:
            absolute = os.path.abspath(path)
            if not os.path.lexists(absolute):
                raise SourceNotFound(path=path)
            node = layout
            parts = [os.fsencode(p) for p in absolute.strip("/").split("/") if p]
            for part in parts[:-1]:
                node = node.setdefault(part, {})
                if node is True:
                    break
            else:
                if parts:
                    node[parts[-1]] = True
                else:
                    layout = True  # type: ignore[assignment]
        if layout is True:
            self._root_dev = os.lstat(b"/").st_dev
            root = self._wait(self._archive_dir(b"/", os.lstat(b"/"), b"", parent_root))
            return root["subtree"]
        return self._archive_layout(b"", layout, parent_root)

    def archive_stream(self, name: str, stream: BinaryIO, *, mtime_ns: int | None = None) -> dict:
        """Store a byte stream (a database dump) as a file entry named ``name``; returns it."""
        content, size = self.reader.read_stream(stream)
        with self._stats_lock:
            self.stats.bytes_read += size
            self.stats.bytes_total += size
            self.stats.files_new += 1
        return synthetic_entry(os.fsencode(name), FILE, mtime_ns, size=size, content=content)

    def store_directory(
        self,
        name: str,
        entries: list[dict],
        *,
        mtime_ns: int | None = None,
        previous: bytes | None = None,
    ) -> dict:
        """Write a tree of ``entries`` and return a directory entry named ``name`` for it;
        not written (nor looked up in the index) when it is ``previous``, the same tree in
        the parent snapshot."""
        return self.directory_entry(name, self._store_tree(entries, previous), mtime_ns=mtime_ns)

    def directory_entry(self, name: str, subtree: bytes, *, mtime_ns: int | None = None) -> dict:
        """A directory entry named ``name`` for a tree already stored."""
        return synthetic_entry(os.fsencode(name), DIR, mtime_ns, subtree=subtree)

    def close(self) -> None:
        """Wait for the reader threads and processes to finish; call once after the last
        archive call."""
        try:
            if self._processes is not None:
                self._processes.close()
        finally:
            self._pool.shutdown(wait=True)

    def archive_leaf(
        self,
        path: bytes,
        children: list[tuple[bytes, bytes, os.stat_result]],
        parent_tree: bytes | None,
        parent_plain: bytes | None,
        parent_table: list[list] | None = None,
    ) -> tuple[bytes, int]:
        """Archive a directory with no subdirectory from its listing ``children`` (as
        ``_scan`` makes it) and the plaintext of its tree in the parent snapshot; returns
        (its tree id, number of entries). What a reader process runs (readprocs.py). With the
        parent tree's table (safehold/archive/treetable.py) the parent is not decoded: the
        entries of unchanged files are its bytes, spliced into the new tree. The new tree's
        table goes into the local tree cache with it."""
        if parent_plain is not None and parent_table is not None:
            previous = treetable.stand_ins(parent_table)
        elif parent_plain is not None:
            previous = {entry["name"]: entry for entry in decode_tree(parent_plain)}
            parent_plain = None  # nothing to splice from
        else:
            previous = {}
        entries = self._resolve(self._list_entries(path, children, previous))
        self._raise_failure()
        entries.sort(key=lambda entry: entry["name"])
        if (
            parent_tree is not None
            and len(entries) == len(previous)
            and all(previous.get(entry["name"]) is entry for entry in entries)
        ):
            return parent_tree, len(entries)  # every entry the parent's: the parent's tree
        if parent_plain is not None:
            data, rows = treetable.splice(parent_plain, entries)
        else:
            data, rows = treetable.encode(entries)
        tree_id = self.repository.cipher.blob_id(data)
        if tree_id != parent_tree:
            table = treetable.seal(self.repository.cipher, tree_id, rows)
            self.writer.add(BLOB_TREE, tree_id, data, cache_extra=table)
        return tree_id, len(entries)

    def take_stats(self) -> dict:
        """The statistics so far, as a dict; they start again from zero."""
        with self._stats_lock:
            stats, self.stats = self.stats, ArchiveStats()
        return stats.as_dict()

    def __enter__(self) -> Archiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _archive_layout(self, prefix: bytes, layout: dict, parent_tree: bytes | None) -> bytes:
        """Write the tree for a directory that is only on the way to the backed-up paths."""
        previous = self._load_tree(parent_tree)
        started = []
        for name, child in layout.items():
            path = prefix + b"/" + name
            st = os.lstat(path)
            old = previous.get(name)
            old_subtree = old.get("subtree") if old else None
            if child is True:
                started.append(self._archive_top(path, name, st, old))
            else:
                entry = base_entry(name, st, DIR)
                entry["subtree"] = self._archive_layout(path, child, old_subtree)
                started.append(entry)
        entries = [self._wait(item) if isinstance(item, DirNode) else item for item in started]
        return self._store_tree([entry for entry in entries if entry is not None], parent_tree)

    def _archive_top(
        self, path: bytes, name: bytes, st: os.stat_result, old: dict | None
    ) -> DirNode | dict | None:
        self._root_dev = st.st_dev
        kind = entry_type(st.st_mode)
        if kind == DIR:
            return self._archive_dir(path, st, name, old.get("subtree") if old else None)
        entries: list = []
        batch: list = []
        self._add_entry(entries, batch, path, name, st, {name: old} if old else {})
        self._submit(entries, batch)
        resolved = self._resolve(entries)
        self._raise_failure()
        return resolved[0] if resolved else None

    def _wait(self, node: DirNode) -> dict:
        """Wait until a directory (and everything below it) is written; returns its entry.
        Meanwhile archive here what reader processes give back."""
        node.on_done(self._woken.set)
        while True:
            self._woken.clear()
            self._take_declined()
            if node.done.is_set():
                break
            if self._processes is not None:
                self._processes.flush()  # their last directories finish with their last packs
            self._woken.wait()
        self._raise_failure()
        return node.entry

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    # ---------------------------------------------------------------- directories

    def _archive_dir(
        self, path: bytes, st: os.stat_result, name: bytes, parent_tree: bytes | None
    ) -> DirNode:
        entry = base_entry(name, st, DIR)
        xattrs = read_xattrs(path)
        if xattrs:
            entry["xattrs"] = xattrs
        self.stats.dirs += 1
        node = DirNode(entry, parent_tree)
        if self._declined:
            self._take_declined()
        if self._processes is not None and self._processes.alive and self._listing_offloaded:
            names = self._leaf_names(path)
            if names:
                self._processes.submit_names(
                    path,
                    parent_tree,
                    names,
                    lambda result: self._offloaded(node, path, result),
                    lambda: self._decline(node, path),
                )
                return node
        return self._archive_listing(node, path)

    def _archive_listing(self, node: DirNode, path: bytes) -> DirNode:
        """List and lstat the directory ``path`` here, and archive it into ``node``: reused
        whole, handed to a reader process with this listing, or read here."""
        parent_tree = node.previous_tree
        children, complete = self._scan(path)
        signature = self._signature(children) if complete and self._signing else None
        known = self.known_dirs.get(signature) if signature is not None else None
        if known is not None and known[0] == parent_tree:
            return self._reuse_dir(node, path, children, signature, known)  # type: ignore[arg-type]
        node.signature, node.expected = signature, _expected(children)
        if self._offloading(children):
            return self._offload(node, path, children)
        node.previous = self._load_tree(parent_tree)
        self._start(node, self._list_entries(path, children, node.previous))
        return node

    def _list_entries(
        self,
        path: bytes,
        children: list[tuple[bytes, bytes, os.stat_result]],
        previous: dict[bytes, dict],
    ) -> list:
        """A directory's items: entries, Pending reads (submitted), DirNodes of subdirectories."""
        entries: list = []
        batch: list = []
        batch_bytes = 0
        for child, child_path, child_st in children:
            if batch and stat.S_ISDIR(child_st.st_mode):
                # A hard link below may refer to a file of this batch: it must be under way.
                self._submit(entries, batch)
                batch, batch_bytes = [], 0
            pending = self._add_entry(entries, batch, child_path, child, child_st, previous)
            if pending:
                batch_bytes += child_st.st_size
                if batch_bytes >= BATCH_BYTES or len(batch) >= BATCH_FILES:
                    self._submit(entries, batch)
                    batch, batch_bytes = [], 0
        if batch:
            self._submit(entries, batch)
        return entries

    # ---------------------------------------------------------------- reader processes

    def _offloading(self, children: list[tuple[bytes, bytes, os.stat_result]]) -> bool:
        """True if this listing goes to a reader process: a leaf directory (no subdirectory,
        no hard-linked file) once this run has met START_AFTER files; starts them then."""
        if self._process_count == 0 or not children or not _leaf(children):
            return False
        if self._processes is not None and not self._processes.alive:
            return False
        if self._processes is None:
            self._files_here += len(children)
            if self._files_here <= readprocs.START_AFTER:
                return False
            try:
                self._processes = self._start_processes()
            except (OSError, AttributeError) as error:  # no memfd, no fork, no memory
                self._process_count = 0
                self._warn(f"reader processes could not start ({error}): one core is used")
                return False
        return True

    @property
    def _listing_offloaded(self) -> bool:
        """True if reader processes list leaf directories themselves: they read the parent's
        trees from the local tree cache, so only when there is one."""
        return self.repository.tree_cache is not None

    def _start_processes(self) -> readprocs.ReaderProcesses:
        cache = self.repository.tree_cache
        return readprocs.ReaderProcesses(
            self.repository.cipher,
            {
                "chunker": self.repository.config["chunker"],
                "level": self.repository.config["compression_level"],
                "pack_size": self.writer.pack_size,
                "capacity": self.writer.pack_capacity,
                "tree_cache": os.fsencode(cache.directory) if cache is not None else None,
                "signing": self._signing,
                "one_file_system": self.one_file_system,
                # The parent's leaf directories: listing signature -> tree id.
                "known": {
                    signature: tree
                    for signature, (tree, subdirs) in self.known_dirs.items()
                    if not subdirs
                },
            },
            self.writer.add_pack,
            self._warn,
            self._fail,
            self._process_count,
        )

    def _offload(
        self, node: DirNode, path: bytes, children: list[tuple[bytes, bytes, os.stat_result]]
    ) -> DirNode:
        parent_tree = node.previous_tree
        plain = (
            self.repository.load_tree_blob(parent_tree, cached=True)
            if parent_tree is not None
            else None
        )
        self._processes.submit(  # type: ignore[union-attr]
            path,
            parent_tree,
            plain,
            children,
            lambda result: self._offloaded(node, path, result),
            lambda: self._decline(node, path),
        )
        return node

    def _offloaded(self, node: DirNode, path: bytes, result: dict) -> None:
        """A reader process finished a directory (in its receiving thread)."""
        try:
            if self._failure is None:
                with self._stats_lock:
                    self.stats.add(result)  # (its "tree", "count", "signature": no statistics)
                files = result["files_new"] + result["files_changed"] + result["files_unchanged"]
                self.progress(path, files, result["bytes_total"])
                node.entry["subtree"] = result["tree"]
                if "signature" in result:  # listed by the reader process
                    node.signature = result["signature"]
                elif result["count"] != node.expected:
                    node.signature = None  # a child was lost to an error: read it again
                if node.signature is not None:
                    self.new_dirs[node.signature] = (result["tree"], {})
        except BaseException as error:
            self._fail(error)
        self._complete(node)

    def _decline(self, node: DirNode, path: bytes) -> None:
        """A reader process gave a directory back, or ended before finishing it: the walking
        thread archives it (any thread may call this)."""
        self._declined.append((node, path))
        self._woken.set()

    def _take_declined(self) -> None:
        """Archive here, listed afresh, the directories reader processes gave back."""
        while self._declined:
            node, path = self._declined.popleft()
            self._archive_listing(node, path)

    def archive_names(
        self, path: bytes, names: list[bytes], parent_tree: bytes | None, known: dict
    ) -> dict | None:
        """What a reader process does with a leaf directory the main process only named: lstat
        its ``names``, make the listing signature and either take the parent's tree (``known``,
        signature -> tree id, has the signature with that tree) or ``archive_leaf`` it. Returns
        the DONE result (tree, count, signature), or None when it is not for a reader process
        after all: a subdirectory or hard-linked file turned up, or the parent's tree is not
        in the local tree cache (the main process then archives it)."""
        children, complete = self._stat_children(path, names)
        if not _leaf(children):
            return None
        signature = self._signature(children) if complete and self._signing else None
        expected = _expected(children)
        if signature is not None and parent_tree and known.get(signature) == parent_tree:
            self._count_reused(path, children)
            return {"tree": parent_tree, "count": expected, "signature": signature}
        plain = table = None
        if parent_tree is not None:
            cached = self.repository.cached_tree(parent_tree)  # type: ignore[attr-defined]
            if cached is None:
                return None
            plain, table = cached
        tree, count = self.archive_leaf(path, children, parent_tree, plain, table)
        return {"tree": tree, "count": count, "signature": signature if count == expected else None}

    def _fail(self, error: BaseException) -> None:
        self._failure = self._failure or error

    def _warn(self, message: str) -> None:
        with self._stats_lock:
            self.stats.warnings.append({"path": "", "message": message})

    def _scan(self, path: bytes) -> tuple[list[tuple[bytes, bytes, os.stat_result]], bool]:
        """The children a directory's tree will hold (excludes applied), lstat'ed, in name
        order; and False if any could not be listed (the error recorded)."""
        try:
            names = sorted(os.listdir(path))
        except OSError as error:
            self._error(path, error)
            return [], False
        if self.excludes.data_markers and self.excludes.is_database_dir(path):
            return [], True  # a live database directory: dumped, so kept here empty
        return self._stat_children(path, self._kept(path, names))

    def _kept(self, path: bytes, names: list[bytes]) -> list[bytes]:
        """The ``names`` (children of ``path``) the excludes leave."""
        only_tag = self.excludes.is_cache_dir(path)
        excluding = bool(self.excludes.patterns)
        if not only_tag and not excluding:
            return names
        return [
            child
            for child in names
            if (not only_tag or child == CACHEDIR_TAG)
            and not (excluding and self.excludes.excluded(child_path(path, child), child))
        ]

    def _stat_children(
        self, path: bytes, names: list[bytes]
    ) -> tuple[list[tuple[bytes, bytes, os.stat_result]], bool]:
        """(name, path, lstat) of each of ``names``; and False if one failed (recorded). The
        names are looked up in the directory opened once (not path by path from the root)."""
        children = []
        complete = True
        try:
            directory = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as error:
            self._error(path, error)
            return children, False
        try:
            for child in names:
                try:
                    children.append(
                        (child, child_path(path, child), os.lstat(child, dir_fd=directory))
                    )
                except OSError as error:
                    self._error(child_path(path, child), error)
                    complete = False
        finally:
            os.close(directory)
        return children, complete

    def _leaf_names(self, path: bytes) -> list[bytes] | None:
        """The sorted names (excludes applied) of a directory with no subdirectory as its
        entries' types say (no lstat); None if it has one, or is a database directory, or
        cannot be listed (``_scan`` then lists it and records the error)."""
        if self.excludes.data_markers and self.excludes.is_database_dir(path):
            return None
        names = []
        try:
            with os.scandir(path) as listing:
                for item in listing:
                    if item.is_dir(follow_symlinks=False):
                        return None
                    names.append(item.name)
        except OSError:
            return None
        names.sort()
        return self._kept(path, names)

    def _signature(self, children: list[tuple[bytes, bytes, os.stat_result]]) -> bytes | None:
        """The listing signature of a directory's children; None if one is a hard link (its
        entry depends on the other links met in this run, so it is never taken as known)."""
        pack = _SIGNATURE_FIELDS.pack
        parts = [SIGNATURE_PREFIX, b"\1" if self.one_file_system else b"\0"]
        for child, _path, st in children:
            if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                return None
            parts.append(
                pack(
                    len(child),
                    st.st_mode,
                    st.st_uid,
                    st.st_gid,
                    st.st_nlink,
                    st.st_ino,
                    st.st_dev,
                    st.st_mtime_ns,
                    st.st_ctime_ns,
                    st.st_size,
                    st.st_rdev,
                )
            )
            parts.append(child)
        return self.repository.cipher.blob_id(b"".join(parts))

    def _reuse_dir(
        self,
        node: DirNode,
        path: bytes,
        children: list[tuple[bytes, bytes, os.stat_result]],
        signature: bytes,
        known: tuple[bytes, dict[bytes, bytes]],
    ) -> DirNode:
        """A directory whose listing is the one the parent snapshot recorded: its files are
        the parent's (as the stat comparison would find, without loading the parent's tree),
        its subdirectories are walked as usual."""
        _tree_id, subdirs = known
        items: list = []
        self._count_reused(path, children, items, subdirs)
        node.signature, node.reused = signature, subdirs
        self._start(node, items)
        return node

    def _count_reused(
        self,
        path: bytes,
        children: list[tuple[bytes, bytes, os.stat_result]],
        items: list | None = None,
        subdirs: dict[bytes, bytes] | None = None,
    ) -> None:
        """Count the children of a directory taken as the parent's as unchanged; walk its
        subdirectories into ``items`` (their parent trees in ``subdirs``)."""
        files = size = 0
        for child, child_path, child_st in children:
            mode = child_st.st_mode
            if stat.S_ISDIR(mode):
                old = {child: {"subtree": subdirs.get(child)}}  # type: ignore[union-attr]
                self._add_entry(items, [], child_path, child, child_st, old)  # type: ignore[arg-type]
            elif stat.S_ISREG(mode):
                files += 1
                size += child_st.st_size
            elif entry_type(mode) not in (None, SYMLINK):
                self.stats.other += 1
        self.stats.files_unchanged += files
        self.stats.bytes_total += size
        if files:
            self.progress(path, files, size)

    def _start(self, node: DirNode, items: list) -> None:
        """Register what the directory waits for; it finishes when the last one does."""
        node.items = items
        futures = {
            id(f): f
            for item in items
            if isinstance(item, Pending)
            for f in (item.future, item.link_of.future if item.link_of else None)
            if f
        }
        children = [item for item in items if isinstance(item, DirNode)]
        with node.lock:
            node.outstanding += len(futures) + len(children)
        for future in futures.values():
            future.add_done_callback(lambda _future: self._release(node))
        for child in children:
            child.on_done(lambda: self._release(node))
        self._release(node)  # the scan is done

    def _release(self, node: DirNode) -> None:
        with node.lock:
            node.outstanding -= 1
            if node.outstanding:
                return
        try:
            if self._failure is None:
                entries = self._resolve(
                    [i.entry if isinstance(i, DirNode) else i for i in node.items or []]
                )
                if node.reused is not None:
                    subtree, subdirs = self._finish_reused(node, entries)
                else:
                    subtree = self._store_tree(entries, node.previous_tree, node.previous)
                    subdirs = {e["name"]: e["subtree"] for e in entries if e["type"] == DIR}
                    if len(entries) != node.expected:
                        node.signature = None  # a child was lost to an error: read it again
                node.entry["subtree"] = subtree
                if node.signature is not None:
                    self.new_dirs[node.signature] = (subtree, subdirs)
        except BaseException as error:
            self._fail(error)
        self._complete(node)

    def _complete(self, node: DirNode) -> None:
        """Mark a directory written and run what waits for it."""
        node.items = node.previous = None
        with node.lock:
            node.done.set()
            callbacks, node.callbacks = node.callbacks, []
        for callback in callbacks:
            callback()

    def _finish_reused(self, node: DirNode, entries: list[dict]) -> tuple[bytes, dict]:
        """The tree of a directory taken as known: the parent's, unless a subdirectory's tree
        changed; then the parent's entries with the new subdirectory entries."""
        subdirs = {entry["name"]: entry["subtree"] for entry in entries}
        previous_tree = node.previous_tree
        if subdirs == node.reused:
            return previous_tree, subdirs  # type: ignore[return-value]
        previous = self._load_tree(previous_tree)
        merged = dict(previous)
        for entry in entries:
            merged[entry["name"]] = entry
        return self._store_tree(list(merged.values()), previous_tree, previous), subdirs

    def _add_entry(
        self,
        entries: list,
        batch: list,
        path: bytes,
        name: bytes,
        st: os.stat_result,
        previous: dict[bytes, dict],
    ) -> bool:
        """Append the entry for one child; returns True if it joined ``batch`` to be read."""
        old = previous.get(name)
        if (
            old is not None
            and st.st_nlink == 1
            and old.get("content") is not None
            and old["mtime"] == st.st_mtime_ns
            and old["ctime"] == st.st_ctime_ns
            and old["size"] == st.st_size
            and old["inode"] == st.st_ino
            and stat.S_ISREG(st.st_mode)
        ):
            # Fast path: ctime changes with any change of content, mode, owner or xattrs, so
            # the parent's entry is still exactly right.
            entries.append(old)
            self.stats.files_unchanged += 1
            self.stats.bytes_total += st.st_size
            self.progress(path, 1, st.st_size)
            return False
        kind = entry_type(st.st_mode)
        if kind is None:
            return False
        if kind == DIR:
            if self.one_file_system and self._root_dev and st.st_dev != self._root_dev:
                entry = base_entry(name, st, DIR)
                entry["subtree"] = self._store_tree([])
                entries.append(entry)
                return False
            entries.append(self._archive_dir(path, st, name, old.get("subtree") if old else None))
            return False
        entry = base_entry(name, st, kind)
        xattrs = read_xattrs(path)
        if xattrs:
            entry["xattrs"] = xattrs
        if kind == SYMLINK:
            try:
                entry["target"] = os.readlink(path)
            except OSError as error:
                self._error(path, error)
                return False
        elif kind != FILE:
            entry["rdev"] = st.st_rdev
            self.stats.other += 1
        if kind != FILE:
            entries.append(entry)
            return False
        return self._add_file(entries, batch, path, entry, st, old)

    def _add_file(
        self,
        entries: list,
        batch: list,
        path: bytes,
        entry: dict,
        st: os.stat_result,
        old: dict | None,
    ) -> bool:
        self.stats.bytes_total += st.st_size
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1:
            entry["hardlink"] = list(key)
            first = self._hardlinks.get(key)
            if first is not None:
                entries.append(Pending(entry, link_of=first))
                if old is None:
                    self.stats.files_new += 1
                else:
                    self.stats.files_unchanged += 1
                return False
        if unchanged(entry, old):
            entry["content"] = old["content"]  # type: ignore[index]
            if old.get("holes"):  # type: ignore[union-attr]
                entry["holes"] = old["holes"]  # type: ignore[index]
            self.stats.files_unchanged += 1
            self.progress(path, 1, st.st_size)
            pending = Pending(entry)
        else:
            if old is not None:
                self.stats.files_changed += 1
            else:
                self.stats.files_new += 1
            if st.st_size <= INLINE_READ and st.st_nlink == 1:
                if self._read_one(path, entry):
                    entries.append(entry)
                return False
            pending = Pending(entry, path=path)
            batch.append(pending)
        entries.append(pending)
        if st.st_nlink > 1:
            self._hardlinks[key] = pending
        return pending.path is not None

    # ---------------------------------------------------------------- reading

    def _submit(self, entries: list, batch: list) -> None:
        if not batch:
            return
        self._slots.acquire()
        future = self._pool.submit(self._read_batch, batch)
        future.add_done_callback(lambda _: self._slots.release())
        for pending in batch:
            pending.future = future

    def _read_batch(self, batch: list[Pending]) -> None:
        for pending in batch:
            pending.failed = not self._read_one(pending.path, pending.entry)  # type: ignore[arg-type]

    def _read_one(self, path: bytes, entry: dict) -> bool:
        """Read one file into ``entry``; False (the error recorded) if it could not be read.
        A file that changed while being read is kept as read, with a warning."""
        try:
            self.reader.read_file(path, entry)
        except FileChanged as change:
            with self._stats_lock:
                self.stats.warnings.append({"path": os.fsdecode(path), "message": str(change)})
        except OSError as error:
            self._error(path, error)
            return False
        with self._stats_lock:
            self.stats.bytes_read += entry["size"]
        self.progress(path, 1, entry["size"])
        return True

    def _resolve(self, entries: list) -> list[dict]:
        """Wait for the reads of a directory's files and return its finished entries."""
        done = []
        for item in entries:
            if type(item) is dict:
                done.append(item)
                continue
            source = item.link_of or item
            if source.future is not None:
                source.future.result()
            if source.failed:
                continue
            entry = item.entry
            if item.link_of is not None:
                entry["content"] = source.entry["content"]
                entry["size"] = source.entry["size"]
                if source.entry.get("holes"):
                    entry["holes"] = source.entry["holes"]
            done.append(entry)
        return done

    def _error(self, path: bytes, error: OSError) -> None:
        with self._stats_lock:
            self.stats.errors.append(
                {"path": os.fsdecode(path), "message": error.strerror or str(error)}
            )


def child_path(path: bytes, name: bytes) -> bytes:
    """The path of the child ``name`` of the directory ``path``."""
    return path + b"/" + name if path != b"/" else b"/" + name


def _leaf(children: list[tuple[bytes, bytes, os.stat_result]]) -> bool:
    """True if a listing has no subdirectory and no hard-linked file (a reader process's)."""
    for _name, _path, st in children:
        mode = st.st_mode
        if stat.S_ISDIR(mode) or (st.st_nlink > 1 and stat.S_ISREG(mode)):
            return False
    return True


def _expected(children: list[tuple[bytes, bytes, os.stat_result]]) -> int:
    """The entries a directory's tree has when none of these children is lost to an error."""
    return sum(entry_type(st.st_mode) is not None for _name, _path, st in children)
