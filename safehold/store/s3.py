"""S3 repositories: ``s3://BUCKET/PREFIX`` on borgstore's s3 backend (AWS, MinIO, Ceph RGW...).

Everything else comes from the usual AWS settings, read by botocore: credentials from
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (``AWS_SESSION_TOKEN``), ``AWS_PROFILE`` or
``~/.aws``; the region from ``AWS_DEFAULT_REGION``/``AWS_REGION`` or the profile; and another
server than AWS from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (then addressed in path
style, ``ENDPOINT/BUCKET/KEY``, which MinIO, Ceph RGW and moto all accept). Credentials in the
URL are refused, so that they never reach a message, a log or a snapshot.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from urllib.parse import unquote, urlsplit

# botocore alone: boto3 (and s3transfer, which it imports) would add ~0.1 s to every start
# and give nothing a client needs. borgstore's S3 class is usable without boto3 once
# __init__, the one place that uses it, is overridden (S3Backend below).
import botocore.session
from borgstore.backends import errors as backend_errors
from borgstore.backends._base import validate_name
from borgstore.backends.s3 import S3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from safehold.errors import NoSpace, StorageError
from safehold.store.base import (
    LocationMissing,
    MiB,
    TransientStorageError,
    one_line,
    redact,
)
from safehold.store.spool import Spooled

BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,254}")
TRANSIENT_CODES = {
    "SlowDown",
    "ServiceUnavailable",
    "InternalError",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "Throttling",
    "ThrottlingException",
    "TooManyRequests",
}
DENIED_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "AllAccessDisabled",
}
NO_SPACE_CODES = {"QuotaExceeded", "XMinioStorageFull", "XMinioAdminBucketQuotaExceeded"}


class S3Backend(S3):
    """borgstore's S3 backend on a client we configure, with ``delete`` reporting failures.

    (borgstore 0.7's ``delete`` swallows every error but a 404, so a delete refused by a
    bucket policy or Object Lock would look like a success.)
    """

    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        # Not calling S3.__init__: it would build a second client from the environment.
        self.delimiter = "/"
        self.bucket = bucket
        self.base_path = prefix.rstrip("/") + "/"
        self.opened = False
        self.s3 = client

    def delete(self, name: str) -> None:
        """Delete the object; ObjectNotFound if absent; other errors propagate."""
        if not self.opened:
            raise backend_errors.BackendMustBeOpen()
        validate_name(name)
        key = self.base_path + name
        try:
            self.s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if _code(error) in ("404", "NoSuchKey", "NotFound"):
                raise backend_errors.ObjectNotFound(name) from None
            raise
        self.s3.delete_object(Bucket=self.bucket, Key=key)

    def store(self, name: str, value: bytes | Spooled) -> None:  # type: ignore[override]
        """Upload the object; a spooled pack is read from its file as botocore sends it."""
        if not isinstance(value, Spooled):
            super().store(name, value)
            return
        if not self.opened:
            raise backend_errors.BackendMustBeOpen()
        validate_name(name)
        self.s3.put_object(
            Bucket=self.bucket,
            Key=self.base_path + name,
            Body=value.reader(),
            ContentLength=len(value),
        )


_loader: list[Any] = []  # botocore's model loader, shared: it caches the parsed S3 model


def _session() -> botocore.session.Session:
    """A fresh botocore session (credentials and region read anew from the environment) that
    reuses the model data already loaded: a client then takes milliseconds, not 0.15 s."""
    core = botocore.session.get_session()
    if _loader:
        core.register_component("data_loader", _loader[0])
    else:
        _loader.append(core.get_component("data_loader"))
    return core


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _status(error: ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def endpoint_url() -> str | None:
    """The S3 endpoint from the environment (None: AWS itself)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


