"""Output helpers: sizes, times, tables, JSON, and progress bars that only show on a terminal."""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone


def size(value: float) -> str:
    """Human-readable binary size: 1.5 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def printable(text: str) -> str:
    """``text`` safe for a terminal, as ``ls -b`` would show it: control characters (which
    could move the cursor, retitle the window or worse) and bytes that were not UTF-8 become
    ``\\xNN``. File names in text output go through here; JSON escapes by itself."""
    return _CONTROL.sub(_escape, text)


def _escape(match: re.Match) -> str:
    character = match.group()
    code = ord(character)
    return f"\\x{code - 0xDC00 if 0xDC80 <= code <= 0xDCFF else code:02x}"


def timestamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat()


def print_json(value: object) -> None:
    json.dump(jsonable(value), sys.stdout, indent=2)
    sys.stdout.write("\n")


def print_json_array(items: Iterable[object]) -> int:
    """Write a JSON array element by element as ``items`` yields them (one a line), so that a
    listing of a whole snapshot is never held; returns the number of elements."""
    count = 0
    sys.stdout.write("[")
    for item in items:
        sys.stdout.write(("\n  " if count == 0 else ",\n  ") + json.dumps(jsonable(item)))
        count += 1
    sys.stdout.write("\n]\n" if count else "]\n")
    return count


def jsonable(value: object) -> object:
    """Make a value JSON-ready: bytes keys become text (\\xNN for non-UTF-8), bytes values hex."""
    if isinstance(value, dict):
        return {
            (key.decode("utf-8", "backslashreplace") if isinstance(key, bytes) else key): jsonable(
                item
            )
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, bytes):
        return value.hex()
    return value


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = [
        "  ".join(
            str(cell).ljust(width) for cell, width in zip(headers, widths, strict=True)
        ).rstrip()
    ]
    lines.append("  ".join("-" * width for width in widths))
    lines += [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    return "\n".join(lines)


def interactive() -> bool:
    return sys.stderr.isatty()


class ProgressBar:
    """A rich progress bar (files, bytes, rate, ETA) on a terminal; nothing otherwise.

    ``total`` may be filled in later (a scanner thread counts while work proceeds).
    """

    def __init__(self, description: str, enabled: bool) -> None:
        self.enabled = enabled
        self.files = 0
        self._lock = threading.Lock()
        if enabled:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TextColumn("{task.fields[files]} files"),
                TimeRemainingColumn(),
                transient=True,
            )
            self._task = self._progress.add_task(description, total=None, files=0)

    def set_total(self, total_bytes: int) -> None:
        if self.enabled:
            self._progress.update(self._task, total=total_bytes)

    def advance(self, _path: object, files: int, nbytes: int) -> None:
        if self.enabled:
            with self._lock:
                self.files += files
                self._progress.update(self._task, advance=nbytes, files=self.files)

    @contextmanager
    def running(self) -> Iterator[ProgressBar]:
        if not self.enabled:
            yield self
            return
        with self._progress:
            yield self


def elapsed_since(start: float) -> str:
    return f"{time.monotonic() - start:.1f} s"
