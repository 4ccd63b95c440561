"""No passphrase or password reaches another component's process, a log, a snapshot or a
report: children get a minimal environment, and every known secret is masked in every
captured output."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import PASSPHRASE, run_cli

from safehold.secrecy import child_env, mask, remember

LEAKY = "leaky-password-4f9a1c"
OTHER = "other-password-77be20"


@pytest.fixture
def leaky_platform(repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two command components; the first prints its whole environment (to a file and to
    stderr) and fails."""
    monkeypatch.setenv("LEAKY_PW", LEAKY)
    monkeypatch.setenv("OTHER_PW", OTHER)
    monkeypatch.setenv("SAFEHOLD_TEST_UNRELATED", "not for children")
    seen = tmp_path / "seen-env"
    config = {
        "repository": str(repo),
        "platform": "leaky",
        "strategy": "hot",
        "components": [
            {
                "name": "leaky",
                "type": "command",
                "critical": False,
                "password": "${LEAKY_PW}",
                "backup": f"env > {seen}; env >&2; echo leaked {LEAKY} >&2; exit 3",
                "restore": "cat >/dev/null",
            },
            {
                "name": "other",
                "type": "command",
                "password": "${OTHER_PW}",
                "backup": "echo dump",
                "restore": "cat >/dev/null",
            },
        ],
    }
    path = tmp_path / "leaky.yaml"
    path.write_text(json.dumps(config))
    return path


def test_children_get_a_minimal_environment_and_no_other_secret(
    leaky_platform: Path, tmp_path: Path
) -> None:
    result = run_cli("backup", "--config", leaky_platform)
    assert result.code == 3, result.err  # a non-critical component failed
    environment = dict(
        line.split("=", 1)
        for line in (tmp_path / "seen-env").read_text().splitlines()
        if "=" in line
    )
    assert "SAFEHOLD_PASSPHRASE" not in environment
    assert "OTHER_PW" not in environment and OTHER not in environment.values()
    assert "LEAKY_PW" not in environment  # its own secret arrives only as SAFEHOLD_PASSWORD
    assert environment["SAFEHOLD_PASSWORD"] == LEAKY
    assert "SAFEHOLD_TEST_UNRELATED" not in environment
    assert environment["PATH"] == os.environ["PATH"]


def test_no_secret_in_stderr_json_logs_snapshots_or_reports(leaky_platform: Path) -> None:
    outputs = []
    for args in (
        ("backup", "--config", leaky_platform),
        ("--log-json", "backup", "--config", leaky_platform),
        ("snapshots", "--config", leaky_platform, "--json"),
        ("report", "--config", leaky_platform, "--json"),
    ):
        result = run_cli(*args)
        outputs.append(result.out + result.err)
    assert "leaked ***" in outputs[0]  # the failure is reported, masked
    for text in outputs:
        for secret in (PASSPHRASE, LEAKY, OTHER):
            assert secret not in text


def test_mask_hides_every_remembered_secret_longest_first() -> None:
    remember("abc-secret", b"abc-secret-longer", "xy")  # "xy": too short to mask anything
    assert mask("a abc-secret-longer b abc-secret c xy") == "a *** b *** c xy"


def test_child_env_passes_on_only_what_programs_need(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFEHOLD_PASSPHRASE", "p")
    monkeypatch.setenv("PGPASSWORD", "p")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "p")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    monkeypatch.setenv("SSH_AUTH_SOCK", "/run/agent")
    environment = child_env({"EXTRA": "1"})
    assert {"SAFEHOLD_PASSPHRASE", "PGPASSWORD", "AWS_SECRET_ACCESS_KEY"}.isdisjoint(environment)
    assert environment["LC_ALL"] == "C.UTF-8" and environment["SSH_AUTH_SOCK"] == "/run/agent"
    assert environment["EXTRA"] == "1"
