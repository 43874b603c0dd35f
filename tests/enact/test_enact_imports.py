"""enact imports torch only (and the standard library), never enact_bench."""
import ast
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "enact"


def test_enact_imports_torch_and_stdlib_only():
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = [node.module.split(".")[0]]
            else:
                continue
            for root in roots:
                assert root == "torch" or root in sys.stdlib_module_names, f"{path.name} imports {root}"
