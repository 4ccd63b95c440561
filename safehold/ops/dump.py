"""Dump: one file of a snapshot as a byte stream, or a directory as a tar stream.

Nothing is staged on disk and nothing is held whole: a file is written blob by blob (each
authenticated and checked against its id), a directory's trees are read one at a time as the
walk reaches them, and the tar is written in stream mode.

The tar is POSIX (PAX) and extracts with GNU tar to exactly what ``safehold restore`` writes
into its target (docs/operations.md, "Finding and dumping"): member names are relative to the
dumped directory (which itself is not a member, so extracting never changes the directory
extracted into); owners are numeric only (no user or group names, so ``tar -x`` as root
gives the recorded ids, as restore does); mtimes carry their nanoseconds in PAX ``mtime``;
extended attributes ride in PAX ``SCHILY.xattr.*`` records; hard links are link members to
the first name of the file met in the walk; sparse files are PAX sparse 1.0 members, so the
holes come back as holes.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Iterator
from typing import BinaryIO

from safehold.archive import tree
from safehold.archive.contentwriter import data_segments
from safehold.archive.entries import BLOCKDEV, CHARDEV, DIR, FIFO, FILE, SYMLINK
from safehold.repo.repository import Repository

COPY_SIZE = 1024 * 1024

_TAR_TYPES = {
    FILE: tarfile.REGTYPE,
    DIR: tarfile.DIRTYPE,
    SYMLINK: tarfile.SYMTYPE,
    FIFO: tarfile.FIFOTYPE,
    CHARDEV: tarfile.CHRTYPE,
    BLOCKDEV: tarfile.BLKTYPE,
}


def content_pieces(repository: Repository, entry: dict) -> Iterator[memoryview]:
    """The file's content, one verified blob at a time (IntegrityError if one is damaged)."""
    for blob_id in entry.get("content") or []:
        yield memoryview(repository.load_blob(blob_id))


def write_file(repository: Repository, entry: dict, output: BinaryIO) -> int:
    """Write a file entry's content to ``output``; returns the bytes written."""
    written = 0
    for piece in content_pieces(repository, entry):
        output.write(piece)
        written += len(piece)
    return written


class _PieceReader(io.RawIOBase):
    """A readable stream over an iterator of byte pieces (what tarfile copies from)."""

    def __init__(self, pieces: Iterator[memoryview | bytes]) -> None:
        super().__init__()
        self._pieces = pieces
        self._buffer = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:  # type: ignore[no-untyped-def, override]
        while not self._buffer:
            piece = next(self._pieces, None)
            if piece is None:
                return 0
            self._buffer = memoryview(piece)
        count = min(len(target), len(self._buffer))
        target[:count] = self._buffer[:count]
        self._buffer = self._buffer[count:]
        return count


def _sparse_regions(entry: dict) -> list[tuple[int, int]]:
    """(offset, length) of the parts of a sparse file that hold data, plus GNU tar's closing
    empty region at the end when the file ends in a hole."""
    size = entry["size"]
    regions = [r for r in data_segments(0, size, entry["holes"]) if r[1] > 0]
    if not regions or regions[-1][0] + regions[-1][1] < size:
        regions.append((size, 0))
    return regions


def _sparse_map(regions: list[tuple[int, int]]) -> bytes:
    text = f"{len(regions)}\n" + "".join(f"{offset}\n{length}\n" for offset, length in regions)
    data = text.encode()
    return data + b"\0" * (-len(data) % tarfile.BLOCKSIZE)


def _sparse_pieces(
    repository: Repository, entry: dict, header: bytes
) -> Iterator[memoryview | bytes]:
    """The member data of a PAX sparse 1.0 file: the map, then only the data regions."""
    yield header
    holes = entry["holes"]
    offset = 0
    for piece in content_pieces(repository, entry):
        for start, length in data_segments(offset, len(piece), holes):
            if length:
                yield piece[start - offset : start - offset + length]
        offset += len(piece)


