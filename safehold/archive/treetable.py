"""Tree tables: where each entry of a cached tree lies, so a changed directory's new tree is
spliced from its parent's bytes instead of decoded and encoded again.

After a small change (1 % of the files of an imaging archive rewritten) nearly every leaf
directory holds one changed file among a hundred unchanged ones. Decoding the parent's tree
(msgpack, then the checks every entry of an untrusted tree gets), comparing and encoding the
new tree cost a reader process about 0.33 ms of the 0.9 ms it spends per such directory. A
tree table, kept beside the tree in the local tree cache (safehold/repo/cache.py), lists per
entry its name, where its bytes end in the tree's plaintext and, for a file whose content may
be reused, the stat fields the comparison needs (mtime, ctime, size, inode). With it, an
unchanged file's entry is its parent bytes, copied; only changed and new entries are built
and encoded. The spliced tree is byte for byte the tree ``encode_tree`` makes of the same
entries (a msgpack array is its elements' encodings one after the other), so its id, and
deduplication, are the same either way (tests/test_tree_table.py).

A table is sealed with the repository's key, bound to its tree's id (``table_aad``), and is
trusted no more than the tree it describes: ``load`` checks that its entries tile the
plaintext and that each entry's bytes start with the name the table gives it. A table that
fails is ignored (the tree is decoded as before); one that is absent (a tree cached by an
older safehold, or read by the main process) costs only the time it would save.

Plaintext: msgpack ``[[name, end] or [name, end, mtime, ctime, size, inode], ...]`` in the
tree's order (by name).
"""

from __future__ import annotations

import msgpack

from safehold.archive.entries import FILE
from safehold.crypto import AuthenticationFailed, Cipher

# ``encode_tree``'s bytes before the entries' array header: {"version": 1, "entries": [
TREE_HEAD = msgpack.packb({"version": 1, "entries": []}, use_bin_type=True)[:-1]
_NAME_FIELD = msgpack.packb("name") + b"\xc4"  # the key, then a name's bin 8 marker
REUSED = "reused"  # the key that marks a stand-in entry (``stand_ins``) taken as unchanged


def table_aad(tree_id: bytes) -> bytes:
    return b"safehold tree table\0" + tree_id


def array_header(count: int) -> bytes:
    """msgpack's header of an array of ``count`` elements."""
    if count <= 15:
        return bytes((0x90 | count,))
    if count <= 0xFFFF:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


def row_of(entry: dict, end: int) -> list:
    """The table row of an entry whose bytes end at ``end``."""
    if entry["type"] == FILE and entry.get("content") is not None and "hardlink" not in entry:
        return [entry["name"], end, entry["mtime"], entry["ctime"], entry["size"], entry["inode"]]
    return [entry["name"], end]


def encode(entries: list[dict]) -> tuple[bytes, list[list]]:
    """``encode_tree(entries)`` (entries sorted by name) and its table's rows."""
    return splice(b"", entries)


def splice(plain: bytes, entries: list[dict]) -> tuple[bytes, list[list]]:
    """A tree's plaintext and table rows from ``entries`` (sorted by name): stand-ins of the
    parent ``plain`` (``stand_ins``) are copied from it, every other entry is encoded (all of
    them when there is no parent: ``encode``)."""
    view = memoryview(plain)
    parts: list = [TREE_HEAD, array_header(len(entries))]
    rows = []
    end = len(parts[0]) + len(parts[1])
    for entry in entries:
        reused = entry.get(REUSED)
        if reused is not None:
            start, stop, row = reused
            parts.append(view[start:stop])
            end += stop - start
            rows.append([row[0], end, *row[2:]])
        else:
            packed = msgpack.packb(entry, use_bin_type=True)
            parts.append(packed)
            end += len(packed)
            rows.append(row_of(entry, end))
    return b"".join(parts), rows


def seal(cipher: Cipher, tree_id: bytes, rows: list[list]) -> bytes:
    return bytes(cipher.seal(msgpack.packb(rows, use_bin_type=True), table_aad(tree_id)))


def load(cipher: Cipher, tree_id: bytes, plain: bytes, sealed: bytes) -> list[list] | None:
    """The rows of a sealed table of the tree ``tree_id`` (whose checked plaintext is
    ``plain``), or None if it does not authenticate or does not describe that plaintext."""
    try:
        rows = msgpack.unpackb(cipher.open(sealed, table_aad(tree_id)), raw=False)
    except (AuthenticationFailed, ValueError, TypeError, msgpack.UnpackException):
        return None
    if type(rows) is not list:
        return None
    start = len(TREE_HEAD) + len(array_header(len(rows)))
    if plain[:start] != TREE_HEAD + array_header(len(rows)):
        return None
    last = b""
    try:
        for row in rows:
            name, end = row[0], row[1]
            if (
                type(name) is not bytes
                or name <= last
                or type(end) is not int
                or not _named(plain, start, end, name)
                or len(row) not in (2, 6)
            ):
                return None
            last, start = name, end
    except (IndexError, TypeError, KeyError):
        return None
    return rows if start == len(plain) else None


def _named(plain: bytes, start: int, end: int, name: bytes) -> bool:
    """True if the bytes ``plain[start:end]`` begin a map whose first key is "name" with
    the value ``name`` (as ``base_entry`` orders an entry's keys)."""
    marker = plain[start]
    if 0x80 <= marker <= 0x8F:
        at = start + 1
    elif marker == 0xDE:
        at = start + 3
    else:
        return False
    expected = _NAME_FIELD + bytes((len(name),)) + name
    return at + len(expected) <= end and plain.startswith(expected, at)


def stand_ins(rows: list[list]) -> dict[bytes, dict]:
    """The parent entries a directory's comparison looks up, from a table: by name, a
    stand-in with what ``Archiver._add_entry`` compares (a file's mtime, ctime, size and
    inode; no content list, only a mark that it has one) and where its bytes lie."""
    previous = {}
    start = len(TREE_HEAD) + len(array_header(len(rows)))
    for row in rows:
        name, end = row[0], row[1]
        if len(row) == 6:
            previous[name] = {
                "name": name,
                "content": True,  # what the fast path asks: the parent had content
                "mtime": row[2],
                "ctime": row[3],
                "size": row[4],
                "inode": row[5],
                REUSED: (start, end, row),
            }
        else:
            previous[name] = {"name": name}  # not reusable by stat: built afresh
        start = end
    return previous
