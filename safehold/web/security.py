"""The dashboard's access rules: where it may listen, its token, sessions and CSRF tokens.

One secret token per host (``<state dir>/dashboard-token``, mode 0600, made on first start) or
per ``--token-file``. A request is let in with ``Authorization: Bearer TOKEN``, or with the
session cookie that a one-time ``?token=TOKEN`` sets. The cookie and the CSRF token are HMACs
of the token, so neither reveals it, and changing the token ends every session. Every
comparison is constant-time (hmac.compare_digest).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from safehold.errors import UsageError
from safehold.repo.cache import cache_root

TOKEN_FILE = "dashboard-token"
COOKIE = "safehold_session"
DEFAULT_PORT = 8731

# default-src 'self' and nothing inline: no script runs but the package's own files.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",  # a URL never travels on to another site
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
}


@dataclass(frozen=True)
class Listen:
    """Where to serve: a host (an IP address) and a port (0: any free one)."""

    host: str
    port: int

    @property
    def loopback(self) -> bool:
        return ipaddress.ip_address(self.host).is_loopback

    def url(self, port: int | None = None, tls: bool = False) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if tls else 'http'}://{host}:{self.port if port is None else port}/"


def parse_listen(text: str, option: str = "--listen") -> Listen:
    """'127.0.0.1:8731', '[::1]:8731', '0.0.0.0:443', or a bare address (port 8731).
    Raises UsageError."""
    host, port = text, str(DEFAULT_PORT)
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise UsageError(f"{option}: {text!r} is not ADDRESS:PORT")
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise UsageError(
            f"{option}: {host!r} is not an IP address (examples: 127.0.0.1:8731, [::1]:8731)"
        ) from None
    if not port.isdigit() or int(port) > 65535:
        raise UsageError(f"{option}: {port!r} is not a port number")
    return Listen(host, int(port))


def require_safe_transport(
    listen: Listen, tls: bool, insecure_http: bool, option: str = "--listen"
) -> None:
    """A non-loopback address only with TLS or an explicit --insecure-http: the token and
    every page would otherwise cross the network in clear text. Raises UsageError."""
    if listen.loopback or tls or insecure_http:
        return
    raise UsageError(
        f"{option} {listen.host} is not a loopback address: give --tls-cert and --tls-key "
        "(or --insecure-http to send the token and pages unencrypted)"
    )


def load_token(token_file: str | None, state_dir: Path | None = None) -> tuple[str, bool]:
    """The token and whether it was made just now. From ``token_file`` (its first line; it
    must exist and hold at least 16 characters), else ``<state dir>/dashboard-token``, made
    with mode 0600 on first use. Raises UsageError."""
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as handle:
                token = handle.readline().strip()
        except OSError as error:
            raise UsageError(f"--token-file: cannot read {token_file}: {error.strerror}") from None
        if len(token) < 16:
            raise UsageError(f"--token-file: {token_file} holds no token of 16 characters or more")
        return token, False
    path = (state_dir or cache_root()) / TOKEN_FILE
    try:
        token = path.read_text(encoding="utf-8").strip()
        if len(token) >= 16:
            return token, False
    except FileNotFoundError:
        pass
    except OSError as error:
        raise UsageError(f"cannot read the dashboard token {path}: {error.strerror}") from None
    return _make_token(path), True


def _make_token(path: Path) -> str:
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(handle, f"{token}\n".encode())
        os.fsync(handle)
    finally:
        os.close(handle)
    os.replace(temporary, path)
    return token


class Guard:
    """Checks what a request presents against the token."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    def _derived(self, purpose: str) -> str:
        return hmac.new(self._token, purpose.encode(), hashlib.sha256).hexdigest()

    def token_ok(self, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(
            presented.encode("utf-8", "surrogateescape"),  # type: ignore[union-attr]
            self._token,
        )

    @property
    def session(self) -> str:
        """The session cookie's value."""
        return self._derived("session")

    def session_ok(self, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(
            presented.encode("utf-8", "surrogateescape"),  # type: ignore[union-attr]
            self.session.encode(),
        )

    @property
    def csrf(self) -> str:
        """The token every form carries and every POST must send back."""
        return self._derived("csrf")

    def csrf_ok(self, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(
            presented.encode("utf-8", "surrogateescape"),  # type: ignore[union-attr]
            self.csrf.encode(),
        )
