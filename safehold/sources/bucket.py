"""Buckets of an S3-compatible object store (MinIO, Ceph RGW, AWS), read through the S3 API.

Component keys: ``endpoint`` (``http://minio:9000``; AWS itself when absent), ``buckets``
(names) or ``all: true`` (every bucket the credentials list), optional ``region`` and
``credentials`` (``access_key``, which may be ``${VAR}``, and ``secret_key`` as ``${VAR}`` or
``secret_key_file``; without them the usual AWS environment is used). The secret travels as
the component's password: never on a command line, in a log or in a snapshot.

Snapshot layout (docs/format.md, "Bucket components"): the component's directory holds one
directory per bucket; an object's key is its path below it (``uploads/2024/a.dcm`` is the file
``<bucket>/uploads/2024/a.dcm``), its last-modified time is the file's mtime and its ETag,
content type and user metadata are extended attributes (``user.safehold.s3.*``). A key
segment that is not a usable file name is escaped (``%25`` for ``%``, ``%2E`` for ``.``, an
empty segment ``%E``; an object whose key is also a prefix of others ends in ``%O``).

Backup walks each bucket level by level (ListObjectsV2 with ``/`` as delimiter: memory is one
level at a time, like a directory walk) and downloads only objects whose ETag, size or
last-modified differ from the parent snapshot's; the others keep the parent's entry. Versioned
buckets: the current version. Restore puts objects back (into the same bucket, another one, or
another endpoint), skipping equal ones, and deletes nothing unless asked (``delete_extra``).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any
from urllib.parse import unquote

from safehold.archive.entries import DIR, FILE, decode_tree
from safehold.archive.tree import EntryReader, load_tree
from safehold.errors import SafeholdError
from safehold.sources import Kind, SourceError

XATTR = b"user.safehold.s3."
ETAG = XATTR + b"etag"
CONTENT_TYPE = XATTR + b"content-type"
META = XATTR + b"meta."
EMPTY, ALSO_PREFIX = "%E", "%O"
WINDOW = 32  # objects downloaded ahead
SMALL = 1 << 20  # objects up to this size are fetched by the pool, whole
FETCHERS = 4  # threads fetching small objects (a botocore client is thread-safe)
SPOOL = 8 << 20  # objects up to this size are buffered in memory before an upload
PART = 64 << 20  # larger ones go up in parts of this size
_SECRET = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}")
Log = Callable[[str], None]

PROPERTIES = {
    "endpoint": {
        "type": "string",
        "description": "bucket: S3 endpoint URL such as `http://minio:9000` (AWS when absent)",
    },
    "region": {"type": "string", "description": "bucket: region (default `us-east-1`)"},
    "buckets": {
        "type": "array",
        "items": {"type": "string"},
        "minItems": 1,
        "description": "bucket: the buckets to back up",
    },
    "all": {"type": "boolean", "description": "bucket: every bucket the credentials can list"},
    "credentials": {
        "type": "object",
        "additionalProperties": False,
        "description": "bucket: access_key (may be `${VAR}`), secret_key (only `${VAR}`) "
        "or secret_key_file; default: the AWS environment",
        "properties": {
            "access_key": {"type": "string", "description": "access key id (may be `${VAR}`)"},
            "secret_key": {"type": "string", "description": "secret key, only as `${VAR}`"},
            "secret_key_file": {
                "type": "string",
                "description": "file whose first line is the secret key",
            },
        },
    },
}


# ---------------------------------------------------------------- client and names


def client(component: Mapping[str, Any], endpoint: str | None = None) -> Any:
    """A botocore S3 client for the component (``endpoint`` overrides its own); the secret
    key is the component's ``password``. Raises SourceError if it cannot be made."""
    import botocore.session
    from botocore.config import Config

    endpoint = endpoint or component.get("endpoint") or None
    credentials = component.get("credentials") or {}
    keys: dict[str, str] = {}
    if credentials.get("access_key"):
        if not component.get("password"):
            raise SourceError(
                f"component {component.get('name')!r} (bucket) has an access_key but no "
                "secret_key or secret_key_file"
            )
        keys = {
            "aws_access_key_id": credentials["access_key"],
            "aws_secret_access_key": component["password"],
        }
    config = Config(
        connect_timeout=10,
        read_timeout=60,
        retries={"mode": "standard", "total_max_attempts": 4},
        s3={"addressing_style": "path" if endpoint else "auto"},
    )
    try:
        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=endpoint,
            region_name=component.get("region") or "us-east-1",
            config=config,
            **keys,
        )
    except Exception as error:  # botocore raises many kinds for a bad endpoint or region
        raise SourceError(f"bucket component {component.get('name')!r}: {error}") from None


