"""The platform file's `copies:`: after each backup its snapshot goes to other repositories."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import PASSPHRASE, init_repository, run_cli


def _platform(tmp_path: Path, repo: Path, copies: list) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    (data / "study.dcm").write_bytes(b"DICM" + bytes(range(256)) * 400)
    path = tmp_path / "platform.yaml"
    path.write_text(
        json.dumps(
            {
                "repository": str(repo),
                "platform": "p",
                "copies": copies,
                "components": [{"name": "images", "type": "files", "paths": [str(data)]}],
            }
        )
    )
    return path


def test_each_backup_is_copied_offsite_with_the_targets_own_key(tmp_path, repo, monkeypatch):
    offsite = init_repository(tmp_path / "offsite", passphrase="offsite secret")
    (tmp_path / "offsite.pass").write_text("offsite secret\n")
    config = _platform(
        tmp_path, repo, [{"to": str(offsite), "passphrase_file": str(tmp_path / "offsite.pass")}]
    )
    result = run_cli("backup", "--config", config)
    assert result.code == 0, result.err
    monkeypatch.setenv("SAFEHOLD_PASSPHRASE", "offsite secret")
    copied = json.loads(run_cli("snapshots", "--repo", offsite, "--json").out)
    assert len(copied) == 1 and copied[0]["platform"] == "p"
    target = tmp_path / "restore"
    data = tmp_path / "data"
    assert (
        run_cli("restore", "--repo", offsite, f"latest:/images{data}", "--target", target).code == 0
    )
    assert (target / "study.dcm").read_bytes() == (data / "study.dcm").read_bytes()
    monkeypatch.setenv("SAFEHOLD_PASSPHRASE", PASSPHRASE)
    assert run_cli("backup", "--config", config).code == 0  # the second copy only adds the new
    monkeypatch.setenv("SAFEHOLD_PASSPHRASE", "offsite secret")
    assert len(json.loads(run_cli("snapshots", "--repo", offsite, "--json").out)) == 2


def test_a_failing_copy_keeps_the_backup_and_says_so(tmp_path, repo, monkeypatch):
    monkeypatch.delenv("SAFEHOLD_TO_PASSPHRASE", raising=False)
    offsite = init_repository(tmp_path / "offsite", passphrase="other")
    config = _platform(tmp_path, repo, [str(offsite)])
    result = run_cli("backup", "--config", config)
    assert result.code == 3
    assert "backup saved, but the copy to" in result.err and "SAFEHOLD_TO_PASSPHRASE" in result.err
    assert len(json.loads(run_cli("snapshots", "--repo", repo, "--json").out)) == 1
