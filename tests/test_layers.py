"""Each layer imports only the layers below it (docs/architecture.md)."""

import ast
from pathlib import Path

import safehold

LAYERS = [
    "errors",
    "memcopy",
    "store",
    "crypto",
    "repo",
    "archive",
    "sources",
    "platform",
    "ops",
    "cli",
    "web",
]
ROOT = Path(safehold.__file__).parent


def _layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "safehold" or len(parts) < 2:
        return None
    return parts[1]


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_imports_only_go_downwards():
    violations = []
    for path in ROOT.rglob("*.py"):
        relative = path.relative_to(ROOT)
        own = relative.parts[0].removesuffix(".py")
        if own not in LAYERS:
            continue
        for module in _imports(path):
            other = _layer_of(module)
            if other in LAYERS and LAYERS.index(other) > LAYERS.index(own):
                violations.append(f"{relative} imports {module}")
    assert violations == []


def test_every_layer_is_known():
    packages = {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith("__")}
    assert packages <= set(LAYERS)
