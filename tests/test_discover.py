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
        "password_env": "MARIADB_ROOT_PASSWORD",  # inside the container: never copied
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
    assert platform.component("database").get("password_env") == "MARIADB_ROOT_PASSWORD"
    assert "rootpw" not in output.read_text()
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


# --- compose files shaped like the real ones (issue 13) ----------------------------------------

# The dcm4chee-arc stack as dcm4che's guide composes it (ldap, db, arc).
DCM4CHEE = """
services:
  ldap:
    image: dcm4che/slapd-dcm4chee:2.6.5-31.2
    volumes:
      - /var/local/dcm4chee-arc/ldap:/var/lib/openldap/openldap-data
      - /var/local/dcm4chee-arc/slapd.d:/etc/openldap/slapd.d
  db:
    image: dcm4che/postgres-dcm4chee:15.4-31
    environment:
      POSTGRES_DB: pacsdb
      POSTGRES_USER: pacs
      POSTGRES_PASSWORD: pacs
    volumes:
      - /etc/localtime:/etc/localtime:ro
      - /etc/timezone:/etc/timezone:ro
      - /var/local/dcm4chee-arc/db:/var/lib/postgresql/data
  arc:
    image: dcm4che/dcm4chee-arc-psql:5.31.2
    environment:
      POSTGRES_HOST: db
      WILDFLY_CHOWN: /opt/wildfly/standalone /storage
    volumes:
      - /etc/localtime:/etc/localtime:ro
      - /etc/timezone:/etc/timezone:ro
      - /var/local/dcm4chee-arc/wildfly:/opt/wildfly/standalone
      - /var/local/dcm4chee-arc/storage:/storage
  exporter:
    image: quay.io/prometheuscommunity/postgres-exporter
"""


def test_dcm4chee_database_image_slapd_and_host_mounts(tmp_path: Path):
    (tmp_path / "docker-compose.yml").write_text(DCM4CHEE)
    found = discover(str(tmp_path / "docker-compose.yml"), environment={})
    components = {c["name"]: c for c in found.document["components"]}
    assert components["db"]["type"] == "postgres"  # dcm4che/postgres-dcm4chee is PostgreSQL
    assert (components["db"]["user"], components["db"]["databases"]) == ("pacs", ["pacsdb"])
    assert "password" not in components["db"]  # the socket in the container is trusted
    assert components["arc"]["paths"] == [
        "/var/local/dcm4chee-arc/storage",
        "/var/local/dcm4chee-arc/wildfly",
    ]
    every_path = [p for c in components.values() for p in c.get("paths", [])]
    assert not any(p.startswith("/etc/") for p in every_path)  # host files are not data
    assert "exporter" not in components
    notes = "\n".join(found.notes)
    assert "service ldap: LDAP (slapd)" in notes and "slapcat" in notes
    assert "/var/local/dcm4chee-arc/db" in notes  # left to the dump, and said so


# Nextcloud's example (app and cron share one volume; Redis), with the project name in .env.
NEXTCLOUD = """
services:
  db:
    image: mariadb:10.11
    environment:
      - MYSQL_ROOT_PASSWORD=literal-root-secret
      - MYSQL_DATABASE=nextcloud
    volumes: [db:/var/lib/mysql]
  redis:
    image: redis:alpine
  app:
    image: nextcloud:fpm-alpine
    volumes: [nextcloud:/var/www/html]
  web:
    image: nginx
    volumes: [nextcloud:/var/www/html:ro]
  cron:
    image: nextcloud:fpm-alpine
    volumes: [nextcloud:/var/www/html]
    entrypoint: /cron.sh
volumes:
  db:
  nextcloud:
"""


