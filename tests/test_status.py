"""safehold report and metrics: the pure status functions with an injected clock, then the
commands on a real repository made by platform backups (files + SQLite) and a drill."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

import safehold.cli.status
from safehold.ops.status import (
    Policy,
    escape_label,
    metrics_text,
    parse_interval,
    platform_status,
    repository_totals,
)
from tests.conftest import mini_platform, run_cli

DAY = 86400.0
NOW = 1_750_000_000.0
DEFAULT = Policy()


def snap(age: float, status: str = "ok", *, components=None, platform="p", size=1000, ident=""):
    components = components or [{"name": "db", "type": "sqlite", "status": "ok", "bytes": size}]
    return {
        "id": ident or f"{int(age):064x}",
        "time": NOW - age,
        "platform": platform,
        "status": status,
        "downtime": {"stopped": ["app"], "started": ["app"], "seconds": 2.5},
        "components": [{"duration": 1.0, "error": None} | c for c in components],
        "summary": {"duration": 3.0, "bytes_total": size, "bytes_added_stored": size // 4},
    }


def drill(age: float, status: str = "passed", platform: str = "p") -> dict:
    return {
        "id": "d" * 64,
        "time": NOW - age,
        "platform": platform,
        "status": status,
        "rto_seconds": 12.5,
        "snapshot": "x",
        "components": [{"name": "db", "status": status, "restore_seconds": 12.5}],
    }


def kinds(snapshots, drills, policy=DEFAULT) -> list[tuple[str, str | None]]:
    status = platform_status("p", snapshots, drills, NOW, policy)
    return [(w["kind"], w["component"]) for w in status["warnings"]]


FAILED_DB = [{"name": "db", "type": "sqlite", "status": "failed", "bytes": 0, "error": "boom"}]


@pytest.mark.parametrize(
    ("snapshots", "drills", "expected"),
    [
        ([snap(3600)], [drill(3600)], []),
        ([], [], [("no-backup", None)]),
        ([snap(3600)], [], [("no-drill", None)]),
        ([snap(1.5 * DAY)], [drill(DAY)], []),  # within 2x the expected interval
        ([snap(2.5 * DAY)], [drill(DAY)], [("stale", None)]),
        ([snap(3600)], [drill(8 * DAY)], [("drill-old", None)]),
        ([snap(3600)], [drill(3600, "failed")], [("drill-failed", None)]),
        (
            [snap(3600, "failed", components=FAILED_DB)],
            [drill(60)],
            [("no-backup", None), ("failing", "db")],
        ),
        (
            [snap(3 * 3600), snap(2 * 3600), snap(3600, "partial", components=FAILED_DB)],
            [drill(60)],
            [("failing", "db")],
        ),
        ([snap(-3600)], [drill(60)], [("clock", None)]),
        ([snap(-60)], [drill(60)], []),  # a few seconds of skew are tolerated
        ([snap(60)], [drill(-2 * DAY)], [("clock", None)]),
        ([snap(60, platform="other")], [drill(60, platform="other")], [("no-backup", None)]),
    ],
)
def test_warnings(snapshots, drills, expected):
    assert kinds(snapshots, drills) == expected


def test_a_component_that_keeps_failing_is_named_with_its_error():
    snapshots = [snap(h * 3600, "partial", components=FAILED_DB) for h in (4, 3, 2)]
    status = platform_status("p", snapshots, [drill(60)], NOW, Policy(expect_every=DAY))
    failing = [w for w in status["warnings"] if w["kind"] == "failing"]
    assert len(failing) == 1
    assert "3 of the last 3" in failing[0]["message"]
    assert "keeps failing" in failing[0]["message"] and "boom" in failing[0]["message"]
    # only the component is stale, the platform has recent good (partial) backups
    assert ("stale", "db") in [(w["kind"], w["component"]) for w in status["warnings"]]
    # older failures fall out of the window
    recovered = snapshots + [snap(h * 60, components=None) for h in (3, 2, 1)]
    assert kinds(recovered, [drill(60)]) == []


def test_the_expected_interval_is_a_policy():
    assert kinds([snap(5 * 3600)], [drill(60)], Policy(expect_every=2 * 3600)) == [("stale", None)]
    assert kinds([snap(3600)], [drill(2 * DAY)], Policy(drill_every=DAY)) == [("drill-old", None)]


def test_status_values_growth_downtime_and_drill():
    snapshots = [snap(2 * DAY, size=1000), snap(DAY, size=1500), snap(3600, "failed", size=10)]
    status = platform_status("p", snapshots, [drill(7200)], NOW, Policy())
    assert status["snapshots"] == 3
    assert status["last_backup"]["status"] == "failed"
    assert status["last_backup"]["downtime_seconds"] == 2.5
    assert status["last_good"]["age_seconds"] == DAY
    assert status["last_good"]["growth"] == {"bytes": 500, "percent": 50.0}
    (db,) = status["components"]
    assert db["last_good"]["age_seconds"] == 3600  # the component itself was ok each time
    assert db["last_good"]["growth"] == {
        "bytes": 10 - 1500,
        "percent": pytest.approx(-99.333, 1e-3),
    }
    assert status["drill"] == {
        "id": "d" * 64,
        "time": NOW - 7200,
        "age_seconds": 7200,
        "status": "passed",
        "rto_seconds": 12.5,
        "snapshot": "x",
    }
    assert db["drill"] == {"status": "passed", "restore_seconds": 12.5}


@pytest.mark.parametrize(
    ("snapshots", "ratio"),
    [([], None), ([snap(1, size=1000)], 4.0), ([snap(2, size=1000), snap(1, size=3000)], 4.0)],
)
def test_dedup_ratio(snapshots, ratio):
    assert repository_totals(snapshots)["dedup_ratio"] == ratio


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("30min", 1800),
        ("12h", 43200),
        ("1d", DAY),
        ("2w", 14 * DAY),
        ("1.5d", 1.5 * DAY),
    ],
)
def test_parse_interval(text, seconds):
    assert parse_interval(text) == seconds


@pytest.mark.parametrize("text", ["", "1", "1m", "0d", "-1d", "d", "1 day"])
def test_parse_interval_refuses(text):
    with pytest.raises(ValueError):
        parse_interval(text)


# ------------------------------------------------------------------ the exposition format

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\\\|\\"|\\n)*"'
_VALUE = r"(?:[-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|Inf)|NaN)"
_SAMPLE = re.compile(rf"({_NAME})(?:\{{(?:{_LABEL}(?:,{_LABEL})*)?\}})? {_VALUE}")


def parse_exposition(text: str) -> dict[str, list[str]]:
    """A strict check of the text format: every line is HELP, TYPE or a sample of the family
    announced last; each family once. Returns family -> sample lines."""
    assert text.endswith("\n")
    families: dict[str, list[str]] = {}
    current = None
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name = line.split(" ")[2]
            assert re.fullmatch(_NAME, name) and name not in families, line
            families[name], current = [], None
        elif line.startswith("# TYPE "):
            _hash, _type, name, kind = line.split(" ")
            assert name in families and kind == "gauge", line
            current = name
        else:
            match = _SAMPLE.fullmatch(line)
            assert match and match.group(1) == current, line
            families[current].append(line)
    return families


def parse(text: str) -> dict[str, list[str]]:
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError:
        return parse_exposition(text)
    families = {f.name: [str(s) for s in f.samples] for f in text_string_to_metric_families(text)}
    parse_exposition(text)
    return families


def test_metrics_text_escapes_labels_and_parses():
    name = 'we"ird\\name\nx'
    status = platform_status(
        name, [snap(60, platform=name)], [drill(30, platform=name)], NOW, Policy()
    )
    text = metrics_text([status], repository_totals([snap(60)]))
    families = parse(text)
    assert 'platform="we\\"ird\\\\name\\nx"' in text
    assert len(families["safehold_platform_last_success_age_seconds"]) == 1
    assert "safehold_repository_dedup_ratio" in families
    assert escape_label('a"b') == 'a\\"b'


def test_metrics_text_of_a_platform_without_backups():
    status = platform_status("p", [], [], NOW, Policy())
    families = parse(metrics_text([status], repository_totals([])))
    assert "safehold_platform_last_success_age_seconds" not in families
    assert families["safehold_platform_snapshots"] == [
        'safehold_platform_snapshots{platform="p"} 0'
    ]
    assert families["safehold_warnings"] == ['safehold_warnings{platform="p"} 1']


# ------------------------------------------------------------------ the commands


def _backup(config: Path) -> None:
    result = run_cli("backup", "--config", config, "--json")
    assert result.code == 0, result.err


def test_report_and_metrics_on_a_real_repository(tmp_path, repo, monkeypatch):
    config = mini_platform(tmp_path / "mini", repo)
    _backup(config)
    (tmp_path / "mini" / "data" / "b.txt").write_text("more\n" * 5000)
    _backup(config)

    result = run_cli("report", "--config", config, "--json")
    assert result.code == 3, result.err  # never drilled
    document = result.json()
    (status,) = document["platforms"]
    assert [w["kind"] for w in status["warnings"]] == ["no-drill"]
    assert "never drilled" in result.err
    assert status["last_good"]["growth"]["bytes"] > 0
    assert {c["name"] for c in status["components"]} == {"data", "appdb"}
    assert status["last_backup"]["stopped"] == ["services"]  # a cold backup records downtime
    assert status["last_backup"]["downtime_seconds"] > 0

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    drilled = run_cli("drill", "--config", config, "--json", "--scratch", scratch)
    assert drilled.code == 0, drilled.err

    result = run_cli("report", "--config", config)
    assert result.code == 0, result.err
    assert "platform mini: 2 snapshot(s)" in result.out
    assert "passed" in result.out and "no warnings" in result.out

    real = time.time()
    monkeypatch.setattr(safehold.cli.status, "clock", lambda: real + 3 * DAY)
    result = run_cli("report", "--repo", repo, "--json")  # all platforms, three days later
    assert result.code == 3
    assert [w["kind"] for w in result.json()["platforms"][0]["warnings"]] == ["stale"]
    result = run_cli("report", "--repo", repo, "--expect-every", "2d", "--drill-every", "2d")
    assert result.code == 3 and "last drill of mini is 3d ago" in result.err
    monkeypatch.setattr(safehold.cli.status, "clock", lambda: real - DAY)
    result = run_cli("report", "--repo", repo)
    assert result.code == 3 and "a clock looks wrong" in result.err
    monkeypatch.setattr(safehold.cli.status, "clock", time.time)

    output = tmp_path / "textfile" / "safehold.prom"
    output.parent.mkdir()
    result = run_cli("metrics", "--config", config, "-o", output)
    assert result.code == 0, result.err
    assert result.out == ""
    assert [p.name for p in output.parent.iterdir()] == ["safehold.prom"]  # no temp file left
    families = parse(output.read_text())
    assert families["safehold_drill_last_status"] == [
        'safehold_drill_last_status{platform="mini"} 1'
    ]
    ages = families["safehold_component_last_success_age_seconds"]
    assert len(ages) == 2 and all('platform="mini",component=' in line for line in ages)
    assert float(families["safehold_repository_dedup_ratio"][0].split()[-1]) > 0
    printed = run_cli("metrics", "--repo", repo)
    assert printed.code == 0 and printed.out.startswith("# HELP safehold_")


def test_report_usage_errors(tmp_path, repo):
    assert run_cli("report", "--repo", repo, "--expect-every", "1m").code == 2
    result = run_cli("report", "--repo", repo)
    assert result.code == 2 and "no platform snapshots" in result.err
