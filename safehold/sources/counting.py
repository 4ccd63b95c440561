"""Counting rows in a dump while it streams past, so the counts recorded in a snapshot are
exactly those of the dump (a count query after the dump would see later writes).

PostgreSQL plain dumps hold each table's rows as ``COPY schema.table (...) FROM stdin;``, one
row a line (newlines inside values are escaped), ended by a line ``\\.``.
"""

from __future__ import annotations

from typing import IO


class PostgresCopyCounter:
    """Wraps a readable binary stream; ``counts`` holds rows per ``schema.table`` seen so far."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._tail = b""
        self._table: str | None = None
        self.counts: dict[str, int] = {}

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        count = self._stream.readinto(buffer)  # type: ignore[attr-defined]
        if count:
            self._feed(bytes(memoryview(buffer)[:count]))
        return count

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        if data:
            self._feed(data)
        return data

    def _feed(self, data: bytes) -> None:
        data = self._tail + data
        last = data.rfind(b"\n")
        if last < 0:
            self._tail = data
            return
        self._tail = data[last + 1 :]
        self._scan(data[: last + 1])

    def _scan(self, lines: bytes) -> None:
        """Count over complete lines; ``position`` always sits at the start of a line."""
        position, size = 0, len(lines)
        while position < size:
            if self._table is None:
                start = _line_starting(lines, b"COPY ", position)
                if start < 0:
                    return
                end = lines.index(b"\n", start)
                header = lines[start:end]
                if header.endswith(b"FROM stdin;"):
                    self._table = table_name(header)
                    self.counts.setdefault(self._table, 0)
                position = end + 1
                continue
            stop = _line_starting(lines, b"\\.\n", position)
            if stop < 0:
                self.counts[self._table] += lines.count(b"\n", position)
                return
            self.counts[self._table] += lines.count(b"\n", position, stop)
            self._table = None
            position = stop + 3


def _line_starting(lines: bytes, prefix: bytes, position: int) -> int:
    """Offset of the first line at or after ``position`` that starts with ``prefix``, or -1."""
    if lines.startswith(prefix, position):
        return position
    found = lines.find(b"\n" + prefix, position)
    return found + 1 if found >= 0 else -1


def table_name(header: bytes) -> str:
    """``schema.table`` from a ``COPY schema.table (...) FROM stdin;`` line, with quoted
    identifiers unquoted (``"Old Notes"`` -> ``Old Notes``, ``""`` -> ``"``)."""
    text = header[len(b"COPY ") :].decode(errors="replace")
    parts, position = [], 0
    while position < len(text):
        if text[position] == '"':
            name, position = _quoted(text, position + 1)
        else:
            end = position
            while end < len(text) and text[end] not in ". (":
                end += 1
            name, position = text[position:end], end
        parts.append(name)
        if position < len(text) and text[position] == ".":
            position += 1
            continue
        break
    return ".".join(parts)


def _quoted(text: str, position: int) -> tuple[str, int]:
    """Read a quoted identifier whose opening quote is just before ``position``."""
    name = []
    while position < len(text):
        if text[position] == '"':
            if text[position + 1 : position + 2] == '"':
                name.append('"')
                position += 2
                continue
            return "".join(name), position + 1
        name.append(text[position])
        position += 1
    return "".join(name), position
