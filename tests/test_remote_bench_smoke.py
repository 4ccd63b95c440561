"""benchmarks/remote.py runs end to end on a tiny data set (one round, both backends) and
reports a ratio for every phase: the benchmark itself is not timed here."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))


@pytest.mark.skipif(shutil.which("restic") is None, reason="restic is not installed")
def test_remote_benchmark_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import remote

    out = tmp_path / "result.json"
    argv = ["--size-gb", "0.003", "--rounds", "1", "--workdir", str(tmp_path / "work")]
    argv += ["--quiet-threshold", "1", "--json-out", str(out)]
    try:
        code = remote.main(argv)
    except remote.servers.Unavailable as reason:
        pytest.skip(str(reason))
    assert code == 0
    rows = json.loads(out.read_text())["summary"]
    assert {(row["backend"], row["phase"]) for row in rows} == {
        (backend, phase) for backend in ("sftp", "s3") for phase in remote.TITLES.values()
    }
    assert all(row["ratio"] > 0 for row in rows)
    assert "restic / safehold" in capsys.readouterr().out
