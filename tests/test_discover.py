"""Discovery from docker-compose files: volumes, databases, what it cannot handle, bad files."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from safehold.platform.config import ConfigError, parse_platform
from safehold.platform.discover import discover, interpolate, render
from tests.conftest import run_cli

KLINK = """
name: klink
services:
  database:
    image: mariadb:10.6
    environment:
      MARIADB_ROOT_PASSWORD: ${DB_ROOT_PW}
      MARIADB_DATABASE: ${DB_NAME:-dms}
    volumes:
      - ./data/mariadb:/var/lib/mysql
  kbox:
    image: klinktech/k-box:0.33
    env_file: kbox.env
    volumes:
      - ./storage:/var/www/dms/storage
      - type: volume
        source: cache
        target: /cache
      - /srv/shared:/shared:ro
  engine:
    image: klinktech/k-search-engine:1.0
    volumes: [solr:/opt/solr/data]
  orthanc-db:
    image: postgres:15
    environment: [POSTGRES_USER=orthanc, POSTGRES_DB=orthanc]
    volumes: [pgdata:/var/lib/postgresql/data]
  sessions:
    image: mongo:6
    volumes: [/data/db]
  proxy:
    image: nginx
volumes:
  cache: {}
  solr: {name: shared-solr}
  pgdata: {}
"""


@pytest.fixture
def compose(tmp_path: Path) -> Path:
    path = tmp_path / "docker-compose.yml"
    path.write_text(KLINK)
    (tmp_path / ".env").write_text("DB_ROOT_PW=rootpw\n")
    (tmp_path / "kbox.env").write_text("APP_ENV=production\n")
    return path


def test_volumes_databases_and_notes(compose: Path):
    found = discover(str(compose), environment={})
    base = str(compose.parent.resolve())
    components = {c["name"]: c for c in found.document["components"]}
    assert components["kbox"]["paths"] == sorted(
        ["/srv/shared", f"{base}/storage", "/var/lib/docker/volumes/klink_cache/_data"]
    )
    assert components["engine"]["paths"] == ["/var/lib/docker/volumes/shared-solr/_data"]
    assert components["database"] == {
        "name": "database",
        "type": "mysql",
        "via": {"exec": "compose", "service": "database"},
        "user": "root",
        "password": "${DB_ROOT_PW}",
        "databases": ["dms"],
    }
    assert components["orthanc-db"]["type"] == "postgres"
    assert components["orthanc-db"]["user"] == "orthanc"
    assert "proxy" not in components and "sessions" not in components
    assert found.document["services"] == {
        "control": "compose",
        "project_dir": base,
        "stop": ["kbox", "engine"],
    }
    notes = "\n".join(found.notes)
    assert "anonymous volume at /data/db" in notes
    assert "MongoDB" in notes
    assert "the database is dumped instead" in notes


def test_the_proposal_is_a_valid_platform_file(compose: Path, tmp_path: Path):
    output = tmp_path / "platform.yaml"
    result = run_cli("discover", compose, "-o", output)
    assert result.code == 0
    assert "note:" in result.err and "MongoDB" in result.err
    platform = parse_platform(output.read_text(), str(output), {})
    assert platform.component("database").password == "rootpw"  # from the project's .env
    assert "MongoDB" in output.read_text()  # the notes are in the file as comments


def test_interpolation_rules():
    env = {"A": "1", "EMPTY": ""}
    assert interpolate("$A ${A} ${B:-d} ${EMPTY:-d} ${EMPTY-d} $$A", env) == "1 1 d d  $A"
    with pytest.raises(ConfigError, match="B is required: set it"):
        interpolate("${B:?set it}", env)


def test_malformed_compose_files_get_a_clear_error(tmp_path: Path):
    duplicated = tmp_path / "dup.yml"
    duplicated.write_text(
        textwrap.dedent("""
        services:
          a: {image: x}
        services:
          b: {image: y}
    """)
    )
    result = run_cli("discover", duplicated)
    assert result.code == 21
    assert "duplicated key 'services'" in result.err and "line" in result.err
    not_compose = tmp_path / "list.yml"
    not_compose.write_text("- a\n- b\n")
    assert "no `services:` mapping" in run_cli("discover", not_compose).err
    assert "cannot read" in run_cli("discover", tmp_path / "missing.yml").err


def test_render_starts_with_comments(compose: Path):
    text = render(discover(str(compose), environment={}), "docker-compose.yml")
    assert text.splitlines()[0].startswith("# safehold platform file proposed")
