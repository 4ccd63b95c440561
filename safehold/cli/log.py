"""One line per event on stderr, plain or (``safehold --log-json ...``) one JSON object a line.

Plain mode is what safehold always printed (``safehold: ...`` lines). With ``--log-json``,
stderr is wrapped for the duration of the command: every line anything prints there becomes
``{"time", "level", "event": "message", "message"}`` (level from the prefix: ``safehold:
warning:`` -> warning, ``safehold: note:`` -> note, other ``safehold:`` lines -> error,
indented progress lines -> info), and structured events (:func:`event`: job start and end,
component start and end, daemon start and stop) carry their own fields.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone
from typing import Any, TextIO


def _iso(when: float) -> str:
    return datetime.fromtimestamp(when, timezone.utc).isoformat(timespec="milliseconds")


class JsonLines:
    """A text stream that turns each line written into a JSON object on ``target``."""

    def __init__(self, target: TextIO, clock=time.time) -> None:  # type: ignore[no-untyped-def]
        self.target = target
        self.clock = clock
        self.pending = ""

    def write(self, text: str) -> int:
        self.pending += text
        while "\n" in self.pending:
            line, self.pending = self.pending.split("\n", 1)
            if line.strip():
                self.write_event(_classify(line))
        return len(text)

    def write_event(self, fields: dict[str, Any]) -> None:
        now = self.clock()
        record = {"time": _iso(now), "ts": round(now, 3)} | fields
        self.target.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        self.target.flush()

    def flush(self) -> None:
        if self.pending.strip():
            line, self.pending = self.pending, ""
            self.write_event(_classify(line))
        self.target.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.target.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self.target, "encoding", "utf-8")

    @property
    def errors(self) -> str:
        return getattr(self.target, "errors", "strict")

    def reconfigure(self, **_: Any) -> None:
        pass


def _classify(line: str) -> dict[str, Any]:
    text = line.rstrip()
    for prefix, level in (
        ("safehold: warning: ", "warning"),
        ("safehold: note: ", "note"),
        ("safehold: ", "error"),
    ):
        if text.startswith(prefix):
            return {"level": level, "event": "message", "message": text[len(prefix) :]}
    return {"level": "info", "event": "message", "message": text.strip()}


def json_mode() -> bool:
    return isinstance(sys.stderr, JsonLines)


def event(name: str, message: str, *, level: str = "info", **fields: Any) -> None:
    """Log one event: a JSON object with ``fields`` in --log-json mode, else one plain line
    (``safehold: MESSAGE``; warnings and errors say so)."""
    stream = sys.stderr
    if isinstance(stream, JsonLines):
        stream.write_event({"level": level, "event": name, "message": message} | fields)
        return
    prefix = {"warning": "warning: ", "error": "error: "}.get(level, "")
    stamp = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S")
    print(f"safehold: {stamp} {prefix}{message}", file=stream, flush=True)
