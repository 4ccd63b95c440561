"""safehold against restic over SFTP and S3 on loopback servers, in one run, alternating.

The servers are the test suite's (tests/servers.py): an OpenSSH sshd with ``internal-sftp``
and moto's S3 in server mode, both on 127.0.0.1, started once for the whole run. Each round,
for each backend (sftp, s3) and each tool (the order flipped every other round): a fresh
repository, the first backup of the data set (benchmarks/dataset.py), an unchanged second
backup, and a full restore into an empty local directory (compared by file count and bytes);
then the repository is removed. As in run.py the page cache is never dropped, dirty pages are
synced and the CPUs must be idle before each timed command; peak RSS comes from GNU time.

Both tools talk to the same servers the same way: safehold with its sftp://, s3:// URLs
(paramiko, boto3; its per-backend pack size and parallel uploads), restic with ``sftp:`` (its
``sftp.command`` runs ``ssh -s sftp`` with the test key) and ``s3:http://127.0.0.1:PORT/...``
(the same dummy credentials), each with its defaults.

moto is a Python server and sshd encrypts everything: on two cores the server's CPU is part
of every figure (the "server CPU" column: CPU seconds other processes used meanwhile).

Usage::

    python benchmarks/remote.py [--size-gb 0.5] [--rounds 3] [--backends sftp,s3]
                                [--workdir bench-data/remote] [--json-out results.json]
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
)
import run  # siblings and the test servers: importable once their folders are on the path
import servers

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_WORKDIR = os.path.join(os.path.dirname(HERE), "bench-data", "remote")
PHASES = ("first", "unchanged", "restore")
TITLES = {"first": "first backup", "unchanged": "unchanged backup", "restore": "full restore"}
TARGET = 1.0  # issue 4: at least restic's speed on both backends


# ---------------------------------------------------------------- where the repositories live


@dataclass
class Backend:
    """One server and how each tool reaches a repository on it."""

    name: str
    env: dict[str, str]  # added to both tools' environment
    restic_options: list[str]
    safehold_prefix: str  # + repository name = safehold's URL
    restic_prefix: str  # + repository name = restic's repository
    cleanup: object  # callable(repository name): remove it from the server

    def safehold_url(self, name: str) -> str:
        return self.safehold_prefix + name

    def restic_repo(self, name: str) -> str:
        return self.restic_prefix + name


@contextmanager
def sftp_backend(workdir: str) -> Iterator[Backend]:
    with servers.sftp_server_process() as server:
        root = os.path.join(workdir, "sftp-root")
        os.makedirs(root, exist_ok=True)
        ssh = shlex.join(
            [
                "ssh",
                "-F",
                str(server.home / ".ssh" / "config"),
                "-o",
                f"UserKnownHostsFile={server.home / '.ssh' / 'known_hosts'}",
                "-o",
                "BatchMode=yes",
                "-p",
                str(server.port),
                f"{server.user}@{server.host}",
                "-s",
                "sftp",
            ]
        )
        yield Backend(
            "sftp",
            {"HOME": str(server.home), "SSH_AUTH_SOCK": ""},
            ["-o", f"sftp.command={ssh}"],
            server.url(root + "/"),
            f"sftp:{server.user}@{server.host}:{root}/",
            lambda name: shutil.rmtree(os.path.join(root, name), ignore_errors=True),
        )
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def s3_backend(workdir: str) -> Iterator[Backend]:
    with servers.moto_server_process() as server:
        client = server.client()

        def cleanup(name: str) -> None:
            pages = client.get_paginator("list_objects_v2")
            for page in pages.paginate(Bucket=servers.BUCKET, Prefix=name + "/"):
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if keys:
                    client.delete_objects(Bucket=servers.BUCKET, Delete={"Objects": keys})

        yield Backend(
            "s3",
            {
                "AWS_ENDPOINT_URL": server.endpoint,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_CONFIG_FILE": os.path.join(workdir, "no-aws-config"),
                "AWS_SHARED_CREDENTIALS_FILE": os.path.join(workdir, "no-aws-credentials"),
            },
            [],
            f"s3://{servers.BUCKET}/",
            f"s3:{server.endpoint}/{servers.BUCKET}/",
            cleanup,
        )


BACKENDS = {"sftp": sftp_backend, "s3": s3_backend}


# ---------------------------------------------------------------- one round


@dataclass
class Result:
    """One tool on one backend in one round."""

    tool: str
    backend: str
    times: dict[str, float] = field(default_factory=dict)
    peak_rss: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    server_cpu: dict[str, float] = field(default_factory=dict)
    restore_ok: bool = True


def commands(
    tool: run.Tool, backend: Backend, name: str, source: str, target: str
) -> dict[str, list[str]]:
    """init, backup and restore commands of ``tool`` for repository ``name`` on ``backend``."""
    if tool.name == "safehold":
        repo = backend.safehold_url(name)
        return {
            "init": tool.init(repo),
            "backup": tool.backup(repo, source),
            "restore": tool.restore(repo, target),
        }
    repo = backend.restic_repo(name)
    extra = backend.restic_options
    made = {
        "init": tool.init(repo),
        "backup": tool.backup(repo, source),
        "restore": tool.restore(repo, target),
    }
    width = len(tool.command)
    return {key: [*value[:width], *extra, *value[width:]] for key, value in made.items()}


def one_round(
    number: int,
    tools: list[run.Tool],
    backends: list[Backend],
    workdir: str,
    source: str,
    guard: run.QuietGuard,
) -> list[Result]:
    log = os.path.join(workdir, "logs", f"round-{number + 1}.log")
    results = []
    for backend in backends:
        for tool in run.order(tools, number):
            name = f"round{number + 1}-{tool.name}"
            target = run.state_path(workdir, f"restore-{tool.name}")
            shutil.rmtree(target, ignore_errors=True)
            os.makedirs(target)
            env = dict(tool.env, **backend.env)
            steps = commands(tool, backend, name, source, target)
            backend.cleanup(name)  # type: ignore[operator]
            run.run_quietly(steps["init"], env, log)
            result = Result(tool.name, backend.name)
            for phase in PHASES:
                command = steps["restore" if phase == "restore" else "backup"]
                measured = run.measure(command, env, log, guard)
                if measured.exit_code != 0:
                    raise RuntimeError(
                        f"{tool.name} {phase} over {backend.name} failed "
                        f"(exit {measured.exit_code}): see {log}"
                    )
                result.times[phase] = measured.seconds
                result.peak_rss[phase] = measured.peak_rss
                result.cpu[phase] = measured.cpu_seconds
                result.server_cpu[phase] = measured.foreign_cpu_seconds
                print(
                    f"  round {number + 1} {backend.name:>4} {tool.name:>8} "
                    f"{TITLES[phase]:<17} {measured.seconds:7.2f} s, "
                    f"{measured.peak_rss / 1e6:5.0f} MB RSS, cpu {measured.cpu_seconds:6.2f} s, "
                    f"server+others cpu {measured.foreign_cpu_seconds:6.2f} s",
                    flush=True,
                )
            restored = run.tree_size(target)
            if restored != run.tree_size(source):
                result.restore_ok = False
                print(f"  WARNING: {tool.name} over {backend.name} restored {restored}")
            shutil.rmtree(target)
            backend.cleanup(name)  # type: ignore[operator]
            shutil.rmtree(run.state_path(workdir, "restic-cache"), ignore_errors=True)
            results.append(result)
    return results


# ---------------------------------------------------------------- report


def median(rounds: list[list[Result]], tool: str, backend: str, kind: str, phase: str) -> float:
    return statistics.median(
        getattr(result, kind)[phase]
        for results in rounds
        for result in results
        if result.tool == tool and result.backend == backend
    )


def summary(rounds: list[list[Result]], backends: list[str]) -> list[dict]:
    rows = []
    for backend in backends:
        for phase in PHASES:
            ours = median(rounds, "safehold", backend, "times", phase)
            theirs = median(rounds, "restic", backend, "times", phase)
            rows.append(
                {
                    "backend": backend,
                    "phase": TITLES[phase],
                    "safehold_s": ours,
                    "restic_s": theirs,
                    "ratio": theirs / ours,
                    "safehold_server_cpu_s": median(
                        rounds, "safehold", backend, "server_cpu", phase
                    ),
                    "restic_server_cpu_s": median(rounds, "restic", backend, "server_cpu", phase),
                    "safehold_rss_mb": median(rounds, "safehold", backend, "peak_rss", phase) / 1e6,
                    "restic_rss_mb": median(rounds, "restic", backend, "peak_rss", phase) / 1e6,
                }
            )
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| backend | measure (median) | safehold | restic | restic / safehold | target | met "
        "| server+others CPU s (safehold / restic) | peak RSS MB (safehold / restic) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['backend']} | {row['phase']} | {row['safehold_s']:.2f} s "
            f"| {row['restic_s']:.2f} s | {row['ratio']:.2f} | >= {TARGET:.1f} "
            f"| {'yes' if row['ratio'] >= TARGET else 'no'} "
            f"| {row['safehold_server_cpu_s']:.1f} / {row['restic_server_cpu_s']:.1f} "
            f"| {row['safehold_rss_mb']:.0f} / {row['restic_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = run.common_arguments(__doc__.split("\n\n")[0], 0.5, DEFAULT_WORKDIR)
    parser.add_argument(
        "--restic", default=shutil.which("restic") or "restic", help="command that runs restic"
    )
    parser.add_argument("--backends", default="sftp,s3", help="comma-separated (sftp,s3)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command_line, workdir, source, manifest = run.start(args, argv)
    tools = run.make_tools(args, workdir)
    guard = run.QuietGuard(args.quiet_threshold, args.max_wait)
    env = run.environment(tools, manifest)
    names = [name.strip() for name in args.backends.split(",") if name.strip()]
    rounds: list[list[Result]] = []
    with ExitStack() as stack:
        backends = [stack.enter_context(BACKENDS[name](workdir)) for name in names]
        for number in range(args.rounds):
            print(f"round {number + 1} of {args.rounds}", flush=True)
            rounds.append(one_round(number, tools, backends, workdir, source, guard))
    rows = summary(rounds, names)
    run.print_header(
        f"safehold vs restic over loopback {' and '.join(names)}, medians of {args.rounds} "
        "alternating rounds",
        command_line,
        env,
    )
    print(
        f"Data: {manifest['files']} files, {manifest['bytes'] / 1e9:.2f} GB "
        f"(scale {args.size_gb} GB, seed {args.seed}). Servers on 127.0.0.1: OpenSSH sshd "
        "(internal-sftp) and moto (Python) in server mode, sharing the two cores with the "
        "client; both tools with their defaults.\n"
    )
    print(markdown(rows))
    print("\nratio = restic / safehold: above 1 means safehold is faster.")
    failed = [r for results in rounds for r in results if not r.restore_ok]
    if failed:
        print(f"\nWARNING: restore mismatch: {[(r.tool, r.backend) for r in failed]}")
    run.write_json(
        args.json_out,
        {
            "command": command_line,
            "environment": env,
            "summary": rows,
            "rounds": [[asdict(r) for r in results] for results in rounds],
        },
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
