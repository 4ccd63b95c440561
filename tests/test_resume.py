"""Resume after an interruption (safehold/repo/writer.py, docs/format.md "Adopting unindexed
packs"): packs an interrupted backup stored after its last index file are adopted by the next
writer (their blobs are not uploaded again); damaged ones are not."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import (
    PASSPHRASE,
    backup_json,
    compare_trees,
    flip_byte,
    init_repository,
    open_repository,
    pack_file,
    run_cli,
    write_file,
)
from remote_conftest import BUCKET, S3Server

import safehold.repo.repository
from safehold.repo.cache import cache_root
from safehold.repo.writer import BlobWriter
from safehold.store.wrappers import FaultyStore

KiB = 1024
FILES, FILE_SIZE = 24, 256 * KiB


def make_source(root: Path, files: int = FILES) -> Path:
    for number in range(files):
        write_file(root / f"f{number:02d}.bin", os.urandom(FILE_SIZE))
    return root


def s3_objects(server: S3Server, prefix: str, namespace: str) -> dict[str, int]:
    """Key -> size of every object below PREFIX/NAMESPACE/."""
    found = {}
    pages = server.client().get_paginator("list_objects_v2")
    for page in pages.paginate(Bucket=BUCKET, Prefix=f"{prefix}/{namespace}/"):
        for item in page.get("Contents", []):
            if not item["Key"].endswith(".tmp"):
                found[item["Key"]] = item["Size"]
    return found


def indexed_packs(location: str) -> set[str]:
    with open_repository(location, PASSPHRASE) as repository:  # type: ignore[arg-type]
        return {pack.hex() for pack in repository.index.packs}


def test_a_killed_s3_backup_resumes_without_uploading_its_packs_again(
    tmp_path: Path, remote_location: Callable[[str, str], str], s3_server: S3Server
) -> None:
    url = remote_location("s3", "repo")
    prefix = url.removeprefix(f"s3://{BUCKET}/")
    init_repository(url, pack_size=256 * KiB)  # type: ignore[arg-type]  # a pack per file
    source = make_source(tmp_path / "src")
    total = FILES * FILE_SIZE

    # 1. a real backup process, slowed down (0.2 s per storage operation), killed with
    #    SIGKILL once it has stored several packs and before its first index file (16 packs)
    env = dict(os.environ, BORGSTORE_LATENCY="200000")
    process = subprocess.Popen(
        [sys.executable, "-m", "safehold", "backup", "--repo", url, str(source)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while len(s3_objects(s3_server, prefix, "data")) < 6:
        assert process.poll() is None, process.stderr.read()  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    process.stderr.close()  # type: ignore[union-attr]

    before = s3_objects(s3_server, prefix, "data")
    indexed = indexed_packs(url)
    unindexed = {key: size for key, size in before.items() if key.rsplit("/", 1)[1] not in indexed}
    assert len(unindexed) >= 4, (len(before), len(indexed))
    assert run_cli("snapshots", "--json", "--repo", url).json() == []

    # 2. the next backup adopts them: it uploads only what is missing
    summary = backup_json(url, source)  # type: ignore[arg-type]
    after = s3_objects(s3_server, prefix, "data")
    uploaded = {key: size for key, size in after.items() if key not in before}
    assert set(before) <= set(after)
    assert summary["files_new"] == FILES
    bytes_uploaded = sum(uploaded.values())
    bytes_unindexed = sum(unindexed.values())
    assert bytes_unindexed >= 4 * FILE_SIZE
    # everything stored once: what was there plus what was uploaded is the source (+ overhead)
    assert sum(after.values()) < total * 1.05, (sum(after.values()), total)
    assert bytes_uploaded < total - bytes_unindexed + 64 * KiB
    trees = len(source.parts)  # "/" and each directory down to the source: one tree each
    assert summary["blobs_new"] == FILES - len(unindexed) + trees  # a pack per file
    assert indexed_packs(url) == {key.rsplit("/", 1)[1] for key in after}

    # 3. the repository is whole and restores
    result = run_cli("check", "--read-data", "--repo", url)
    assert result.code == 0, result.err
    restored = tmp_path / "out"
    result = run_cli("restore", f"latest:{source}", "--target", restored, "--repo", url)
    assert result.code == 0, result.err
    compare_trees(source, restored)


def interrupted_writer(repo: Path, source: Path) -> list[bytes]:
    """Store every file of ``source`` as a blob in packs, as a run killed before its index
    file would; returns the ids of the packs written."""
    with open_repository(repo) as repository, repository.lock():
        writer = BlobWriter(repository)
        for path in sorted(source.iterdir()):
            data = path.read_bytes()
            writer.add(0, repository.cipher.blob_id(data), data)
        writer._queue.join()  # the packs are stored; no flush: no index file
        writer.close()
        packs = list(repository.index.packs)
    with open_repository(repo) as repository:
        assert repository.index_names() == []
    return packs


def test_local_unindexed_packs_are_adopted_and_damaged_ones_are_not(tmp_path: Path) -> None:
    repo = init_repository(tmp_path / "repo", pack_size=256 * KiB)
    source = make_source(tmp_path / "src", 12)  # 12 packs: fewer than an index file's 16
    packs = interrupted_writer(repo, source)
    assert len(packs) >= 11
    flip_byte(pack_file(repo, packs[0]), 100)  # one of them is damaged meanwhile
    summary = backup_json(repo, source)
    # the damaged pack's blob (at most two, if a pack holds two files) is stored again
    assert 1 <= summary["blobs_new"] - len(source.parts) <= 2  # + a tree per directory
    with open_repository(repo) as repository:
        assert packs[0] not in set(repository.index.packs)
        assert set(packs[1:]) <= set(repository.index.packs)
    result = run_cli("check", "--read-data", "--repo", repo)
    assert result.code == 0, result.err  # the damaged unindexed pack is a note
    restored = tmp_path / "out"
    assert run_cli("restore", f"latest:{source}", "--target", restored, "--repo", repo).code == 0
    compare_trees(source, restored)


def test_repair_snapshots_does_not_adopt(tmp_path: Path) -> None:
    repo = init_repository(tmp_path / "repo", pack_size=256 * KiB)
    source = make_source(tmp_path / "src", 12)
    interrupted_writer(repo, source)
    assert run_cli("repair", "snapshots", "--repo", repo).code == 0
    with open_repository(repo) as repository:
        assert repository.index_names() == []


def data_listings(repo: Path, source: Path) -> tuple[dict, int]:
    """Back up ``source``; returns (summary, how many times data/ was listed)."""
    calls: list[int] = []
    real_open = safehold.repo.repository.open_store

    def counting(location: str):  # type: ignore[no-untyped-def]
        store = FaultyStore(real_open(location))
        real_list = store.list

        def list_(namespace: str):  # type: ignore[no-untyped-def]
            if namespace == "data":
                calls.append(1)
            return real_list(namespace)

        store.list = list_  # type: ignore[method-assign]
        return store

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(safehold.repo.repository, "open_store", counting)
        summary = backup_json(repo, source)
    return summary, len(calls)


def test_data_is_listed_only_after_a_writer_that_did_not_finish(tmp_path: Path) -> None:
    """A backup after finished ones does not list data/ (a listing is 256 requests over sftp
    and one per 1,000 packs on S3); after an interrupted writer, or one whose process died,
    the next backup lists and adopts, and the one after that does not list again."""
    repo = init_repository(tmp_path / "repo", pack_size=256 * KiB)
    source = make_source(tmp_path / "src", 4)
    assert data_listings(repo, source)[1] == 1  # the first writer here: nothing known yet
    assert data_listings(repo, source)[1] == 0
    with open_repository(repo) as repository, repository.lock():
        before = set(repository.index.packs)
        writer = BlobWriter(repository)  # ends without an index file, like a failed run
        for path in sorted(make_source(tmp_path / "other", 4).iterdir()):
            data = path.read_bytes()
            writer.add(0, repository.cipher.blob_id(data), data)
        writer._queue.join()
        writer.close()
        left = set(repository.index.packs) - before
    assert len(left) >= 3
    assert data_listings(repo, source)[1] == 1
    with open_repository(repo) as repository:
        assert left <= set(repository.index.packs)  # adopted: listed in an index file
    assert data_listings(repo, source)[1] == 0
    # a writer killed with its process: its marker names a pid that no longer runs
    with open_repository(repo) as repository:
        writers = cache_root() / repository.config["id"] / "writers"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    (writers / f"writing-{dead}-0000").touch()
    (writers / f"writing-{os.getpid()}-1111").touch()  # a live writer's marker stays
    assert data_listings(repo, source)[1] == 1
    assert sorted(p.name for p in writers.iterdir()) == [f"writing-{os.getpid()}-1111"]
