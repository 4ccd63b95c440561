"""The bucket kind against moto's S3 server: back up several buckets of thousands of objects,
change some, back up again (only the changed ones are read), restore into another bucket and
onto another endpoint and compare every object and its metadata, drill it."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import servers
from servers import S3Server, moto_server_process

from safehold.platform.config import ConfigError, parse_platform
from safehold.platform.discover import discover
from safehold.sources import bucket
from tests.conftest import run_cli

SECRET = "moto-secret-never-logged"
UPLOADS, RESULTS = 1500, 500


@pytest.fixture(scope="module")
def second_s3() -> Iterator[S3Server]:
    """Another moto server: the "other endpoint" of a restore."""
    yield from servers.serve(moto_server_process)


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """A boto3 client on the session's moto server; the secret key in the environment only."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_ACCESS_KEY_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("S3_SECRET", SECRET)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    client = s3_server.client()
    yield client
    for listed in client.list_buckets()["Buckets"]:
        if listed["Name"] == servers.BUCKET:
            continue
        keys = [o["Key"] for p in _pages(client, listed["Name"]) for o in p.get("Contents", [])]
        for start in range(0, len(keys), 1000):
            client.delete_objects(
                Bucket=listed["Name"],
                Delete={"Objects": [{"Key": k} for k in keys[start : start + 1000]]},
            )
        client.delete_bucket(Bucket=listed["Name"])


def _pages(client, name: str):  # type: ignore[no-untyped-def]
    return client.get_paginator("list_objects_v2").paginate(Bucket=name)


def _fill(client, name: str, count: int) -> None:  # type: ignore[no-untyped-def]
    client.create_bucket(Bucket=name)

    def put(number: int) -> None:
        key = f"series/{number % 7}/image-{number:05d}.dcm"
        client.put_object(Bucket=name, Key=key, Body=b"x%d" % number)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(put, range(count)))
    # Keys that are not plain paths, content types and user metadata.
    client.put_object(Bucket=name, Key="a", Body=b"object and prefix", ContentType="text/plain")
    client.put_object(Bucket=name, Key="a/b", Body=b"below", Metadata={"study": "s1", "k": "v"})
    client.put_object(Bucket=name, Key="folder/", Body=b"")
    client.put_object(Bucket=name, Key="odd//../100%.txt", Body=b"odd", ContentType="x/y")


def _objects(client, name: str) -> dict[str, tuple]:  # type: ignore[no-untyped-def]
    """Every object of a bucket: key -> (ETag, size), and for the odd keys and every 100th
    other one also (content type, user metadata). The ETag of a single-part upload is the MD5
    of the content, so equal ETags are equal contents."""
    found = {
        item["Key"]: [item["ETag"], item["Size"]]
        for page in _pages(client, name)
        for item in page.get("Contents", [])
    }
    for position, key in enumerate(sorted(found)):
        if position % 100 == 0 or not key.startswith("series/"):
            head = client.head_object(Bucket=name, Key=key)
            found[key] += [head.get("ContentType"), head.get("Metadata")]
    return {key: tuple(value) for key, value in found.items()}


def _platform(root: Path, repo: Path, endpoint: str) -> Path:
    def component(name: str, buckets: list[str]) -> dict:
        return {
            "name": name,
            "type": "bucket",
            "endpoint": endpoint,
            "buckets": buckets,
            "credentials": {"access_key": "testing", "secret_key": "${S3_SECRET}"},
        }

    config = {
        "repository": str(repo),
        "platform": "objects",
        "components": [component("uploads", ["uploads"]), component("results", ["results"])],
    }
    path = root / "platform.yaml"
    path.write_text(json.dumps(config))
    return path


def _latest(repo: Path) -> dict:
    result = run_cli("snapshots", "--repo", repo, "--json")
    assert result.code == 0, result.err
    return result.json()[-1]


def _downloaded(snapshot: dict) -> dict[str, int]:
    return {
        name: counts["downloaded"]
        for component in snapshot["components"]
        for name, counts in component["details"]["buckets"].items()
    }


