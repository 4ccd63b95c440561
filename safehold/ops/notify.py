"""Notifications after a platform backup or drill: webhook, ntfy, healthchecks, email.

The platform file's ``notify:`` section says when (``on: [failure]`` or ``[failure, success]``)
and where. Only the standard library is used (urllib.request, smtplib). A notification that
cannot be delivered never changes the result or exit code of what it reports: it prints one
line on stderr (``safehold: notification to webhook failed: ...``) without URLs or secrets.
"""

from __future__ import annotations

import base64
import json
import smtplib
import socket
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.header import Header
from email.message import EmailMessage
from typing import Any

from safehold.secrecy import remember

TIMEOUT = 10.0  # seconds, for every connection and request
CHANNELS = ("webhook", "ntfy", "healthchecks", "email")
EVENTS = ("backup", "drill", "check", "prune", "copy")  # the last three: scheduled jobs
_DEFAULT_ON = ["failure"]
# healthchecks is a dead man's switch: it needs the success pings, and only backups reset it.
_CHANNEL_DEFAULTS = {"healthchecks": {"on": ["failure", "success"], "events": ["backup"]}}


class NotifyError(Exception):
    """A delivery problem, already phrased without secrets."""


@dataclass
class Event:
    """What is reported: one platform backup or drill."""

    platform: str
    event: str  # backup | drill
    status: str  # ok | partial | failed
    snapshot_id: str
    time: float = field(default_factory=time.time)
    problems: list[str] = field(default_factory=list)

    @property
    def failure(self) -> bool:
        return self.status != "ok"

    @property
    def summary(self) -> str:
        """One line: what happened, and the first problem."""
        snapshot = f" (snapshot {self.snapshot_id[:8]})" if self.snapshot_id else ""
        line = f"safehold {self.event} of platform {self.platform}: {self.status}{snapshot}"
        if self.problems:
            line += f": {self.problems[0]}"
            if len(self.problems) > 1:
                line += f" (and {len(self.problems) - 1} more)"
        return line

    @property
    def title(self) -> str:
        return f"safehold {self.event} {self.status}: {self.platform}"

    def payload(self) -> dict[str, Any]:
        return {
            "platform": self.platform,
            "event": self.event,
            "status": self.status,
            "snapshot_id": self.snapshot_id,
            "time": datetime.fromtimestamp(self.time, timezone.utc).isoformat(),
            "hostname": socket.gethostname(),
            "summary": self.summary,
            "problems": list(self.problems),
        }


def backup_event(platform, result, copy_problems: list[str]) -> Event:  # type: ignore[no-untyped-def]
    """The event of a finished platform backup (safehold/platform/backup.py's result)."""
    problems = []
    for component in result.components:
        if component.status == "failed":
            problems.append(f"component {component.name} failed: {component.error}")
        for error in component.errors:
            problems.append(f"{component.name}: could not read {error['path']}")
    problems += copy_problems
    status = result.status
    if status == "ok" and copy_problems:
        status = "partial"
    return Event(platform.name, "backup", status, result.snapshot_id, problems=problems)


def drill_event(platform, result) -> Event:  # type: ignore[no-untyped-def]
    """The event of a finished drill (safehold/ops/drill_records.py's DrillResult)."""
    problems = [
        f"{component.name}: {failure}"
        for component in result.components
        for failure in component.failures
    ]
    problems += [
        f"check {check['name']!r} ({check['component']}): {check['message']}"
        for check in result.checks
        if check["status"] == "failed"
    ]
    status = "failed" if result.failed else "ok"
    return Event(platform.name, "drill", status, result.snapshot, problems=problems)


def notify(
    settings: dict | None,
    event: Event,
    *,
    warn: Callable[[str], None] | None = None,
) -> list[str]:
    """Send ``event`` to every channel of a ``notify:`` section that wants it.

    Returns the channels it was delivered to; failures are reported through ``warn`` (one
    line on stderr by default) and never raised.
    """
    if warn is None:
        warn = _stderr
    delivered = []
    for channel in CHANNELS:
        options = (settings or {}).get(channel)
        if not options or not _wanted(settings or {}, channel, options, event):
            continue
        try:
            _SENDERS[channel](options, event)
        except Exception as error:  # whatever it is, a notification never fails the caller
            warn(f"safehold: notification to {channel} failed: {_describe(error, options)}")
        else:
            delivered.append(channel)
    return delivered


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def _wanted(settings: dict, channel: str, options: dict, event: Event) -> bool:
    defaults = _CHANNEL_DEFAULTS.get(channel, {})
    on = options.get("on", defaults.get("on", settings.get("on", _DEFAULT_ON)))
    events = options.get("events", defaults.get("events", list(EVENTS)))
    return event.event in events and ("failure" if event.failure else "success") in on


