"""The checks of a restore drill: restored files against their snapshot entries, row counts
against those recorded at backup, and the user's SQL checks against their expectations.

The file check is independent of the restorer: the restored bytes are read back, cut into
chunks with the repository's chunker settings and seed, and each chunk's keyed id compared with
the entry's ``content`` list, exactly as a backup would compute them.
"""

from __future__ import annotations

import hashlib
import operator
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from pyfastcdc import FastCDC

from safehold.archive import tree
from safehold.archive.entries import BLOCKDEV, CHARDEV, DIR, FIFO, FILE, SYMLINK
from safehold.repo.repository import Repository

SCRATCH_SUFFIX = "_safehold_drill"
_MAX_IDENTIFIER = 63  # PostgreSQL's limit (MySQL allows 64)
_KINDS = {
    DIR: stat.S_ISDIR,
    FILE: stat.S_ISREG,
    SYMLINK: stat.S_ISLNK,
    FIFO: stat.S_ISFIFO,
    CHARDEV: stat.S_ISCHR,
    BLOCKDEV: stat.S_ISBLK,
}
_COMPARISON = re.compile(r"\s*(>=|<=|!=|==|=|>|<)\s*(-?[0-9]+(?:\.[0-9]+)?)\s*")
_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "!=": operator.ne,
    "==": operator.eq,
    "=": operator.eq,
    ">": operator.gt,
    "<": operator.lt,
}


@dataclass
class FilesVerdict:
    """What the re-reading of one restored files component found."""

    files: int = 0
    bytes: int = 0
    entries: int = 0
    failures: list[str] = field(default_factory=list)


class ContentIds:
    """Computes the chunk ids of a file as a backup into this repository would."""

    def __init__(self, repository: Repository) -> None:
        chunker = repository.config["chunker"]
        self.min_size = chunker["min_size"]
        self.cipher = repository.cipher
        self.cdc = FastCDC(
            chunker["avg_size"],
            min_size=chunker["min_size"],
            max_size=chunker["max_size"],
            seed=repository.cipher.master_key.chunker_seed,
        )

    def of(self, path: bytes) -> tuple[list[bytes], int]:
        """Returns (chunk ids, bytes read) of the file at path. Raises OSError."""
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            if os.fstat(fd).st_size < self.min_size:
                data = os.read(fd, self.min_size)
                return ([self.cipher.blob_id(data)] if data else []), len(data)
            ids, size = [], 0
            with open(fd, "rb", buffering=0, closefd=False) as stream:
                for chunk in self.cdc.cut_stream(stream):
                    ids.append(self.cipher.blob_id(chunk.data))
                    size += chunk.length
            return ids, size
        finally:
            os.close(fd)


def verify_files(repository: Repository, entry: dict, root: str, limit: int = 20) -> FilesVerdict:
    """Given a component's directory entry and the directory it was restored into, check every
    entry below it: type, symlink target, and for files size and chunk ids. Returns the verdict
    (at most ``limit`` failures are described; the rest are counted)."""
    verdict = FilesVerdict()
    ids = ContentIds(repository)
    base = os.fsencode(root)
    missed = 0
    for path, item in tree.walk(repository, entry, b""):
        if not path:
            continue
        verdict.entries += 1
        problem = _check_entry(ids, base + path, item, verdict)
        if problem:
            if len(verdict.failures) < limit:
                verdict.failures.append(f"{os.fsdecode(path)}: {problem}")
            else:
                missed += 1
    if missed:
        verdict.failures.append(f"... and {missed} more")
    return verdict


def _check_entry(ids: ContentIds, path: bytes, item: dict, verdict: FilesVerdict) -> str | None:
    try:
        info = os.lstat(path)
    except OSError as error:
        return f"not restored ({error.strerror})"
    kind = item["type"]
    if kind in _KINDS and not _KINDS[kind](info.st_mode):
        return f"is not a {kind} after the restore"
    if kind == SYMLINK and os.readlink(path) != item.get("target"):
        return "symlink target differs"
    if kind != FILE:
        return None
    if info.st_size != item["size"]:
        return f"{info.st_size} bytes, {item['size']} recorded"
    try:
        content, size = ids.of(path)
    except OSError as error:
        return f"cannot be read back ({error.strerror})"
    verdict.files += 1
    verdict.bytes += size
    if content != list(item.get("content") or []):
        return "content differs from the snapshot (chunk ids do not match)"
    return None


def compare_rows(
    recorded: dict[str, int], actual: dict[str, int], exact: bool
) -> tuple[list[str], list[str]]:
    """Given the row counts recorded at backup, those of the restored database and whether
    the recorded ones are exact, return (failures, warnings).

    A recorded table missing after the restore is a failure; a differing count is a failure
    if the counts are exact (taken from the dump itself), else a warning (counted after the
    dump, so writes during a hot backup explain small differences).
    """
    failures, warnings = [], []
    for table, count in sorted(recorded.items()):
        if table not in actual:
            failures.append(f"table {table} is missing after the restore ({count} rows recorded)")
        elif actual[table] != count:
            message = f"table {table}: {actual[table]} rows, {count} recorded at backup"
            if exact:
                failures.append(message)
            else:
                warnings.append(message + " (counted after the dump: writes during it explain it)")
    return failures, warnings


def evaluate(expect: object, rows: list[list[str]]) -> tuple[bool, str | None, str]:
    """Given a check's ``expect`` (None, a value, or a comparison such as ``>= 1``) and the
    query's rows, return (passed, the first value of the first row, what was expected)."""
    value = rows[0][0] if rows and rows[0] else None
    if expect is None:
        return True, value, "the query runs"
    text = str(expect)
    match = _COMPARISON.fullmatch(text)
    if match:
        wanted = f"{match.group(1)} {match.group(2)}"
        try:
            number = float(value) if value is not None else None
        except ValueError:
            number = None
        if number is None:
            return False, value, f"a number {wanted}"
        return _OPERATORS[match.group(1)](number, float(match.group(2))), value, wanted
    return value == text, value, text


def scratch_database_name(name: str) -> str:
    """Returns the scratch database for ``name`` on a configured server:
    ``<name>_safehold_drill``, shortened with a hash if it would exceed 63 bytes."""
    candidate = name + SCRATCH_SUFFIX
    if len(candidate.encode()) <= _MAX_IDENTIFIER:
        return candidate
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    keep = name.encode()[: _MAX_IDENTIFIER - len(SCRATCH_SUFFIX) - 9].decode(errors="ignore")
    return f"{keep}_{digest}{SCRATCH_SUFFIX}"