def _failed(what: str, error: Exception) -> SourceError:
    response = getattr(error, "response", None) or {}
    code = response.get("Error", {}).get("Code") or type(error).__name__
    return SourceError(f"{what}: {code}")


def encode_segment(segment: str) -> bytes:
    """A key segment as a file name: ``%`` escaped, and empty, ``.`` and ``..`` segments
    spelled so that they are names."""
    if segment == "":
        return EMPTY.encode()
    text = segment.replace("%", "%25")
    if text in (".", ".."):
        text = text.replace(".", "%2E")
    return text.encode("utf-8")


def decode_name(name: bytes) -> str:
    """The key segment a file name stands for (the inverse of encode_segment, ``%O`` dropped)."""
    text = name.decode("utf-8", "surrogateescape").removesuffix(ALSO_PREFIX)
    return "" if text == EMPTY else unquote(text, errors="surrogateescape")


def _level(s3: Any, bucket: str, prefix: str) -> tuple[list[dict], list[str]]:
    """The objects and the sub-prefixes directly below ``prefix`` in a bucket."""
    objects: list[dict] = []
    prefixes: list[str] = []
    try:
        pages = s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix, Delimiter="/"
        )
        for page in pages:
            objects += page.get("Contents", [])
            prefixes += [item["Prefix"] for item in page.get("CommonPrefixes", [])]
    except Exception as error:
        raise _failed(f"listing bucket {bucket} at {prefix or '/'}", error) from None
    return objects, prefixes


def _bucket_names(s3: Any, component: Mapping[str, Any]) -> list[str]:
    if component.get("all"):
        try:
            return sorted(item["Name"] for item in s3.list_buckets().get("Buckets", []))
        except Exception as error:
            raise _failed("listing the buckets", error) from None
    if not component.get("buckets"):
        raise SourceError(f"component {component.get('name')!r} (bucket) needs buckets or all")
    return list(component["buckets"])


def _ns(when: Any) -> int:
    return int(when.timestamp()) * 1_000_000_000


def _xattrs(etag: str, content_type: str | None, metadata: Mapping[str, str]) -> dict:
    values = {ETAG: etag.encode()}
    if content_type:
        values[CONTENT_TYPE] = content_type.encode()
    for key, value in metadata.items():
        values[META + key.encode()] = value.encode()
    return values


# ---------------------------------------------------------------- backup


@dataclass
class BucketStats:
    """What one backup of a bucket did: objects seen, their bytes, objects downloaded."""

    objects: int = 0
    bytes: int = 0
    downloaded: int = 0


def archive(archiver: Any, component: Mapping[str, Any], target: Any, parent: Any, result: Any):  # type: ignore[no-untyped-def]
    """Backs up the component's buckets (``parent``: this component's tree in the previous
    snapshot, or None); records per-bucket counts in ``result.details``; returns the
    component's directory entry. Raises SourceError when the store cannot be read."""
    s3 = client(component)
    previous = _children(archiver, parent)
    entries, details = [], {}
    with ThreadPoolExecutor(FETCHERS, thread_name_prefix="safehold-bucket") as pool:
        for bucket in _bucket_names(s3, component):
            stats = BucketStats()
            old = previous.get(bucket.encode())
            old_tree = old["subtree"] if old and old["type"] == DIR else None
            entries.append(
                _archive_level(archiver, s3, pool, bucket, "", old_tree, bucket.encode(), stats)
            )
            details[bucket] = vars(stats)
    if hasattr(result, "details"):
        result.details = {"buckets": details}
    return archiver.store_directory(component["name"], entries, mtime_ns=0, previous=parent)


