"""Notifications (safehold/ops/notify.py) against real local servers on 127.0.0.1.

An http.server in a thread records every request (webhook, ntfy, healthchecks); a tiny SMTP
server written here (socketserver: EHLO/HELO, AUTH PLAIN, MAIL, RCPT, DATA, RSET, NOOP, QUIT)
records every mail. Platform backups and drills run through the CLI in this process.
"""

from __future__ import annotations

import base64
import email
import email.policy
import http.server
import json
import socket
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from safehold.ops import notify as notify_module
from safehold.ops.notify import Event, notify
from safehold.platform.config import ConfigError, parse_platform
from tests.conftest import run_cli

# ------------------------------------------------------------------ local servers


class HttpRecorder:
    """An HTTP server on a free loopback port that records requests and answers `status`."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.status = 200
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _record(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                recorder.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": body,
                    }
                )
                self.send_response(recorder.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            do_GET = do_POST = _record

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class SmtpRecorder:
    """Enough of an SMTP server for smtplib: records envelopes, messages and AUTH PLAIN."""

    def __init__(self) -> None:
        self.mails: list[dict] = []
        self.logins: list[tuple[str, str]] = []
        recorder = self

        class Handler(socketserver.StreamRequestHandler):
            def reply(self, line: str) -> None:
                self.wfile.write(line.encode() + b"\r\n")

            def handle(self) -> None:
                self.reply("220 localhost ESMTP test")
                sender, recipients = None, []
                while True:
                    raw = self.rfile.readline()
                    if not raw:
                        return
                    line = raw.decode().rstrip("\r\n")
                    verb = line.split(" ", 1)[0].upper()
                    if verb == "EHLO":
                        self.reply("250-localhost")
                        self.reply("250-AUTH PLAIN")
                        self.reply("250 8BITMIME")
                    elif verb == "HELO":
                        self.reply("250 localhost")
                    elif verb == "AUTH":
                        _mechanism, token = line.split(" ")[1:3]
                        _zid, user, password = base64.b64decode(token).decode().split("\0")
                        recorder.logins.append((user, password))
                        self.reply("235 2.7.0 authenticated")
                    elif verb == "MAIL":
                        sender = line.split(":", 1)[1].split()[0].strip("<>")
                        recipients = []
                        self.reply("250 OK")
                    elif verb == "RCPT":
                        recipients.append(line.split(":", 1)[1].split()[0].strip("<>"))
                        self.reply("250 OK")
                    elif verb == "DATA":
                        self.reply("354 end with <CRLF>.<CRLF>")
                        data = []
                        while True:
                            chunk = self.rfile.readline()
                            if chunk in (b".\r\n", b".\n", b""):
                                break
                            data.append(chunk[1:] if chunk.startswith(b"..") else chunk)
                        recorder.mails.append(
                            {"from": sender, "to": recipients, "data": b"".join(data)}
                        )
                        self.reply("250 OK queued")
                    elif verb in ("RSET", "NOOP"):
                        self.reply("250 OK")
                    elif verb == "QUIT":
                        self.reply("221 bye")
                        return
                    else:
                        self.reply("502 not implemented")

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def message(self, index: int = 0) -> email.message.EmailMessage:
        data = self.mails[index]["data"].replace(b"\r\n", b"\n")
        parsed = email.message_from_bytes(data, policy=email.policy.default)
        assert isinstance(parsed, email.message.EmailMessage)
        return parsed

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def http_server() -> Iterator[HttpRecorder]:
    server = HttpRecorder()
    yield server
    server.close()


@pytest.fixture
def smtp_server() -> Iterator[SmtpRecorder]:
    server = SmtpRecorder()
    yield server
    server.close()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _failed_event() -> Event:
    return Event(
        "shop",
        "backup",
        "failed",
        "0123456789abcdef" * 4,
        time=1_700_000_000.0,
        problems=["component db failed: exit 3", "data: could not read /x"],
    )


# ------------------------------------------------------------------ channels, one by one


def test_webhook_posts_the_json_document(http_server: HttpRecorder) -> None:
    sent = notify({"webhook": {"url": http_server.url + "/hook"}}, _failed_event())
    assert sent == ["webhook"]
    [request] = http_server.requests
    assert (request["method"], request["path"]) == ("POST", "/hook")
    assert request["headers"]["content-type"] == "application/json"
    document = json.loads(request["body"])
    assert document["platform"] == "shop"
    assert document["event"] == "backup"
    assert document["status"] == "failed"
    assert document["snapshot_id"] == "0123456789abcdef" * 4
    assert document["time"] == "2023-11-14T22:13:20+00:00"
    assert document["problems"] == ["component db failed: exit 3", "data: could not read /x"]
    assert document["summary"] == (
        "safehold backup of platform shop: failed (snapshot 01234567): "
        "component db failed: exit 3 (and 1 more)"
    )


def test_ntfy_posts_the_summary_with_headers(http_server: HttpRecorder) -> None:
    settings = {"ntfy": {"url": http_server.url + "/backups", "token": "tk_secret"}}
    assert notify(settings, _failed_event()) == ["ntfy"]
    [request] = http_server.requests
    assert request["path"] == "/backups"
    assert request["body"].decode() == _failed_event().summary
    headers = request["headers"]
    assert headers["title"] == "safehold backup failed: shop"
    assert headers["priority"] == "high"
    assert headers["tags"] == "warning"
    assert headers["authorization"] == "Bearer tk_secret"


def test_ntfy_success_priority_and_non_latin_title(http_server: HttpRecorder) -> None:
    event = Event("café-ü€", "drill", "ok", "ab" * 32)
    settings = {"on": ["failure", "success"], "ntfy": {"url": http_server.url + "/t"}}
    assert notify(settings, event) == ["ntfy"]
    headers = http_server.requests[0]["headers"]
    assert headers["priority"] == "default"
    assert headers["tags"] == "white_check_mark"
    assert headers["title"].startswith("=?utf-8?")  # RFC 2047: ntfy decodes it


def test_healthchecks_pings_success_and_fail(http_server: HttpRecorder) -> None:
    settings = {"healthchecks": {"url": http_server.url + "/ping/uuid-1/"}}
    ok = Event("shop", "backup", "ok", "cd" * 32)
    assert notify(settings, ok) == ["healthchecks"]  # success by default, on: only [failure]
    assert notify(settings, _failed_event()) == ["healthchecks"]
    assert [r["path"] for r in http_server.requests] == ["/ping/uuid-1", "/ping/uuid-1/fail"]
    assert http_server.requests[1]["body"].decode().splitlines() == [
        _failed_event().summary,
        "component db failed: exit 3",
        "data: could not read /x",
    ]
    # drills do not reset a backup check, unless asked
    assert notify(settings, Event("shop", "drill", "ok", "")) == []
    settings["healthchecks"]["events"] = ["drill"]
    assert notify(settings, Event("shop", "drill", "ok", "")) == ["healthchecks"]


def test_url_credentials_become_basic_auth(http_server: HttpRecorder) -> None:
    url = http_server.url.replace("http://", "http://hook:p%40ss@") + "/h"
    assert notify({"webhook": {"url": url}}, _failed_event()) == ["webhook"]
    expected = base64.b64encode(b"hook:p@ss").decode()
    assert http_server.requests[0]["headers"]["authorization"] == f"Basic {expected}"


def test_email_through_smtp_with_login(smtp_server: SmtpRecorder) -> None:
    settings = {
        "email": {
            "host": "127.0.0.1",
            "port": smtp_server.port,
            "from": "safehold@example.org",
            "to": ["ops@example.org", "oncall@example.org"],
            "user": "mailer",
            "password": "s3cret",
        }
    }
    assert notify(settings, _failed_event()) == ["email"]
    assert smtp_server.logins == [("mailer", "s3cret")]
    [mail] = smtp_server.mails
    assert mail["from"] == "safehold@example.org"
    assert mail["to"] == ["ops@example.org", "oncall@example.org"]
    message = smtp_server.message()
    assert message["Subject"] == "safehold backup failed: shop"
    assert message["To"] == "ops@example.org, oncall@example.org"
    body = message.get_content()
    assert body.startswith(_failed_event().summary + "\n")
    assert "- component db failed: exit 3" in body
    assert "snapshot: " + "0123456789abcdef" * 4 in body


def test_email_password_file(smtp_server: SmtpRecorder, tmp_path: Path) -> None:
    secret = tmp_path / "smtp-password"
    secret.write_text("from-file\nignored\n")
    settings = {
        "email": {
            "host": "127.0.0.1",
            "port": smtp_server.port,
            "from": "a@example.org",
            "to": ["b@example.org"],
            "user": "u",
            "password_file": str(secret),
        }
    }
    assert notify(settings, _failed_event()) == ["email"]
    assert smtp_server.logins == [("u", "from-file")]


def test_on_failure_only_sends_nothing_on_success(
    http_server: HttpRecorder, smtp_server: SmtpRecorder
) -> None:
    settings = {
        "webhook": {"url": http_server.url},
        "ntfy": {"url": http_server.url + "/t"},
        "email": {
            "host": "127.0.0.1",
            "port": smtp_server.port,
            "from": "a@example.org",
            "to": ["b@example.org"],
        },
    }
    assert notify(settings, Event("shop", "backup", "ok", "ab" * 32)) == []
    assert http_server.requests == [] and smtp_server.mails == []
    # partial counts as a failure
    assert notify(settings, Event("shop", "backup", "partial", "ab" * 32)) == [
        "webhook",
        "ntfy",
        "email",
    ]


def test_failures_are_one_line_without_secrets(
    http_server: HttpRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(notify_module, "TIMEOUT", 2.0)
    lines: list[str] = []
    port = _closed_port()
    http_server.status = 500
    settings = {
        "webhook": {"url": f"http://user:hunter2@127.0.0.1:{port}/secret-path"},
        "ntfy": {"url": http_server.url + "/topic-secret"},
        "healthchecks": {"url": "ftp://example.org/x"},
        "email": {
            "host": "127.0.0.1",
            "port": port,
            "from": "a@example.org",
            "to": ["b@example.org"],
            "password": "hunter2",
        },
    }
    assert notify(settings, _failed_event(), warn=lines.append) == []
    assert len(lines) == 4, lines
    assert lines[0].startswith("safehold: notification to webhook failed: ")
    assert "refused" in lines[0].lower()
    assert lines[1] == ("safehold: notification to ntfy failed: HTTP 500 Internal Server Error")
    assert lines[2].startswith("safehold: notification to healthchecks failed: not an http")
    assert lines[3].startswith("safehold: notification to email failed: ")
    for line in lines:
        assert "hunter2" not in line and "secret" not in line and "\n" not in line


# ------------------------------------------------------------------ the platform file


def _platform_text(root: Path, notify_section: dict, *, fail: bool = True) -> str:
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "data" / "a.txt").write_text("hello\n")
    config = {
        "repository": str(root / "repo"),
        "platform": "shop",
        "components": [
            {"name": "data", "type": "files", "paths": [str(root / "data")]},
            {
                "name": "dump",
                "type": "command",
                "backup": "echo partial; echo dump exploded >&2; exit 3" if fail else "echo ok",
                "restore": "cat >/dev/null",
            },
        ],
        "notify": notify_section,
    }
    return json.dumps(config)


def test_platform_file_notify_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    section = {
        "on": ["failure", "success"],
        "webhook": {"url": "${HOOK_URL}"},
        "email": {
            "host": "localhost",
            "from": "a@example.org",
            "to": ["b@example.org"],
            "starttls": True,
            "user": "u",
            "password": "${SMTP_PASSWORD}",
        },
    }
    env = {"HOOK_URL": "http://127.0.0.1:9/h", "SMTP_PASSWORD": "pw"}
    platform = parse_platform(_platform_text(tmp_path, section), "p.yaml", env)
    assert platform.notify["webhook"] == {"url": "http://127.0.0.1:9/h"}
    assert platform.notify["email"]["password"] == "pw"
    assert "pw" not in repr(platform)
    literal = dict(section, email=dict(section["email"], password="pw"))
    with pytest.raises(ConfigError, match="password"):
        parse_platform(_platform_text(tmp_path, literal), "p.yaml", env)
    with pytest.raises(ConfigError, match="unknown key 'sms'"):
        parse_platform(_platform_text(tmp_path, {"sms": {}}), "p.yaml", env)
    with pytest.raises(ConfigError, match="notify.on"):
        parse_platform(_platform_text(tmp_path, {"on": ["always"]}), "p.yaml", env)


def _write_platform(tmp_path: Path, repo: Path, section: dict, *, fail: bool = True) -> Path:
    config = json.loads(_platform_text(tmp_path / "shop", section, fail=fail))
    config["repository"] = str(repo)
    path = tmp_path / "platform.yaml"
    path.write_text(json.dumps(config))
    return path


def test_failed_platform_backup_notifies(
    tmp_path: Path, repo: Path, http_server: HttpRecorder, smtp_server: SmtpRecorder
) -> None:
    section = {
        "webhook": {"url": http_server.url + "/hook"},
        "ntfy": {"url": http_server.url + "/ntfy-topic"},
        "healthchecks": {"url": http_server.url + "/hc"},
        "email": {
            "host": "127.0.0.1",
            "port": smtp_server.port,
            "from": "a@example.org",
            "to": ["b@example.org"],
        },
    }
    result = run_cli("backup", "--config", _write_platform(tmp_path, repo, section))
    assert result.code == 23, result.err  # critical component failed: unchanged
    assert "notification" not in result.err
    by_path = {r["path"]: r for r in http_server.requests}
    assert set(by_path) == {"/hook", "/ntfy-topic", "/hc/fail"}
    document = json.loads(by_path["/hook"]["body"])
    assert (document["platform"], document["event"], document["status"]) == (
        "shop",
        "backup",
        "failed",
    )
    assert len(document["snapshot_id"]) == 64
    assert any(p.startswith("component dump failed:") for p in document["problems"])
    assert "component dump failed" in by_path["/ntfy-topic"]["body"].decode()
    assert "component dump failed" in smtp_server.message().get_content()


def test_successful_backup_with_on_failure_sends_nothing(
    tmp_path: Path, repo: Path, http_server: HttpRecorder
) -> None:
    section = {"webhook": {"url": http_server.url + "/hook"}}
    result = run_cli("backup", "--config", _write_platform(tmp_path, repo, section, fail=False))
    assert result.code == 0, result.err
    assert http_server.requests == []


def test_successful_backup_and_drill_with_on_success(
    tmp_path: Path, repo: Path, http_server: HttpRecorder
) -> None:
    section = {"on": ["failure", "success"], "webhook": {"url": http_server.url + "/hook"}}
    config = _write_platform(tmp_path, repo, section, fail=False)
    assert run_cli("backup", "--config", config).code == 0
    drill = run_cli("drill", "--config", config, "--scratch", tmp_path / "scratch")
    assert drill.code == 0, drill.err
    documents = [json.loads(r["body"]) for r in http_server.requests]
    assert [(d["event"], d["status"], d["problems"]) for d in documents] == [
        ("backup", "ok", []),
        ("drill", "ok", []),
    ]
    assert documents[0]["snapshot_id"] == documents[1]["snapshot_id"]


def test_unreachable_webhook_keeps_the_exit_code(
    tmp_path: Path, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(notify_module, "TIMEOUT", 2.0)
    url = f"http://hook:hunter2@127.0.0.1:{_closed_port()}/hook"
    failing = run_cli(
        "backup", "--config", _write_platform(tmp_path, repo, {"webhook": {"url": url}})
    )
    assert failing.code == 23, failing.err
    [line] = [x for x in failing.err_lines if "notification" in x]
    assert line.startswith("safehold: notification to webhook failed: ")
    assert "hunter2" not in failing.err and "127.0.0.1" not in line
    section = {"on": ["success"], "webhook": {"url": url}}
    ok = run_cli("backup", "--config", _write_platform(tmp_path, repo, section, fail=False))
    assert ok.code == 0, ok.err
    assert any("notification to webhook failed" in x for x in ok.err_lines)


def test_drill_event_lists_failures_and_checks() -> None:
    from types import SimpleNamespace

    from safehold.ops.notify import drill_event

    component = SimpleNamespace(name="db", failures=["table orders: 0 rows, expected 12"])
    result = SimpleNamespace(
        snapshot="ef" * 32,
        failed=True,
        components=[component, SimpleNamespace(name="data", failures=[])],
        checks=[
            {"name": "orders", "component": "db", "status": "failed", "message": "got 0"},
            {"name": "users", "component": "db", "status": "ok", "message": ""},
        ],
    )
    event = drill_event(SimpleNamespace(name="shop"), result)
    assert (event.event, event.status, event.snapshot_id) == ("drill", "failed", "ef" * 32)
    assert event.problems == [
        "db: table orders: 0 rows, expected 12",
        "check 'orders' (db): got 0",
    ]
