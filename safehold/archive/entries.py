"""Tree entries: what a snapshot records about one file, directory, link or device.

A tree blob is msgpack ``{"version": 1, "entries": [entry, ...]}``, entries sorted by name.
An entry is a map (docs/format.md, "Trees"): name (bytes, any encoding), type, mode, uid, gid,
user, group, mtime and ctime (ns), inode, dev, nlink, size, and per type: content (list of
blob ids) and holes for files, subtree for directories, target for symlinks, rdev for devices,
xattrs (bytes -> bytes) and hardlink ([dev, inode]) where present.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import time
from functools import lru_cache

import msgpack

FILE, DIR, SYMLINK, FIFO, CHARDEV, BLOCKDEV = (
    "file",
    "dir",
    "symlink",
    "fifo",
    "chardev",
    "blockdev",
)


def entry_type(mode: int) -> str | None:
    """Return the entry type for an st_mode, or None for kinds not backed up (sockets)."""
    if stat.S_ISREG(mode):
        return FILE
    if stat.S_ISDIR(mode):
        return DIR
    if stat.S_ISLNK(mode):
        return SYMLINK
    if stat.S_ISFIFO(mode):
        return FIFO
    if stat.S_ISCHR(mode):
        return CHARDEV
    if stat.S_ISBLK(mode):
        return BLOCKDEV
    return None


@lru_cache(maxsize=1024)
def user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


@lru_cache(maxsize=1024)
def group_name(gid: int) -> str | None:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None


def read_xattrs(path: bytes) -> dict[bytes, bytes] | None:
    """Return the extended attributes of ``path`` (not following links), or None if none."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return None
    if not names:
        return None
    values = {}
    for name in names:
        try:
            values[name.encode()] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
    return values or None


def base_entry(name: bytes, st: os.stat_result, kind: str) -> dict:
    """The fields every entry has, from an lstat result."""
    return {
        "name": name,
        "type": kind,
        "mode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "user": user_name(st.st_uid),
        "group": group_name(st.st_gid),
        "mtime": st.st_mtime_ns,
        "ctime": st.st_ctime_ns,
        "inode": st.st_ino,
        "dev": st.st_dev,
        "nlink": st.st_nlink,
        "size": st.st_size if kind in (FILE, SYMLINK) else 0,
    }


def synthetic_entry(name: bytes, kind: str, mtime_ns: int | None = None, **fields: object) -> dict:
    """An entry for something that is not a file on disk here (a dump, a component folder):
    owned by the running user, private mode, the given or current time."""
    now = time.time_ns() if mtime_ns is None else mtime_ns
    uid, gid = os.getuid(), os.getgid()
    return {
        "name": name,
        "type": kind,
        "mode": 0o700 if kind == DIR else 0o600,
        "uid": uid,
        "gid": gid,
        "user": user_name(uid),
        "group": group_name(gid),
        "mtime": now,
        "ctime": now,
        "inode": 0,
        "dev": 0,
        "nlink": 1,
        "size": 0,
        **fields,
    }


def unchanged(entry: dict, previous: dict | None) -> bool:
    """True if a file's stat matches the parent snapshot's entry, so its content is reused."""
    return (
        previous is not None
        and previous.get("type") == FILE
        and previous.get("content") is not None
        and previous["size"] == entry["size"]
        and previous["mtime"] == entry["mtime"]
        and previous["ctime"] == entry["ctime"]
        and previous["inode"] == entry["inode"]
    )


def encode_tree(entries: list[dict]) -> bytes:
    return msgpack.packb({"version": 1, "entries": entries}, use_bin_type=True)


def decode_tree(data: bytes) -> list[dict]:
    tree = msgpack.unpackb(data, raw=False, strict_map_key=False)
    return tree["entries"]


def display_name(name: bytes) -> str:
    """A printable form of a raw name: bytes that are not UTF-8 are shown as \\xNN."""
    return name.decode("utf-8", "backslashreplace")
