"""One damaged object must not stop everything: a damaged snapshot is skipped and named, and
'repair snapshots' salvages or removes it; a damaged index file does not stop a restore."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
from conftest import (
    assert_one_line_error,
    backup_json,
    compare_trees,
    flip_byte,
    open_repository,
    run_cli,
    write_file,
)

KiB = 1024


@pytest.fixture
def history(make_repo, tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """Two backups of a small tree (packs of 64 KiB: several index files); (repo, source,
    [older id, newer id])."""
    repo = make_repo(pack_size=64 * KiB)
    source = tmp_path / "src"
    rnd = random.Random(3)
    for number in range(20):
        write_file(source / f"f{number}.bin", rnd.randbytes(24 * KiB))
    older = backup_json(repo, source)["snapshot_id"]
    write_file(source / "later.txt", b"added later\n")
    newer = backup_json(repo, source)["snapshot_id"]
    return repo, source, [older, newer]


@pytest.fixture
def no_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new host: no intact cached copy of anything."""
    monkeypatch.setenv("SAFEHOLD_CACHE_DIR", "off")


def warned(result, name: str) -> bool:  # type: ignore[no-untyped-def]
    return any(line.startswith("safehold: warning: ") and name in line for line in result.err_lines)


def test_a_damaged_snapshot_is_skipped_and_named_everywhere(
    history, no_cache, tmp_path: Path
) -> None:
    repo, source, (older, newer) = history
    flip_byte(repo / "snapshots" / older, 40)
    listing = run_cli("snapshots", "--repo", repo, "--json")
    assert listing.code == 0, listing.err
    assert [s["id"] for s in listing.json()] == [newer]
    assert warned(listing, f"snapshots/{older}")
    assert "repair snapshots" in listing.err

    restored = run_cli("restore", "--repo", repo, "latest", "--target", tmp_path / "r")
    assert restored.code == 0, restored.err
    assert compare_trees(source, tmp_path / "r" / source.relative_to("/")) == []

    backup = run_cli("backup", "--repo", repo, source, "--json")
    assert backup.code == 0, backup.err
    assert warned(backup, f"snapshots/{older}")

    forget = run_cli("forget", "--repo", repo, "--keep-last", "1")
    assert forget.code == 0, forget.err
    assert (repo / "snapshots" / older).exists()  # retention never decides about it

    prune = run_cli("prune", "--repo", repo, "--keep-young", "0")
    assert prune.code == 13 and "repair snapshots" in prune.err  # it cannot know what it needed

    dry = run_cli("repair", "snapshots", "--repo", repo, "--dry-run", "--json")
    assert dry.code == 0, dry.err
    assert dry.json()["removed"] == [older] and (repo / "snapshots" / older).exists()
    repair = run_cli("repair", "snapshots", "--repo", repo)
    assert repair.code == 0, repair.err
    assert "removed" in repair.out and not (repo / "snapshots" / older).exists()
    assert run_cli("check", "--repo", repo, "--read-data").code == 0
    assert run_cli("prune", "--repo", repo, "--keep-young", "0").code == 0


def test_repair_puts_back_a_damaged_snapshot_from_an_intact_cached_copy(history) -> None:
    repo, _source, (older, newer) = history
    assert run_cli("snapshots", "--repo", repo).code == 0  # the cache holds both now
    flip_byte(repo / "snapshots" / older, 40)
    repair = run_cli("repair", "snapshots", "--repo", repo, "--json")
    assert repair.code == 0, repair.err
    assert repair.json()["from_cache"] == [older]
    assert run_cli("check", "--repo", repo, "--read-data").code == 0
    ids = [s["id"] for s in run_cli("snapshots", "--repo", repo, "--json").json()]
    assert ids == [older, newer]


