"""A real Orthanc (Debian's `orthanc` + `orthanc-postgresql`: the PostgreSQL index plugin, the
DICOM files in a StorageDirectory) backed up with the ovena preset, destroyed and restored.

The tests start PostgreSQL (user `orthanc`, password `postgres`, as Ovena's compose file has
it) and Orthanc on free loopback ports, upload generated instances through Orthanc's REST API
(POST /instances), back up with the platform file `safehold config new --preset ovena` writes,
with only the site's paths and ports changed (the services' stop/start commands really stop and
start this Orthanc), drop the database and delete the storage, restore with
`safehold restore --config ... --yes`, and compare every instance's bytes through
GET /instances/{id}/file. Then the same while an uploader keeps sending instances during the
hot+cold backup, and a drill.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import servers
import yaml
from dicom_files import instance

from safehold.ops.scratch_servers import free_port
from tests.conftest import run_cli

pytestmark = pytest.mark.slow

ORTHANC = "/usr/sbin/Orthanc"
INDEX_PLUGIN = "/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so"
OVENA_PASSWORD = "postgres"  # docker/docker-compose.yml and orthanc/postgresql.json of Ovena


@pytest.fixture(scope="module")
def ovena_pg():
    """PostgreSQL as Ovena's `database` service has it: superuser orthanc, password postgres."""
    yield from servers.serve(
        lambda: servers.postgres_server(user="orthanc", password=OVENA_PASSWORD)
    )


START = textwrap.dedent("""\
    #!/bin/sh
    # Starts this site's Orthanc (as `docker-compose start orthanc` would) and waits for it.
    cd "$(dirname "$0")"
    [ -f orthanc.pid ] && kill -0 "$(cat orthanc.pid)" 2>/dev/null && exit 0
    setsid {orthanc} --logdir=. {config} </dev/null >>orthanc.out 2>&1 &
    echo $! > orthanc.pid
    i=0
    until python3 -c 'import urllib.request as u; u.urlopen("{url}/system", timeout=1)' \\
        2>/dev/null; do
      i=$((i+1)); [ $i -gt 300 ] && {{ echo "Orthanc did not start" >&2; exit 1; }}
      kill -0 "$(cat orthanc.pid)" 2>/dev/null || {{ echo "Orthanc exited" >&2; exit 1; }}
      sleep 0.1
    done
""")

STOP = textwrap.dedent("""\
    #!/bin/sh
    # Stops this site's Orthanc and waits until the process has exited.
    cd "$(dirname "$0")"
    [ -f orthanc.pid ] || exit 0
    pid=$(cat orthanc.pid)
    kill "$pid" 2>/dev/null
    while [ -e /proc/$pid ] && ! grep -q ') Z' /proc/$pid/stat 2>/dev/null; do sleep 0.05; done
    rm -f orthanc.pid
""")