def _children(archiver: Any, tree_id: bytes | None) -> dict[bytes, dict]:
    if tree_id is None:
        return {}
    return {
        entry["name"]: entry
        for entry in decode_tree(archiver.repository.load_tree_blob(tree_id, cached=True))
    }


def _archive_level(  # type: ignore[no-untyped-def]
    archiver, s3, pool, bucket: str, prefix: str, old_tree, name: bytes, stats: BucketStats
) -> dict:
    previous = _children(archiver, old_tree)
    objects, prefixes = _level(s3, bucket, prefix)
    below = {item[len(prefix) : -1] for item in prefixes}
    entries, wanted = [], []
    for item in objects:
        segment = item["Key"][len(prefix) :]
        filename = encode_segment(segment) + (ALSO_PREFIX.encode() if segment in below else b"")
        old = previous.get(filename)
        stats.objects += 1
        stats.bytes += item["Size"]
        if _unchanged(old, item):
            entries.append(old)
        else:
            wanted.append((item, filename))
    for start in range(0, len(wanted), WINDOW):
        entries += _download_window(archiver, s3, pool, bucket, wanted[start : start + WINDOW])
        stats.downloaded += len(wanted[start : start + WINDOW])
    for item in prefixes:
        dirname = encode_segment(item[len(prefix) : -1])
        old = previous.get(dirname)
        subtree = old["subtree"] if old and old["type"] == DIR else None
        entries.append(_archive_level(archiver, s3, pool, bucket, item, subtree, dirname, stats))
    return archiver.store_directory(name.decode(), entries, mtime_ns=0, previous=old_tree)


def _unchanged(old: dict | None, item: dict) -> bool:
    """True if the parent's entry is this object: same ETag, size and last-modified."""
    return (
        old is not None
        and old["type"] == FILE
        and old.get("content") is not None
        and old["size"] == item["Size"]
        and old["mtime"] == _ns(item["LastModified"])
        and (old.get("xattrs") or {}).get(ETAG) == item["ETag"].encode()
    )


def _download_window(
    archiver: Any, s3: Any, pool: ThreadPoolExecutor, bucket: str, wanted: list
) -> list[dict]:
    """Archives a window of objects: the small ones fetched by a few threads at once (at most
    WINDOW x SMALL bytes in memory), the others streamed one by one; in order."""
    small = {
        position: pool.submit(_fetch, s3, bucket, item["Key"])
        for position, (item, _) in enumerate(wanted)
        if item["Size"] <= SMALL
    }
    try:
        return [
            _download(archiver, s3, bucket, item["Key"], filename, small.get(position))
            for position, (item, filename) in enumerate(wanted)
        ]
    finally:
        for future in small.values():
            future.cancel()


def _fetch(s3: Any, bucket: str, key: str) -> dict:
    """GET of a small object, its body read whole."""
    try:
        response = s3.get_object(Bucket=bucket, Key=key)
        with response["Body"] as body:
            response["Body"] = io.BytesIO(body.read())
        return response
    except Exception as error:
        raise _failed(f"reading s3://{bucket}/{key}", error) from None


def _download(  # type: ignore[no-untyped-def]
    archiver, s3, bucket: str, key: str, filename: bytes, fetched=None
) -> dict:
    """Archives one object as the file ``filename`` (``fetched``: a Future of its _fetch)."""
    response = fetched.result() if fetched is not None else None
    if response is None:
        try:
            response = s3.get_object(Bucket=bucket, Key=key)
        except Exception as error:
            raise _failed(f"reading s3://{bucket}/{key}", error) from None
    with response["Body"] as body:
        entry = archiver.archive_stream(
            filename.decode("utf-8", "surrogateescape"),
            body,
            mtime_ns=_ns(response["LastModified"]),
        )
    if entry["size"] != response["ContentLength"]:
        raise SourceError(
            f"s3://{bucket}/{key}: {entry['size']} bytes read, {response['ContentLength']} sent"
        )
    entry["name"] = filename
    entry["xattrs"] = _xattrs(
        response["ETag"], response.get("ContentType"), response.get("Metadata") or {}
    )
    return entry


# ---------------------------------------------------------------- restore


