"""Writing this machine's own files (metrics, schedule state, check progress, the tree cache)
so that a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(
    path: Path, data: bytes | bytearray | memoryview | str, *, mode: int = 0o600, sync: bool = False
) -> None:
    """Write ``data`` to a temporary file next to ``path`` and rename it over ``path``.

    ``mode`` is the file's permissions; ``sync`` also flushes it to disk before the rename.
    On any error the temporary file is removed and the error raised; ``path`` is untouched.
    """
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data.encode() if isinstance(data, str) else data)
            if sync:
                out.flush()
                os.fsync(out.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
