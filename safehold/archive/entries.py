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

from safehold.errors import IntegrityError

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


MAX_NAME = 255  # bytes: no Linux file system takes a longer name
_INTEGERS = ("mode", "uid", "gid", "mtime", "size")
_BY_TYPE = {FILE: "content", DIR: "subtree", SYMLINK: "target", CHARDEV: "rdev", BLOCKDEV: "rdev"}


def decode_tree(data: bytes) -> list[dict]:
    """The entries of a tree blob, each checked for the fields and types that every reader
    relies on (a tree is untrusted input: it may be damaged, or crafted by a key holder).

    Raises IntegrityError naming the first problem.
    """
    try:
        tree = msgpack.unpackb(data, raw=False, strict_map_key=False)
        entries = tree["entries"]
        if type(entries) is not list:
            raise TypeError("entries is not a list")
        for entry in entries:
            _check_entry(entry)
    except (ValueError, TypeError, KeyError, msgpack.UnpackException) as error:
        detail = str(error) or type(error).__name__
        raise IntegrityError(f"a tree is not a valid tree ({detail})") from None
    return entries


def _check_entry(entry: object) -> None:
    """ValueError/TypeError/KeyError unless ``entry`` is a well-formed tree entry. Called for
    every entry of every tree read (a backup after a change reads thousands): the checks are
    written out rather than looped over."""
    if type(entry) is not dict:
        raise TypeError("an entry is not a map")
    name = entry["name"]
    if type(name) is not bytes or name in (b"", b".", b"..") or b"/" in name or b"\0" in name:
        raise ValueError(f"invalid name {name!r}")
    if len(name) > MAX_NAME:
        raise ValueError(f"name longer than {MAX_NAME} bytes: {name[:40]!r}...")
    kind = entry["type"]
    if (
        type(entry["mode"]) is not int
        or type(entry["uid"]) is not int
        or type(entry["gid"]) is not int
        or type(entry["mtime"]) is not int
        or type(entry["size"]) is not int
    ):
        if kind not in _TYPES:
            raise ValueError(f"{name!r} has an unknown type {kind!r}")
        key = next(key for key in _INTEGERS if type(entry[key]) is not int)
        raise TypeError(f"{name!r} has no integer {key}")
    if kind == FILE:
        value = entry["content"]
        if type(value) is not list:
            raise TypeError(f"{name!r} has an invalid content list")
        for blob_id in value:
            if type(blob_id) is not bytes or len(blob_id) != 32:
                raise TypeError(f"{name!r} has an invalid content list")
    elif kind == DIR:
        value = entry["subtree"]
        if type(value) is not bytes or len(value) != 32:
            raise TypeError(f"{name!r} has an invalid subtree id")
    elif kind == SYMLINK:
        value = entry["target"]
        if type(value) is not bytes or not value or b"\0" in value:
            raise TypeError(f"{name!r} has an invalid link target")
    elif kind in (CHARDEV, BLOCKDEV):
        if type(entry["rdev"]) is not int:
            raise TypeError(f"{name!r} has no integer rdev")
    elif kind != FIFO:
        raise ValueError(f"{name!r} has an unknown type {kind!r}")
    if "holes" in entry or "hardlink" in entry or "xattrs" in entry:
        _check_optional(entry, name)


def _check_optional(entry: dict, name: bytes) -> None:
    for key in ("holes", "hardlink"):  # [[offset, length], ...] and [dev, inode]
        value = entry.get(key)
        if value is not None and not _int_pairs(value if key == "holes" else [value]):
            raise TypeError(f"{name!r} has invalid {key}")
    xattrs = entry.get("xattrs")
    if xattrs is not None and (
        type(xattrs) is not dict
        or any(type(k) is not bytes or type(v) is not bytes for k, v in xattrs.items())
    ):
        raise TypeError(f"{name!r} has invalid extended attributes")


_TYPES = (FILE, DIR, SYMLINK, FIFO, CHARDEV, BLOCKDEV)


def _int_pairs(value: object) -> bool:
    return type(value) is list and all(
        type(pair) is list and len(pair) == 2 and all(type(n) is int and n >= 0 for n in pair)
        for pair in value
    )


def display_name(name: bytes) -> str:
    """A printable form of a raw name: bytes that are not UTF-8 are shown as \\xNN."""
    return name.decode("utf-8", "backslashreplace")
