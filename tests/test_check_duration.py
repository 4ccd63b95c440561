"""check --read-data --max-duration: stops cleanly after the pack in hand, resumes next run."""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path

import pytest
from conftest import backup_json, flip_byte, open_repository, pack_file, run_cli, write_file

from safehold.errors import UsageError
from safehold.ops import check as check_module
from safehold.ops.check import check, parse_max_duration, progress_path

FILES = 8


class StepClock:
    """A monotonic clock that moves on by ``step`` seconds each time it is read."""

    def __init__(self, step: float = 10.0) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        value = self.now
        self.now += self.step
        return value


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(autouse=True)
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every CLI check gets a fresh clock: start 0, then 10, 20, 30 ... before each next pack."""

    def clocked_check(*args, **kwargs):  # type: ignore[no-untyped-def]
        return check(*args, clock=StepClock(), **kwargs)

    monkeypatch.setattr(check_module, "check", clocked_check)  # what the CLI calls


@pytest.fixture
def repo(make_repo) -> Path:  # type: ignore[no-untyped-def]
    path = make_repo(pack_size=16 * 1024)  # small packs: each file's blob in a pack of its own
    rnd = random.Random(5)
    source = path.parent / "src"
    for number in range(FILES):
        write_file(source / f"file{number}.bin", rnd.randbytes(20 * 1024))
    backup_json(path, source)
    return path


def indexed_packs(repo: Path) -> list[bytes]:
    with open_repository(repo) as repository:
        return sorted(repository.index.packs)


def data_only_packs(repo: Path) -> list[bytes]:
    """Packs holding no tree blob (a damaged tree is found by the structure check at once)."""
    from safehold.repo.format import BLOB_TREE

    with open_repository(repo) as repository:
        with_trees = {
            loc.pack_id for _, loc in repository.index.entries() if loc.blob_type == BLOB_TREE
        }
        return sorted(pack for pack in repository.index.packs if pack not in with_trees)


def check_json(repo: Path, *args: str) -> tuple[int, dict]:
    result = run_cli("check", "--repo", repo, "--json", *args)
    return result.code, (result.json() if result.out else {})


def test_parse_max_duration() -> None:
    assert parse_max_duration("30s") == 30
    assert parse_max_duration("10m") == 600
    assert parse_max_duration("2h") == 7200
    assert parse_max_duration("1.5m") == 90
    for bad in ("", "10", "0s", "-1m", "5d", "xs"):
        with pytest.raises(UsageError):
            parse_max_duration(bad)


def test_bad_duration_and_duration_without_reading_are_usage_errors(repo: Path) -> None:
    assert run_cli("check", "--repo", repo, "--read-data", "--max-duration", "soon").code == 2
    assert run_cli("check", "--repo", repo, "--max-duration", "10m").code == 2


def test_first_run_stops_incomplete_second_run_completes(repo: Path) -> None:
    total = len(indexed_packs(repo))
    assert total >= FILES
    first = run_cli("check", "--repo", repo, "--read-data", "--max-duration", "25s")
    assert first.code == 0, first.err
    assert "read 3 packs" in first.out
    assert "incomplete" in first.out and "resumes" in first.out
    assert "no errors found so far (incomplete)" in first.out
    with open_repository(repo) as repository:
        state_path = progress_path(repository)
        assert state_path.parent.name == repository.config["id"]
    state = json.loads(state_path.read_text())
    assert state["subset"] == "all" and len(state["done"]) == 3

    read = 3
    runs = 1
    while True:
        code, report = check_json(repo, "--read-data", "--max-duration", "25s")
        assert code == 0 and report["ok"] is True
        runs += 1
        read += report["packs_read"]
        assert report["packs_done"] == min(read, total)
        assert report["packs_selected"] == total
        if report["complete"]:
            break
        assert report["complete"] is False
        assert runs < total
    assert read == total  # every pack exactly once over the runs
    assert not state_path.exists()  # the round is done: the next run starts over
    code, report = check_json(repo, "--read-data", "--max-duration", "25s")
    assert code == 0 and report["packs_read"] == 3 and report["packs_done"] == 3


def test_a_long_enough_duration_reads_everything_at_once(repo: Path) -> None:
    code, report = check_json(repo, "--read-data", "--max-duration", "2h")
    assert code == 0 and report["complete"] is True
    assert report["packs_read"] == len(indexed_packs(repo))


def test_without_max_duration_the_saved_progress_is_not_used(repo: Path) -> None:
    assert check_json(repo, "--read-data", "--max-duration", "25s")[1]["complete"] is False
    code, report = check_json(repo, "--read-data")
    assert code == 0 and report["complete"] is True
    assert report["packs_read"] == len(indexed_packs(repo))
    # ...and the interrupted round still resumes where it stopped
    assert check_json(repo, "--read-data", "--max-duration", "25s")[1]["packs_done"] == 6


def test_damage_in_a_later_pack_is_found_by_the_resuming_run(repo: Path) -> None:
    last = data_only_packs(repo)[-1]  # --read-data reads packs in id order
    path = pack_file(repo, last)
    flip_byte(path, path.stat().st_size // 2)
    first = run_cli("check", "--repo", repo, "--read-data", "--max-duration", "25s")
    assert first.code == 0, first.err  # no damage among the packs read so far
    assert "incomplete" in first.out
    codes = []
    for _ in range(FILES):
        result = run_cli("check", "--repo", repo, "--read-data", "--max-duration", "25s")
        codes.append(result.code)
        if result.code != 0:
            assert last.hex() in result.err
            break
    assert codes[-1] == 13, codes


def test_a_changed_subset_starts_over(repo: Path) -> None:
    code, report = check_json(repo, "--read-data", "--max-duration", "25s")
    assert report["complete"] is False and report["packs_done"] == 3
    code, report = check_json(repo, "--read-data-subset", "100%", "--max-duration", "25s")
    assert code == 0 and report["complete"] is False
    assert report["packs_done"] == report["packs_read"] == 3  # nothing carried over
    with open_repository(repo) as repository:
        state = json.loads(progress_path(repository).read_text())
    assert state["subset"] == "100%" and len(state["done"]) == 3
    # the percentage round resumes with packs it has not read yet
    code, report = check_json(repo, "--read-data-subset", "100%", "--max-duration", "25s")
    assert report["packs_done"] == 6 and report["packs_read"] == 3
    assert report["packs_selected"] == len(indexed_packs(repo))


def test_slice_subset_resumes_within_its_slice(repo: Path) -> None:
    with open_repository(repo) as repository:
        packs = sorted(repository.index.packs)
        clock = functools.partial(StepClock, 1000.0)
        result = check(repository, subset="1/1", max_duration=1, clock=clock())
        assert result.packs_read == 1 and not result.complete
        result = check(repository, subset="1/1", max_duration=1, clock=clock())
        assert result.packs_done == 2 and result.packs_selected == len(packs)


def test_unreadable_progress_file_starts_over(repo: Path) -> None:
    with open_repository(repo) as repository:
        path = progress_path(repository)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    code, report = check_json(repo, "--read-data", "--max-duration", "25s")
    assert code == 0 and report["packs_done"] == 3
