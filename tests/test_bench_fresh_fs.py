"""run.py --fresh-fs: each restore gets a new ext4 file system of its own, and nothing of it
is left afterwards (no mount, no image)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import run

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("mkfs.ext4") or not os.path.exists("/dev/loop-control"),
    reason="needs root, mkfs.ext4 and loop devices",
)


def test_a_fresh_file_system_is_made_mounted_and_removed(tmp_path: Path) -> None:
    base = str(tmp_path / "restore-fs")
    with run.FreshFilesystem(base, 64 * 1024 * 1024) as mounted:
        assert os.path.ismount(mounted)
        assert sorted(os.listdir(mounted)) == ["lost+found"]  # a new file system, empty
        Path(mounted, "r").mkdir()
        Path(mounted, "r", "f").write_bytes(b"x")
    assert not os.path.exists(base) and not os.path.exists(base + ".img")
    mounts = Path("/proc/mounts").read_text().splitlines()
    assert not any(line.split()[1] == base for line in mounts)
