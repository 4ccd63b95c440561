"""Deterministic benchmark data set: a mixed tree like a research / medical data platform's.

At the default scale (``--size-gb 2.0``, decimal gigabytes) the tree holds roughly

- 62 % large incompressible files of 1-50 MiB (``dicom/``, like DICOM pixel data),
- 29 % compressible text: SQL dumps (``db/*.sql``) and CSV exports (``exports/*.csv``),
- 20,000 small files of 1-16 KiB over a few hundred directories (``small/``), half of them
  random (thumbnails), half text (JSON-like metadata); about 9 % of the bytes.

Two imaging-archive profiles stand beside it (``--profile``), a tree of studies, series and
instances as an Orthanc or dcm4chee storage holds them (about 100 instances a series, 4 series
a study):

- ``small``: ``--files`` (default 300,000) files of 1-64 KiB, incompressible, like small
  DICOM instances (structured reports, key images, thumbnails);
- ``dicom``: ``--files`` (default 6,000) files of 100-600 KiB, like CT/MR slices.

Their "1 % change" rewrites every hundredth instance in place (same size, new bytes).

Everything is a function of ``--seed``, so two runs produce byte-identical trees.
``apply_change`` makes the "1 % change" (overwrite regions of a few large files, append to a
SQL dump, add a few small files) and ``revert_change`` undoes it, so every benchmark round
starts from the same bytes.

Usage::

    python benchmarks/dataset.py DIRECTORY [--size-gb 2.0] [--seed 1]
    python benchmarks/dataset.py DIRECTORY --profile small [--files 300000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

GB = 10**9
KiB = 1 << 10
MiB = 1 << 20
LARGE_SHARE = 0.62
TEXT_SHARE = 0.29
SMALL_FILES_PER_GB = 10_000
WRITE_BLOCK = 4 * MiB
LINES_PER_BLOCK = 4096
SYLLABLES = (
    "ka",
    "lo",
    "mi",
    "ne",
    "ro",
    "sa",
    "ti",
    "vu",
    "ber",
    "dan",
    "fel",
    "gor",
    "han",
    "jen",
    "kir",
    "lum",
    "mar",
    "nor",
    "pel",
    "quin",
    "ras",
    "sten",
    "tor",
    "wil",
)
TABLES = ("patients", "studies", "series", "visits", "lab_results", "prescriptions")
CITIES = ("Berlin", "Hamburg", "Munich", "Cologne", "Leipzig", "Dresden", "Bremen", "Kiel")


@dataclass(frozen=True)
class Plan:
    """How many bytes and files of each kind a data set of a given scale holds."""

    large_bytes: int
    text_bytes: int
    small_files: int
    small_dirs: int


def plan_for(size_gb: float) -> Plan:
    """Return the plan for ``size_gb`` decimal gigabytes (20,000 small files at 2 GB)."""
    total = int(size_gb * GB)
    small_files = max(100, round(SMALL_FILES_PER_GB * size_gb))
    return Plan(
        large_bytes=int(total * LARGE_SHARE),
        text_bytes=int(total * TEXT_SHARE),
        small_files=small_files,
        small_dirs=max(10, small_files // 64),
    )


def _bits(seed: int, *stream: int) -> np.random.SFC64:
    """A fast bit generator for one named stream of the data set."""
    return np.random.SFC64(np.random.SeedSequence([seed, *stream]))


def random_bytes(bits: np.random.SFC64, size: int) -> bytes:
    """``size`` pseudo-random bytes (about 1.3 GB/s, the data is incompressible)."""
    words = bits.random_raw((size + 7) // 8)
    return words.tobytes()[:size]


def _sizes(rng: np.random.Generator, total: int, low: int, high: int) -> list[int]:
    """Uniform sizes in [low, high] until they add up to ``total`` (the last one is trimmed)."""
    sizes: list[int] = []
    remaining = total
    while remaining >= low:
        size = min(int(rng.integers(low, high + 1)), remaining)
        sizes.append(size)
        remaining -= size
    return sizes


# ---------------------------------------------------------------- text


class TextSource:
    """Deterministic SQL / CSV lines: a fixed vocabulary with varying numbers and words."""

    def __init__(self, seed: int, stream: int) -> None:
        self.rng = np.random.Generator(_bits(seed, 2, stream))
        vocabulary = np.random.Generator(_bits(seed, 2, 0))
        self.words = [
            "".join(vocabulary.choice(SYLLABLES, size=int(n)))
            for n in vocabulary.integers(2, 5, size=3000)
        ]
        self.next_id = 1

    def _columns(self, count: int) -> tuple[list, ...]:
        rng = self.rng
        ids = range(self.next_id, self.next_id + count)
        self.next_id += count
        words = self.words
        names = [words[i] for i in rng.integers(0, len(words), size=count)]
        notes = [" ".join(words[j] for j in row) for row in rng.integers(0, 400, size=(count, 3))]
        cities = [CITIES[i] for i in rng.integers(0, len(CITIES), size=count)]
        days = rng.integers(0, 3650, size=count).tolist()
        cents = rng.integers(0, 10_000_000, size=count).tolist()
        codes = rng.integers(100, 999, size=count).tolist()
        return list(ids), names, notes, cities, days, cents, codes

    def sql_block(self, table: str) -> bytes:
        """A block of INSERT statements into ``table``."""
        rows = zip(*self._columns(LINES_PER_BLOCK), strict=True)
        lines = [
            f"INSERT INTO {table} (id, name, city, visit_date, amount, code, note) VALUES "
            f"({i}, '{name.title()}', '{city}', '{2010 + day // 365}-{day % 12 + 1:02d}-"
            f"{day % 28 + 1:02d}', {cent // 100}.{cent % 100:02d}, 'C{code}', '{note}');\n"
            for i, name, note, city, day, cent, code in rows
        ]
        return "".join(lines).encode()

    def csv_block(self) -> bytes:
        """A block of CSV rows."""
        rows = zip(*self._columns(LINES_PER_BLOCK), strict=True)
        lines = [
            f"{i},{name},{city},{2010 + day // 365}-{day % 12 + 1:02d}-{day % 28 + 1:02d},"
            f"{cent // 100}.{cent % 100:02d},C{code},{note}\n"
            for i, name, note, city, day, cent, code in rows
        ]
        return "".join(lines).encode()


def _sql_header(table: str) -> bytes:
    return (
        f"--\n-- PostgreSQL database dump\n--\n\nSET client_encoding = 'UTF8';\n\n"
        f"CREATE TABLE public.{table} (\n    id bigint NOT NULL,\n    name text,\n"
        f"    city text,\n    visit_date date,\n    amount numeric(12,2),\n"
        f"    code text,\n    note text\n);\n\n"
    ).encode()


def _write_text_file(path: str, size: int, source: TextSource, kind: str, table: str) -> None:
    written = 0
    with open(path, "wb") as handle:
        if kind == "sql":
            written += handle.write(_sql_header(table))
        else:
            written += handle.write(b"id,name,city,visit_date,amount,code,note\n")
        while written < size:
            block = source.sql_block(table) if kind == "sql" else source.csv_block()
            written += handle.write(block[: size - written])


def _text_files(root: str, plan: Plan, seed: int) -> Iterator[tuple[str, int]]:
    """Write the SQL dumps and CSV exports; yields (path, size)."""
    rng = np.random.Generator(_bits(seed, 3))
    sizes = _sizes(rng, plan.text_bytes, 2 * MiB, 32 * MiB)
    for number, size in enumerate(sizes):
        table = TABLES[number % len(TABLES)]
        kind = "sql" if number % 3 != 2 else "csv"
        folder = "db" if kind == "sql" else "exports"
        os.makedirs(os.path.join(root, folder), exist_ok=True)
        path = os.path.join(root, folder, f"{table}_{number:03d}.{kind}")
        _write_text_file(path, size, TextSource(seed, number + 1), kind, table)
        yield path, size


# ---------------------------------------------------------------- large random files


def _dicom_preamble(number: int) -> bytes:
    """128 zero bytes, 'DICM' and a little header text, as in a DICOM Part 10 file."""
    return b"\0" * 128 + b"DICM" + f"1.2.826.0.1.3680043.8.498.{number}\0".encode()


def _write_random_file(path: str, size: int, bits: np.random.SFC64, number: int) -> None:
    with open(path, "wb") as handle:
        written = handle.write(_dicom_preamble(number)[:size])
        while written < size:
            written += handle.write(random_bytes(bits, min(WRITE_BLOCK, size - written)))


def _large_files(root: str, plan: Plan, seed: int) -> Iterator[tuple[str, int]]:
    """Write the DICOM-like random files; yields (path, size)."""
    rng = np.random.Generator(_bits(seed, 1))
    bits = _bits(seed, 1, 1)
    for number, size in enumerate(_sizes(rng, plan.large_bytes, MiB, 50 * MiB)):
        folder = os.path.join(
            root, "dicom", f"study_{number // 12:03d}", f"series_{number // 4 % 3}"
        )
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"IM_{number:05d}.dcm")
        _write_random_file(path, size, bits, number)
        yield path, size


# ---------------------------------------------------------------- small files


def _small_content(
    rng: np.random.Generator, bits: np.random.SFC64, pool: bytes, number: int
) -> tuple[str, bytes]:
    """(extension, content) of small file ``number``: random half the time, else text."""
    size = int(rng.integers(KiB, 16 * KiB + 1))
    if number % 2:
        return "jpg", random_bytes(bits, size)
    header = f'{{"file": {number}, "uid": "1.2.826.0.1.{number * 7919}",\n'.encode()
    start = int(rng.integers(0, len(pool) - size))
    return "json", (header + pool[start : start + size])[:size]


def _small_files(root: str, plan: Plan, seed: int) -> Iterator[tuple[str, int]]:
    """Write the small files spread over ``plan.small_dirs`` directories; yields (path, size)."""
    rng = np.random.Generator(_bits(seed, 4))
    bits = _bits(seed, 4, 1)
    pool = TextSource(seed, 10_000).csv_block() * 2
    for number in range(plan.small_files):
        directory = number % plan.small_dirs
        folder = os.path.join(root, "small", f"group_{directory % 16:02d}", f"dir_{directory:04d}")
        if number < plan.small_dirs:
            os.makedirs(folder, exist_ok=True)
        extension, content = _small_content(rng, bits, pool, number)
        path = os.path.join(folder, f"file_{number:06d}.{extension}")
        with open(path, "wb") as handle:
            handle.write(content)
        yield path, len(content)


# ---------------------------------------------------------------- the whole set


@dataclass
class Summary:
    """What ``generate`` wrote."""

    files: int = 0
    bytes: int = 0
    by_kind: dict[str, list[int]] = field(default_factory=dict)  # kind -> [files, bytes]

    def add(self, kind: str, size: int) -> None:
        self.files += 1
        self.bytes += size
        counts = self.by_kind.setdefault(kind, [0, 0])
        counts[0] += 1
        counts[1] += size


# profile -> (smallest file, largest file, default number of files)
PROFILES = {
    "mixed": None,
    "small": (KiB, 64 * KiB, 300_000),
    # A million instances of 1-8 KiB (4.5 GB): the file count of a large archive on a disk
    # that cannot hold a million 1-64 KiB files four times over (data, two repositories and
    # a restore: about 130 GB).
    "tiny": (KiB, 8 * KiB, 1_000_000),
    "dicom": (100 * KiB, 600 * KiB, 6_000),
}
SERIES_FILES = 100  # instances per series
STUDY_SERIES = 4  # series per study


def profile_files(profile: str, files: int | None) -> int:
    """How many files an archive profile writes (``files`` or its default)."""
    return files if files is not None else PROFILES[profile][2]  # type: ignore[index]


def expected_bytes(profile: str, size_gb: float, files: int | None) -> int:
    """About how many bytes the data set of these knobs holds (for the disk check)."""
    if profile == "mixed":
        return int(size_gb * GB)
    low, high, _ = PROFILES[profile]  # type: ignore[misc]
    return profile_files(profile, files) * (low + high) // 2


def instance_path(root: str, number: int) -> str:
    """Where instance ``number`` of an archive profile lives."""
    series = number // SERIES_FILES
    study = series // STUDY_SERIES
    return os.path.join(
        root,
        f"study_{study:06d}",
        f"series_{series % STUDY_SERIES:02d}",
        f"instance_{number % SERIES_FILES:03d}.dcm",
    )


def _archive_files(root: str, profile: str, files: int, seed: int) -> Iterator[tuple[str, int]]:
    """Write an archive profile's instances; yields (path, size)."""
    low, high, _ = PROFILES[profile]  # type: ignore[misc]
    rng = np.random.Generator(_bits(seed, 7))
    bits = _bits(seed, 7, 1)
    sizes = rng.integers(low, high + 1, size=files)
    for number in range(files):
        path = instance_path(root, number)
        if number % SERIES_FILES == 0:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        size = int(sizes[number])
        with open(path, "wb") as handle:
            handle.write((_dicom_preamble(number) + random_bytes(bits, size))[:size])
        yield path, size


