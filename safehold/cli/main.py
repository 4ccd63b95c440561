"""The command line: parse, call the library, render. Exit codes: docs/exit-codes.md."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from typing import NoReturn

from safehold import __version__
from safehold.cli import prefetch
from safehold.cli.history_args import add_history_commands
from safehold.errors import EXIT_ERROR, SafeholdError
from safehold.platform import PRESETS


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--repo",
        "-r",
        default=None,
        help="repository: a path, file://, sftp://user@host/path or s3://bucket/prefix "
        "(default: $SAFEHOLD_REPO)",
    )
    parser.add_argument(
        "--passphrase-file",
        default=None,
        help="read the passphrase from FILE (default: $SAFEHOLD_PASSPHRASE, "
        "or a prompt on a terminal)",
    )
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument("--quiet", "-q", action="store_true", help="print only errors")


def _schedule_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", required=True, metavar="PLATFORM_FILE")
    parser.add_argument("--repo", "-r", default=None, help="overrides `repository:`")
    parser.add_argument("--passphrase-file", default=None, help="default: $SAFEHOLD_PASSPHRASE")
    parser.add_argument(
        "--state-dir", default=None, help="last runs and checks (default ~/.cache/safehold)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="safehold", description=__doc__)
    parser.add_argument("--version", action="version", version=f"safehold {__version__}")
    parser.add_argument(
        "--log-json",
        action="store_true",
        help="stderr as one JSON object per line and event (before the command)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    command = sub.add_parser("init", help="create a repository")
    _common(command)
    command.add_argument(
        "--no-delete",
        action="store_true",
        help="for good: safehold never deletes or overwrites anything in this repository",
    )
    command.set_defaults(run="commands:init")

    command = sub.add_parser("backup", help="back up files and directories, or a whole platform")
    _common(command)
    command.add_argument("paths", nargs="*", metavar="PATH")
    command.add_argument(
        "--config",
        "-c",
        default=None,
        metavar="PLATFORM_FILE",
        help="back up the platform this file describes",
    )
    command.add_argument("--tag", action="append", default=[], help="tag the snapshot (repeatable)")
    command.add_argument("--host", default=None, help="host name to record (default: this host)")
    command.add_argument(
        "--exclude",
        "-e",
        action="append",
        default=[],
        metavar="PATTERN",
        help="leave out matching paths (repeatable)",
    )
    command.add_argument(
        "--exclude-file",
        action="append",
        default=[],
        metavar="FILE",
        help="read exclude patterns from FILE",
    )
    command.add_argument(
        "--exclude-caches",
        action="store_true",
        help="leave out the contents of directories holding a CACHEDIR.TAG",
    )
    command.add_argument(
        "--one-file-system", "-x", action="store_true", help="do not cross file-system boundaries"
    )
    command.add_argument(
        "--force",
        action="store_true",
        help="re-read every file instead of trusting the parent snapshot",
    )
    command.set_defaults(run="commands:backup")

    command = sub.add_parser("snapshots", help="list snapshots")
    _common(command)
    command.add_argument("--host", default=None)
    command.add_argument("--tag", action="append", default=[])
    command.set_defaults(run="commands:snapshots")

    command = sub.add_parser("ls", help="list files in a snapshot: SNAPSHOT[:/path]")
    _common(command)
    command.add_argument("target", metavar="SNAPSHOT[:PATH]")
    command.add_argument("--recursive", "-R", action="store_true", help="list everything below")
    command.set_defaults(run="commands:ls")

    command = sub.add_parser("restore", help="restore a snapshot or a part of it, or a platform")
    _common(command)
    command.add_argument(
        "source",
        nargs="?",
        metavar="SNAPSHOT[:PATH]",
        help="default with --config: the platform's latest snapshot",
    )
    command.add_argument(
        "--target",
        "-t",
        help="directory to restore into (required without "
        "--config; with it, extract there instead of "
        "replacing live data)",
    )
    command.add_argument(
        "--config",
        "-c",
        default=None,
        metavar="PLATFORM_FILE",
        help="restore the platform this file describes, in its order",
    )
    command.add_argument("--component", help="with --config: only this component")
    command.add_argument("--database", help="with --config: only this database of the component")
    command.add_argument("--to-database", help="with --config: restore the dump into this database")
    command.add_argument("--to-bucket", help="with --config: restore a bucket into this one")
    command.add_argument(
        "--to-endpoint", help="with --config: a bucket's objects go to this S3 URL"
    )
    command.add_argument(
        "--delete-extra",
        action="store_true",
        help="with --config: delete objects not in the backup",
    )
    command.add_argument("--yes", action="store_true", help="replace live data without asking")
    command.add_argument("--dry-run", action="store_true", help="show the steps, change nothing")
    command.add_argument("--include", "-i", action="append", default=[], metavar="PATTERN")
    command.add_argument("--exclude", "-e", action="append", default=[], metavar="PATTERN")
    command.add_argument(
        "--overwrite", action="store_true", help="replace files that already exist in the target"
    )
    command.add_argument(
        "--no-special",
        action="store_true",
        help="no device nodes, setuid/setgid bits or file capabilities (untrusted snapshots)",
    )
    command.set_defaults(run="commands:restore")

    # copy (safehold/cli/copy.py, safehold/ops/copy.py; docs/backends.md)
    command = sub.add_parser("copy", help="copy snapshots to another repository")
    _common(command)
    command.add_argument("snapshots", nargs="*", metavar="SNAPSHOT", help="default: all missing")
    command.add_argument("--to", required=True, metavar="LOCATION", help="target repository")
    command.add_argument(
        "--to-passphrase-file",
        default=None,
        help="read the target's passphrase from FILE (default: $SAFEHOLD_TO_PASSPHRASE)",
    )
    command.set_defaults(run="copy:copy_command")

    # unlock (safehold/cli/unlock.py, safehold/store/locks.py)
    command = sub.add_parser("unlock", help="remove locks whose holder is gone (never live ones)")
    _common(command)
    command.set_defaults(run="unlock:unlock_command")

    # cache (safehold/cli/cache.py, safehold/repo/cache.py)
    command = sub.add_parser(
        "cache", help="list this machine's caches of repositories; --cleanup removes old ones"
    )
    command.add_argument(
        "--cleanup", action="store_true", help="remove the caches not used for --max-age days"
    )
    command.add_argument(
        "--max-age", type=float, default=30.0, metavar="DAYS", help="default 30 (days)"
    )
    command.add_argument("--json", action="store_true", help="print machine-readable JSON")
    command.add_argument("--quiet", "-q", action="store_true", help="print only errors")
    command.set_defaults(run="cache:cache_command")

    # find, dump, stats, tag, mount (safehold/cli/history.py, mount.py; docs/operations.md)
    add_history_commands(sub, _common)

    command = sub.add_parser("diff", help="show what changed between two snapshots")
    _common(command)
    command.add_argument("first", metavar="SNAPSHOT1")
    command.add_argument("second", metavar="SNAPSHOT2")
    command.set_defaults(run="commands:diff")

    command = sub.add_parser("check", help="verify the repository")
    _common(command)
    command.add_argument("--read-data", action="store_true", help="read and authenticate all data")
    command.add_argument(
        "--read-data-subset",
        default=None,
        metavar="N%|n/t",
        help="read and authenticate a part of the data",
    )
    command.add_argument("--max-duration", metavar="30s|10m|2h", help="stop, resume next run")
    command.set_defaults(run="commands:check_repository")

    # repair (safehold/cli/repair.py, safehold/ops/repair.py; docs/format.md "Repair")
    repair = sub.add_parser("repair", help="rebuild the index, or salvage damaged snapshots")
    repair_sub = repair.add_subparsers(dest="repair_command", required=True, metavar="ACTION")
    for name, function, text in (
        ("index", "repair:repair_index_command", "rebuild the index from the pack headers"),
        ("snapshots", "repair:repair_snapshots_command", "drop what cannot be read"),
    ):
        command = repair_sub.add_parser(name, help=text)
        _common(command)
        command.add_argument("--dry-run", "-n", action="store_true", help="show, change nothing")
        command.add_argument("--lock-wait", type=float, default=0.0, metavar="SECONDS")
        command.set_defaults(run=function)

    # forget (safehold/cli/forget.py, safehold/ops/retention.py; docs/retention.md)
    command = sub.add_parser("forget", help="remove snapshots by a retention policy")
    _common(command)
    for unit in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
        command.add_argument(
            f"--keep-{unit}", type=int, default=None, metavar="N", help=f"keep N {unit} snapshots"
        )
    command.add_argument("--keep-within", default=None, metavar="DURATION", help="12h 10d 2w 6m 1y")
    command.add_argument("--keep-tag", action="append", default=None, metavar="TAG[,TAG]")
    command.add_argument("--group-by", default=None, help="host,paths,platform,tags,component")
    command.add_argument("--host", default=None, help="only this host's snapshots")
    command.add_argument("--tag", action="append", default=[], help="only snapshots with this tag")
    command.add_argument("--config", "-c", default=None, metavar="PLATFORM_FILE")
    command.add_argument("--dry-run", "-n", action="store_true", help="show, delete nothing")
    command.add_argument("--lock-wait", type=float, default=0.0, metavar="SECONDS")
    command.add_argument("--prune", action="store_true", help="prune after forgetting")
    command.add_argument("--max-unused", default="5%", metavar="N%|SIZE", help="with --prune")
    command.add_argument("--max-repack-size", default=None, metavar="SIZE", help="with --prune")
    command.add_argument("--keep-young", default="4h", metavar="DURATION", help="with --prune")
    command.set_defaults(run="forget:forget_command")

    # prune (safehold/cli/prune.py, safehold/ops/prune.py; docs/format.md "Prune")
    command = sub.add_parser("prune", help="delete data no snapshot needs, repack packs")
    _common(command)
    command.add_argument(
        "--max-unused", default="5%", metavar="N%|SIZE", help="unused data to tolerate (5%%)"
    )
    command.add_argument(
        "--max-repack-size", default=None, metavar="SIZE", help="read at most SIZE of packs"
    )
    command.add_argument("--dry-run", "-n", action="store_true", help="show, change nothing")
    command.add_argument("--lock-wait", type=float, default=0.0, metavar="SECONDS")
    command.add_argument(
        "--keep-young",
        default="4h",
        metavar="DURATION",
        help="leave packs written less than this long ago (4h; 0 to prune them too)",
    )
    command.set_defaults(run="prune:prune_command")

    # drill (safehold/cli/drill.py, safehold/ops/drill.py; docs/operations.md)
    command = sub.add_parser("drill", help="prove a platform snapshot restorable, in scratch space")
    _common(command)
    command.add_argument("snapshot", nargs="?", metavar="SNAPSHOT", help="default: the latest")
    command.add_argument("--config", "-c", required=True, metavar="PLATFORM_FILE")
    command.add_argument(
        "--random-older", action="store_true", help="drill a random older snapshot instead"
    )
    command.add_argument("--scratch", default=None, metavar="DIR", help="restore below DIR")
    command.set_defaults(run="drill:drill_command")

    # metrics, report (safehold/cli/status.py, safehold/ops/status.py; docs/operations.md)
    command = sub.add_parser("metrics", help="write Prometheus metrics (textfile collector)")
    _common(command)
    command.add_argument("--config", "-c", default=None, metavar="PLATFORM_FILE")
    command.add_argument("--output", "-o", default=None, help="write FILE atomically")
    command.set_defaults(run="status:metrics_command")

    command = sub.add_parser("report", help="platforms' backups, drills and warnings (exit 3)")
    _common(command)
    command.add_argument("--config", "-c", default=None, metavar="PLATFORM_FILE")
    command.add_argument(
        "--expect-every", default=None, metavar="INTERVAL", help="backups (schedule, else 1d)"
    )
    command.add_argument(
        "--drill-every", default=None, metavar="INTERVAL", help="drills (schedule, else 7d)"
    )
    command.add_argument("--state-dir", default=None, help="where checks are recorded")
    command.add_argument("--failures", type=int, default=3, metavar="N", help="last N backups")
    command.set_defaults(run="status:report_command")

    # daemon, schedule (safehold/cli/schedule.py, safehold/ops/daemon.py; docs/operations.md)
    command = sub.add_parser("daemon", help="run a platform's schedule: backups, checks, drills")
    _schedule_options(command)
    command.add_argument(
        "--metrics-port", type=int, default=None, metavar="PORT", help="serve /metrics (off)"
    )
    command.add_argument(
        "--metrics-address", default="127.0.0.1", help="loopback address for /metrics"
    )
    command.add_argument(
        "--dashboard",
        default=None,
        metavar="ADDRESS:PORT",
        help="also serve the read-only dashboard there (loopback only; docs/operations.md)",
    )
    command.set_defaults(run="schedule:daemon_command")

    # serve (safehold/web/: the top layer, imported only when it runs; docs/operations.md)
    command = sub.add_parser("serve", help="the web dashboard of one or more platforms")
    command.add_argument("--config", "-c", action="append", required=True, metavar="PLATFORM_FILE")
    command.add_argument("--repo", "-r", default=None, help="overrides `repository:`")
    command.add_argument("--passphrase-file", default=None, help="default: $SAFEHOLD_PASSPHRASE")
    command.add_argument("--state-dir", default=None, help="default ~/.cache/safehold")
    command.add_argument("--listen", default="127.0.0.1:8731", metavar="ADDRESS:PORT")
    command.add_argument(
        "--token-file", default=None, help="the token (default: made on first start)"
    )
    command.add_argument(
        "--allow-actions", action="store_true", help="allow 'back up now' and 'run a drill now'"
    )
    command.add_argument("--tls-cert", default=None, metavar="PEM")
    command.add_argument("--tls-key", default=None, metavar="PEM")
    command.add_argument(
        "--insecure-http", action="store_true", help="allow plain HTTP on a non-loopback address"
    )
    command.set_defaults(run="safehold.web.serve:serve_command")
    schedule = sub.add_parser("schedule", help="show, install (systemd, cron) or run a schedule")
    schedule_sub = schedule.add_subparsers(dest="schedule_command", required=True, metavar="ACTION")
    command = schedule_sub.add_parser("show", help="the next run times of each job")
    _schedule_options(command)
    command.add_argument("--json", action="store_true", help="print machine-readable JSON")
    command.add_argument("--count", type=int, default=3, help="next runs per job (3)")
    command.set_defaults(run="schedule:schedule_show")
    command = schedule_sub.add_parser("install", help="write systemd timers or crontab lines")
    _schedule_options(command)
    kind = command.add_mutually_exclusive_group(required=True)
    kind.add_argument("--systemd", action="store_true", help=".service + .timer per job")
    kind.add_argument("--cron", action="store_true", help="crontab lines (stdout or --output)")
    command.add_argument(
        "--output", "-o", default=None, metavar="DIR", help="(default /etc/systemd/system)"
    )
    command.add_argument("--force", action="store_true", help="overwrite existing files")
    command.set_defaults(run="schedule:schedule_install")
    command = schedule_sub.add_parser("run", help="run one job now, as the daemon would")
    command.add_argument("job", choices=["backup", "copy", "prune", "check", "drill"])
    _schedule_options(command)
    command.set_defaults(run="schedule:schedule_run")

    config = sub.add_parser("config", help="platform files: validate, schema, new, docs")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    command = config_sub.add_parser("validate", help="check a platform file")
    command.add_argument("file", metavar="PLATFORM_FILE")
    command.set_defaults(run="platform_commands:config_validate")
    command = config_sub.add_parser("schema", help="print the JSON Schema")
    command.set_defaults(run="platform_commands:config_schema")
    command = config_sub.add_parser("docs", help="print the Markdown reference (docs/config.md)")
    command.set_defaults(run="platform_commands:config_docs")
    command = config_sub.add_parser("new", help="write a commented platform file from a preset")
    command.add_argument("--preset", required=True, choices=PRESETS)
    command.add_argument("--output", "-o", default=None, help="file to write (default: stdout)")
    command.set_defaults(run="platform_commands:config_new")

    command = sub.add_parser(
        "discover", help="propose a platform file from a docker-compose.yml or a cluster"
    )
    command.add_argument("compose_file", metavar="COMPOSE_FILE", nargs="?")
    command.add_argument(
        "--kubernetes", action="store_true", help="read a Kubernetes cluster instead (kubectl)"
    )
    command.add_argument("--namespace", "-n", default=None, help="kubernetes: only this one")
    command.add_argument(
        "--from-json",
        action="append",
        nargs="+",
        default=[],
        metavar="FILE",
        help="kubernetes: saved `kubectl get pv,pvc,deploy,statefulset,pod -o json` output",
    )
    command.add_argument(
        "--kubectl", default="kubectl", help="kubernetes: how kubectl is run (microk8s.kubectl)"
    )
    command.add_argument("--output", "-o", default=None, help="file to write (default: stdout)")
    command.set_defaults(run="platform_commands:discover_command")

    key = sub.add_parser("key", help="manage passphrase keys")
    key_sub = key.add_subparsers(dest="key_command", required=True, metavar="ACTION")
    for name, function, text in (
        ("list", "keys:key_list", "list keys"),
        ("add", "keys:key_add", "add a passphrase"),
        ("passwd", "keys:key_passwd", "change the passphrase used"),
        ("remove", "keys:key_remove", "remove a key"),
    ):
        command = key_sub.add_parser(name, help=text)
        _common(command)
        if name in ("add", "passwd"):
            command.add_argument(
                "--new-passphrase-file",
                default=None,
                help="read the new passphrase from FILE "
                "(default: $SAFEHOLD_NEW_PASSPHRASE or a prompt)",
            )
        if name == "add":
            command.add_argument(
                "--no-delete",
                action="store_true",
                help="the new key can back up, restore and check, but not forget, prune or repair",
            )
        if name == "remove":
            command.add_argument("key_id", metavar="KEY_ID")
        command.set_defaults(run=function)
    return parser


# A file tree is walked (backup) and written (restore) one frame or two per level: the depth
# must be limited by the file system (PATH_MAX, 4096 bytes: at most ~2048 levels), not by
# Python's default limit of 1000 frames. (Python-to-Python calls need no C stack in 3.11.)
RECURSION_LIMIT = 12_000


def main(argv: list[str] | None = None) -> int:
    sys.setrecursionlimit(max(sys.getrecursionlimit(), RECURSION_LIMIT))
    parser = build_parser()
    args = parser.parse_args(argv)
    prefetch.start(args)  # Argon2id runs while the command's modules load
    for stream in (sys.stdout, sys.stderr):  # a strange file name must never crash the output
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    if args.log_json:
        from safehold.cli.log import JsonLines

        plain, sys.stderr = sys.stderr, JsonLines(sys.stderr)  # type: ignore[assignment]
        try:
            return _run(args)
        finally:
            sys.stderr.flush()
            sys.stderr = plain
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        return _run_command(args)
    finally:
        _warn_about_damage()


def _warn_about_damage() -> None:
    """One warning line per damaged object a command worked around (a snapshot skipped, an
    index file replaced by the packs' headers), so that it never goes unnoticed."""
    repository = sys.modules.get("safehold.repo.repository")
    if repository is None:
        return
    for name, what in repository.take_damage_reports():
        print(f"safehold: warning: {name}: {what}", file=sys.stderr)


def _run_command(args: argparse.Namespace) -> int:
    try:
        # Command modules are imported on use: a backup does not pay for YAML and JSON Schema.
        module, function = args.run.split(":")
        if getattr(args, "dashboard", None):  # daemon --dashboard: the web layer wraps it
            module, function = "safehold.web.serve", "daemon_with_dashboard"
        # A dotted name is a module above cli/ (safehold.web): named, never imported here.
        name = module if "." in module else f"safehold.cli.{module}"
        run = getattr(importlib.import_module(name), function)
        return int(run(args) or 0)
    except SafeholdError as error:
        print(f"safehold: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(
            "safehold: interrupted; the repository is unchanged apart from unreferenced data "
            "that the next backup reuses",
            file=sys.stderr,
        )
        return 130
    except Exception:
        traceback.print_exc()
        print(
            "safehold: internal error (a bug): please report it with the trace above",
            file=sys.stderr,
        )
        return EXIT_ERROR


def leave(code: int) -> NoReturn:
    """Exit with ``code`` without the interpreter's teardown when nothing is left to do.

    Finalizing the interpreter (freeing every module and object one by one) costs 18-26 ms
    here, 5-7% of an unchanged backup. When no thread but daemon ones is still running, the
    atexit handlers are run (weakref finalizers, temporary directories, coverage) and the
    output flushed, then the process ends at once; otherwise it exits as usual, which waits
    for the other threads.
    """
    import atexit
    import threading

    others = [t for t in threading.enumerate() if t is not threading.main_thread()]
    if any(thread.is_alive() and not thread.daemon for thread in others):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (| head) or a closed stream
            pass
    os._exit(code)


def entry_point() -> None:
    leave(main())


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    leave(main())
