"""The package's shape, checked: no import cycles anywhere, the planner does no I/O, and the engine
declares plugin capabilities instead of probing for them."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "autopyfactory"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module of the package this one imports: top level, TYPE_CHECKING or in a function."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                if full in known:
                    found.add(full)
                elif target in known:
                    found.add(target)
    found.discard(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            advanced = False
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_no_import_cycles_anywhere_in_the_package() -> None:
    assert _cycles(_graph()) == []


def test_the_checker_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# What the plan stage may not touch: the store, backends, transports, the network, the clock.
_IO = {"time", "socket", "subprocess", "urllib", "http", "requests", "sqlalchemy", "threading", "os"}
_IO_PACKAGE = ("autopyfactory.store", "autopyfactory.plugins.transport", "autopyfactory.plugins.registry")


def _top_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_the_planner_and_the_decision_code_do_no_io() -> None:
    planner = [PACKAGE / "engine" / "plan.py", *(PACKAGE / "decide").rglob("*.py")]
    for path in planner:
        imported = _top_imports(path)
        assert not {n.split(".")[0] for n in imported} & _IO, (path, imported)
        assert not [n for n in imported if n.startswith(_IO_PACKAGE)], (path, imported)


def test_the_engine_declares_capabilities_instead_of_probing_plugins() -> None:
    for path in [*(PACKAGE / "engine").glob("*.py"), PACKAGE / "lib.py"]:
        tree = ast.parse(path.read_text())
        probes = [
            node.lineno
            for node in ast.walk(tree)
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr")
        ]
        assert probes == [], f"{path.name}: getattr/hasattr at lines {probes}"


def test_each_engine_stage_is_its_own_module() -> None:
    stages = {
        "state",
        "build",
        "observe",
        "plan",
        "record",
        "act",
        "reconcile",
        "report",
        "reload",
        "factory",
    }
    present = {p.stem for p in (PACKAGE / "engine").glob("*.py")}
    assert stages <= present


def test_the_decision_code_loads_no_registry_yaml_or_database() -> None:
    import subprocess
    import sys

    code = (
        "import sys, pkgutil, importlib, autopyfactory.decide as d\n"
        "for m in pkgutil.walk_packages(d.__path__, 'autopyfactory.decide.'): importlib.import_module(m.name)\n"
        "bad = [m for m in ('yaml', 'sqlalchemy', 'autopyfactory.plugins.registry', 'autopyfactory.store') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "", f"decide/ loads {out.stdout.strip()}"


def test_importing_the_planner_loads_no_store_database_or_subprocess() -> None:
    """The planner's whole import closure, not only its own imports: the snapshot it reads is
    plain data (engine/snapshot.py), apart from the observer that reads the store."""
    import subprocess
    import sys

    code = (
        "import sys, autopyfactory.engine.plan\n"
        "bad = [m for m in ('yaml', 'sqlalchemy', 'subprocess', 'boto3', 'autopyfactory.store.api',"
        " 'autopyfactory.engine.observe') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "", f"engine/plan.py loads {out.stdout.strip()}"
