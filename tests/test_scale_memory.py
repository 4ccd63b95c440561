"""The commands that walk whole snapshots hold nothing per file: run as processes on a
snapshot of N files and of 4N files, their peak RSS grows by less than a few MiB.

The files' contents come from a few hundred values, so the blobs (and the index) are the
same at both sizes and only the files and directories grow: what is measured is what a
command keeps per file (a listing, a dict per entry: about 1 KiB a file, 70 MiB for the
60,000 more files before ls -R and diff printed as they walked). Packs are 2 MiB, so that
reading one whole pack (check --read-data, copy's pack being filled) stays below the bound.
The tree and the measuring are benchmarks/scale_memory.py's, which does the same at 100,000
and 300,000 different files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import scale_memory as bench

FILES = 20_000
DISTINCT = 500
MiB = 1024 * 1024
GROWTH_BOUND = 8 * MiB  # for 60,000 more files: under 140 bytes a file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setups(tmp_path_factory: pytest.TempPathFactory) -> dict[int, bench.Setup]:
    found = {}
    for files in (FILES, 4 * FILES):
        work = tmp_path_factory.mktemp(f"files{files}")
        found[files] = bench.prepare(work, files, DISTINCT, pack_size=2 * MiB)[0]
    return found


@pytest.mark.parametrize(
    "name",
    ["check", "check --read-data", "ls -R", "diff", "find '*'", "stats", "copy", "forget + prune"],
)
def test_peak_memory_does_not_grow_with_the_files(
    setups: dict[int, bench.Setup], name: str
) -> None:
    peaks = {
        files: bench.run(bench.command_line(setup, name), setup.env).peak
        for files, setup in setups.items()
    }
    growth = peaks[4 * FILES] - peaks[FILES]
    assert growth < GROWTH_BOUND, f"{name}: {peaks} (+{growth / MiB:.1f} MiB)"


def test_check_read_data_holds_little_per_blob(tmp_path: Path) -> None:
    """check --read-data needs each pack's blobs as the index lists them: 49 bytes a blob
    (packed records), not a tuple and a Location per blob (~300 bytes).
    60,000 different files: one blob each, the index still a dict in both runs."""
    setup = bench.prepare(tmp_path, 60_000, pack_size=1 * MiB)[0]
    plain = bench.run(bench.command_line(setup, "check"), setup.env).peak
    reading = bench.run(bench.command_line(setup, "check --read-data"), setup.env).peak
    assert reading - plain < 12 * MiB, (plain, reading)  # 19 MiB before