class Orthanc:
    """One Orthanc with its PostgreSQL index in ``server`` and its files in ``root/storage``."""

    def __init__(self, root: Path, server: servers.PostgresServer) -> None:
        if not (Path(ORTHANC).exists() and Path(INDEX_PLUGIN).exists()):
            pytest.fail(
                "orthanc and orthanc-postgresql are not installed (./test.sh installs them)"
            )
        self.root, self.server = root, server
        self.config_dir = root / "etc"  # backed up, like Ovena's /usr/local/etc/ovena
        self.control = root / "control"  # the scripts, pid and logs: not backed up
        self.storage = root / "storage"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_dir.mkdir(parents=True)
        self.control.mkdir()
        self.config = {
            "Name": "safehold-test",
            "StorageDirectory": str(self.storage),
            "IndexDirectory": str(root / "index"),
            "StorageCompression": False,
            "HttpPort": self.port,
            "DicomPort": free_port(),
            "DicomServerEnabled": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "SaveJobs": False,
            "Plugins": [INDEX_PLUGIN],
            "PostgreSQL": {
                "EnableIndex": True,
                "EnableStorage": False,
                "Host": server.host,
                "Port": server.port,
                "Database": "orthanc",
                "Username": "orthanc",
                "Password": OVENA_PASSWORD,
                "Lock": False,
                "IndexConnectionsCount": 2,
            },
        }
        (self.config_dir / "orthanc.json").write_text(json.dumps(self.config, indent=2))
        for name, text in (("start.sh", START), ("stop.sh", STOP)):
            script = self.control / name
            config = self.config_dir / "orthanc.json"
            script.write_text(text.format(orthanc=ORTHANC, url=self.url, config=config))
            script.chmod(0o755)
        self.psql("create database orthanc")

    def psql(self, sql: str) -> str:
        """Runs sql in the postgres database over the server's socket (trusted, as in a
        postgres container)."""
        return self.server.psql(sql, socket=True)

    def start(self) -> None:
        subprocess.run([str(self.control / "start.sh")], check=True, timeout=60)

    def stop(self) -> None:
        subprocess.run([str(self.control / "stop.sh")], check=True, timeout=60)

    def request(self, method: str, path: str, body: bytes | None = None) -> bytes:
        request = urllib.request.Request(self.url + path, data=body, method=method)
        if body is not None:
            request.add_header("Content-Type", "application/dicom")
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read()

    def upload(self, data: bytes) -> str:
        """POST /instances; returns Orthanc's instance ID."""
        answer = json.loads(self.request("POST", "/instances", data))
        assert answer["Status"] in ("Success", "AlreadyStored"), answer
        return answer["ID"]

    def instance_ids(self) -> list[str]:
        return json.loads(self.request("GET", "/instances"))

    def file(self, instance_id: str) -> bytes:
        return self.request("GET", f"/instances/{instance_id}/file")

    def destroy(self) -> None:
        """Stops Orthanc, drops its database and deletes its storage: a lost server."""
        self.stop()
        self.psql("drop database orthanc")
        shutil.rmtree(self.storage)

    def platform_file(self, repo: Path) -> Path:
        """The ovena preset with this site's paths and ports: the database reached over its
        socket instead of `docker-compose exec`, and stop/start scripts instead of compose."""
        preset = self.root / "preset.yaml"
        result = run_cli("config", "new", "--preset", "ovena", "-o", preset)
        assert result.code == 0, result.err
        document = yaml.safe_load(preset.read_text())
        document["repository"] = str(repo)
        document["services"] = {
            "control": "command",
            "stop_command": str(self.control / "stop.sh"),
            "start_command": str(self.control / "start.sh"),
            "timeout": 120,
        }
        components = {c["name"]: c for c in document["components"]}
        assert set(components) == {"database", "dicom", "config"}
        database = components["database"]
        del database["via"]
        database |= {
            "host": str(self.server.directory),
            "port": self.server.port,
            "bin_dir": self.server.bin_dir,
        }
        assert (database["user"], database["databases"]) == ("orthanc", ["orthanc"])
        components["dicom"]["paths"] = [str(self.storage)]
        components["config"]["paths"] = [str(self.config_dir)]
        path = self.root / "platform.yaml"
        path.write_text(yaml.safe_dump(document))
        return path


@pytest.fixture
def orthanc(tmp_path: Path, ovena_pg):
    site = Orthanc(tmp_path / "site", ovena_pg)
    site.start()
    try:
        yield site
    finally:
        site.stop()
        site.psql("drop database if exists orthanc")


def _upload_studies(site: Orthanc, patients: int, per_series: int) -> dict[str, bytes]:
    sent = {}
    for patient in range(patients):
        for study in range(2):
            for series in range(2):
                for number in range(per_series):
                    data = instance(patient, study, series, number)
                    sent[site.upload(data)] = data
    return sent


def _check_every_instance(site: Orthanc, sent: dict[str, bytes]) -> list[str]:
    """Every instance Orthanc lists comes back byte for byte as it was sent."""
    ids = site.instance_ids()
    assert ids, "the restored Orthanc lists no instance"
    unknown = set(ids) - set(sent)
    assert not unknown, f"instances nobody sent: {sorted(unknown)[:3]}"
    for instance_id in ids:
        assert site.file(instance_id) == sent[instance_id], instance_id
    return ids


def test_orthanc_backup_destroy_restore_every_instance_identical(orthanc: Orthanc, repo: Path):
    sent = _upload_studies(orthanc, patients=3, per_series=5)
    assert len(orthanc.instance_ids()) == 60
    config = orthanc.platform_file(repo)
    validated = run_cli("config", "validate", config)
    assert validated.code == 0, validated.err

    backup = run_cli("backup", "--config", config, "--json")
    assert backup.code == 0, backup.err
    report = json.loads(backup.out)
    assert {c["name"]: c["status"] for c in report["components"]} == {
        "database": "ok",
        "dicom": "ok",
        "config": "ok",
    }
    assert report["downtime"]["seconds"] > 0 and report["downtime"]["stopped"] == ["services"]

    orthanc.destroy()
    with pytest.raises(urllib.error.URLError):
        orthanc.instance_ids()
    restored = run_cli("restore", "--config", config, "--yes")
    assert restored.code == 0, restored.err
    assert sorted(_check_every_instance(orthanc, sent)) == sorted(sent)

    drill = run_cli("drill", "--config", config, "--json")
    assert drill.code == 0, drill.err + drill.out


class Uploader(threading.Thread):
    """Keeps sending new instances; while Orthanc is stopped it retries the same one."""

    def __init__(self, site: Orthanc) -> None:
        super().__init__(daemon=True)
        self.site, self.sent, self.refused = site, {}, 0
        self.quit = threading.Event()

    def run(self) -> None:
        number = 0
        while not self.quit.is_set():
            data = instance(9, 0, 0, number)
            try:
                self.sent[self.site.upload(data)] = data
                number += 1
            except (urllib.error.URLError, ConnectionError, OSError):
                self.refused += 1
                time.sleep(0.05)

    def stop(self) -> dict[str, bytes]:
        self.quit.set()
        self.join(timeout=60)
        return self.sent


def test_orthanc_hot_cold_backup_under_a_concurrent_uploader(orthanc: Orthanc, repo: Path):
    sent = _upload_studies(orthanc, patients=2, per_series=4)
    config = orthanc.platform_file(repo)
    uploader = Uploader(orthanc)
    uploader.start()
    try:
        while len(uploader.sent) < 10:
            time.sleep(0.05)
        before_backup = dict(uploader.sent)
        backup = run_cli("backup", "--config", config, "--json")
        after_backup = len(uploader.sent)
        time.sleep(0.3)  # more instances that the backup must not have
    finally:
        sent |= uploader.stop()
    assert backup.code == 0, backup.err
    report = json.loads(backup.out)
    assert after_backup > len(before_backup), "nothing was uploaded during the backup"
    assert len(sent) > after_backup

    orthanc.destroy()
    restored = run_cli("restore", "--config", config, "--yes")
    assert restored.code == 0, restored.err
    ids = _check_every_instance(orthanc, sent)
    assert set(before_backup) <= set(ids), "instances stored before the backup are missing"
    assert len(ids) < len(sent), "instances sent after the backup came back"
    # The index and the files are from the same moment: no file without its row.
    files = [p for p in orthanc.storage.rglob("*") if p.is_file() and p.name != "json"]
    attachments = [p for p in files if len(p.name) == 36]
    assert len(attachments) == len(ids)

    assert report["downtime"]["stopped"] == ["services"]  # the cold phase stopped Orthanc
    assert uploader.refused > 0, "Orthanc was never stopped"

    drill = run_cli("drill", "--config", config)
    assert drill.code == 0, drill.err + drill.out
    assert os.path.isdir(orthanc.storage)
