"""A random byte flipped in a random pack, index file or snapshot object (seeded trials):
`check --read-data` names the damaged object, restore refuses exactly the damaged files and
restores the rest bit-identical."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from tests.conftest import flip_byte, init_repository, run_cli

TRIALS = int(os.environ.get("SAFEHOLD_CORRUPTION_TRIALS", "12"))


def _source(root: Path, rng: random.Random) -> Path:
    for number in range(12):
        (root / f"d{number % 3}").mkdir(parents=True, exist_ok=True)
        (root / f"d{number % 3}" / f"f{number}").write_bytes(rng.randbytes(rng.randint(1, 90_000)))
    return root


@pytest.mark.parametrize("trial", range(TRIALS))
def test_a_random_flip_is_named_and_only_damaged_files_are_refused(
    tmp_path: Path, trial: int, monkeypatch: pytest.MonkeyPatch
):
    # Without the local cache: the restore would take the (verified) cached copies of the
    # snapshot, index files and trees, and the damage in the repository is what is tested.
    monkeypatch.setenv("SAFEHOLD_CACHE_DIR", "off")
    rng = random.Random(trial)
    repo = init_repository(tmp_path / "repo", pack_size=48 * 1024)
    source = _source(tmp_path / "src", rng)
    assert run_cli("backup", "--repo", repo, source).code == 0
    objects = sorted(
        p
        for kind in ("data", "index", "snapshots")
        for p in (repo / kind).rglob("*")
        if p.is_file()
    )
    victim = rng.choice(objects)
    flip_byte(victim, rng.randrange(victim.stat().st_size))

    checked = run_cli("check", "--repo", repo, "--read-data")
    assert checked.code == 13, checked.err
    assert victim.name[:16] in checked.err or victim.name in checked.err, (victim, checked.err)

    target = tmp_path / "restore"
    restored = run_cli("restore", "--repo", repo, f"latest:{source}", "--target", target)
    if victim.parent.name == "snapshots" or victim.parent.parent.name == "snapshots":
        assert restored.code in (13, 17), restored.err  # the only snapshot is unreadable
        return
    assert restored.code in (0, 13), restored.err
    if restored.code == 13 and not target.exists():
        # A tree on the way to the restored path is damaged: nothing can be placed, and the
        # one-line error says so.
        assert "damaged" in restored.err and len(restored.err.strip().splitlines()) == 1
        return
    for original in source.rglob("*"):
        if original.is_file():
            copy = target / original.relative_to(source)
            if copy.exists():
                assert copy.read_bytes() == original.read_bytes(), f"{copy} restored wrong"
            else:  # named itself, or below a directory named as damaged
                named = [str(copy)] + [f"{parent}/" for parent in copy.parents]
                assert restored.code == 13, restored.err
                assert any(name in restored.err for name in named), f"{copy} silently lost"
