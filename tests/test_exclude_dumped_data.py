"""`exclude_dumped_data: true`: the live data directories of the database servers a platform
dumps are left out of its files components (kept as empty directories), found by their files
in real PostgreSQL and MariaDB data directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from safehold.platform.config import ConfigError, parse_platform
from tests.conftest import run_cli


def _listing(repo: Path, path: str) -> list[str]:
    result = run_cli("ls", "--repo", repo, "-R", f"latest:{path}")
    assert result.code == 0, result.err
    return result.out.split()


@pytest.mark.parametrize("option", [True, False])
def test_live_database_directories_are_kept_empty(
    tmp_path: Path, repo: Path, pg_server, maria_server, option, monkeypatch
):
    """Both servers' real data directories sit below the files component's paths."""
    pg_root, maria_root = pg_server.directory, maria_server.directory
    assert (pg_root / "data" / "PG_VERSION").is_file()
    monkeypatch.setenv("PG_PW", pg_server.password)
    monkeypatch.setenv("MARIA_PW", maria_server.password)
    config = tmp_path / "platform.yaml"
    config.write_text(
        json.dumps(
            {
                "repository": str(repo),
                "platform": "mixed",
                "strategy": "hot",
                "exclude_dumped_data": option,
                "components": [
                    {
                        "name": "pg",
                        **pg_server.component(password="${PG_PW}"),
                        "databases": ["postgres"],
                    },
                    {
                        "name": "maria",
                        **maria_server.component(password="${MARIA_PW}"),
                        "databases": ["mysql"],
                    },
                    {"name": "disk", "type": "files", "paths": [str(pg_root), str(maria_root)]},
                ],
            }
        )
    )
    result = run_cli("backup", "--config", config, "--json")
    assert result.code in (0, 3), result.err
    components = {c["name"]: c["status"] for c in json.loads(result.out)["components"]}
    assert components["disk"] == "ok"
    pg_listing = _listing(repo, f"/disk{pg_root}")
    maria_data = next(p for p in maria_root.iterdir() if (p / "ibdata1").is_file())
    maria_listing = _listing(repo, f"/disk{maria_data.parent}")
    pg_data_files = [p for p in pg_listing if p.startswith(f"/disk{pg_root}/data/")]
    maria_files = [p for p in maria_listing if p.startswith(f"/disk{maria_data}/")]
    assert f"/disk{pg_root}/data" in pg_listing  # the directory itself is kept
    assert f"/disk{pg_root}/log" in pg_listing  # and everything beside it
    if option:
        assert pg_data_files == [] and maria_files == []
    else:
        assert f"/disk{pg_root}/data/PG_VERSION" in pg_data_files
        assert f"/disk{maria_data}/ibdata1" in maria_files


def test_without_a_dumped_server_nothing_is_left_out_and_bad_kinds_are_refused():
    base = {
        "components": [
            {"name": "disk", "type": "files", "paths": ["/srv"]},
            {"name": "app", "type": "sqlite", "path": "/srv/app.db"},
        ],
        "exclude_dumped_data": True,
    }
    platform = parse_platform(json.dumps(base), "p.yaml", {})
    assert platform.component("disk").get("exclude_database_data") == []
    base["components"][0]["exclude_database_data"] = ["sqlite"]
    with pytest.raises(ConfigError, match="'sqlite' has no data directory"):
        parse_platform(json.dumps(base), "p.yaml", {})
