"""No import cycles between Sluice's packages, and the declarative config stays light.

The graph is read from the source (ast), not by importing: every `import`/`from` of a
`sluice` module anywhere in a file (lazy ones inside functions count: they are dependencies
too), except those under `if TYPE_CHECKING:`. Nodes are the top-level packages and modules
of `sluice` (`sluice.router`, `sluice.schema`, ...). The schema layer (`sluice/schema/`)
imports only pydantic, PyYAML and the standard library, and every config model in it derives
from its one frozen base.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "sluice"
SCHEMA = PACKAGE / "schema"


def _node(module: str) -> str | None:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "sluice" and len(parts) > 1 else None


def _module_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_blocks(tree: ast.AST) -> set[int]:
    """ids of import nodes that only run for type checkers."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skipped


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    skipped = _type_checking_blocks(tree)
    package = _module_of(path) if path.name == "__init__.py" else _module_of(path).rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        source = _node(_module_of(path))
        if source is None:
            continue
        targets = {_node(m) for m in imports_of(path)}
        graph.setdefault(source, set()).update(t for t in targets if t and t != source)
    return graph


def test_no_cycles_between_packages() -> None:
    graph = package_graph()
    assert {"sluice.router", "sluice.schema", "sluice.accounting",
            "sluice.observability"} <= set(graph)
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as err:
        pytest.fail(f"import cycle between packages: {' -> '.join(err.args[1])}")


def test_the_cycle_check_sees_a_cycle() -> None:
    with pytest.raises(CycleError):
        tuple(TopologicalSorter({"a": {"b"}, "b": {"a"}}).static_order())
    graph = package_graph()
    assert "sluice.schema" in graph["sluice.router"]  # edges are really read


def test_only_deployments_and_the_cli_import_the_deployments() -> None:
    users = {src for src, targets in package_graph().items() if "sluice.deployments" in targets}
    assert users <= {"sluice.cli"}, users


@pytest.mark.parametrize("heavy", ["ray", "vllm", "torch", "starlette", "fastapi", "redis",
                                   "numpy", "sklearn", "httpx"])
def test_loading_the_config_imports_nothing_heavy(heavy: str) -> None:
    code = ("import sys; from pathlib import Path;"
            "from sluice.schema.loading import load_platform_config;"
            "load_platform_config(Path('platform/profiles/local-cpu.yaml'));"
            f"print({heavy!r} in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=PACKAGE.parent, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False", f"loading YAML imported {heavy}"


def _schema_modules() -> list[Path]:
    return sorted(SCHEMA.glob("*.py"))


@pytest.mark.parametrize("path", _schema_modules(), ids=lambda p: p.stem)
def test_the_schema_imports_only_pydantic_yaml_and_the_stdlib(path: Path) -> None:
    allowed = {"pydantic", "yaml", "__future__", *sys.stdlib_module_names}
    found = imports_of(path)
    assert path.name == "__init__.py" or "__future__" in found  # imports are really read
    stray = {m for m in found
             if not (m == "sluice.schema" or m.startswith("sluice.schema."))
             and m.split(".")[0] not in allowed}
    assert not stray, f"{path.name} imports {sorted(stray)}"


def test_every_config_model_derives_from_the_one_frozen_base() -> None:
    from pydantic import BaseModel

    from sluice.schema.base import Frozen

    models = []
    for path in _schema_modules():
        module = importlib.import_module(f"sluice.schema.{path.stem}")
        models += [cls for _, cls in inspect.getmembers(module, inspect.isclass)
                   if issubclass(cls, BaseModel) and cls.__module__ == module.__name__]
    assert len(models) >= 25, [m.__name__ for m in models]  # really found
    stray = [m.__name__ for m in models if not issubclass(m, Frozen)]
    assert not stray, f"not derived from sluice.schema.base.Frozen: {stray}"
    assert all(m.model_config.get("frozen") and m.model_config.get("extra") == "forbid"
               for m in models)


def test_config_models_live_in_the_schema() -> None:
    """Outside sluice/schema only data records are pydantic models (the ledger's record);
    the OpenAPI document's wire shapes (`deployments/api_shapes.py`) describe HTTP bodies,
    not configuration, and live beside the document they are rendered into."""
    shapes = PACKAGE / "deployments" / "api_shapes.py"
    found = {f"{path.relative_to(PACKAGE.parent)}:{node.name}"
             for path in PACKAGE.rglob("*.py") if SCHEMA not in path.parents
             and path != shapes
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.ClassDef)
             and any(ast.unparse(base).endswith("BaseModel") for base in node.bases)}
    assert found == {"sluice/accounting/ledger.py:LedgerRecord"}, found


def test_private_ray_modules_are_imported_in_one_place() -> None:
    users = {str(path.relative_to(PACKAGE.parent)) for path in PACKAGE.rglob("*.py")
             if any(m.startswith("ray") and ("._private" in m or "._internal" in m)
                    for m in imports_of(path))}
    assert users == {"sluice/deployments/ray_compat.py"}, users


def test_ray_compat_fails_loudly_on_another_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    from sluice.deployments import ray_compat

    monkeypatch.delenv("SLUICE_UNCHECKED_RAY", raising=False)
    ray_compat.check(ray_compat.RAY_VERSION)  # the version it was written for
    with pytest.raises(ImportError, match="private hooks of Ray"):
        ray_compat.check("2.61.0")
    monkeypatch.setenv("SLUICE_UNCHECKED_RAY", "1")
    ray_compat.check("2.61.0")