@dataclass
class BucketRestore:
    """What a restore (or a drill) of a bucket component did."""

    restored: int = 0
    skipped: int = 0
    deleted: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    pool: ThreadPoolExecutor | None = field(default=None, repr=False)  # uploads small objects
    pending: list = field(default_factory=list, repr=False)  # (future, key, size)

    def upload(self, key: str, size: int, put: Callable[[], Any]) -> None:
        """Runs ``put`` (the upload of object ``key``) in the pool, at most WINDOW at once,
        or here without a pool; counts it when done."""
        if self.pool is None:
            put()
            self.restored += 1
            self.bytes += size
            return
        self.pending.append((self.pool.submit(put), key, size))
        if len(self.pending) >= WINDOW:
            self.wait(WINDOW // 2)

    def wait(self, left: int = 0) -> None:
        """Waits until at most ``left`` uploads are pending; a failed one is a problem."""
        while len(self.pending) > left:
            future, key, size = self.pending.pop(0)
            try:
                future.result()
            except SafeholdError as error:
                self.problems.append(f"{key}: {error}")
                continue
            self.restored += 1
            self.bytes += size


def _snapshot_buckets(repository: Any, entry: dict) -> dict[str, dict]:
    return {
        child["name"].decode("utf-8", "surrogateescape"): child
        for child in load_tree(repository, entry["subtree"])
        if child["type"] == DIR
    }


def _chosen(component: Mapping[str, Any], held: dict[str, dict]) -> list[str]:
    """The buckets to restore: the platform file's (those the snapshot holds), or all held."""
    if component.get("all"):
        return sorted(held)
    return [name for name in component.get("buckets") or [] if name in held]


def restore_component(  # type: ignore[no-untyped-def]
    repository, entry: dict, component: Mapping[str, Any], options: Mapping[str, Any], log: Log
) -> BucketRestore:
    """Puts the objects of a snapshot's bucket component back: into the same buckets, or
    ``options["to_bucket"]`` (one bucket only), on ``options["to_endpoint"]`` or the
    component's endpoint; equal objects are skipped; with ``options["delete_extra"]`` the
    objects not in the snapshot are deleted from the restored buckets. Raises SourceError."""
    held = _snapshot_buckets(repository, entry)
    names = _chosen(component, held)
    to_bucket = options.get("to_bucket")
    if to_bucket and len(names) != 1:
        raise SourceError(
            f"--to-bucket needs one bucket; component {component.get('name')} holds "
            f"{', '.join(names) or 'none'}"
        )
    s3 = client(component, options.get("to_endpoint"))
    with ThreadPoolExecutor(FETCHERS, thread_name_prefix="safehold-bucket") as pool:
        outcome = BucketRestore(pool=pool)
        for name in names:
            bucket = to_bucket or name
            _ensure_bucket(s3, bucket, component)
            log(
                f"{component.get('name')}: restoring bucket {name}"
                + (f" into {bucket}" if to_bucket else "")
            )
            delete_extra = bool(options.get("delete_extra"))
            _restore_level(repository, s3, bucket, "", held[name]["subtree"], delete_extra, outcome)
        outcome.wait()
    outcome.notes.append(
        f"{outcome.restored} objects written, {outcome.skipped} already equal"
        + (f", {outcome.deleted} deleted" if outcome.deleted else "")
    )
    return outcome


def _ensure_bucket(s3: Any, bucket: str, component: Mapping[str, Any]) -> None:
    try:
        s3.head_bucket(Bucket=bucket)
        return
    except Exception:
        pass
    region = component.get("region") or "us-east-1"
    extra = (
        {}
        if region == "us-east-1"
        else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    )
    try:
        s3.create_bucket(Bucket=bucket, **extra)
    except Exception as error:
        raise _failed(f"creating bucket {bucket}", error) from None


def _restore_level(  # type: ignore[no-untyped-def]
    repository, s3, bucket: str, prefix: str, tree_id: bytes, delete_extra: bool, outcome
) -> None:
    """Restores one level of a bucket's tree (then the levels below): what is there already is
    known from one listing of the level, not a request per object."""
    listed, below = _level(s3, bucket, prefix)
    existing = {item["Key"]: item for item in listed}
    keys, prefixes = set(), set()
    for child in load_tree(repository, tree_id):
        if child["type"] == DIR:
            deeper = prefix + decode_name(child["name"]) + "/"
            prefixes.add(deeper)
            _restore_level(repository, s3, bucket, deeper, child["subtree"], delete_extra, outcome)
        elif child["type"] == FILE:
            key = prefix + decode_name(child["name"])
            keys.add(key)
            try:
                put_object(repository, s3, bucket, key, child, existing.get(key), outcome)
            except SafeholdError as error:  # a damaged blob, a refused write: the others go on
                outcome.problems.append(f"{bucket}/{key}: {error}")
    if delete_extra:
        extra = [key for key in existing if key not in keys]
        for item in below:
            if item not in prefixes:
                extra += list(_all_keys(s3, bucket, item))
        _delete(s3, bucket, extra)
        outcome.deleted += len(extra)


def _metadata(entry: dict) -> tuple[str | None, dict[str, str], str | None]:
    """An entry's content type, user metadata and ETag, from its extended attributes."""
    xattrs = entry.get("xattrs") or {}
    content_type = xattrs.get(CONTENT_TYPE)
    metadata = {
        name[len(META) :].decode(): value.decode()
        for name, value in xattrs.items()
        if name.startswith(META)
    }
    etag = xattrs.get(ETAG)
    return (
        content_type.decode() if content_type else None,
        metadata,
        etag.decode() if etag else None,
    )


def _same_object(listed: dict | None, entry: dict, etag: str | None, md5: str | None) -> bool:
    if listed is None or listed.get("Size") != entry["size"]:
        return False
    return listed.get("ETag") in {etag, f'"{md5}"' if md5 else None} - {None}


def put_object(  # type: ignore[no-untyped-def]
    repository, s3, bucket: str, key: str, entry: dict, listed: dict | None, outcome
) -> None:
    """Writes one snapshot entry as object ``key`` with its content type and metadata, unless
    ``listed`` (the object there now, from a listing) is equal: same size, and the recorded
    ETag or the MD5 of the content. Raises SourceError if the store refuses, IntegrityError
    if the snapshot's content is damaged."""
    content_type, metadata, etag = _metadata(entry)
    if _same_object(listed, entry, etag, None):
        outcome.skipped += 1
        return
    with tempfile.SpooledTemporaryFile(max_size=SPOOL) as spool:
        md5 = hashlib.md5(usedforsecurity=False)
        with EntryReader(repository, entry) as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                md5.update(chunk)
                spool.write(chunk)
        if _same_object(listed, entry, etag, md5.hexdigest()):
            outcome.skipped += 1
            return
        extra = {"Metadata": metadata, **({"ContentType": content_type} if content_type else {})}
        if entry["size"] <= SMALL:  # uploaded from memory, by the pool
            spool.seek(0)
            body = spool.read()
            outcome.upload(key, entry["size"], lambda: _put(s3, bucket, key, body, extra))
            return
        try:
            if entry["size"] > PART:
                _put_in_parts(s3, bucket, key, spool, extra)
            else:
                spool.seek(0)
                s3.put_object(
                    Bucket=bucket, Key=key, Body=spool, ContentLength=entry["size"], **extra
                )
        except Exception as error:
            raise _failed(f"writing s3://{bucket}/{key}", error) from None
    outcome.restored += 1
    outcome.bytes += entry["size"]


def _put(s3: Any, bucket: str, key: str, body: bytes, extra: dict) -> None:
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=body, **extra)
    except Exception as error:
        raise _failed(f"writing s3://{bucket}/{key}", error) from None


