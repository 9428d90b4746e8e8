"""The layering the core relies on, checked on the source: protocol adapters (server/grpc/) convert and
call the core service, and never import the model registry, a runtime, the batcher or statistics."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# what an adapter may not import: the registry, the batcher, statistics, and any runtime
FORBIDDEN = ("server.core.registry", "server.core.batcher", "server.core.stats", "server.runtime", "onnxruntime")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in the file, relative imports resolved against its package."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names]  # `from server import runtime`
    return out


def _violations(folder: Path) -> list[str]:
    bad = []
    for path in sorted(folder.glob("*.py")):
        for line, module in _imports(path):
            if any(module == f or module.startswith(f + ".") for f in FORBIDDEN):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return bad


def test_grpc_adapters_import_neither_the_registry_nor_a_runtime():
    files = list((ROOT / "server" / "grpc").glob("*.py"))
    assert len(files) >= 3  # the check looks where the adapters are
    assert _violations(ROOT / "server" / "grpc") == []


def test_the_check_catches_each_way_of_importing(tmp_path, monkeypatch):
    """The walker sees plain, from-, relative and aliased imports (a check that cannot fail proves nothing)."""
    pkg = tmp_path / "server" / "grpc"
    pkg.mkdir(parents=True)
    (pkg / "a.py").write_text("import server.runtime.threads as t\n")
    (pkg / "b.py").write_text("from server.core.registry import ModelRegistry\n")
    (pkg / "c.py").write_text("from ..runtime import base\n")
    (pkg / "d.py").write_text("from server import runtime\n")
    (pkg / "e.py").write_text("def f():\n    from server.core import stats\n")
    (pkg / "ok.py").write_text(
        "from server.core.service import InferenceService\nfrom server.core.types import InferRequest\n"
    )
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", tmp_path)
    found = _violations(pkg)
    assert sorted({v.split(":")[0] for v in found}) == [
        "server/grpc/a.py",
        "server/grpc/b.py",
        "server/grpc/c.py",
        "server/grpc/d.py",
        "server/grpc/e.py",
    ], found
