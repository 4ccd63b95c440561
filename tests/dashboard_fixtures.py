"""Real platforms for the dashboard tests: two platform files, each backed up (twice) into
its own repository and drilled, by the real commands. One platform has a PostgreSQL
component whose server is not there (non-critical, so the backup is partial and its error is
shown) with a password from the environment: no page may ever show it."""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import PASSPHRASE, init_repository, mini_platform, run_cli

DB_PASSWORD = "dashboard-db-password-0815"
ODD_NAME = b"caf\xe9 <b>&amp;.txt"  # not UTF-8, and markup to escape
ODD_BYTES = b"odd name\n"
FILE_BYTES = random.Random(15).randbytes(5 * 1024 * 1024 + 7)  # several blobs (~1 MiB each)


@dataclass
class Platforms:
    configs: list[Path]
    repos: list[Path]
    original: Path  # a file of the first platform, backed up
    state_dir: Path


def make_platforms(root: Path, monkeypatch: pytest.MonkeyPatch) -> Platforms:
    """Both platforms, backed up twice (the second time by `schedule run`) and drilled."""
    monkeypatch.setenv("DASHBOARD_DB_PASSWORD", DB_PASSWORD)
    monkeypatch.setenv("SAFEHOLD_PASSPHRASE", PASSPHRASE)
    monkeypatch.setenv("XDG_CACHE_HOME", str(root / "xdg-cache"))
    monkeypatch.delenv("SAFEHOLD_CACHE_DIR", raising=False)
    monkeypatch.delenv("SAFEHOLD_REPO", raising=False)
    repos = [init_repository(root / "repo-a"), init_repository(root / "repo-b")]
    first = mini_platform(root / "klink", repos[0], platform="klink")
    original = root / "klink" / "data" / "scan.bin"
    original.write_bytes(FILE_BYTES)
    with open(os.fsencode(original.parent) + b"/" + ODD_NAME, "wb") as handle:
        handle.write(ODD_BYTES)
    second = mini_platform(
        root / "ovena",
        repos[1],
        platform="ovena",
        schedule={"backup": "30 2 * * *", "drill": "0 4 * * 0"},
    )
    document = json.loads(second.read_text())
    document["components"].append(
        {
            "name": "pacsdb",
            "type": "postgres",
            "critical": False,
            "host": "127.0.0.1",
            "port": 9,
            "user": "pacs",
            "password": "${DASHBOARD_DB_PASSWORD}",
            "databases": ["pacs"],
        }
    )
    second.write_text(json.dumps(document))
    state_dir = root / "state"
    for config in (first, second):
        result = run_cli("backup", "--config", config, "--quiet")
        assert result.code in (0, 3), result.err
    # the second backup of each as the scheduler runs it: a job run recorded in the state
    for config in (first, second):
        result = run_cli("schedule", "run", "backup", "--config", config, "--state-dir", state_dir)
        assert result.code in (0, 3), result.err
    assert run_cli("drill", "--config", first, "--quiet").code == 0
    return Platforms([first, second], repos, original, state_dir)


__all__ = [
    "DB_PASSWORD",
    "FILE_BYTES",
    "ODD_BYTES",
    "ODD_NAME",
    "PASSPHRASE",
    "Platforms",
    "make_platforms",
]
