"""The snapshot browser: filtering snapshots, walking a snapshot's tree, and streaming a file
or a directory (as tar) out of it, blob by blob.

Paths come from the request as raw bytes (names need not be UTF-8) and are only ever looked
up in the snapshot's own trees: nothing here opens a local file. A path with an empty, ``.``
or ``..`` segment or a NUL byte is refused (``BadPath``) before any lookup.
"""

from __future__ import annotations

import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

from safehold.archive import tree
from safehold.archive.entries import DIR, FILE, SYMLINK, display_name
from safehold.web.data import RepositoryView
from safehold.web.views import when

PAGE = 200  # snapshots per page of the list


class BadPath(ValueError):
    """A path that no snapshot can hold."""


def split_path(raw: bytes) -> list[bytes]:
    """'/a/b' -> [b'a', b'b']; '/' or b'' -> []. Raises BadPath."""
    if b"\0" in raw:
        raise BadPath("NUL in path")
    parts = raw.strip(b"/").split(b"/") if raw.strip(b"/") else []
    for part in parts:
        if part in (b"", b".", b".."):
            raise BadPath("empty, . or .. segment")
    return parts


@dataclass
class Filters:
    """The snapshot list's filters (all optional)."""

    platform: str = ""
    host: str = ""
    tag: str = ""
    component: str = ""
    since: float | None = None
    until: float | None = None

    def matches(self, snapshot: dict) -> bool:
        tags = snapshot.get("tags") or []
        return (
            (not self.platform or snapshot.get("platform") == self.platform)
            and (not self.host or snapshot.get("hostname") == self.host)
            and (not self.tag or self.tag in tags)
            and (
                not self.component
                or any(c.get("name") == self.component for c in snapshot.get("components") or [])
            )
            and (self.since is None or snapshot["time"] >= self.since)
            and (self.until is None or snapshot["time"] < self.until)
        )


def snapshot_row(key: int, snapshot: dict) -> dict:
    summary = snapshot.get("summary") or {}
    return {
        "key": key,
        "id": snapshot["id"],
        "short": snapshot["id"][:8],
        "when": when(snapshot["time"]),
        "host": snapshot.get("hostname", ""),
        "platform": snapshot.get("platform") or "",
        "status": snapshot.get("status") or "",
        "tags": [t for t in snapshot.get("tags") or [] if not t.startswith("component:")],
        "components": [c.get("name") for c in snapshot.get("components") or []],
        "bytes": summary.get("bytes_total"),
        "paths": snapshot.get("paths") or [],
    }


def find_snapshot(view: RepositoryView, snapshot_id: str) -> dict | None:
    """The snapshot with exactly this id (64 hex digits), from the view's documents."""
    if len(snapshot_id) != 64 or any(c not in "0123456789abcdef" for c in snapshot_id):
        return None
    snapshots, _drills = view.documents()
    return next((s for s in snapshots if s["id"] == snapshot_id), None)


def lookup(view: RepositoryView, snapshot: dict, parts: list[bytes]) -> dict | None:
    """The entry at ``parts`` in the snapshot, or None if there is none."""
    entry = tree.root_entry(snapshot["tree"])
    for part in parts:
        if entry["type"] != DIR:
            return None
        with view.repository() as repository:
            children = tree.load_tree(repository, entry["subtree"])
        entry = next((child for child in children if child["name"] == part), None)
        if entry is None:
            return None
    return entry


def children(view: RepositoryView, entry: dict) -> list[dict]:
    """A directory's entries (one tree: its listing, not its whole subtree)."""
    with view.repository() as repository:
        return tree.load_tree(repository, entry["subtree"])


def describe(entry: dict) -> dict:
    """An entry's metadata as the pages show it."""
    kind = entry.get("type")
    mode = entry.get("mode", 0)
    type_bits = {DIR: stat.S_IFDIR, FILE: stat.S_IFREG, SYMLINK: stat.S_IFLNK}.get(kind, 0)
    return {
        "name": display_name(entry.get("name", b"")),
        "type": kind,
        "mode": stat.filemode(type_bits | mode) if type_bits else f"{mode:o}",
        "size": entry.get("size", 0),
        "user": entry.get("user") or str(entry.get("uid", "")),
        "group": entry.get("group") or str(entry.get("gid", "")),
        "mtime": when(entry.get("mtime", 0) / 1e9),
        "target": display_name(entry["target"]) if kind == SYMLINK and entry.get("target") else "",
        "blobs": len(entry.get("content") or []),
        "xattrs": len(entry.get("xattrs") or {}),
    }


def file_chunks(view: RepositoryView, entry: dict) -> Iterator[bytes]:
    """A file's content, one verified blob at a time (the lock held per blob only)."""
    for blob_id in entry.get("content") or []:
        with view.repository() as repository:
            data = repository.load_blob(blob_id)
        yield data


def _tar_header(path: bytes, entry: dict) -> bytes:
    info = tarfile.TarInfo(path.decode("utf-8", "surrogateescape"))
    info.mode = entry.get("mode", 0o755 if entry.get("type") == DIR else 0o644) & 0o7777
    info.uid, info.gid = entry.get("uid", 0), entry.get("gid", 0)
    info.uname, info.gname = entry.get("user") or "", entry.get("group") or ""
    info.mtime = entry.get("mtime", 0) // 1_000_000_000
    kind = entry.get("type")
    if kind == DIR:
        info.type = tarfile.DIRTYPE
    elif kind == SYMLINK:
        info.type = tarfile.SYMTYPE
        info.linkname = (entry.get("target") or b"").decode("utf-8", "surrogateescape")
    else:
        info.type = tarfile.REGTYPE
        info.size = entry.get("size", 0)
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def tar_stream(view: RepositoryView, entry: dict, name: bytes) -> Iterator[bytes]:
    """A directory as a tar stream (PAX format): directories, files and symlinks, walked one
    tree at a time, file contents blob by blob. Other kinds (devices, FIFOs) are left out."""
    with view.repository() as repository:
        walk = tree.walk(repository, entry, name)
    for path, item in _locked(view, walk):
        kind = item.get("type")
        if kind not in (DIR, FILE, SYMLINK):
            continue
        yield _tar_header(path, item)
        if kind != FILE:
            continue
        written = 0
        for chunk in file_chunks(view, item):
            written += len(chunk)
            yield chunk
        if written != item.get("size", 0):  # the header promised a size: never a torn archive
            raise ValueError(f"{display_name(path)}: content does not match the recorded size")
        if written % tarfile.BLOCKSIZE:
            yield tarfile.NUL * (tarfile.BLOCKSIZE - written % tarfile.BLOCKSIZE)
    yield tarfile.NUL * (2 * tarfile.BLOCKSIZE)


def _locked(view: RepositoryView, walk: Iterator) -> Iterator:
    """Advance a tree walk with the repository lock held for each step only."""
    while True:
        with view.repository():
            try:
                item = next(walk)
            except StopIteration:
                return
        yield item
