"""Exclude rules: --exclude PATTERN, --exclude-file FILE, --exclude-caches, --one-file-system.

A pattern without a slash matches a name at any depth (``*.tmp``, ``node_modules``); a pattern
with a slash matches the absolute path from its start (``/var/lib/x/cache``, ``/home/*/tmp``);
a trailing slash is ignored. Patterns use fnmatch syntax, ``*`` not crossing ``/``.
"""

from __future__ import annotations

import fnmatch
import os
import re

CACHEDIR_TAG = b"CACHEDIR.TAG"
CACHEDIR_SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"


def _compile(pattern: str) -> re.Pattern[bytes]:
    return _regex(pattern.rstrip("/") or "/")


def _regex(pattern: str) -> re.Pattern[bytes]:
    # fnmatch's '*' crosses '/': keep it inside one path component.
    return re.compile(os.fsencode(fnmatch.translate(pattern).replace(".*", "[^/]*")))


def _components(pattern: str) -> list[re.Pattern[bytes]] | None:
    """A path pattern as one rule per component, or None if one of its components might
    match across a '/' (``?`` and ``[...]`` can): then nothing can be ruled out by depth."""
    text = pattern.rstrip("/") or "/"
    if "?" in text or "[" in text:
        return None
    return [_regex(part) for part in text.split("/")]


class Excludes:
    """Decides which paths are left out of a backup."""

    def __init__(
        self,
        patterns: list[str] | None = None,
        *,
        caches: bool = False,
        data_markers: list[tuple[str, ...]] | None = None,
    ) -> None:
        self.patterns = [p for p in (patterns or []) if p.strip() and not p.startswith("#")]
        self.caches = caches
        # each a set of names that together mark a database server's live data directory
        self.data_markers = [tuple(markers) for markers in data_markers or [] if markers]
        self._name_rules = [_compile(p) for p in self.patterns if "/" not in p.rstrip("/")]
        self._path_rules = [_compile(p) for p in self.patterns if "/" in p.rstrip("/")]
        self._path_parts = [_components(p) for p in self.patterns if "/" in p.rstrip("/")]

    @classmethod
    def from_file(cls, path: str) -> list[str]:
        """Read patterns from a file, one a line; blank lines and '#' comments are skipped."""
        with open(path, encoding="utf-8") as handle:
            return [line.strip() for line in handle if line.strip() and not line.startswith("#")]

    def excluded(self, path: bytes, name: bytes) -> bool:
        """True if the path (absolute, bytes) is to be left out."""
        return any(rule.match(name) for rule in self._name_rules) or any(
            rule.match(path) for rule in self._path_rules
        )

    def may_match_below(self, directory: bytes) -> bool:
        """False only if no path below ``directory`` (absolute, bytes) can match: every
        pattern has a slash, and each either has fewer components than a path below it would
        or differs from it in a leading one (``*`` does not cross '/'). Lets a restore with
        --include skip the directories off the included paths without reading their trees."""
        if self._name_rules:
            return True  # a name matches at any depth
        parts = directory.split(b"/")
        for rules in self._path_parts:
            if rules is None:
                return True
            if len(parts) < len(rules) and all(
                rule.match(part) for rule, part in zip(rules, parts, strict=False)
            ):
                return True
        return False

    def is_database_dir(self, path: bytes) -> bool:
        """True if ``path`` holds every file of one of the ``data_markers`` sets (a name
        ending in ``/`` must be a directory): a live database directory, kept empty."""
        for markers in self.data_markers:
            if all(
                (os.path.isdir if marker.endswith("/") else os.path.isfile)(
                    os.path.join(path, os.fsencode(marker.rstrip("/")))
                )
                for marker in markers
            ):
                return True
        return False

    def is_cache_dir(self, path: bytes) -> bool:
        """True if --exclude-caches is on and ``path`` holds a valid CACHEDIR.TAG."""
        if not self.caches:
            return False
        try:
            with open(os.path.join(path, CACHEDIR_TAG), "rb") as handle:
                return handle.read(len(CACHEDIR_SIGNATURE)) == CACHEDIR_SIGNATURE
        except OSError:
            return False