def _put_in_parts(s3: Any, bucket: str, key: str, spool: IO[bytes], extra: dict) -> None:
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key, **extra)["UploadId"]
    try:
        spool.seek(0)
        parts = []
        for number in range(1, 10001):
            data = spool.read(PART)
            if not data:
                break
            response = s3.upload_part(
                Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=data
            )
            parts.append({"PartNumber": number, "ETag": response["ETag"]})
        s3.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}
        )
    except BaseException:
        s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
        raise


def _delete(s3: Any, bucket: str, keys: list[str]) -> None:
    for start in range(0, len(keys), 1000):
        batch = keys[start : start + 1000]
        try:
            s3.delete_objects(
                Bucket=bucket, Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True}
            )
        except Exception as error:
            raise _failed(f"deleting objects from {bucket}", error) from None


def _all_keys(s3: Any, bucket: str, prefix: str) -> Iterator[str]:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            yield item["Key"]


# ---------------------------------------------------------------- drill


def drill_component(  # type: ignore[no-untyped-def]
    repository, entry: dict, component: Mapping[str, Any], scratch: str, outcome, log: Log
) -> None:
    """Restores the snapshot's buckets into a scratch bucket on the component's endpoint
    (keys ``<bucket>/<key>``), or into scratch files when no bucket can be made there, and
    compares every object's size and ETag with the snapshot. Fills ``outcome`` (a drill's
    ComponentDrill); the scratch bucket is removed at the end."""
    held = _snapshot_buckets(repository, entry)
    s3 = client(component)
    scratch_bucket = f"safehold-drill-{secrets.token_hex(6)}"
    try:
        _ensure_bucket(s3, scratch_bucket, component)
    except SourceError as error:
        outcome.notes.append(f"no scratch bucket ({error}): restored into scratch files")
        return _drill_files(repository, held, scratch, outcome)
    outcome.restored_into = f"scratch bucket {scratch_bucket}"
    log(f"{component.get('name')}: restoring into scratch bucket {scratch_bucket}")
    try:
        for name, bucket_entry in sorted(held.items()):
            began = time.monotonic()
            with ThreadPoolExecutor(FETCHERS, thread_name_prefix="safehold-bucket") as pool:
                written = BucketRestore(pool=pool)
                subtree = bucket_entry["subtree"]
                _restore_level(repository, s3, scratch_bucket, name + "/", subtree, False, written)
                written.wait()
            outcome.restore_seconds += time.monotonic() - began
            outcome.failures += written.problems
            began = time.monotonic()
            _verify_level(
                repository, s3, scratch_bucket, name + "/", bucket_entry["subtree"], outcome
            )
            outcome.verify_seconds += time.monotonic() - began
    finally:
        _remove_bucket(s3, scratch_bucket, outcome)


