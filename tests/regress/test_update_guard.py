"""`check --update` never writes inside the installed package: with a wheel installed by
`pip install --no-deps --target`, `--baseline ci-cpu --update` (the shipped baseline, found by
name) is refused in one line, exit 2, and the shipped file is left as it was; a path in the
user's own folder is written."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "setup.py", "README.md", "enact", "enact_bench", "suites")
FIXTURE_RUN = ROOT / "tests" / "report" / "fixtures" / "cpu_run"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A wheel built from a copy of the tree, installed with --target (no checkout on the path)."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, src / name)
    wheels = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-q", "-w", str(wheels), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (whl,) = wheels.glob("enact_bench-*.whl")
    target = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                           str(target), str(whl)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return target


def _cli(target: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ENACT_BENCH_SUITES")}
    env.update(PYTHONPATH=str(target), COLUMNS="300")
    return subprocess.run([sys.executable, "-c", "from enact_bench.cli import main; main()", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_update_refuses_the_shipped_baseline_and_writes_a_project_path(installed, tmp_path):
    shipped = installed / "enact_bench" / "suite_files" / "baselines" / "ci-cpu.json"
    before = _digest(shipped)
    run = tmp_path / "reports" / "r"
    shutil.copytree(FIXTURE_RUN, run)
    for given in ("ci-cpu", str(shipped)):
        res = _cli(installed, tmp_path, "check", str(run), "--baseline", given, "--update")
        lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
        assert res.returncode == 2 and len(lines) == 1, res.stdout + res.stderr
        assert lines[0].startswith("error: ") and "inside the installed package" in lines[0]
        assert "pass a path in your project" in lines[0] and "--baseline baselines/ci-cpu.json" in lines[0]
    assert _digest(shipped) == before
    mine = tmp_path / "baselines" / "ci-cpu.json"
    res = _cli(installed, tmp_path, "check", str(run), "--baseline", "baselines/ci-cpu.json", "--update")
    assert res.returncode == 0 and mine.is_file(), res.stdout + res.stderr
