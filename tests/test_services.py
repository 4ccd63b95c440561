"""Service control: the exact commands for compose, kubernetes and systemd, and the promise
that whatever happens in the cold phase, what was stopped is started again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from safehold.errors import SafeholdError
from safehold.platform.services import (
    ServiceError,
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

    def __init__(self, failing: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.calls: list[str] = []
        self.failing = failing

    def run(self, argv: list[str], timeout: float | None = None) -> str:
        self.calls.append(" ".join(argv[-2:]))
        if argv[-1] in self.failing and argv[-2] in ("stop", "start"):
            raise ServiceError(f"{argv[-2]} {argv[-1]} failed")
        return ""


SYSTEMD = {"control": "systemd", "stop": ["app", "worker"]}


def test_services_are_started_again_after_an_error_inside():
    runner = Recorder()
    with pytest.raises(RuntimeError), stopped(SYSTEMD, runner, sleep=lambda s: None) as downtime:
        raise RuntimeError("copy failed")
    assert runner.calls == ["stop app", "stop worker", "start worker", "start app"]
    assert downtime.started == ["worker", "app"]


def test_a_failed_stop_starts_what_was_already_stopped():
    runner = Recorder(failing={"worker"})
    with pytest.raises(ServiceError), stopped(SYSTEMD, runner, sleep=lambda s: None):
        pytest.fail("the body must not run when a stop failed")
    assert runner.calls[-2:] == ["start worker", "start app"]


def test_a_service_that_does_not_start_is_retried_then_reported_loudly():
    runner = Recorder(failing={"app"})
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