class TarWriter:
    """Writes entries of one snapshot as a tar stream (see the module docstring)."""

    def __init__(self, repository: Repository, output: BinaryIO) -> None:
        self.repository = repository
        self.tar = tarfile.open(  # noqa: SIM115 (closed by close())
            fileobj=output,
            mode="w|",
            format=tarfile.PAX_FORMAT,
            encoding="utf-8",
            errors="surrogateescape",
            bufsize=COPY_SIZE,
        )
        self._first_link: dict[tuple[int, int], str] = {}
        self.members = 0
        self.bytes = 0

    def add_tree(self, entry: dict) -> None:
        """Everything below the directory ``entry`` (not the directory itself)."""
        for path, child in tree.walk(self.repository, entry, b""):
            if path:
                self.add(os.fsdecode(path.lstrip(b"/")), child)

    def add(self, name: str, entry: dict) -> None:
        """One entry as the member ``name`` (a relative path)."""
        info = tarfile.TarInfo(name)
        kind = entry["type"]
        info.type = _TAR_TYPES[kind]
        info.mode = entry.get("mode", 0) & 0o7777
        info.uid, info.gid = entry.get("uid", 0), entry.get("gid", 0)
        info.uname = info.gname = ""  # numeric owners, as restore sets them
        mtime = int(entry.get("mtime", 0))
        info.mtime = mtime // 1_000_000_000
        info.pax_headers = {"mtime": f"{mtime // 1_000_000_000}.{mtime % 1_000_000_000:09d}"}
        for key, value in (entry.get("xattrs") or {}).items():
            info.pax_headers["SCHILY.xattr." + os.fsdecode(key)] = os.fsdecode(value)
        fileobj = None
        if kind == SYMLINK:
            info.linkname = os.fsdecode(entry["target"])
        elif kind in (CHARDEV, BLOCKDEV):
            info.devmajor, info.devminor = os.major(entry["rdev"]), os.minor(entry["rdev"])
        elif kind == FILE:
            key = tuple(entry["hardlink"]) if entry.get("hardlink") else None
            if key is not None and key in self._first_link:
                info.type = tarfile.LNKTYPE
                info.linkname = self._first_link[key]  # type: ignore[index]
            else:
                if key is not None:
                    self._first_link[key] = name  # type: ignore[index]
                fileobj = self._content(info, entry)
        self.tar.addfile(info, fileobj)
        self.members += 1

    def _content(self, info: tarfile.TarInfo, entry: dict) -> io.BufferedReader:
        # Buffered: tarfile takes a short read for the end of the data.
        if not entry.get("holes"):
            info.size = entry["size"]
            self.bytes += info.size
            return io.BufferedReader(_PieceReader(content_pieces(self.repository, entry)))
        regions = _sparse_regions(entry)
        header = _sparse_map(regions)
        directory, base = os.path.split(info.name)
        info.pax_headers.update(
            {
                "GNU.sparse.major": "1",
                "GNU.sparse.minor": "0",
                "GNU.sparse.name": info.name,
                "GNU.sparse.realsize": str(entry["size"]),
            }
        )
        info.name = os.path.join(directory, "GNUSparseFile.0", base)
        info.size = len(header) + sum(length for _, length in regions)
        self.bytes += entry["size"]
        return io.BufferedReader(_PieceReader(_sparse_pieces(self.repository, entry, header)))

    def close(self) -> None:
        """Write the end-of-archive blocks (the output itself stays open)."""
        self.tar.close()


def dump(repository: Repository, entry: dict, output: BinaryIO) -> str:
    """Write ``entry`` to ``output``: a regular file as its bytes, a directory as a tar of what
    is below it, anything else as a tar of that one entry. Returns "file" or "tar".

    Raises IntegrityError if a tree or blob is damaged (the output is then cut short)."""
    if entry["type"] == FILE:
        write_file(repository, entry, output)
        return "file"
    writer = TarWriter(repository, output)
    if entry["type"] == DIR:
        writer.add_tree(entry)
    else:
        writer.add(os.fsdecode(entry["name"]), entry)
    writer.close()
    return "tar"


def is_binary_terminal(stream: BinaryIO) -> bool:
    """True if ``stream`` is a terminal (dump refuses to write there)."""
    try:
        return os.isatty(stream.fileno()) and stat.S_ISCHR(os.fstat(stream.fileno()).st_mode)
    except (OSError, ValueError, io.UnsupportedOperation):
        return False