# ------------------------------------------------------------------ HTTP


def _split_credentials(url: str) -> tuple[str, dict[str, str]]:
    """``https://user:pass@host/x`` -> the URL without them, plus a Basic auth header."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise NotifyError(f"not an http(s) URL (scheme {parts.scheme or 'missing'!r})")
    if parts.username is None:
        return url, {}
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    user = urllib.parse.unquote(parts.username)
    password = urllib.parse.unquote(parts.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    clean = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return clean, {"Authorization": f"Basic {token}"}


def _http(url: str, body: bytes | None, headers: dict[str, str], method: str = "POST") -> None:
    url, auth = _split_credentials(url)
    request = urllib.request.Request(url, data=body, headers={**auth, **headers}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            response.read()
    except urllib.error.HTTPError as error:
        raise NotifyError(f"HTTP {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        raise NotifyError(str(error.reason)) from None


def _header(text: str) -> str:
    """A header value: as is when latin-1, else RFC 2047 (ntfy understands both)."""
    try:
        text.encode("latin-1")
        return text
    except UnicodeEncodeError:
        return Header(text, "utf-8").encode()


def _webhook(options: dict, event: Event) -> None:
    body = json.dumps(event.payload()).encode()
    _http(options["url"], body, {"Content-Type": "application/json"})


def _ntfy(options: dict, event: Event) -> None:
    headers = {
        "Title": _header(event.title),
        "Priority": "high" if event.failure else "default",
        "Tags": "warning" if event.failure else "white_check_mark",
        "Content-Type": "text/plain; charset=utf-8",
    }
    if options.get("token"):
        remember(options["token"])
        headers["Authorization"] = f"Bearer {options['token']}"
    _http(options["url"], event.summary.encode(), headers)


def _healthchecks(options: dict, event: Event) -> None:
    url = options["url"].rstrip("/")
    body = "\n".join([event.summary, *event.problems]).encode()
    _http(url + "/fail" if event.failure else url, body, {"Content-Type": "text/plain"})


# ------------------------------------------------------------------ email


def _password(options: dict) -> str | None:
    if options.get("password_file"):
        try:
            with open(options["password_file"], encoding="utf-8") as handle:
                secret = handle.readline().rstrip("\r\n")
                remember(secret)
                return secret
        except OSError as error:
            raise NotifyError(f"cannot read its password_file: {error.strerror}") from None
    remember(options.get("password"))
    return options.get("password")


def _email(options: dict, event: Event) -> None:
    message = EmailMessage()
    message["Subject"] = event.title
    message["From"] = options["from"]
    message["To"] = ", ".join(options["to"])
    lines = [event.summary, ""]
    lines += [f"- {problem}" for problem in event.problems]
    details = event.payload()
    lines += ["", *(f"{key}: {details[key]}" for key in ("event", "status", "time", "hostname"))]
    lines.append(f"snapshot: {event.snapshot_id}")
    message.set_content("\n".join(lines) + "\n")
    password = _password(options)
    port = int(options.get("port", 587 if options.get("starttls") else 25))
    with smtplib.SMTP(options["host"], port, timeout=TIMEOUT) as smtp:
        if options.get("starttls"):
            smtp.starttls(context=ssl.create_default_context())
        if options.get("user"):
            smtp.login(options["user"], password or "")
        smtp.send_message(message, from_addr=options["from"], to_addrs=list(options["to"]))


_SENDERS: dict[str, Callable[[dict, Event], None]] = {
    "webhook": _webhook,
    "ntfy": _ntfy,
    "healthchecks": _healthchecks,
    "email": _email,
}


def _describe(error: BaseException, options: dict) -> str:
    """One line about a failed delivery, with the URL, user and password taken out."""
    if isinstance(error, smtplib.SMTPResponseException):
        text = f"SMTP {error.smtp_code} {error.smtp_error.decode(errors='replace')}"
    elif isinstance(error, (NotifyError, OSError, smtplib.SMTPException)):
        text = str(error) or type(error).__name__
    else:
        text = f"{type(error).__name__}: {error}"
    secrets = [str(options.get(key) or "") for key in ("url", "password", "token")]
    try:
        secrets.append(_password(options) or "")
    except NotifyError:
        pass
    url = str(options.get("url") or "")
    parts = urllib.parse.urlsplit(url) if url else None
    if parts is not None and parts.password:
        secrets.append(parts.password)
        secrets.append(urllib.parse.unquote(parts.password))
    for secret in sorted(filter(None, set(secrets)), key=len, reverse=True):
        text = text.replace(secret, "***")
    return " ".join(text.split())[:300]