@pytest.mark.slow
def test_buckets_back_up_incrementally_restore_elsewhere_and_drill(
    s3, s3_server, second_s3, tmp_path, repo
):
    _fill(s3, "uploads", UPLOADS)
    _fill(s3, "results", RESULTS)
    platform = _platform(tmp_path, repo, s3_server.endpoint)

    first = run_cli("backup", "--config", platform)
    assert first.code == 0, first.err
    assert _downloaded(_latest(repo)) == {"uploads": UPLOADS + 4, "results": RESULTS + 4}

    # Change three objects (one only in its metadata), add one, delete one.
    s3.put_object(Bucket="uploads", Key="series/0/image-00000.dcm", Body=b"changed")
    s3.put_object(Bucket="uploads", Key="a/b", Body=b"below", Metadata={"study": "s2"})
    s3.put_object(Bucket="results", Key="series/1/image-00001.dcm", Body=b"changed too")
    s3.put_object(Bucket="results", Key="new/one", Body=b"new")
    s3.delete_object(Bucket="results", Key="series/2/image-00002.dcm")
    second = run_cli("backup", "--config", platform)
    assert second.code == 0, second.err
    assert _downloaded(_latest(repo)) == {"uploads": 2, "results": 2}  # only what changed
    assert SECRET not in first.err + second.err + json.dumps(_latest(repo))

    # Another bucket on the same endpoint: every object and its metadata.
    copy = run_cli(
        "restore", "--config", platform, "--component", "uploads", "--to-bucket", "copy", "--yes"
    )
    assert copy.code == 0, copy.err
    uploads = _objects(s3, "uploads")
    assert len(uploads) == UPLOADS + 4
    assert _objects(s3, "copy") == uploads

    # Again: nothing to write; an extra object stays unless --delete-extra.
    s3.put_object(Bucket="copy", Key="series/extra", Body=b"not in the backup")
    again = run_cli(
        "restore", "--config", platform, "--component", "uploads", "--to-bucket", "copy", "--yes"
    )
    assert again.code == 0 and "0 objects written" in again.err, again.err
    assert "series/extra" in _objects(s3, "copy")
    pruned = run_cli(
        "restore",
        *("--config", platform, "--component", "uploads", "--to-bucket", "copy"),
        *("--delete-extra", "--yes"),
    )
    assert pruned.code == 0 and "1 deleted" in pruned.err, pruned.err
    assert _objects(s3, "copy") == uploads

    # Another endpoint, same bucket name.
    other = run_cli(
        "restore",
        *("--config", platform, "--component", "results"),
        *("--to-endpoint", second_s3.endpoint, "--yes"),
    )
    assert other.code == 0, other.err
    assert _objects(second_s3.client(), "results") == _objects(s3, "results")

    # Plain files: keys as paths, metadata as extended attributes where the file system can.
    files = run_cli("restore", "--config", platform, "--target", tmp_path / "files")
    assert files.code in (0, 3), files.err
    root = tmp_path / "files" / "uploads" / "uploads"
    assert (root / "series" / "0" / "image-00000.dcm").read_bytes() == b"changed"
    assert (root / "a%O").read_bytes() == b"object and prefix"
    assert (root / "a" / "b").read_bytes() == b"below"
    assert (root / "odd" / "%E" / "%2E%2E" / "100%25.txt").read_bytes() == b"odd"

    drill = run_cli("drill", "--config", platform, "--json")
    assert drill.code == 0, drill.err
    record = drill.json()
    assert [c["status"] for c in record["components"]] == ["passed", "passed"]
    assert sum(c["files"] for c in record["components"]) == UPLOADS + RESULTS + 8
    assert {b["Name"] for b in s3.list_buckets()["Buckets"]} == {
        servers.BUCKET,
        "uploads",
        "results",
        "copy",
    }  # the scratch bucket is gone


def test_a_damaged_object_fails_the_drill(s3, s3_server, tmp_path, repo, monkeypatch):
    _fill(s3, "uploads", 3)
    _fill(s3, "results", 0)
    platform = _platform(tmp_path, repo, s3_server.endpoint)
    assert run_cli("backup", "--config", platform).code == 0
    real = bucket._metadata

    def wrong_etag(entry):  # type: ignore[no-untyped-def]
        content_type, metadata, _ = real(entry)
        return content_type, metadata, '"00000000000000000000000000000000"'

    monkeypatch.setattr(bucket, "_metadata", wrong_etag)
    drill = run_cli("drill", "--config", platform, "--json")
    assert drill.code != 0
    assert "differs from the recorded" in drill.out


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("${S3_SECRET}", "literal", "credentials.secret_key: write ${VARIABLE}"),
        ('"buckets": ["uploads"]', '"all": false', "needs `buckets:` or `all: true`"),
        (
            '"buckets": ["uploads"]',
            '"buckets": ["uploads"], "paths": ["/x"]',
            "components[0].paths: unknown key for a bucket component",
        ),
    ],
)
def test_bucket_components_are_validated(tmp_path, old, new, message):
    text = _platform(tmp_path, tmp_path / "repo", "http://127.0.0.1:1").read_text()
    with pytest.raises(ConfigError) as caught:
        parse_platform(text.replace(old, new, 1), "p.yaml", {"S3_SECRET": SECRET})
    assert message in str(caught.value)


def test_the_secret_key_stays_out_of_settings(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-a-file\n")
    text = _platform(tmp_path, tmp_path / "repo", "http://127.0.0.1:1").read_text()
    platform = parse_platform(text, "p.yaml", {"S3_SECRET": SECRET})
    assert platform.component("uploads").password == SECRET
    assert SECRET not in repr(platform.component("uploads"))
    text = text.replace('"secret_key": "${S3_SECRET}"', f'"secret_key_file": "{secret_file}"')
    assert parse_platform(text, "p.yaml", {}).component("results").password == "from-a-file"


@pytest.mark.parametrize("segments", [["plain"], ["", "x"], [".", ".."], ["100%", "a%Ob"], ["été"]])
def test_key_segments_survive_as_file_names(segments):
    names = [bucket.encode_segment(segment) for segment in segments]
    assert all(name not in (b"", b".", b"..") and b"/" not in name for name in names)
    assert [bucket.decode_name(name) for name in names] == segments


def test_discover_proposes_a_bucket_for_minio_with_credential_references(tmp_path):
    compose = tmp_path / "docker-compose.yml"
    compose.write_text(
        "services:\n"
        "  minio:\n"
        "    image: quay.io/minio/minio:RELEASE.2024-01-01\n"
        "    environment:\n"
        "      MINIO_ROOT_USER: ${MINIO_USER}\n"
        "      MINIO_ROOT_PASSWORD: ${MINIO_PASSWORD}\n"
        "    volumes: [minio-data:/data]\n"
        "volumes: {minio-data: {}}\n"
    )
    found = discover(str(compose), {"MINIO_USER": "admin", "MINIO_PASSWORD": "hunter22"})
    (component,) = found.document["components"]
    assert component["type"] == "bucket" and component["all"] is True
    assert component["credentials"] == {
        "access_key": "${MINIO_USER}",
        "secret_key": "${MINIO_PASSWORD}",
    }
    assert "hunter22" not in json.dumps(found.document)
    assert os.environ.get("MINIO_PASSWORD") is None
