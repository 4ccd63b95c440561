"""find and dump against real backups: which snapshots hold a path, one file out as bytes, a
directory out as a tar that GNU tar extracts to exactly what restore writes."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import (
    assert_one_line_error,
    backup_json,
    blob_place,
    flip_byte,
    mini_platform,
    run_cli,
    snapshot_entry,
    write_file,
)


@pytest.fixture
def history(repo: Path, tmp_path: Path) -> dict:
    """Two snapshots of one tree: a study added in the second, a config edited."""
    source = tmp_path / "src"
    write_file(source / "etc" / "values.yaml", b"replicas: 1\n")
    write_file(source / "db" / "1f" / "1.2.840.113619.2.55.1.dcm", b"DICM" * 5000)
    os.utime(source / "db" / "1f" / "1.2.840.113619.2.55.1.dcm", (1_700_000_000, 1_700_000_000))
    first = backup_json(repo, source)["snapshot_id"]
    write_file(source / "etc" / "values.yaml", b"replicas: 3\n")
    write_file(source / "db" / "2a" / "1.2.840.113619.2.99.7.dcm", b"DICM" * 7000)
    os.utime(source / "db" / "2a" / "1.2.840.113619.2.99.7.dcm", (1_800_000_000, 1_800_000_000))
    second = backup_json(repo, source)["snapshot_id"]
    return {"source": source, "first": first, "second": second}


def test_find_names_the_snapshots_that_hold_a_path(repo: Path, history: dict) -> None:
    result = run_cli("find", "--repo", repo, "--json", "*1.2.840.113619.2.55*")
    assert result.code == 0, result.err
    found = result.json()
    assert [m["snapshot_id"] for m in found] == [history["first"], history["second"]]
    assert all(m["path"].endswith("/db/1f/1.2.840.113619.2.55.1.dcm") for m in found)
    assert found[0]["size"] == 20000 and found[0]["mtime_ns"] == 1_700_000_000 * 10**9
    only_new = run_cli("find", "--repo", repo, "--json", "*.dcm", "--newer", "2025-01-01")
    assert [m["path"].rsplit("/", 1)[1] for m in only_new.json()] == ["1.2.840.113619.2.99.7.dcm"]
    older = run_cli(
        "find", "--repo", repo, "--json", "-s", "latest", "*.dcm", "--older", "2025-01-01"
    )
    assert [(m["snapshot_id"], m["size"]) for m in older.json()] == [(history["second"], 20000)]
    whole_path = run_cli("find", "--repo", repo, "--json", f"{history['source']}/etc/*.yaml")
    assert len(whole_path.json()) == 2
    text = run_cli("find", "--repo", repo, "values.yaml")
    assert text.code == 0
    assert text.out.count("values.yaml") == 2 and "2 match(es) in 2 snapshot(s)" in text.out
    nothing = run_cli("find", "--repo", repo, "--json", "*.nothing")
    assert nothing.code == 0 and nothing.json() == []


def test_find_walks_lazily_one_tree_at_a_time(repo: Path, history: dict, monkeypatch) -> None:
    """The first match is yielded after loading only the trees on its way, not the snapshot."""
    from safehold.archive import tree as tree_module
    from safehold.ops import find as find_module
    from safehold.repo.snapshots import resolve
    from tests.conftest import open_repository

    loads = []
    original = tree_module.load_tree
    monkeypatch.setattr(tree_module, "load_tree", lambda r, t: loads.append(t) or original(r, t))
    with open_repository(repo) as repository:
        snapshot = resolve(repository, history["first"])
        matches = find_module.find(repository, [snapshot], [find_module.Pattern("db")])
        first = next(matches)
        assert first.path.endswith(b"/db")
        depth = first.path.count(b"/")
        assert len(loads) == depth  # the root and each directory above "db", nothing else
        assert list(matches) == []


def test_find_bad_input_is_one_line(repo: Path, history: dict) -> None:
    assert_one_line_error(run_cli("find", "--repo", repo, "x", "--newer", "yesterday"), 2, "date")
    assert_one_line_error(run_cli("find", "--repo", repo, "x", "-s", "ffff"), 17, "ffff")


def test_find_reports_a_damaged_tree_and_goes_on(repo: Path, history: dict, monkeypatch) -> None:
    monkeypatch.setenv("SAFEHOLD_CACHE_DIR", "off")  # the tree cache holds a good copy
    entry = snapshot_entry(repo, history["first"], str(history["source"] / "etc"))
    pack, offset, _length = blob_place(repo, entry["subtree"])
    flip_byte(pack, offset + 20)
    result = run_cli("find", "--repo", repo, "--json", "*.dcm")
    assert result.code == 13
    assert len(result.json()) == 3  # the other trees were searched
    assert "skipped damaged" in result.err


def test_dump_a_file_streams_its_bytes(repo: Path, history: dict, tmp_path: Path) -> None:
    path = history["source"] / "etc" / "values.yaml"
    result = run_cli("dump", "--repo", repo, f"{history['first']}:{path}")
    assert result.code == 0, result.err
    assert result.out == "replicas: 1\n"
    out = tmp_path / "values.yaml"
    assert run_cli("dump", "--repo", repo, f"latest:{path}", "-o", out).code == 0
    assert out.read_bytes() == b"replicas: 3\n"
    again = run_cli("dump", "--repo", repo, f"latest:{path}", "-o", out)
    assert_one_line_error(again, 2, "exists")
    assert out.read_bytes() == b"replicas: 3\n"
    assert_one_line_error(run_cli("dump", "--repo", repo, "latest:/no/such"), 17, "/no/such")


def test_dump_refuses_a_terminal(repo: Path, history: dict) -> None:
    """Run as a real process with a pseudo-terminal as stdout."""
    import pty

    leader, follower = pty.openpty()
    env = dict(os.environ)
    process = subprocess.run(
        [
            os.path.join(os.path.dirname(sys.executable), "safehold"),
            "dump",
            "--repo",
            str(repo),
            f"latest:{history['source']}/etc/values.yaml",
        ],
        stdout=follower,
        stderr=subprocess.PIPE,
        env=env,
        timeout=60,
    )
    os.close(follower)
    os.close(leader)
    assert process.returncode == 2
    assert b"refusing to write a dump to a terminal" in process.stderr


def _restore_and_untar(repo: Path, spec: str, tmp_path: Path, name: str) -> tuple[Path, Path]:
    restored = tmp_path / f"{name}-restored"
    result = run_cli("restore", "--repo", repo, spec, "--target", restored)
    assert result.code == 0, result.err
    archive = tmp_path / f"{name}.tar"
    result = run_cli("dump", "--repo", repo, spec, "-o", archive)
    assert result.code == 0, result.err
    extracted = tmp_path / f"{name}-extracted"
    extracted.mkdir()
    subprocess.run(
        ["tar", "-x", "--xattrs", "--xattrs-include=*", "-f", str(archive), "-C", str(extracted)],
        check=True,
    )
    return restored, extracted


def test_dump_of_a_directory_untars_to_what_restore_writes(
    repo: Path, full_tree: Path, tmp_path: Path, compare_trees
) -> None:
    backup_json(repo, full_tree)
    restored, extracted = _restore_and_untar(repo, f"latest:{full_tree}", tmp_path, "full")
    assert compare_trees(restored, extracted, include_root=False) == []
    assert compare_trees(full_tree, extracted, include_root=False) == []
    sparse = extracted / "sparse.img"
    assert sparse.stat().st_blocks * 512 < 1024 * 1024  # holes came back as holes


def test_dump_of_a_platform_component(repo: Path, tmp_path: Path, compare_trees) -> None:
    config = mini_platform(tmp_path / "platform", repo)
    assert run_cli("backup", "--config", config).code == 0
    result = run_cli("dump", "--repo", repo, "latest:/appdb")
    restored, extracted = _restore_and_untar(repo, "latest:/", tmp_path, "platform")
    assert result.code == 0
    assert compare_trees(restored, extracted, include_root=False) == []
    dumped = run_cli("ls", "--repo", repo, "--json", "latest:/appdb")
    assert dumped.code == 0
    file_name = dumped.json()[0]["path"]
    data = run_cli("dump", "--repo", repo, f"latest:{file_name}", "-o", tmp_path / "db.dump")
    assert data.code == 0, data.err
    expected = (restored / file_name.lstrip("/")).read_bytes()
    assert (
        hashlib.sha256((tmp_path / "db.dump").read_bytes()).digest()
        == hashlib.sha256(expected).digest()
    )


def test_find_in_platform_snapshots(repo: Path, tmp_path: Path) -> None:
    config = mini_platform(tmp_path / "platform", repo)
    result = run_cli("backup", "--config", config, "--json")
    assert result.code == 0, result.err
    snapshot_id = result.json()["snapshot_id"]
    found = run_cli("find", "--repo", repo, "--json", "a.txt", "--tag", "component:data")
    assert found.code == 0, found.err
    [match] = found.json()
    assert match["snapshot_id"] == snapshot_id
    assert match["path"] == "/data" + str(tmp_path / "platform" / "data" / "a.txt")
    assert match["size"] == len("hello\n" * 1000)
    dumps = run_cli("find", "--repo", repo, "--json", "/appdb/*")
    assert [m["type"] for m in dumps.json()] == ["file"]
