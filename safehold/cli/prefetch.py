"""Start unwrapping the repository key while the command starts up (see safehold.kdf).

Only for a passphrase that needs no prompt (--passphrase-file or $SAFEHOLD_PASSPHRASE). For a
local repository the first key file is read directly (a few small reads); for an sftp or s3
one, the salt and parameters of the key that opened it last on this machine are taken from
the local cache (``safehold.repo.cache.kdf_hint``), as reading the key file would need the
connection first. Argon2id then runs in a background thread, which is what
``Repository.open`` does first; a hint that no longer matches the key file (``key passwd``)
costs one wasted derivation, nothing else. Whatever goes wrong here is ignored: the normal
path then does the same work and reports it properly.
"""

from __future__ import annotations

import argparse
import json
import os
from urllib.parse import unquote, urlsplit

KEY_NAME_CHARS = frozenset("0123456789abcdef")


def start(args: argparse.Namespace) -> None:
    """Begin deriving the key in a daemon thread, if the command opens a local repository."""
    if getattr(args, "config", None) or not hasattr(args, "passphrase_file"):
        return  # a platform file names its own repository; or no repository at all
    location = getattr(args, "repo", None) or os.environ.get("SAFEHOLD_REPO")
    if not location:
        return
    remote = "://" in location and not location.startswith("file://")
    if "://" in location and not remote:
        location = unquote(urlsplit(location).path)
    try:
        if args.passphrase_file:  # read as safehold.cli.session reads it
            with open(args.passphrase_file, "rb") as handle:
                secret = handle.read().rstrip(b"\r\n")
        elif "SAFEHOLD_PASSPHRASE" in os.environ:
            secret = os.environ["SAFEHOLD_PASSPHRASE"].encode()
        else:
            return  # a prompt: the passphrase is not known yet
        if remote:
            from safehold.repo.cache import kdf_hint

            document = kdf_hint(location)
            if document is None:
                return  # never opened from here: a second connection would cost more
        else:
            keys = os.path.join(os.path.expanduser(location), "keys")
            names = sorted(n for n in os.listdir(keys) if n and set(n) <= KEY_NAME_CHARS)
            if not names:
                return
            with open(os.path.join(keys, names[0]), "rb") as handle:
                document = json.loads(handle.read())
        from safehold.kdf import derive_ahead

        derive_ahead(secret, document)
    except Exception:  # best effort: the normal path reports problems
        pass
