"""safehold.store.wrappers: RetryingStore (backoff, final error) and FaultyStore (injected
faults), on a local store, and a whole backup over sftp that survives injected failures."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import CliResult, backup_json, run_cli, write_file
from remote_conftest import FAST_RETRIES

import safehold.repo.repository
from safehold.errors import NoSpace, StorageError
from safehold.store import ObjectMissing, Store, TransientStorageError, open_store
from safehold.store.wrappers import Fault, FaultyStore, RetryingStore, RetryPolicy, flip_bit

NAME = "snapshots/" + "5" * 64


@pytest.fixture
def local(tmp_path: Path) -> Iterator[Store]:
    store = open_store(str(tmp_path / "store"))
    store.create()
    with store:
        yield store


def retrying(inner: Store, attempts: int = 4) -> tuple[RetryingStore, list[float]]:
    sleeps: list[float] = []
    policy = RetryPolicy(attempts=attempts, first_delay=1.0, max_delay=3.0)
    return RetryingStore(inner, policy, sleep=sleeps.append), sleeps


def test_transient_failures_are_retried_with_growing_pauses(local: Store) -> None:
    faulty = FaultyStore(local, Fault("save", nth=1, count=3))
    store, sleeps = retrying(faulty)
    store.save(NAME, b"made it")
    assert local.load(NAME) == b"made it"
    assert faulty.calls["save"] == 4
    assert faulty.injected == [("save", 1, "fail"), ("save", 2, "fail"), ("save", 3, "fail")]
    assert len(sleeps) == 3
    assert 0.5 <= sleeps[0] <= 1.0 and 1.0 <= sleeps[1] <= 2.0 and 1.5 <= sleeps[2] <= 3.0


def test_the_final_error_names_operation_object_location_and_attempts(local: Store) -> None:
    store, sleeps = retrying(FaultyStore(local, Fault("load", count=None)), attempts=3)
    local.save(NAME, b"x")
    with pytest.raises(StorageError) as caught:
        store.load(NAME)
    message = str(caught.value)
    assert not isinstance(caught.value, TransientStorageError)
    assert message.startswith(f"storage error: {local.location}: load {NAME} failed 3 times")
    assert "giving up: injected fault" in message
    assert len(sleeps) == 2
    assert "\n" not in message


@pytest.mark.parametrize(
    "error", [ObjectMissing(NAME), NoSpace(location="here"), StorageError("permission denied")]
)
def test_final_errors_are_not_retried(local: Store, error: Exception) -> None:
    faulty = FaultyStore(local, Fault("load", error=error))
    store, sleeps = retrying(faulty)
    with pytest.raises(type(error)):
        store.load(NAME)
    assert faulty.calls["load"] == 1 and sleeps == []


def test_a_missing_object_on_a_retried_delete_means_it_was_deleted(local: Store) -> None:
    class ReplyLost(FaultyStore):
        """Deletes, then fails as if the reply had been lost on the way back."""

        def delete(self, name: str) -> None:
            self.inner.delete(name)
            if self.calls["delete"] == 0:
                self.calls["delete"] += 1
                raise TransientStorageError("reply lost")

    local.save(NAME, b"x")
    store, _ = retrying(ReplyLost(local))
    store.delete(NAME)
    assert not local.exists(NAME)
    with pytest.raises(ObjectMissing):
        store.delete(NAME)  # a first attempt that finds nothing is still an error


def test_a_retried_list_yields_each_name_once(local: Store) -> None:
    for digit in "123":
        local.save("index/" + digit * 64, digit.encode())
    faulty = FaultyStore(local, Fault("list", nth=1))
    store, _ = retrying(faulty)
    assert sorted(store.list("index")) == [("index/" + d * 64, 1) for d in "123"]
    assert faulty.calls["list"] == 2


def test_stall_waits_then_proceeds(local: Store) -> None:
    sleeps: list[float] = []
    local.save(NAME, b"slow")
    faulty = FaultyStore(
        local, Fault("load", nth=2, action="stall", seconds=7.5), sleep=sleeps.append
    )
    assert faulty.load(NAME) == b"slow" and sleeps == []
    assert faulty.load(NAME) == b"slow" and sleeps == [7.5]
    assert faulty.load(NAME) == b"slow" and sleeps == [7.5]


def test_corrupt_faults(local: Store) -> None:
    faulty = FaultyStore(
        local,
        Fault("save", action="corrupt"),
        Fault("load", nth=2, action="corrupt"),
        Fault("list", action="corrupt"),
        Fault("delete", action="corrupt"),
    )
    faulty.save(NAME, b"abcdef")
    assert local.load(NAME) == flip_bit(b"abcdef") == b"abceef"
    local.save(NAME, b"abcdef")
    assert faulty.load(NAME) == b"abcdef"
    assert faulty.load(NAME) == b"abceef"
    assert list(faulty.list("snapshots")) == [(NAME, 5)]
    assert list(faulty.list("snapshots")) == [(NAME, 6)]
    faulty.delete(NAME)  # acknowledged, not done
    assert local.exists(NAME)
    faulty.delete(NAME)
    assert not local.exists(NAME)


def test_bad_faults_are_refused() -> None:
    for kind, action, nth in (("open", "fail", 1), ("load", "explode", 1), ("save", "fail", 0)):
        with pytest.raises(ValueError):
            Fault(kind, nth=nth, action=action)


# ---------------------------------------------------------------------------------- end to end


@contextmanager
def faults_injected(*faults: Fault) -> Iterator[list[FaultyStore]]:
    """Within: the repository layer opens its stores as Retrying(Faulty(real store))."""
    made: list[FaultyStore] = []
    real_open = safehold.repo.repository.open_store

    def open_with_faults(location: str) -> Store:
        store = real_open(location)
        inner = store.inner if isinstance(store, RetryingStore) else store
        made.append(FaultyStore(inner, *faults))
        return RetryingStore(made[-1], FAST_RETRIES)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(safehold.repo.repository, "open_store", open_with_faults)
        yield made


def test_a_backup_survives_transient_failures(
    tmp_path: Path,
    remote_location: Callable[[str, str], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = remote_location("sftp", "repo")
    source = tmp_path / "src"
    for number in range(3):
        write_file(source / f"file{number}", bytes([number]) * (300_000 + number))
    assert run_cli("init", "--repo", url).code == 0
    faults = (
        Fault("save", nth=1, count=2, match="data/"),  # the first pack, twice
        Fault("load", nth=3),
        Fault("list", nth=2),
    )
    with faults_injected(*faults) as made:
        summary = backup_json(url, source)
    assert summary["files_new"] == 3
    assert {kind for store in made for kind, _, _ in store.injected} == {"save", "load", "list"}
    assert sum("retry" in record.getMessage() for record in caplog.records) >= 4
    result: CliResult = run_cli("check", "--repo", url, "--read-data")
    assert result.code == 0, result.err
    restored = tmp_path / "restored"
    result = run_cli("restore", "--repo", url, f"latest:{source}", "--target", restored)
    assert result.code == 0, result.err
    assert sorted(p.name for p in restored.iterdir()) == ["file0", "file1", "file2"]


def test_corrupted_loads_are_caught_by_authentication(tmp_path: Path, repo: Path) -> None:
    source = tmp_path / "src"
    write_file(source / "data.bin", b"precious " * 50_000)
    backup_json(repo, source)
    target = tmp_path / "out"
    with faults_injected(Fault("load", action="corrupt", count=None, match="data/")):
        result = run_cli("restore", "--repo", repo, f"latest:{source}", "--target", target)
    assert result.code == 13, (result.code, result.err)
    assert not (target / "data.bin").exists()


def test_a_corrupted_upload_is_found_by_check(tmp_path: Path, repo: Path) -> None:
    source = tmp_path / "src"
    write_file(source / "data.bin", b"precious " * 50_000)
    with faults_injected(Fault("save", action="corrupt", match="data/")):  # the first pack
        backup_json(repo, source)
    result = run_cli("check", "--repo", repo, "--read-data")
    assert result.code == 13, (result.code, result.err)