def generate(
    root: str,
    size_gb: float = 2.0,
    seed: int = 1,
    profile: str = "mixed",
    files: int | None = None,
) -> Summary:
    """Create the data set in ``root`` (which must not exist or be empty)."""
    if os.path.exists(root) and os.listdir(root):
        raise FileExistsError(f"{root} is not empty")
    os.makedirs(root, exist_ok=True)
    if profile != "mixed":
        summary = Summary()
        for _path, size in _archive_files(root, profile, profile_files(profile, files), seed):
            summary.add(profile, size)
        return summary
    plan = plan_for(size_gb)
    summary = Summary()
    for kind, writer in (("large", _large_files), ("text", _text_files), ("small", _small_files)):
        for _path, size in writer(root, plan, seed):
            summary.add(kind, size)
    return summary


# ---------------------------------------------------------------- the 1 % change


@dataclass
class Change:
    """What ``apply_change`` did, with what ``revert_change`` needs to undo it."""

    regions: list[tuple[str, int, bytes]] = field(default_factory=list)  # path, offset, old
    appended: tuple[str, int] | None = None  # path, old size
    added: list[str] = field(default_factory=list)
    bytes_changed: int = 0


def _files_under(root: str, folder: str, suffix: str) -> list[str]:
    found = []
    for directory, _dirs, files in os.walk(os.path.join(root, folder)):
        found += [os.path.join(directory, name) for name in files if name.endswith(suffix)]
    return sorted(found)


