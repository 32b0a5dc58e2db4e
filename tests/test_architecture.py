"""The one-way imports of ``docs/architecture.md``, checked on the source (``ast``, no imports run).

A forbidden import fails here with the file, the line and the rule it breaks.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = (
    "torch",
    "faiss",
    "numpy",
    "fastapi",
    "transformers",
    "uvicorn",
    "safetensors",
    "pyarrow",
    "tributary_indexer",
    "tributary_service",
)


def imports(path: Path) -> list[tuple[int, str]]:
    """``(line, absolute module)`` of every import in ``path`` (``from X import y`` also gives
    ``X.y``, which may be a module), relative imports resolved against its package."""
    package = _package_parts(path)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            out.append((node.lineno, module))
            out += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return out


def _package_parts(path: Path) -> tuple[str, ...]:
    """The package that holds ``path`` (its folders with an ``__init__.py``), outermost first."""
    parts: list[str] = []
    folder = path.parent
    while (folder / "__init__.py").is_file():
        parts.insert(0, folder.name)
        folder = folder.parent
    return tuple(parts)


def violations(folder: Path, forbidden: tuple[str, ...]) -> list[str]:
    """``file:line imports module`` for every import of ``folder`` under a ``forbidden`` prefix."""
    out = []
    for path in sorted(folder.rglob("*.py")):
        for line, module in imports(path):
            if any(module == f or module.startswith(f + ".") for f in forbidden):
                out.append(f"{path.relative_to(folder.parent)}:{line} imports {module}")
    return out


RULES = {
    "the SDK imports nothing heavy": (ROOT / "client" / "tributary_client", HEAVY),
    "the build imports no query-time code": (
        ROOT / "indexer" / "tributary_indexer" / "build",
        ("tributary_indexer.query", "tributary_service"),
    ),
    "the indexer imports nothing from the service or the SDK": (
        ROOT / "indexer" / "tributary_indexer",
        ("tributary_service", "tributary_client"),
    ),
    "the gradient core and the data know neither builds nor queries": (
        ROOT / "indexer" / "tributary_indexer" / "gradients",
        ("tributary_indexer.build", "tributary_indexer.query"),
    ),
    "the data layer knows neither builds nor queries": (
        ROOT / "indexer" / "tributary_indexer" / "data",
        ("tributary_indexer.build", "tributary_indexer.query", "tributary_indexer.gradients"),
    ),
    "the Hessian knows neither builds nor queries": (
        ROOT / "indexer" / "tributary_indexer" / "hessian",
        ("tributary_indexer.build", "tributary_indexer.query"),
    ),
}


@pytest.mark.parametrize("rule", list(RULES))
def test_forbidden_imports_do_not_exist(rule):
    folder, forbidden = RULES[rule]
    assert folder.is_dir(), folder
    found = violations(folder, forbidden)
    assert not found, f"{rule}: " + "; ".join(found)


def test_the_check_sees_a_forbidden_import(tmp_path):
    """A relative import that climbs into ``query/`` is resolved and caught."""
    package = tmp_path / "tributary_indexer"
    (package / "build").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "build" / "__init__.py").write_text("")
    (package / "build" / "builder.py").write_text(
        "import os\nfrom ..query.ranking import make_ranking\n"
    )
    found = violations(package / "build", ("tributary_indexer.query",))
    assert found and "imports tributary_indexer.query" in found[0] and ":2 " in found[0]
    (package / "build" / "builder.py").write_text("from ..config import RankingConfig\n")
    assert violations(package / "build", ("tributary_indexer.query",)) == []
