"""Dependencies point one way: a module imports only from its own layer or the layers below it.

Layers, bottom up: the foundation (arguments, config, contract, cpu, errors, hashing, persisted, seeding); data, features,
inputs, model, patterns; train, evaluate, export; runtime, compliance, bench, api; cli. Every import counts,
including those inside functions (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dualhrq"
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"arguments", "config", "contract", "cpu", "errors", "hashing", "persisted", "seeding"}),
    frozenset({"data", "features", "inputs", "model", "patterns"}),
    frozenset({"train", "evaluate", "export"}),
    frozenset({"runtime", "compliance", "bench", "api"}),
    frozenset({"cli", "__main__", "__init__"}),
)


def layer_of(unit: str) -> int:
    for i, names in enumerate(LAYERS):
        if unit in names:
            return i
    raise AssertionError(f"dualhrq.{unit}: not in any layer; add it to LAYERS in {Path(__file__).name}")


def _unit(module: str) -> str | None:
    """dualhrq.<unit>[.rest] -> unit (a subpackage or a top-level module); None outside the package."""
    parts = module.split(".")
    return parts[1] if parts[0] == "dualhrq" and len(parts) > 1 else None


def back_edges(package: Path) -> list[str]:
    """'file:line: a -> b' for every import from a lower layer into a higher one."""
    found = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package)
        own = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for target in filter(None, map(_unit, targets)):
                if target != own and layer_of(target) > layer_of(own):
                    found.append(f"{rel}:{node.lineno}: {own} -> {target}")
    return found


def test_every_import_points_down_the_layers():
    assert back_edges(PACKAGE) == []


def test_a_planted_back_edge_is_caught(tmp_path):
    root = tmp_path / "dualhrq"
    for unit, source in (("data", "from dualhrq.config import load_config\n"),
                         ("model", "def f():\n    from dualhrq.runtime.host import load_host\n"),
                         ("runtime", "import dualhrq.contract\n")):
        (root / unit).mkdir(parents=True)
        (root / unit / "m.py").write_text(source)
    assert back_edges(root) == ["model/m.py:2: model -> runtime"]
