"""Service control: the exact commands for compose, kubernetes and systemd, and the promise
that whatever happens in the cold phase, what was stopped is started again."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import safehold.platform.services as services_module
from safehold.errors import SafeholdError
from safehold.platform.services import (
    ServiceError,
    ServiceTimeout,
    replica_queries,
    start_commands,
    stop_commands,
    stopped,
)
from safehold.platform.sources_bridge import ServiceRunner, service_runner
from safehold.sources.targets import LocalTarget


def test_compose_commands():
    services = {"control": "compose", "project_dir": "/opt/k-link", "stop": ["kbox", "engine"]}
    assert stop_commands(services) == [
        ("kbox", ["docker", "compose", "--project-directory", "/opt/k-link", "stop", "kbox"]),
        ("engine", ["docker", "compose", "--project-directory", "/opt/k-link", "stop", "engine"]),
    ]
    assert [argv[-2:] for _, argv in start_commands(services)] == [
        ["start", "engine"],
        ["start", "kbox"],
    ]


def test_kubernetes_scales_to_zero_and_back_to_the_recorded_replicas():
    services = {
        "control": "kubernetes",
        "namespace": "services",
        "context": "prod",
        "stop": ["deployment/dcm4chee", "statefulset/opensearch"],
    }
    base = ["kubectl", "--context", "prod", "-n", "services"]
    assert replica_queries(services)[0] == (
        "deployment/dcm4chee",
        base + ["get", "deployment/dcm4chee", "-o", "jsonpath={.spec.replicas}"],
    )
    assert stop_commands(services)[1] == (
        "statefulset/opensearch",
        base + ["scale", "statefulset/opensearch", "--replicas=0"],
    )
    starts = start_commands(services, {"deployment/dcm4chee": "2", "statefulset/opensearch": "3"})
    assert starts == [
        ("statefulset/opensearch", base + ["scale", "statefulset/opensearch", "--replicas=3"]),
        ("deployment/dcm4chee", base + ["scale", "deployment/dcm4chee", "--replicas=2"]),
    ]


def test_systemd_commands():
    services = {"control": "systemd", "stop": ["orthanc", "nginx"]}
    assert stop_commands(services)[0] == ("orthanc", ["systemctl", "stop", "orthanc"])
    assert start_commands(services)[0] == ("nginx", ["systemctl", "start", "nginx"])


class Recorder:
    """A runner that records commands and fails the ones it is told to."""

    def __init__(
        self,
        failing: set[str] = frozenset(),  # type: ignore[assignment]
        verbs: tuple[str, ...] = ("stop", "start"),
    ) -> None:
        self.calls: list[str] = []
        self.failing, self.verbs = failing, verbs

    def run(self, argv: list[str], timeout: float | None = None) -> str:
        self.calls.append(" ".join(argv[-2:]))
        if argv[-1] in self.failing and argv[-2] in self.verbs:
            raise ServiceError(f"{argv[-2]} {argv[-1]} failed")
        return ""


SYSTEMD = {"control": "systemd", "stop": ["app", "worker"]}


def test_services_are_started_again_after_an_error_inside():
    runner = Recorder()
    with pytest.raises(RuntimeError), stopped(SYSTEMD, runner, sleep=lambda s: None) as downtime:
        raise RuntimeError("copy failed")
    assert runner.calls == ["stop app", "stop worker", "start worker", "start app"]
    assert downtime.started == ["worker", "app"]


def test_a_failed_stop_starts_what_was_already_stopped_and_says_what_failed():
    runner = Recorder(failing={"worker"})
    with pytest.raises(ServiceError) as raised:
        with stopped(SYSTEMD, runner, sleep=lambda s: None):
            pytest.fail("the body must not run when a stop failed")
    # the service that said it did not stop is running: it is not "started again"
    assert runner.calls == ["stop app", "stop worker", "start app"]
    assert str(raised.value) == (
        "stopping worker failed, so nothing was copied cold: stop worker failed"
    )


def test_a_stop_that_timed_out_is_started_again():
    class Slow(Recorder):
        def run(self, argv: list[str], timeout: float | None = None) -> str:
            super().run(argv, timeout)
            if argv[-2:] == ["stop", "worker"]:
                raise ServiceTimeout("systemctl stop worker did not finish within 1 s")
            return ""

    runner = Slow()
    with pytest.raises(ServiceTimeout), stopped(SYSTEMD, runner, sleep=lambda s: None):
        pass
    assert runner.calls[-2:] == ["start worker", "start app"]


def test_a_service_that_does_not_start_is_retried_then_reported_loudly():
    runner = Recorder(failing={"app"}, verbs=("start",))
    with pytest.raises(ServiceError, match="SERVICES NOT STARTED AGAIN.*systemctl start app"):
        with stopped({"control": "systemd", "stop": ["app"]}, runner, sleep=lambda s: None):
            pass
    assert runner.calls.count("start app") == 3


def test_downtime_is_measured_with_the_injected_clock():
    ticks = iter([100.0, 107.5])
    with stopped(SYSTEMD, Recorder(), clock=lambda: next(ticks)) as downtime:
        pass
    assert downtime.seconds == 7.5


def test_sigterm_during_the_cold_phase_still_starts_the_services(tmp_path: Path):
    """A real process gets SIGTERM while services are stopped: they are started again."""
    flag = tmp_path / "running"
    flag.touch()
    script = f"""
import os, signal, sys, time
from safehold.platform.services import stopped
from safehold.platform.sources_bridge import service_runner
services = {{"control": "command", "stop_command": "rm {flag}", "start_command": "touch {flag}"}}
try:
    with stopped(services, service_runner(services)):
        print("stopped", flush=True)
        time.sleep(30)
except Exception as error:
    print(error, flush=True)
    sys.exit(5)
"""
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "stopped"
    assert not flag.exists()
    os.kill(process.pid, signal.SIGTERM)
    output = process.stdout.read()
    assert process.wait(timeout=20) == 5
    assert "terminated by SIGTERM" in output
    assert flag.exists(), "the service was not started again"


def test_service_runner_runs_through_the_target_and_names_failures():
    runner = ServiceRunner(LocalTarget())
    assert runner.run(["sh", "-c", "echo hi"]) == "hi\n"
    with pytest.raises(SafeholdError, match="exit status 4.*boom"):
        runner.run(["sh", "-c", "echo boom >&2; exit 4"])
    with pytest.raises(SafeholdError, match="did not finish within"):
        runner.run(["sleep", "5"], timeout=0.2)
    assert isinstance(service_runner({"control": "command"}).target, LocalTarget)


# --- real hosts: which compose, which kubectl, what a failure says ----------------------------

FAKE_DOCKER_WITHOUT_COMPOSE = """#!/bin/sh
echo "docker: 'compose' is not a docker command." >&2
echo "See 'docker --help'" >&2
exit 1
"""
LOGGING_TOOL = """#!/bin/sh
echo "$(basename "$0") $*" >> LOGFILE
"""


def _tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **scripts: str) -> Path:
    """A PATH holding only sh and the given fake tools; returns the log file they append to."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "tools.log"
    for name, text in scripts.items():
        (bin_dir / name).write_text(text.replace("LOGFILE", str(log)))
        (bin_dir / name).chmod(0o755)
    for tool in ("sh", "basename", "dirname"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    monkeypatch.setenv("PATH", str(bin_dir))
    services_module._detected.clear()
    return log


OVENA_SERVICES = {
    "control": "compose",
    "project_dir": "/usr/local/etc/ovena",
    "file": "/usr/local/etc/ovena/docker-compose.yml",
    "stop": ["orthanc"],
}


def test_the_standalone_docker_compose_is_found_where_the_plugin_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    log = _tools(
        tmp_path,
        monkeypatch,
        docker=FAKE_DOCKER_WITHOUT_COMPOSE,
        **{"docker-compose": LOGGING_TOOL},
    )
    with stopped(OVENA_SERVICES, ServiceRunner(LocalTarget())) as downtime:
        pass
    assert downtime.stopped == downtime.started == ["orthanc"]
    base = "docker-compose --project-directory /usr/local/etc/ovena -f "
    base += "/usr/local/etc/ovena/docker-compose.yml"
    assert log.read_text().splitlines() == [
        "docker-compose version",
        f"{base} stop orthanc",
        f"{base} start orthanc",
    ]


def test_podman_compose_is_the_last_resort(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    _tools(tmp_path, monkeypatch, podman=LOGGING_TOOL)
    assert services_module.detect_compose(ServiceRunner(LocalTarget())) == "podman compose"


def test_no_compose_at_all_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    _tools(tmp_path, monkeypatch, docker=FAKE_DOCKER_WITHOUT_COMPOSE)
    with pytest.raises(ServiceError, match="^no compose command works here .*compose_command"):
        with stopped(OVENA_SERVICES, ServiceRunner(LocalTarget())):
            pytest.fail("nothing may run cold")


def test_configured_commands_are_used_as_given():
    services = {**OVENA_SERVICES, "compose_command": "podman compose"}
    assert stop_commands(services)[0][1][:2] == ["podman", "compose"]
    k8s = {
        "control": "kubernetes",
        "kubectl_command": "microk8s.kubectl",
        "namespace": "services",
        "stop": ["deployment/dcm4chee"],
    }
    assert stop_commands(k8s)[0][1] == [
        "microk8s.kubectl",
        "-n",
        "services",
        "scale",
        "deployment/dcm4chee",
        "--replicas=0",
    ]
    k3s = {**k8s, "kubectl_command": "k3s kubectl", "context": "site"}
    assert replica_queries(k3s)[0][1][:4] == ["k3s", "kubectl", "--context", "site"]


def test_a_failed_stop_on_a_real_host_is_reported_once_with_the_tools_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, repo: Path
):
    """Ovena's host as the issue found it: the plugin is configured but missing. The backup
    stops with exit 22 and the tool's own reason, copies nothing cold, starts nothing."""
    from tests.conftest import run_cli

    log = _tools(tmp_path, monkeypatch, docker=FAKE_DOCKER_WITHOUT_COMPOSE + LOGGING_TOOL)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a").write_text("a")
    config = tmp_path / "platform.yaml"
    config.write_text(
        json.dumps(
            {
                "repository": str(repo),
                "platform": "ovena",
                "strategy": "cold",
                "services": {**OVENA_SERVICES, "compose_command": "docker compose"},
                "components": [
                    {"name": "dicom", "type": "files", "paths": [str(tmp_path / "data")]}
                ],
            }
        )
    )
    result = run_cli("backup", "--config", config)
    assert result.code == 22
    errors = [line for line in result.err.splitlines() if line.startswith("safehold:")]
    assert len(errors) == 1, result.err
    assert "stopping orthanc failed, so nothing was copied cold" in errors[0]
    assert "docker: 'compose' is not a docker command." in errors[0]
    assert "NOT STARTED" not in result.err and "--help" not in errors[0]
    assert not log.exists()  # the fake docker exits before logging: no start was tried


def test_components_inherit_the_hosts_compose_and_kubectl_commands():
    from safehold.platform.config import Component
    from safehold.platform.sources_bridge import target_for

    database = Component("database", "postgres", {"via": {"exec": "compose", "service": "db"}})
    ovena = {**OVENA_SERVICES, "compose_command": "docker-compose"}
    assert target_for(database, ovena).command(["true"]) == [
        "docker-compose",
        "--project-directory",
        "/usr/local/etc/ovena",
        "-f",
        "/usr/local/etc/ovena/docker-compose.yml",
        "exec",
        "-T",
        "db",
        "true",
    ]
    pod = {"exec": "kubectl", "namespace": "services", "pod": "deploy/airflow-database"}
    airflow = Component("airflow-db", "postgres", {"via": pod})
    kaapana = {"control": "kubernetes", "kubectl_command": "microk8s.kubectl"}
    assert target_for(airflow, kaapana).command(["true"])[:3] == [
        "microk8s.kubectl",
        "-n",
        "services",
    ]
    own = Component("x", "postgres", {"via": {**pod, "command": "k3s kubectl"}})
    assert target_for(own, kaapana).command(["true"])[:2] == ["k3s", "kubectl"]


def test_services_that_do_not_start_again_still_leave_the_snapshot_of_the_cold_copy(
    tmp_path: Path, repo: Path, monkeypatch: pytest.MonkeyPatch
):
    """The cold copy finished, then the start command failed three times: the data copied
    while the services were stopped is consistent, so it is kept as a snapshot (before, the
    backup ended without one), and the backup still exits 22 with the loud message."""
    from tests.conftest import mini_platform, run_cli

    monkeypatch.setattr(services_module.time, "sleep", lambda seconds: None)  # the retries
    root = tmp_path / "platform"
    services = {"control": "command", "stop_command": "true", "start_command": "false"}
    config = mini_platform(root, repo, services=services)
    result = run_cli("backup", "--config", config)
    assert result.code == 22, result.err
    errors = [line for line in result.err.splitlines() if line.startswith("safehold:")]
    assert len(errors) == 1, result.err
    assert "SERVICES NOT STARTED AGAIN: run by hand: sh -c false" in errors[0], errors[0]
    assert "the backup itself is complete: snapshot" in errors[0]
    listed = run_cli("snapshots", "--repo", repo, "--json")
    assert listed.code == 0 and len(json.loads(listed.out)) == 1, listed.out
    target = tmp_path / "restored"
    restored = run_cli("restore", "--repo", repo, "latest", "--target", target)
    assert restored.code == 0, restored.err
    copied = next(target.rglob("a.txt"))
    assert copied.read_text() == (root / "data" / "a.txt").read_text()
