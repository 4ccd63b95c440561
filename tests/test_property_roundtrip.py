"""Property: random small trees (odd byte names, empty and repeated contents) round-trip."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from conftest import compare_trees, open_repository, set_times
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from safehold.archive import tree
from safehold.archive.backup import backup_paths
from safehold.archive.restorer import Restorer

REPEATED = [b"", b"x", b"same content\n" * 50, bytes(range(256)) * 40]


def repeated(number: int) -> bytes:
    return REPEATED[number]


names = (
    st.binary(min_size=1, max_size=16)
    .map(lambda raw: raw.replace(b"/", b"_").replace(b"\x00", b"_"))
    .filter(lambda name: name not in (b".", b".."))
)
contents = st.one_of(st.integers(0, len(REPEATED) - 1).map(repeated), st.binary(max_size=3000))
modes = st.sampled_from([0o644, 0o600, 0o755, 0o400, 0o4750])
leaves = st.one_of(
    st.tuples(st.just("file"), contents, modes),
    st.tuples(st.just("symlink"), names, st.just(0)),
)
trees = st.recursive(leaves, lambda inner: st.dictionaries(names, inner, max_size=4), max_leaves=12)
roots = st.dictionaries(names, trees, max_size=5)


def materialize(path: bytes, node: dict) -> None:
    os.mkdir(path)
    for name, child in node.items():
        child_path = path + b"/" + name
        if isinstance(child, dict):
            materialize(child_path, child)
        elif child[0] == "file":
            with open(child_path, "wb") as handle:
                handle.write(child[1])
            os.chmod(child_path, child[2])
        else:
            os.symlink(child[1], child_path)


def test_random_trees_round_trip_bit_identically(repo: Path, tmp_path: Path) -> None:
    repository = open_repository(repo)

    @settings(
        max_examples=15,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(layout=roots)
    def round_trip(layout: dict) -> None:
        with tempfile.TemporaryDirectory(dir=tmp_path) as work:
            source = os.fsencode(work) + b"/src"
            materialize(source, layout)
            set_times(Path(os.fsdecode(source)))
            result = backup_paths(repository, [os.fsdecode(source)])
            assert result.snapshot["summary"]["errors"] == []
            entry = tree.find(repository, result.snapshot, os.fsdecode(source))
            target = os.fsencode(work) + b"/restored"
            stats = Restorer(repository, os.fsdecode(target)).restore(entry, os.fsdecode(source))
            assert stats.errors == [] and stats.damaged == [] and stats.skipped == 0
            assert compare_trees(source, target, include_root=False) == []

    try:
        round_trip()
    finally:
        repository.close()