def test_a_damaged_index_file_does_not_stop_a_restore(history, no_cache, tmp_path: Path) -> None:
    repo, source, _ids = history
    index_files = sorted((repo / "index").iterdir())
    assert len(index_files) >= 2
    for index_file in index_files[:-1]:  # all but one
        flip_byte(index_file, 30)
    restored = run_cli("restore", "--repo", repo, "latest", "--target", tmp_path / "r")
    assert restored.code == 0, restored.err
    assert compare_trees(source, tmp_path / "r" / source.relative_to("/")) == []
    assert warned(restored, f"index/{index_files[0].name}") and "repair index" in restored.err
    check = run_cli("check", "--repo", repo)
    assert check.code == 13  # the damage itself is still reported
    assert run_cli("repair", "index", "--repo", repo).code == 0
    assert run_cli("check", "--repo", repo, "--read-data").code == 0


def test_a_snapshot_without_a_tree_is_damaged_not_a_crash(history, no_cache) -> None:
    """An object that authenticates but is not a snapshot (written by a key holder) is
    skipped like a damaged one."""
    repo, _source, (older, newer) = history
    with open_repository(repo) as repository:
        repository.save_object("snapshots/" + "e" * 64, {"time": "soon", "tree": 7})
    listing = run_cli("snapshots", "--repo", repo, "--json")
    assert listing.code == 0, listing.err
    assert [s["id"] for s in listing.json()] == [older, newer]
    assert warned(listing, "snapshots/" + "e" * 64)
    shutil.rmtree(repo / "snapshots")  # and an empty repository afterwards is just empty
    (repo / "snapshots").mkdir()
    assert run_cli("snapshots", "--repo", repo).code == 0


# Index files that authenticate (sealed with the key) but are malformed: content -> content.
MALFORMED_INDEX = {
    "records-not-whole": lambda content: {**content, "records": content["records"] + b"\0"},
    "pack-beyond-table": lambda content: {**content, "packs": content["packs"][:-1]},
    "pack-ids-not-32-bytes": lambda content: {
        **content,
        "packs": [pack[:16] for pack in content["packs"]],
    },
    "records-not-bytes": lambda content: {**content, "records": content["records"].hex()},
    "not-a-dict": lambda content: [content["packs"], content["records"]],
}


@pytest.mark.parametrize("malform", MALFORMED_INDEX.values(), ids=list(MALFORMED_INDEX))
def test_an_authentic_but_malformed_index_file_is_damage_not_a_crash(
    history, no_cache, tmp_path: Path, malform
) -> None:
    """Backup and restore go on from the packs' headers and warn; check reports it (13);
    prune refuses (13) naming it and 'repair index', which fixes it."""
    repo, source, _ids = history
    names = [f"index/{path.name}" for path in sorted((repo / "index").iterdir())[:-1]]
    assert names
    with open_repository(repo) as repository:
        for name in names:
            repository.save_object(name, malform(repository.load_object(name)))

    restored = run_cli("restore", "--repo", repo, "latest", "--target", tmp_path / "r")
    assert restored.code == 0, restored.err
    assert compare_trees(source, tmp_path / "r" / source.relative_to("/")) == []
    assert all(warned(restored, name) for name in names) and "repair index" in restored.err

    write_file(source / "copy.bin", (source / "f0.bin").read_bytes())  # stored, in a pack
    backup = run_cli("backup", "--repo", repo, source, "--json")
    assert backup.code == 0, backup.err
    assert backup.json()["bytes_added_raw"] < 24 * KiB  # trees only: found from the headers
    assert warned(backup, names[0])

    check = run_cli("check", "--repo", repo)
    assert check.code == 13 and "Traceback" not in check.err, check.err
    assert any(
        f"{names[0]} is damaged (" in line and "repair index" in line for line in check.err_lines
    ), check.err

    prune = run_cli("prune", "--repo", repo, "--keep-young", "0")
    assert_one_line_error(prune, 13, f"{names[0]} is damaged (", "run 'safehold repair index'")

    assert run_cli("repair", "index", "--repo", repo).code == 0
    assert run_cli("check", "--repo", repo, "--read-data").code == 0
    assert run_cli("prune", "--repo", repo, "--keep-young", "0").code == 0
    again = run_cli("restore", "--repo", repo, "latest", "--target", tmp_path / "again")
    assert again.code == 0 and not again.err_lines, again.err
    assert compare_trees(source, tmp_path / "again" / source.relative_to("/")) == []
