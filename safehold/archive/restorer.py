"""The restorer: snapshot entries -> files on disk, bit-identical, with their metadata.

The tree is walked first: directories are created (owner-only until the end), links and
special files made, and every regular file handed to the ContentWriter, which then reads each
pack once and writes the blobs where they belong (contentwriter.py). Hard links are made once
their first name exists, and directory metadata is applied last, deepest first, so that
writing children does not disturb their parent's times or permissions.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from safehold.archive.contentwriter import (
    IN_PROGRESS,
    ContentWriter,
    FileJob,
    settle,
)
from safehold.archive.entries import BLOCKDEV, CHARDEV, DIR, FIFO, FILE, SYMLINK
from safehold.archive.excludes import Excludes
from safehold.archive.problems import Problems
from safehold.archive.tree import TreeLoader
from safehold.archive.writeprocs import writer_count
from safehold.errors import IntegrityError, TargetNotWritable
from safehold.repo.repository import Repository

SKIPPED_NAMED = 20  # existing paths a restore names; the others are only counted


@dataclass
class RestoreStats:
    files: int = 0
    dirs: int = 0
    other: int = 0
    bytes_written: int = 0
    # Existing paths left as they were (no --overwrite): how many, and the first SKIPPED_NAMED
    # of them (a restore over a whole existing tree must not keep a path per file).
    skipped: int = 0
    skipped_paths: list[str] = field(default_factory=list)
    errors: Problems = field(default_factory=Problems)  # could not be written here
    damaged: Problems = field(default_factory=Problems)  # damaged in the repository
    special_skipped: int = 0  # device nodes left out (no_special)
    # Without --overwrite, files (and symlinks) already there as the snapshot has them (same
    # size and modification time; same target; the same inode for a hard link): a rerun.
    present: int = 0
    # Incomplete files an interrupted restore left (IN_PROGRESS mode), written again.
    resumed: int = 0
    # Writer processes that ended early (killed, out of memory): their files were written by
    # the main process instead, nothing is missing.
    processes_lost: int = 0

    def skip(self, path: bytes) -> None:
        self.skipped += 1
        if len(self.skipped_paths) < SKIPPED_NAMED:
            self.skipped_paths.append(os.fsdecode(path))

    @property
    def skipped_unnamed(self) -> int:
        """Skipped paths not in ``skipped_paths``."""
        return self.skipped - len(self.skipped_paths)


Progress = Callable[[str, int, int], None]
# A directory's mode from its creation until its own is applied at the end of the restore: a
# rerun after an interruption gives the directories it finds so marked their metadata.
DIR_IN_PROGRESS = stat.S_ISVTX | 0o700


def _unfinished(status: os.stat_result, marker: int) -> bool:
    """True for a file or directory that a restore by this user created and did not finish."""
    return stat.S_IMODE(status.st_mode) == marker and status.st_uid == os.geteuid()


def _same_file(path: bytes, other: bytes) -> bool:
    """True if both names are links to one file (a hard link a rerun finds made)."""
    try:
        first, second = os.lstat(other), os.lstat(path)
    except OSError:
        return False
    return (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)


class Restorer:
    """Restores one entry (and what is below it) into a target directory."""

    def __init__(
        self,
        repository: Repository,
        target: str,
        *,
        overwrite: bool = False,
        includes: list[str] | None = None,
        excludes: list[str] | None = None,
        workers: int | None = None,
        progress: Progress | None = None,
        no_special: bool = False,
    ) -> None:
        self.repository = repository
        self.target = os.fsencode(os.path.abspath(target))
        self.overwrite = overwrite
        self.includes = Excludes(includes) if includes else None
        self.excludes = Excludes(excludes) if excludes else None
        self.progress = progress or (lambda path, files, size: None)
        self.as_root = os.geteuid() == 0
        # An untrusted snapshot: no device nodes, no setuid/setgid bits, no file capabilities.
        self.no_special = no_special
        self.stats = RestoreStats()
        self._lock = threading.Lock()
        self._workers = workers or min(4, os.cpu_count() or 2)
        self._directories: list[tuple[bytes, dict]] = []
        self._links: list[tuple[bytes, tuple[int, int]]] = []
        self._first_link: dict[tuple[int, int], bytes] = {}
        self._parents_checked: bytes | None = None  # the last directory _make_parents checked

    # ---------------------------------------------------------------- entry point

    def restore(
        self, entry: dict, snapshot_path: str, *, root_metadata: bool = False
    ) -> RestoreStats:
        """Restore ``entry`` (found at ``snapshot_path``): a directory's contents go straight into
        the target, anything else into target/<name>. With ``root_metadata``, a directory's own
        owner, mode and times are given to the target as well."""
        try:
            os.makedirs(self.target, exist_ok=True)
        except OSError as error:
            raise TargetNotWritable(
                target=os.fsdecode(self.target), reason=error.strerror
            ) from error
        if not os.access(self.target, os.W_OK | os.X_OK):
            raise TargetNotWritable(target=os.fsdecode(self.target), reason="permission denied")
        base = os.fsencode(snapshot_path.rstrip("/"))
        with self.repository.readers() as readers:
            self._trees = TreeLoader(self.repository, readers)
            self._content = ContentWriter(
                self.repository,
                self._workers,
                self._file_written,
                self._file_failed,
                readers,
                as_root=self.as_root,
                no_special=self.no_special,
                metadata_failed=self._metadata_failed,
                processes=writer_count(),
            )
            try:
                try:
                    if entry["type"] == DIR:
                        self._restore_children(entry, self.target, base, False)
                    else:
                        self._restore_entry(entry, self.target + b"/" + entry["name"], base, False)
                finally:
                    self._trees.close()
                    self._content.wait()  # never leave a batch writing after an error
                self._content.run()
            finally:
                self._content.close()
            self.stats.processes_lost = self._content.processes_lost
        self._make_links()
        for path, directory in reversed(self._directories):
            self._apply_metadata(path, directory)
        if root_metadata and entry["type"] == DIR:
            self._apply_metadata(self.target, entry)
        return self.stats

    def _selected(self, snapshot_path: bytes, name: bytes, parent_selected: bool) -> bool | None:
        """True: restore; False: skip it but look below (includes); None: skip with descendants."""
        if self.excludes and self.excludes.excluded(snapshot_path, name):
            return None
        if self.includes is None or parent_selected or self.includes.excluded(snapshot_path, name):
            return True
        # Below a directory no include can reach, nothing is looked at (its tree is not read).
        return False if self.includes.may_match_below(snapshot_path) else None

    def _restore_children(
        self, entry: dict, path: bytes, snapshot_path: bytes, selected: bool, fresh: bool = False
    ) -> None:
        """``fresh``: this restore has just created ``path``, so nothing is in its children's
        way and they are not looked for (a name that turns up twice in a hostile tree still
        finds the first: files are created with O_EXCL, links and nodes fail on it)."""
        try:
            children = self._trees.load(entry["subtree"])
        except IntegrityError as error:
            # Only what is below a damaged directory is lost; the walk goes on elsewhere.
            with self._lock:
                self.stats.damaged.append({"path": os.fsdecode(path) + "/", "message": str(error)})
            return
        self._trees.prefetch(
            [
                child
                for child in children
                if child.get("type") == DIR
                and self._selected(snapshot_path + b"/" + child["name"], child["name"], selected)
                is not None
            ]
        )
        for child in children:
            self._restore_entry(
                child,
                path + b"/" + child["name"],
                snapshot_path + b"/" + child["name"],
                selected,
                fresh,
            )

    def _restore_entry(
        self,
        entry: dict,
        path: bytes,
        snapshot_path: bytes,
        parent_selected: bool,
        fresh: bool = False,
    ) -> None:
        name = entry["name"]
        if b"/" in name or name in (b"", b".", b".."):
            # Authenticated trees never hold such names; refuse them all the same rather than
            # write outside the target.
            with self._lock:
                self.stats.damaged.append(
                    {"path": os.fsdecode(path), "message": f"invalid name {name!r} in the tree"}
                )
            return
        selected = self._selected(snapshot_path, name, parent_selected)
        if selected is None:
            return
        kind = entry["type"]
        if kind == DIR:
            # Below an --include'd directory's parents, which were not selected themselves,
            # those parents are made first (as for a file).
            if selected and not parent_selected and not self._make_parents(path):
                return
            created = self._make_dir(path, entry, fresh) if selected else False
            if created is None:
                return
            self._restore_children(entry, path, snapshot_path, bool(selected), created)
            return
        # Below a selected directory its parents are there: _make_dir made or checked them.
        if not selected or (not parent_selected and not self._make_parents(path)):
            return
        if kind == FILE:
            key = tuple(entry["hardlink"]) if entry.get("hardlink") else None
            if key is not None and key in self._first_link:
                self._links.append((path, key))  # type: ignore[arg-type]
                return
            if key is not None:
                self._first_link[key] = path  # type: ignore[index]
            if fresh or self._file_wanted(path, entry):
                self._content.add(path, entry)
                if self._content.full:
                    # Written beside the walk; memory stays bounded by two batches, not the
                    # snapshot.
                    self._content.start()
            return
        self._restore_special(path, entry, fresh)

    def _make_parents(self, path: bytes) -> bool:
        """Create the missing directories above ``path`` inside the target; False (and the path
        is skipped) if one of them is a symlink, which restore must never write through.
        The siblings that follow a checked path share its answer (the walk gives a directory's
        children one after another): 5 stat calls a file fewer in a deep tree."""
        parent = os.path.dirname(path)
        if parent == self._parents_checked:
            return True
        relative = os.path.relpath(parent, self.target)
        current = self.target
        for part in [] if relative == "." else relative.split(b"/"):
            current = current + b"/" + part
            if os.path.islink(current):
                self._skip(path)
                return False
            if not os.path.isdir(current):
                os.mkdir(current, 0o700)
        self._parents_checked = parent
        return True

    # ---------------------------------------------------------------- kinds

    def _make_dir(self, path: bytes, entry: dict, fresh: bool = False) -> bool | None:
        """Create a directory: True if this restore created it, False if it was there; None if
        something else is in the way (then nothing is written below it). A symlink in the way
        is never followed: without --overwrite it is kept. ``fresh``: the parent was just
        created by this restore, so nothing is looked for before mkdir (if a crafted tree
        names it twice, mkdir fails and the checks are made)."""
        if fresh:
            try:
                os.mkdir(path, DIR_IN_PROGRESS)
            except FileExistsError:
                return self._make_dir(path, entry)
            except OSError as error:
                self._error(path, error)
                return None
            self._directories.append((path, entry))
            self.stats.dirs += 1
            return True
        if os.path.islink(path) or (os.path.lexists(path) and not os.path.isdir(path)):
            if not self.overwrite:
                self._skip(path)
                return None
            os.unlink(path)
        try:
            os.mkdir(path, DIR_IN_PROGRESS)
            created = True
        except FileExistsError:
            created = False
        except OSError as error:  # a name or path too long for this file system, ...
            self._error(path, error)
            return None
        if created or self.overwrite or _unfinished(os.lstat(path), DIR_IN_PROGRESS):
            self._directories.append((path, entry))
        self.stats.dirs += 1
        return created

    def _file_wanted(self, path: bytes, entry: dict) -> bool:
        """Whether to write a regular file at ``path``. What an interrupted restore left
        incomplete there is removed first; without --overwrite a file with the snapshot's size
        and modification time is kept (a rerun does not write it again)."""
        try:
            status = os.lstat(path)
        except OSError:  # nothing there, or nothing to see: creating it says which
            return True
        if stat.S_ISREG(status.st_mode):
            if _unfinished(status, IN_PROGRESS):
                os.unlink(path)
                with self._lock:
                    self.stats.resumed += 1
                return True
            if not self.overwrite and (status.st_size, status.st_mtime_ns) == (
                entry["size"],
                entry["mtime"],
            ):
                with self._lock:
                    self.stats.present += 1
                return False
        return self._replaceable(path, status)

    def _replaceable(self, path: bytes, status: os.stat_result | None = None) -> bool:
        """True if nothing is at ``path``, or it may be replaced (--overwrite: it is removed).
        ``status``: the path's lstat() if the caller has it."""
        if status is None:
            try:
                status = os.lstat(path)
            except OSError:  # nothing there, or nothing to see: creating it says which
                return True
        if not self.overwrite or stat.S_ISDIR(status.st_mode):
            self._skip(path)
            return False
        os.unlink(path)
        return True

    def _skip(self, path: bytes) -> None:
        with self._lock:
            self.stats.skip(path)

    def _restore_special(self, path: bytes, entry: dict, fresh: bool = False) -> None:
        kind = entry["type"]
        if self.no_special and kind in (CHARDEV, BLOCKDEV):
            with self._lock:
                self.stats.special_skipped += 1
            return
        if (
            not (fresh or self.overwrite)
            and kind == SYMLINK
            and os.path.islink(path)
            and os.readlink(path) == entry["target"]
        ):
            self.stats.present += 1
            return
        if not fresh and not self._replaceable(path):
            return
        try:
            if kind == SYMLINK:
                os.symlink(entry["target"], path)
            elif kind == FIFO:
                os.mkfifo(path, 0o600)
            elif kind in (CHARDEV, BLOCKDEV):
                file_type = stat.S_IFCHR if kind == CHARDEV else stat.S_IFBLK
                os.mknod(path, 0o600 | file_type, entry["rdev"])
        except OSError as error:
            self._error(path, error)
            return
        self.stats.other += 1
        self._apply_metadata(path, entry)

    def _metadata_failed(self, path: bytes, message: str) -> None:
        with self._lock:
            self.stats.errors.append({"path": os.fsdecode(path), "message": message})

    def _file_written(self, job: FileJob) -> None:
        with self._lock:
            self.stats.files += 1
            self.stats.bytes_written += job.written
        self.progress(os.fsdecode(job.path), 1, job.entry["size"])

    def _file_failed(self, job: FileJob) -> None:
        problem = {"path": os.fsdecode(job.path), "message": job.failure}
        with self._lock:
            (self.stats.damaged if job.damaged else self.stats.errors).append(problem)

    def _make_links(self) -> None:
        for path, key in self._links:
            if not self.overwrite and _same_file(path, self._first_link[key]):
                self.stats.present += 1
                continue
            if not self._replaceable(path):
                continue
            try:
                os.link(self._first_link[key], path)
                self.stats.files += 1
            except OSError as error:
                self._error(path, error)

    # ---------------------------------------------------------------- metadata

    def _apply_metadata(self, path: bytes, entry: dict) -> None:
        """Owner, xattrs, times and mode of ``path`` (contentwriter.settle, by path: a regular
        file gets them through its descriptor as it is completed); a failure is reported."""
        try:
            settle(path, entry, as_root=self.as_root, no_special=self.no_special)
        except OSError as error:
            self._error(path, error)

    def _error(self, path: bytes, error: OSError) -> None:
        with self._lock:
            self.stats.errors.append(
                {"path": os.fsdecode(path), "message": error.strerror or str(error)}
            )
