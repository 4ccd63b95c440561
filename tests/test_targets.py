"""Execution targets: exact command lines for every kind, the streaming code run for real
through the local target and through ssh to a real sshd."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time

import pytest
from servers import free_port

from safehold.sources import EXIT_SOURCE, SourceError, source_module
from safehold.sources.targets import (
    ComposeTarget,
    DockerTarget,
    KubectlTarget,
    LocalTarget,
    SshTarget,
    Target,
    secret_wrapper,
    target_from_via,
)

ARGV = ["pg_dump", "--format=plain", "my db"]
WRAP = 'IFS= read -r PGPASSWORD || exit 125; export PGPASSWORD; exec "$0" "$@"'


# --- exact command lines -----------------------------------------------------------------------


def test_local_command_is_the_argv():
    assert LocalTarget().command(ARGV) == ARGV


def test_ssh_command_with_every_option():
    target = target_from_via(
        {
            "exec": "ssh://backup@db.example:2222",
            "identity": "/k/id",
            "known_hosts": "/k/known",
            "strict_host_key_checking": "yes",
        }
    )
    assert target.command(ARGV) == [
        "ssh",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=30",
        "-p",
        "2222",
        "-i",
        "/k/id",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "UserKnownHostsFile=/k/known",
        "-o",
        "StrictHostKeyChecking=yes",
        "backup@db.example",
        "--",
        "pg_dump --format=plain 'my db'",
    ]


def test_ssh_command_minimal():
    assert target_from_via("ssh://db.example").command(["true"]) == [
        "ssh",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=30",
        "db.example",
        "--",
        "true",
    ]


def test_compose_command():
    target = target_from_via(
        {"exec": "compose", "service": "database", "project_dir": "/opt/k-link", "file": "prod.yml"}
    )
    assert target.command(ARGV) == [
        "docker",
        "compose",
        "--project-directory",
        "/opt/k-link",
        "-f",
        "prod.yml",
        "exec",
        "-T",
        "database",
        *ARGV,
    ]
    assert ComposeTarget(service="db", project_dir="/p").command(["true"]) == [
        "docker",
        "compose",
        "--project-directory",
        "/p",
        "exec",
        "-T",
        "db",
        "true",
    ]


def test_docker_command():
    assert target_from_via({"exec": "docker", "container": "ovena-db-1"}).command(ARGV) == [
        "docker",
        "exec",
        "-i",
        "ovena-db-1",
        *ARGV,
    ]


def test_kubectl_command():
    target = target_from_via(
        {
            "exec": "kubectl",
            "pod": "chipster-auth-postgresql-0",
            "namespace": "chipster",
            "container": "postgresql",
            "context": "prod",
        }
    )
    assert target.command(ARGV) == [
        "kubectl",
        "--context",
        "prod",
        "-n",
        "chipster",
        "exec",
        "-i",
        "chipster-auth-postgresql-0",
        "-c",
        "postgresql",
        "--",
        *ARGV,
    ]
    assert KubectlTarget(pod="p").command(["true"]) == [
        "kubectl",
        "-n",
        "default",
        "exec",
        "-i",
        "p",
        "--",
        "true",
    ]


def test_secret_wrapper_reads_each_secret_from_stdin():
    assert secret_wrapper(ARGV, ["PGPASSWORD"]) == ["sh", "-c", WRAP, *ARGV]
    two = secret_wrapper(["x"], ["A", "B"])[2]
    assert two == (
        'IFS= read -r A || exit 125; IFS= read -r B || exit 125; export A B; exec "$0" "$@"'
    )
    assert secret_wrapper(ARGV, []) == ARGV
    with pytest.raises(SourceError, match="invalid secret variable name"):
        secret_wrapper(ARGV, ["PG PASSWORD"])


@pytest.mark.parametrize(
    "target",
    [
        LocalTarget(),
        SshTarget(host="h"),
        ComposeTarget(service="s"),
        DockerTarget(container="c"),
        KubectlTarget(pod="p"),
    ],
)
def test_every_kind_wraps_the_same_way(target: Target):
    command = target.command(secret_wrapper(ARGV, ["PGPASSWORD"]))
    assert "s3cret" not in " ".join(command)
    if isinstance(target, SshTarget):
        assert (
            command[-1]
            == "sh -c "
            + "'"
            + WRAP.replace("'", "'\"'\"'")
            + "' "
            + "pg_dump --format=plain 'my db'"
        )
    else:
        assert command[-len(ARGV) - 3 :] == ["sh", "-c", WRAP, *ARGV]


@pytest.mark.parametrize(
    ("via", "message"),
    [
        ({"exec": "podman"}, "unknown execution target 'podman'"),
        ({"exec": "compose"}, "exec compose needs service"),
        ({"exec": "docker", "container": "c", "user": "x"}, r"unknown option\(s\) user"),
        ({"exec": "ssh://h", "host": "other"}, r"unknown option\(s\) host"),
        ("ssh://user@host:notaport", "invalid ssh target"),
        ("ssh://host/path", "invalid ssh target"),
    ],
)
def test_bad_via_is_a_clear_error(via, message):
    with pytest.raises(SourceError, match=message):
        target_from_via(via)


def test_via_defaults_to_local():
    assert target_from_via(None) == LocalTarget()
    assert target_from_via("local") == LocalTarget()
    assert target_from_via({"exec": "ssh", "host": "h", "port": 2}).port == 2


def test_source_error_exit_code_and_unknown_kind():
    assert SourceError("x").exit_code == EXIT_SOURCE == 20
    assert source_module("mariadb").__name__ == "safehold.sources.mysql"
    with pytest.raises(SourceError, match="unknown source type 'mongo'"):
        source_module("mongo")


# --- the streaming code, for real --------------------------------------------------------------


def test_stream_delivers_all_bytes(exec_target: Target):
    with exec_target.run_stream(["sh", "-c", "head -c 3000000 /dev/zero | tr '\\0' x"]) as out:
        data = out.read()
    assert data == b"x" * 3_000_000


def test_feed_then_stream_round_trip(exec_target: Target, tmp_path):
    payload = os.urandom(2_000_000)
    path = tmp_path / "fed"
    with exec_target.run_feed(["sh", "-c", 'cat > "$1"', "sh", str(path)]) as sink:
        for start in range(0, len(payload), 100_000):
            sink.write(payload[start : start + 100_000])
    with exec_target.run_stream(["cat", str(path)]) as out:
        assert hashlib.sha256(out.read()).digest() == hashlib.sha256(payload).digest()


def test_secrets_arrive_in_the_environment_not_on_the_command_line(exec_target, monkeypatch):
    secrets = {"PGPASSWORD": " sp ace 'q' \"d\" $(x) \\n", "MYSQL_PWD": "two"}
    launched = []
    real_popen = subprocess.Popen

    def spy(command, *args, **kwargs):
        launched.append(command)
        return real_popen(command, *args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", spy)
    script = 'printf "%s|%s|" "$PGPASSWORD" "$MYSQL_PWD"; cat'
    output = exec_target.run(["sh", "-c", script], secrets, input=b"rest of stdin")
    assert output == f"{secrets['PGPASSWORD']}|two|rest of stdin"
    assert not any(value in part for value in secrets.values() for part in launched[0])


def test_secret_with_a_newline_is_refused():
    with pytest.raises(SourceError, match="secret X contains a line break"):
        LocalTarget().run(["true"], {"X": "a\nb"})


def test_failure_names_program_and_stderr_tail_without_secret(exec_target: Target):
    script = 'echo "noise" >&2; echo "cannot log in with $P" >&2; exit 3'
    with (
        pytest.raises(SourceError) as caught,
        exec_target.run_stream(["sh", "-c", script], {"P": "hunter2"}, label="demo dump"),
    ):
        pass
    message = str(caught.value)
    assert message.startswith(f"demo dump failed {exec_target.describe()} (exit status 3)")
    assert "noise / cannot log in with ***" in message
    assert "hunter2" not in message
    assert caught.value.exit_code == 20


def test_missing_program_is_reported(exec_target: Target):
    with pytest.raises(SourceError, match=r"no-such-program failed .*program not found"):
        exec_target.run(["no-such-program", "x"], {"P": "x"})


def test_missing_local_program_without_wrapper():
    with pytest.raises(SourceError, match="cannot run no-such-program locally"):
        LocalTarget().run(["no-such-program"])


def test_feed_into_a_program_that_stops_reading(exec_target: Target):
    with (
        pytest.raises(SourceError, match="before reading all its input"),
        exec_target.run_feed(["true"]) as sink,
    ):
        for _ in range(64):
            sink.write(b"x" * 65536)


def test_feed_into_a_failing_program_reports_its_error(exec_target: Target):
    script = "head -c 10 >/dev/null; echo bad input >&2; exit 4"
    with (
        pytest.raises(SourceError, match=r"exit status 4\): bad input"),
        exec_target.run_feed(["sh", "-c", script]) as sink,
    ):
        for _ in range(64):
            sink.write(b"x" * 65536)


def test_error_in_the_block_kills_the_process():
    started = time.monotonic()
    with pytest.raises(KeyError), LocalTarget().run_feed(["sleep", "60"]):
        raise KeyError("consumer failed")
    with pytest.raises(KeyError), LocalTarget().run_stream(["sleep", "60"]):
        raise KeyError("consumer failed")
    assert time.monotonic() - started < 10


def test_which_probes_in_order(exec_target: Target):
    assert exec_target.which("no-such-program", "sh", "cat") == "sh"
    with pytest.raises(SourceError, match="none of nope1, nope2 is installed"):
        exec_target.which("nope1", "nope2")


def test_ssh_to_a_closed_port_is_a_clear_error(sshd_server):
    target = target_from_via(dict(sshd_server.via(), exec=f"ssh://root@127.0.0.1:{free_port()}"))
    with pytest.raises(SourceError, match=r"true failed via ssh .*exit status 255.*refused"):
        target.run(["true"])


def test_ssh_with_an_unknown_host_key_is_refused(sshd_server, tmp_path):
    (tmp_path / "known_hosts").write_text("")
    target = target_from_via(dict(sshd_server.via(), known_hosts=str(tmp_path / "known_hosts")))
    with pytest.raises(SourceError, match="Host key verification failed"):
        target.run(["true"])


def test_compose_and_kubectl_commands_of_real_hosts():
    ovena = target_from_via({"exec": "compose", "service": "database", "command": "docker-compose"})
    assert ovena.command(["true"]) == ["docker-compose", "exec", "-T", "database", "true"]
    podman = target_from_via({"exec": "compose", "service": "db", "command": "podman compose"})
    assert podman.command(["true"])[:3] == ["podman", "compose", "exec"]
    kaapana = target_from_via(
        {
            "exec": "kubectl",
            "command": "microk8s.kubectl",
            "namespace": "services",
            "pod": "deploy/postgres-dcm4che",
        }
    )
    assert kaapana.command(["true"]) == [
        "microk8s.kubectl",
        "-n",
        "services",
        "exec",
        "-i",
        "deploy/postgres-dcm4che",
        "--",
        "true",
    ]
    k3s = target_from_via({"exec": "kubectl", "command": "k3s kubectl", "pod": "p"})
    assert k3s.command(["true"])[:4] == ["k3s", "kubectl", "-n", "default"]


def test_kubectl_label_selector_runs_in_the_first_running_pod(tmp_path, monkeypatch):
    """The selector is resolved when the command runs; a fake kubectl shows the two calls."""
    log = tmp_path / "calls"
    fake = tmp_path / "kubectl"
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {log}\n'
        'case "$*" in *" get pod "*) echo chipster-auth-postgresql-0;; *) cat;; esac\n'
    )
    fake.chmod(0o755)
    target = target_from_via(
        {
            "exec": "kubectl",
            "command": str(fake),
            "namespace": "chipster",
            "selector": "app.kubernetes.io/instance=chipster-auth",
            "container": "postgresql",
        }
    )
    assert target.run(["psql", "-c", "select 1"], input=b"hello") == "hello"
    get, execute = log.read_text().splitlines()
    assert get == (
        "-n chipster get pod -l app.kubernetes.io/instance=chipster-auth "
        "--field-selector=status.phase=Running -o jsonpath={.items[0].metadata.name}"
    )
    assert (
        execute
        == "-n chipster exec -i chipster-auth-postgresql-0 -c postgresql -- psql -c select 1"
    )
    assert target.describe() == "in pod chipster/app.kubernetes.io/instance=chipster-auth"
    empty = tmp_path / "empty"
    empty.write_text("#!/bin/sh\ntrue\n")
    empty.chmod(0o755)
    nothing = KubectlTarget(selector="app=x", command_line=str(empty))
    with pytest.raises(SourceError, match="no running pod matches app=x in namespace default"):
        nothing.run(["true"])
    with pytest.raises(SourceError, match="either pod or selector"):
        target_from_via({"exec": "kubectl"})


def test_a_password_from_the_targets_environment_never_passes_through_safehold():
    """Chipster's documented `PGPASSWORD=$POSTGRES_PASSWORD pg_dump`, as safehold does it."""
    from safehold.sources.common import secret_env

    secrets = secret_env("PGPASSWORD", None, "POSTGRES_PASSWORD")
    wrapped = secret_wrapper(["sh", "-c", 'echo "[$PGPASSWORD]"'], [], secrets)
    assert "s3cret" not in " ".join(wrapped)
    container_env = {"PATH": os.environ["PATH"], "POSTGRES_PASSWORD": "s3cret value"}
    done = subprocess.run(wrapped, env=container_env, capture_output=True, text=True)
    assert done.stdout == "[s3cret value]\n"
    bare = {"PATH": os.environ["PATH"]}
    unset = subprocess.run(wrapped, env=bare, capture_output=True, text=True)
    assert unset.returncode == 125 and "POSTGRES_PASSWORD is not set in the target" in unset.stderr
    # Through a target: no stdin line is sent for it, the program's input is untouched.
    target = LocalTarget()
    assert target.command(["true"]) == ["true"]
    with pytest.raises(SourceError, match="POSTGRES_PASSWORD is not set in the target"):
        target.run(["cat"], secret_env=secrets, input=b"dump")
