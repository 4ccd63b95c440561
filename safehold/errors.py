"""User-facing errors: each class's docstring is the message template, each has an exit code.

The command line prints ``str(error)`` on one line and exits with ``error.exit_code``.
Tracebacks are reserved for bugs. The table of exit codes lives in docs/exit-codes.md.
"""

from __future__ import annotations

from safehold.secrecy import mask

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3


class SafeholdError(Exception):
    """{message}"""

    exit_code = EXIT_ERROR

    def __init__(self, message: str = "", **fields: object) -> None:
        self.fields = dict(fields, message=message)
        super().__init__(message)

    def __str__(self) -> str:
        template = (type(self).__doc__ or "{message}").strip().splitlines()[0]
        # No known secret in what fills a message (safehold/secrecy.py); the template is ours.
        fields = {
            key: mask(value) if isinstance(value, str) else value
            for key, value in self.fields.items()
        }
        try:
            return template.format(**fields)
        except (KeyError, IndexError):
            return str(fields.get("message") or template)


class UsageError(SafeholdError):
    """{message}"""

    exit_code = EXIT_USAGE


class RepositoryNotFound(SafeholdError):
    """no safehold repository at {location}: check --repo / SAFEHOLD_REPO, or create one with 'safehold init'"""

    exit_code = 10


class NotARepository(SafeholdError):
    """{location} exists but is not a safehold repository (no format marker): check the path"""

    exit_code = 10


class RepositoryExists(SafeholdError):
    """{location} already holds data: refusing to initialise a repository over it"""

    exit_code = 10


class UnsupportedFormat(SafeholdError):
    """repository format {found} is newer than this safehold understands ({supported}): upgrade safehold"""

    exit_code = 11


class WrongPassphrase(SafeholdError):
    """wrong passphrase: it opens none of the repository's {count} key(s); check SAFEHOLD_PASSPHRASE or --passphrase-file"""

    exit_code = 12


class PassphraseMissing(SafeholdError):
    """no passphrase given: set SAFEHOLD_PASSPHRASE, pass --passphrase-file FILE, or run on a terminal to be asked"""

    exit_code = 12


class IntegrityError(SafeholdError):
    """integrity error: {message}; run 'safehold check --read-data' to see the extent of the damage"""

    exit_code = 13


class DamagedMarker(IntegrityError):
    """{location} holds a repository's key files, but its format marker meta/format is damaged: if this is your repository, write the two lines 'safehold repository' and 'format 1' back into it (docs/format.md) and run 'safehold check'"""

    exit_code = 13


class RepositoryLocked(SafeholdError):
    """repository is locked {message}; wait for it to finish, or if its holder is gone it expires by itself"""

    exit_code = 14


class ConcurrentChange(SafeholdError):
    """{message}: another process changed the repository while this one ran (one that did not respect its lock); nothing was committed: run 'safehold repair index', then the command again"""

    exit_code = 14


class StorageError(SafeholdError):
    """storage error: {message}"""

    exit_code = 15


class NoSpace(StorageError):
    """no space left on the device holding {location}: free space, then run the command again (nothing was lost)"""

    exit_code = 16


class SnapshotNotFound(SafeholdError):
    """no snapshot matches {spec!r}: list them with 'safehold snapshots'"""

    exit_code = 17


class PathNotInSnapshot(SafeholdError):
    """{path} is not in snapshot {snapshot}: browse it with 'safehold ls {snapshot}'"""

    exit_code = 17


class TargetNotWritable(SafeholdError):
    """cannot write to restore target {target}: {reason}"""

    exit_code = 18


class SourceNotFound(SafeholdError):
    """backup source {path} does not exist: check the path"""

    exit_code = 19


class NoDeleteMode(SafeholdError):
    """{operation} refused: {reason} is in no-delete mode, so safehold deletes and overwrites nothing; use a key that may delete (docs/backends.md, "No-delete mode")"""

    exit_code = 26


class MountUnavailable(SafeholdError):
    """cannot mount: {reason}; everything else in safehold works without FUSE (docs/operations.md, "Mount")"""

    exit_code = 27
