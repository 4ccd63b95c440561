"""Remote locations that fail: each failure is one clear line naming the location (never a
credential), with the exit code of its safehold error; real servers on 127.0.0.1."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import servers
from conftest import CliResult, run_cli
from remote_conftest import BUCKET, S3Server, SftpServer, sftp_server_process

from safehold.errors import NoSpace, NotARepository, RepositoryNotFound, StorageError
from safehold.repo.repository import Repository
from safehold.store import LocationMissing, TransientStorageError, location_exists, open_store

SECRET = "s3cr3t-never-shown"


def assert_final_error(result: CliResult, code: int, *fragments: str) -> None:
    """The command failed with ``code``; its last stderr line is the one-line error (retry
    notes may come before it); no traceback, no secret."""
    assert result.code == code, (result.code, result.err)
    assert result.err_lines and result.err_lines[-1].startswith("safehold: "), result.err
    assert "Traceback" not in result.err
    assert SECRET not in result.err + result.out
    for fragment in fragments:
        assert fragment in result.err_lines[-1], (fragment, result.err)


# ---------------------------------------------------------------------------------- sftp


def test_sftp_nothing_listening_is_a_clear_error_after_retries(
    sftp_env: SftpServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sftp://root@127.0.0.1:{servers.free_port()}/srv/repo"
    result = run_cli("snapshots", "--repo", url)
    assert_final_error(result, 15, url, "cannot connect to 127.0.0.1", "failed 3 times")
    notes = [r.getMessage() for r in caplog.records if r.name == "safehold.store"]
    assert len(notes) == 2 and "retry 1 of 2" in notes[0], notes


def test_sftp_unknown_host_key_is_refused(
    sftp_env: SftpServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text((sftp_env.home / ".ssh" / "config").read_text())
    monkeypatch.setenv("HOME", str(home))
    url = sftp_env.url(tmp_path / "repo")
    result = run_cli("init", "--repo", url)
    assert_final_error(result, 15, url, "host key", "is unknown", "known_hosts")
    assert not (tmp_path / "repo").exists()


def test_sftp_wrong_key_is_an_authentication_error(
    sftp_env: SftpServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    servers._run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")])
    (home / ".ssh" / "config").write_text(f"Host 127.0.0.1\n    IdentityFile {tmp_path}/other\n")
    (home / ".ssh" / "known_hosts").write_text((sftp_env.home / ".ssh" / "known_hosts").read_text())
    monkeypatch.setenv("HOME", str(home))
    result = run_cli("init", "--repo", sftp_env.url(tmp_path / "repo"))
    assert_final_error(result, 15, "authentication failed")


def test_sftp_missing_empty_and_file_locations(sftp_env: SftpServer, tmp_path: Path) -> None:
    with pytest.raises(RepositoryNotFound):
        Repository.open(sftp_env.url(tmp_path / "missing"), b"x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RepositoryNotFound):
        Repository.open(sftp_env.url(tmp_path / "empty"), b"x")
    (tmp_path / "file").write_text("not a repository")
    with pytest.raises(NotARepository):
        Repository.open(sftp_env.url(tmp_path / "file"), b"x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "something").write_text("x")
    with pytest.raises(NotARepository):
        Repository.open(sftp_env.url(tmp_path / "other"), b"x")
    result = run_cli("snapshots", "--repo", sftp_env.url(tmp_path / "missing"))
    assert_final_error(result, 10, "no safehold repository at sftp://")


def test_sftp_home_relative_path(sftp_env: SftpServer) -> None:
    name = f"safehold-test-{uuid.uuid4().hex}"
    url = f"sftp://{sftp_env.user}@127.0.0.1:{sftp_env.port}/~/{name}"
    assert open_store(url).target.path == name  # type: ignore[union-attr]
    assert not location_exists(url)  # looked up in the login directory, where it is not


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        (f"sftp://root:{SECRET}@example.org/srv/repo", "passwords in sftp:// URLs"),
        ("sftp:///srv/repo", "no host"),
        ("sftp://example.org", "no path"),
        ("sftp://example.org:99999/srv", "invalid sftp URL"),
        (f"s3://AKIA:{SECRET}@bucket/prefix", "credentials do not belong in the URL"),
        ("s3://bucket", "no prefix"),
        ("s3:///prefix", "no valid bucket name"),
        (f"ftp://user:{SECRET}@example.org/x", "unsupported repository URL scheme 'ftp'"),
    ],
)
def test_malformed_urls_are_refused_without_showing_secrets(url: str, fragment: str) -> None:
    with pytest.raises(StorageError) as caught:
        open_store(url)
    assert fragment in str(caught.value)
    assert SECRET not in str(caught.value)
    result = run_cli("snapshots", "--repo", url)
    assert_final_error(result, 15, fragment)


def test_sftp_dropped_connection_is_reconnected(sftp_env: SftpServer, tmp_path: Path) -> None:
    store = open_store(sftp_env.url(tmp_path / "repo"))
    store.create()
    with store:
        store.save("meta/format", b"before")
        backend = store.inner._impl.backend  # type: ignore[attr-defined]
        backend.ssh.get_transport().close()  # the network drops the connection
        assert store.load("meta/format") == b"before"
        store.save("meta/config", b"after")
    assert (tmp_path / "repo" / "meta" / "config").read_bytes() == b"after"


def test_sftp_server_gone_for_good_gives_a_final_error(
    sftp_env: SftpServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that stops while a store is open: reconnecting fails, the retries run out,
    and the error says what failed where; later calls fail the same way, cleanly."""
    with sftp_server_process() as doomed:
        monkeypatch.setenv("HOME", str(doomed.home))
        url = doomed.url(tmp_path / "repo")
        store = open_store(url)
        store.create()
        store.open()
        store.save("meta/format", b"x")
        backend = store.inner._impl.backend  # type: ignore[attr-defined]

        def dropped(path: str) -> None:
            raise EOFError()  # what paramiko raises when the server hangs up

        backend.client.stat = dropped
    with pytest.raises(StorageError) as caught:
        store.exists("meta/format")  # borgstore's own reconnect fails first, then ours
    assert "look up meta/format failed 3 times" in str(caught.value)
    assert f"{url}: " in str(caught.value)
    assert "cannot connect to 127.0.0.1" in str(caught.value)
    with pytest.raises(StorageError, match="load meta/format failed 3 times"):
        store.load("meta/format")
    store.close()


