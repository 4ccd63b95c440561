"""Each preset's facts checked against files derived from the real project
(tests/fixtures/<platform>/, each naming the upstream file it mirrors)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from safehold.archive.excludes import Excludes
from safehold.platform.config import parse_platform

FIXTURES = Path(__file__).parent / "fixtures"
PRESETS = Path(__file__).parent.parent / "safehold" / "platform" / "presets"


def _preset(name: str) -> dict:
    return yaml.safe_load((PRESETS / f"{name}.yaml").read_text())


def _components(document: dict) -> dict[str, dict]:
    return {c["name"]: c for c in document["components"]}


def _cluster(name: str) -> list[dict]:
    return yaml.safe_load((FIXTURES / name / "cluster.yaml").read_text())["items"]


def _env(container: dict) -> dict[str, object]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.mark.parametrize("name", ["kaapana", "klink", "ovena", "chipster"])
def test_presets_name_real_keys_and_parse(name: str):
    text = (PRESETS / f"{name}.yaml").read_text()
    assert "schedule issue" not in text and "OrthancStorage" not in text
    parse_platform(text, f"{name}.yaml", {"MINIO_PASSWORD": "x"})


# --- Ovena ------------------------------------------------------------------------------------


def test_ovena_preset_matches_ovenas_compose_file():
    preset, compose = (
        _preset("ovena"),
        yaml.safe_load((FIXTURES / "ovena/docker-compose.yml").read_text()),
    )
    index = json.loads((FIXTURES / "ovena/postgresql.json").read_text())["PostgreSQL"]
    services = compose["services"]
    components = _components(preset)
    database = components["database"]
    service = services[database["via"]["service"]]
    assert service["image"].startswith("postgres:")
    assert database["user"] == service["environment"]["POSTGRES_USER"] == index["Username"]
    assert database["databases"] == [index["Database"]]
    assert index["Host"] == database["via"]["service"]
    assert "password" not in database  # dumped inside the container over its trusted socket
    # Orthanc's StorageDirectory (/var/lib/orthanc/db in the orthancteam image) on the host
    storage = [
        v.split(":")[0] for v in services["orthanc"]["volumes"] if ":/var/lib/orthanc/db" in v
    ]
    assert components["dicom"]["paths"] == storage == ["/var/lib/docker/volumes/ovena/orthanc/data"]
    # PostgreSQL's own files are not copied: the dump is their consistent copy
    live = [v.split(":")[0] for v in service["volumes"] if v.endswith(":/var/lib/postgresql/data")]
    copied = [p for c in components.values() for p in c.get("paths", [])]
    assert live and not any(path.startswith(tuple(copied)) for path in live)
    env = dict(
        line.replace(" ", "").split("=", 1)
        for line in (FIXTURES / "ovena/dot-env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert (
        preset["services"]["project_dir"] == env["OVENA_CONFIG"] == components["config"]["paths"][0]
    )
    assert preset["services"]["compose_command"] == "docker-compose"
    assert preset["services"]["stop"] == ["orthanc"] and "orthanc" in services


# --- Kaapana ----------------------------------------------------------------------------------


def test_kaapana_preset_matches_its_charts():
    preset, items = _preset("kaapana"), _cluster("kaapana")
    deployments = {
        (i["metadata"]["namespace"], i["metadata"]["name"]): i
        for i in items
        if i["kind"] == "Deployment"
    }
    databases = {
        key: d
        for key, d in deployments.items()
        if "postgres" in d["spec"]["template"]["spec"]["containers"][0]["image"]
    }
    assert len(databases) == 9
    assert preset["services"]["kubectl_command"] == "microk8s.kubectl"
    for stop in preset["services"]["stop"]:
        kind, name = stop.split("/")
        assert kind == "deployment" and (preset["services"]["namespace"], name) in deployments
    covered = set()
    for component in preset["components"]:
        if component["type"] != "postgres":
            continue
        via = component["via"]
        kind, name = via["pod"].split("/")
        assert kind == "deploy"
        deployment = databases[(via["namespace"], name)]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["name"] == via["container"]
        env = _env(container)
        assert component["user"] == env["POSTGRES_USER"], name
        assert component["databases"] == [env["POSTGRES_DB"]], name
        covered.add((via["namespace"], name))
    assert covered == set(databases), "a database Deployment has no dump component"
    assert ("services", "airflow-database") in covered and ("admin", "keycloak-database") in covered

    # The file copy holds the DICOM (slow) and the other data, but not live PostgreSQL files.
    (files,) = [c for c in preset["components"] if c["type"] == "files"]
    excludes = Excludes(files["exclude"])
    claims = {
        (i["spec"]["claimRef"]["namespace"], i["spec"]["claimRef"]["name"]): i["spec"]["hostPath"][
            "path"
        ]
        for i in items
        if i["kind"] == "PersistentVolume"
    }
    for key, deployment in deployments.items():
        spec = deployment["spec"]["template"]["spec"]
        claim_of = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"]}
        for mount in spec["containers"][0]["volumeMounts"]:
            directory = claims[(key[0], claim_of[mount["name"]])]
            assert directory.startswith(tuple(files["paths"])), directory
            path = directory + ("/" + mount["subPath"] if mount.get("subPath") else "")
            skipped = excludes.excluded(path.encode(), path.rsplit("/", 1)[1].encode())
            assert skipped == (key in databases), (key, path)


# --- Chipster ---------------------------------------------------------------------------------


def test_chipster_preset_matches_its_helm_chart():
    preset, items = _preset("chipster"), _cluster("chipster")
    values = yaml.safe_load((FIXTURES / "chipster/values.yaml").read_text())
    sets = {i["metadata"]["name"]: i for i in items if i["kind"] == "StatefulSet"}
    dumps = [c for c in preset["components"] if c["type"] == "postgres"]
    assert {c["databases"][0] for c in dumps} == {d["dbName"] for d in values["databases"].values()}
    for component in dumps:
        pod = component["via"]["pod"]
        statefulset = sets[pod.removesuffix("-0")]
        (container,) = statefulset["spec"]["template"]["spec"]["containers"]
        env = _env(container)
        assert env["POSTGRES_INITDB_ARGS"] == "--auth=scram-sha-256"  # a password is needed
        secret = env[component["password_env"]]["secretKeyRef"]
        assert secret == {"key": "postgres-password", "name": pod.removesuffix("-0")}
        assert component["databases"] == [env["POSTGRES_DB"]]
        assert component["via"]["container"] == container["name"]
        assert component["user"] == "postgres"
    storage = _components(preset)["file-storage"]
    (container,) = sets["file-storage"]["spec"]["template"]["spec"]["containers"]
    mount = container["volumeMounts"][0]["mountPath"]
    assert storage["via"]["container"] == container["name"]
    assert f"-C {mount} " in storage["backup"] and f"-C {mount} " in storage["restore"]
    assert "vacuumlo" in preset["hooks"]["before_backup"][0]


# --- K-Link / K-Box ---------------------------------------------------------------------------


def test_klink_preset_matches_the_k_box_compose_file():
    preset = _preset("klink")
    compose = yaml.safe_load((FIXTURES / "kbox/docker-compose.yml").read_text())["services"]
    base = preset["services"]["project_dir"]
    assert base == "/opt/k-box"
    components = _components(preset)
    database = components["database"]
    service = compose[database["via"]["service"]]
    assert service["image"].startswith("mariadb:")
    assert database["databases"] == [service["environment"]["MYSQL_DATABASE"]]
    assert database["password_env"] in service["environment"]  # written in the file itself
    assert "env_file" not in preset and "password" not in database
    mounts = {
        target: source.replace("./", base + "/", 1)
        for s in compose.values()
        for source, target in (v.split(":")[:2] for v in s.get("volumes", []))
    }
    assert components["storage"]["paths"] == [mounts["/var/www/dms/storage"]]
    assert components["index"]["paths"] == [mounts["/opt/solr/k-search/k-search/data"]]
    assert components["config"]["paths"] == [f"{base}/docker-compose.yml"]
    assert set(preset["services"]["stop"]) == set(compose) - {"database"}
