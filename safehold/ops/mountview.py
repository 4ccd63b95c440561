"""What ``safehold mount`` shows, without FUSE: a read-only tree of nodes over a repository.

```
snapshots/<time>_<shortid>/...     every snapshot, its files as stored; latest -> the newest
platforms/<platform>/<component>/<time>_<shortid>/   each component's folder, newest first
hosts/<host>/<time>_<shortid> -> ../../snapshots/<time>_<shortid>
tags/<tag>/<time>_<shortid>   -> ../../snapshots/<time>_<shortid>
```

Inode numbers are derived from the path (a keyed hash of the parent's inode and the name),
so they are stable for as long as the mount lives and never alias two directories; the files
of one hard-link group of a snapshot share one inode. Nodes are kept only while the kernel
knows them (lookup counts, ``forget``), so memory follows what is open or cached, not the
size of a snapshot. Trees are read as directories are visited, through a bounded cache of
decoded trees; file contents through a bounded cache of blobs (``BlobCache``), so copying a
large tree out keeps memory flat.

The snapshot list is read again when a directory of the top levels is visited and the last
read is older than ``ttl`` seconds: snapshots made while mounted appear; nothing already
shown changes (snapshots are immutable).
"""

from __future__ import annotations

import bisect
import hashlib
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from safehold.archive.entries import BLOCKDEV, CHARDEV, DIR, FIFO, FILE, SYMLINK
from safehold.archive.tree import load_tree
from safehold.errors import IntegrityError
from safehold.repo.repository import Repository
from safehold.repo.snapshots import list_snapshots

ROOT_INODE = 1
TOP_DIRS = (b"snapshots", b"platforms", b"hosts", b"tags")
_KIND_BITS = {
    FILE: stat.S_IFREG,
    DIR: stat.S_IFDIR,
    SYMLINK: stat.S_IFLNK,
    FIFO: stat.S_IFIFO,
    CHARDEV: stat.S_IFCHR,
    BLOCKDEV: stat.S_IFBLK,
}


def inode_of(*parts: object) -> int:
    """A stable 63-bit inode number for a key (never one of the small reserved numbers)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "little") >> 1) | (1 << 40)


def snapshot_dir_name(snapshot: dict) -> bytes:
    """``2026-11-30T02:30:01_1a2b3c4d``: local time, then the id's first 8 digits."""
    moment = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(snapshot["time"]))
    return f"{moment}_{snapshot['id'][:8]}".encode()


def safe_name(text: str) -> bytes:
    """A host, tag, platform or component name as a file name (no '/', never '.' or '..')."""
    name = text.replace("/", "_").encode("utf-8", "surrogateescape")
    return name if name not in (b"", b".", b"..") else b"_" + name


def _valid(name: bytes) -> bool:
    """A name a directory may hold (authenticated trees never hold others; refuse them all
    the same rather than confuse the kernel)."""
    return bool(name) and b"/" not in name and name not in (b".", b"..")


def _labels(snapshot: dict, kind: str) -> list[str]:
    """A snapshot's host (as a list of one) or its tags."""
    if kind == "host":
        return [snapshot["hostname"]] if snapshot.get("hostname") else []
    return [tag for tag in snapshot.get("tags") or [] if tag]


@dataclass
class Node:
    """One file or directory of the view. ``entry`` is a tree entry (real or synthetic);
    ``listing`` names a virtual directory ("root", "snapshots", "platform", ...) and ``key``
    its argument; ``snapshot`` is the id of the snapshot the node lies in."""

    inode: int
    entry: dict
    listing: str | None = None
    key: tuple = ()
    snapshot: str | None = None
    lookups: int = 0

    @property
    def is_dir(self) -> bool:
        return self.entry["type"] == DIR


@dataclass
class Attributes:
    """What stat(2) shows of a node (st_* without the prefix)."""

    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    rdev: int
    mtime_ns: int
    ctime_ns: int
    blocks: int
    timeout: float = field(default=0.0)