def _verify_level(repository, s3, bucket: str, prefix: str, tree_id: bytes, outcome) -> None:  # type: ignore[no-untyped-def]
    """Compares one level of a restored bucket with the snapshot: sizes, and ETags where the
    recorded one is a plain MD5 (not a multipart upload's)."""
    listed = {item["Key"]: item for item in _level(s3, bucket, prefix)[0]}
    for child in load_tree(repository, tree_id):
        name = prefix + decode_name(child["name"])
        if child["type"] == DIR:
            _verify_level(repository, s3, bucket, name + "/", child["subtree"], outcome)
            continue
        item = listed.get(name)
        _, _, etag = _metadata(child)
        if item is None or item["Size"] != child["size"]:
            outcome.failures.append(f"{name}: missing or of another size after the restore")
        elif etag and "-" not in etag and item["ETag"] != etag:
            outcome.failures.append(
                f"{name}: ETag {item['ETag']} after the restore differs from the recorded {etag}"
            )
        else:
            outcome.files += 1
            outcome.bytes += child["size"]


def _objects(repository: Any, tree_id: bytes, prefix: str) -> Iterator[tuple[str, dict]]:
    for child in load_tree(repository, tree_id):
        if child["type"] == DIR:
            yield from _objects(
                repository, child["subtree"], prefix + decode_name(child["name"]) + "/"
            )
        elif child["type"] == FILE:
            yield prefix + decode_name(child["name"]), child


