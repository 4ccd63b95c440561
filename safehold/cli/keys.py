"""safehold key list|add|passwd|remove."""

from __future__ import annotations

import argparse

from safehold.cli import render
from safehold.cli.session import new_passphrase, open_repository
from safehold.errors import UsageError


def key_list(args: argparse.Namespace) -> int:
    with open_repository(args) as repository:
        rows = [
            {
                "id": name.split("/", 1)[1],
                "current": name == repository.key_name,
                "created": document.get("created"),
                "hostname": document.get("hostname"),
                "username": document.get("username"),
                "kdf": document.get("kdf"),
                "no_delete": bool(document.get("no_delete")),
            }
            for name, document in repository.key_documents()
        ]
    if args.json:
        render.print_json(rows)
    else:
        print(
            render.table(
                ["", "id", "created", "host", "user", "mode"],
                [
                    [
                        "*" if row["current"] else "",
                        row["id"][:8],
                        render.timestamp(row["created"] or 0),
                        row["hostname"] or "",
                        row["username"] or "",
                        "no-delete" if row["no_delete"] else "",
                    ]
                    for row in rows
                ],
            )
        )
    return 0


def key_add(args: argparse.Namespace) -> int:
    with open_repository(args) as repository:
        secret = new_passphrase(args)
        no_delete = bool(getattr(args, "no_delete", False)) or repository.key_no_delete
        name = repository.add_key(secret, no_delete=no_delete)
    if not args.quiet:
        mode = " (no-delete)" if no_delete else ""
        print(f"key {name.split('/', 1)[1][:8]} added{mode}")
    return 0


def key_passwd(args: argparse.Namespace) -> int:
    with open_repository(args) as repository:
        repository.require_delete("key passwd")  # it deletes the old key: use key add instead
        secret = new_passphrase(args)
        name = repository.add_key(secret)
        # The new key is durable before the old one goes: a crash leaves both, never neither.
        repository.remove_key(repository.key_name, "key passwd")
    if not args.quiet:
        print(
            f"passphrase changed (key {name.split('/', 1)[1][:8]} replaces "
            f"{repository.key_name.split('/', 1)[1][:8]})"
        )
    return 0


def key_remove(args: argparse.Namespace) -> int:
    with open_repository(args) as repository:
        repository.require_delete("key remove")
        names = [name for name, _ in repository.key_documents()]
        matches = [name for name in names if name.split("/", 1)[1].startswith(args.key_id.lower())]
        if len(matches) != 1:
            raise UsageError(f"no single key matches {args.key_id!r}: see 'safehold key list'")
        if matches[0] == repository.key_name:
            raise UsageError(
                "refusing to remove the key in use: open the repository with "
                "another passphrase to remove this one"
            )
        repository.remove_key(matches[0])
    if not args.quiet:
        print(f"key {args.key_id} removed")
    return 0
