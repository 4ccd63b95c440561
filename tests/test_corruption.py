"""Damage in the repository is found by check and never restored as data."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from conftest import (
    backup_json,
    blob_place,
    flip_byte,
    open_repository,
    run_cli,
    snapshot_entry,
    write_file,
)

from safehold.archive import problems as problems_module
from safehold.archive.archiver import ArchiveStats
from safehold.archive.reader import FileReader
from safehold.crypto import NONCE_SIZE


@pytest.fixture
def source(tmp_path: Path) -> Path:
    rnd = random.Random(11)
    root = tmp_path / "src"
    write_file(root / "victim.bin", rnd.randbytes(64 * 1024))
    write_file(root / "healthy.bin", rnd.randbytes(64 * 1024))
    write_file(root / "sub" / "note.txt", b"fine\n")
    return root


@pytest.fixture
def snapshot_id(repo: Path, source: Path) -> str:
    return backup_json(repo, source)["snapshot_id"]


def victim_blob(repo: Path, source: Path) -> tuple[Path, int, int]:
    """(pack file, offset, length) of the one data blob of victim.bin."""
    entry = snapshot_entry(repo, "latest", f"{source}/victim.bin")
    assert len(entry["content"]) == 1
    return blob_place(repo, entry["content"][0])


@pytest.fixture
def damaged_pack(repo: Path, source: Path, snapshot_id: str) -> Path:
    """Flip one byte inside victim.bin's sealed data; returns the pack file."""
    pack, offset, length = victim_blob(repo, source)
    flip_byte(pack, offset + NONCE_SIZE + length // 2)
    return pack


def test_a_healthy_repository_checks_clean(repo: Path, snapshot_id: str) -> None:
    result = run_cli("check", "--repo", repo, "--read-data")
    assert result.code == 0, result.err
    assert "no errors found" in result.out
    assert "checked 1 snapshots" in result.out


def test_check_json(repo: Path, snapshot_id: str) -> None:
    result = run_cli("check", "--repo", repo, "--json", "--read-data")
    assert result.code == 0, result.err
    report = result.json()
    assert report["ok"] is True and report["errors"] == []
    assert report["snapshots"] == 1 and report["trees"] >= 3
    assert report["packs_read"] == report["packs"] >= 1


def test_check_read_data_names_the_damaged_pack(repo: Path, damaged_pack: Path) -> None:
    result = run_cli("check", "--repo", repo, "--read-data")
    assert result.code == 13
    assert f"pack {damaged_pack.name} is damaged" in result.err
    assert result.err_lines[-1].startswith("safehold: integrity error: check found")


def test_check_read_data_subset_of_everything_finds_it_too(repo, damaged_pack) -> None:
    assert run_cli("check", "--repo", repo, "--read-data-subset", "100%").code == 13


def test_structure_check_does_not_read_pack_contents(repo: Path, damaged_pack: Path) -> None:
    result = run_cli("check", "--repo", repo)
    assert result.code == 0, result.err


def test_restore_refuses_the_damaged_file_and_restores_the_rest(
    repo, source, damaged_pack, tmp_path
) -> None:
    target = tmp_path / "restored"
    result = run_cli("restore", "--repo", repo, f"latest:{source}", "--target", target)
    assert result.code == 13
    assert f"NOT restored, damaged in the repository: {target}/victim.bin" in result.err
    assert not (target / "victim.bin").exists()
    assert (target / "healthy.bin").read_bytes() == (source / "healthy.bin").read_bytes()
    assert (target / "sub" / "note.txt").read_bytes() == b"fine\n"


def test_a_restore_names_the_first_problems_and_counts_the_rest(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A million files a restore cannot write must not be a million paths in its memory:
    it keeps the first PROBLEMS_NAMED with their paths (5 here) and counts the others."""
    monkeypatch.setattr(problems_module, "PROBLEMS_NAMED", 5)
    source = tmp_path / "many"
    rnd = random.Random(5)
    for number in range(30):
        write_file(source / f"file_{number:02}.bin", rnd.randbytes(3000))
    backup_json(repo, source)
    for pack in (repo / "data").rglob("*"):
        if pack.is_file() and pack.stat().st_size > 60_000:  # the pack of the files' data
            pack.unlink()
    target = tmp_path / "restored"
    result = run_cli("restore", "--repo", repo, "--json", f"latest:{source}", "--target", target)
    assert result.code == 13, result.err
    assert result.err.count("NOT restored, damaged in the repository") == 5
    assert "... and 25 more files damaged in the repository" in result.err
    assert "30 file(s) were damaged in the repository" in result.err
    report = json.loads(result.out)
    assert len(report["damaged"]) == 5 and report["damaged_more"] == 25
    assert report["errors"] == [] and report["errors_more"] == 0
    problems = problems_module.Problems()
    for number in range(8):
        problems.append({"path": str(number), "message": "refused"})
    assert [p["path"] for p in problems] == ["0", "1", "2", "3", "4"] and problems.total == 8


def test_a_backup_names_the_first_unreadable_files_and_counts_the_rest(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The snapshot's summary is bounded as the restore's lists are: the first files that
    could not be read are named (3 here), the others counted, in the snapshot and on screen."""
    monkeypatch.setattr(problems_module, "PROBLEMS_NAMED", 3)
    source = tmp_path / "unreadable"
    for number in range(10):
        write_file(source / f"file_{number:02}.bin", b"x" * 100)

    def refused(self, path, entry):  # type: ignore[no-untyped-def]
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(FileReader, "read_file", refused)
    result = run_cli("backup", "--repo", repo, "--json", source)
    assert result.code == 3, result.err
    assert result.err.count("could not read") == 3
    assert "... and 7 more not read" in result.err
    assert "10 file(s) could not be read" in result.err
    summary = json.loads(result.out)
    assert len(summary["errors"]) == 3 and summary["errors_more"] == 7
    with open_repository(repo) as repository:
        stored = repository.load_snapshot(summary["snapshot_id"])["summary"]
    assert len(stored["errors"]) == 3 and stored["errors_more"] == 7
    # What reader processes send per directory is merged under the same bound.
    stats = ArchiveStats()
    stats.add({"files_new": 2, "errors": [{"path": "a"}, {"path": "b"}], "errors_more": 4})
    stats.add({"files_new": 1, "errors": [{"path": "c"}, {"path": "d"}], "errors_more": 0})
    assert [e["path"] for e in stats.errors] == ["a", "b", "c"] and stats.errors.total == 8
    assert stats.files_new == 3 and stats.as_dict()["errors_more"] == 5


def test_deleted_index_file_is_reported(repo: Path, snapshot_id: str) -> None:
    for index_file in (repo / "index").iterdir():
        index_file.unlink()
    result = run_cli("check", "--repo", repo)
    assert result.code == 13
    assert "not in the index" in result.err


def test_damaged_index_file_is_reported(repo: Path, snapshot_id: str) -> None:
    index_file = next((repo / "index").iterdir())
    flip_byte(index_file, 30)
    result = run_cli("check", "--repo", repo)
    assert result.code == 13
    assert f"index/{index_file.name} is damaged" in result.err


def test_truncated_pack_is_reported_by_the_structure_check(repo, source, snapshot_id) -> None:
    pack, _, _ = victim_blob(repo, source)
    os.truncate(pack, pack.stat().st_size // 2)
    result = run_cli("check", "--repo", repo)
    assert result.code == 13
    assert f"pack {pack.name} is truncated" in result.err


def test_missing_pack_is_reported(repo: Path, source: Path, snapshot_id: str) -> None:
    pack, _, _ = victim_blob(repo, source)
    pack.unlink()
    result = run_cli("check", "--repo", repo)
    assert result.code == 13
    assert f"pack {pack.name} is listed in the index but missing" in result.err


def test_damaged_snapshot_is_reported(repo: Path, snapshot_id: str) -> None:
    flip_byte(repo / "snapshots" / snapshot_id, 40)
    result = run_cli("check", "--repo", repo)
    assert result.code == 13
    assert f"snapshots/{snapshot_id} is damaged" in result.err


def test_snapshot_copied_to_another_name_fails_authentication(repo, snapshot_id) -> None:
    other = "f" * 64
    (repo / "snapshots" / other).write_bytes((repo / "snapshots" / snapshot_id).read_bytes())
    result = run_cli("check", "--repo", repo)
    assert result.code == 13
    assert f"snapshots/{other} is damaged" in result.err


def test_unreferenced_pack_is_only_a_note(repo: Path, snapshot_id: str) -> None:
    name = os.urandom(32).hex()
    (repo / "data" / name[:2] / name).write_bytes(os.urandom(1000))
    result = run_cli("check", "--repo", repo, "--read-data")
    assert result.code == 0, result.err
    assert f"note: data/{name} is not referenced by any index" in result.out


def test_damaged_config_is_an_integrity_error(repo: Path, snapshot_id: str) -> None:
    flip_byte(repo / "meta" / "config", 20)
    result = run_cli("snapshots", "--repo", repo)
    assert result.code == 13
    assert len(result.err_lines) == 1 and "meta/config is damaged" in result.err


def test_damaged_directory_tree_spares_the_rest_of_the_restore(
    repo, source, snapshot_id, tmp_path, monkeypatch
) -> None:
    # Without the tree cache: a verified cached copy of the tree would be restored from
    # (tests/test_tree_cache.py), and the damage in the repository is what is tested here.
    monkeypatch.setenv("SAFEHOLD_CACHE_DIR", "off")
    sub = snapshot_entry(repo, "latest", f"{source}/sub")
    pack, offset, length = blob_place(repo, sub["subtree"])
    flip_byte(pack, offset + NONCE_SIZE + length // 2)
    target = tmp_path / "restored"
    result = run_cli("restore", "--repo", repo, f"latest:{source}", "--target", target)
    assert result.code == 13
    assert (target / "healthy.bin").read_bytes() == (source / "healthy.bin").read_bytes()
    assert (target / "victim.bin").read_bytes() == (source / "victim.bin").read_bytes()


def test_restore_include_reads_only_the_trees_on_the_included_path(
    repo, tmp_path, monkeypatch
) -> None:
    """A restore --include of one directory reads the trees on its path, not its siblings'
    (with 300,000 files elsewhere in the snapshot it would read them all): a damaged sibling
    tree is never touched, so the restore succeeds."""
    monkeypatch.setenv("SAFEHOLD_CACHE_DIR", "off")  # the repository's trees, not cached ones
    source = tmp_path / "tree"
    write_file(source / "a" / "wanted" / "one.txt", b"one\n")
    write_file(source / "a" / "other" / "two.txt", b"two\n")
    write_file(source / "b" / "three.txt", b"three\n")
    backup_json(repo, source)
    for sibling in ("a/other", "b"):
        pack, offset, length = blob_place(
            repo, snapshot_entry(repo, "latest", f"{source}/{sibling}")["subtree"]
        )
        flip_byte(pack, offset + NONCE_SIZE + length // 2)
    target = tmp_path / "restored"
    wanted = f"{source}/a/wanted"
    result = run_cli("restore", "--repo", repo, "latest", "-t", target, "--include", wanted)
    assert result.code == 0, result.err
    assert (target / wanted.lstrip("/") / "one.txt").read_bytes() == b"one\n"
    assert os.listdir(target / str(source).lstrip("/")) == ["a"]
    # A pattern that may match at any depth still reads everything, and finds the damage.
    result = run_cli("restore", "--repo", repo, "latest", "-t", tmp_path / "r2", "-i", "*.txt")
    assert result.code == 13


def test_a_tree_entry_named_dotdot_is_never_restored_outside_the_target(tmp_path) -> None:
    """Defence in depth: even an authenticated tree with '..' or '/' in a name stays inside."""
    from safehold.archive.entries import FILE, synthetic_entry
    from safehold.archive.restorer import Restorer
    from safehold.repo.format import BLOB_DATA, BLOB_TREE
    from safehold.repo.writer import BlobWriter
    from tests.conftest import init_repository, open_repository

    repository = open_repository(init_repository(tmp_path / "repo"))
    content = b"escaped"
    blob_id = repository.cipher.blob_id(content)
    entries = [
        synthetic_entry(name, FILE, size=len(content), content=[blob_id])
        for name in (b"..", b"a/../../x", b"ok")
    ]
    from safehold.archive.entries import encode_tree

    data = encode_tree(sorted(entries, key=lambda entry: entry["name"]))
    tree_id = repository.cipher.blob_id(data)
    with BlobWriter(repository) as writer:
        writer.add(BLOB_DATA, blob_id, content)
        writer.add(BLOB_TREE, tree_id, data)
        writer.flush()
    target = tmp_path / "target" / "inner"
    stats = Restorer(repository, str(target)).restore({"type": "dir", "subtree": tree_id}, "/")
    # Such a tree is not a valid tree: the directory is refused as damaged, nothing escapes.
    assert sorted(p.name for p in (tmp_path / "target").iterdir()) == ["inner"]
    assert list(target.iterdir()) == []
    assert len(stats.damaged) == 1 and "invalid name" in stats.damaged[0]["message"]
    assert not (tmp_path / "x").exists()


def test_a_damaged_key_file_is_named_by_check(repo: Path, snapshot_id: str, monkeypatch) -> None:
    monkeypatch.setenv("SAFEHOLD_NEW_PASSPHRASE", "another passphrase")
    assert run_cli("key", "add", "--repo", repo).code == 0
    first, second = sorted((repo / "keys").iterdir())
    with open_repository(repo) as repository:
        used = repository.key_name.split("/", 1)[1]
    other = second if first.name == used else first
    other.write_text(other.read_text()[:-20])  # cut short: no longer JSON
    result = run_cli("check", "--repo", repo)
    assert result.code == 13
    assert f"keys/{other.name} is damaged" in result.err


def test_a_damaged_format_marker_is_named(repo: Path, snapshot_id: str) -> None:
    (repo / "meta" / "format").write_bytes(b"safehold repositorx\nformat 1\n")
    result = run_cli("snapshots", "--repo", repo)
    assert result.code == 13 and "meta/format is damaged" in result.err
    (repo / "meta" / "format").write_bytes(b"safehold repository\nformat 1\n\n")  # still opens
    result = run_cli("check", "--repo", repo)
    assert result.code == 13 and "meta/format is damaged" in result.err


def test_a_deleted_index_file_is_named_as_the_likely_cause(repo: Path, snapshot_id: str) -> None:
    for index_file in (repo / "index").iterdir():
        index_file.unlink()
    result = run_cli("check", "--repo", repo)
    assert result.code == 13
    assert "an index file is missing or damaged" in result.err and "repair index" in result.err