class BlobCache:
    """Verified blobs by id, the least recently used dropped beyond ``capacity`` bytes."""

    def __init__(self, repository: Repository, capacity: int) -> None:
        self.repository = repository
        self.capacity = capacity
        self.size = 0
        self._blobs: OrderedDict[bytes, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, blob_id: bytes) -> bytes:
        with self._lock:
            data = self._blobs.get(blob_id)
            if data is not None:
                self._blobs.move_to_end(blob_id)
                return data
        data = self.repository.load_blob(blob_id)
        with self._lock:
            if blob_id not in self._blobs:
                self._blobs[blob_id] = data
                self.size += len(data)
            while self.size > self.capacity and len(self._blobs) > 1:
                _, dropped = self._blobs.popitem(last=False)
                self.size -= len(dropped)
        return data


class OpenFile:
    """A file being read: where each of its blobs starts (sizes from the index, no data)."""

    def __init__(self, repository: Repository, entry: dict) -> None:
        self.entry = entry
        self.blobs = list(entry.get("content") or [])
        self.starts = []
        position = 0
        for blob_id in self.blobs:
            location = repository.index.lookup(blob_id)
            if location is None:
                raise IntegrityError(f"blob {blob_id.hex()[:16]} is not in the index")
            self.starts.append(position)
            position += location.raw_length
        self.size = position

    def read(self, cache: BlobCache, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset`` (fewer at the end of the file)."""
        pieces = []
        number = bisect.bisect_right(self.starts, offset) - 1
        end = min(offset + length, self.size)
        while offset < end and 0 <= number < len(self.blobs):
            data = cache.get(self.blobs[number])
            start = offset - self.starts[number]
            piece = data[start : start + (end - offset)]
            pieces.append(piece)
            offset += len(piece)
            number += 1
        return b"".join(pieces)


class MountView:
    """The nodes of the view and how to find them (see the module docstring)."""

    def __init__(
        self,
        repository: Repository,
        *,
        ttl: float = 2.0,
        tree_entries: int = 200_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.repository = repository
        self.ttl = ttl
        self.clock = clock
        self.nodes: dict[int, Node] = {}
        self._snapshots: list[dict] = []
        self._loaded_at: float | None = None
        self._trees: OrderedDict[bytes, dict[bytes, dict]] = OrderedDict()
        self._tree_entries = 0
        self._tree_budget = tree_entries
        self._component_roots: dict[tuple[str, str], dict | None] = {}
        self._listings: dict[tuple, tuple[list[dict], list[tuple[bytes, Node]]]] = {}
        root = Node(ROOT_INODE, self._virtual_entry(b""), "root")
        root.lookups = 1  # the kernel never forgets the root
        self.nodes[ROOT_INODE] = root

    # ---------------------------------------------------------------- snapshots

    def snapshots(self) -> list[dict]:
        """All snapshots, oldest first (read again after ``ttl`` seconds)."""
        now = self.clock()
        if self._loaded_at is None or now - self._loaded_at >= self.ttl:
            found = list_snapshots(self.repository)
            if self._loaded_at is not None and {s["id"] for s in found} - {
                s["id"] for s in self._snapshots
            }:
                self.repository.forget_index()  # new snapshots: their blobs are in new files
            self._snapshots = found
            self._loaded_at = now
        return self._snapshots

    def _virtual_entry(self, name: bytes, kind: str = DIR, target: bytes = b"") -> dict:
        newest = self._snapshots[-1]["time"] if self._snapshots else 0.0
        entry = {
            "name": name,
            "type": kind,
            "mode": 0o555 if kind == DIR else 0o777,
            "uid": 0,
            "gid": 0,
            "mtime": int(newest * 1e9),
            "ctime": int(newest * 1e9),
            "size": len(target),
        }
        if kind == SYMLINK:
            entry["target"] = target
        return entry

    # ---------------------------------------------------------------- children

    def children(self, node: Node) -> list[tuple[bytes, Node]]:
        """The (name, node) pairs of a directory, in listing order (not yet registered)."""
        if node.listing is not None:
            return self._virtual_children(node)
        tree = self._tree(node.entry["subtree"])
        return [(name, self._child(node, entry)) for name, entry in tree.items() if _valid(name)]

    def child(self, node: Node, name: bytes) -> Node | None:
        """The node called ``name`` in directory ``node`` (not yet registered), or None."""
        if node.listing is not None:
            return dict(self._virtual_children(node)).get(name)  # cached per listing
        entry = self._tree(node.entry["subtree"]).get(name) if _valid(name) else None
        return None if entry is None else self._child(node, entry)

    def _child(self, parent: Node, entry: dict) -> Node:
        if entry["type"] == FILE and entry.get("hardlink"):
            dev, inode = entry["hardlink"]
            number = inode_of("hardlink", parent.snapshot, dev, inode)
        else:
            number = inode_of(parent.inode, entry["name"])
        return Node(number, entry, snapshot=parent.snapshot)

    def _tree(self, tree_id: bytes) -> dict[bytes, dict]:
        tree = self._trees.get(tree_id)
        if tree is not None:
            self._trees.move_to_end(tree_id)
            return tree
        entries = load_tree(self.repository, tree_id)
        tree = {entry["name"]: entry for entry in entries}
        self._trees[tree_id] = tree
        self._tree_entries += len(tree)
        while self._tree_entries > self._tree_budget and len(self._trees) > 1:
            _, dropped = self._trees.popitem(last=False)
            self._tree_entries -= len(dropped)
        return tree

    def _virtual(self, name: bytes, listing: str, *key: object) -> Node:
        return Node(inode_of("view", listing, *key), self._virtual_entry(name), listing, key)

    def _link(self, name: bytes, target: bytes, *key: object) -> Node:
        entry = self._virtual_entry(name, SYMLINK, target)
        return Node(inode_of("link", *key, name, target), entry)  # a new target: a new link

    def _snapshot_root(self, snapshot: dict) -> Node:
        entry = self._virtual_entry(snapshot_dir_name(snapshot))
        entry |= {"mode": 0o755, "mtime": int(snapshot["time"] * 1e9), "subtree": snapshot["tree"]}
        entry["ctime"] = entry["mtime"]
        return Node(inode_of("snapshot", snapshot["id"]), entry, snapshot=snapshot["id"])

    def _virtual_children(self, node: Node) -> list[tuple[bytes, Node]]:
        """A virtual directory's children, computed once per read of the snapshot list."""
        snapshots = self.snapshots()
        cached = self._listings.get((node.listing, node.key))
        if cached is not None and cached[0] is snapshots:
            return cached[1]
        result = self._list_virtual(node, snapshots)
        self._listings[(node.listing, node.key)] = (snapshots, result)
        return result

    def _list_virtual(self, node: Node, snapshots: list[dict]) -> list[tuple[bytes, Node]]:
        listing, key = node.listing, node.key
        result: list[tuple[bytes, Node]] = []
        if listing == "root":
            result = [(name, self._virtual(name, name.decode())) for name in TOP_DIRS]
        elif listing == "snapshots":
            result = [(snapshot_dir_name(s), self._snapshot_root(s)) for s in snapshots]
            if snapshots:
                result.append((b"latest", self._link(b"latest", result[-1][0], "snapshots")))
        elif listing == "platforms":
            names = sorted({s["platform"] for s in snapshots if s.get("platform")})
            result = [(safe_name(n), self._virtual(safe_name(n), "platform", n)) for n in names]
        elif listing == "platform":
            result = self._components(snapshots, key[0])
        elif listing == "component":
            result = self._component_snapshots(snapshots, key[0], key[1])
        elif listing in ("hosts", "tags"):
            kind = listing[:-1]
            values = sorted({value for s in snapshots for value in _labels(s, kind)})
            result = [(safe_name(v), self._virtual(safe_name(v), kind, v)) for v in values]
        elif listing in ("host", "tag"):
            for snapshot in reversed(snapshots):  # newest first
                if key[0] in _labels(snapshot, listing):
                    name = snapshot_dir_name(snapshot)
                    target = b"../../snapshots/" + name
                    result.append((name, self._link(name, target, listing, key)))
        return result

    def _components(self, snapshots: list[dict], platform: str) -> list[tuple[bytes, Node]]:
        names = sorted(
            {
                component.get("name")
                for s in snapshots
                if s.get("platform") == platform
                for component in s.get("components") or []
                if component.get("name")
            }
        )
        return [
            (safe_name(name), self._virtual(safe_name(name), "component", platform, name))
            for name in names
        ]

    def _component_snapshots(
        self, snapshots: list[dict], platform: str, component: str
    ) -> list[tuple[bytes, Node]]:
        """Newest first: the component's folder in each snapshot of the platform that has it."""
        result = []
        for snapshot in reversed(snapshots):
            if snapshot.get("platform") != platform:
                continue
            entry = self._component_entry(snapshot, component)
            if entry is None:
                continue
            name = snapshot_dir_name(snapshot)
            node = Node(
                inode_of("component", snapshot["id"], component),
                dict(entry, name=name),
                snapshot=snapshot["id"],
            )
            result.append((name, node))
        if result:
            latest = self._link(b"latest", result[0][0], "component", platform, component)
            result.insert(0, (b"latest", latest))
        return result

    def _component_entry(self, snapshot: dict, component: str) -> dict | None:
        key = (snapshot["id"], component)
        if key not in self._component_roots:
            try:
                root = self._tree(snapshot["tree"])
            except IntegrityError:
                return None
            entry = root.get(os.fsencode(component))
            self._component_roots[key] = entry if entry and entry["type"] == DIR else None
        return self._component_roots[key]

    # ---------------------------------------------------------------- the kernel's view

    def remember(self, node: Node) -> Node:
        """Count one more kernel reference to ``node`` (lookup, readdirplus)."""
        known = self.nodes.get(node.inode)
        if known is None:
            self.nodes[node.inode] = known = node
        elif node.snapshot is None:
            known.entry = node.entry  # a virtual directory: its times follow the newest snapshot
        known.lookups += 1
        return known

    def forget(self, inode: int, count: int) -> None:
        """The kernel dropped ``count`` references: a node no one knows is let go."""
        node = self.nodes.get(inode)
        if node is None or inode == ROOT_INODE:
            return
        node.lookups -= count
        if node.lookups <= 0:
            del self.nodes[inode]

    def attributes(self, node: Node) -> Attributes:
        """stat(2) of a node: owners, mode, times and sizes as stored."""
        entry = node.entry
        kind = entry["type"]
        size = entry.get("size", 0) if kind in (FILE, SYMLINK) else 0
        if kind == SYMLINK:
            size = len(entry.get("target") or b"")
        stored = size - sum(length for _, length in entry.get("holes") or [])
        return Attributes(
            ino=node.inode,
            mode=_KIND_BITS[kind] | (entry.get("mode", 0) & 0o7777),
            nlink=max(1, entry.get("nlink", 1)) if kind == FILE else (2 if kind == DIR else 1),
            uid=entry.get("uid", 0),
            gid=entry.get("gid", 0),
            size=size,
            rdev=entry.get("rdev", 0) or 0,
            mtime_ns=int(entry.get("mtime", 0)),
            ctime_ns=int(entry.get("ctime", entry.get("mtime", 0))),
            blocks=(max(0, stored) + 511) // 512,
            timeout=1.0 if node.listing is not None or node.snapshot is None else 300.0,
        )