def test_shared_volume_once_project_name_from_env_literal_password_pointed_at(tmp_path: Path):
    (tmp_path / "docker-compose.yml").write_text(NEXTCLOUD)
    (tmp_path / ".env").write_text("COMPOSE_PROJECT_NAME=cloud\n")
    output = tmp_path / "platform.yaml"
    result = run_cli("discover", tmp_path / "docker-compose.yml", "-o", output)
    assert result.code == 0, result.err
    text = output.read_text()
    assert "literal-root-secret" not in text
    found = discover(str(tmp_path / "docker-compose.yml"), environment={})
    components = {c["name"]: c for c in found.document["components"]}
    assert components["app"]["paths"] == ["/var/lib/docker/volumes/cloud_nextcloud/_data"]
    assert "web" not in components and "cron" not in components  # listed once
    assert found.document["services"]["stop"] == ["app", "web", "cron"]
    assert components["db"]["password_env"] == "MYSQL_ROOT_PASSWORD"
    notes = "\n".join(found.notes)
    assert (
        "service web: /var/lib/docker/volumes/cloud_nextcloud/_data is also service app's" in notes
    )
    assert "service redis: Redis" in notes
    assert "cloud_db" in notes  # the database's volume, left to the dump


def test_valkey_is_noted_and_minio_literal_credentials_are_pointed_at(tmp_path: Path):
    (tmp_path / "docker-compose.yml").write_text(
        textwrap.dedent("""\
            services:
              redis:
                image: docker.io/valkey/valkey:8-bookworm
              minio:
                image: minio/minio
                environment: {MINIO_ROOT_USER: admin, MINIO_ROOT_PASSWORD: literal-minio-secret}
            """)
    )
    found = discover(str(tmp_path / "docker-compose.yml"), environment={})
    notes = "\n".join(found.notes)
    assert "service redis: Valkey" in notes
    assert "MINIO_ROOT_USER and MINIO_ROOT_PASSWORD written in the compose file itself" in notes
    assert "literal-minio-secret" not in notes + str(found.document)


def test_k_box_compose_file_passwords_stay_in_the_container():
    fixture = Path(__file__).parent / "fixtures" / "kbox" / "docker-compose.yml"
    found = discover(str(fixture), environment={})
    database = next(c for c in found.document["components"] if c["type"] == "mysql")
    assert database["password_env"] == "MYSQL_ROOT_PASSWORD" and "password" not in database
    assert database["databases"] == ["dms"]


OVENA_UNFILLED = """
services:
  orthanc:
    image: orthancteam/orthanc:24.7.3
    container_name: $<PROJECT_NAME>-orthanc
    depends_on: [$<DATABASE_DOCKER_IMAGE>]
  $<DATABASE_DOCKER_IMAGE>:
    image: postgres:15
    environment:
      POSTGRES_USER: "$<DATABASE_USERNAME>"
"""


def test_unfilled_placeholders_are_rejected_as_compose_rejects_them(tmp_path: Path):
    path = tmp_path / "docker-compose.yml"
    path.write_text(OVENA_UNFILLED)
    result = run_cli("discover", path)
    assert result.code != 0 and "$<DATABASE_DOCKER_IMAGE>" in result.err
    assert "unfilled placeholder" in result.err
    path.write_text(OVENA_UNFILLED.replace("$<DATABASE_DOCKER_IMAGE>", "database"))
    with pytest.raises(
        ConfigError, match="invalid interpolation in services.orthanc.container_name"
    ):
        discover(str(path), environment={})
    assert interpolate("cost: $$5", {}) == "cost: $5"


def test_orthanc_setup_sample_with_its_postgresql_index():
    fixture = Path(__file__).parent / "fixtures/orthanc-setup-samples/postgresql/docker-compose.yml"
    found = discover(str(fixture), environment={})
    components = {c["name"]: c for c in found.document["components"]}
    assert components["orthanc"] == {
        "name": "orthanc",
        "type": "files",
        "paths": ["/var/lib/docker/volumes/postgresql_orthanc-storage/_data"],
    }
    for index in ("orthanc-index", "orthanc-index-b"):
        assert components[index]["type"] == "postgres"
        assert (components[index]["user"], components[index]["databases"]) == (
            "postgres",
            ["postgres"],
        )
        assert "password" not in components[index] and "password_env" not in components[index]
    assert found.document["services"]["stop"] == ["orthanc"]
    assert "postgresql_orthanc-index" in "\n".join(found.notes)  # left to the dump
