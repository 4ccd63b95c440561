"""`safehold discover --kubernetes` on objects built from the real projects' manifests
(tests/fixtures/kaapana/cluster.yaml, tests/fixtures/chipster/cluster.yaml)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from safehold.platform.config import ConfigError, parse_platform
from safehold.platform.discover_kubernetes import load_objects, propose
from tests.conftest import run_cli

FIXTURES = Path(__file__).parent / "fixtures"


def _components(found) -> dict[str, dict]:
    return {c["name"]: c for c in found.document["components"]}


def test_kaapana_databases_volumes_and_what_to_stop():
    found = propose(
        load_objects([str(FIXTURES / "kaapana/cluster.yaml")]), None, "microk8s.kubectl"
    )
    components = _components(found)
    dumps = {n: c for n, c in components.items() if c["type"] == "postgres"}
    assert len(dumps) == 9
    assert dumps["services-postgres-dcm4che"]["via"] == {
        "exec": "kubectl",
        "namespace": "services",
        "pod": "deploy/postgres-dcm4che",
        "container": "postgres-dcm4che-container",
    }
    assert (
        dumps["services-airflow-database"]["user"],
        dumps["services-airflow-database"]["databases"],
    ) == ("root", ["airflow"])
    assert dumps["admin-keycloak-database"]["via"]["namespace"] == "admin"
    assert not any("password" in c for c in dumps.values())  # trusted socket in the pod
    assert components["services-minio-deployment"]["type"] == "bucket"
    files = {n: c for n, c in components.items() if c["type"] == "files"}
    assert set(files) == {"services-dcm4chee-dicom-pv-claim", "services-opensearch-pv-claim"}
    assert all(c["paths"][0].startswith("/home/kaapana/services-") for c in files.values())
    # no live PostgreSQL directory and no MinIO directory is copied as files
    copied = " ".join(p for c in files.values() for p in c["paths"])
    assert "database" not in copied and "dcm4che-pv-claim" not in copied and "minio" not in copied
    assert found.document["services"] == {
        "control": "kubernetes",
        "kubectl_command": "microk8s.kubectl",
        "namespace": "services",
        "stop": ["deployment/dcm4chee", "deployment/opensearch-de"],
    }
    notes = "\n".join(found.notes)
    assert "services/deploy/opensearch-de: OpenSearch" in notes
    assert "services/deploy/minio-deployment: MinIO: set `endpoint`" in notes


def test_chipster_password_from_its_secret_is_used_in_the_pod_and_never_copied(tmp_path: Path):
    output = tmp_path / "chipster.yaml"
    result = run_cli(
        "discover",
        "--kubernetes",
        "--namespace",
        "default",
        "--from-json",
        FIXTURES / "chipster/cluster.yaml",
        "-o",
        output,
    )
    assert result.code == 0, result.err
    document = yaml.safe_load(output.read_text())
    components = {c["name"]: c for c in document["components"]}
    auth = components["default-chipster-auth-postgresql"]
    assert auth["via"]["pod"] == "statefulset/chipster-auth-postgresql"
    assert auth["password_env"] == "POSTGRES_PASSWORD"  # scram-sha-256 on every connection
    assert (auth["user"], auth["databases"]) == ("postgres", ["auth_db"])
    assert "secret chipster-auth-postgresql/postgres-password" in result.err
    assert "<from a secret>" not in output.read_text() and "base64" not in output.read_text()
    storage = components["default-storage-file-storage-0"]
    assert storage["paths"] == [
        "/var/lib/rancher/k3s/storage/pvc-storage-0000_default_storage-file-storage-0"
    ]
    assert not any(n.startswith("default-data-chipster") for n in components)  # dumped
    assert document["services"]["stop"] == ["statefulset/file-storage"]
    parse_platform(output.read_text().replace("/srv/backup", str(tmp_path)), str(output), {})


def test_longhorn_and_network_volumes_are_flagged_not_copied(tmp_path: Path):
    """Kaapana with STORAGE_PROVIDER=longhorn (platforms/kaapana-admin-chart/templates/
    storageClasses.yaml: kaapana-longhorn-slow-data, provisioner driver.longhorn.io)."""
    objects = [
        {
            "kind": "PersistentVolume",
            "metadata": {"name": "pvc-1"},
            "spec": {
                "storageClassName": "kaapana-longhorn-slow-data",
                "claimRef": {"namespace": "services", "name": "dcm4chee-dicom-pv-claim"},
                "csi": {"driver": "driver.longhorn.io", "volumeHandle": "pvc-1"},
            },
        },
        {
            "kind": "PersistentVolume",
            "metadata": {"name": "pvc-2"},
            "spec": {
                "claimRef": {"namespace": "services", "name": "shared"},
                "nfs": {"server": "nas", "path": "/export"},
            },
        },
    ]
    path = tmp_path / "pv.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
    found = propose(load_objects([str(path)]))
    assert found.document["components"] == []
    notes = "\n".join(found.notes)
    assert "services/dcm4chee-dicom-pv-claim: a Longhorn volume (pvc-1)" in notes
    assert "Longhorn's own backups" in notes
    assert "services/shared: a nfs volume (pvc-2)" in notes


def test_bad_input_is_one_clear_error(tmp_path: Path):
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="not a Kubernetes object"):
        load_objects([str(bad)])
    result = run_cli("discover", "--kubernetes", "--from-json", tmp_path / "missing.json")
    assert result.code != 0 and "cannot read it" in result.err
    both = run_cli("discover", FIXTURES / "kbox/docker-compose.yml", "--kubernetes")
    assert both.code == 2 and "not both" in both.err


def test_live_discovery_runs_the_configured_kubectl(tmp_path: Path, monkeypatch):
    """No cluster here: a stand-in kubectl prints the saved Chipster objects as JSON."""
    saved = tmp_path / "objects.json"
    saved.write_text(json.dumps(yaml.safe_load((FIXTURES / "chipster/cluster.yaml").read_text())))
    log = tmp_path / "argv"
    tool = tmp_path / "k3s"
    tool.write_text(f'#!/bin/sh\necho "$*" > {log}\ncat {saved}\n')
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    result = run_cli("discover", "--kubernetes", "-n", "default", "--kubectl", "k3s kubectl")
    assert result.code == 0, result.err
    assert log.read_text().split() == [
        "kubectl",
        "get",
        "pv,pvc,deploy,statefulset,pod",
        "-n",
        "default",
        "-o",
        "json",
    ]
    assert "kubectl_command: k3s kubectl" in result.out
