"""Source kinds come from one registry: a kind is one module, and nothing outside
``safehold/sources/`` knows a kind by its name."""

from __future__ import annotations

import ast
import io
import json
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import safehold
from safehold.platform.config import ConfigError, load_platform, parse_platform
from safehold.sources import Kind, kinds, register, type_names, unregister
from tests.conftest import run_cli

ROOT = Path(safehold.__file__).parent


def _mentions_type(node: ast.AST) -> bool:
    for inner in ast.walk(node):
        if isinstance(inner, ast.Attribute) and inner.attr == "type":
            return True
        if (
            isinstance(inner, ast.Subscript)
            and isinstance(inner.slice, ast.Constant)
            and inner.slice.value == "type"
        ):
            return True
    return False


def _strings(node: ast.AST) -> set[str]:
    return {
        inner.value
        for inner in ast.walk(node)
        if isinstance(inner, ast.Constant) and isinstance(inner.value, str)
    }


def kind_name_tests(source: str, names: set[str]) -> list[int]:
    """Lines of source that compare something's ``type`` with a kind's name, or build a
    table keyed by two or more kind names (a rank dict)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(_mentions_type(side) for side in sides) and _strings(node) & names:
                lines.append(node.lineno)
        if isinstance(node, ast.Dict):
            keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
            if len(keys & names) >= 2:
                lines.append(node.lineno)
    return sorted(lines)


def test_the_detector_finds_what_the_old_code_did():
    names = set(type_names())
    old = (
        'if component.type == "files": pass\n'
        'x = [c for c in cs if c["type"] in ("postgres", "mysql")]\n'
        'order = {"postgres": 0, "mysql": 0, "files": 3}\n'
        'if volume["type"] == "bind": pass\n'
        'if server.kind == "postgres": pass\n'
    )
    assert kind_name_tests(old, names) == [1, 2, 3]


def test_no_module_outside_sources_tests_a_type_against_a_kind_name():
    names = set(type_names())
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        if path.relative_to(ROOT).parts[0] == "sources":
            continue
        for line in kind_name_tests(path.read_text(), names):
            found.append(f"{path.relative_to(ROOT)}:{line}")
    assert found == []


def test_every_package_kind_is_found_with_its_alias():
    assert {"files", "postgres", "mysql", "sqlite", "command", "bucket"} <= set(kinds())
    assert "mariadb" in type_names()


# ---------------------------------------------------------------- a kind added by a test


def _tiny_module() -> types.ModuleType:
    """A dumps kind that copies one local text file: the whole kind in a few lines."""
    module = types.ModuleType("tiny")

    def dump_names(component, target):
        return [component["path"]]

    @contextmanager
    def dump(component, target, name) -> Iterator[io.BytesIO]:
        yield io.BytesIO(Path(name).read_bytes())

    def restore(component, target, name, stream, into=None):
        Path(into or name).write_bytes(stream.read())
        module.restored.append(into or name)

    module.dump_names, module.dump, module.restore = dump_names, dump, restore
    module.restored = []
    return module


@pytest.fixture
def tiny():
    module = _tiny_module()
    register(
        Kind(
            name="tiny",
            description="one small text file (test only)",
            properties={"path": {"type": "string", "description": "tiny: the file"}},
            required=("path",),
            rank=-1,  # restored before everything else
            module=module,
            dump_file=lambda component, name: "tiny.txt",
        )
    )
    yield module
    unregister("tiny")
    assert "tiny" not in kinds()


def test_a_kind_registered_by_a_test_is_validated(tiny):
    base = "components:\n  - {name: t, type: tiny, path: /x/y}\n"
    assert parse_platform(base, "p.yaml", {}).component("t").type == "tiny"
    with pytest.raises(ConfigError, match=r"at components\[0\]: missing required key 'path'"):
        parse_platform("components:\n  - {name: t, type: tiny}\n", "p.yaml", {})
    with pytest.raises(ConfigError, match=r"components\[0\].paths: unknown key for a tiny"):
        parse_platform(base.replace("}", ", paths: [/a]}"), "p.yaml", {})


def test_a_kind_registered_by_a_test_is_backed_up_restored_and_ordered(tiny, tmp_path, repo):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("files\n")
    (tmp_path / "note.txt").write_text("tiny content\n")
    config = {
        "repository": str(repo),
        "platform": "t",
        "components": [
            {"name": "data", "type": "files", "paths": [str(tmp_path / "data")]},
            {"name": "note", "type": "tiny", "path": str(tmp_path / "note.txt")},
        ],
    }
    platform_file = tmp_path / "platform.yaml"
    platform_file.write_text(json.dumps(config))
    result = run_cli("backup", "--config", platform_file)
    assert result.code == 0, result.err
    listing = run_cli("ls", "--repo", repo, "latest:/note")
    assert "tiny.txt" in listing.out, listing.out

    (tmp_path / "note.txt").write_text("changed\n")
    plan = run_cli("restore", "--config", platform_file, "--dry-run")
    assert plan.code == 0, plan.err
    steps = [line for line in plan.out.splitlines() if line.strip()]
    note = next(i for i, line in enumerate(steps) if "note:" in line)
    data = next(i for i, line in enumerate(steps) if "data:" in line)
    assert note < data, steps  # rank -1: before the files
    restored = run_cli("restore", "--config", platform_file, "--yes")
    assert restored.code == 0, restored.err
    assert (tmp_path / "note.txt").read_text() == "tiny content\n"
    assert tiny.restored == [str(tmp_path / "note.txt")]
    assert load_platform(str(platform_file)).component("note").type == "tiny"
