"""Command source: any program's stdout as the dump, its restore command fed from stdin."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from safehold.sources import SourceError
from safehold.sources import command as cmd
from safehold.sources.targets import Target

TAR = {
    "name": "storage",
    "backup": 'tar -C "$DATA" -cf - .',
    "restore": 'mkdir -p "$1" && tar -C "$1" -xf -',
    "version": "tar --version",
}


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def component(tmp_path) -> dict:
    data = tmp_path / "data"
    (data / "sub dir").mkdir(parents=True)
    (data / "a.txt").write_text("Jürgen Ñandú 東京\n")
    (data / "sub dir" / "blob.bin").write_bytes(os.urandom(300_000))
    backup = f"DATA={data}; " + TAR["backup"]
    return dict(TAR, backup=backup)


def dump_bytes(component: dict, target: Target) -> bytes:
    [name] = cmd.dump_names(component, target)
    with cmd.dump(component, target, name) as stream:
        return stream.read()


def test_names_counts_and_version(component, exec_target):
    assert cmd.dump_names(component, exec_target) == ["storage"]
    assert cmd.dump_names({}, exec_target) == ["dump"]
    assert cmd.row_counts(component, exec_target, "storage") == {}
    assert "tar" in cmd.server_version(component, exec_target)
    assert cmd.server_version({}, exec_target) == ""


def test_dump_and_restore_elsewhere(component, exec_target, tmp_path):
    data = dump_bytes(component, exec_target)
    target_dir = tmp_path / "restored here"
    cmd.restore(component, exec_target, "storage", io.BytesIO(data), into=str(target_dir))
    assert tree(target_dir) == tree(tmp_path / "data")


def test_secrets_reach_both_commands(exec_target, tmp_path):
    out = tmp_path / "seen"
    component = {
        "name": "s",
        "password": "pw 'x' $y",
        "secrets": {"TOKEN": "t0k"},
        "backup": 'printf "%s/%s" "$SAFEHOLD_PASSWORD" "$TOKEN"',
        "restore": f'{{ cat; printf "/%s" "$TOKEN"; }} > {out}',
    }
    data = dump_bytes(component, exec_target)
    assert data == b"pw 'x' $y/t0k"
    cmd.restore(component, exec_target, "s", io.BytesIO(data))
    assert out.read_bytes() == b"pw 'x' $y/t0k/t0k"


def test_failing_backup_command_is_named(exec_target):
    component = {
        "name": "search",
        "backup": "echo partial; echo 'snapshot failed: 503' >&2; exit 7",
    }
    with pytest.raises(
        SourceError,
        match=r"backup command of search failed .*exit status 7.*"
        r"snapshot failed: 503",
    ):
        dump_bytes(component, exec_target)


def test_truncated_dump_makes_the_restore_command_fail(component, exec_target, tmp_path):
    data = dump_bytes(component, exec_target)
    with pytest.raises(SourceError, match=r"restore command of storage failed .*tar"):
        cmd.restore(
            component,
            exec_target,
            "storage",
            io.BytesIO(data[:150_000]),
            into=str(tmp_path / "partial"),
        )


def test_restore_command_that_ignores_its_input(exec_target):
    component = {"name": "x", "restore": "true"}
    with pytest.raises(SourceError, match="restore command of x exited .* before reading all"):
        cmd.restore(component, exec_target, "x", io.BytesIO(b"z" * 4_000_000))


def test_missing_commands_are_named(exec_target):
    with pytest.raises(SourceError, match="component 'x' \\(command\\) needs 'backup'"):
        cmd.dump({"name": "x"}, exec_target, "x")
    with pytest.raises(SourceError, match="needs 'restore'"):
        cmd.restore({"name": "x"}, exec_target, "x", io.BytesIO(b""))
