"""The import layers (docs/harness.md): imports run one way,

    cli -> commands -> run / predict -> measure, instrument, evaluate, train, detectors, data -> enact

with the plain modules (records, metrics, suite, errors, plugins, ...) beside them: predict may
use detectors, data, train and the instruments; measure and instrument never import predict;
the libraries never import run, predict, commands or cli; nothing but cli and the commands
themselves imports commands or cli.

Every module's AST is read for every import statement, function-level (lazy) ones included, so
a lazy import cannot hide a cycle. Two granularities, neither may have a cycle: files (every
module of enact and enact_bench), and units (a subpackage of enact_bench, e.g. `enact_bench.run`,
`enact_bench.predict`, with its own subpackages such as `detectors.common`; or a top-level module
of enact_bench, e.g. `enact_bench.records`; or the `enact` package as one unit).

`report` must not import torch: checked in a fresh interpreter, by building a report and
looking at sys.modules (records.py may import torch lazily, only in capture_env).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("enact", "enact_bench")
LIBRARIES = ("enact_bench.measure", "enact_bench.instrument", "enact_bench.evaluate", "enact_bench.train",
             "enact_bench.data", "enact_bench.detectors")
UP = ("enact_bench.run", "enact_bench.predict", "enact_bench.commands", "enact_bench.cli")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, int]]:
    """(imported module, line) for every import statement in the file, at any depth."""
    is_pkg = path.name == "__init__.py"
    here = name if is_pkg else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.rsplit(".", node.level - 1)[0] if node.level > 1 else here
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module
            # `from pkg import sub` imports the module pkg.sub when there is one
            subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in MODULES]
            out += [(m, node.lineno) for m in subs] or [(mod, node.lineno)]
    return out


IMPORTS = {name: _imports(name, path) for name, path in MODULES.items()}


def unit_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "enact":
        return "enact"
    if parts[0] != "enact_bench":
        return None
    if len(parts) == 1:
        return "enact_bench"
    return ".".join(parts[:2])


def _graph() -> dict[str, dict[str, list[str]]]:
    graph: dict[str, dict[str, list[str]]] = {}
    for name, imports in IMPORTS.items():
        src = unit_of(name)
        for mod, line in imports:
            dst = unit_of(mod)
            if dst is not None and dst != src:
                graph.setdefault(src, {}).setdefault(dst, []).append(f"{MODULES[name].relative_to(ROOT)}:{line}")
    return graph


def _file_graph() -> dict[str, dict[str, list[str]]]:
    """Module -> imported module (enact and enact_bench modules only; a package's __init__ is the
    package's name) -> where."""
    graph: dict[str, dict[str, list[str]]] = {}
    for name, imports in IMPORTS.items():
        for mod, line in imports:
            if mod in MODULES and mod != name:
                graph.setdefault(name, {}).setdefault(mod, []).append(f"{MODULES[name].relative_to(ROOT)}:{line}")
    return graph


def _cycle(graph) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(u):
        state[u] = 1
        stack.append(u)
        for v in graph.get(u, {}):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in state:
                found = visit(v)
                if found:
                    return found
        stack.pop()
        state[u] = 2
        return None

    for u in sorted(graph):
        if u not in state:
            found = visit(u)
            if found:
                return found
    return None


def test_the_scan_sees_lazy_imports():
    # run/case.py imports measure inside functions only: the scan must still see it
    assert "enact_bench.measure" in _graph()["enact_bench.run"]
    assert "enact_bench.measure.memory" in _file_graph()["enact_bench.run.case"]
    assert len(MODULES) > 60


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b": ["a.py:1"]}, "b": {"c": ["b.py:1"]}, "c": {"a": ["c.py:1"]}, "d": {"a": ["d.py:1"]}}
    assert _cycle(graph) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b": []}, "b": {}}) is None


@pytest.mark.parametrize("granularity", ["units", "files"])
def test_no_cycles(granularity):
    graph = _graph() if granularity == "units" else _file_graph()
    cycle = _cycle(graph)
    if cycle:
        where = "; ".join(f"{a} -> {b} at {', '.join(graph[a][b][:3])}" for a, b in zip(cycle, cycle[1:]))
        pytest.fail(f"import cycle {' -> '.join(cycle)}: {where}")


@pytest.mark.parametrize("low", LIBRARIES)
def test_libraries_never_import_run_predict_commands_or_cli(low):
    bad = [f"{MODULES[name].relative_to(ROOT)}:{line} imports {mod}"
           for name, imports in IMPORTS.items() if unit_of(name) == low
           for mod, line in imports if unit_of(mod) in UP]
    assert not bad, bad


def test_only_cli_and_commands_import_commands_or_cli():
    top = ("enact_bench.commands", "enact_bench.cli")
    bad = [f"{MODULES[name].relative_to(ROOT)}:{line} imports {mod}"
           for name, imports in IMPORTS.items() if unit_of(name) not in top
           for mod, line in imports if unit_of(mod) in top]
    assert not bad, bad


def test_enact_imports_torch_only():
    allowed = {"torch", "enact", "__future__"} | set(sys.stdlib_module_names)
    bad = [f"{MODULES[name].relative_to(ROOT)}:{line} imports {mod}"
           for name, imports in IMPORTS.items() if unit_of(name) == "enact"
           for mod, line in imports if mod.split(".")[0] not in allowed]
    assert not bad, bad


def test_report_and_metrics_never_import_torch(tmp_path):
    fixtures = ROOT / "tests" / "report" / "fixtures"
    code = f"""
import sys, importlib, pkgutil
import enact_bench.report as report, enact_bench.metrics, enact_bench.records, enact_bench.regress
for m in pkgutil.iter_modules(report.__path__):
    importlib.import_module("enact_bench.report." + m.name)
from enact_bench.commands.report import report_command
report_command([{str(fixtures)!r}, {str(fixtures / 'cpu_run')!r}], {str(tmp_path / 'out')!r})
from enact_bench.regress import load_run
load_run({str(fixtures / 'cpu_run')!r})
bad = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
print("TORCH" if bad else "CLEAN", bad[:5])
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.startswith("CLEAN"), res.stdout