@dataclass(frozen=True)
class S3Target:
    """A repository under a key prefix in an S3 bucket."""

    location: str
    bucket: str
    prefix: str
    endpoint: str | None = None
    kind: str = "s3"
    pack_size: int = 32 * MiB
    uploads: int = 4
    precreate_levels: bool = False  # no directories in S3
    catch: tuple[type[BaseException], ...] = field(default=(BotoCoreError, ClientError))

    @cached_property
    def client(self) -> Any:
        """A botocore S3 client; our RetryingStore does the retrying, so botocore tries once."""
        try:
            session = _session()
            config = Config(
                connect_timeout=10,
                read_timeout=60,
                retries={"mode": "standard", "total_max_attempts": 1},
                s3={"addressing_style": "path" if self.endpoint else "auto"},
            )
            return session.create_client("s3", endpoint_url=self.endpoint, config=config)
        except (BotoCoreError, ValueError) as error:
            raise self.translate(error, "") or StorageError(f"{self.location}: {error}") from None

    def backend(self) -> S3Backend:
        """The borgstore backend for this location."""
        return S3Backend(self.client, self.bucket, self.prefix)

    def translate(self, error: BaseException, name: str) -> Exception | None:
        """The safehold error for a botocore/S3 failure, or None for the common mapping."""
        where = self.location
        cause = error
        if isinstance(error, backend_errors.BackendError) and error.__context__ is not None:
            cause = error.__context__  # borgstore wraps some ClientErrors in BackendError
        if isinstance(cause, ClientError):
            return self._client_error(cause, name)
        if isinstance(cause, NoCredentialsError | PartialCredentialsError):
            return StorageError(
                f"{where}: no usable S3 credentials: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
            )
        if isinstance(cause, ProfileNotFound):
            return StorageError(f"{where}: {one_line(cause)} (check AWS_PROFILE)")
        if isinstance(cause, BotoConnectionError):
            server = self.endpoint or "AWS S3"
            return TransientStorageError(f"{where}: cannot reach {server} ({type(cause).__name__})")
        if isinstance(cause, BotoCoreError):
            return StorageError(f"{where}: {one_line(cause)}")
        if isinstance(error, backend_errors.BackendDoesNotExist):
            return StorageError(f"{where}: bucket {self.bucket} does not exist: create it first")
        return None

    def _client_error(self, error: ClientError, name: str) -> Exception:
        code, status, where = _code(error), _status(error), self.location
        message = one_line(error.response.get("Error", {}).get("Message", "")) or code
        what = name or "the repository"
        if code == "NoSuchBucket":
            return LocationMissing(f"{where}: bucket {self.bucket} does not exist: create it first")
        if code in NO_SPACE_CODES or status == 507:
            return NoSpace(location=where)
        if code in DENIED_CODES or status == 403:
            return StorageError(
                f"{where}: access denied ({code or status}) to {what}: check the credentials, "
                "the bucket policy and Object Lock settings"
            )
        if code in TRANSIENT_CODES or status >= 500:
            return TransientStorageError(f"{where}: server error {code or status} on {what}")
        return StorageError(f"{where}: {code or status} on {what}: {message}")

    def modified_times(self, namespace: str) -> Iterator[tuple[str, float]]:
        """(key, LastModified) of every object in ``namespace`` (its level prefixes
        included)."""
        prefix = f"{self.prefix.rstrip('/')}/{namespace}/"
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield item["Key"].rsplit("/", 1)[1], item["LastModified"].timestamp()

    def _has_keys(self, prefix: str) -> bool:
        listing = self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=1)
        return bool(listing.get("KeyCount"))

    def _has_object(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if _code(error) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def _probe(self, probe: Any) -> bool:
        try:
            return bool(probe())
        except ClientError as error:
            if _code(error) == "NoSuchBucket":
                return False
            raise self._client_error(error, "") from None
        except BotoCoreError as error:
            raise self.translate(error, "") or StorageError(f"{self.location}: {error}") from None

    def exists(self) -> bool:
        """True if any object lies under PREFIX/ (or PREFIX itself is an object)."""
        return self._probe(
            lambda: self._has_keys(self.prefix + "/") or self._has_object(self.prefix)
        )

    def is_file(self) -> bool:
        """True if PREFIX is an object with nothing under PREFIX/ (so certainly no repository)."""
        return self._probe(
            lambda: self._has_object(self.prefix) and not self._has_keys(self.prefix + "/")
        )


def parse(location: str) -> S3Target:
    """The target for an ``s3://BUCKET/PREFIX`` URL; StorageError if it is malformed."""
    shown = redact(location)
    try:
        parts = urlsplit(location)
    except ValueError as error:
        raise StorageError(f"{shown}: invalid s3 URL ({error})") from None
    if "@" in parts.netloc:
        raise StorageError(
            f"{shown}: credentials do not belong in the URL: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
        )
    if not BUCKET.fullmatch(parts.netloc):
        raise StorageError(f"{shown}: no valid bucket name: use s3://BUCKET/PREFIX")
    if parts.query or parts.fragment:
        raise StorageError(f"{shown}: an s3 URL takes no ?query or #fragment")
    prefix = unquote(parts.path).strip("/")
    if not prefix:
        raise StorageError(f"{shown}: no prefix: use s3://BUCKET/PREFIX")
    return S3Target(location=shown, bucket=parts.netloc, prefix=prefix, endpoint=endpoint_url())
