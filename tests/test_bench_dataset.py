"""The benchmarks' imaging-archive data sets: deterministic, shaped as described, and the
"1 % change" undone exactly (benchmark rounds rely on all three)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import dataset


def _contents(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("profile", ["small", "dicom"])
def test_archive_profiles(tmp_path: Path, profile: str) -> None:
    summary = dataset.generate(str(tmp_path / "a"), profile=profile, files=450, seed=3)
    again = dataset.generate(str(tmp_path / "b"), profile=profile, files=450, seed=3)
    first = _contents(tmp_path / "a")
    assert first == _contents(tmp_path / "b") and summary.files == again.files == 450
    low, high, _ = dataset.PROFILES[profile]
    assert all(low <= len(data) <= high and data[128:132] == b"DICM" for data in first.values())
    studies = {name.split("/")[0] for name in first}
    assert len(studies) == 2 and all(name.endswith(".dcm") for name in first)  # 100 per series
    change = dataset.apply_change(str(tmp_path / "a"), 3, profile=profile, files=450)
    changed = _contents(tmp_path / "a")
    differing = [name for name in first if first[name] != changed[name]]
    assert len(differing) == 4  # every hundredth instance: 50, 150, 250, 350
    assert all(len(first[name]) == len(changed[name]) for name in first)
    dataset.revert_change(change)
    assert _contents(tmp_path / "a") == first
