"""A repository written by safehold 0.1 (format 1) stays readable by every later version.

tests/data/repo-v1 was written once with `safehold init` + `safehold backup` of a small tree
(/tmp/fx/src: docs/readme.txt, data.bin, link -> docs/readme.txt), passphrase "format-v1".
It must never be regenerated: it is the proof that old repositories still restore.
"""

import hashlib
import os
import shutil
from pathlib import Path

from safehold.cli.main import main

DATA = Path(__file__).parent / "data"


def test_format_1_repository_restores_bit_identical(tmp_path, monkeypatch, capsys):
    repository = tmp_path / "repo-v1"
    shutil.copytree(DATA / "repo-v1", repository)  # a copy: the test must not touch the fixture
    monkeypatch.setenv("SAFEHOLD_PASSPHRASE", "format-v1")
    target = tmp_path / "restore"

    assert (
        main(
            [
                "restore",
                "--repo",
                str(repository),
                "latest:/tmp/fx/src",
                "--target",
                str(target),
                "-q",
            ]
        )
        == 0
    )
    assert main(["check", "--repo", str(repository), "--read-data", "-q"]) == 0

    for line in (DATA / "repo-v1.sha256").read_text().splitlines():
        digest, name = line.split()
        assert hashlib.sha256((target / name).read_bytes()).hexdigest() == digest
    assert os.readlink(target / "link") == "docs/readme.txt"
