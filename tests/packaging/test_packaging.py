"""Every installed form carries the suites and baselines (suites/ stays at the top of the
repository; setup.py installs it as enact_bench/suite_files/): a wheel built from the tree
holds each of them, and `enact-bench list` run from another directory lists them."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "setup.py", "README.md", "enact", "enact_bench", "suites")


def _copy_sources(dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, dst / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, dst / name)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Build the wheel from a copy of the tree (so the checkout gets no build/ or egg-info)."""
    src = tmp_path_factory.mktemp("src")
    _copy_sources(src)
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "--no-index", "-q", "-w", str(out), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (whl,) = out.glob("enact_bench-*.whl")
    return whl


def test_wheel_holds_every_suite_baseline_and_module(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    suites = sorted(p.name for p in (ROOT / "suites").glob("*.toml"))
    baselines = sorted(p.name for p in (ROOT / "suites" / "baselines").glob("*.json"))
    assert suites and baselines
    for name in suites:
        assert f"enact_bench/suite_files/{name}" in names, name
    for name in baselines:
        assert f"enact_bench/suite_files/baselines/{name}" in names, name
    # every module of the tree is in the wheel (a new subpackage cannot be left out)
    for pkg in ("enact", "enact_bench"):
        for py in (ROOT / pkg).rglob("*.py"):
            if "__pycache__" not in py.parts:
                assert py.relative_to(ROOT).as_posix() in names, py


def _installed_cli(wheel: Path, target: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """Run the CLI from a --target install of the wheel, from `cwd`, with no checkout on the path."""
    if not target.exists():
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                               "--target", str(target), str(wheel)], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ENACT_BENCH_SUITES")}
    env["PYTHONPATH"] = str(target)
    env["COLUMNS"] = "200"
    return subprocess.run([sys.executable, "-c", "from enact_bench.cli import main; main()", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_list_from_another_directory_shows_the_shipped_suites(wheel, tmp_path):
    proc = _installed_cli(wheel, tmp_path / "site", tmp_path, "list")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for p in (ROOT / "suites").glob("*.toml"):
        assert p.stem in proc.stdout, (p.stem, proc.stdout)
    assert "ci-cpu" in proc.stdout
    # the installed copy is the one found (not the checkout)
    where = subprocess.run([sys.executable, "-c", "from enact_bench.suite import list_suites; "
                            "print(list_suites()['smoke'])"], cwd=tmp_path, capture_output=True, text=True,
                           env={**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
                                "PYTHONPATH": str(tmp_path / "site")})
    assert where.stdout.strip().startswith(str(tmp_path / "site")), where.stdout + where.stderr


def test_editable_install_finds_the_suites_from_another_directory(tmp_path):
    """`pip install -e .` (what .ci/run does) into a fresh venv that sees this interpreter's
    packages through a .pth file; the copy of the tree keeps the checkout free of egg-info."""
    import sysconfig

    src = tmp_path / "src"
    _copy_sources(src)
    venv = tmp_path / "venv"
    # without its own pip/setuptools: the outer ones (through the .pth below) build the editable
    # install, so an old bundled setuptools (65.x, no bdist_wheel without `wheel`) never shadows them
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "zz_outer_site.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ENACT_BENCH_SUITES")}
    proc = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                           "-e", str(src)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = subprocess.run([str(py), "-c", "from enact_bench.regress import find_baseline; "
                           "from enact_bench.suite import list_suites; "
                           "print(list_suites()['smoke']); print(find_baseline('ci-cpu'))"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(src / "suites" / "smoke.toml"), str(src / "suites" / "baselines" / "ci-cpu.json")]
