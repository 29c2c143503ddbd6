"""Layering is a test: pure protocol cores import no I/O, no package imports from above.

Layers, bottom to top: consensus <- mesh <- agents <- sim. Pure cores take time
through ``tick(now)`` and randomness as an injected ``random.Random``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LAYERS = ["consensus", "mesh", "agents", "sim"]
IMPURE = {"zmq", "anyio", "asyncio", "socket", "time", "os", "threading", "subprocess",
          "selectors", "sqlite3", "shutil", "pathlib", "trio", "httpx", "signal", "ctypes"}
PURE_CORES = ["consensus/**/*.py", "mesh/membership*.py", "mesh/membership/**/*.py",
              "mesh/replay.py",
              "agents/contract_net*.py", "agents/contract_net/**/*.py"]


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module, [a.name for a in node.names]))
    return found


def _crossings() -> list[str]:
    pure = {p for pattern in PURE_CORES for p in REPO.glob(pattern)}
    problems = []
    for index, layer in enumerate(LAYERS):
        above = set(LAYERS[index + 1:])
        for path in sorted((REPO / layer).rglob("*.py")):
            rel = path.relative_to(REPO)
            for lineno, module, names in _imports(path):
                top = module.split(".")[0]
                if top in above:
                    problems.append(f"{rel}:{lineno}: {layer} imports {module} from a layer above")
                if path in pure and top in IMPURE:
                    problems.append(f"{rel}:{lineno}: pure core imports {module}")
                if path in pure and top == "random" and names != ["Random"]:
                    problems.append(f"{rel}:{lineno}: pure core imports global randomness")
    return problems


def test_no_import_crosses_a_layer() -> None:
    assert _crossings() == []


def test_the_shared_layer_checker_agrees() -> None:
    checker = REPO.parent / "shared" / "tools" / "check_layers.py"
    if not checker.exists():
        pytest.skip("../shared is not beside this checkout")
    result = subprocess.run([sys.executable, str(checker), str(REPO)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout
