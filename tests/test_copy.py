"""`safehold copy`: snapshots from one repository to another with a different key.

Runs local -> local and local -> S3 (moto, tests/remote_conftest.py): the target restores
bit-identically, a second copy changes nothing, an incremental copy moves only new chunks,
and a wrong target passphrase fails before anything is written.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import (
    FAST_KDF,
    PASSPHRASE,
    assert_one_line_error,
    backup_json,
    compare_trees,
    run_cli,
    write_file,
)

from safehold.repo.repository import Repository
from safehold.store import open_store

MiB = 1024 * 1024
TARGET_PASSPHRASE = "a different passphrase for the copy"
NAMESPACES = ("meta", "keys", "data", "index", "snapshots", "locks")


def objects(location: str) -> dict[str, int]:
    """Every object of a repository with its size (any backend)."""
    with open_store(location) as store:
        return {name: size for ns in NAMESPACES for name, size in store.list(ns)}


def data_bytes(location: str) -> int:
    return sum(size for name, size in objects(location).items() if name.startswith("data/"))


@pytest.fixture(params=["local", "s3"])
def target(request: pytest.FixtureRequest, remote_location: Callable[[str, str], str]) -> str:
    """A fresh target repository (its own key and passphrase) on a local disk or S3."""
    location = remote_location(request.param, "target")
    Repository.init(location, TARGET_PASSPHRASE.encode(), kdf=FAST_KDF).close()
    return location


@pytest.fixture
def to_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFEHOLD_TO_PASSPHRASE", TARGET_PASSPHRASE)


def copy_json(source: Path, target: str, *specs: str) -> dict:
    result = run_cli("copy", "--repo", source, "--to", target, "--json", *specs)
    assert result.code == 0, result.err
    assert TARGET_PASSPHRASE not in result.out + result.err
    return result.json()  # type: ignore[return-value]


def restore_from(target: str, spec: str, into: Path, tmp_path: Path) -> None:
    secret = tmp_path / "target-passphrase"
    secret.write_text(TARGET_PASSPHRASE + "\n")
    result = run_cli(
        "restore", "--repo", target, "--passphrase-file", secret, spec, "--target", into
    )
    assert result.code == 0, result.err


def test_copy_restores_identically_then_copies_nothing_then_only_new_chunks(
    make_repo: Callable[..., Path], full_tree: Path, target: str, to_env: None, tmp_path: Path
) -> None:
    source = make_repo("source")
    first = backup_json(source, full_tree)["snapshot_id"]
    report = copy_json(source, target)
    assert (report["copied"], report["skipped"]) == (1, 0)
    assert report["snapshots"][0]["source"] == first
    restore_from(target, f"latest:{full_tree}", tmp_path / "restored", tmp_path)
    assert compare_trees(full_tree, tmp_path / "restored", include_root=False) == []
    with Repository.open(target, TARGET_PASSPHRASE.encode()) as repository:
        (name,) = repository.snapshot_names()
        copied = repository.load_snapshot(name.split("/", 1)[1])
    with Repository.open(str(source), PASSPHRASE.encode()) as repository:
        original = repository.load_snapshot(first)
        source_id = repository.config["id"]
    assert copied["copied_from"] == first
    assert copied["copied_from_repository"] == source_id
    assert copied["tree"] != original["tree"]  # other key, other ids
    for key in ("time", "hostname", "username", "paths", "tags", "summary", "program"):
        assert copied[key] == original[key], key

    before = objects(target)
    report = copy_json(source, target)
    assert (report["copied"], report["skipped"]) == (0, 1)
    assert objects(target) == before  # nothing written, not even a lock left behind

    new_data = random.Random(7).randbytes(3 * MiB)
    write_file(full_tree / "new" / "fresh.bin", new_data)
    second = backup_json(source, full_tree)["snapshot_id"]
    stored_before = data_bytes(target)
    report = copy_json(source, target)
    assert (report["copied"], report["skipped"]) == (1, 1)
    (item,) = [s for s in report["snapshots"] if not s["skipped"]]
    assert item["source"] == second
    added = data_bytes(target) - stored_before
    print(f"incremental copy: {len(new_data)} new bytes in the source, {added} added to target")
    assert item["bytes_read"] == len(new_data)  # the rest was known from the first copy
    assert len(new_data) <= added < len(new_data) + 256 * 1024  # new chunks + trees + header
    restore_from(target, f"{item['target']}:{full_tree}", tmp_path / "again", tmp_path)
    assert compare_trees(full_tree, tmp_path / "again", include_root=False) == []
    secret = tmp_path / "target-passphrase"
    result = run_cli("check", "--repo", target, "--passphrase-file", secret, "--read-data")
    assert result.code == 0, result.err


def test_wrong_target_passphrase_fails_clearly_and_writes_nothing(
    make_repo: Callable[..., Path],
    target: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = make_repo("source")
    write_file(tmp_path / "data" / "a.txt", b"some content\n")
    backup_json(source, tmp_path / "data")
    monkeypatch.setenv("SAFEHOLD_TO_PASSPHRASE", "not the right one")
    before, source_before = objects(target), objects(str(source))
    result = run_cli("copy", "--repo", source, "--to", target)
    assert_one_line_error(result, 12, "target repository", "SAFEHOLD_TO_PASSPHRASE")
    assert "not the right one" not in result.err
    assert objects(target) == before
    assert objects(str(source)) == source_before


def test_copy_latest_only_and_back_again(
    make_repo: Callable[..., Path], tmp_path: Path, to_env: None
) -> None:
    source = make_repo("source")
    target = str(tmp_path / "local-target")
    Repository.init(target, TARGET_PASSPHRASE.encode(), kdf=FAST_KDF).close()
    write_file(tmp_path / "data" / "a.txt", b"first\n")
    backup_json(source, tmp_path / "data")
    write_file(tmp_path / "data" / "b.txt", os.urandom(1000))
    latest = backup_json(source, tmp_path / "data")["snapshot_id"]
    report = copy_json(source, target, "latest")
    assert [s["source"] for s in report["snapshots"]] == [latest]
    # Copying the target back into the source finds the original: nothing travels.
    result = run_cli(
        "copy", "--repo", target, "--passphrase-file", _file(tmp_path, "from", TARGET_PASSPHRASE),
        "--to", source, "--to-passphrase-file", _file(tmp_path, "to", PASSPHRASE), "--json",
    )  # fmt: skip
    assert result.code == 0, result.err
    assert result.json()["skipped"] == 1 and result.json()["copied"] == 0


def test_copy_to_the_same_repository_is_refused(
    make_repo: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = make_repo("source")
    monkeypatch.setenv("SAFEHOLD_TO_PASSPHRASE", PASSPHRASE)
    result = run_cli("copy", "--repo", source, "--to", source)
    assert_one_line_error(result, 2, "same repository")


def _file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"passphrase-{name}"
    path.write_text(text)
    return path


@pytest.mark.parametrize("blobs", [1000, 70000])  # a small index (a dict), then arrays
def test_the_id_map_finds_every_pair(blobs: int) -> None:
    """Pairs are kept at the source blob's number in a real index, small or in arrays; every
    one is found, ids ending in NUL bytes included, a blob the index lacks as well (kept
    aside), unknown ones are not; two blobs never share a number."""
    from safehold.ops.copy import IdMap
    from safehold.repo.format import INDEX_RECORD
    from safehold.repo.index import Index

    rnd = random.Random(5)
    sources = [rnd.randbytes(31) + bytes([n % 2]) for n in range(blobs)]
    index = Index()
    index.load_file([b"p" * 32], b"".join(INDEX_RECORD.pack(i, 0, 0, 1, 1, 0) for i in sources))
    index.finish_loading()
    numbers = {index.ordinal(source_id) for source_id in sources}
    assert len(numbers) == blobs and max(numbers) < index.ordinal_count()  # type: ignore[operator]
    pairs = {source_id: rnd.randbytes(30) + b"\0\0" for source_id in sources[::3]}
    outside = rnd.randbytes(32)  # not in the index
    pairs[outside] = rnd.randbytes(32)
    ids = IdMap(index)
    for source_id, target_id in pairs.items():
        ids.put(source_id, target_id)
    ids.put(sources[0], pairs[sources[0]])  # again: counted once
    assert len(ids) == len(pairs)
    assert all(ids.get(source_id) == target_id for source_id, target_id in pairs.items())
    assert ids.get_many(list(pairs)) == list(pairs.values())
    assert ids.get_many([sources[1], sources[0]]) == [None, pairs[sources[0]]]
    assert ids.get(rnd.randbytes(32)) is None and rnd.randbytes(32) not in ids
