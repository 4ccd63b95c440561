"""Two backups from two processes with different host names into ONE S3 (moto) repository.

Both run at the same time (shared locks), each with its own tree; the trees share some
identical files. Afterwards ``check --read-data`` passes and both snapshots restore
bit-identically. Shared chunks may be stored once or twice (both writers may upload a chunk
before either's index lists it), never lost; the test prints what it observed.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from conftest import FAST_KDF, PASSPHRASE, compare_trees, run_cli, write_file

from safehold.repo.repository import Repository

MiB = 1024 * 1024
HOSTS = ("hostA", "hostB")
SAFEHOLD = [sys.executable, "-m", "safehold"]
SHARED, OWN = 16 * MiB, 4 * MiB  # random bytes: incompressible


def make_tree(root: Path, shared: dict[str, bytes], own_seed: int) -> Path:
    """A tree with the shared files (same names and bytes everywhere) plus its own files."""
    for name, data in shared.items():
        write_file(root / "shared" / name, data)
    rnd = random.Random(own_seed)
    write_file(root / "own" / "unique.bin", rnd.randbytes(OWN))
    write_file(root / "own" / "notes.txt", f"host seed {own_seed}\n".encode() * 100)
    return root


def test_two_hosts_back_up_at_once_into_one_s3_repository(
    remote_location: Callable[[str, str], str], tmp_path: Path
) -> None:
    location = remote_location("s3", "shared-repo")
    Repository.init(location, PASSPHRASE.encode(), kdf=FAST_KDF).close()
    rnd = random.Random(42)
    shared = {"big.bin": rnd.randbytes(SHARED), "small.txt": b"same on both hosts\n" * 50}
    trees = {host: make_tree(tmp_path / host, shared, seed) for seed, host in enumerate(HOSTS, 1)}
    processes = {
        host: subprocess.Popen(
            [*SAFEHOLD, "backup", "--repo", location, "--host", host, "--json", str(trees[host])],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for host in HOSTS
    }
    started = time.monotonic()
    outputs = {host: process.communicate(timeout=300) for host, process in processes.items()}
    elapsed = time.monotonic() - started
    summaries = {}
    for host, process in processes.items():
        out, err = outputs[host]
        assert process.returncode == 0, (host, process.returncode, err.decode())
        summaries[host] = json.loads(out)

    result = run_cli("check", "--repo", location, "--read-data")
    assert result.code == 0, result.out + result.err
    for host in HOSTS:
        listed = run_cli("snapshots", "--repo", location, "--host", host, "--json").json()
        assert isinstance(listed, list) and len(listed) == 1
        snapshot_id = listed[0]["id"]
        assert snapshot_id == summaries[host]["snapshot_id"]
        summaries[host]["time"] = listed[0]["time"]
        into = tmp_path / f"restored-{host}"
        result = run_cli(
            "restore", "--repo", location, f"{snapshot_id}:{trees[host]}", "--target", into
        )
        assert result.code == 0, result.err
        assert compare_trees(trees[host], into, include_root=False) == []

    a, b = (summaries[host] for host in HOSTS)
    overlap = min(a["time"] + a["duration"], b["time"] + b["duration"]) - max(a["time"], b["time"])
    print(
        f"\nboth backups done in {elapsed:.1f} s (each {a['duration']:.2f} s and "
        f"{b['duration']:.2f} s); they ran together for {overlap:.2f} s"
    )
    assert overlap > 0, "the two backups did not run at the same time: the test proves nothing"
    with Repository.open(location, PASSPHRASE.encode()) as repository:
        copies = Counter(blob_id for blob_id, _ in repository.index.entries())
        stored = sum(size for name, size in repository.store.list("data"))
        assert list(repository.store.list("locks")) == []  # both released their shared locks
    twice = sum(1 for count in copies.values() if count > 1)
    unique = SHARED + 2 * OWN
    print(
        f"index: {len(copies)} distinct blobs, {twice} stored more than once; "
        f"packs hold {stored / MiB:.1f} MiB for {unique / MiB:.1f} MiB of distinct content "
        f"({(a['bytes_added_raw'] + b['bytes_added_raw']) / MiB:.1f} MiB reported new by both)"
    )
    assert stored >= unique  # random data does not compress: nothing can be missing
    assert stored < unique + SHARED + MiB  # shared data at most twice
