"""safehold mount through real FUSE: a subprocess mounts a real repository, ordinary tools walk
and copy it, every file is compared with its source bit for bit, writes fail with EROFS, new
backups appear while mounted, SIGTERM/SIGINT unmount, and a mount whose process was killed
with SIGKILL is released (by the next `safehold mount`, which runs fusermount3 -u -z)."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import (
    assert_one_line_error,
    backup_json,
    mini_platform,
    run_cli,
    write_file,
)

SAFEHOLD = os.path.join(os.path.dirname(sys.executable), "safehold")
HAVE_FUSE = os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None
needs_fuse = pytest.mark.skipif(not HAVE_FUSE, reason="no /dev/fuse or fusermount3")


def _mounted(path: Path) -> bool:
    return os.path.ismount(path)


class Mount:
    """A `safehold mount` subprocess."""

    def __init__(self, repo: Path | str, mountpoint: Path, *options: str) -> None:
        self.mountpoint = mountpoint
        mountpoint.mkdir(exist_ok=True)
        self.process = subprocess.Popen(
            [SAFEHOLD, "mount", "--repo", str(repo), str(mountpoint), *options],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(os.environ),
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # "mounted ..." once it serves
        if not line.startswith(b"mounted "):
            raise AssertionError((line, self.process.communicate()))
        assert _mounted(mountpoint)

    def stop(self, how: int = signal.SIGTERM) -> tuple[int, bytes]:
        self.process.send_signal(how)
        _out, err = self.process.communicate(timeout=30)
        return self.process.returncode, err

    def peak_rss(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM")


@pytest.fixture
def mounts() -> Iterator[Callable[..., Mount]]:
    started: list[Mount] = []

    def start(repo: Path | str, mountpoint: Path, *options: str) -> Mount:
        mount = Mount(repo, mountpoint, *options)
        started.append(mount)
        return mount

    yield start
    for mount in started:
        if mount.process.poll() is None:
            mount.process.kill()
            mount.process.wait()
        subprocess.run(["fusermount3", "-u", "-z", str(mount.mountpoint)], capture_output=True)


def _snapshot_dirs(mountpoint: Path) -> list[str]:
    return sorted(name for name in os.listdir(mountpoint / "snapshots") if name != "latest")


@needs_fuse
def test_mount_copies_out_bit_for_bit(
    repo: Path, full_tree: Path, tmp_path: Path, mounts, compare_trees
) -> None:
    first = backup_json(repo, full_tree, "--tag", "nightly")["snapshot_id"]
    mount = mounts(repo, tmp_path / "mnt")
    top = mount.mountpoint
    assert sorted(os.listdir(top)) == ["hosts", "platforms", "snapshots", "tags"]
    [name] = _snapshot_dirs(top)
    assert name.endswith("_" + first[:8])
    assert os.readlink(top / "snapshots" / "latest") == name
    assert os.readlink(top / "tags" / "nightly" / name) == f"../../snapshots/{name}"
    host = os.listdir(top / "hosts")
    assert len(host) == 1 and os.listdir(top / "hosts" / host[0]) == [name]
    inside = top / "snapshots" / "latest" / str(full_tree).lstrip("/")
    walked = sum(len(files) for _root, _dirs, files in os.walk(inside))
    assert walked > 20
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", "--sparse=always", str(inside), str(copy)], check=True)
    assert compare_trees(full_tree, copy, include_root=False) == []
    for root, _dirs, files in os.walk(full_tree):  # and read in place, through the mount
        for file_name in files:
            source = Path(root) / file_name
            if not source.is_file() or source.is_symlink() or not os.access(source, os.R_OK):
                continue
            mounted = inside / source.relative_to(full_tree)
            assert mounted.read_bytes() == source.read_bytes(), source
    inode = os.lstat(inside / "links" / "first")
    assert inode.st_ino == os.lstat(inside / "links" / "second").st_ino and inode.st_nlink == 2
    for attempt in (
        lambda: os.open(inside / "text.txt", os.O_RDWR),
        lambda: os.open(inside / "new-file", os.O_WRONLY | os.O_CREAT),
        lambda: os.mkdir(inside / "new-dir"),
        lambda: os.unlink(inside / "text.txt"),
        lambda: os.rename(inside / "text.txt", inside / "moved"),
        lambda: os.chmod(inside / "text.txt", 0o777),
        lambda: os.setxattr(inside / "text.txt", "user.x", b"1"),
        lambda: os.symlink("x", inside / "new-link"),
    ):
        with pytest.raises(OSError) as caught:
            attempt()
        assert caught.value.errno == errno.EROFS
    code, err = mount.stop(signal.SIGTERM)
    assert code == 0, err
    assert not _mounted(top)


@needs_fuse
@pytest.mark.parametrize("backend", ["local", "sftp", "s3"])
def test_a_backup_made_while_mounted_appears(
    backend: str, remote_location, tmp_path: Path, mounts
) -> None:
    location = remote_location(backend, "repo")
    assert run_cli("init", "--repo", location).code == 0
    source = tmp_path / "src"
    write_file(source / "a.txt", b"first version\n" * 1000)
    backup_json(location, source)
    mount = mounts(location, tmp_path / "mnt")
    top = mount.mountpoint
    before = _snapshot_dirs(top)
    old = top / "snapshots" / before[0] / str(source).lstrip("/") / "a.txt"
    assert old.read_bytes() == b"first version\n" * 1000
    write_file(source / "a.txt", b"second version\n" * 2000)
    write_file(source / "b.bin", os.urandom(3 * 1024 * 1024))
    second = backup_json(location, source)["snapshot_id"]
    deadline = time.monotonic() + 15
    while len(_snapshot_dirs(top)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    after = _snapshot_dirs(top)
    assert len(after) == 2 and before[0] in after  # (named by second: both may share one)
    newest = top / "snapshots" / "latest" / str(source).lstrip("/")
    assert os.readlink(top / "snapshots" / "latest").endswith(second[:8])
    assert (newest / "a.txt").read_bytes() == b"second version\n" * 2000
    assert (newest / "b.bin").read_bytes() == (source / "b.bin").read_bytes()
    assert old.read_bytes() == b"first version\n" * 1000  # nothing seen before changed
    code, err = mount.stop(signal.SIGINT)
    assert code == 0, err
    assert not _mounted(top)


@needs_fuse
def test_platforms_show_components_newest_first(repo: Path, tmp_path: Path, mounts) -> None:
    config = mini_platform(tmp_path / "platform", repo)
    ids = []
    for _ in range(2):
        result = run_cli("backup", "--config", config, "--json")
        assert result.code == 0, result.err
        ids.append(result.json()["snapshot_id"])
        time.sleep(1.1)  # distinct names to the second
    mount = mounts(repo, tmp_path / "mnt")
    platforms = mount.mountpoint / "platforms"
    assert os.listdir(platforms) == ["mini"]
    assert sorted(os.listdir(platforms / "mini")) == ["appdb", "data"]
    listing = os.listdir(platforms / "mini" / "data")  # readdir order: latest, newest, older
    assert listing[0] == "latest" and listing[1].endswith(ids[1][:8])
    assert listing[2].endswith(ids[0][:8])
    data = platforms / "mini" / "data" / "latest" / str(tmp_path / "platform" / "data").lstrip("/")
    assert (data / "a.txt").read_bytes() == (tmp_path / "platform" / "data" / "a.txt").read_bytes()
    restored = tmp_path / "restored"
    assert run_cli("restore", "--repo", repo, "latest:/appdb", "--target", restored).code == 0
    [dump] = os.listdir(restored)
    mounted_dump = platforms / "mini" / "appdb" / "latest" / dump
    assert mounted_dump.read_bytes() == (restored / dump).read_bytes()
    assert mount.stop()[0] == 0


@needs_fuse
@pytest.mark.slow
def test_memory_stays_flat_while_copying_a_big_file(repo: Path, tmp_path: Path, mounts) -> None:
    big = write_file(tmp_path / "src" / "big.bin", os.urandom(96 * 1024 * 1024))
    digest = hashlib.sha256(big.read_bytes()).hexdigest()
    backup_json(repo, tmp_path / "src")
    mount = mounts(repo, tmp_path / "mnt", "--cache-size", "8MiB")
    inside = mount.mountpoint / "snapshots" / "latest" / str(big).lstrip("/")
    with open(inside, "rb") as handle:  # index loaded, first blob read
        handle.read(4096)
    baseline = mount.peak_rss()
    copy = tmp_path / "copy.bin"
    shutil.copyfile(inside, copy)
    grown = mount.peak_rss() - baseline
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == digest
    assert grown < 40 * 1024 * 1024, grown  # the file is 96 MiB, the cache 8 MiB
    assert mount.stop()[0] == 0


@needs_fuse
def test_a_killed_mount_is_released(repo: Path, tmp_path: Path, mounts) -> None:
    backup_json(repo, write_file(tmp_path / "src" / "a.txt", b"a\n").parent)
    mount = mounts(repo, tmp_path / "mnt")
    mount.process.kill()
    mount.process.wait()
    with pytest.raises(OSError) as caught:
        os.listdir(mount.mountpoint)
    assert caught.value.errno == errno.ENOTCONN  # the kernel still holds the dead mount
    again = mounts(repo, tmp_path / "mnt")  # safehold releases it with fusermount3 -u -z
    assert len(_snapshot_dirs(again.mountpoint)) == 1
    code, err = again.stop(signal.SIGINT)
    assert code == 0
    assert b"released the mount a killed process left" in err
    assert not _mounted(again.mountpoint)
    os.listdir(again.mountpoint)  # an ordinary, empty directory again


def test_without_fuse_mount_fails_with_one_line(repo: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pyfuse3", None)  # import pyfuse3 -> ImportError
    monkeypatch.delitem(sys.modules, "safehold.ops.mount", raising=False)
    (tmp_path / "mnt").mkdir()
    result = run_cli("mount", "--repo", repo, tmp_path / "mnt")
    assert_one_line_error(result, 27, "cannot mount", "pyfuse3")


def test_other_commands_never_import_fuse(repo: Path, tmp_path: Path) -> None:
    source = write_file(tmp_path / "src" / "a.txt", b"a\n").parent
    tar = str(tmp_path / "all.tar")
    code = (
        "import sys\n"
        "from safehold.cli.main import main\n"
        f"assert main(['backup', '--repo', {str(repo)!r}, '-q', {str(source)!r}]) == 0\n"
        f"assert main(['find', '--repo', {str(repo)!r}, '-q', 'a.txt']) == 0\n"
        f"assert main(['stats', '--repo', {str(repo)!r}, '-q']) == 0\n"
        f"assert main(['dump', '--repo', {str(repo)!r}, 'latest:/', '-o', {tar!r}]) == 0\n"
        "assert 'pyfuse3' not in sys.modules and 'trio' not in sys.modules, 'imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ)
    )
    assert result.returncode == 0, result.stderr
