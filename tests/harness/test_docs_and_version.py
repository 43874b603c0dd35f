"""The docs stand alone (no citation of a design page outside this repository) and
`enact-bench --version` prints the package's version."""
from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

import enact_bench
from enact_bench.cli import app, package_version

ROOT = Path(__file__).resolve().parents[2]


def test_no_design_page_citations():
    files = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *(ROOT / "docs").rglob("*.html"),
             *(ROOT / "suites").glob("*.toml"), *(ROOT / "enact").rglob("*.py"),
             *(ROOT / "enact_bench").rglob("*.py"), *(ROOT / "tests").rglob("*.py")]
    pattern = re.compile(r"\bDESIGN\b(\.md|'s| \d| section)")  # the citations this repository had
    bad = [f"{p.relative_to(ROOT)}:{i}" for p in files if p.is_file() and p != Path(__file__)
           for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if pattern.search(line)]
    assert not bad, bad


def test_version_option_prints_the_package_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"enact-bench {package_version()}"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", package_version())


def test_version_falls_back_to_the_package_attribute(monkeypatch):
    import importlib.metadata as md

    def missing(name):
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(md, "version", missing)
    assert package_version() == enact_bench.__version__
