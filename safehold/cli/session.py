"""Finding the repository and the passphrase from options, environment or a prompt."""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from safehold.errors import PassphraseMissing, UsageError
from safehold.repo.repository import Repository
from safehold.secrecy import remember


def repository_location(args: argparse.Namespace) -> str:
    location = args.repo or os.environ.get("SAFEHOLD_REPO")
    if not location:
        raise UsageError("no repository given: pass --repo PATH or set SAFEHOLD_REPO")
    return location


def _read_file(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read().rstrip(b"\r\n")
    except OSError as error:
        raise UsageError(f"cannot read {what} file {path}: {error.strerror}") from error


def passphrase(args: argparse.Namespace, *, confirm: bool = False) -> bytes:
    """The passphrase from --passphrase-file, $SAFEHOLD_PASSPHRASE or a terminal prompt."""
    if args.passphrase_file:
        secret = _read_file(args.passphrase_file, "passphrase")
    elif "SAFEHOLD_PASSPHRASE" in os.environ:
        secret = os.environ["SAFEHOLD_PASSPHRASE"].encode()
    else:
        secret = _prompt("repository passphrase: ", confirm)
    remember(secret)  # masked in every message and captured output from now on
    return secret


def new_passphrase(args: argparse.Namespace) -> bytes:
    """The new passphrase for key add/passwd."""
    if args.new_passphrase_file:
        secret = _read_file(args.new_passphrase_file, "new passphrase")
    elif "SAFEHOLD_NEW_PASSPHRASE" in os.environ:
        secret = os.environ["SAFEHOLD_NEW_PASSPHRASE"].encode()
    else:
        secret = _prompt("new passphrase: ", True)
    remember(secret)
    return secret


def _prompt(text: str, confirm: bool) -> bytes:
    if not sys.stdin.isatty():
        raise PassphraseMissing()
    first = getpass.getpass(text)
    if confirm and getpass.getpass("again: ") != first:
        raise UsageError("the passphrases did not match")
    if not first:
        raise UsageError("an empty passphrase is not allowed")
    return first.encode()


def open_repository(args: argparse.Namespace) -> Repository:
    return Repository.open(repository_location(args), lambda: passphrase(args))
