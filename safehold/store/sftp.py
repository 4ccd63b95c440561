"""SFTP repositories: ``sftp://[user@]host[:port]/absolute/path`` on borgstore's sftp backend.

``sftp://user@host/~/repo`` is relative to the account's home directory. Authentication and
host keys work as for OpenSSH's own client, through paramiko: keys from ssh-agent, from
``IdentityFile`` in ``~/.ssh/config`` (which may also set ``User``, ``Port`` and ``HostName``
for a host alias) or ``~/.ssh/id_*``; the server's host key must already be in
``~/.ssh/known_hosts`` (connect once with ``ssh`` to check and add it), unknown hosts are
refused. Passwords are not supported.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from safehold.store.lazy import enable

enable("paramiko")  # before the borgstore backend classes are taken below

import paramiko
from borgstore.backends import errors as backend_errors
from borgstore.backends._base import to_bytes, validate_name, validate_value
from borgstore.backends.sftp import Sftp, with_reconnect
from borgstore.constants import TMP_SUFFIX
from paramiko.sftp import CMD_DATA, CMD_EXTENDED, CMD_READ, CMD_STATUS, CMD_WRITE, int64

from safehold.errors import StorageError
from safehold.store.base import MiB, TransientStorageError, one_line, redact
from safehold.store.spool import Spooled

# paramiko logs connection trouble (with tracebacks) at ERROR level; safehold reports those
# failures itself, on one line. Without a handler here, Python's last-resort handler would
# print paramiko's records to stderr.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

CONNECT_TIMEOUT = 20.0
# borgstore reconnects and redoes an operation once when the connection drops; the backoff
# over longer outages is RetryingStore's (safehold.store.wrappers).
RECONNECT_TRIES = 1
RECONNECT_WAIT = 0.5
# Reads are pipelined by safehold itself (DurableSftp.load): READ_REQUEST bytes a request (what
# OpenSSH's sftp-server answers at most; a server that answers less is asked for the rest), up
# to READ_AHEAD requests in flight. Writes: 32 KiB a request (what every server must accept),
# up to WRITE_AHEAD in flight (OpenSSH's channel window is 2 MiB), every reply checked.
READ_REQUEST = 255 * 1024
READ_AHEAD = 32
WRITE_REQUEST = 32 * 1024
WRITE_AHEAD = 64
# The SSH channel: a receive window of 16 MiB and packets of up to 256 KiB from the server
# (paramiko's defaults, 2 MiB and 32 KiB, cost a Python round of packet handling per 32 KiB).
WINDOW_SIZE = 16 * MiB
MAX_PACKET_SIZE = 256 * 1024


def _first(preferred: tuple[str, ...], wanted: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(name for name in wanted if name in preferred) + tuple(
        name for name in preferred if name not in wanted
    )


class FastTransport(paramiko.Transport):
    """paramiko's transport with what is fastest in Python first: AES-GCM (one AEAD pass in
    OpenSSL, no separate HMAC over every byte), encrypt-then-MAC for the other ciphers, and a
    larger channel window and packet size. Every algorithm is one paramiko and OpenSSH
    offer anyway; only the order of preference changes (both GCM modes are in OpenSSH's
    default list)."""

    _preferred_ciphers = _first(
        paramiko.Transport._preferred_ciphers,
        ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com"),
    )
    _preferred_macs = _first(
        paramiko.Transport._preferred_macs,
        ("hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com"),
    )

    def __init__(self, sock: object, **kwargs: object) -> None:
        super().__init__(
            sock,  # type: ignore[arg-type]
            default_window_size=WINDOW_SIZE,
            default_max_packet_size=MAX_PACKET_SIZE,
            **kwargs,  # type: ignore[arg-type]
        )


def _transport(sock: object, **kwargs: object) -> FastTransport:
    """paramiko's transport_factory: TCP_NODELAY first. Without it Nagle's algorithm and
    the peer's delayed ACKs cost 40 ms at each of the handshake's steps that send two
    messages in a row (about 80 ms of every connection on loopback)."""
    if isinstance(sock, socket.socket):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not TCP: nothing to tune
    return FastTransport(sock, **kwargs)


class _Replies:
    """Collects the replies to pipelined requests (paramiko calls ``_async_response``)."""

    def __init__(self) -> None:
        self.replies: dict[int, tuple[int, paramiko.Message]] = {}

    def _async_response(self, kind: int, message: paramiko.Message, number: int) -> None:
        self.replies[number] = (kind, message)


def _await(client: paramiko.SFTPClient, replies: _Replies, number: int):  # type: ignore[no-untyped-def]
    while number not in replies.replies:
        client._read_response()
    return replies.replies.pop(number)


def read_range(client: paramiko.SFTPClient, handle: bytes, offset: int, size: int) -> bytes:
    """``size`` bytes from ``offset`` of an open file (fewer if it ends first), through
    pipelined read requests. A reply may carry less than asked for (SFTP allows it; older
    servers cap reads at 64 KiB): the rest is asked for again, in requests of the size the
    server answered."""
    pieces: dict[int, bytes] = {}
    missing = [(offset, size)]
    request = READ_REQUEST
    end_of_file = offset + size
    while missing:
        chunks = [
            (start + done, min(request, length - done))
            for start, length in missing
            for done in range(0, length, request)
        ]
        replies, pending, shorter = _Replies(), [], []
        position = 0
        while position < len(chunks) or pending:
            while position < len(chunks) and len(pending) < READ_AHEAD:
                start, length = chunks[position]
                number = client._async_request(replies, CMD_READ, handle, int64(start), length)
                pending.append((number, start, length))
                position += 1
            number, start, length = pending.pop(0)
            kind, message = _await(client, replies, number)
            if kind == CMD_STATUS:
                try:
                    client._convert_status(message)
                except EOFError:
                    end_of_file = min(end_of_file, start)
                    continue
                raise paramiko.SFTPError("expected data")  # pragma: no cover
            if kind != CMD_DATA:
                raise paramiko.SFTPError("expected data")
            data = message.get_string()
            if data:
                pieces[start] = data
            if 0 < len(data) < length:
                shorter.append((start + len(data), length - len(data)))
                request = min(request, len(data))
            elif not data:
                end_of_file = min(end_of_file, start)
        missing = [(start, length) for start, length in shorter if start < end_of_file]
    parts, position = [], offset
    while position in pieces and position < end_of_file:
        parts.append(pieces[position])
        position += len(pieces[position])
    data = b"".join(parts)
    return data[: max(0, end_of_file - offset)]


def write_request_size(client: paramiko.SFTPClient, handle: bytes) -> int:
    """The data per write request: WRITE_REQUEST, or less so that the request fits one SSH
    channel packet (paramiko sends at most the server's maximum less 64 bytes a packet; with
    OpenSSH's 32 KiB maximum, a 32 KiB write would go out as a full packet plus one of a few
    bytes, each encrypted and sent on its own)."""
    maximum = getattr(client.sock, "out_max_packet_size", 0)
    # SFTP write: uint32 length, byte type, uint32 id, string handle, uint64 offset, string data
    room = maximum - 64 - (4 + 1 + 4 + 4 + len(handle) + 8 + 4)
    return min(WRITE_REQUEST, room) if room >= 4096 else WRITE_REQUEST


def write_all(client: paramiko.SFTPClient, handle: bytes, value: bytes | Spooled) -> None:
    """Write ``value`` at the start of an open file through pipelined write requests, and
    check the reply to every one (paramiko's pipelined ``write`` drops the replies still
    outstanding when the file is closed, so a failed write, e.g. a full disk, could pass
    unnoticed). A spooled value is read from its file a block at a time."""
    replies, pending = _Replies(), []
    request = write_request_size(client, handle)
    blocks = value.blocks(request * 32) if isinstance(value, Spooled) else (value,)
    pieces = (
        memoryview(block)[start : start + request]
        for block in blocks
        for start in range(0, len(block), request)
    )
    position, piece = 0, next(pieces, None)
    while piece is not None or pending:
        while piece is not None and len(pending) < WRITE_AHEAD:
            pending.append(
                client._async_request(replies, CMD_WRITE, handle, int64(position), piece)
            )
            position += len(piece)
            piece = next(pieces, None)
        kind, message = _await(client, replies, pending.pop(0))
        if kind != CMD_STATUS:
            raise paramiko.SFTPError("expected status")
        client._convert_status(message)  # raises on any failure


class DurableSftp(Sftp):
    """borgstore's sftp backend, with the temp file fsynced on the server before its rename.

    OpenSSH's sftp-server offers ``fsync@openssh.com``; servers without it get the plain
    write + rename (still atomic, durable only as far as the server's file system makes it).
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.fsync_supported = True

    def _fsync(self, handle: paramiko.SFTPFile) -> None:
        if not self.fsync_supported:
            return
        handle.flush()
        try:
            self.client._request(CMD_EXTENDED, "fsync@openssh.com", handle.handle)  # type: ignore[union-attr]
        except OSError as error:
            if error.errno is not None or "unsupported" not in str(error).lower():
                raise  # a real failure to sync: the save fails
            self.fsync_supported = False  # "Operation unsupported": the server lacks it

    def _reconnect(self) -> None:
        """borgstore's reconnect; if it fails, the old (closed) connection stays in place
        rather than none, so that later calls fail as "connection lost" (and are retried)
        instead of tripping over a missing client."""
        old = self.ssh, self.client
        try:
            super()._reconnect()
        except BaseException:
            self.ssh, self.client = old
            raise

    def recover(self) -> None:
        """Drop the connection and make a new one. RetryingStore calls this before a retry:
        borgstore reconnects by itself only after some kinds of connection loss."""
        if self.opened:
            self._reconnect()

    def _connect(self) -> None:
        """borgstore's connect (host config, known hosts, keys, timeouts), on FastTransport
        with TCP_NODELAY."""
        try:
            self.ssh = paramiko.SSHClient()
            self.ssh.load_system_host_keys()  # unknown hosts are refused (no policy set)
            host_config = self._get_host_config()
            self.ssh.connect(
                hostname=host_config["hostname"],
                username=host_config.get("user"),
                port=int(host_config["port"]),
                key_filename=host_config.get("identityfile"),
                allow_agent=True,
                timeout=self.connect_timeout,
                banner_timeout=self.connect_timeout,
                auth_timeout=self.connect_timeout,
                transport_factory=_transport,
            )
            transport = self.ssh.get_transport()
            if transport is not None and self.keepalive_interval:
                transport.set_keepalive(int(self.keepalive_interval))
            self.client = self.ssh.open_sftp()
            if self.socket_timeout:
                channel = self.client.get_channel()
                if channel is not None:
                    channel.settimeout(self.socket_timeout)
        except Exception:
            self._disconnect()
            raise

    @with_reconnect
    def load(self, name: str, *, size: int | None = None, offset: int = 0) -> bytes:  # type: ignore[override]
        """``size`` bytes from ``offset`` (all the rest with None), in pipelined requests.

        borgstore's load goes through paramiko's prefetch, which passes ``size`` as the end
        position (a ranged read from a later offset took one round trip per 32 KiB), and whose
        background thread can lose the race with the replies and end the prefetch early
        (the rest is then read one round trip per 32 KiB: seconds per pack). ``read_range``
        keeps up to READ_AHEAD requests of 255 KiB in flight instead."""
        if not self.opened:
            raise backend_errors.BackendMustBeOpen()
        validate_name(name)
        try:
            with self.client.open(name) as handle:  # type: ignore[union-attr]
                if offset < 0 or size is None:
                    end = handle.stat().st_size
                    offset = max(0, end + offset) if offset < 0 else offset
                    size = max(0, end - offset) if size is None else size
                if size <= 0:
                    return b""
                return read_range(self.client, handle.handle, offset, size)  # type: ignore[arg-type]
        except FileNotFoundError:
            raise backend_errors.ObjectNotFound(name) from None

    @with_reconnect
    def store(self, name: str, value: bytes | Spooled) -> None:  # type: ignore[override]
        """Write ``value`` (bytes, or a spooled pack read from its file) to a temp file (every
        write's reply checked), fsync it, rename it over ``name``."""
        if not self.opened:
            raise backend_errors.BackendMustBeOpen()
        validate_name(name)
        if not isinstance(value, Spooled):
            value = to_bytes(validate_value(value))  # paramiko writes bytes, not memoryviews
        directory = Path(name).parent
        temp = str(directory / (os.urandom(4).hex() + TMP_SUFFIX))

        def write() -> None:
            # unbuffered: the data goes straight into write requests, without a copy
            with self.client.open(temp, mode="w", bufsize=0) as handle:  # type: ignore[union-attr]
                write_all(self.client, handle.handle, value)  # type: ignore[arg-type]
                self._fsync(handle)

        try:
            try:
                write()
            except FileNotFoundError:  # the directory is created on first use
                self._mkdir(str(directory), parents=True, exist_ok=True)
                write()
            self.client.posix_rename(temp, name)  # type: ignore[union-attr]
        except BaseException:
            try:
                self.client.unlink(temp)  # type: ignore[union-attr]
            except Exception:
                pass
            raise


@dataclass(frozen=True)
class SftpTarget:
    """A repository directory on an SFTP server."""

    location: str
    host: str
    path: str
    port: int = 0  # 0: from ~/.ssh/config, else 22
    user: str | None = None
    kind: str = "sftp"
    pack_size: int = 32 * MiB
    uploads: int = 2
    precreate_levels: bool = False  # directories are made on first use: no 256 round trips
    catch: tuple[type[BaseException], ...] = field(default=(paramiko.SSHException,))

    def backend(self) -> DurableSftp:
        """The borgstore backend for this location (connects on open)."""
        return DurableSftp(
            hostname=self.host,
            path=self.path,
            port=self.port,
            username=self.user,
            connect_timeout=CONNECT_TIMEOUT,
            reconnect_tries=RECONNECT_TRIES,
            reconnect_wait=RECONNECT_WAIT,
        )

    def _where(self) -> str:
        return f"{self.host}:{self.port}" if self.port else self.host

    def translate(self, error: BaseException, name: str) -> Exception | None:
        """The safehold error for an ssh/sftp failure, or None for the common mapping."""
        where = self.location
        if isinstance(error, paramiko.AuthenticationException):
            return StorageError(
                f"{where}: ssh authentication failed for user {self.user or 'from ssh config'}: "
                "check the key (ssh-agent, IdentityFile in ~/.ssh/config)"
            )
        if isinstance(error, paramiko.BadHostKeyException):
            return StorageError(
                f"{where}: the host key of {self.host} does not match ~/.ssh/known_hosts: "
                "refusing to connect (verify the server's key with ssh)"
            )
        if isinstance(error, paramiko.SSHException) and "known_hosts" in str(error):
            return StorageError(
                f"{where}: the host key of {self._where()} is unknown: connect once with ssh "
                "to verify it and add it to ~/.ssh/known_hosts"
            )
        if isinstance(error, paramiko.ssh_exception.NoValidConnectionsError):
            reason = one_line(next(iter(error.errors.values()), error))
            return TransientStorageError(f"{where}: cannot connect to {self._where()} ({reason})")
        if isinstance(error, socket.gaierror):
            cause = TransientStorageError if error.errno == socket.EAI_AGAIN else StorageError
            return cause(f"{where}: cannot resolve host {self.host} ({one_line(error.strerror)})")
        if _connection_lost(error):
            detail = one_line(error) or type(error).__name__
            return TransientStorageError(f"{where}: connection lost ({detail})")
        if isinstance(error, backend_errors.BackendDoesNotExist):
            return StorageError(f"{where}: {self.path} does not exist or is not a directory")
        if isinstance(error, OSError) and error.errno is None and str(error) == "Failure":
            return StorageError(
                f"{where}: the sftp server refused to write {name or 'the repository'} "
                "(SFTP 'Failure': often a full disk or a quota)"
            )
        return None

    @contextmanager
    def _client(self) -> Iterator[paramiko.SFTPClient]:
        """A short-lived sftp connection (for the probes below), errors translated."""
        backend = self.backend()
        try:
            backend._connect()
            yield backend.client  # type: ignore[misc]
        except (OSError, EOFError, paramiko.SSHException) as error:
            raise self.translate(error, "") or StorageError(f"{self.location}: {error}") from error
        finally:
            backend._disconnect()

    def modified_times(self, namespace: str) -> Iterator[tuple[str, float]]:
        """(key, mtime) of every object in ``namespace`` (its level directories included),
        over a connection of its own."""
        top = f"{self.path.rstrip('/')}/{namespace}"
        with self._client() as client:
            pending = [top]
            while pending:
                directory = pending.pop()
                try:
                    entries = client.listdir_attr(directory)
                except FileNotFoundError:
                    continue
                for entry in entries:
                    if stat.S_ISDIR(entry.st_mode or 0):
                        if directory == top:
                            pending.append(f"{directory}/{entry.filename}")
                    elif not entry.filename.endswith(".tmp"):
                        yield entry.filename, float(entry.st_mtime or 0)

    def _stat(self, client: paramiko.SFTPClient) -> paramiko.SFTPAttributes | None:
        try:
            return client.stat(self.path)
        except FileNotFoundError:
            return None

    def exists(self) -> bool:
        """True if the path is a file or a non-empty directory (an empty one holds nothing)."""
        with self._client() as client:
            attributes = self._stat(client)
            if attributes is None:
                return False
            return not stat.S_ISDIR(attributes.st_mode or 0) or bool(client.listdir(self.path))

    def is_file(self) -> bool:
        """True if the path is a regular file (so certainly no repository)."""
        with self._client() as client:
            attributes = self._stat(client)
        return attributes is not None and stat.S_ISREG(attributes.st_mode or 0)


def _connection_lost(error: BaseException) -> bool:
    if isinstance(error, EOFError | socket.timeout | ConnectionError):
        return True
    if isinstance(error, paramiko.SSHException):
        return True
    if isinstance(error, backend_errors.BackendError) and "connection was lost" in str(error):
        return True
    return isinstance(error, OSError) and str(error) == "Socket is closed"


def parse(location: str) -> SftpTarget:
    """The target for an ``sftp://`` URL; StorageError if the URL is malformed."""
    shown = redact(location)
    try:
        parts = urlsplit(location)
        port = parts.port or 0
    except ValueError as error:
        raise StorageError(f"{shown}: invalid sftp URL ({error})") from None
    if parts.password is not None:
        raise StorageError(
            f"{shown}: passwords in sftp:// URLs are not supported: use an ssh key "
            "(ssh-agent or IdentityFile in ~/.ssh/config)"
        )
    if not parts.hostname:
        raise StorageError(f"{shown}: no host in the URL: use sftp://[user@]host[:port]/path")
    if parts.query or parts.fragment:
        raise StorageError(f"{shown}: an sftp URL takes no ?query or #fragment")
    path = unquote(parts.path)
    if path.startswith("/~/"):
        path = path[3:]  # relative to the login directory
    if path.strip("/") in ("", "~"):
        raise StorageError(f"{shown}: no path in the URL: use sftp://[user@]host[:port]/path")
    user = unquote(parts.username) if parts.username else None
    return SftpTarget(location=shown, host=parts.hostname, path=path, port=port, user=user)