def _drill_files(repository, held: dict, scratch: str, outcome) -> None:  # type: ignore[no-untyped-def]
    """Without a scratch bucket: each object is written to one scratch file in turn (room for
    the largest only) and its size and MD5 compared with the snapshot's."""
    outcome.restored_into = "scratch files"
    path = os.path.join(scratch, "object")
    for name, bucket_entry in sorted(held.items()):
        for key, entry in _objects(repository, bucket_entry["subtree"], name + "/"):
            began = time.monotonic()
            md5, size = hashlib.md5(usedforsecurity=False), 0
            try:
                with open(path, "wb") as sink, EntryReader(repository, entry) as stream:
                    for chunk in iter(lambda: stream.read(1 << 20), b""):
                        md5.update(chunk)
                        size += len(chunk)
                        sink.write(chunk)
            except SafeholdError as error:
                outcome.failures.append(f"{key}: {error}")
                continue
            outcome.restore_seconds += time.monotonic() - began
            _, _, etag = _metadata(entry)
            if size != entry["size"]:
                outcome.failures.append(f"{key}: {size} bytes restored, {entry['size']} recorded")
            elif etag and "-" not in etag and etag.strip('"') != md5.hexdigest():
                outcome.failures.append(
                    f"{key}: ETag {md5.hexdigest()} after the restore differs from the "
                    f"recorded {etag}"
                )
            else:
                outcome.files += 1
                outcome.bytes += size
    if os.path.exists(path):
        os.unlink(path)


def _remove_bucket(s3: Any, bucket: str, outcome: Any) -> None:
    try:
        _delete(s3, bucket, list(_all_keys(s3, bucket, "")))
        s3.delete_bucket(Bucket=bucket)
    except Exception as error:
        outcome.warnings.append(
            f"could not remove the scratch bucket {bucket} ({error}): remove it by hand"
        )


# ---------------------------------------------------------------- validation, discovery


def validate(component: Mapping[str, Any], where: str) -> list[str]:
    """Problems the schema cannot see: buckets or all, and no literal secret key."""
    problems = []
    if not component.get("buckets") and not component.get("all"):
        problems.append(f"{where}: a bucket component needs `buckets:` or `all: true`")
    secret = (component.get("credentials") or {}).get("secret_key")
    if secret is not None and not _SECRET.fullmatch(secret):
        problems.append(
            f"{where}.credentials.secret_key: write ${{VARIABLE}} and set it in the environment, "
            "or use secret_key_file: a secret in the file itself is refused"
        )
    return problems


def propose(service: str, environment: dict, raw_service: dict) -> dict:
    """discover: a bucket component for a MinIO service, its credentials as references to the
    variables the compose file itself uses (never the values)."""
    raw_environment = raw_service.get("environment") or {}
    items = (
        raw_environment.items()
        if isinstance(raw_environment, dict)
        else (item.split("=", 1) for item in raw_environment if "=" in item)
    )
    declared = {key: str(value) for key, value in items}
    prefix = re.sub(r"[^A-Z0-9]", "_", service.upper())
    credentials = {}
    literal = [
        name
        for name in (
            "MINIO_ROOT_USER",
            "MINIO_ROOT_PASSWORD",
            "MINIO_ACCESS_KEY",
            "MINIO_SECRET_KEY",
        )
        if name in declared and not re.search(r"\$\{?[A-Za-z_]", declared[name])
    ]
    for key, names, fallback in (
        ("access_key", ("MINIO_ROOT_USER", "MINIO_ACCESS_KEY"), f"{prefix}_ACCESS_KEY"),
        ("secret_key", ("MINIO_ROOT_PASSWORD", "MINIO_SECRET_KEY"), f"{prefix}_SECRET_KEY"),
    ):
        variable = next(
            (
                found[0]
                for name in names
                if name in declared
                for found in [re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", declared[name])]
                if found
            ),
            fallback,
        )
        credentials[key] = "${" + variable + "}"
    proposed: dict = {"endpoint": f"http://{service}:9000", "all": True, "credentials": credentials}
    if literal:
        proposed["_note"] = (
            f"{' and '.join(literal)} written in the compose file itself: set "
            f"{credentials['access_key'][2:-1]} and {credentials['secret_key'][2:-1]} to those "
            "values in the environment or an env_file (safehold never copies them)"
        )
    return proposed


KIND = Kind(
    name="bucket",
    description="buckets of an S3-compatible object store, read through the S3 API",
    properties=PROPERTIES,
    rank=3,
    before_stop=True,
    archive=archive,
    restore_component=restore_component,
    drill_component=drill_component,
    images=("minio/minio", "bitnami/minio", "*/minio", "minio"),
    propose=propose,
    validate=validate,
)