# ---------------------------------------------------------------------------------- s3


def test_s3_missing_bucket_is_named(s3_env: S3Server) -> None:
    url = "s3://no-such-bucket/repo"
    result = run_cli("init", "--repo", url)
    assert_final_error(result, 15, url, "bucket no-such-bucket does not exist")
    result = run_cli("snapshots", "--repo", url)
    assert_final_error(result, 10, "no safehold repository at s3://no-such-bucket/repo")


def test_s3_unreachable_endpoint_after_retries(
    s3_env: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = f"http://127.0.0.1:{servers.free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    result = run_cli("init", "--repo", f"s3://{BUCKET}/unreachable")
    assert_final_error(result, 15, f"s3://{BUCKET}/unreachable", f"cannot reach {endpoint}")
    result = run_cli("snapshots", "--repo", f"s3://{BUCKET}/unreachable")
    assert_final_error(result, 15, "failed 3 times", f"cannot reach {endpoint}")


def test_s3_without_credentials(s3_env: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    result = run_cli("init", "--repo", f"s3://{BUCKET}/nocreds")
    assert_final_error(result, 15, "no usable S3 credentials", "AWS_PROFILE")


def test_s3_unknown_profile(s3_env: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_PROFILE", "nonexistent")
    result = run_cli("init", "--repo", f"s3://{BUCKET}/profile")
    assert_final_error(result, 15, "nonexistent", "AWS_PROFILE")


def test_s3_empty_prefix_and_object_locations(
    s3_env: S3Server, remote_location: Callable[[str, str], str]
) -> None:
    url = remote_location("s3", "repo")
    with pytest.raises(RepositoryNotFound):
        Repository.open(url, b"x")
    key = url.removeprefix(f"s3://{BUCKET}/")
    s3_env.client().put_object(Bucket=BUCKET, Key=key, Body=b"a file, not a repository")
    with pytest.raises(NotARepository):
        Repository.open(url, b"x")
    s3_env.client().put_object(Bucket=BUCKET, Key=key + "/stray", Body=b"x")
    with pytest.raises(NotARepository):
        Repository.open(url, b"x")


def test_s3_refused_delete_is_reported_not_swallowed(
    s3_env: S3Server, remote_location: Callable[[str, str], str]
) -> None:
    from botocore.exceptions import ClientError

    store = open_store(remote_location("s3", "repo"))
    store.create()
    with store:
        store.save("locks/" + "a" * 32, b"{}")
        client = store.inner._impl.backend.s3  # type: ignore[attr-defined]

        def refuse(**kwargs: object) -> None:
            error = {"Code": "AccessDenied", "Message": "Access Denied"}
            raise ClientError({"Error": error, "ResponseMetadata": {"HTTPStatusCode": 403}}, "x")

        client.delete_object = refuse
        with pytest.raises(StorageError, match="access denied"):
            store.delete("locks/" + "a" * 32)
        assert store.exists("locks/" + "a" * 32)


def test_s3_server_errors_are_retried(
    s3_env: S3Server, remote_location: Callable[[str, str], str]
) -> None:
    from botocore.exceptions import ClientError

    store = open_store(remote_location("s3", "repo"))
    store.create()
    with store:
        client = store.inner._impl.backend.s3  # type: ignore[attr-defined]
        real_put, calls = client.put_object, []

        def flaky_put(**kwargs: object) -> object:
            calls.append(kwargs["Key"])
            if len(calls) == 1:
                error = {"Code": "SlowDown", "Message": "Please reduce your request rate."}
                meta = {"HTTPStatusCode": 503}
                raise ClientError({"Error": error, "ResponseMetadata": meta}, "PutObject")
            return real_put(**kwargs)

        client.put_object = flaky_put
        store.save("meta/format", b"marker")
        assert len(calls) == 2
        assert store.load("meta/format") == b"marker"


def test_sftp_save_fsyncs_on_the_server_and_leaves_no_temp_file(
    sftp_env: SftpServer, tmp_path: Path
) -> None:
    store = open_store(sftp_env.url(tmp_path / "repo"))
    store.create()
    with store:
        backend = store.inner._impl.backend  # type: ignore[attr-defined]
        real_request, extended = backend.client._request, []

        def spy(kind: int, *args: object) -> object:
            if args and isinstance(args[0], str):
                extended.append(args[0])
            return real_request(kind, *args)

        backend.client._request = spy
        store.save("meta/format", b"durable")
        assert extended == ["fsync@openssh.com", "posix-rename@openssh.com"]
        assert backend.fsync_supported

        def broken_rename(old: str, new: str) -> None:
            raise OSError("Failure")

        backend.client.posix_rename = broken_rename
        with pytest.raises(StorageError, match="refused to write meta/config"):
            store.save("meta/config", b"never visible")
        assert not store.exists("meta/config")
    assert sorted(p.name for p in (tmp_path / "repo" / "meta").iterdir()) == ["format"]


def test_sftp_reads_are_whole_when_the_server_answers_less_than_asked(
    sftp_env: SftpServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safehold.store import sftp

    # OpenSSH answers at most 255 KiB a read: asking for 1 MiB makes every reply short.
    monkeypatch.setattr(sftp, "READ_REQUEST", 1024 * 1024)
    store = open_store(sftp_env.url(tmp_path / "repo"))
    store.create()
    name, data = "data/" + "ab" * 32, os.urandom(3 * 1024 * 1024 + 123)
    with store:
        store.save(name, data)
        assert store.load(name) == data
        assert store.load(name, 1000, 2_000_000) == data[1000:2_001_000]
        assert store.load(name, len(data) - 10, 100) == data[-10:]  # past the end: what is there
        assert store.load(name, len(data) + 5, 10) == b""


def test_sftp_a_failed_write_is_reported_not_dropped(sftp_env: SftpServer, tmp_path: Path) -> None:
    from safehold.store import sftp

    store = open_store(sftp_env.url(tmp_path / "repo"))
    store.create()
    with store:
        client = store.inner._impl.backend.client  # type: ignore[attr-defined]
        # /dev/full on the server: every write fails (ENOSPC, SFTP "Failure"), the open works.
        with client.open("/dev/full", mode="w", bufsize=0) as handle:
            with pytest.raises(OSError):
                sftp.write_all(client, handle.handle, os.urandom(3 * 1024 * 1024))


@pytest.mark.parametrize(
    ("code", "status", "expected", "fragment"),
    [
        ("SlowDown", 503, TransientStorageError, "server error SlowDown"),
        ("InternalError", 500, TransientStorageError, "server error InternalError"),
        ("AccessDenied", 403, StorageError, "access denied (AccessDenied) to data/ab"),
        ("XMinioStorageFull", 507, NoSpace, "no space left"),
        ("QuotaExceeded", 403, NoSpace, "no space left"),
        ("NoSuchBucket", 404, LocationMissing, "bucket bkt does not exist"),
        ("InvalidRange", 416, StorageError, "InvalidRange on data/ab: bad range"),
    ],
)
def test_s3_error_codes_map_to_safehold_errors(
    code: str, status: int, expected: type, fragment: str
) -> None:
    from botocore.exceptions import ClientError

    from safehold.store.s3 import parse

    target = parse("s3://bkt/prefix")
    response = {"Error": {"Code": code, "Message": "bad range"}}
    response["ResponseMetadata"] = {"HTTPStatusCode": status}  # type: ignore[assignment]
    error = target.translate(ClientError(response, "GetObject"), "data/ab")  # type: ignore[arg-type]
    assert type(error) is expected
    assert fragment in str(error)
    assert "s3://bkt/prefix" in str(error)


def test_s3_object_lock_keeps_what_a_client_deletes_or_overwrites(
    s3_env: S3Server, tmp_path: Path
) -> None:
    """docs/backends.md's advice for S3: a bucket with Object Lock (default retention).
    safehold works in it unchanged; what a (compromised) client deletes or overwrites stays
    retrievable as an older version, and removing a version is refused."""
    client = s3_env.client()
    bucket = "safehold-locked"
    client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    retention = {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 1}}
    client.put_object_lock_configuration(
        Bucket=bucket, ObjectLockConfiguration={"ObjectLockEnabled": "Enabled", "Rule": retention}
    )
    url = f"s3://{bucket}/repo"
    source = tmp_path / "src"
    source.mkdir()
    (source / "file").write_bytes(b"keep me " * 1000)
    assert run_cli("init", "--repo", url).code == 0
    assert run_cli("backup", "--repo", url, source).code == 0
    with open_store(url) as store:
        [(snapshot, _)] = store.list("snapshots")
        original = store.load(snapshot)
        store.delete(snapshot)  # the attacker's delete: only a delete marker
        [(pack, _)] = store.list("data")
        store.save(pack, b"garbage")  # the attacker's overwrite: only a new version
    key = f"repo/{snapshot}"
    versions = client.list_object_versions(Bucket=bucket, Prefix=key)["Versions"]
    assert [v["Size"] for v in versions] == [len(original)]
    with pytest.raises(Exception, match="AccessDenied"):
        client.delete_object(Bucket=bucket, Key=key, VersionId=versions[0]["VersionId"])
    pack_key = f"repo/data/{pack[5:7]}/{pack[5:]}"
    assert len(client.list_object_versions(Bucket=bucket, Prefix=pack_key)["Versions"]) == 2