def tree_bytes(root: str) -> int:
    """Sum of the sizes of the regular files below ``root``."""
    total = 0
    for directory, _dirs, files in os.walk(root):
        total += sum(os.lstat(os.path.join(directory, name)).st_size for name in files)
    return total


def _overwrite_regions(change: Change, paths: list[str], budget: int, seed: int) -> None:
    """Overwrite 4 regions in each of ``paths`` with new random bytes, ``budget`` in all."""
    rng = np.random.Generator(_bits(seed, 5))
    bits = _bits(seed, 5, 1)
    region = max(4 * KiB, budget // (4 * len(paths)))
    for path in paths:
        size = os.path.getsize(path)
        with open(path, "r+b") as handle:
            for _ in range(4):
                length = min(region, size)
                offset = int(rng.integers(0, size - length + 1))
                handle.seek(offset)
                change.regions.append((path, offset, handle.read(length)))
                handle.seek(offset)
                handle.write(random_bytes(bits, length))
                change.bytes_changed += length


def apply_change(
    root: str,
    seed: int = 1,
    fraction: float = 0.01,
    profile: str = "mixed",
    files: int | None = None,
) -> Change:
    """Modify about ``fraction`` of the data set's bytes (archive profiles: of its files);
    deterministic for a given seed."""
    change = Change()
    if profile != "mixed":
        step = max(1, round(1 / fraction))
        bits = _bits(seed, 8)
        for number in range(step // 2, profile_files(profile, files), step):
            path = instance_path(root, number)
            with open(path, "r+b") as handle:
                old = handle.read()
                handle.seek(132)
                change.bytes_changed += handle.write(random_bytes(bits, len(old) - 132))
            change.regions.append((path, 0, old))
        return change
    large = _files_under(root, "dicom", ".dcm")
    step = max(1, len(large) // 8)
    targets = large[::step][:8]
    budget = int(tree_bytes(root) * fraction)
    _overwrite_regions(change, targets, budget - 256 * KiB, seed)
    dump = _files_under(root, "db", ".sql")[0]
    change.appended = (dump, os.path.getsize(dump))
    with open(dump, "ab") as handle:
        block = TextSource(seed, 20_000).sql_block("patients")
        change.bytes_changed += handle.write(block[: 256 * KiB])
    folder = os.path.join(root, "small", "added")
    os.makedirs(folder, exist_ok=True)
    rng = np.random.Generator(_bits(seed, 6))
    for number in range(10):
        path = os.path.join(folder, f"new_{number:03d}.json")
        content = random_bytes(_bits(seed, 6, number), int(rng.integers(KiB, 16 * KiB)))
        with open(path, "wb") as handle:
            change.bytes_changed += handle.write(content)
        change.added.append(path)
    return change


def revert_change(change: Change) -> None:
    """Put back the bytes ``apply_change`` replaced (modification times stay new)."""
    for path, offset, old in reversed(change.regions):
        with open(path, "r+b") as handle:
            handle.seek(offset)
            handle.write(old)
    if change.appended:
        path, size = change.appended
        os.truncate(path, size)
    for path in change.added:
        os.unlink(path)
    if change.added:
        shutil.rmtree(os.path.dirname(change.added[0]), ignore_errors=True)


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """Generate a data set from the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", help="where to create the data set (must be empty)")
    parser.add_argument("--size-gb", type=float, default=2.0, help="scale (default 2.0)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="mixed")
    parser.add_argument("--files", type=int, default=None, help="files of an archive profile")
    parser.add_argument(
        "--change", action="store_true", help="apply the 1%% change to an existing data set instead"
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    if args.change:
        change = apply_change(args.directory, args.seed, profile=args.profile, files=args.files)
        print(
            f"changed {change.bytes_changed / 1e6:.1f} MB in {len(change.regions)} regions, "
            f"appended to {change.appended[0] if change.appended else '-'}, "
            f"added {len(change.added)} files"
        )
        return 0
    summary = generate(args.directory, args.size_gb, args.seed, args.profile, args.files)
    for kind, (files, size) in summary.by_kind.items():
        print(f"{kind:>6}: {files:>6} files, {size / 1e9:.3f} GB")
    print(
        f" total: {summary.files:>6} files, {summary.bytes / 1e9:.3f} GB "
        f"in {time.monotonic() - started:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
